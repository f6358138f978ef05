//! The bucket's writes through the binary: quarantine never overwrites, big objects are copied in
//! parts, deletes are conditional on the ETag the decision saw, and listings in milliseconds
//! (garage, AWS) still let orphan actions apply. `scripts/test-garage` runs these on garage too.

use crate::helpers::*;
use serde_json::Value;

/// The findings of a JSON report, by id.
fn by_id(run: &Run) -> std::collections::BTreeMap<String, Value> {
    run.json()["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .map(|f| (f["id"].as_str().unwrap_or_default().to_owned(), f.clone()))
        .collect()
}

/// Keys under `prefix`, in order.
async fn keys_under(bucket: &TestBucket, prefix: &str) -> Vec<String> {
    bucket
        .snapshot()
        .await
        .into_keys()
        .filter(|k| k.starts_with(prefix))
        .collect()
}

fn quarantining(db: &TestDb, bucket: &TestBucket) -> Reconcile {
    Reconcile::new(db, bucket)
        .set("storage.prefix", "docs/")
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "quarantine")
}

#[tokio::test]
async fn two_orphans_quarantined_at_one_key_keep_both_bodies() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let reconcile = quarantining(&db, &bucket);

    bucket.put("docs/a", "first orphan, v1").await;
    let (etag, modified) = bucket.head("docs/a").await;
    let first = reconcile.run(&["--format", "json"]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(by_id(&first)["a"]["result"], "applied", "{}", first.stdout);

    bucket
        .put("docs/a", "second orphan at the same key, v2")
        .await;
    let second = reconcile.run(&["--format", "json"]).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(
        by_id(&second)["a"]["result"],
        "applied",
        "{}",
        second.stdout
    );

    assert!(!bucket.exists("docs/a").await);
    let quarantined = keys_under(&bucket, "quarantine/").await;
    let mut bodies = Vec::new();
    for key in &quarantined {
        bodies.push(String::from_utf8(bucket.get(key).await).expect("utf-8 body"));
    }
    bodies.sort();
    assert_eq!(
        bodies,
        ["first orphan, v1", "second orphan at the same key, v2"],
        "under {quarantined:?}"
    );
    // The documented layout: prefix + key + "/" + LastModified + "-" + ETag.
    let first_copy = format!(
        "quarantine/docs/a/{}-{}",
        modified.format("%Y%m%dT%H%M%SZ"),
        etag.trim_matches('"')
    );
    assert!(quarantined.contains(&first_copy), "{quarantined:?}");
    assert!(
        quarantined
            .iter()
            .all(|k| k.starts_with("quarantine/docs/a/"))
    );
    let audit = db.audit().await;
    assert_eq!(audit.len(), 2, "{audit:?}");
}

