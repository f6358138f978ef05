//! A SQLite database made by another program, swept through the binary: `database.url =
//! "sqlite://..."` with a folder bucket, times in the forms SQLite apps write.

use crate::helpers::*;
use chrono::{Duration, FixedOffset, Utc};
use sqlx::Row;
use std::path::Path;

/// Run `sql` on the database at `path` as another program would: the `sqlite3` shell when the
/// machine has one, else sqlx (so the test runs either way).
async fn sqlite_shell(path: &Path, sql: &str) {
    let shell = tokio::process::Command::new("sqlite3")
        .arg(path)
        .arg(sql)
        .output()
        .await;
    match shell {
        Ok(out) => assert!(
            out.status.success(),
            "sqlite3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true);
            let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
                .await
                .expect("open the database");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut conn)
                .await
                .expect("run the SQL");
        }
    }
}

/// `reconcile` over the SQLite database at `url` and the folder bucket `folder`, prefix `docs/`.
fn on_folder_with_sqlite(url: &str, folder: &TestFolder) -> Reconcile {
    Reconcile {
        database_url: url.to_owned(),
        ..Reconcile::on_folder_url(folder)
    }
    .set("storage.prefix", "docs/")
}

async fn rows(path: &Path, sql: &str) -> Vec<(String, String, String)> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
        .await
        .expect("open the database");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&mut conn)
        .await
        .expect("query");
    let mut out: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_sqlite_app_database_is_audited_then_fixed_then_clean() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let app_db = dir.path().join("app.db");
    let side_file = dir.path().join("app.db.reconciler.db");
    let folder = TestFolder::new();
    let now = Utc::now();
    let ago = |d: Duration| now - d;
    let text = |d: Duration| ago(d).format("%Y-%m-%d %H:%M:%S").to_string();
    let iso = |d: Duration| ago(d).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    // Local times with their offset: read without it, the first would look young and the
    // second two hours old.
    let zoned = |d: Duration, hours: i32| {
        let zone = FixedOffset::east_opt(hours * 3600).expect("offset");
        ago(d).with_timezone(&zone).to_rfc3339()
    };
    let unix = |d: Duration| ago(d).timestamp();
    let unix_real = |d: Duration| ago(d).timestamp_millis() as f64 / 1000.0;
    let (two_hours, minute) = (Duration::hours(2), Duration::minutes(1));
    // DATETIME is what Rails and Django migrations declare: NUMERIC affinity keeps text as text
    // and numbers as numbers.
    let sql = format!(
        "CREATE TABLE docs (
           id         TEXT PRIMARY KEY,
           status     TEXT NOT NULL DEFAULT 'pending',
           created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
           updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
         );
         INSERT INTO docs (id, status, created_at) VALUES
           ('stale', 'pending', '{}'),
           ('stale iso', 'pending', '{}'),
           ('stale zoned', 'pending', '{}'),
           ('stale unix', 'pending', {}),
           ('stale real', 'pending', {}),
           ('young', 'pending', '{}'),
           ('young zoned', 'pending', '{}'),
           ('unreadable', 'pending', 'yesterday'),
           ('lost', 'pending', '{}'),
           ('gone', 'uploaded', {}),
           ('ok é', 'processed', '{}');",
        text(two_hours),
        iso(Duration::hours(3)),
        zoned(two_hours, 2),
        unix(two_hours),
        unix_real(two_hours),
        text(minute),
        zoned(minute, -5),
        text(Duration::minutes(5)),
        unix(Duration::hours(3)),
        text(Duration::hours(3)),
    );
    sqlite_shell(&app_db, &sql).await;
    folder.put("docs/lost", "lost body");
    folder.put("docs/ok é", "fine");
    folder.put("docs/orphan", "nobody's");

    let reconcile = on_folder_with_sqlite(&format!("sqlite://{}", app_db.display()), &folder)
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "adopt")
        // For the daemon: a sweep every second.
        .set("sweep.schedule", "* * * * * *");
    let expected = triples(&[
        ("stale_pending", "stale", "expire"),
        ("stale_pending", "stale iso", "expire"),
        ("stale_pending", "stale zoned", "expire"),
        ("stale_pending", "stale unix", "expire"),
        ("stale_pending", "stale real", "expire"),
        ("lost_notification", "lost", "adopt"),
        ("missing_object", "gone", "mark_missing"),
        ("orphan_object", "orphan", "adopt"),
    ]);

    let bytes_before = std::fs::read(&app_db).expect("read the database file");
    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(audit.findings(), expected, "{}", audit.stdout);
    assert_eq!(
        audit.json()["counts"]["in_grace"],
        3,
        "young, young zoned and the unreadable time stay in grace"
    );
    assert!(
        std::fs::read(&app_db).expect("read the database file") == bytes_before,
        "a dry run changed the app's database file"
    );
    assert!(!side_file.exists(), "a dry run created the side file");

    // The dry-run daemon sweeps (taking the sweep lock) without creating the side file either.
    let logs = tempfile::tempdir().expect("temporary folder");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon", "--dry-run", "-v"], &log);
    let addr = daemon_address(&log).await;
    eventually(
        std::time::Duration::from_secs(30),
        "the dry-run daemon's first sweep",
        || async {
            let body = http_get(&addr, "/metrics").await.1;
            metric_value(&body, "reconcile_findings{kind=\"stale_pending\"}") == Some(5.0)
        },
    )
    .await;
    daemon.kill().await.expect("stop the daemon");
    assert!(
        std::fs::read(&app_db).expect("read the database file") == bytes_before,
        "a dry-run daemon changed the app's database file"
    );
    assert!(
        !side_file.exists(),
        "a dry-run daemon created the side file"
    );

    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(apply.findings(), expected);
    let statuses = rows(&app_db, "SELECT id, status, '' FROM docs").await;
    let status_of = |id: &str| {
        statuses
            .iter()
            .find(|(i, _, _)| i == id)
            .map(|(_, s, _)| s.clone())
    };
    for (id, status) in [
        ("stale", "expired"),
        ("stale iso", "expired"),
        ("stale zoned", "expired"),
        ("stale unix", "expired"),
        ("stale real", "expired"),
        ("young", "pending"),
        ("young zoned", "pending"),
        ("unreadable", "pending"),
        ("lost", "processed"),
        ("gone", "missing"),
        ("orphan", "processed"),
        ("ok é", "processed"),
    ] {
        assert_eq!(status_of(id).as_deref(), Some(status), "status of {id}");
    }
    let audit_log = rows(&side_file, "SELECT finding, doc_id, action FROM audit_log").await;
    assert_eq!(
        audit_log, expected,
        "one audit row per action, in the side file"
    );
    let app_tables = rows(
        &app_db,
        "SELECT name, type, '' FROM sqlite_schema WHERE type = 'table'",
    )
    .await;
    assert_eq!(
        app_tables,
        vec![("docs".into(), "table".into(), String::new())],
        "the app's schema is untouched"
    );

    let again = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.findings(), vec![], "{}", again.stdout);
}

