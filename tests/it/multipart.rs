//! Resumable uploads through the binary: multipart uploads in progress keep their records
//! pending, abandoned ones are aborted (or only reported by a dry run), under the breaker, with
//! the bytes their parts hold as a gauge.
//!
//! moto lists multipart uploads in creation order with a fixed `Initiated` of 2010-11-10, where
//! S3 (and garage) list them by key with their real start time. The reconciler reads the bucket
//! through a proxy that restores both on the wire: each upload's start is the moment the proxy
//! saw its CreateMultipartUpload answered, moved back when a test ages it. moto also names
//! ListParts' answer `ListPartsResponse` where S3 says `ListPartsResult`; the proxy renames it.
//! A proxy that keeps the server's order ([`Order::AsListed`]) stands for garage, which lists
//! uploads in upload-id order.

use crate::helpers::*;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);
/// S3's smallest part but the last.
const PART: usize = 5 * 1024 * 1024;

/// The order the proxy gives a ListMultipartUploads answer.
#[derive(Clone, Copy)]
enum Order {
    /// S3's: by key, then start.
    ByKey,
    /// The server's own (moto's: creation order), as garage does it (upload-id order).
    AsListed,
}

/// moto behind a proxy that makes its multipart listings look like S3's.
struct Uploads {
    proxy: FaultProxy,
    started: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    /// A process to SIGKILL right after the bucket answered an AbortMultipartUpload.
    kill_after_abort: Arc<Mutex<Option<u32>>>,
    /// How many aborts the kill lets through first.
    aborts_before_kill: Arc<std::sync::atomic::AtomicUsize>,
    /// How long each HEAD waits before it is forwarded.
    head_delay: Arc<Mutex<Duration>>,
    /// A client of the proxy, so that every upload's start is seen.
    client: aws_sdk_s3::Client,
}

impl Uploads {
    async fn start() -> Uploads {
        Uploads::listing(Order::ByKey).await
    }

    async fn listing(order: Order) -> Uploads {
        let started: Arc<Mutex<HashMap<String, DateTime<Utc>>>> = Default::default();
        let seen = started.clone();
        let kill_after_abort: Arc<Mutex<Option<u32>>> = Default::default();
        let armed = kill_after_abort.clone();
        let aborts_before_kill: Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let let_through = aborts_before_kill.clone();
        let head_delay: Arc<Mutex<Duration>> = Default::default();
        let delay = head_delay.clone();
        let proxy = FaultProxy::rewriting(
            &s3_target().endpoint,
            move |request| {
                let wait = match request.method.as_str() {
                    "HEAD" => delay.lock().map(|d| *d).unwrap_or_default(),
                    _ => Duration::ZERO,
                };
                Box::pin(tokio::time::sleep(wait))
            },
            move |request, body| {
                let creates = request.method == "POST" && request.target.ends_with("?uploads");
                let lists = request.method == "GET" && request.target.contains("?uploads");
                let parts = request.method == "GET" && request.target.contains("uploadId=");
                let aborts = request.method == "DELETE" && request.target.contains("uploadId=");
                let passes = || {
                    let_through
                        .fetch_update(
                            std::sync::atomic::Ordering::SeqCst,
                            std::sync::atomic::Ordering::SeqCst,
                            |n| n.checked_sub(1),
                        )
                        .is_ok()
                };
                if aborts
                    && !passes()
                    && let Some(pid) = armed.lock().ok().and_then(|mut pid| pid.take())
                {
                    let killed = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()
                        .expect("run kill");
                    assert!(killed.success(), "kill -KILL {pid}");
                }
                let xml = String::from_utf8_lossy(&body).into_owned();
                let Ok(mut started) = seen.lock() else {
                    return body;
                };
                if creates {
                    if let Some(id) = between(&xml, "<UploadId>", "</UploadId>") {
                        started.insert(id.to_owned(), Utc::now());
                    }
                    body
                } else if lists {
                    as_s3_lists(&xml, &started, order).into_bytes()
                } else if parts {
                    // moto names ListParts' root element ListPartsResponse; S3's (and the
                    // SDK's) is ListPartsResult.
                    xml.replace("ListPartsResponse", "ListPartsResult")
                        .into_bytes()
                } else {
                    body
                }
            },
        )
        .await;
        let client = s3_client(&proxy.endpoint);
        Uploads {
            proxy,
            started,
            kill_after_abort,
            aborts_before_kill,
            head_delay,
            client,
        }
    }

