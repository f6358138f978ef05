//! `reconcile daemon` as a process: killed mid-stream, stopped by signal.

use crate::helpers::*;
use std::time::Duration;

pub fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("daemon still running");
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

pub async fn wait_exit(child: &mut tokio::process::Child, limit: Duration) -> i32 {
    tokio::time::timeout(limit, child.wait())
        .await
        .expect("the daemon exited in time (likely hung)")
        .expect("wait for the daemon")
        .code()
        .unwrap_or(-1)
}

#[tokio::test]
async fn every_upload_takes_effect_exactly_once_across_a_sigkill() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let queue = TestQueue::with_dead_letters(20).await;
    bucket.notify(&queue).await;
    let ids: Vec<String> = (0..60).map(|i| format!("doc-{i:02}")).collect();
    for id in &ids {
        db.doc(id, "pending", MINUTE).await;
    }
    let reconcile = Reconcile::new(&db, &bucket)
        .set("events.queue_url", &queue.url)
        .set("events.wait_time", "1s")
        .set("events.visibility_timeout", "2s")
        .set("events.pollers", "2");
    let logs = tempfile::tempdir().expect("temp dir");
    let mut first = reconcile.spawn(&["daemon"], &logs.path().join("first.log"));

    let uploads = {
        let ids = ids.clone();
        let bucket_name = bucket.name.clone();
        let endpoint = bucket.endpoint.clone();
        tokio::spawn(async move {
            let client = TestBucket {
                name: bucket_name,
                client: s3_client(&endpoint),
                endpoint,
            };
            for id in &ids {
                client.presigned_put(id, "body").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Kill it once it is visibly in the middle of the stream.
    eventually(Duration::from_secs(60), "a few uploads applied", || async {
        let mut applied = 0;
        for id in &ids {
            if db.status(id).await.as_deref() == Some("processed") {
                applied += 1;
            }
        }
        applied >= 10
    })
    .await;
    first.start_kill().expect("SIGKILL");
    let _ = first.wait().await;
    uploads.await.expect("uploads finished");

    let mut second = reconcile.spawn(&["daemon"], &logs.path().join("second.log"));
    eventually(Duration::from_secs(90), "every upload applied", || async {
        for id in &ids {
            if db.status(id).await.as_deref() != Some("processed") {
                return false;
            }
        }
        true
    })
    .await;
    // Redelivered messages (committed before the kill, never deleted) must change nothing twice.
    eventually(Duration::from_secs(30), "the queue drained", || async {
        queue.depth().await == 0
    })
    .await;
    signal(&second, "TERM");
    assert_eq!(wait_exit(&mut second, Duration::from_secs(30)).await, 0);

    let audit = db.audit().await;
    for id in &ids {
        let effects: Vec<_> = audit.iter().filter(|a| &a.0 == id).collect();
        assert_eq!(effects.len(), 1, "{id}: {effects:?}");
        assert_eq!(effects[0].2, "adopt");
    }
    assert_eq!(audit.len(), ids.len());
}

#[tokio::test]
async fn sigterm_stops_the_daemon_promptly_with_exit_0_and_a_queue_without_dead_letters_is_flagged()
{
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let queue = TestQueue::without_dead_letters().await;
    let reconcile = Reconcile::new(&db, &bucket).set("events.queue_url", &queue.url);
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon"], &log);
    eventually(
        Duration::from_secs(30),
        "the daemon warned about the queue",
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("no redrive policy")
        },
    )
    .await;
    // It is now inside a 20 s long poll; SIGTERM must not wait for it.
    let asked = std::time::Instant::now();
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(10)).await, 0);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );
}

/// A daemon on a folder, sweeping every second, over a database URL that carries a password
/// (trust authentication ignores it; the log must not show it).
fn talkative_daemon(db: &TestDb, folder: &TestFolder) -> Reconcile {
    let mut reconcile = Reconcile::on_folder(db, folder)
        .set("storage.prefix", "docs/")
        .set("sweep.schedule", "* * * * * *");
    reconcile.database_url = format!(
        "postgres://postgres:{}@127.0.0.1:5432/{}",
        DAEMON_DB_PASSWORD, db.name
    );
    reconcile
}

const DAEMON_DB_PASSWORD: &str = "never-in-the-log-9d2f";

/// Start a daemon at the default log level, wait for its first sweep, stop it: its stderr.
async fn daemon_log_at_default_level(extra: &[&str]) -> String {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    db.doc("given-up", "pending", 2 * HOUR).await;
    let reconcile = talkative_daemon(&db, &folder);
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut args = vec!["daemon"];
    args.extend_from_slice(extra);
    let mut daemon = reconcile.spawn(&args, &log);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually(Duration::from_secs(30), "a line per sweep", || async {
        read().contains("sweep finished")
    })
    .await;
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)).await, 0);
    let text = read();
    assert!(
        !text.contains(DAEMON_DB_PASSWORD),
        "the database password leaked into the log:\n{text}"
    );
    text
}