/// The app's own writer: INSERTs into `docs` one after another, each on a connection whose busy
/// timeout is `patience` (Python's sqlite3 waits 5 s by default; an app in a hurry waits less),
/// until `stop` is set. Every INSERT that gave up ("database is locked") is kept.
struct AppWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl AppWriter {
    async fn start(path: &Path, patience: std::time::Duration) -> AppWriter {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(patience);
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
            .await
            .expect("the app opens its database");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let (mut written, mut failed) = (0, Vec::new());
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                let id = format!("app-{}", written + failed.len());
                let insert = sqlx::query("INSERT INTO docs (id, status) VALUES (?1, 'pending')")
                    .bind(&id)
                    .execute(&mut conn)
                    .await;
                match insert {
                    Ok(_) => written += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            (written, failed)
        });
        AppWriter { stop, task }
    }

    /// Stop writing: how many INSERTs went through, and the errors of those that did not.
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("the app's writer")
    }
}

/// Run `reconcile` with `args` while the app writes; its run, and the app's writes.
async fn run_while_the_app_writes(
    reconcile: &Reconcile,
    args: &[&str],
    app_db: &Path,
) -> (Run, usize, Vec<String>) {
    let writer = AppWriter::start(app_db, std::time::Duration::from_millis(100)).await;
    let run = reconcile.run(args).await;
    let (written, failed) = writer.finish().await;
    (run, written, failed)
}

