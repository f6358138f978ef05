//! The engine's scenarios through the binary, each run on the three backend pairs from this one
//! suite: Postgres with S3 (moto), MariaDB with S3 (moto), and the embedded default, SQLite with
//! a local folder. A case is written once against [`Pair`]; `scenarios!` makes one test per pair
//! of it.
//!
//! What only one backend has (a Postgres role that may only SELECT, a locale collation, a listing
//! cut by a proxy, keys that would leave a folder, SQLite's text timestamps) is tested beside
//! that backend, in `sweep.rs`, `folder.rs` and `sqlite.rs`.

use crate::helpers::*;
use sqlx::Row;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// One database and one bucket of the same pair, seeded and read the way a test needs.
pub struct Pair {
    catalog: Db,
    store: Store,
}

enum Db {
    Postgres(TestDb),
    Sqlite(TestSqlite),
    Maria(TestMaria),
}

enum Store {
    S3(TestBucket),
    Folder(TestFolder),
}

/// A row of the app's table as text: id, status, created_at, updated_at.
type Row4 = (String, String, String, String);
/// An audit row: doc_id, finding, action, old status, new status.
type AuditRow = (String, String, String, Option<String>, Option<String>);

impl Pair {
    pub async fn postgres_s3() -> Pair {
        Pair {
            catalog: Db::Postgres(TestDb::with_docs(None).await),
            store: Store::S3(TestBucket::new().await),
        }
    }

    pub async fn mariadb_s3() -> Pair {
        Pair {
            catalog: Db::Maria(TestMaria::with_docs().await),
            store: Store::S3(TestBucket::new().await),
        }
    }

    pub async fn sqlite_folder() -> Pair {
        Pair {
            catalog: Db::Sqlite(TestSqlite::with_docs().await),
            store: Store::Folder(TestFolder::new()),
        }
    }

    /// `reconcile` over this pair.
    pub fn reconcile(&self) -> Reconcile {
        let database_url = match &self.catalog {
            Db::Postgres(db) => db.url(),
            Db::Sqlite(db) => db.url(),
            Db::Maria(db) => db.url(),
        };
        let (bucket, endpoint, env) = match &self.store {
            Store::S3(bucket) => (bucket.name.clone(), bucket.endpoint.clone(), Vec::new()),
            // The files the scenarios write are whole at once (as `Reconcile::on_folder`).
            Store::Folder(folder) => (
                folder.url(),
                String::new(),
                vec![("RECONCILE_STORAGE__SETTLE_TIME".into(), "0s".into())],
            ),
        };
        Reconcile {
            database_url,
            bucket,
            endpoint,
            env,
        }
    }

    /// What a report names as its bucket.
    /// The JSON report's `bucket`: an S3 bucket's name, a folder's `file://` URL.
    pub fn bucket_name(&self) -> String {
        match &self.store {
            Store::S3(bucket) => bucket.name.clone(),
            Store::Folder(folder) => folder.url(),
        }
    }

    pub async fn doc(&self, id: &str, status: &str, age: Duration) {
        match &self.catalog {
            Db::Postgres(db) => db.doc(id, status, age).await,
            Db::Sqlite(db) => db.doc(id, status, age).await,
            Db::Maria(db) => db.doc(id, status, age).await,
        }
    }

    pub async fn status(&self, id: &str) -> Option<String> {
        match &self.catalog {
            Db::Postgres(db) => db.status(id).await,
            Db::Sqlite(db) => db.status(id).await,
            Db::Maria(db) => db.status(id).await,
        }
    }

    pub async fn put(&self, key: &str, body: &str) {
        match &self.store {
            Store::S3(bucket) => bucket.put(key, body).await,
            Store::Folder(folder) => folder.put(key, body),
        }
    }

    /// Delete an object (a file), as the app or a person would.
    pub async fn remove(&self, key: &str) {
        match &self.store {
            Store::S3(bucket) => bucket.delete(key).await,
            Store::Folder(folder) => std::fs::remove_file(folder.path().join(key))
                .unwrap_or_else(|e| panic!("remove {key:?}: {e}")),
        }
    }

