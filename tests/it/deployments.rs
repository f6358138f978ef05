//! Several deployments (table, bucket, prefix) sharing one database and its reconciler schema:
//! each sees, claims and judges only its own state.

use crate::events::s3_message;
use crate::helpers::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// A second app table beside `docs`, shaped like the reference one.
async fn avatars_table(db: &TestDb) {
    sqlx::query(
        "CREATE TABLE avatars (
           id          text PRIMARY KEY,
           status      text NOT NULL DEFAULT 'pending',
           created_at  timestamptz NOT NULL DEFAULT now(),
           updated_at  timestamptz NOT NULL DEFAULT now()
         )",
    )
    .execute(&db.pool)
    .await
    .expect("create avatars");
}

fn log_in(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}.log"))
}

#[tokio::test]
async fn two_deployments_on_one_database_each_run_their_own_hooks_only() {
    let db = TestDb::with_docs(None).await;
    avatars_table(&db).await;
    let docs_bucket = TestBucket::new().await;
    let avatars_bucket = TestBucket::new().await;
    // "shared" is an id in both tables (and a key in both buckets).
    let docs = ["shared", "d1", "d2"];
    let avatars = ["shared", "a1", "a2"];
    for id in docs {
        db.doc(id, "pending", MINUTE).await;
        docs_bucket.put(id, "doc").await;
    }
    for id in avatars {
        db.doc_in("avatars", id, "pending", MINUTE).await;
        avatars_bucket.put(id, "avatar").await;
    }
    let docs_hook = HookServer::start(Duration::ZERO, |_| Reply::Status(200)).await;
    let avatars_hook = HookServer::start(Duration::ZERO, |_| Reply::Status(200)).await;
    let deployment = |bucket: &TestBucket, hook: &HookServer| {
        Reconcile::new(&db, bucket)
            .set("sweep.schedule", "* * * * * *")
            .set("processing.hook", "webhook")
            .set("processing.url", &hook.url)
            .set("processing.workers", "2")
    };
    let logs = tempfile::tempdir().expect("temp dir");
    let _docs_daemon =
        deployment(&docs_bucket, &docs_hook).spawn(&["daemon"], &log_in(logs.path(), "docs"));
    let _avatars_daemon = deployment(&avatars_bucket, &avatars_hook)
        .set("database.table", "avatars")
        .spawn(&["daemon"], &log_in(logs.path(), "avatars"));

    eventually(
        Duration::from_secs(60),
        "every doc of both deployments processed",
        || async {
            for id in docs {
                if db.status(id).await.as_deref() != Some("processed") {
                    return false;
                }
            }
            for id in avatars {
                if db.status_in("avatars", id).await.as_deref() != Some("processed") {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let seen = |hook: &HookServer| -> BTreeSet<(String, String)> {
        hook.calls()
            .iter()
            .map(|c: &Value| {
                (
                    c["id"].as_str().unwrap_or_default().to_owned(),
                    c["bucket"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let own = |ids: [&str; 3], bucket: &TestBucket| -> BTreeSet<(String, String)> {
        ids.iter()
            .map(|id| (id.to_string(), bucket.name.clone()))
            .collect()
    };
    assert_eq!(seen(&docs_hook), own(docs, &docs_bucket));
    assert_eq!(seen(&avatars_hook), own(avatars, &avatars_bucket));
    assert_eq!(docs_hook.calls().len(), 3, "one call per doc");
    assert_eq!(avatars_hook.calls().len(), 3, "one call per avatar");

    // Each deployment's explain shows its own audit trail of "shared", not the other's.
    let explain = Reconcile::new(&db, &avatars_bucket)
        .set("database.table", "avatars")
        .run(&["explain", "shared", "--format", "json"])
        .await;
    assert_eq!(explain.code, 0, "{}", explain.stderr);
    let trail = explain.json()["audit_trail"].clone();
    let trail = trail.as_array().expect("an audit trail");
    assert_eq!(
        trail.len(),
        2,
        "adopted, then processed, in avatars only: {trail:?}"
    );
}

#[tokio::test]
async fn an_event_for_the_same_key_in_two_buckets_is_judged_by_its_own_buckets_sequencer() {
    let db = TestDb::with_docs(None).await;
    avatars_table(&db).await;
    let docs_bucket = TestBucket::new().await;
    let avatars_bucket = TestBucket::new().await;
    let docs_queue = TestQueue::with_dead_letters(5).await;
    let avatars_queue = TestQueue::with_dead_letters(5).await;
    db.doc("k", "pending", MINUTE).await;
    db.doc_in("avatars", "k", "pending", MINUTE).await;
    docs_bucket.put("k", "doc").await;
    avatars_bucket.put("k", "avatar").await;
    let deployment = |bucket: &TestBucket, queue: &TestQueue| {
        Reconcile::new(&db, bucket)
            // No sweep in this test's time: only the events move the records.
            .set("sweep.schedule", "0 0 0 1 1 * 2099")
            .set("events.queue_url", &queue.url)
            .set("events.wait_time", "1s")
    };
    let logs = tempfile::tempdir().expect("temp dir");
    let _docs_daemon =
        deployment(&docs_bucket, &docs_queue).spawn(&["daemon"], &log_in(logs.path(), "docs"));
    let _avatars_daemon = deployment(&avatars_bucket, &avatars_queue)
        .set("database.table", "avatars")
        .spawn(&["daemon"], &log_in(logs.path(), "avatars"));

    // The docs bucket's event for "k" carries a larger sequencer than the avatars bucket's:
    // sequencers are only comparable within one bucket and key.
    docs_queue
        .send(&s3_message(
            "ObjectCreated:Put",
            &docs_bucket.name,
            "k",
            Some("00FF000000000000"),
        ))
        .await;
    eventually(
        Duration::from_secs(30),
        "the docs event applied",
        || async { db.status("k").await.as_deref() == Some("processed") },
    )
    .await;
    avatars_queue
        .send(&s3_message(
            "ObjectCreated:Put",
            &avatars_bucket.name,
            "k",
            Some("0011000000000000"),
        ))
        .await;
    eventually(
        Duration::from_secs(30),
        "the avatars event applied, not judged older than the docs bucket's",
        || async { db.status_in("avatars", "k").await.as_deref() == Some("processed") },
    )
    .await;
    let states: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reconciler.key_events WHERE key = 'k'")
            .fetch_one(&db.pool)
            .await
            .expect("key events");
    assert_eq!(states, 2, "one sequencer state per deployment");
}
