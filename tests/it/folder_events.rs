//! `reconcile daemon` over a folder bucket: file notifications take the same effect path as S3
//! events, and the sweep catches what landed while the daemon was down.

use crate::daemon::{assert_upload_confirmed_then_stop, signal, wait_exit};
use crate::helpers::*;
use std::io::Write;
use std::time::{Duration, Instant};

/// A sweep that never comes while a test runs: whatever moves, the watcher moved.
const NO_SWEEP: &str = "0 0 0 1 1 * 2099";

fn daemon_on(db: &TestDb, folder: &TestFolder, schedule: &str) -> Reconcile {
    Reconcile::on_folder(db, folder)
        .set("storage.prefix", "docs/")
        .set("sweep.quarantine_prefix", "docs/quarantine/")
        .set("sweep.schedule", schedule)
}

/// The daemon started, once its watch is in place: its log's folder, the process, its address.
async fn watching(reconcile: &Reconcile) -> (tempfile::TempDir, tokio::process::Child, String) {
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let daemon = reconcile.spawn(&["daemon", "-v"], &log);
    let addr = daemon_address(&log).await;
    eventually(Duration::from_secs(30), "the watch to start", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("watching the folder")
    })
    .await;
    (logs, daemon, addr)
}

/// `reconcile_events_failed_total{reason}` as the daemon serves it now.
async fn events_failed(addr: &str, reason: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    metric_value(
        &body,
        &format!("reconcile_events_failed_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

async fn created_events(addr: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    metric_value(&body, "reconcile_events_received_total{type=\"created\"}").unwrap_or(0.0)
}

#[tokio::test]
async fn files_landing_in_the_folder_move_their_records_and_a_removed_file_marks_its_doc_missing() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    let landing = [
        "plain",
        "slow",
        "renamed",
        "nested/ünï cødé dir/with space ü.pdf",
    ];
    for id in landing {
        db.doc(id, "pending", MINUTE).await;
    }
    db.doc("quarantine/q", "pending", MINUTE).await;
    db.doc("kept", "processed", HOUR).await;
    folder.put("docs/kept", "kept");
    let reconcile = daemon_on(&db, &folder, NO_SWEEP);
    let (_logs, mut daemon, addr) = watching(&reconcile).await;

    // Files that must change nothing: outside the prefix, in quarantine, a copy's temporary file.
    folder.put("plain", "outside the prefix");
    folder.put("docs/quarantine/q", "quarantined");
    folder.put("docs/.reconcile-x1y2z3", "a copy in progress");

    let written = Instant::now();
    folder.put("docs/plain", "plain body");
    eventually(Duration::from_secs(10), "plain processed", || async {
        db.status("plain").await.as_deref() == Some("processed")
    })
    .await;
    eprintln!("file to processed record: {:?}", written.elapsed());

    // Written slowly: open, a chunk, a pause longer than the debounce, more chunks, then close.
    let path = folder.path().join("docs/slow");
    let mut file = std::fs::File::create(&path).expect("create slow file");
    for chunk in 0..3 {
        file.write_all(format!("chunk {chunk};").as_bytes())
            .expect("write a chunk");
        file.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            db.status("slow").await.as_deref(),
            Some("pending"),
            "a file still being written was taken as uploaded"
        );
    }
    drop(file);
    eventually(Duration::from_secs(10), "slow processed", || async {
        db.status("slow").await.as_deref() == Some("processed")
    })
    .await;

    // Renamed into place from a temporary name outside the prefix.
    folder.put("incoming/renamed.part", "renamed body");
    std::fs::rename(
        folder.path().join("incoming/renamed.part"),
        folder.path().join("docs/renamed"),
    )
    .expect("rename into place");
    // A hostile name in folders made just now.
    folder.put("docs/nested/ünï cødé dir/with space ü.pdf", "hostile");
    for id in ["renamed", "nested/ünï cødé dir/with space ü.pdf"] {
        eventually(
            Duration::from_secs(10),
            &format!("{id} processed"),
            || async { db.status(id).await.as_deref() == Some("processed") },
        )
        .await;
    }

    std::fs::remove_file(folder.path().join("docs/kept")).expect("remove a file");
    eventually(Duration::from_secs(10), "kept marked missing", || async {
        db.status("kept").await.as_deref() == Some("missing")
    })
    .await;

    // Each landed doc counted once; the quarantined, outside and temporary files not at all.
    assert_eq!(created_events(&addr).await, landing.len() as f64);
    assert_eq!(db.status("quarantine/q").await.as_deref(), Some("pending"));
    let (_, body) = http_get(&addr, "/metrics").await;
    assert_eq!(
        metric_value(&body, "reconcile_events_received_total{type=\"removed\"}"),
        Some(1.0)
    );
    assert!(
        metric_value(&body, "reconcile_event_lag_seconds_count").unwrap_or(0.0) >= 5.0,
        "{body}"
    );
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn files_that_landed_while_the_daemon_was_down_are_left_to_the_next_sweep() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    db.doc("early", "pending", MINUTE).await;
    folder.put("docs/early", "landed before the daemon started");
    let reconcile = daemon_on(&db, &folder, "*/2 * * * * *");
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon", "-v"], &log);
    let addr = daemon_address(&log).await;
    eventually(
        Duration::from_secs(30),
        "the sweep to adopt early",
        || async { db.status("early").await.as_deref() == Some("processed") },
    )
    .await;
    assert_eq!(
        created_events(&addr).await,
        0.0,
        "the watcher replayed old files"
    );
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn a_queue_beside_a_folder_bucket_is_refused_naming_the_key() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    let run = Reconcile::on_folder(&db, &folder)
        .set(
            "events.queue_url",
            "http://127.0.0.1:1/000000000000/uploads",
        )
        .run(&["daemon"])
        .await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("events.queue_url"), "{}", run.stderr);
    assert!(run.stderr.contains("local folder"), "{}", run.stderr);
}

