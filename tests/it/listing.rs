//! The sweep reads ListObjectsV2 pages with its own parser (`bucket::list_page`), not the SDK's
//! XML decoder: on pages a real server sends (moto here, garage with `scripts/test-garage
//! listing`), both decoders give the same page, and a page the parser does not read still
//! reaches the SDK, through the binary.

use crate::helpers::*;
use aws_sdk_s3::config::interceptors::AfterDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use aws_sdk_s3::types::EncodingType;
use std::sync::{Arc, Mutex};
use upload_reconciler::bucket::list_page::sdk_decode;
use upload_reconciler::bucket::list_page::{self, Refused};

/// Keys that reach every corner of a listing's XML: percent-encoding (`+`, `%`, a space),
/// unicode, control characters, and the characters XML escapes (`&`, `<`, `>`, quotes).
const KEYS: [&str; 13] = [
    "docs/plain",
    "docs/sp ace",
    "docs/a+b",
    "docs/a%2Bb",
    "docs/100%",
    "docs/été/ü",
    "docs/日本語",
    "docs/ctl\u{1}x",
    "docs/tab\tkey",
    "docs/amp&lt<gt>",
    "docs/quote\"apos'",
    "docs/~tilde",
    "docs/zz",
];

/// The body of every answer a request got (its last attempt's).
#[derive(Debug, Default, Clone)]
struct Capture(Arc<Mutex<Vec<Vec<u8>>>>);

impl Intercept for Capture {
    fn name(&self) -> &'static str {
        "Capture"
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(body) = context.response().body().bytes() {
            self.0.lock().expect("capture lock").push(body.to_vec());
        }
        Ok(())
    }
}

/// Every page of the bucket's listing under `docs/`, `page_size` keys a page, as the server
/// sent it, up to the first the SDK refuses (included).
async fn listing_pages(
    bucket: &TestBucket,
    encoding: Option<EncodingType>,
    page_size: i32,
) -> Vec<Vec<u8>> {
    let capture = Capture::default();
    let mut token = None;
    loop {
        let listed = bucket
            .client
            .list_objects_v2()
            .bucket(&bucket.name)
            .prefix("docs/")
            .set_encoding_type(encoding.clone())
            .max_keys(page_size)
            .set_continuation_token(token.take())
            .customize()
            .interceptor(capture.clone())
            .send()
            .await;
        let Ok(out) = listed else { break };
        match out.next_continuation_token() {
            Some(next) if out.is_truncated() == Some(true) => token = Some(next.to_owned()),
            _ => break,
        }
    }
    capture.0.lock().expect("capture lock").clone()
}

#[tokio::test]
async fn listing_pages_from_the_server_read_the_same_through_the_sdk_and_the_lean_parser() {
    let bucket = TestBucket::new().await;
    for key in KEYS {
        bucket.put(key, key).await;
    }
    let pages = listing_pages(&bucket, Some(EncodingType::Url), 3).await;
    assert_eq!(pages.len(), KEYS.len().div_ceil(3), "pages of 3 keys");
    let mut listed = Vec::new();
    for (i, body) in pages.iter().enumerate() {
        let text = String::from_utf8_lossy(body);
        // The sweep's fast path must read what real servers send, or the SDK does all the work
        // again, silently.
        let lean = list_page::parse(body).unwrap_or_else(|e| panic!("page {i}: {e:?}\n{text}"));
        assert_eq!(sdk_decode(body).as_ref(), Ok(&lean), "page {i}:\n{text}");
        let last = i + 1 == pages.len();
        assert_eq!(lean.is_truncated, Some(!last), "page {i}");
        assert_eq!(lean.next_continuation_token.is_some(), !last, "page {i}");
        listed.extend(lean.objects);
    }
    let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    let mut expected = KEYS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected, "every key once, decoded, in byte order");
    for object in &listed {
        assert_eq!(object.size, object.key.len() as i64, "{}", object.key);
        assert!(object.etag.as_deref().is_some_and(|e| e.starts_with('"')));
        let (_, modified) = bucket.head(&object.key).await;
        assert_eq!(
            object.last_modified.timestamp(),
            modified.timestamp(),
            "{}",
            object.key
        );
    }

    // Without URL encoding the keys come as XML text, entities and all: both decoders agree
    // on those too (the control characters make it no XML 1.0: both refuse it).
    let raw = listing_pages(&bucket, None, 1000).await;
    assert!(
        raw.iter()
            .any(|b| String::from_utf8_lossy(b).contains("&amp;"))
    );
    assert!(list_page::parse(&raw[0]).is_err() && sdk_decode(&raw[0]).is_err());
    bucket.delete("docs/ctl\u{1}x").await;
    bucket.delete("docs/tab\tkey").await;
    for body in listing_pages(&bucket, None, 1000).await {
        let text = String::from_utf8_lossy(&body);
        match list_page::parse(&body) {
            Ok(lean) => assert_eq!(sdk_decode(&body), Ok(lean), "{text}"),
            // A server's spelling the parser leaves to the SDK is allowed, never a wrong page.
            Err(Refused::Unread(what)) => eprintln!("left to the SDK ({what}): {text}"),
            Err(e) => panic!("{e:?}: {text}"),
        }
    }
}

