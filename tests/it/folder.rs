//! What only a folder bucket (`storage.bucket = "file:///..."`) has, through the binary: keys
//! that would leave it, its configuration errors. The scenarios it shares with S3 are in
//! `scenarios.rs`.

use crate::helpers::*;

#[tokio::test]
async fn a_key_that_would_leave_the_folder_is_refused_and_nothing_outside_is_touched() {
    let db = TestDb::with_docs(None).await;
    let outer = TestFolder::new();
    outer.put("escape", "outside the bucket");
    outer.put("root/docs/fine", "fine");
    let folder_url = format!("file://{}", outer.path().join("root").display());
    db.doc("fine", "processed", 3 * HOUR).await;
    // Key docs/../../escape: the record says uploaded, the file it names is outside the folder.
    db.doc("../../escape", "uploaded", 3 * HOUR).await;
    let mut reconcile = Reconcile::on_folder(&db, &outer).set("storage.prefix", "docs/");
    reconcile.bucket = folder_url;

    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(
        audit.findings(),
        triples(&[("missing_object", "../../escape", "mark_missing")])
    );

    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 1, "{}", apply.stdout);
    let finding = &apply.json()["findings"][0];
    assert_eq!(finding["result"], "failed");
    let reason = finding["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("refused key \"docs/../../escape\""),
        "{reason}"
    );
    assert_eq!(db.status("../../escape").await.as_deref(), Some("uploaded"));
    assert_eq!(outer.read("escape").as_deref(), Some("outside the bucket"));
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