#[tokio::test]
async fn quarantine_refuses_a_destination_that_holds_another_object() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    bucket.put("docs/a", "the orphan").await;
    let (etag, modified) = bucket.head("docs/a").await;
    let destination = format!(
        "quarantine/docs/a/{}-{}",
        modified.format("%Y%m%dT%H%M%SZ"),
        etag.trim_matches('"')
    );
    bucket
        .put(&destination, "something else, already there")
        .await;

    let run = quarantining(&db, &bucket).run(&["--format", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let finding = &by_id(&run)["a"];
    assert_eq!(finding["result"], "skipped", "{}", run.stdout);
    let reason = finding["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("holds another object"), "{reason}");
    assert_eq!(bucket.get("docs/a").await, b"the orphan");
    assert_eq!(
        bucket.get(&destination).await,
        b"something else, already there"
    );
    assert_eq!(db.audit().await, vec![], "a skipped action is not audited");
}

#[tokio::test]
async fn an_object_over_the_copy_threshold_is_quarantined_intact_in_parts() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    // Two parts of at least 5 MiB each but the last (S3's minimum part size); bytes that
    // differ along the object, so a part in the wrong place would show.
    let body: Vec<u8> = (0..6 * 1024 * 1024 + 123u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    bucket.put_bytes("docs/big", body.clone()).await;

    let run = quarantining(&db, &bucket)
        .set("storage.multipart_copy_threshold", "1048576")
        .run(&["--format", "json"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(by_id(&run)["big"]["result"], "applied", "{}", run.stdout);

    assert!(!bucket.exists("docs/big").await);
    let quarantined = keys_under(&bucket, "quarantine/docs/big/").await;
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    let copy = bucket.get(&quarantined[0]).await;
    assert!(copy == body, "the copy differs from the original");
    let (copy_etag, _) = bucket.head(&quarantined[0]).await;
    assert!(
        copy_etag.trim_matches('"').ends_with("-2"),
        "not a two-part copy: {copy_etag}"
    );
}

#[tokio::test]
async fn orphan_actions_apply_when_listings_carry_milliseconds() {
    for (action, record, left) in [
        ("adopt", Some("processed"), true),
        ("quarantine", None, false),
        ("delete", None, false),
    ] {
        let db = TestDb::with_docs(None).await;
        let bucket = TestBucket::new().await;
        for id in ["o1", "o2"] {
            bucket.put(&format!("docs/{id}"), id).await;
        }
        let proxy = FaultProxy::with_listing_milliseconds(&bucket.endpoint).await;
        let mut reconcile = Reconcile::new(&db, &bucket)
            .set("storage.prefix", "docs/")
            .set("sweep.orphan_grace", "0s")
            .set("sweep.orphan_action", action);
        reconcile.endpoint = proxy.endpoint.clone();

        let run = reconcile.run(&["--format", "json"]).await;
        assert_eq!(run.code, 0, "{action}: {}", run.stderr);
        assert!(proxy.rewritten() > 0, "{action}: no listing went through");
        for (id, finding) in by_id(&run) {
            assert_eq!(finding["result"], "applied", "{action} {id}: {finding}");
        }
        for id in ["o1", "o2"] {
            assert_eq!(db.status(id).await.as_deref(), record, "{action} {id}");
            assert_eq!(
                bucket.exists(&format!("docs/{id}")).await,
                left,
                "{action} {id}"
            );
        }
        assert_eq!(db.audit().await.len(), 2, "{action}");
    }
}

#[tokio::test]
async fn a_delete_spares_an_upload_that_lands_just_before_it() {
    for action in ["delete", "quarantine"] {
        let db = TestDb::with_docs(None).await;
        let bucket = TestBucket::new().await;
        bucket.put("docs/a", "the orphan").await;
        // Just before the reconciler's DELETE of docs/a reaches the server, a client uploads
        // new bytes to that key.
        let uploader = TestBucket {
            name: bucket.name.clone(),
            client: s3_client(&bucket.endpoint),
            endpoint: bucket.endpoint.clone(),
        };
        let uploader = std::sync::Arc::new(uploader);
        let path = format!("/{}/docs/a", bucket.name);
        let proxy = FaultProxy::rewriting(
            &bucket.endpoint,
            move |request| {
                let uploader = uploader.clone();
                let hit = request.method == "DELETE" && request.path() == path;
                Box::pin(async move {
                    if hit {
                        uploader.put("docs/a", "a new upload").await;
                    }
                })
            },
            |_, body| body,
        )
        .await;
        let mut reconcile = quarantining(&db, &bucket).set("sweep.orphan_action", action);
        reconcile.endpoint = proxy.endpoint.clone();

        let run = reconcile.run(&["--format", "json"]).await;
        assert_eq!(run.code, 0, "{action}: {}", run.stderr);
        let finding = &by_id(&run)["a"];
        assert_eq!(finding["result"], "skipped", "{action}: {}", run.stdout);
        let reason = finding["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("overwritten before its delete"), "{reason}");
        assert_eq!(bucket.get("docs/a").await, b"a new upload", "{action}");
        assert_eq!(db.audit().await, vec![], "{action}: nothing audited");
        if action == "quarantine" {
            // The orphan's bytes were copied before the upload landed: they stay there.
            let quarantined = keys_under(&bucket, "quarantine/docs/a/").await;
            assert_eq!(quarantined.len(), 1, "{quarantined:?}");
            assert_eq!(bucket.get(&quarantined[0]).await, b"the orphan");
        }
    }
}

/// The S3 console's "Create folder" writes a zero-byte object whose key ends in `/`: with
/// `docs/` and `docs/sub/` in the bucket, neither is an orphan, and adopting orphans makes no
/// record of either (nor of the prefix's own key, an empty id).
#[tokio::test]
async fn folder_markers_are_no_docs_and_adopt_makes_no_record_of_them() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    bucket.put_bytes("docs/", Vec::new()).await;
    bucket.put_bytes("docs/sub/", Vec::new()).await;
    bucket.put("docs/sub/real", "a stray doc").await;
    let reconcile = Reconcile::new(&db, &bucket)
        .set("storage.prefix", "docs/")
        .set("sweep.orphan_action", "adopt")
        .set("sweep.orphan_grace", "0s");

    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.findings(),
        triples(&[("orphan_object", "sub/real", "adopt")])
    );
    assert_eq!(db.status("").await, None, "a record for the prefix itself");
    assert_eq!(
        db.status("sub/").await,
        None,
        "a record for a folder marker"
    );
    assert!(db.status("sub/real").await.is_some());
    assert!(bucket.exists("docs/").await && bucket.exists("docs/sub/").await);
}