    /// Every object as key and body.
    pub async fn objects(&self) -> BTreeMap<String, String> {
        match &self.store {
            Store::S3(bucket) => {
                let mut objects = BTreeMap::new();
                for key in bucket.snapshot().await.into_keys() {
                    let body = String::from_utf8(bucket.get(&key).await).expect("utf-8 body");
                    objects.insert(key, body);
                }
                objects
            }
            Store::Folder(folder) => folder.snapshot(),
        }
    }

    /// Every row of the app's table, to compare before and after.
    pub async fn rows(&self) -> Vec<Row4> {
        match &self.catalog {
            Db::Postgres(db) => sqlx::query_as(
                "SELECT id, status, created_at::text, updated_at::text FROM docs \
                 ORDER BY id COLLATE \"C\"",
            )
            .fetch_all(&db.pool)
            .await
            .expect("read docs"),
            Db::Sqlite(db) => sqlx::query_as(
                "SELECT id, status, CAST(created_at AS TEXT), CAST(updated_at AS TEXT) \
                 FROM docs ORDER BY id",
            )
            .fetch_all(&db.pool)
            .await
            .expect("read docs"),
            Db::Maria(db) => sqlx::query_as(
                "SELECT id, status, CAST(created_at AS CHAR), CAST(updated_at AS CHAR) \
                 FROM docs ORDER BY BINARY id",
            )
            .fetch_all(&db.pool)
            .await
            .expect("read docs"),
        }
    }

    /// Run SQL that the databases understand on the app's database (on MariaDB with
    /// Postgres's type names taken to its own, a statement at a time).
    pub async fn execute(&self, sql: &str) {
        match &self.catalog {
            Db::Postgres(db) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&db.pool)
                .await
                .map(drop),
            Db::Sqlite(db) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&db.pool)
                .await
                .map(drop),
            Db::Maria(db) => {
                let sql = sql
                    .replace("text PRIMARY KEY", "VARCHAR(255) PRIMARY KEY")
                    .replace("timestamptz", "DATETIME(6)");
                let mut done = Ok(());
                for statement in sql.split(";\n").filter(|s| !s.trim().is_empty()) {
                    done = db.execute(statement).await;
                    if done.is_err() {
                        break;
                    }
                }
                done
            }
        }
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Whether the reconciler's own tables exist yet (a dry run must not create them).
    pub async fn reconciler_tables_exist(&self) -> bool {
        match &self.catalog {
            Db::Postgres(db) => db.reconciler_schema_exists().await,
            Db::Sqlite(_) => self.side_file().is_some_and(|f| f.exists()),
            Db::Maria(db) => db.reconciler_database_exists().await,
        }
    }

    fn side_file(&self) -> Option<PathBuf> {
        match &self.catalog {
            Db::Postgres(_) | Db::Maria(_) => None,
            Db::Sqlite(db) => Some(db.side_path()),
        }
    }

    /// The audit log, by doc and order.
    pub async fn audit(&self) -> Vec<AuditRow> {
        const SQL: &str = "SELECT doc_id, finding, action, old_status, new_status \
                           FROM audit_log ORDER BY doc_id, seq";
        match (&self.catalog, self.side_file()) {
            (Db::Postgres(db), _) => db.audit().await,
            (Db::Maria(db), _) => db.audit().await,
            (Db::Sqlite(_), Some(side)) => {
                let mut conn = read_only(&side).await;
                sqlx::query(SQL)
                    .fetch_all(&mut conn)
                    .await
                    .expect("read audit log")
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                    .collect()
            }
            (Db::Sqlite(_), None) => unreachable!("a SQLite catalog has a side file"),
        }
    }

    /// The sweep history as (outcome, records_scanned).
    pub async fn sweeps(&self) -> Vec<(String, i64)> {
        const SQL: &str = "SELECT outcome, records_scanned FROM sweeps ORDER BY started_at";
        match (&self.catalog, self.side_file()) {
            (Db::Postgres(db), _) => sqlx::query_as(
                "SELECT outcome, records_scanned FROM reconciler.sweeps ORDER BY started_at",
            )
            .fetch_all(&db.pool)
            .await
            .expect("read sweep history"),
            (Db::Maria(db), _) => db.sweeps().await,
            (Db::Sqlite(_), Some(side)) => sqlx::query_as(SQL)
                .fetch_all(&mut read_only(&side).await)
                .await
                .expect("read sweep history"),
            (Db::Sqlite(_), None) => unreachable!("a SQLite catalog has a side file"),
        }
    }
}

