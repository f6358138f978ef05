//! The event path against moto's real S3 notifications and SQS queues.

use crate::helpers::*;
use std::sync::Arc;
use std::time::Duration;
use upload_reconciler::bucket::s3::S3Bucket;
use upload_reconciler::catalog::Catalog;
use upload_reconciler::catalog::sql::SqlCatalog;
use upload_reconciler::config::Config;
use upload_reconciler::events::effect::Effects;
use upload_reconciler::events::sqs::{Batch, Poller};
use upload_reconciler::execute::AfterUpload;
use upload_reconciler::metrics::Metrics;
use upload_reconciler::rules::Rules;

struct EventWorld {
    db: TestDb,
    bucket: TestBucket,
    queue: TestQueue,
    poller: Poller,
    metrics: Arc<Metrics>,
}

async fn event_world(queue: TestQueue, prefix: &str) -> EventWorld {
    event_world_with(queue, prefix, AfterUpload::MarkProcessed).await
}

async fn event_world_with(queue: TestQueue, prefix: &str, after_upload: AfterUpload) -> EventWorld {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let config = Config::from_toml(&format!(
        "[database]\nurl = \"{}\"\n[storage]\nbucket = \"{}\"\nprefix = \"{prefix}\"",
        db.url(),
        bucket.name
    ))
    .expect("valid config");
    let catalog = SqlCatalog::connect(
        &config.database,
        upload_reconciler::adapters::scope(&config),
    )
    .await
    .expect("connect");
    catalog.migrate().await.expect("migrate");
    let s3 = S3Bucket::with_client(s3_client(&bucket.endpoint), &config.storage);
    let metrics = Metrics::new();
    let poller = Poller {
        queue: upload_reconciler::events::sqs::Queue {
            client: sqs_client(&bucket.endpoint),
            url: queue.url.clone(),
            endpoint: bucket.endpoint.clone(),
        },
        wait_time: Duration::from_secs(1),
        // Long enough that a message left in the queue does not come back during a test.
        visibility: Duration::from_secs(60),
        effects: Arc::new(Effects {
            catalog: Arc::new(catalog),
            bucket: Arc::new(s3),
            prefix: prefix.to_owned(),
            rules: Rules {
                after_upload,
                ..config.rules()
            },
        }),
        metrics: metrics.clone(),
        gate: Default::default(),
    };
    EventWorld {
        db,
        bucket,
        queue,
        poller,
        metrics,
    }
}

impl EventWorld {
    /// Poll until a receive comes back empty; the batches it handled, added up.
    async fn drain(&self) -> Batch {
        let mut total = Batch::default();
        for _ in 0..100 {
            let batch = tokio::time::timeout(Duration::from_secs(60), self.poller.poll_once())
                .await
                .expect("a poll finished (likely hung)")
                .expect("poll");
            if batch.received == 0 {
                return total;
            }
            total.received += batch.received;
            total.deleted += batch.deleted;
            total.kept += batch.kept;
        }
        panic!("the queue never ran dry");
    }

    fn received(&self, kind: &str) -> u64 {
        Metrics::count(&self.metrics.events_received, kind)
    }

    fn ignored(&self, reason: &str) -> u64 {
        Metrics::count(&self.metrics.events_ignored, reason)
    }
}

/// An S3 notification as S3 sends it to SQS; `key` as S3 encodes it.
pub fn s3_message(event: &str, bucket: &str, encoded_key: &str, sequencer: Option<&str>) -> String {
    let mut object = serde_json::json!({"key": encoded_key, "size": 5, "eTag": "5d41402abc4b2a76b9719d911017c592"});
    if let Some(seq) = sequencer {
        object["sequencer"] = seq.into();
    }
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": chrono::Utc::now().to_rfc3339(), "eventName": event,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
               "object": object}
    }]})
    .to_string()
}