#[tokio::test]
async fn at_the_default_level_the_daemon_says_how_it_started_each_sweep_and_that_it_stopped() {
    let text = daemon_log_at_default_level(&[]).await;
    let start = text
        .lines()
        .find(|l| l.contains("daemon started"))
        .unwrap_or_else(|| panic!("no start line at the default level:\n{text}"));
    for part in [
        concat!("version=", env!("CARGO_PKG_VERSION")),
        "listening on 127.0.0.1:",
        "database=postgres://postgres:***@127.0.0.1:5432/",
        "bucket=file:///",
        "prefix=docs/",
        "http server",
        "scheduled sweeps",
        "folder watcher",
        "housekeeping",
        "next_sweep=",
    ] {
        assert!(start.contains(part), "{part:?} missing from: {start}");
    }
    let sweep = text
        .lines()
        .find(|l| l.contains("sweep finished"))
        .unwrap_or_else(|| panic!("no sweep line:\n{text}"));
    for part in [
        "records_scanned=1",
        "objects_listed=0",
        "stale_pending=1",
        "applied=1",
        "duration=",
    ] {
        assert!(sweep.contains(part), "{part:?} missing from: {sweep}");
    }
    let stopping = text.lines().position(|l| l.contains("shutting down"));
    let stopped = text.lines().position(|l| l.contains("daemon stopped"));
    assert!(
        stopping.is_some() && stopped > stopping,
        "no shutdown lines, in order:\n{text}"
    );
    // Only the lifecycle speaks at the default level: not every task's own "stopped".
    assert!(
        !text.contains("task="),
        "task chatter at the default level:\n{text}"
    );
}

#[tokio::test]
async fn the_daemons_start_sweep_and_stop_lines_are_json_objects_with_log_format_json() {
    let text = daemon_log_at_default_level(&["--log-format", "json"]).await;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let by_message = |start: &str| {
        lines
            .iter()
            .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with(start)))
            .unwrap_or_else(|| panic!("no {start:?} line in:\n{text}"))
    };
    let started = by_message("daemon started");
    assert_eq!(started["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        started["listen"]
            .as_str()
            .is_some_and(|l| l.starts_with("127.0.0.1:"))
    );
    assert!(
        started["tasks"]
            .as_str()
            .is_some_and(|t| t.contains("folder watcher")),
        "{started}"
    );
    assert!(started["next_sweep"].as_str().is_some(), "{started}");
    let sweep = by_message("sweep finished");
    assert_eq!(sweep["records_scanned"], 1, "{sweep}");
    assert_eq!(sweep["applied"], 1, "{sweep}");
    assert!(sweep["duration"].as_str().is_some(), "{sweep}");
    by_message("shutting down");
    by_message("daemon stopped");
}

#[tokio::test]
async fn an_upload_confirmed_by_its_s3_event_is_an_upload_confirmed_never_a_lost_notification() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let queue = TestQueue::with_dead_letters(5).await;
    bucket.notify(&queue).await;
    db.doc("confirmed", "pending", MINUTE).await;
    let reconcile = Reconcile::new(&db, &bucket)
        .set("events.queue_url", &queue.url)
        .set("events.wait_time", "1s")
        .set("sweep.schedule", "0 0 0 1 1 * 2099");
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon"], &log);
    let addr = daemon_address(&log).await;
    bucket.presigned_put("confirmed", "a healthy upload").await;
    assert_upload_confirmed_then_stop(&db, &mut daemon, &addr, "confirmed").await;
}

/// Once `id` is processed: its upload, confirmed by its own event (S3's, or a file landing in a
/// watched folder), was audited and counted as `upload_confirmed`, and no notification was
/// counted as lost. Then the daemon stops with exit 0.
pub async fn assert_upload_confirmed_then_stop(
    db: &TestDb,
    daemon: &mut tokio::process::Child,
    addr: &str,
    id: &str,
) {
    eventually(Duration::from_secs(30), "the upload processed", || async {
        db.status(id).await.as_deref() == Some("processed")
    })
    .await;
    let adopted: Vec<_> = db
        .audit()
        .await
        .into_iter()
        .filter(|a| a.0 == id && a.2 == "adopt")
        .map(|a| a.1)
        .collect();
    assert_eq!(adopted, ["upload_confirmed"], "{id}'s adoption as audited");
    let (_, body) = http_get(addr, "/metrics").await;
    let series = |kind: &str| applied_actions("adopt", kind);
    assert_eq!(
        metric_value(&body, &series("upload_confirmed")),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric_value(&body, &series("lost_notification")),
        None,
        "{body}"
    );
    signal(daemon, "TERM");
    assert_eq!(wait_exit(daemon, Duration::from_secs(30)).await, 0);
}
