//! What only a folder bucket (`storage.bucket = "file:///..."`) has, through the binary: keys
//! that would leave it, symbolic and hard links, files moved in with old mtimes, files still
//! being written, permissions, its configuration errors. The scenarios it shares with S3 are in
//! `scenarios.rs`; the platform's semantics, case by case, in `bucket_conformance::posix`.

use crate::helpers::*;
use std::time::Duration;

#[tokio::test]
async fn a_key_that_would_leave_the_folder_names_no_object_in_the_audit_and_the_apply_alike() {
    let db = TestDb::with_docs(None).await;
    let outer = TestFolder::new();
    outer.put("escape", "outside the bucket");
    outer.put("root/docs/fine", "fine");
    let folder_url = format!("file://{}", outer.path().join("root").display());
    db.doc("fine", "processed", 3 * HOUR).await;
    // Key docs/../../escape: the record says processed, the file it names is outside the folder.
    db.doc("../../escape", "processed", 3 * HOUR).await;
    let mut reconcile = Reconcile::on_folder(&db, &outer).set("storage.prefix", "docs/");
    reconcile.bucket = folder_url;

    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(
        audit.findings(),
        triples(&[("missing_object", "../../escape", "mark_missing")])
    );

    // The apply's re-check agrees with the listing: no object has that key in a folder.
    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stdout);
    assert_eq!(apply.json()["findings"][0]["result"], "applied");
    assert_eq!(db.status("../../escape").await.as_deref(), Some("missing"));
    assert_eq!(outer.read("escape").as_deref(), Some("outside the bucket"));
    assert_eq!(outer.read("root/docs/fine").as_deref(), Some("fine"));
}

/// A sweep deleting orphans over `folder` (prefix `docs/`), orphans judged at once.
fn deleting_orphans(db: &TestDb, folder: &TestFolder) -> Reconcile {
    Reconcile::on_folder(db, folder)
        .set("storage.prefix", "docs/")
        .set("sweep.orphan_action", "delete")
        .set("sweep.orphan_grace", "0s")
}

#[tokio::test]
async fn a_file_a_symbolic_link_leads_to_is_no_orphan_and_a_dangling_link_is_a_missing_object() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    // A content-addressed layout: the doc is a link to its blob, which has no record.
    folder.put("docs/blobs/sha-abc", "the doc's bytes");
    std::os::unix::fs::symlink("blobs/sha-abc", folder.path().join("docs/mydoc")).expect("link");
    db.doc("mydoc", "processed", 3 * HOUR).await;
    // A real orphan beside it, and one of two hard links to a doc's file.
    folder.put("docs/stray", "nobody's");
    folder.put("docs/hard", "hard-linked bytes");
    std::fs::hard_link(
        folder.path().join("docs/hard"),
        folder.path().join("docs/hard-2"),
    )
    .expect("hard link");
    db.doc("hard", "processed", 3 * HOUR).await;
    let reconcile = deleting_orphans(&db, &folder);

    // explain sees what the sweep sees: the blob is no orphan, the stray one is.
    for (key, finding) in [
        ("docs/blobs/sha-abc", serde_json::Value::Null),
        ("docs/stray", "orphan_object".into()),
    ] {
        let explained = reconcile.run(&["explain", key, "--format", "json"]).await;
        assert_eq!(explained.code, 0, "{}", explained.stderr);
        assert_eq!(
            explained.json()["decision"]["finding"],
            finding,
            "{key}: {}",
            explained.stdout
        );
    }

    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.findings(),
        triples(&[
            ("orphan_object", "hard-2", "delete"),
            ("orphan_object", "stray", "delete"),
        ])
    );
    assert_eq!(
        folder.read("docs/mydoc").as_deref(),
        Some("the doc's bytes"),
        "the link's file was deleted as an orphan"
    );
    // One name of a hard-linked file went; its bytes stay under the other.
    assert_eq!(
        folder.read("docs/hard").as_deref(),
        Some("hard-linked bytes")
    );
    assert_eq!(folder.read("docs/stray"), None);

    // The blob goes (by someone else): the link leads nowhere. That is the doc's missing
    // object, not a listing that fails every sweep from now on.
    std::fs::remove_file(folder.path().join("docs/blobs/sha-abc")).expect("remove the blob");
    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.findings(),
        triples(&[("missing_object", "mydoc", "mark_missing")])
    );
    assert_eq!(db.status("mydoc").await.as_deref(), Some("missing"));
    assert!(
        std::fs::symlink_metadata(folder.path().join("docs/mydoc")).is_ok(),
        "the dangling link is the app's to remove"
    );
}