#[tokio::test]
async fn a_file_that_lands_while_the_database_is_down_takes_effect_once_it_answers() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    db.doc("during", "pending", MINUTE).await;
    let postgres = FaultProxy::tcp("127.0.0.1:5432").await;
    let mut reconcile = daemon_on(&db, &folder, NO_SWEEP);
    reconcile.database_url = postgres.url_of(&db);
    let (_logs, mut daemon, addr) = watching(&reconcile).await;

    postgres.set(Fault::Reset);
    folder.put("docs/during", "landed during the outage");
    eventually(Duration::from_secs(30), "the event held", || async {
        events_failed(&addr, "dependency_down").await >= 1.0
    })
    .await;
    assert_ne!(
        http_get(&addr, "/readyz").await.0,
        200,
        "ready while the database is down"
    );
    postgres.set(Fault::Pass);
    eventually(
        Duration::from_secs(60),
        "during processed after the outage",
        || async { db.status("during").await.as_deref() == Some("processed") },
    )
    .await;
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn a_file_confirmed_by_its_own_notification_is_an_upload_confirmed_never_a_lost_notification()
{
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    db.doc("confirmed", "pending", MINUTE).await;
    let (_logs, mut daemon, addr) = watching(&daemon_on(&db, &folder, NO_SWEEP)).await;
    folder.put("docs/confirmed", "a healthy upload");
    assert_upload_confirmed_then_stop(&db, &mut daemon, &addr, "confirmed").await;
}