async fn read_only(path: &std::path::Path) -> sqlx::SqliteConnection {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
        .await
        .expect("open the side file")
}

macro_rules! scenarios {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn postgres_s3() {
                super::$case(super::Pair::postgres_s3().await).await
            }

            #[tokio::test]
            async fn mariadb_s3() {
                super::$case(super::Pair::mariadb_s3().await).await
            }

            #[tokio::test]
            async fn sqlite_folder() {
                super::$case(super::Pair::sqlite_folder().await).await
            }
        }
    )*};
}

scenarios!(
    dry_run_lists_every_inconsistency_and_changes_nothing_then_apply_fixes_them,
    fail_on_drift_exits_3_and_jsonl_ends_with_the_summary,
    an_orphan_is_reported,
    an_orphan_is_adopted,
    an_orphan_is_quarantined,
    an_orphan_is_deleted,
    a_second_orphan_at_a_quarantined_key_never_replaces_the_first,
    quarantined_objects_are_not_swept_again_when_the_prefix_is_the_bucket_root,
    quarantine_and_delete_refuse_the_bucket_root_without_consent,
    the_breaker_stops_before_the_first_write_unless_forced,
    hostile_identifiers_are_quoted_never_pasted_into_sql,
    a_missing_record_whose_file_is_put_back_is_adopted_again_and_nothing_is_restored_unversioned,
);

/// Ids whose keys break naive key handling (spaces, unicode, `%`, `+`, `..`, a control
/// character, nesting); `a/b` lists after `a-b` in byte order, which a walk in per-folder name
/// order gets wrong.
const HOSTILE_HEALTHY: [&str; 7] = [
    "with space.pdf",
    "ünïcødé/ø",
    "a+b%20c",
    "a..b",
    "ctl\u{1}x",
    "a-b",
    "a/b",
];