/// Set the file's mtime to `age` ago, as `touch -d`, `cp -p`, `rsync -a` or `tar x` would.
fn backdate(path: &std::path::Path, age: Duration) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open to backdate");
    file.set_modified(std::time::SystemTime::now() - age)
        .expect("set the mtime");
}

const TWO_YEARS: Duration = Duration::from_secs(730 * 24 * 3600);

#[tokio::test]
async fn a_file_moved_in_with_an_old_mtime_is_as_young_as_its_arrival() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    // `cp -p` / `rsync -a` / `tar x`: a new file given the old mtime.
    folder.put("docs/copied", "copied just now");
    backdate(&folder.path().join("docs/copied"), TWO_YEARS);
    // `mv` from elsewhere (here: outside the prefix) keeps the mtime of two years ago.
    folder.put("incoming/moved", "moved in just now");
    backdate(&folder.path().join("incoming/moved"), TWO_YEARS);
    std::fs::rename(
        folder.path().join("incoming/moved"),
        folder.path().join("docs/moved"),
    )
    .expect("move in");
    let reconcile = deleting_orphans(&db, &folder).set("sweep.orphan_grace", "1h");

    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.findings(), triples(&[]), "{}", run.stdout);
    assert_eq!(run.json()["counts"]["in_grace"], 2, "{}", run.stdout);
    assert_eq!(
        folder.read("docs/moved").as_deref(),
        Some("moved in just now")
    );
    assert_eq!(
        folder.read("docs/copied").as_deref(),
        Some("copied just now")
    );
}

#[tokio::test]
async fn a_file_still_being_written_is_not_adopted_until_it_has_settled() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    db.doc("growing", "pending", 2 * MINUTE).await;
    // The default settle time: the tests' own short one taken away.
    let mut reconcile = Reconcile::on_folder(&db, &folder).set("storage.prefix", "docs/");
    reconcile
        .env
        .retain(|(key, _)| key != "RECONCILE_STORAGE__SETTLE_TIME");

    // Written 1 KB every 0.2 s, as an upload streaming to disk.
    let path = folder.path().join("docs/growing");
    std::fs::create_dir_all(folder.path().join("docs")).expect("folder");
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut file = std::fs::File::create(&path).expect("create");
        let mut written = 0;
        while stop_rx
            .recv_timeout(Duration::from_millis(200))
            .is_err_and(|e| e == std::sync::mpsc::RecvTimeoutError::Timeout)
        {
            file.write_all(&[b'x'; 1000]).expect("write a chunk");
            written += 1000;
        }
        written
    });
    // A few chunks in, mid-write.
    eventually(Duration::from_secs(10), "a few chunks written", || async {
        folder
            .path()
            .join("docs/growing")
            .metadata()
            .is_ok_and(|m| m.len() >= 5000)
    })
    .await;
    let run = reconcile.run(&["--format", "json"]).await;
    stop_tx.send(()).expect("stop the writer");
    let written = writer.join().expect("the writer");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.findings(), triples(&[]), "{}", run.stdout);
    assert_eq!(run.json()["counts"]["in_grace"], 1, "{}", run.stdout);
    assert_eq!(db.status("growing").await.as_deref(), Some("pending"));
    assert!(written >= 5000);
}

