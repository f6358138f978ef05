//! The sweep through the binary, as an operator runs it.

use crate::helpers::*;

/// One doc of every kind, plus a healthy one and one in grace.
async fn seed_every_kind(db: &TestDb, bucket: &TestBucket) {
    db.doc("stale", "pending", 2 * HOUR).await;
    db.doc("lost", "pending", 5 * MINUTE).await;
    bucket.put("lost", "lost body").await;
    db.doc("late", "expired", 3 * HOUR).await;
    bucket.put("late", "late body").await;
    db.doc("gone-uploaded", "uploaded", 3 * HOUR).await;
    db.doc("gone-processed", "processed", 3 * HOUR).await;
    db.doc("fine", "processed", 3 * HOUR).await;
    bucket.put("fine", "fine body").await;
    db.doc("young", "pending", MINUTE).await;
    db.doc("given-up", "failed", 3 * HOUR).await;
    bucket.put("orphan", "nobody's").await;
}

fn every_kind_expected() -> Vec<(String, String, String)> {
    triples(&[
        ("stale_pending", "stale", "expire"),
        ("lost_notification", "lost", "adopt"),
        ("late_upload", "late", "adopt"),
        ("missing_object", "gone-uploaded", "mark_missing"),
        ("missing_object", "gone-processed", "mark_missing"),
        ("orphan_object", "orphan", "adopt"),
    ])
}

#[tokio::test]
async fn dry_run_lists_every_inconsistency_and_changes_nothing_then_apply_fixes_them() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    seed_every_kind(&db, &bucket).await;
    let reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "adopt");
    let rows_before = db.snapshot().await;
    let objects_before = bucket.snapshot().await;

    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(audit.findings(), every_kind_expected());
    let report = audit.json();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["bucket"], bucket.name.as_str());
    assert_eq!(report["records_scanned"], 8);
    assert_eq!(report["objects_listed"], 4);
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
        db.snapshot().await,
        rows_before,
        "a dry run wrote to the table"
    );
    assert_eq!(
        bucket.snapshot().await,
        objects_before,
        "a dry run wrote to the bucket"
    );
    assert!(
        !db.reconciler_schema_exists().await,
        "a dry run created the schema"
    );

    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(apply.findings(), every_kind_expected());
    assert!(
        apply.json()["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .all(|f| f["applied"] == true)
    );
    for (id, status) in [
        ("stale", "expired"),
        ("lost", "processed"),
        ("late", "processed"),
        ("gone-uploaded", "missing"),
        ("gone-processed", "missing"),
        ("orphan", "processed"),
        ("fine", "processed"),
        ("young", "pending"),
        ("given-up", "failed"),
    ] {
        assert_eq!(
            db.status(id).await.as_deref(),
            Some(status),
            "status of {id}"
        );
    }
    assert_eq!(
        bucket.snapshot().await,
        objects_before,
        "apply touched no object"
    );
    let audit_log = db.audit().await;
    assert_eq!(audit_log.len(), 6, "{audit_log:?}");
    assert!(audit_log.contains(&(
        "stale".into(),
        "stale_pending".into(),
        "expire".into(),
        Some("pending".into()),
        Some("expired".into())
    )));
    assert!(audit_log.contains(&(
        "orphan".into(),
        "orphan_object".into(),
        "adopt".into(),
        None,
        Some("processed".into())
    )));

    let history: Vec<(String, i64)> =
        sqlx::query_as("SELECT outcome, records_scanned FROM reconciler.sweeps")
            .fetch_all(&db.pool)
            .await
            .expect("read sweep history");
    assert_eq!(
        history,
        vec![("ok".to_owned(), 8)],
        "one applying sweep, recorded"
    );

    let again = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    let report = again.json();
    assert_eq!(again.findings(), vec![], "{}", again.stdout);
    assert_eq!(report["counts"]["in_grace"], 1);
}

#[tokio::test]
async fn fail_on_drift_exits_3_and_jsonl_ends_with_the_summary() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("stale", "pending", 2 * HOUR).await;
    db.doc("fine", "processed", 2 * HOUR).await;
    bucket.put("fine", "x").await;
    let reconcile = Reconcile::new(&db, &bucket);

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

    db.set_status("stale", "expired").await;
    let clean = reconcile
        .run(&["sweep", "--dry-run", "--fail-on-drift"])
        .await;
    assert_eq!(clean.code, 0, "{}", clean.stderr);
}