async fn dry_run_lists_every_inconsistency_and_changes_nothing_then_apply_fixes_them(pair: Pair) {
    pair.doc("stale", "pending", 2 * HOUR).await;
    pair.doc("lost", "pending", 5 * MINUTE).await;
    pair.put("docs/lost", "lost body").await;
    pair.doc("new file ü+1.pdf", "pending", 5 * MINUTE).await;
    pair.put("docs/new file ü+1.pdf", "lost too").await;
    pair.doc("2026/05/nested", "pending", 5 * MINUTE).await;
    pair.put("docs/2026/05/nested", "in a folder").await;
    pair.doc("late", "expired", 3 * HOUR).await;
    pair.put("docs/late", "late body").await;
    pair.doc("gone-uploaded", "uploaded", 3 * HOUR).await;
    pair.doc("gone-processed", "processed", 3 * HOUR).await;
    pair.doc("young", "pending", MINUTE).await;
    pair.doc("given-up", "failed", 3 * HOUR).await;
    for id in HOSTILE_HEALTHY {
        pair.doc(id, "processed", 3 * HOUR).await;
        pair.put(&format!("docs/{id}"), id).await;
    }
    pair.put("docs/orphan a..b", "nobody's").await;
    pair.put("elsewhere/not-ours", "outside the prefix").await;
    let reconcile = pair
        .reconcile()
        .set("storage.prefix", "docs/")
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "adopt");
    let expected = triples(&[
        ("lost_notification", "2026/05/nested", "adopt"),
        ("missing_object", "gone-processed", "mark_missing"),
        ("missing_object", "gone-uploaded", "mark_missing"),
        ("late_upload", "late", "adopt"),
        ("lost_notification", "lost", "adopt"),
        ("lost_notification", "new file ü+1.pdf", "adopt"),
        ("orphan_object", "orphan a..b", "adopt"),
        ("stale_pending", "stale", "expire"),
    ]);
    let rows_before = pair.rows().await;
    let objects_before = pair.objects().await;

    let audit = pair_run(&reconcile, &["--dry-run", "--format", "json"]).await;
    // In key order, which is UTF-8 byte order on both pairs.
    assert_eq!(audit.findings(), expected);
    let report = audit.json();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["bucket"], pair.bucket_name().as_str());
    assert_eq!(report["records_scanned"], 16);
    assert_eq!(report["objects_listed"], 12);
    assert_eq!(report["counts"]["missing_object"], 2);
    assert_eq!(report["counts"]["in_grace"], 1);
    assert_eq!(report["counts"]["stuck_processing"], 0);
    assert!(
        report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .all(|f| f["applied"] == false && f["result"] == "dry_run")
    );
    assert_eq!(
        pair.rows().await,
        rows_before,
        "a dry run wrote to the table"
    );
    assert_eq!(
        pair.objects().await,
        objects_before,
        "a dry run wrote to the bucket"
    );
    assert!(
        !pair.reconciler_tables_exist().await,
        "a dry run created the reconciler's tables"
    );

    let apply = pair_run(&reconcile, &["--format", "json"]).await;
    assert_eq!(apply.findings(), expected);
    assert!(
        apply.json()["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .all(|f| f["applied"] == true),
        "{}",
        apply.stdout
    );
    let mut statuses = vec![
        ("stale", "expired"),
        ("lost", "processed"),
        ("new file ü+1.pdf", "processed"),
        ("2026/05/nested", "processed"),
        ("late", "processed"),
        ("gone-uploaded", "missing"),
        ("gone-processed", "missing"),
        ("orphan a..b", "processed"),
        ("young", "pending"),
        ("given-up", "failed"),
    ];
    statuses.extend(HOSTILE_HEALTHY.map(|id| (id, "processed")));
    for (id, status) in statuses {
        assert_eq!(
            pair.status(id).await.as_deref(),
            Some(status),
            "status of {id}"
        );
    }
    assert_eq!(
        pair.objects().await,
        objects_before,
        "adoption touches no object"
    );
    let audit_log = pair.audit().await;
    assert_eq!(audit_log.len(), 8, "{audit_log:?}");
    assert!(audit_log.contains(&(
        "stale".into(),
        "stale_pending".into(),
        "expire".into(),
        Some("pending".into()),
        Some("expired".into())
    )));
    assert!(audit_log.contains(&(
        "orphan a..b".into(),
        "orphan_object".into(),
        "adopt".into(),
        None,
        Some("processed".into())
    )));
    assert_eq!(
        pair.sweeps().await,
        vec![("ok".to_owned(), 16)],
        "one applying sweep, recorded"
    );

    let again = pair_run(&reconcile, &["--dry-run", "--format", "json"]).await;
    assert_eq!(again.findings(), vec![], "{}", again.stdout);
    assert_eq!(again.json()["counts"]["in_grace"], 1);
}

async fn fail_on_drift_exits_3_and_jsonl_ends_with_the_summary(pair: Pair) {
    pair.doc("stale", "pending", 2 * HOUR).await;
    pair.doc("fine", "processed", 2 * HOUR).await;
    pair.put("fine", "x").await;
    let reconcile = pair.reconcile();

    let run = reconcile
        .run(&["--dry-run", "--fail-on-drift", "--format", "jsonl"])
        .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert_eq!(lines[0]["kind"], "stale_pending");
    assert_eq!(lines[1]["counts"]["stale_pending"], 1);
    assert_eq!(lines[1]["records_scanned"], 2);

    pair_run(&reconcile, &[]).await;
    let clean = reconcile
        .run(&["sweep", "--dry-run", "--fail-on-drift"])
        .await;
    assert_eq!(clean.code, 0, "{}", clean.stderr);
}