/// Issue 18 item 5: quarantining a large orphan held SQLite's writer lock for the whole copy
/// (the audit row was written in the open transaction, the bucket changed, then the commit), so
/// the app's INSERTs waited for it and, past their busy timeout, failed "database is locked".
/// Now the row is re-checked in a short transaction and the bucket changes with none open.
#[tokio::test]
async fn the_apps_writes_never_wait_on_a_quarantine_copy() {
    let app = TestSqlite::with_docs().await;
    let folder = TestFolder::new();
    // Sparse, so made at once; its copy writes (and syncs) every byte, which takes a while.
    let orphan = folder.path().join("docs/big-orphan");
    std::fs::create_dir_all(orphan.parent().expect("folder")).expect("create docs/");
    std::fs::File::create(&orphan)
        .and_then(|f| f.set_len(400 << 20))
        .expect("make a 400 MiB orphan");
    folder.put("docs/small-orphan", "nobody's");
    let reconcile = on_folder_with_sqlite(&app.url(), &folder)
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "quarantine");
    let (run, written, failed) =
        run_while_the_app_writes(&reconcile, &["--format", "json"], &app.path()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    let applied: Vec<_> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["kind"] == "orphan_object")
        .map(|f| (f["id"].as_str().unwrap_or_default(), f["applied"].clone()))
        .collect();
    assert_eq!(
        applied,
        [
            ("big-orphan", serde_json::Value::Bool(true)),
            ("small-orphan", serde_json::Value::Bool(true))
        ],
        "{}",
        run.stdout
    );
    assert!(!orphan.exists(), "the orphan was moved away");
    assert!(written > 0, "the app wrote during the sweep");
    assert_eq!(
        failed,
        Vec::<String>::new(),
        "the app's INSERTs (100 ms busy timeout) waited on the reconciler; {written} went through"
    );
}

/// Issue 18 item 5, the read: in rollback-journal mode (DELETE) a reader's shared lock keeps
/// every writer from committing. The sweep read the whole table in one statement, open for the
/// whole merge; now it reads pages of rows, each a short statement of its own.
#[tokio::test]
async fn the_apps_writes_never_wait_on_a_long_sweep_read_in_journal_mode_delete() {
    let app = TestSqlite::with_docs().await;
    set_journal_mode(&app, "delete").await;
    // Young pending docs, all in grace: a read of 200 000 rows and nothing else to do.
    seed_pending(&app, 200_000).await;
    let folder = TestFolder::new();
    folder.put("docs/doc-0000001", "one");
    let reconcile = on_folder_with_sqlite(&app.url(), &folder);
    let (run, written, failed) =
        run_while_the_app_writes(&reconcile, &["--dry-run", "--format", "json"], &app.path()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert!(
        report["records_scanned"].as_u64().unwrap_or(0) >= 200_000,
        "{}",
        run.stdout
    );
    assert!(written > 0, "the app wrote during the sweep");
    assert_eq!(
        failed,
        Vec::<String>::new(),
        "the app's INSERTs (100 ms busy timeout) waited on the sweep's read; {written} went through"
    );
}

#[tokio::test]
async fn a_sqlite_database_file_that_does_not_exist_is_a_configuration_error_naming_it() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let folder = TestFolder::new();
    for missing in [
        dir.path().join("app.db"),
        dir.path().join("no-such-folder/app.db"),
    ] {
        let reconcile = Reconcile {
            database_url: format!("sqlite://{}", missing.display()),
            bucket: folder.url(),
            endpoint: String::new(),
            env: Vec::new(),
        };
        let run = reconcile.run(&["--dry-run", "--format", "json"]).await;
        assert_eq!(run.code, 2, "{}", run.stderr);
        let line = run.stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        let named = missing.display().to_string();
        for part in ["database.url", named.as_str(), "does not exist"] {
            assert!(line.contains(part), "{part:?} missing from: {line}");
        }
        assert!(!missing.exists(), "a dry run created {named}");
    }
}