#[tokio::test]
async fn the_json_report_names_a_folder_bucket_as_configured_with_its_file_scheme() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    for format in ["json", "jsonl"] {
        let run = Reconcile::on_folder(&db, &folder)
            .run(&["--dry-run", "--format", format])
            .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let summary: serde_json::Value = run
            .stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .or_else(|| serde_json::from_str(&run.stdout).ok())
            .unwrap_or_else(|| panic!("no JSON summary: {}", run.stdout));
        assert_eq!(summary["bucket"], folder.url(), "{format}");
    }
}

#[tokio::test]
async fn check_config_reaches_the_folder_and_names_a_missing_one() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    let ok = Reconcile::on_folder(&db, &folder)
        .run(&["check-config"])
        .await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(
        ok.stdout.contains(&format!("bucket {}", folder.url())),
        "{}",
        ok.stdout
    );

    let mut missing = Reconcile::on_folder(&db, &folder);
    missing.bucket = format!("{}/not-mounted", folder.url());
    let run = missing.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("not-mounted"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
}

#[tokio::test]
async fn a_file_bucket_with_s3_settings_or_a_relative_path_is_a_configuration_error() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    let run = Reconcile::on_folder(&db, &folder)
        .set("storage.endpoint_url", "http://127.0.0.1:9000")
        .run(&["--dry-run"])
        .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("storage.endpoint_url"),
        "{}",
        run.stderr
    );

    let mut relative = Reconcile::on_folder(&db, &folder);
    relative.bucket = "file://uploads".into();
    let run = relative.run(&["--dry-run"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("storage.bucket"), "{}", run.stderr);
    assert!(run.stderr.contains("absolute path"), "{}", run.stderr);
}

/// Tests run as root, which reads every file whatever its mode (CAP_DAC_OVERRIDE): the binary
/// runs as `nobody` through `setpriv`, so the modes apply.
const AS_NOBODY: [&str; 5] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
];

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn an_unreadable_folder_stops_the_listing_naming_it_and_an_unreadable_orphan_stays() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    folder.put("docs/a", "a");
    folder.put("docs/locked/b", "b");
    folder.put("docs/orphan", "nobody's, unreadable");
    // Outside the prefix, as a volume's lost+found: no business of the listing's.
    folder.put("lost+found/x", "root's");
    db.doc("a", "processed", HOUR).await;
    db.doc("locked/b", "processed", HOUR).await;
    // World-writable so that nobody may quarantine (the test's temporary folder is root's 0700).
    for (path, mode) in [("", 0o777), ("docs", 0o777), ("lost+found", 0o700)] {
        chmod(&folder.path().join(path), mode);
    }
    chmod(&folder.path().join("docs/locked"), 0o000);
    let reconcile = Reconcile::on_folder(&db, &folder)
        .set("storage.prefix", "docs/")
        .set("sweep.orphan_action", "quarantine")
        .set("sweep.orphan_grace", "0s");

    // The folder it cannot read: an error naming it, never a listing without locked/b.
    let run = reconcile
        .run_through(&AS_NOBODY, &["--dry-run", "--format", "json"])
        .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let error = run.stderr.trim();
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.contains("docs/locked"), "{error}");
    assert!(error.contains("Permission denied"), "{error}");
    assert_eq!(db.status("locked/b").await.as_deref(), Some("processed"));

    // A file it cannot read is still listed (its facts need no read); copying it fails, naming
    // it, and the original stays.
    chmod(&folder.path().join("docs/locked"), 0o755);
    chmod(&folder.path().join("docs/orphan"), 0o000);
    let run = reconcile
        .run_through(&AS_NOBODY, &["--format", "json"])
        .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let finding = &run.json()["findings"][0];
    assert_eq!(finding["id"], "orphan", "{}", run.stdout);
    assert_eq!(finding["result"], "failed", "{}", run.stdout);
    let reason = finding["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("docs/orphan"), "{reason}");
    assert!(reason.contains("Permission denied"), "{reason}");
    chmod(&folder.path().join("docs/orphan"), 0o644);
    assert_eq!(
        folder.read("docs/orphan").as_deref(),
        Some("nobody's, unreadable")
    );
    assert_eq!(db.status("a").await.as_deref(), Some("processed"));
}
