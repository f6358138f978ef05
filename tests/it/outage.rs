//! A dependency outage under a stream of uploads: the daemon holds what it received, receives no
//! more, says it is unready, and resumes once the database answers; nothing reaches the DLQ.

use crate::daemon::{signal, wait_exit};
use crate::helpers::*;
use std::time::Duration;

#[tokio::test]
async fn a_database_outage_under_a_stream_of_uploads_dead_letters_nothing_and_readyz_tells() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let queue = TestQueue::with_dead_letters(3).await;
    bucket.notify(&queue).await;
    let before: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
    let during: Vec<String> = (0..20).map(|i| format!("during-{i:02}")).collect();
    for id in before.iter().chain(&during) {
        db.doc(id, "pending", MINUTE).await;
    }
    let postgres = FaultProxy::tcp("127.0.0.1:5432").await;
    let mut reconcile = Reconcile::new(&db, &bucket)
        .set("events.queue_url", &queue.url)
        .set("events.wait_time", "1s")
        .set("events.visibility_timeout", "3s")
        .set("events.pollers", "2");
    reconcile.database_url = postgres.url_of(&db);
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon", "-v"], &log);
    let addr = daemon_address(&log).await;

    for id in &before {
        bucket.presigned_put(id, "body").await;
    }
    eventually(
        Duration::from_secs(30),
        "the first uploads applied",
        || async { db.all_have_status(&before, "processed").await },
    )
    .await;
    assert_eq!(http_get(&addr, "/readyz").await.0, 200);

    // 20 s without the database, one upload a second meanwhile.
    postgres.set(Fault::Reset);
    let outage = tokio::time::Instant::now();
    let mut unready_seen = false;
    for (i, id) in during.iter().enumerate() {
        bucket.presigned_put(id, "body").await;
        let (status, body) = http_get(&addr, "/readyz").await;
        assert_ne!(status, 200, "ready while the database is down: {body}");
        unready_seen |= status == 503;
        tokio::time::sleep_until(outage + Duration::from_secs(i as u64 + 1)).await;
    }
    assert!(unready_seen, "/readyz never answered 503 during the outage");
    postgres.set(Fault::Pass);

    eventually(
        Duration::from_secs(90),
        "every upload applied after the outage",
        || async {
            let dead = queue.dead_letter_depth().await;
            assert_eq!(dead, 0, "healthy events were dead-lettered");
            db.all_have_status(before.iter().chain(&during), "processed")
                .await
        },
    )
    .await;
    eventually(Duration::from_secs(30), "/readyz ready again", || async {
        http_get(&addr, "/readyz").await.0 == 200
    })
    .await;
    eventually(Duration::from_secs(30), "the queue drained", || async {
        queue.depth().await == 0
    })
    .await;
    assert_eq!(
        queue.dead_letter_depth().await,
        0,
        "dead-lettered at the end"
    );
    let audit = db.audit().await;
    for id in before.iter().chain(&during) {
        assert_eq!(
            audit.iter().filter(|a| &a.0 == id).count(),
            1,
            "{id}: {audit:?}"
        );
    }
    let metrics = http_get(&addr, "/metrics").await.1;
    assert!(
        metric_value(
            &metrics,
            "reconcile_events_failed_total{reason=\"dependency_down\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );

    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)).await, 0);
}

/// Issue 18: a Postgres connection that goes silent (answers nothing, and is never closed) held
/// its query, and the sweep behind it, forever: there was no client-side deadline. Now each call
/// fails within `database.query_timeout`, naming the database, and the daemon sweeps again once
/// the database answers.
#[tokio::test]
async fn a_silent_postgres_connection_fails_in_bounded_time_and_the_daemon_recovers() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("doc", "processed", MINUTE).await;
    bucket.put("doc", "body").await;
    let postgres = FaultProxy::tcp("127.0.0.1:5432").await;
    let mut reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.schedule", "* * * * * *")
        .set("database.query_timeout", "2s");
    reconcile.database_url = postgres.url_of(&db);
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon", "-v"], &log);
    let addr = daemon_address(&log).await;
    let last_success = || async {
        metric_value(
            &http_get(&addr, "/metrics").await.1,
            "reconcile_sweep_last_success_timestamp_seconds",
        )
    };
    eventually(Duration::from_secs(30), "a first sweep", || async {
        last_success().await.is_some()
    })
    .await;

    postgres.set(Fault::Stall);
    let stalled = std::time::Instant::now();
    let silent = format!("127.0.0.1:{}", postgres.port);
    eventually(
        Duration::from_secs(20),
        "an error naming the silent database",
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .any(|l| l.contains("no answer within 2s") && l.contains(&silent))
        },
    )
    .await;
    assert!(
        stalled.elapsed() < Duration::from_secs(20),
        "bounded: {:?}",
        stalled.elapsed()
    );
    let stalled_at = chrono::Utc::now().timestamp() as f64;
    postgres.set(Fault::Pass);
    eventually(
        Duration::from_secs(60),
        "a sweep after the stall",
        || async { last_success().await.is_some_and(|t| t > stalled_at) },
    )
    .await;
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)).await, 0);
}