/// Issue 18 item 4 on SQLite: an `INTEGER PRIMARY KEY` holds only integers (a stray
/// `Thumbs.db` failed its INSERT, "datatype mismatch", and the sweep exited 1), and INTEGER
/// affinity turns `042` into 42 (a record whose key is not the object's). An orphan whose name is
/// not the canonical text of an integer is reported, saying why, and nothing is inserted.
#[tokio::test]
async fn an_orphan_that_is_no_integer_id_is_reported_not_adopted_on_sqlite() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let app_db = dir.path().join("app.db");
    sqlite_shell(
        &app_db,
        "CREATE TABLE docs (id INTEGER PRIMARY KEY, status TEXT NOT NULL DEFAULT 'pending', \
         created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, \
         updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);",
    )
    .await;
    let folder = TestFolder::new();
    for key in ["docs/Thumbs.db", "docs/042", "docs/7"] {
        folder.put(key, "stray");
    }
    let reconcile = on_folder_with_sqlite(&format!("sqlite://{}", app_db.display()), &folder)
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "adopt");
    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.findings(),
        triples(&[
            ("orphan_object", "042", "report"),
            ("orphan_object", "7", "adopt"),
            ("orphan_object", "Thumbs.db", "report"),
        ]),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.matches("cannot be adopted").count() == 2,
        "{}",
        run.stdout
    );
    assert_eq!(
        rows(&app_db, "SELECT CAST(id AS TEXT), status, '' FROM docs").await,
        vec![("7".into(), "processed".into(), String::new())]
    );
    let again = reconcile.run(&["--format", "json"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.findings(),
        triples(&[
            ("orphan_object", "042", "report"),
            ("orphan_object", "Thumbs.db", "report"),
        ]),
        "{}",
        again.stdout
    );
}

// SQLite's semantics, as the catalog relies on them (issue 18's conformance campaign): one writer
// per database file, busy timeouts, and the journal modes apps run in. Each case says what the
// code promises, on a real database file, through the catalog.

/// The catalog over the app database of `app`, deployment `uploads`/`docs/`, migrated.
async fn sqlite_catalog(app: &TestSqlite) -> upload_reconciler::catalog::sql::SqlCatalog {
    use upload_reconciler::catalog::Catalog;
    let config = upload_reconciler::config::DatabaseConfig {
        url: Some(app.url()),
        ..Default::default()
    };
    let scope = upload_reconciler::catalog::Scope {
        table: "\"docs\"".into(),
        bucket: "uploads".into(),
        prefix: "docs/".into(),
    };
    let catalog = upload_reconciler::catalog::sql::SqlCatalog::connect(&config, scope)
        .await
        .expect("connect");
    catalog.migrate().await.expect("migrate");
    catalog
}

/// A connection of the app's own, impatient: it gives up on a lock at once.
async fn impatient_app(app: &TestSqlite) -> sqlx::SqliteConnection {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(app.path())
        .busy_timeout(std::time::Duration::ZERO);
    <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
        .await
        .expect("the app opens its database")
}

async fn app_insert(conn: &mut sqlx::SqliteConnection, id: &str) -> Result<(), String> {
    sqlx::query("INSERT INTO docs (id, status) VALUES (?1, 'pending')")
        .bind(id)
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `n` young pending docs, `doc-0000000` on.
async fn seed_pending(app: &TestSqlite, n: u32) {
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1) \
         INSERT INTO docs (id, status) SELECT printf('doc-%07d', i), 'pending' FROM n",
    )
    .bind(n)
    .execute(&app.pool)
    .await
    .expect("seed the docs");
}

async fn set_journal_mode(app: &TestSqlite, mode: &str) {
    let set: String =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("PRAGMA journal_mode = {mode}")))
            .fetch_one(&app.pool)
            .await
            .expect("journal mode");
    assert_eq!(set, mode);
}