async fn an_orphan_is_reported(pair: Pair) {
    orphan_action(pair, "report").await
}

async fn an_orphan_is_adopted(pair: Pair) {
    orphan_action(pair, "adopt").await
}

async fn an_orphan_is_quarantined(pair: Pair) {
    orphan_action(pair, "quarantine").await
}

async fn an_orphan_is_deleted(pair: Pair) {
    orphan_action(pair, "delete").await
}

/// `sweep.orphan_action = action` does what it says to an orphan, and only to it.
async fn orphan_action(pair: Pair, action: &str) {
    let orphan_id = "sub/ünï orphan+1%.pdf";
    pair.doc("kept", "processed", HOUR).await;
    pair.put("docs/kept", "kept").await;
    pair.put(&format!("docs/{orphan_id}"), "nobody's").await;
    pair.put("elsewhere/not-ours", "outside the prefix").await;
    let reconcile = pair
        .reconcile()
        .set("storage.prefix", "docs/")
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", action);
    let before = pair.objects().await;

    let run = pair_run(&reconcile, &["--format", "json"]).await;
    assert_eq!(
        run.findings(),
        triples(&[("orphan_object", orphan_id, action)]),
        "{}",
        run.stdout
    );
    let after = pair.objects().await;
    let mut expected = before.clone();
    if action == "quarantine" || action == "delete" {
        expected.remove(&format!("docs/{orphan_id}"));
    }
    let quarantined: Vec<&String> = after
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("quarantine/docs/{orphan_id}/")))
        .map(|(_, body)| body)
        .collect();
    if action == "quarantine" {
        // One copy, under quarantine/KEY/, named after its version.
        assert_eq!(quarantined, ["nobody's"], "{after:?}");
    } else {
        assert!(quarantined.is_empty(), "{after:?}");
    }
    let outside_quarantine: BTreeMap<String, String> = after
        .into_iter()
        .filter(|(k, _)| !k.starts_with("quarantine/"))
        .collect();
    assert_eq!(outside_quarantine, expected);
    assert_eq!(
        pair.status(orphan_id).await,
        (action == "adopt").then(|| "processed".to_owned())
    );
    let audited: Vec<String> = pair.audit().await.into_iter().map(|row| row.2).collect();
    let expected_audit: Vec<String> = match action {
        "report" => vec![],
        _ => vec![action.to_owned()],
    };
    assert_eq!(audited, expected_audit, "one audit row per action");

    // Whatever was done, the next sweep finds nothing more to do about it.
    let again = pair_run(&reconcile, &["--dry-run", "--format", "json"]).await;
    let left = if action == "report" {
        triples(&[("orphan_object", orphan_id, "report")])
    } else {
        vec![]
    };
    assert_eq!(again.findings(), left, "{}", again.stdout);
}

async fn a_second_orphan_at_a_quarantined_key_never_replaces_the_first(pair: Pair) {
    let reconcile = pair
        .reconcile()
        .set("storage.prefix", "docs/")
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "quarantine");
    pair.put("docs/a", "first orphan, v1").await;
    let first = pair_run(&reconcile, &["--format", "json"]).await;
    assert_eq!(
        first.json()["findings"][0]["result"],
        "applied",
        "{}",
        first.stdout
    );

    pair.put("docs/a", "second orphan at the same key, v2")
        .await;
    let second = pair_run(&reconcile, &["--format", "json"]).await;
    assert_eq!(
        second.json()["findings"][0]["result"],
        "applied",
        "{}",
        second.stdout
    );
    let objects = pair.objects().await;
    let mut bodies: Vec<&str> = objects
        .iter()
        .filter(|(k, _)| k.starts_with("quarantine/docs/a/"))
        .map(|(_, body)| body.as_str())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        ["first orphan, v1", "second orphan at the same key, v2"],
        "both versions kept: {objects:?}"
    );
    assert_eq!(objects.len(), 2, "no stray object: {objects:?}");
}