/// A proxy in front of `endpoint` that passes ListObjectsV2 answers' bodies through `rewrite`.
async fn rewriting_listings(endpoint: &str, rewrite: fn(Vec<u8>) -> Vec<u8>) -> FaultProxy {
    FaultProxy::rewriting(
        endpoint,
        |_| Box::pin(async {}),
        move |request, body| {
            if request.target.contains("list-type=2") {
                rewrite(body)
            } else {
                body
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_page_the_lean_parser_does_not_read_is_read_by_the_sdk_with_the_same_findings() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    for id in ["kept", "sp ace", "a+b", "ctl\u{1}x"] {
        db.doc(id, "processed", HOUR).await;
        bucket.put(&format!("docs/{id}"), id).await;
    }
    db.doc("gone", "uploaded", HOUR).await;
    bucket.put("docs/orphan+x", "x").await;
    // A comment in every page: well-formed XML the lean parser leaves to the SDK.
    let proxy = rewriting_listings(&bucket.endpoint, |body| {
        String::from_utf8_lossy(&body)
            .replacen("<Contents>", "<!-- a comment --><Contents>", 1)
            .into_bytes()
    })
    .await;
    let reconcile = || {
        Reconcile::new(&db, &bucket)
            .set("storage.prefix", "docs/")
            .set("sweep.orphan_grace", "0s")
    };
    let direct = reconcile();
    let mut through = reconcile();
    through.endpoint = proxy.endpoint.clone();

    let expected = triples(&[
        ("missing_object", "gone", "mark_missing"),
        ("orphan_object", "orphan+x", "report"),
    ]);
    for (how, reconcile) in [("direct", &direct), ("commented pages", &through)] {
        let run = reconcile.run(&["--dry-run", "--format", "json"]).await;
        assert_eq!(run.code, 0, "{how}: {}", run.stderr);
        assert_eq!(run.findings(), expected, "{how}");
        assert_eq!(run.json()["objects_listed"], 5, "{how}");
    }
    assert!(proxy.rewritten() > 0, "no listing went through the proxy");
}

#[tokio::test]
async fn an_error_document_in_a_successful_answer_aborts_the_sweep_as_before() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("a", "pending", 2 * HOUR).await;
    // S3 may answer 200 with an error document; the SDK turns that into an error, and the
    // sweep must not read it as an empty bucket (every pending record would expire).
    let proxy = rewriting_listings(&bucket.endpoint, |_| {
        b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>\
          <Message>Access Denied</Message></Error>"
            .to_vec()
    })
    .await;
    let mut reconcile = Reconcile::new(&db, &bucket);
    reconcile.endpoint = proxy.endpoint.clone();
    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("listing s3://"), "{}", run.stderr);
    assert!(run.stderr.contains("AccessDenied"), "{}", run.stderr);
    assert_eq!(db.status("a").await.as_deref(), Some("pending"));
}