/// One writer: a second write transaction of the catalog waits for the first (`BEGIN
/// IMMEDIATE`, on the busy timeout) and then goes through; it never fails on a lock.
#[tokio::test]
async fn sqlite_one_writer_a_second_waits_for_the_first_then_goes_through() {
    use upload_reconciler::catalog::Catalog;
    use upload_reconciler::model::Status;
    let app = TestSqlite::with_docs().await;
    app.doc("a", "pending", HOUR).await;
    app.doc("b", "pending", HOUR).await;
    let catalog = sqlite_catalog(&app).await;
    let mut first = catalog.begin().await.expect("first writer");
    first
        .set_status("a", Status::Expired)
        .await
        .expect("write a");
    let second = async {
        let mut second = catalog
            .begin()
            .await
            .expect("the second writer waits, then begins");
        second
            .set_status("b", Status::Expired)
            .await
            .expect("write b");
        second.commit().await.expect("commit b");
    };
    let commit_first = async {
        // The second asks for the write lock meanwhile (it was polled first), and cannot have it
        // before `a` commits.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(app.status("b").await.as_deref(), Some("pending"));
        first.commit().await.expect("commit a");
    };
    tokio::join!(second, commit_first);
    assert_eq!(app.status("a").await.as_deref(), Some("expired"));
    assert_eq!(app.status("b").await.as_deref(), Some("expired"));
}

/// A write of the reconciler's own tables only (audit rows, intents) locks the reconciler's file,
/// never the app's database: the app writes meanwhile, without waiting at all. A write of the app
/// table (`begin`) does lock it, and is kept short (never across a bucket change).
#[tokio::test]
async fn sqlite_the_reconcilers_own_writes_leave_the_apps_database_unlocked() {
    use upload_reconciler::catalog::Catalog;
    let app = TestSqlite::with_docs().await;
    let catalog = sqlite_catalog(&app).await;
    let mut app_conn = impatient_app(&app).await;
    for mode in ["delete", "wal"] {
        set_journal_mode(&app, mode).await;
        let mut own = catalog.begin_own().await.expect("begin");
        own.clear_intent("nothing")
            .await
            .expect("a write of the side file");
        assert_eq!(
            app_insert(&mut app_conn, &format!("during-own-{mode}")).await,
            Ok(()),
            "{mode}"
        );
        own.commit().await.expect("commit");
        let tx = catalog.begin().await.expect("begin");
        assert!(
            app_insert(&mut app_conn, &format!("during-app-{mode}"))
                .await
                .is_err_and(|e| e.contains("database is locked")),
            "{mode}: a write transaction of the app table holds the app's write lock"
        );
        tx.commit().await.expect("commit");
    }
}

/// The sweep's read of the app table comes in pages, each a statement of its own: between pages
/// the reconciler holds no lock on the app's database, so in rollback-journal mode (DELETE) too
/// the app commits while a sweep is part way through the table. (In WAL mode readers never hold
/// back a writer; the case holds there as well.) The app's journal mode stays the app's.
#[tokio::test]
async fn sqlite_a_sweep_part_way_through_the_table_holds_back_no_commit_in_either_journal_mode() {
    use futures::StreamExt;
    use upload_reconciler::catalog::Catalog;
    for mode in ["delete", "wal"] {
        let app = TestSqlite::with_docs().await;
        set_journal_mode(&app, mode).await;
        seed_pending(&app, 5000).await;
        let catalog = sqlite_catalog(&app).await;
        let mut app_conn = impatient_app(&app).await;
        let mut records = catalog.records();
        let first = records.next().await.expect("a record").expect("readable");
        assert_eq!(first.id, "doc-0000000");
        assert_eq!(
            app_insert(&mut app_conn, "zz-during").await,
            Ok(()),
            "{mode}: the app's commit waited on the sweep's read"
        );
        let rest: Vec<String> = records.map(|r| r.expect("readable").id).collect().await;
        assert_eq!(
            rest.len(),
            4999 + 1,
            "{mode}: read on, the row added behind too"
        );
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&app.pool)
            .await
            .expect("journal mode");
        assert_eq!(journal, mode, "the app's journal mode is the app's");
    }
}
