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