    /// Start a multipart upload of `key` and upload parts of these sizes; its id.
    async fn begin(&self, bucket: &str, key: &str, parts: &[usize]) -> String {
        let id = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("create multipart upload")
            .upload_id
            .expect("an upload id");
        for (n, size) in parts.iter().enumerate() {
            self.client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&id)
                .part_number(n as i32 + 1)
                .body(ByteStream::from(vec![b'x'; *size]))
                .send()
                .await
                .expect("upload part");
        }
        id
    }

    /// Make the upload look started `age` ago.
    fn age(&self, id: &str, age: Duration) {
        let mut started = self.started.lock().expect("started");
        started.insert(
            id.to_owned(),
            Utc::now() - chrono::Duration::from_std(age).expect("small age"),
        );
    }

    async fn complete(&self, bucket: &str, key: &str, id: &str) {
        let parts = self
            .client
            .list_parts()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .send()
            .await
            .expect("list parts");
        let completed: Vec<CompletedPart> = parts
            .parts()
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .set_part_number(p.part_number())
                    .set_e_tag(p.e_tag().map(str::to_owned))
                    .build()
            })
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .expect("complete multipart upload");
    }

    /// The ids of the uploads still in progress in `bucket`.
    async fn in_progress(&self, bucket: &str) -> Vec<String> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .expect("list multipart uploads");
        let mut ids: Vec<String> = out
            .uploads()
            .iter()
            .filter_map(|u| u.upload_id().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }

    /// Run a sweep that the proxy kills right after an abort was answered (the armed one); every
    /// upload is aborted by then.
    async fn sweep_killed_after_abort(&self, reconcile: &Reconcile, bucket: &TestBucket) {
        let logs = tempfile::tempdir().expect("temporary folder");
        let log = logs.path().join("killed.log");
        let mut killed = reconcile.spawn(&["--format", "json"], &log);
        *self.kill_after_abort.lock().expect("armed") = killed.id();
        let status = tokio::time::timeout(Duration::from_secs(60), killed.wait())
            .await
            .expect("the sweep ended")
            .expect("wait for the sweep");
        assert_eq!(status.code(), None, "not killed: {status:?}");
        assert!(self.in_progress(&bucket.name).await.is_empty(), "aborted");
    }

    /// `reconcile` over this database and bucket, reading the bucket through the proxy.
    fn reconcile(&self, db: &TestDb, bucket: &TestBucket) -> Reconcile {
        let mut reconcile = Reconcile::new(db, bucket).set("storage.prefix", "docs/");
        reconcile.endpoint = self.proxy.endpoint.clone();
        reconcile
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

/// A ListMultipartUploads answer as S3 gives it: uploads by key, then start (or in the server's
/// order); each `Initiated` the start the proxy saw (or was told).
fn as_s3_lists(xml: &str, started: &HashMap<String, DateTime<Utc>>, order: Order) -> String {
    let Some(first) = xml.find("<Upload>") else {
        return xml.to_owned();
    };
    let last = xml
        .rfind("</Upload>")
        .map_or(xml.len(), |end| end + "</Upload>".len());
    let mut uploads: Vec<(String, DateTime<Utc>, String)> = xml[first..last]
        .split("</Upload>")
        .filter(|block| block.contains("<Upload>"))
        .map(|block| {
            let block = format!("{}</Upload>", block.trim());
            let key = between(&block, "<Key>", "</Key>")
                .unwrap_or_default()
                .to_owned();
            let id = between(&block, "<UploadId>", "</UploadId>").unwrap_or_default();
            let at = started.get(id).copied().unwrap_or_else(Utc::now);
            let initiated = between(&block, "<Initiated>", "</Initiated>").unwrap_or_default();
            let stamped = block.replace(
                &format!("<Initiated>{initiated}</Initiated>"),
                &format!(
                    "<Initiated>{}</Initiated>",
                    at.format("%Y-%m-%dT%H:%M:%S.000Z")
                ),
            );
            (key, at, stamped)
        })
        .collect();
    if let Order::ByKey = order {
        uploads.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    }
    let blocks: String = uploads.into_iter().map(|(_, _, block)| block).collect();
    format!("{}{blocks}{}", &xml[..first], &xml[last..])
}

fn kinds_of(run: &Run, kind: &str) -> Vec<(String, String)> {
    run.json()["findings"]
        .as_array()
        .map(|findings| {
            findings
                .iter()
                .filter(|f| f["kind"] == kind)
                .map(|f| {
                    (
                        f["id"].as_str().unwrap_or_default().to_owned(),
                        f["result"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_record_uploading_in_parts_stays_pending_and_its_completion_moves_it_forward() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let queue = TestQueue::with_dead_letters(3).await;
    bucket.notify(&queue).await;
    let uploads = Uploads::start().await;
    // Pending for two hours (past pending_ttl), its video still uploading in parts.
    db.doc("video", "pending", 2 * HOUR).await;
    let id = uploads
        .begin(&bucket.name, "docs/video", &[PART, 1024])
        .await;
    let reconcile = uploads.reconcile(&db, &bucket);

    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(audit.findings(), vec![], "{}", audit.stdout);
    // The record and its upload, both uploading.
    assert_eq!(audit.json()["counts"]["in_grace"], 2, "{}", audit.stdout);
    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(db.status("video").await.as_deref(), Some("pending"));
    assert_eq!(uploads.in_progress(&bucket.name).await, vec![id.clone()]);

    // The client resumes and completes: the CompleteMultipartUpload event moves the record.
    let logs = tempfile::tempdir().expect("temporary folder");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile
        .set("events.queue_url", &queue.url)
        .set("events.wait_time", "1s")
        .set("sweep.schedule", "0 0 0 1 1 * 2099")
        .spawn(&["daemon", "-v"], &log);
    daemon_address(&log).await;
    uploads.complete(&bucket.name, "docs/video", &id).await;
    eventually(
        Duration::from_secs(20),
        "the completed upload processed",
        || async { db.status("video").await.as_deref() == Some("processed") },
    )
    .await;
    daemon.kill().await.expect("stop the daemon");
    // Moved by the event (the daemon does not sweep here), audited once.
    let moved: Vec<(String, String)> =
        sqlx::query_as("SELECT action, detail FROM reconciler.audit_log WHERE doc_id = 'video'")
            .fetch_all(&db.pool)
            .await
            .expect("read the audit log");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].0, "adopt");
    assert!(moved[0].1.contains("(S3 event)"), "{moved:?}");
    assert_eq!(queue.dead_letter_depth().await, 0);
}

#[tokio::test]
async fn an_abandoned_upload_is_reported_by_a_dry_run_and_aborted_by_an_apply() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let uploads = Uploads::start().await;
    db.doc("abandoned", "expired", 9 * DAY).await;
    db.doc("resumed", "pending", 2 * DAY).await;
    let abandoned = uploads
        .begin(&bucket.name, "docs/abandoned", &[PART, 2048])
        .await;
    uploads.age(&abandoned, 8 * DAY);
    // Still within the week: the record stays pending, the upload stays.
    let resumed = uploads.begin(&bucket.name, "docs/resumed", &[PART]).await;
    uploads.age(&resumed, 6 * DAY);
    // No record: abandoned after orphan_grace (1 day here), not before.
    let stray = uploads.begin(&bucket.name, "docs/stray", &[100]).await;
    uploads.age(&stray, 2 * DAY);
    let fresh_stray = uploads.begin(&bucket.name, "docs/stray-new", &[100]).await;
    let reconcile = uploads.reconcile(&db, &bucket);
    let mut every = vec![
        abandoned.clone(),
        resumed.clone(),
        stray.clone(),
        fresh_stray.clone(),
    ];
    every.sort();

    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(
        audit.findings(),
        triples(&[
            ("abandoned_multipart", "abandoned", "abort"),
            ("abandoned_multipart", "stray", "abort"),
        ]),
        "{}",
        audit.stdout
    );
    let detail = audit.json()["findings"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains(&format!("{} bytes in its parts", PART + 2048)),
        "{detail}"
    );
    // In grace: the resumed record and its upload, the fresh stray.
    assert_eq!(audit.json()["counts"]["in_grace"], 3, "{}", audit.stdout);
    assert_eq!(
        uploads.in_progress(&bucket.name).await,
        every,
        "a dry run aborted something"
    );

    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(
        kinds_of(&apply, "abandoned_multipart"),
        vec![
            ("abandoned".to_owned(), "applied".to_owned()),
            ("stray".to_owned(), "applied".to_owned()),
        ]
    );
    let mut left = vec![resumed.clone(), fresh_stray.clone()];
    left.sort();
    assert_eq!(uploads.in_progress(&bucket.name).await, left);
    // The parts are gone with the upload.
    let parts = bucket
        .client
        .list_parts()
        .bucket(&bucket.name)
        .key("docs/abandoned")
        .upload_id(&abandoned)
        .send()
        .await;
    assert!(
        parts.is_err(),
        "the aborted upload still has parts: {parts:?}"
    );
    // Audited, records untouched.
    let audit_log = db.audit().await;
    assert_eq!(
        audit_log,
        vec![
            (
                "abandoned".to_owned(),
                "abandoned_multipart".to_owned(),
                "abort".to_owned(),
                Some("expired".to_owned()),
                None
            ),
            (
                "stray".to_owned(),
                "abandoned_multipart".to_owned(),
                "abort".to_owned(),
                None,
                None
            ),
        ]
    );
    assert_eq!(db.status("abandoned").await.as_deref(), Some("expired"));
    assert_eq!(db.status("resumed").await.as_deref(), Some("pending"));

    let again = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(again.findings(), vec![], "{}", again.stdout);
}

#[tokio::test]
async fn the_breaker_counts_aborts() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let uploads = Uploads::start().await;
    db.doc("kept", "processed", DAY).await;
    bucket.put("docs/kept", "kept").await;
    for n in 0..4 {
        let id = uploads
            .begin(&bucket.name, &format!("docs/gone-{n}"), &[100])
            .await;
        uploads.age(&id, 2 * DAY);
    }
    let reconcile = uploads
        .reconcile(&db, &bucket)
        .set("sweep.max_action_ratio", "0.5")
        .set("sweep.max_action_floor", "2");
    let stopped = reconcile.run(&["--format", "json"]).await;
    assert_eq!(stopped.code, 4, "{}", stopped.stderr);
    assert!(stopped.stderr.contains("safety stop"), "{}", stopped.stderr);
    assert_eq!(stopped.json()["counts"]["abandoned_multipart"], 4);
    assert_eq!(uploads.in_progress(&bucket.name).await.len(), 4);

    let forced = reconcile.run(&["--force", "--format", "json"]).await;
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert_eq!(forced.json()["actions"]["applied"], 4);
    assert!(uploads.in_progress(&bucket.name).await.is_empty());
}

#[tokio::test]
async fn the_daemon_reports_the_bytes_abandoned_parts_hold() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let uploads = Uploads::start().await;
    let sizes = [[PART, 300].as_slice(), [700].as_slice()];
    for (n, parts) in sizes.iter().enumerate() {
        let id = uploads
            .begin(&bucket.name, &format!("docs/gone-{n}"), parts)
            .await;
        uploads.age(&id, 2 * DAY);
    }
    let logs = tempfile::tempdir().expect("temporary folder");
    let log = logs.path().join("daemon.log");
    let mut daemon = uploads
        .reconcile(&db, &bucket)
        .set("sweep.schedule", "* * * * * *")
        .spawn(&["daemon", "--dry-run", "-v"], &log);
    let address = daemon_address(&log).await;
    let expected = (PART + 300 + 700) as f64;
    eventually(Duration::from_secs(20), "the bytes gauge", || async {
        let body = http_get(&address, "/metrics").await.1;
        metric_value(&body, "reconcile_abandoned_multipart_bytes") == Some(expected)
            && metric_value(&body, "reconcile_findings{kind=\"abandoned_multipart\"}") == Some(2.0)
    })
    .await;
    daemon.kill().await.expect("stop the daemon");
    assert_eq!(uploads.in_progress(&bucket.name).await.len(), 2);
}

/// A sweep killed after the bucket aborted an upload and before the abort's audit row committed:
/// the intent it noted first tells the next sweep, which audits the abort once.
#[tokio::test]
async fn an_abort_cut_short_by_a_kill_is_audited_by_the_next_sweep() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let uploads = Uploads::start().await;
    let id = uploads.begin(&bucket.name, "docs/gone", &[100]).await;
    uploads.age(&id, 2 * DAY);
    let reconcile = uploads.reconcile(&db, &bucket);
    uploads.sweep_killed_after_abort(&reconcile, &bucket).await;
    assert_eq!(db.audit().await, vec![], "audited before the commit");
    let intents: i64 = sqlx::query_scalar("SELECT count(*) FROM reconciler.intents")
        .fetch_one(&db.pool)
        .await
        .expect("read intents");
    assert_eq!(intents, 1, "the intent outlives the process");

    let next = reconcile.run(&["--format", "json"]).await;
    assert_eq!(next.code, 0, "{}", next.stderr);
    let audit: Vec<(String, String)> =
        sqlx::query_as("SELECT action, detail FROM reconciler.audit_log WHERE doc_id = 'gone'")
            .fetch_all(&db.pool)
            .await
            .expect("read the audit log");
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "abort");
    assert!(
        audit[0].1.contains("recorded by a later sweep"),
        "{audit:?}"
    );
    assert!(audit[0].1.contains(&id), "{audit:?}");
    let intents: i64 = sqlx::query_scalar("SELECT count(*) FROM reconciler.intents")
        .fetch_one(&db.pool)
        .await
        .expect("read intents");
    assert_eq!(intents, 0, "settled");
}