/// While an event waits for the database (the app holds SQLite's write lock), the notifications
/// that keep coming wait collapsed per path and bounded: a file written in thousands of chunks
/// and files rewritten hundreds of times each wait as one path apiece, and past the bound the
/// rest are counted lost, never queued. Measured by the daemon's own gauge, not by time.
#[tokio::test]
async fn notifications_wait_collapsed_per_path_and_bounded_while_an_event_is_held() {
    let db = TestSqlite::with_docs().await;
    let folder = TestFolder::new();
    let rewritten: Vec<String> = (0..40).map(|n| format!("k{n:02}")).collect();
    for id in rewritten
        .iter()
        .map(String::as_str)
        .chain(["first", "chunked"])
    {
        db.doc(id, "pending", MINUTE).await;
    }
    let reconcile = Reconcile {
        database_url: db.url(),
        ..Reconcile::on_folder_url(&folder)
    }
    .set("storage.prefix", "docs/")
    .set("sweep.schedule", NO_SWEEP);
    // Both folders exist before the watch: files made in a folder before its watch is in place
    // give no notification (the folder's own is walked instead), and the counts below are exact.
    for folder_key in ["docs", "other"] {
        std::fs::create_dir_all(folder.path().join(folder_key)).expect("folder");
    }
    let (_logs, mut daemon, addr) = watching(&reconcile).await;
    let gauge = |body: &str| metric_value(body, "reconcile_file_notifications_waiting");

    // The app holds the database; the first file's event waits for it.
    let mut app = db.pool.acquire().await.expect("a connection");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *app)
        .await
        .expect("lock the database");
    folder.put("docs/first", "first");
    eventually(Duration::from_secs(60), "the first event held", || async {
        events_failed(&addr, "dependency_down").await >= 1.0
    })
    .await;

    // 20 000 small writes to one file, 40 files rewritten (open, write, close) 100 times each.
    {
        use std::io::Write;
        let mut file = std::fs::File::create(folder.path().join("docs/chunked")).expect("create");
        for _ in 0..20_000 {
            file.write_all(b"0123456789").expect("write a chunk");
        }
    }
    for round in 0..100 {
        for id in &rewritten {
            folder.put(&format!("docs/{id}"), &format!("round {round}"));
        }
    }
    folder.put("docs/zz-sentinel", "the last notification");
    // 42 paths: the 40, the chunked file and the sentinel (the held one was taken already).
    eventually(
        Duration::from_secs(30),
        "the notifications read",
        || async { gauge(&http_get(&addr, "/metrics").await.1) == Some(42.0) },
    )
    .await;

    // Past the bound: more distinct paths than the inbox holds (outside the prefix: the inbox
    // holds any path, the watcher then drops these unapplied).
    for n in 0..5000 {
        folder.put(&format!("other/many-{n}"), "x");
    }
    eventually(
        Duration::from_secs(30),
        "the inbox at its bound",
        || async { gauge(&http_get(&addr, "/metrics").await.1) == Some(4096.0) },
    )
    .await;
    folder.put("docs/zz-past-the-bound", "dropped");
    let (_, body) = http_get(&addr, "/metrics").await;
    assert_eq!(gauge(&body), Some(4096.0), "the bound");

    // The app lets go: the held event and the collapsed ones take effect, with the files' last
    // contents.
    sqlx::query("COMMIT")
        .execute(&mut *app)
        .await
        .expect("unlock");
    drop(app);
    // What the bound dropped is counted once the watcher reads again, and left to the sweep.
    eventually(
        Duration::from_secs(60),
        "the dropped ones counted",
        || async {
            let (_, body) = http_get(&addr, "/metrics").await;
            metric_value(
                &body,
                "reconcile_events_failed_total{reason=\"notifications_lost\"}",
            )
            .unwrap_or(0.0)
                >= (42 + 5000 + 1 - 4096) as f64
        },
    )
    .await;
    for id in rewritten
        .iter()
        .map(String::as_str)
        .chain(["first", "chunked"])
    {
        eventually(
            Duration::from_secs(60),
            &format!("{id} processed"),
            || async { db.status(id).await.as_deref() == Some("processed") },
        )
        .await;
    }
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)).await, 0);
}

/// A file put back (from a backup, say) under a `missing` record's key, in a watched folder:
/// the watcher adopts the record again as `object_returned`, audited and counted so, never as
/// an upload confirmed by its event or a lost notification.
#[tokio::test]
async fn a_file_put_back_under_a_missing_record_is_adopted_again_as_object_returned() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    db.doc("restored-from-backup", "missing", HOUR).await;
    let (_logs, mut daemon, addr) = watching(&daemon_on(&db, &folder, NO_SWEEP)).await;
    folder.put("docs/restored-from-backup", "the file, back");
    eventually(
        Duration::from_secs(30),
        "the doc processed again",
        || async { db.status("restored-from-backup").await.as_deref() == Some("processed") },
    )
    .await;
    let kinds: Vec<(String, String)> = db
        .audit()
        .await
        .into_iter()
        .filter(|a| a.0 == "restored-from-backup")
        .map(|a| (a.1, a.2))
        .collect();
    assert_eq!(
        kinds.first(),
        Some(&("object_returned".to_owned(), "adopt".to_owned())),
        "{kinds:?}"
    );
    let (_, body) = http_get(&addr, "/metrics").await;
    let series = |kind: &str| applied_actions("adopt", kind);
    assert_eq!(
        metric_value(&body, &series("object_returned")),
        Some(1.0),
        "{body}"
    );
    for never in ["upload_confirmed", "lost_notification"] {
        assert_eq!(metric_value(&body, &series(never)), None, "{never}: {body}");
    }
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)).await, 0);
}
