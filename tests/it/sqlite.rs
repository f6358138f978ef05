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

    let reconcile = Reconcile {
        database_url: format!("sqlite://{}", app_db.display()),
        ..Reconcile::on_folder_url(&folder)
    }
    .set("storage.prefix", "docs/")
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