#[tokio::test]
async fn the_table_report_shows_counts_and_findings() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("stale", "pending", 2 * HOUR).await;
    let run = Reconcile::new(&db, &bucket)
        .run(&["--dry-run", "--format", "table"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("Dry run of s3://"), "{}", run.stdout);
    assert!(run.stdout.contains("stale_pending"), "{}", run.stdout);
    assert!(
        run.stdout.contains("pending 2h0m, no object"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn each_orphan_action_does_what_it_says() {
    for action in ["report", "adopt", "quarantine", "delete"] {
        let db = TestDb::with_docs(None).await;
        let bucket = TestBucket::new().await;
        db.doc("kept", "processed", HOUR).await;
        bucket.put("docs/kept", "kept").await;
        bucket.put("docs/orphan", "nobody's").await;
        bucket.put("elsewhere/not-ours", "outside the prefix").await;
        let reconcile = Reconcile::new(&db, &bucket)
            .set("storage.prefix", "docs/")
            .set("sweep.orphan_grace", "0s")
            .set("sweep.orphan_action", action);

        let run = reconcile.run(&["--format", "json"]).await;
        assert_eq!(run.code, 0, "{action}: {}", run.stderr);
        let expected_action = if action == "report" { "report" } else { action };
        assert_eq!(
            run.findings(),
            triples(&[("orphan_object", "orphan", expected_action)]),
            "{action}"
        );
        let objects = bucket.snapshot().await;
        // A quarantined copy sits under quarantine/KEY/, named after its version.
        let keys: Vec<&str> = objects
            .keys()
            .map(|k| match k.strip_prefix("quarantine/docs/orphan/") {
                Some(_) => "quarantine/docs/orphan/*",
                None => k.as_str(),
            })
            .collect();
        let expected_keys: &[&str] = match action {
            "report" | "adopt" => &["docs/kept", "docs/orphan", "elsewhere/not-ours"],
            "quarantine" => &[
                "docs/kept",
                "elsewhere/not-ours",
                "quarantine/docs/orphan/*",
            ],
            _ => &["docs/kept", "elsewhere/not-ours"],
        };
        assert_eq!(keys, expected_keys, "{action}");
        let record = db.status("orphan").await;
        let expected_record = (action == "adopt").then(|| "processed".to_owned());
        assert_eq!(record, expected_record, "{action}");
        if action != "report" {
            let audit = db.audit().await;
            assert_eq!(audit.len(), 1, "{action}: {audit:?}");
            assert_eq!(audit[0].2, action);
        }

        // Whatever was done, the next sweep finds nothing more to do about it.
        let again = reconcile.run(&["--dry-run", "--format", "json"]).await;
        let leftover = if action == "report" {
            triples(&[("orphan_object", "orphan", "report")])
        } else {
            vec![]
        };
        assert_eq!(again.findings(), leftover, "{action}: {}", again.stdout);
    }
}

#[tokio::test]
async fn quarantined_objects_are_not_swept_again_when_the_prefix_is_the_bucket_root() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    bucket.put("orphan", "nobody's").await;
    let reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "quarantine")
        .set("sweep.allow_bucket_root", "true");
    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let keys: Vec<String> = bucket.snapshot().await.into_keys().collect();
    assert!(
        keys.len() == 1 && keys[0].starts_with("quarantine/orphan/"),
        "{keys:?}"
    );
    let again = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(again.findings(), vec![], "{}", again.stdout);
}

#[tokio::test]
async fn quarantine_and_delete_refuse_the_bucket_root_without_consent() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    bucket.put("orphan", "nobody's").await;
    for action in ["quarantine", "delete"] {
        let run = Reconcile::new(&db, &bucket)
            .set("sweep.orphan_grace", "0s")
            .set("sweep.orphan_action", action)
            .run(&["--format", "json"])
            .await;
        assert_eq!(run.code, 2, "{action}: {}", run.stderr);
        assert!(run.stderr.contains("sweep.orphan_action"), "{}", run.stderr);
        assert!(run.stderr.contains("allow_bucket_root"), "{}", run.stderr);
        assert!(bucket.exists("orphan").await, "{action} touched the object");
    }
    let consented = Reconcile::new(&db, &bucket)
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "delete")
        .set("sweep.allow_bucket_root", "true")
        .run(&["--format", "json"])
        .await;
    assert_eq!(consented.code, 0, "{}", consented.stderr);
    assert!(!bucket.exists("orphan").await);
}

