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
    assert_eq!(db.snapshot().await, rows_before, "a dry run wrote to the table");
    assert_eq!(bucket.snapshot().await, objects_before, "a dry run wrote to the bucket");
    assert!(!db.reconciler_schema_exists().await, "a dry run created the schema");

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
        ("lost", "uploaded"),
        ("late", "uploaded"),
        ("gone-uploaded", "missing"),
        ("gone-processed", "missing"),
        ("orphan", "uploaded"),
        ("fine", "processed"),
        ("young", "pending"),
        ("given-up", "failed"),
    ] {
        assert_eq!(db.status(id).await.as_deref(), Some(status), "status of {id}");
    }
    assert_eq!(bucket.snapshot().await, objects_before, "apply touched no object");
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
        Some("uploaded".into())
    )));

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
    db.doc("fine", "uploaded", 2 * HOUR).await;
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
    let clean = reconcile.run(&["sweep", "--dry-run", "--fail-on-drift"]).await;
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
    assert!(run.stdout.contains("pending 2h0m, no object"), "{}", run.stdout);
}