async fn quarantined_objects_are_not_swept_again_when_the_prefix_is_the_bucket_root(pair: Pair) {
    pair.put("orphan", "nobody's").await;
    let reconcile = pair
        .reconcile()
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "quarantine")
        .set("sweep.allow_bucket_root", "true");
    pair_run(&reconcile, &["--format", "json"]).await;
    let keys: Vec<String> = pair.objects().await.into_keys().collect();
    assert!(
        keys.len() == 1 && keys[0].starts_with("quarantine/orphan/"),
        "{keys:?}"
    );
    let again = pair_run(&reconcile, &["--dry-run", "--format", "json"]).await;
    assert_eq!(again.findings(), vec![], "{}", again.stdout);
}

async fn quarantine_and_delete_refuse_the_bucket_root_without_consent(pair: Pair) {
    pair.put("orphan", "nobody's").await;
    for action in ["quarantine", "delete"] {
        let run = pair
            .reconcile()
            .set("sweep.orphan_grace", "0s")
            .set("sweep.orphan_action", action)
            .run(&["--format", "json"])
            .await;
        assert_eq!(run.code, 2, "{action}: {}", run.stderr);
        assert!(run.stderr.contains("sweep.orphan_action"), "{}", run.stderr);
        assert!(run.stderr.contains("allow_bucket_root"), "{}", run.stderr);
        assert!(
            pair.objects().await.contains_key("orphan"),
            "{action} touched the object"
        );
    }
    pair_run(
        &pair
            .reconcile()
            .set("sweep.orphan_grace", "0s")
            .set("sweep.orphan_action", "delete")
            .set("sweep.allow_bucket_root", "true"),
        &["--format", "json"],
    )
    .await;
    assert!(pair.objects().await.is_empty());
}

async fn the_breaker_stops_before_the_first_write_unless_forced(pair: Pair) {
    for i in 0..5 {
        pair.doc(&format!("stale-{i}"), "pending", 2 * HOUR).await;
    }
    pair.doc("fine", "processed", HOUR).await;
    pair.put("fine", "x").await;
    let reconcile = pair
        .reconcile()
        .set("sweep.max_action_ratio", "0.5")
        .set("sweep.max_action_floor", "2");
    let before = pair.rows().await;

    let stopped = reconcile.run(&["--format", "json"]).await;
    assert_eq!(stopped.code, 4, "{}", stopped.stderr);
    assert!(stopped.stderr.contains("safety stop"), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("sweep.max_action_ratio"),
        "{}",
        stopped.stderr
    );
    let report = stopped.json();
    assert_eq!(report["counts"]["stale_pending"], 5);
    assert!(report["safety_stop"].is_string());
    assert_eq!(report["actions"]["applied"], 0);
    assert_eq!(pair.rows().await, before, "the breaker let a write through");
    assert!(
        !pair.reconciler_tables_exist().await,
        "the breaker let a write through"
    );

    // A dry run says the same and exits 0: it writes nothing anyway.
    let audit = pair_run(&reconcile, &["--dry-run", "--format", "json"]).await;
    assert!(audit.json()["safety_stop"].is_string());

    let forced = pair_run(&reconcile, &["--force", "--format", "json"]).await;
    assert_eq!(forced.json()["actions"]["applied"], 5);
    assert_eq!(pair.status("stale-4").await.as_deref(), Some("expired"));
}

/// Run and insist on exit 0.
async fn pair_run(reconcile: &Reconcile, args: &[&str]) -> Run {
    let run = reconcile.run(args).await;
    assert_eq!(
        run.code, 0,
        "reconcile {args:?}: {}\n{}",
        run.stderr, run.stdout
    );
    run
}