/// garage lists uploads in upload-id order: keys z, b, m, a, b came back b, m, b, z, a. moto lists
/// them in creation order, so starting them at keys out of order gives the same kind of answer.
#[tokio::test]
async fn uploads_listed_out_of_key_order_are_swept_as_if_listed_by_key() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let uploads = Uploads::listing(Order::AsListed).await;
    // Pending past pending_ttl, each with an upload in progress: all in grace.
    for id in ["a", "b", "m", "z"] {
        db.doc(id, "pending", 2 * HOUR).await;
    }
    let mut started = Vec::new();
    for key in ["z", "b", "m", "a", "b"] {
        started.push(
            uploads
                .begin(&bucket.name, &format!("docs/{key}"), &[100])
                .await,
        );
    }
    // An older upload at m, abandoned (past multipart_grace), listed after the live ones.
    let abandoned = uploads.begin(&bucket.name, "docs/m", &[100]).await;
    uploads.age(&abandoned, 8 * DAY);
    // And a stray one without a record, listed last, sorting first.
    let stray = uploads.begin(&bucket.name, "docs/0-stray", &[100]).await;
    uploads.age(&stray, 2 * DAY);
    let reconcile = uploads.reconcile(&db, &bucket);

    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(
        audit.findings(),
        triples(&[
            ("abandoned_multipart", "0-stray", "abort"),
            ("abandoned_multipart", "m", "abort"),
        ]),
        "{}",
        audit.stdout
    );
    // Four records and five uploads in progress.
    assert_eq!(audit.json()["counts"]["in_grace"], 9, "{}", audit.stdout);

    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    started.sort();
    assert_eq!(uploads.in_progress(&bucket.name).await, started);
    for id in ["a", "b", "m", "z"] {
        assert_eq!(db.status(id).await.as_deref(), Some("pending"), "{id}");
    }
}

