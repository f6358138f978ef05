//! Lookups by id on tables whose id is not text (uuid, bigint) use the primary-key index, and a
//! key that cannot be such an id simply finds no record.

use crate::helpers::*;
use std::time::Duration;

/// (sequential scans, index scans) of `table` so far, once every backend of the runs under test
/// has ended and the counts hold still (a backend reports them when it ends, or at most every
/// second).
async fn scans(db: &TestDb, table: &str) -> (i64, i64) {
    eventually(
        Duration::from_secs(10),
        "the runs' backends ended",
        || async {
            let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'reconcile-under-test'",
        )
        .fetch_one(&db.pool)
        .await
        .expect("pg_stat_activity");
            live == 0
        },
    )
    .await;
    // A backend may report its counts up to a second late: wait until they hold still.
    let mut last = counts(db, table).await;
    loop {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let now = counts(db, table).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

async fn counts(db: &TestDb, table: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT seq_scan, COALESCE(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(&db.pool)
    .await
    .expect("pg_stat_user_tables")
}

/// Wait until `table` has counted at least `idx` index scans since `before`, then give the scans
/// since then.
async fn scans_since(db: &TestDb, table: &str, before: (i64, i64), idx: i64) -> (i64, i64) {
    eventually(
        Duration::from_secs(10),
        "the index scans reported",
        || async { scans(db, table).await.1 - before.1 >= idx },
    )
    .await;
    let now = scans(db, table).await;
    (now.0 - before.0, now.1 - before.1)
}

async fn lookups_use_the_index(id_type: &str, ids: &[String], seed: &str) {
    use sqlx::Connection;
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    // The table is built on a connection of its own, closed before anything is counted: an idle
    // backend reports its counts only every ten seconds, one that ends reports them at once.
    let mut seeder = sqlx::PgConnection::connect(&format!(
        "{}?application_name=reconcile-under-test",
        db.url()
    ))
    .await
    .expect("connect the seeding session");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE files (
           id          {id_type} PRIMARY KEY,
           status      text NOT NULL DEFAULT 'pending',
           created_at  timestamptz NOT NULL DEFAULT now(),
           updated_at  timestamptz NOT NULL DEFAULT now()
         )"
    )))
    .execute(&mut seeder)
    .await
    .expect("create files");
    // A few thousand settled rows (expired, no object: nothing to do).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO files (id, status, created_at) \
         SELECT {seed}, 'expired', now() - interval '2 hours' FROM generate_series(1, 3000) i"
    )))
    .execute(&mut seeder)
    .await
    .expect("seed rows");
    // Five with something to do: three stale pending docs, two uploads nobody was told about.
    for (n, id) in ids.iter().enumerate() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO files (id, status, created_at) \
             VALUES (CAST($1 AS {id_type}), 'pending', now() - interval '2 hours')"
        )))
        .bind(id)
        .execute(&mut seeder)
        .await
        .expect("insert doc");
        if n >= 3 {
            bucket.put(id, "x").await;
        }
    }
    bucket.put("foo.txt", "not a doc").await;
    sqlx::query("ANALYZE files")
        .execute(&mut seeder)
        .await
        .expect("analyze");
    seeder.close().await.expect("close the seeding session");
    let mut reconcile = Reconcile::new(&db, &bucket)
        .set("database.table", "files")
        .set("sweep.orphan_grace", "0s");
    reconcile.database_url = format!("{}?application_name=reconcile-under-test", db.url());
    assert_eq!(reconcile.run(&["migrate"]).await.code, 0);

    let before = scans(&db, "files").await;
    let explain = reconcile
        .run(&["explain", &ids[0], "--format", "json"])
        .await;
    assert_eq!(explain.code, 0, "{}", explain.stderr);
    assert_eq!(
        explain.json()["record"]["raw_status"],
        "pending",
        "{}",
        explain.stdout
    );
    let (seq, idx) = scans_since(&db, "files", before, 1).await;
    assert_eq!(seq, 0, "explain of one id read the whole table ({id_type})");
    assert!(idx >= 1);

    let before = scans(&db, "files").await;
    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(
        apply.findings(),
        triples(&[
            ("stale_pending", &ids[0], "expire"),
            ("stale_pending", &ids[1], "expire"),
            ("stale_pending", &ids[2], "expire"),
            ("lost_notification", &ids[3], "adopt"),
            ("lost_notification", &ids[4], "adopt"),
            ("orphan_object", "foo.txt", "report"),
        ])
    );
    // The actions lock their rows and write them back by id (the three expires in one batch,
    // the two adoptions one by one): at least six lookups by id.
    let (seq, idx) = scans_since(&db, "files", before, 6).await;
    assert_eq!(
        seq, 2,
        "only the sweep's two reads of the table (its merge, and the ids that split its \
         listing) may scan it ({id_type}); {idx} index scans"
    );

    // A key that cannot be an id of this type is an orphan, not an error.
    let orphan = reconcile
        .run(&["explain", "foo.txt", "--format", "json"])
        .await;
    assert_eq!(orphan.code, 0, "{}", orphan.stderr);
    assert!(orphan.json()["record"].is_null(), "{}", orphan.stdout);
    assert_eq!(
        orphan.json()["decision"]["finding"],
        "orphan_object",
        "{}",
        orphan.stdout
    );
}