/// The table and column names come from the config: each is quoted as an identifier, so a name
/// that would end the statement in pasted SQL is just a name.
async fn hostile_identifiers_are_quoted_never_pasted_into_sql(pair: Pair) {
    const TABLE: &str = "docs\"; DROP TABLE canary; --";
    const ID: &str = "id\"); DROP TABLE canary; --";
    const STATUS: &str = "st'atus";
    const CREATED: &str = "created at";
    const UPDATED: &str = "up\"dated";
    let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    pair.execute(&format!(
        "CREATE TABLE canary (x text);
         CREATE TABLE {table} ({id} text PRIMARY KEY, {status} text NOT NULL,
                               {created} timestamptz NOT NULL, {updated} timestamptz NOT NULL);
         INSERT INTO {table} ({id}, {status}, {created}, {updated}) VALUES
           ('stale', 'pending', '2026-01-01 00:00:00', '2026-01-01 00:00:00'),
           ('lost', 'pending', '2026-01-01 00:00:00', '2026-01-01 00:00:00');",
        table = quoted(TABLE),
        id = quoted(ID),
        status = quoted(STATUS),
        created = quoted(CREATED),
        updated = quoted(UPDATED),
    ))
    .await;
    pair.put("lost", "body").await;
    let reconcile = pair
        .reconcile()
        .set("database.table", TABLE)
        .set("database.id_column", ID)
        .set("database.status_column", STATUS)
        .set("database.created_at_column", CREATED)
        .set("database.updated_at_column", UPDATED);
    let expected = triples(&[
        ("lost_notification", "lost", "adopt"),
        ("stale_pending", "stale", "expire"),
    ]);

    let audit = pair_run(&reconcile, &["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.findings(), expected);
    let apply = pair_run(&reconcile, &["--format", "json"]).await;
    assert_eq!(apply.findings(), expected);
    assert_eq!(apply.json()["actions"]["applied"], 2, "{}", apply.stdout);
    // The canary is still there, and the rows changed through the quoted names.
    pair.execute("INSERT INTO canary (x) VALUES ('alive')")
        .await;
    let again = pair_run(&reconcile, &["--dry-run", "--format", "json"]).await;
    assert_eq!(again.findings(), vec![], "{}", again.stdout);
}

/// Issue 21 on every pair: a file deleted from a store without versions is marked missing even
/// with `missing_action = "restore"` (there is nothing to restore), and once put back its record
/// is adopted again (`object_returned`), reading what was noted at its first adoption.
async fn a_missing_record_whose_file_is_put_back_is_adopted_again_and_nothing_is_restored_unversioned(
    pair: Pair,
) {
    pair.doc("doc", "pending", MINUTE).await;
    pair.put("doc", "the file").await;
    let reconcile = pair.reconcile().set("sweep.missing_action", "restore");
    let run = pair_run(&reconcile, &["--format", "json"]).await;
    assert_eq!(
        run.findings(),
        triples(&[("lost_notification", "doc", "adopt")])
    );
    pair.remove("doc").await;
    let run = pair_run(&reconcile, &["--format", "json"]).await;
    assert_eq!(
        run.findings(),
        triples(&[("missing_object", "doc", "mark_missing")])
    );
    assert!(
        run.stdout
            .contains("the bucket keeps no versions: nothing to restore"),
        "{}",
        run.stdout
    );
    assert_eq!(pair.status("doc").await.as_deref(), Some("missing"));
    pair.put("doc", "the file").await;
    let run = pair_run(&reconcile, &["--format", "json"]).await;
    assert_eq!(
        run.findings(),
        triples(&[("object_returned", "doc", "adopt")])
    );
    assert_eq!(pair.status("doc").await.as_deref(), Some("processed"));
    let audited: Vec<String> = pair.audit().await.into_iter().map(|row| row.1).collect();
    assert_eq!(
        audited,
        ["lost_notification", "missing_object", "object_returned"]
    );
}
