//! The sweep history and the rows that only grow: sweeps left `running` by a dead process, one
//! sweep per deployment at a time, and pruning past the retention.

use crate::helpers::*;
use sqlx::Connection;
use std::time::Duration;

/// The sweep lock's advisory-lock key, as every version computes it (FNV-1a of the scope): a
/// replica of another version must take the same lock.
fn sweep_lock_key(scope: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("upload-reconciler/sweep/{scope}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

async fn outcome(db: &TestDb, id: uuid::Uuid) -> (String, bool) {
    sqlx::query_as("SELECT outcome, finished_at IS NOT NULL FROM reconciler.sweeps WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .expect("sweep row")
}

#[tokio::test]
async fn a_sweep_left_running_by_a_killed_process_is_closed_as_interrupted_by_the_next() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("stale", "pending", 2 * HOUR).await;
    let reconcile = Reconcile::new(&db, &bucket);
    assert_eq!(reconcile.run(&["migrate"]).await.code, 0);
    // What a sweep killed mid-way leaves, and another deployment's sweep in progress.
    let (killed, elsewhere) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    for (id, bucket) in [(killed, bucket.name.as_str()), (elsewhere, "someone-else")] {
        sqlx::query(
            "INSERT INTO reconciler.sweeps (id, started_at, bucket, prefix) \
             VALUES ($1, now() - interval '1 hour', $2, '')",
        )
        .bind(id)
        .bind(bucket)
        .execute(&db.pool)
        .await
        .expect("a running sweep row");
    }

    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(outcome(&db, killed).await, ("interrupted".into(), true));
    assert_eq!(
        outcome(&db, elsewhere).await,
        ("running".into(), false),
        "another deployment's sweep is not this one's to close"
    );
    let latest: String = sqlx::query_scalar(
        "SELECT outcome FROM reconciler.sweeps WHERE bucket = $1 ORDER BY started_at DESC LIMIT 1",
    )
    .bind(&bucket.name)
    .fetch_one(&db.pool)
    .await
    .expect("the new sweep");
    assert_eq!(latest, "ok");
}

#[tokio::test]
async fn an_applying_sweep_refuses_to_run_beside_another_holding_the_sweep_lock() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("stale", "pending", 2 * HOUR).await;
    let reconcile = Reconcile::new(&db, &bucket);
    let mut holder = sqlx::PgConnection::connect(&db.url())
        .await
        .expect("connect");
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(sweep_lock_key(&scope_of("docs", &bucket.name, "")))
        .fetch_one(&mut holder)
        .await
        .expect("take the lock");
    assert!(held);

    let refused = reconcile.run(&["--format", "json"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(refused.stderr.contains("sweep lock"), "{}", refused.stderr);
    assert_eq!(db.status("stale").await.as_deref(), Some("pending"));
    // A dry run writes nothing and needs no lock.
    let dry = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);

    holder.close().await.expect("release the lock");
    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(db.status("stale").await.as_deref(), Some("expired"));
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&db.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn the_daemon_prunes_old_jobs_event_states_and_objects_and_keeps_recent_ones() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.schedule", "0 0 0 1 1 * 2099")
        .set("retention.finished_jobs", "1d")
        .set("retention.key_events", "1d")
        .set("retention.objects", "1d");
    assert_eq!(reconcile.run(&["migrate"]).await.code, 0);
    // 2 500 old keys (more than one batch) and one recent, each with its doc.
    sqlx::query(
        "INSERT INTO docs (id, status) SELECT 'old' || i, 'processed' FROM generate_series(1, 2500) i",
    )
    .execute(&db.pool)
    .await
    .expect("docs");
    db.doc("recent", "processed", MINUTE).await;
    db.doc("gave-up", "failed", 10 * 24 * HOUR).await;
    // Written as a release before scopes would have: this deployment adopts them when it starts.
    for sql in [
        "INSERT INTO reconciler.key_events (key, sequencer, updated_at) \
         SELECT 'old' || i, '0A', now() - interval '10 days' FROM generate_series(1, 2500) i",
        "INSERT INTO reconciler.key_events (key, sequencer) VALUES ('recent', '0A')",
        "INSERT INTO reconciler.objects (key, size, noted_at) \
         SELECT 'old' || i, 1, now() - interval '10 days' FROM generate_series(1, 1500) i",
        "INSERT INTO reconciler.objects (key, size) VALUES ('recent', 1)",
        "INSERT INTO reconciler.jobs (doc_id, key, state, next_attempt_at, updated_at) \
         SELECT 'old' || i, 'old' || i, 'done', now(), now() - interval '10 days' \
         FROM generate_series(1, 1200) i",
        "INSERT INTO reconciler.jobs (doc_id, key, state, next_attempt_at) \
         VALUES ('recent', 'recent', 'done', now())",
        "INSERT INTO reconciler.jobs (doc_id, key, state, attempts, next_attempt_at, updated_at) \
         VALUES ('gave-up', 'gave-up', 'failed', 10, now(), now() - interval '10 days')",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
            .expect("old rows");
    }
    let logs = tempfile::tempdir().expect("temp dir");

    // Audit mode writes nothing, pruning included.
    let log = logs.path().join("audit.log");
    let mut audit = reconcile.spawn(&["daemon", "--dry-run", "-v"], &log);
    daemon_address(&log).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    audit.kill().await.expect("stop the audit daemon");
    assert_eq!(
        count(&db, "SELECT count(*) FROM reconciler.key_events").await,
        2501
    );

    let log = logs.path().join("daemon.log");
    let _daemon = reconcile.spawn(&["daemon"], &log);
    eventually(Duration::from_secs(60), "the old rows pruned", || async {
        count(&db, "SELECT count(*) FROM reconciler.key_events").await == 1
            && count(&db, "SELECT count(*) FROM reconciler.objects").await == 1
            && count(
                &db,
                "SELECT count(*) FROM reconciler.jobs WHERE state = 'done'",
            )
            .await
                == 1
    })
    .await;
    for table in ["key_events", "objects"] {
        let kept = count(
            &db,
            &format!("SELECT count(*) FROM reconciler.{table} WHERE key = 'recent'"),
        )
        .await;
        assert_eq!(kept, 1, "the recent row of {table} is kept");
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM reconciler.jobs WHERE doc_id IN ('recent', 'gave-up')"
        )
        .await,
        2,
        "the recent finished job and the failed one are kept"
    );
}