#[tokio::test]
async fn lookups_by_a_uuid_id_use_the_primary_key_index() {
    let ids: Vec<String> = (0..5).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    lookups_use_the_index("uuid", &ids, "gen_random_uuid()").await;
}

#[tokio::test]
async fn lookups_by_a_bigint_id_use_the_primary_key_index() {
    let ids: Vec<String> = (5001..5006).map(|n: i64| n.to_string()).collect();
    lookups_use_the_index("bigint", &ids, "i").await;
}

/// Issue 18 item 4: with `orphan_action = "adopt"`, a stray object whose name is no id of the
/// column's type (`Thumbs.db` in a uuid table) failed its INSERT ("invalid input syntax for type
/// uuid") and the sweep exited 1, every time; one that is a uuid in another spelling (upper case)
/// was inserted as Postgres spells it, and the next sweep found that record's object missing.
/// Such an orphan cannot be adopted: it is reported, saying why, and nothing is inserted.
#[tokio::test]
async fn an_orphan_that_is_no_canonical_id_of_the_column_is_reported_not_adopted() {
    let db = TestDb::with_docs(None).await;
    sqlx::query(
        "CREATE TABLE uuid_docs (id uuid PRIMARY KEY, status text NOT NULL DEFAULT 'pending', \
         created_at timestamptz NOT NULL DEFAULT now(), \
         updated_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&db.pool)
    .await
    .expect("create uuid_docs");
    let bucket = TestBucket::new().await;
    let canonical = "abcdef00-0000-0000-0000-000000000003";
    for key in [
        "docs/Thumbs.db",
        "docs/ABCDEF00-0000-0000-0000-000000000002",
        &format!("docs/{canonical}"),
    ] {
        bucket.put(key, "stray").await;
    }
    let reconcile = Reconcile::new(&db, &bucket)
        .set("database.table", "uuid_docs")
        .set("storage.prefix", "docs/")
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "adopt");
    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut findings: Vec<(String, String, String)> = run.json()["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            let text = |name: &str| f[name].as_str().unwrap_or_default().to_owned();
            (text("id"), text("action"), text("detail"))
        })
        .collect();
    findings.sort();
    let summary: Vec<(&str, &str, bool)> = findings
        .iter()
        .map(|(id, action, detail)| {
            (
                id.as_str(),
                action.as_str(),
                detail.contains("cannot be adopted"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("ABCDEF00-0000-0000-0000-000000000002", "report", true),
            ("Thumbs.db", "report", true),
            (canonical, "adopt", false),
        ],
        "{findings:?}"
    );
    assert!(
        findings[0].2.contains("uuid") && findings[1].2.contains("uuid"),
        "the detail says why: {findings:?}"
    );
    let ids: Vec<String> = sqlx::query_scalar("SELECT id::text FROM uuid_docs ORDER BY 1")
        .fetch_all(&db.pool)
        .await
        .expect("read uuid_docs");
    assert_eq!(ids, [canonical]);

    let again = reconcile.run(&["--format", "json"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.findings(),
        triples(&[
            (
                "orphan_object",
                "ABCDEF00-0000-0000-0000-000000000002",
                "report"
            ),
            ("orphan_object", "Thumbs.db", "report"),
        ]),
        "nothing missing: {}",
        again.stdout
    );
}
