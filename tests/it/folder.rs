//! The sweep over a local folder (`storage.bucket = "file:///..."`) through the binary: the same
//! findings and actions as over S3, with the folder's files as the objects.

use crate::helpers::*;

/// Ids whose keys break naive path handling but are fine inside the folder.
const HOSTILE_HEALTHY: [&str; 6] = [
    "with space.pdf",
    "ünïcødé/ø",
    "a+b%20c",
    "a..b",
    "ctl\u{1}x",
    "a-b",
];

#[tokio::test]
async fn a_folder_is_swept_like_a_bucket_dry_run_then_apply() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    db.doc("stale", "pending", 2 * HOUR).await;
    db.doc("lost", "pending", 5 * MINUTE).await;
    folder.put("docs/lost", "lost body");
    db.doc("new file ü+1.pdf", "pending", 5 * MINUTE).await;
    folder.put("docs/new file ü+1.pdf", "lost too");
    db.doc("2026/05/nested", "pending", 5 * MINUTE).await;
    folder.put("docs/2026/05/nested", "in a folder");
    db.doc("gone", "uploaded", 3 * HOUR).await;
    db.doc("young", "pending", MINUTE).await;
    for id in HOSTILE_HEALTHY {
        db.doc(id, "processed", 3 * HOUR).await;
        folder.put(&format!("docs/{id}"), id);
    }
    // `a/b` lists after `a-b`: a walk in per-folder name order would break the merge here.
    db.doc("a/b", "processed", 3 * HOUR).await;
    folder.put("docs/a/b", "a/b");
    folder.put("docs/orphan a..b", "nobody's");
    folder.put("elsewhere/not-ours", "outside the prefix");
    std::fs::create_dir_all(folder.path().join("docs/empty/folder")).expect("empty folder");
    let reconcile = Reconcile::on_folder(&db, &folder)
        .set("storage.prefix", "docs/")
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "adopt");
    let expected = triples(&[
        ("stale_pending", "stale", "expire"),
        ("lost_notification", "lost", "adopt"),
        ("lost_notification", "new file ü+1.pdf", "adopt"),
        ("lost_notification", "2026/05/nested", "adopt"),
        ("missing_object", "gone", "mark_missing"),
        ("orphan_object", "orphan a..b", "adopt"),
    ]);
    let rows_before = db.snapshot().await;
    let files_before = folder.snapshot();

    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(audit.findings(), expected);
    let report = audit.json();
    assert_eq!(
        report["bucket"],
        folder.path().to_str().expect("utf-8 path")
    );
    assert_eq!(report["objects_listed"], 11);
    assert_eq!(report["counts"]["in_grace"], 1);
    assert_eq!(
        db.snapshot().await,
        rows_before,
        "a dry run wrote to the table"
    );
    assert_eq!(
        folder.snapshot(),
        files_before,
        "a dry run wrote to the folder"
    );

    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(apply.findings(), expected);
    for (id, status) in [
        ("stale", "expired"),
        ("lost", "processed"),
        ("new file ü+1.pdf", "processed"),
        ("2026/05/nested", "processed"),
        ("gone", "missing"),
        ("orphan a..b", "processed"),
        ("young", "pending"),
        ("a/b", "processed"),
    ] {
        assert_eq!(
            db.status(id).await.as_deref(),
            Some(status),
            "status of {id}"
        );
    }
    assert_eq!(folder.snapshot(), files_before, "adoption touches no file");
    let adopted: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT size, etag FROM reconciler.objects WHERE key = 'docs/lost'")
            .fetch_all(&db.pool)
            .await
            .expect("read adopted objects");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0].0, "lost body".len() as i64);
    assert!(adopted[0].1.is_some(), "the folder's ETag is noted");

    let again = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.findings(), vec![], "{}", again.stdout);
}

#[tokio::test]
async fn each_orphan_action_does_what_it_says_in_a_folder() {
    for action in ["report", "adopt", "quarantine", "delete"] {
        let db = TestDb::with_docs(None).await;
        let folder = TestFolder::new();
        db.doc("kept", "processed", HOUR).await;
        folder.put("docs/kept", "kept");
        folder.put("docs/sub/ünï orphan+1%.pdf", "nobody's");
        folder.put("elsewhere/not-ours", "outside the prefix");
        let reconcile = Reconcile::on_folder(&db, &folder)
            .set("storage.prefix", "docs/")
            .set("sweep.orphan_grace", "0s")
            .set("sweep.orphan_action", action);

        let run = reconcile.run(&["--format", "json"]).await;
        assert_eq!(run.code, 0, "{action}: {}", run.stderr);
        assert_eq!(
            run.findings(),
            triples(&[("orphan_object", "sub/ünï orphan+1%.pdf", action)]),
            "{action}"
        );
        let files = folder.snapshot();
        let keys: Vec<&str> = files.keys().map(String::as_str).collect();
        let expected: &[&str] = match action {
            "report" | "adopt" => &[
                "docs/kept",
                "docs/sub/ünï orphan+1%.pdf",
                "elsewhere/not-ours",
            ],
            "quarantine" => &["docs/kept", "elsewhere/not-ours"],
            _ => &["docs/kept", "elsewhere/not-ours"],
        };
        // A quarantined copy is named by its key, then its time and ETag (one per version).
        let quarantined: Vec<(&String, &String)> = files
            .iter()
            .filter(|(k, _)| k.starts_with("quarantine/docs/sub/ünï orphan+1%.pdf/"))
            .collect();
        let kept: Vec<&str> = keys
            .into_iter()
            .filter(|k| !k.starts_with("quarantine/"))
            .collect();
        assert_eq!(kept, expected, "{action}");
        if action == "quarantine" {
            assert_eq!(quarantined.len(), 1, "{files:?}");
            assert_eq!(quarantined[0].1, "nobody's");
        } else {
            assert!(quarantined.is_empty(), "{action}: {files:?}");
        }
        let record = db.status("sub/ünï orphan+1%.pdf").await;
        assert_eq!(
            record,
            (action == "adopt").then(|| "processed".to_owned()),
            "{action}"
        );

        let again = reconcile.run(&["--dry-run", "--format", "json"]).await;
        let leftover = match action {
            "report" => triples(&[("orphan_object", "sub/ünï orphan+1%.pdf", "report")]),
            _ => vec![],
        };
        assert_eq!(again.findings(), leftover, "{action}: {}", again.stdout);
    }
}

#[tokio::test]
async fn a_second_orphan_at_a_quarantined_key_never_replaces_the_first() {
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    let reconcile = Reconcile::on_folder(&db, &folder)
        .set("storage.prefix", "docs/")
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "quarantine");
    folder.put("docs/a", "v1");
    let first = reconcile.run(&["--format", "json"]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.json()["findings"][0]["result"], "applied");

    folder.put("docs/a", "v2");
    let second = reconcile.run(&["--format", "json"]).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.json()["findings"][0]["result"], "applied");
    let files = folder.snapshot();
    let mut bodies: Vec<&str> = files
        .iter()
        .filter(|(k, _)| k.starts_with("quarantine/docs/a/"))
        .map(|(_, body)| body.as_str())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["v1", "v2"], "both versions kept: {files:?}");
    assert_eq!(files.len(), 2, "no stray file: {files:?}");
}

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
