//! SIGTERM during a long applying sweep: it stops between two actions, each of which stays whole,
//! records the sweep as `interrupted`, and the process exits promptly.

use crate::daemon::{signal, wait_exit};
use crate::helpers::*;
use std::time::Duration;

/// Enough stale docs that applying them all takes far longer than the wait for an exit.
const STALE: usize = 3000;

async fn stale_docs(db: &TestDb) {
    sqlx::query(
        "INSERT INTO docs (id, status, created_at, updated_at) \
         SELECT 'stale-' || lpad(i::text, 5, '0'), 'pending', \
                now() - interval '2 hours', now() - interval '2 hours' \
         FROM generate_series(1, $1) AS i",
    )
    .bind(STALE as i32)
    .execute(&db.pool)
    .await
    .expect("insert stale docs");
}

/// Audit rows so far; 0 until the sweep has created the reconciler's tables.
async fn audit_rows(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM reconciler.audit_log")
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0)
}

/// The sweep is recorded `interrupted`, and nothing is half-applied: each doc is either expired
/// with its one audit row, or still pending without any. Returns how many were expired.
async fn assert_interrupted_between_actions(db: &TestDb) -> usize {
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT outcome FROM reconciler.sweeps")
        .fetch_all(&db.pool)
        .await
        .expect("read sweeps");
    assert_eq!(outcomes, ["interrupted"]);
    let audit = db.audit().await;
    let docs = db.snapshot().await;
    assert_eq!(docs.len(), STALE);
    let mut expired = 0;
    for (id, status, _, _) in &docs {
        let rows: Vec<_> = audit.iter().filter(|a| &a.0 == id).collect();
        match status.as_str() {
            "expired" => {
                expired += 1;
                assert_eq!(rows.len(), 1, "{id}: {rows:?}");
                assert_eq!(rows[0].4.as_deref(), Some("expired"), "{id}: {rows:?}");
            }
            "pending" => assert!(rows.is_empty(), "{id}: {rows:?}"),
            other => panic!("{id} is {other}"),
        }
    }
    assert_eq!(audit.len(), expired, "an audit row without its change");
    assert!(
        expired > 0 && expired < STALE,
        "{expired} of {STALE} expired: not interrupted in the middle"
    );
    expired
}

#[tokio::test]
async fn sigterm_stops_a_one_shot_applying_sweep_between_actions_and_exits_1() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    stale_docs(&db).await;
    let reconcile = Reconcile::new(&db, &bucket);
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("sweep.log");
    let mut sweep = reconcile.spawn(&["sweep", "--force", "--format", "json"], &log);
    eventually(Duration::from_secs(60), "actions being applied", || async {
        audit_rows(&db).await > 0
    })
    .await;

    signal(&sweep, "TERM");
    let code = wait_exit(&mut sweep, Duration::from_secs(10)).await;
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, 1, "{stderr}");
    let expired = assert_interrupted_between_actions(&db).await;
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "reconcile: sweep interrupted: {expired} action(s) applied, {} skipped",
            STALE - expired
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_stops_the_daemon_between_a_sweeps_actions_promptly() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    stale_docs(&db).await;
    let reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.schedule", "*/2 * * * * *")
        .set("sweep.max_action_ratio", "1.0");
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon", "-v"], &log);
    eventually(Duration::from_secs(60), "actions being applied", || async {
        audit_rows(&db).await > 0
    })
    .await;

    signal(&daemon, "TERM");
    let code = wait_exit(&mut daemon, Duration::from_secs(10)).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, 0, "{text}");
    assert_interrupted_between_actions(&db).await;
    assert!(text.contains("sweep interrupted"), "{text}");
}
