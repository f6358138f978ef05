//! Jobs that never report back, and `retry` beside a running job.

use crate::daemon::wait_exit;
use crate::helpers::*;
use std::time::Duration;

async fn job(db: &TestDb, id: &str) -> (String, i32) {
    sqlx::query_as("SELECT state, attempts FROM reconciler.jobs WHERE doc_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .expect("job row")
}

#[tokio::test]
async fn a_hook_that_kills_the_daemon_ends_failed_after_max_attempts() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("poison", "uploaded", MINUTE).await;
    bucket.put("poison", "x").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("reconcile.toml");
    // The hook's parent is the daemon: it dies with its job in hand, every time.
    std::fs::write(
        &config,
        "[processing]\nhook = \"command\"\ncommand = [\"sh\", \"-c\", \"kill -9 $PPID\"]\n\
         timeout = \"1s\"\nlease_grace = \"1s\"\nmax_attempts = 3\n\
         [sweep]\nschedule = \"0 0 0 1 1 * 2099\"\n",
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path");
    let reconcile = Reconcile::new(&db, &bucket);
    let queued = reconcile
        .run(&["--config", config, "retry", "poison"])
        .await;
    assert_eq!(queued.code, 0, "{}", queued.stderr);

    let mut killed = 0;
    for start in 0..8 {
        let log = dir.path().join(format!("daemon-{start}.log"));
        let mut daemon = reconcile.spawn(&["--config", config, "daemon"], &log);
        let settled = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(Some(_)) = daemon.try_wait() {
                    return false;
                }
                if job(&db, "poison").await.0 == "failed" {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .expect("the daemon died or the job failed within 30 s");
        if settled {
            break;
        }
        assert_eq!(
            wait_exit(&mut daemon, Duration::from_secs(5)).await,
            -1,
            "killed"
        );
        killed += 1;
    }
    assert_eq!(job(&db, "poison").await, ("failed".into(), 3));
    assert_eq!(
        killed, 3,
        "the hook ran max_attempts times, then never again"
    );
    assert_eq!(db.status("poison").await.as_deref(), Some("failed"));
    assert!(
        db.audit()
            .await
            .iter()
            .any(|a| a.0 == "poison" && a.1 == "processing_exhausted" && a.2 == "fail"),
        "{:?}",
        db.audit().await
    );
}

#[tokio::test]
async fn retry_never_starts_a_second_run_beside_a_running_job() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let reconcile = Reconcile::new(&db, &bucket)
        .set("processing.hook", "webhook")
        .set("processing.url", "http://127.0.0.1:9/hook");
    assert_eq!(reconcile.run(&["migrate"]).await.code, 0);
    db.doc("busy", "uploaded", MINUTE).await;
    db.doc("a-failed-running", "failed", MINUTE).await;
    db.doc("b-failed", "failed", MINUTE).await;
    for (id, state) in [
        ("busy", "running"),
        ("a-failed-running", "running"),
        ("b-failed", "failed"),
    ] {
        // Written as a release before scopes would have: adopted by this deployment.
        sqlx::query(
            "INSERT INTO reconciler.jobs \
             (doc_id, key, state, attempts, next_attempt_at, lease_until, leased_by) \
             VALUES ($1, $1, $2, 1, now(), now() + interval '1 hour', 'elsewhere:1:0')",
        )
        .bind(id)
        .bind(state)
        .execute(&db.pool)
        .await
        .expect("a job");
    }

    let refused = reconcile.run(&["retry", "busy"]).await;
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    let line = refused.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("\"busy\"")
            && line.contains("running")
            && line.contains("leased by elsewhere:1:0 until"),
        "{line}"
    );
    assert_eq!(job(&db, "busy").await, ("running".into(), 1));

    let failed = reconcile.run(&["retry", "--failed"]).await;
    assert_eq!(failed.code, 0, "{}", failed.stderr);
    assert!(
        failed
            .stdout
            .contains("\"a-failed-running\" is not retried: its job is running"),
        "{}",
        failed.stdout
    );
    assert!(
        failed.stdout.contains("b-failed: failed -> uploaded"),
        "{}",
        failed.stdout
    );
    assert_eq!(job(&db, "a-failed-running").await, ("running".into(), 1));
    assert_eq!(job(&db, "b-failed").await, ("queued".into(), 0));
}
