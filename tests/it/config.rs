//! Bad configuration and unreachable dependencies: one readable line naming the culprit, and the
//! contract's exit code.

use crate::helpers::*;

async fn with_file(contents: &str, args: &[&str]) -> Run {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("reconcile.toml");
    std::fs::write(&path, contents).expect("write config");
    let path = path.to_string_lossy().into_owned();
    let mut all = vec!["--config", path.as_str()];
    all.extend_from_slice(args);
    Reconcile::new(&db, &bucket).run(&all).await
}

fn assert_one_line_naming(run: &Run, code: i32, names: &[&str]) {
    assert_eq!(run.code, code, "stderr: {}", run.stderr);
    let stderr = run.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for name in names {
        assert!(stderr.contains(name), "{name:?} not in: {stderr}");
    }
}

#[tokio::test]
async fn each_bad_config_file_is_an_error_that_names_its_key() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[sweep]\npendng_ttl = \"1h\"\n",
            &["sweep.pendng_ttl", "reconcile.toml"],
        ),
        (
            "[sweep]\npending_ttl = \"soonish\"\n",
            &["sweep.pending_ttl", "soonish"],
        ),
        ("[sweep]\npending_ttl = 60\n", &["sweep.pending_ttl"]),
        (
            "[storage]\nupload_url_lifetime = \"2h\"\n[sweep]\npending_ttl = \"1h\"\n",
            &["sweep.pending_ttl", "storage.upload_url_lifetime (2h)"],
        ),
        (
            "[sweep]\norphan_action = \"shred\"\n",
            &["sweep.orphan_action", "shred"],
        ),
        (
            "[sweep]\nmax_action_ratio = 1.5\n",
            &["sweep.max_action_ratio"],
        ),
        (
            "[sweep]\nmax_action_floor = -1\n",
            &["sweep.max_action_floor"],
        ),
        (
            "[storage]\nlist_page_size = 5000\n",
            &["storage.list_page_size"],
        ),
        (
            "[storage]\nlist_concurrency = 0\n",
            &["storage.list_concurrency", "1..=64"],
        ),
        (
            "[storage]\nlist_concurrency = 65\n",
            &["storage.list_concurrency", "65"],
        ),
        (
            "[sweep]\nallow_bucket_root = \"maybe\"\n",
            &["sweep.allow_bucket_root"],
        ),
        ("[database]\ntable = \"\"\n", &["database.table"]),
        (
            "[database.statuses]\nmissing = \"uploaded\"\n",
            &["database.statuses.missing"],
        ),
        ("[databse]\nurl = \"x\"\n", &["databse"]),
        ("[sweep\npending_ttl = \"1h\"\n", &["reconcile.toml"]),
        (
            "[sweep]\norphan_action = \"quarantine\"\nquarantine_prefix = \"\"\n",
            &["sweep.orphan_action"],
        ),
    ];
    for (contents, names) in cases {
        let run = with_file(contents, &["check-config"]).await;
        assert!(
            run.code == 2,
            "{contents:?} gave {}: {}",
            run.code,
            run.stderr
        );
        assert_one_line_naming(&run, 2, names);
    }
}

#[tokio::test]
async fn a_missing_config_file_is_named() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let run = Reconcile::new(&db, &bucket)
        .run(&["--config", "/nonexistent/reconcile.toml", "check-config"])
        .await;
    assert_one_line_naming(&run, 2, &["/nonexistent/reconcile.toml"]);
}

#[tokio::test]
async fn a_bad_environment_override_names_the_variable() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let run = Reconcile::new(&db, &bucket)
        .set("sweep.orphan_grace", "a while")
        .run(&["check-config"])
        .await;
    assert_one_line_naming(
        &run,
        2,
        &["sweep.orphan_grace", "RECONCILE_SWEEP__ORPHAN_GRACE"],
    );
}