#[tokio::test]
async fn presigned_uploads_move_records_forward_without_a_sweep() {
    let w = event_world(TestQueue::with_dead_letters(5).await, "docs/").await;
    w.bucket.notify(&w.queue).await;
    let ids = [
        "plain",
        "with space",
        "plus+sign",
        "ünïcødé",
        "nested/path/doc",
        "100%",
    ];
    for id in ids {
        w.db.doc(id, "pending", MINUTE).await;
    }
    w.db.doc("never-uploaded", "pending", MINUTE).await;
    for id in ids {
        w.bucket
            .presigned_put(&format!("docs/{id}"), "file body")
            .await;
    }
    w.bucket.presigned_put("elsewhere/not-a-doc", "x").await;
    w.bucket.presigned_put("docs/no-record-yet", "x").await;

    let batch = w.drain().await;
    assert_eq!(
        batch.kept, 0,
        "every message was handled and deleted: {batch:?}"
    );
    for id in ids {
        assert_eq!(w.db.status(id).await.as_deref(), Some("processed"), "{id}");
    }
    assert_eq!(
        w.db.status("never-uploaded").await.as_deref(),
        Some("pending")
    );
    assert!(w.received("test") >= 1, "the TestEvent was acknowledged");
    assert_eq!(w.received("created"), ids.len() as u64 + 2);
    assert_eq!(w.ignored("outside_prefix"), 1);
    assert_eq!(w.ignored("no_record"), 1);
    assert_eq!(w.metrics.event_lag.get_sample_count(), ids.len() as u64);
    let audit = w.db.audit().await;
    assert_eq!(
        audit.len(),
        ids.len(),
        "one audited effect per upload: {audit:?}"
    );
    assert!(
        audit
            .iter()
            .all(|a| a.1 == "upload_confirmed" && a.2 == "adopt")
    );
    assert_eq!(w.queue.depth().await, 0);

    // A deleted object marks its record missing.
    w.bucket.delete("docs/plain").await;
    w.drain().await;
    assert_eq!(w.db.status("plain").await.as_deref(), Some("missing"));
    assert_eq!(w.received("removed"), 1);
}

#[tokio::test]
async fn sns_wrapped_and_eventbridge_messages_take_effect() {
    let w = event_world(TestQueue::with_dead_letters(5).await, "").await;
    let b = w.bucket.name.clone();
    w.db.doc("via sns", "pending", MINUTE).await;
    w.bucket.put("via sns", "x").await;
    w.db.doc("late+one", "expired", 3 * HOUR).await;
    w.bucket.put("late+one", "x").await;
    w.db.doc("gone", "processed", HOUR).await;
    w.db.doc("other", "pending", MINUTE).await;

    let sns = serde_json::json!({
        "Type": "Notification", "MessageId": "6d8b5a3c", "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
        "Subject": "Amazon S3 Notification",
        "Message": s3_message("ObjectCreated:Put", &b, "via+sns", None),
    });
    w.queue.send(&sns.to_string()).await;
    let eventbridge = |detail_type: &str, key: &str| {
        serde_json::json!({
            "version": "0", "id": "e1", "detail-type": detail_type, "source": "aws.s3",
            "account": "123456789012", "time": chrono::Utc::now().to_rfc3339(), "region": "us-east-1",
            "resources": [format!("arn:aws:s3:::{b}")],
            "detail": {"version": "0", "bucket": {"name": b}, "object": {"key": key, "size": 1},
                       "request-id": "r", "requester": "123456789012", "reason": "PutObject"}
        })
        .to_string()
    };
    w.queue
        .send(&eventbridge("Object Created", "late+one"))
        .await;
    w.queue.send(&eventbridge("Object Deleted", "gone")).await;
    w.queue
        .send(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"x","RequestId":"1"}"#)
        .await;
    // Another bucket's event changes nothing here.
    w.queue
        .send(&s3_message(
            "ObjectCreated:Put",
            "some-other-bucket",
            "other",
            None,
        ))
        .await;

    let batch = w.drain().await;
    assert_eq!(
        batch,
        Batch {
            received: 5,
            deleted: 5,
            kept: 0
        }
    );
    assert_eq!(w.db.status("via sns").await.as_deref(), Some("processed"));
    assert_eq!(w.db.status("late+one").await.as_deref(), Some("processed"));
    assert_eq!(w.db.status("gone").await.as_deref(), Some("missing"));
    assert_eq!(w.db.status("other").await.as_deref(), Some("pending"));
    assert_eq!(w.ignored("other_bucket"), 1);
    assert_eq!(w.received("test"), 1);
    let audit = w.db.audit().await;
    assert!(audit.contains(&(
        "late+one".into(),
        "late_upload".into(),
        "adopt".into(),
        Some("expired".into()),
        Some("processed".into())
    )));
}