#[tokio::test]
async fn dry_run_works_with_a_role_that_can_only_select() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("stale", "pending", 2 * HOUR).await;
    db.doc("lost", "pending", HOUR).await;
    bucket.put("lost", "x").await;
    let role = db.read_only_role().await;
    let mut reconcile = Reconcile::new(&db, &bucket);
    reconcile.database_url = db.url_as(&role);

    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(
        audit.findings(),
        triples(&[
            ("lost_notification", "lost", "adopt"),
            ("stale_pending", "stale", "expire")
        ])
    );
    // The same role cannot apply: the first write (creating schema reconciler) is refused, and
    // the error says so in one line.
    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 1, "{}", apply.stderr);
    assert!(
        apply.stderr.contains("permission denied"),
        "{}",
        apply.stderr
    );
    assert_eq!(apply.stderr.trim().lines().count(), 1, "{}", apply.stderr);
    assert_eq!(db.status("stale").await.as_deref(), Some("pending"));
}

#[tokio::test]
async fn keys_that_break_naive_code_merge_correctly_under_a_locale_collation() {
    // The id column sorts by ICU rules ("a" < "B", "a_b" < "a-b"); S3 lists in byte order.
    let db = TestDb::with_docs(Some("en-x-icu")).await;
    let bucket = TestBucket::new().await;
    let prefix = "deep/er/prefix/";
    let healthy = [
        "a",
        "B",
        "a-b",
        "a_b",
        "a+b",
        "a%20b",
        "a%2Bb",
        "sp ace",
        "é/ü",
        "日本語",
        "x/y/z/deep",
        "ctl\u{1}x",
        "tab\tkey",
        "~tilde",
        "Zebra",
    ];
    for id in healthy {
        db.doc(id, "processed", HOUR).await;
        bucket.put(&format!("{prefix}{id}"), id).await;
    }
    // Two real inconsistencies hidden among them.
    db.doc("plus+gone", "uploaded", HOUR).await;
    bucket
        .put(&format!("{prefix}orphan with space+plus"), "x")
        .await;

    let run = Reconcile::new(&db, &bucket)
        .set("storage.prefix", prefix)
        .set("sweep.orphan_grace", "0s")
        .run(&["--dry-run", "--format", "json"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.findings(),
        triples(&[
            ("missing_object", "plus+gone", "mark_missing"),
            ("orphan_object", "orphan with space+plus", "report"),
        ])
    );
    let report = run.json();
    assert_eq!(report["records_scanned"], healthy.len() + 1);
    assert_eq!(report["objects_listed"], healthy.len() + 1);
    let orphan = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["kind"] == "orphan_object")
        .cloned()
        .expect("orphan finding");
    assert_eq!(orphan["key"], format!("{prefix}orphan with space+plus"));
}

#[tokio::test]
async fn the_breaker_stops_before_the_first_write_unless_forced() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    for i in 0..5 {
        db.doc(&format!("stale-{i}"), "pending", 2 * HOUR).await;
    }
    db.doc("fine", "processed", HOUR).await;
    bucket.put("fine", "x").await;
    let reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.max_action_ratio", "0.5")
        .set("sweep.max_action_floor", "2");
    let before = db.snapshot().await;

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
    assert_eq!(
        db.snapshot().await,
        before,
        "the breaker let a write through"
    );
    assert!(
        !db.reconciler_schema_exists().await,
        "the breaker let a write through"
    );

    // A dry run says the same and exits 0: it writes nothing anyway.
    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert!(audit.json()["safety_stop"].is_string());

    let forced = reconcile.run(&["--force", "--format", "json"]).await;
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert_eq!(forced.json()["actions"]["applied"], 5);
    assert_eq!(db.status("stale-4").await.as_deref(), Some("expired"));
}

#[tokio::test]
async fn a_listing_that_fails_mid_sweep_aborts_it_and_nothing_is_applied() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    for i in 0..6 {
        let id = format!("fine-{i}");
        db.doc(&id, "processed", HOUR).await;
        bucket.put(&id, "x").await;
    }
    for i in 0..3 {
        db.doc(&format!("stale-{i}"), "pending", 2 * HOUR).await;
    }
    let before = db.snapshot().await;
    // Pages of two keys: the listing needs four requests; the third is cut.
    let proxy = CuttingProxy::start(&bucket.endpoint, 2).await;
    let mut reconcile = Reconcile::new(&db, &bucket).set("storage.list_page_size", "2");
    reconcile.endpoint = proxy.endpoint.clone();

    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    let expected = format!("listing s3://{}/", bucket.name);
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(
        run.stdout.is_empty(),
        "a failed listing still printed a report: {}",
        run.stdout
    );
    assert_eq!(
        db.snapshot().await,
        before,
        "rows changed after a failed listing"
    );
    assert!(!db.reconciler_schema_exists().await);

    // The same sweep through moto directly: the stale docs were real, and are fixed.
    let direct = Reconcile::new(&db, &bucket).set("storage.list_page_size", "2");
    let run = direct.run(&["--format", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["actions"]["applied"], 3);
}