/// `explain` sees what the sweep sees: a pending record past its ttl whose upload is in progress
/// is in grace, not expired; the key's uploads are listed, and only that key's.
#[tokio::test]
async fn explain_sees_a_key_s_uploads_in_progress_as_the_sweep_does() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let uploads = Uploads::start().await;
    db.doc("video", "pending", 2 * HOUR).await;
    let live = uploads.begin(&bucket.name, "docs/video", &[100]).await;
    let old = uploads.begin(&bucket.name, "docs/video", &[100]).await;
    uploads.age(&old, 8 * DAY);
    // Shares the prefix "docs/video": not the doc's.
    uploads.begin(&bucket.name, "docs/video-2", &[100]).await;
    let reconcile = uploads.reconcile(&db, &bucket);

    let sweep = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(sweep.code, 0, "{}", sweep.stderr);
    assert_eq!(
        sweep.findings(),
        triples(&[("abandoned_multipart", "video", "abort")]),
        "{}",
        sweep.stdout
    );

    let json = reconcile
        .run(&["explain", "video", "--format", "json"])
        .await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let explained = json.json();
    assert_eq!(
        explained["decision"]["finding"], "in_grace",
        "{}",
        json.stdout
    );
    let why = explained["decision"]["detail"].as_str().unwrap_or_default();
    assert!(why.contains("multipart upload in progress"), "{why}");
    let listed: Vec<(String, String)> = explained["uploads"]
        .as_array()
        .map(|uploads| {
            uploads
                .iter()
                .map(|u| {
                    (
                        u["upload_id"].as_str().unwrap_or_default().to_owned(),
                        u["finding"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // Oldest first, each with the sweep's verdict.
    assert_eq!(
        listed,
        vec![
            (old.clone(), "abandoned_multipart".to_owned()),
            (live.clone(), "in_grace".to_owned()),
        ],
        "{}",
        json.stdout
    );

    let table = reconcile
        .run(&["explain", "docs/video", "--format", "table"])
        .await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("now     in_grace"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains(&format!("upload  {old}")) && table.stdout.contains("-> abort"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains(&format!("upload  {live}")),
        "{}",
        table.stdout
    );
}

/// Issue 18: two uploads abandoned at one key are aborted at once, and the intents were one per
/// key: the second noted replaced the first, and the first to finish cleared the key's intent,
/// the other's with it. A kill after the other's abort then left that abort with neither an
/// audit row nor an intent. Each change now has an intent of its own.
#[tokio::test]
async fn two_aborts_at_one_key_cut_by_a_kill_are_each_audited_once() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let uploads = Uploads::start().await;
    let first = uploads.begin(&bucket.name, "docs/twice", &[100]).await;
    let second = uploads.begin(&bucket.name, "docs/twice", &[200]).await;
    for id in [&first, &second] {
        uploads.age(id, 2 * DAY);
    }
    // Both aborts note their intent before either looks at the key.
    *uploads.head_delay.lock().expect("delay") = Duration::from_millis(500);
    uploads
        .aborts_before_kill
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let reconcile = uploads.reconcile(&db, &bucket);
    uploads.sweep_killed_after_abort(&reconcile, &bucket).await;
    *uploads.head_delay.lock().expect("delay") = Duration::ZERO;

    let next = reconcile.run(&["--format", "json"]).await;
    assert_eq!(next.code, 0, "{}", next.stderr);
    let mut audited: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, detail FROM reconciler.audit_log WHERE doc_id = 'twice' ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read the audit log");
    audited.sort_by_key(|(_, detail)| detail.contains(&second));
    assert_eq!(
        audited
            .iter()
            .map(|(action, detail)| (
                action.as_str(),
                detail.contains(&first),
                detail.contains(&second)
            ))
            .collect::<Vec<_>>(),
        [("abort", true, false), ("abort", false, true)],
        "each abort audited once: {audited:?}"
    );
    let intents: i64 = sqlx::query_scalar("SELECT count(*) FROM reconciler.intents")
        .fetch_one(&db.pool)
        .await
        .expect("read intents");
    assert_eq!(intents, 0, "settled");
}