#[tokio::test]
async fn duplicates_and_reordered_events_settle_on_the_right_state() {
    let w = event_world(TestQueue::with_dead_letters(5).await, "").await;
    let b = w.bucket.name.clone();

    // Created, delivered twice; then an older Removed arrives late: still there (processed:
    // no hook is configured).
    w.db.doc("dup", "pending", MINUTE).await;
    w.bucket.put("dup", "x").await;
    w.queue
        .send(&s3_message("ObjectCreated:Put", &b, "dup", Some("0A")))
        .await;
    w.queue
        .send(&s3_message("ObjectCreated:Put", &b, "dup", Some("0A")))
        .await;
    w.queue
        .send(&s3_message("ObjectRemoved:Delete", &b, "dup", Some("09")))
        .await;
    w.drain().await;
    assert_eq!(w.db.status("dup").await.as_deref(), Some("processed"));
    assert_eq!(w.ignored("duplicate"), 1);
    assert_eq!(w.ignored("out_of_order"), 1);

    // The object was uploaded, then deleted; the Removed is delivered before the Created it
    // follows (by sequencer, padded: "0B" < "0B01"). The record must end missing, not uploaded.
    w.db.doc("flip", "uploaded", MINUTE).await;
    w.queue
        .send(&s3_message(
            "ObjectRemoved:Delete",
            &b,
            "flip",
            Some("0B01"),
        ))
        .await;
    w.queue
        .send(&s3_message("ObjectCreated:Put", &b, "flip", Some("0B")))
        .await;
    w.drain().await;
    assert_eq!(w.db.status("flip").await.as_deref(), Some("missing"));
    assert_eq!(w.ignored("out_of_order"), 2);

    // Each effect was written once, whatever was delivered how often.
    let audit = w.db.audit().await;
    let per_doc = |id: &str| audit.iter().filter(|a| a.0 == id).count();
    assert_eq!((per_doc("dup"), per_doc("flip")), (1, 1), "{audit:?}");
}

#[tokio::test]
async fn malformed_messages_are_counted_and_never_deleted() {
    let w = event_world(TestQueue::with_dead_letters(1000).await, "").await;
    let good = s3_message("ObjectCreated:Put", &w.bucket.name, "k", None);
    let mut bodies: Vec<String> = vec![
        "not json".into(),
        "{".into(),
        "[]".into(),
        "null".into(),
        "42".into(),
        "\"a string\"".into(),
        "{}".into(),
        r#"{"Records": []}"#.into(),
        r#"{"Records": {}}"#.into(),
        r#"{"Records": "yes"}"#.into(),
        r#"{"Records": [{}]}"#.into(),
        r#"{"Records": [null]}"#.into(),
        r#"{"Records": [{"eventName": 5}]}"#.into(),
        r#"{"Records": [{"eventName": "ObjectCreated:Put"}]}"#.into(),
        r#"{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}]}"#
            .into(),
        good.replace(r#""key":"k""#, r#""key":7"#),
        good.replace(r#""size":5"#, r#""size":"five""#),
        good.replace(r#""size":5"#, r#""size":-5"#),
        good.replace(r#""key":"k""#, r#""key":"%FF%FE""#),
        good.replace(r#""key":"k""#, r#""key":"""#),
        good.replace(r#""eventTime":""#, r#""eventTime":"yesterday"#),
        s3_message("ObjectCreated:Put", &w.bucket.name, "k", Some("not-hex")),
        good[..good.len() / 2].to_owned(),
        good.replace("Records", "records"),
        r#"{"Type": "Notification"}"#.into(),
        r#"{"Type": "Notification", "Message": "not json"}"#.into(),
        r#"{"Type": "Notification", "Message": {"Records": []}}"#.into(),
        r#"{"Type": "Notification", "Message": "{\"hello\": 1}"}"#.into(),
        r#"{"detail-type": "Object Created"}"#.into(),
        r#"{"detail-type": "Object Created", "detail": {"bucket": {}}}"#.into(),
        r#"{"detail-type": 1, "detail": {}}"#.into(),
        format!("{{\"Records\": \"{}\"}}", "x".repeat(200_000)),
        "\u{feff}{\"Records\": []}".into(),
    ];
    bodies.dedup();
    for body in &bodies {
        w.queue.send(body).await;
    }

    let batch = w.drain().await;
    assert_eq!(batch.received, bodies.len(), "{batch:?}");
    assert_eq!(batch.deleted, 0, "a malformed message was deleted");
    let failed: u64 = upload_reconciler::metrics::EVENT_FAILURES
        .iter()
        .map(|r| Metrics::count(&w.metrics.events_failed, r))
        .sum();
    assert_eq!(
        failed,
        bodies.len() as u64,
        "each malformed body counted once"
    );
    assert_eq!(
        w.queue.depth().await,
        bodies.len() as u64,
        "every message is still queued"
    );
}

#[tokio::test]
async fn with_a_hook_configured_an_upload_event_queues_processing() {
    let w = event_world_with(
        TestQueue::with_dead_letters(5).await,
        "",
        AfterUpload::Enqueue,
    )
    .await;
    w.db.doc("to-process", "pending", MINUTE).await;
    w.bucket.put("to-process", "x").await;
    w.queue
        .send(&s3_message(
            "ObjectCreated:Put",
            &w.bucket.name,
            "to-process",
            None,
        ))
        .await;
    w.drain().await;
    assert_eq!(w.db.status("to-process").await.as_deref(), Some("uploaded"));
    let job: (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM reconciler.jobs WHERE doc_id = 'to-process'")
            .fetch_one(&w.db.pool)
            .await
            .expect("a queued job");
    assert_eq!(job, ("queued".into(), 0));
}