#[tokio::test]
async fn a_mapping_to_a_table_or_column_that_does_not_exist_names_the_key() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    for (key, value, named) in [
        ("database.table", "documents", "database.table"),
        ("database.status_column", "state", "database.status_column"),
        (
            "database.created_at_column",
            "inserted_at",
            "database.created_at_column",
        ),
        (
            "database.updated_at_column",
            "modified",
            "database.updated_at_column",
        ),
    ] {
        let run = Reconcile::new(&db, &bucket)
            .set(key, value)
            .run(&["--dry-run"])
            .await;
        assert_one_line_naming(&run, 2, &[named, value]);
    }
}

#[tokio::test]
async fn check_config_reaches_both_dependencies() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let ok = Reconcile::new(&db, &bucket).run(&["check-config"]).await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.contains(&bucket.name), "{}", ok.stdout);

    // As a new user writes it: the local server's queue URL and no events.endpoint_url. The
    // queue's host is the endpoint, not AWS's.
    let queue = TestQueue::without_dead_letters().await;
    assert!(queue.url.starts_with(&moto_endpoint()), "{}", queue.url);
    let with_queue = Reconcile::new(&db, &bucket)
        .set("events.queue_url", &queue.url)
        .run(&["check-config"])
        .await;
    assert_eq!(with_queue.code, 0, "{}", with_queue.stderr);
    assert!(
        with_queue
            .stdout
            .contains(&format!("ok: queue {} at {}", queue.url, moto_endpoint())),
        "{}",
        with_queue.stdout
    );
    let no_queue = Reconcile::new(&db, &bucket)
        .set("events.queue_url", &format!("{}-gone", queue.url))
        .run(&["check-config"])
        .await;
    assert_one_line_naming(&no_queue, 1, &["-gone", &moto_endpoint()]);
    // Nothing listens there: the error names the endpoint it tried.
    let nobody = Reconcile::new(&db, &bucket)
        .set(
            "events.queue_url",
            "http://127.0.0.1:9/000000000000/uploads",
        )
        .run(&["check-config"])
        .await;
    assert_one_line_naming(&nobody, 1, &["at http://127.0.0.1:9"]);
    // A configured endpoint wins over the queue's host.
    let configured = Reconcile::new(&db, &bucket)
        .set("events.queue_url", &queue.url)
        .set("events.endpoint_url", "http://127.0.0.1:9")
        .run(&["check-config"])
        .await;
    assert_one_line_naming(&configured, 1, &["at http://127.0.0.1:9"]);
    // On AWS's host, AWS's endpoint for the region (unreachable from the tests), named.
    let aws = Reconcile::new(&db, &bucket)
        .set(
            "events.queue_url",
            "https://sqs.eu-west-1.amazonaws.com/1/uploads",
        )
        .set("events.region", "eu-west-1")
        .run(&["check-config"])
        .await;
    assert_one_line_naming(&aws, 1, &["at https://sqs.eu-west-1.amazonaws.com"]);

    let mut no_bucket = Reconcile::new(&db, &bucket);
    no_bucket.bucket = "no-such-bucket-here".into();
    let run = no_bucket.run(&["check-config"]).await;
    assert_one_line_naming(&run, 1, &["s3://no-such-bucket-here"]);
}

#[tokio::test]
async fn an_unreachable_database_is_a_runtime_error_with_the_password_hidden() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let mut down = Reconcile::new(&db, &bucket);
    down.database_url = "postgres://app:hunter2@127.0.0.1:1/app".into();
    let run = down.run(&["--dry-run"]).await;
    assert_one_line_naming(&run, 1, &["postgres://app:***@127.0.0.1:1/app"]);
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
}

#[tokio::test]
async fn flags_override_the_environment_and_the_file() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("stale", "pending", 2 * HOUR).await;
    let mut wrong = Reconcile::new(&db, &bucket);
    wrong.bucket = "not-this-one".into();
    wrong.database_url = "postgres://postgres@127.0.0.1:1/nope".into();
    let db_url = db.url();
    let run = wrong
        .run(&[
            "--dry-run",
            "--format",
            "json",
            "--bucket",
            &bucket.name,
            "--database-url",
            &db_url,
        ])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.findings(),
        triples(&[("stale_pending", "stale", "expire")])
    );
}
