//! `reconcile demo`: the first run of a new user, with nothing but the binary (no server, no
//! AWS), on the embedded default (SQLite and a local folder).

use serde_json::Value;
use sqlx::Connection;
use std::path::Path;

/// The binary with an empty environment: the demo must need nothing from it.
async fn reconcile(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(crate::helpers::reconcile_binary())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run reconcile")
}

/// The counts of one table report: `(kind, n)` in the order printed.
fn counts(section: &str) -> Vec<(String, u64)> {
    section
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (kind, n, rest) = (words.next()?, words.next()?, words.next());
            if rest.is_some() || !kind.contains('_') {
                return None;
            }
            Some((kind.to_owned(), n.parse().ok()?))
        })
        .collect()
}

fn expected(drift: u64, in_grace: u64) -> Vec<(String, u64)> {
    [
        ("stale_pending", drift),
        ("lost_notification", drift),
        ("late_upload", drift),
        ("orphan_object", drift),
        ("missing_object", drift),
        ("stuck_processing", 0),
        ("processing_exhausted", 0),
        ("abandoned_multipart", 0),
        ("object_returned", 0),
        ("in_grace", in_grace),
    ]
    .map(|(k, n)| (k.to_owned(), n))
    .to_vec()
}

async fn status(db: &Path, id: &str) -> Option<String> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open the demo database");
    sqlx::query_scalar("SELECT status FROM docs WHERE id = ?1")
        .bind(id)
        .fetch_optional(&mut conn)
        .await
        .expect("read status")
}

#[tokio::test]
async fn the_demo_audits_repairs_and_audits_again_with_nothing_but_the_binary() {
    let root = tempfile::tempdir().expect("temp dir");
    let sandbox = root.path().join("sandbox");
    let sandbox_arg = sandbox.to_str().expect("utf-8 path");
    let out = reconcile(&["demo", "--dir", sandbox_arg]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    let sections: Vec<&str> = stdout.split("\n== ").skip(1).collect();
    assert_eq!(sections.len(), 3, "{stdout}");
    assert_eq!(counts(sections[0]), expected(1, 2), "the audit: {stdout}");
    assert!(sections[0].contains("0 applied, 5 dry run"), "{stdout}");
    assert_eq!(counts(sections[1]), expected(1, 2), "the apply: {stdout}");
    assert!(sections[1].contains("5 applied"), "{stdout}");
    assert_eq!(
        counts(sections[2]),
        expected(0, 2),
        "the second pass: {stdout}"
    );
    assert!(stdout.contains(&format!("{sandbox_arg}/reconcile.toml --dry-run")));

    // A legend: what each kind means, and where the orphan went.
    let legend = stdout
        .split("What the kinds mean")
        .nth(1)
        .unwrap_or_else(|| panic!("no legend: {stdout}"));
    for (kind, _) in expected(0, 0) {
        assert!(
            legend.lines().any(|l| l.trim_start().starts_with(&kind)),
            "{kind} not explained: {legend}"
        );
    }
    let quarantined = legend
        .lines()
        .find_map(|l| l.trim().strip_prefix("The orphan was quarantined to "))
        .unwrap_or_else(|| panic!("no word of the quarantine: {legend}"));
    assert!(
        Path::new(quarantined.trim_end_matches('.')).is_file(),
        "{quarantined} is not the quarantined file"
    );

    // Every command under "Try:" runs as printed, in a shell with `reconcile` not on PATH.
    let tries: Vec<&str> = stdout
        .split("Try:")
        .nth(1)
        .unwrap_or_else(|| panic!("no Try: {stdout}"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(tries.len() >= 2, "{stdout}");
    for line in tries {
        let run = tokio::process::Command::new("sh")
            .args(["-c", line])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .await
            .expect("run sh");
        assert!(
            run.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }

    // The sandbox is left for the user, and the repairs are really in it.
    let db = sandbox.join("app.db");
    for (id, status_now) in [
        ("invoice-2041.pdf", "expired"),
        ("contract-7.pdf", "processed"),
        ("scan 0012.png", "processed"),
        ("avatar-ünï.jpg", "missing"),
        ("report-q3.pdf", "processed"),
        ("slides.key", "pending"),
        ("draft.docx", "pending"),
    ] {
        assert_eq!(status(&db, id).await.as_deref(), Some(status_now), "{id}");
    }
    assert!(!sandbox.join("uploads/docs/tmp/unclaimed.bin").exists());
    let quarantined = std::fs::read_dir(sandbox.join("uploads/quarantine/docs/tmp/unclaimed.bin"))
        .expect("the orphan's quarantine folder")
        .count();
    assert_eq!(quarantined, 1);

    // The command the demo suggests works on the sandbox as it says.
    let config = sandbox.join("reconcile.toml");
    let again = reconcile(&[
        "--config",
        config.to_str().expect("utf-8 path"),
        "--dry-run",
        "--format",
        "json",
    ])
    .await;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let report: Value = serde_json::from_slice(&again.stdout).expect("json report");
    assert_eq!(report["findings"], Value::Array(vec![]), "{report}");
    assert_eq!(report["counts"]["in_grace"], 2, "{report}");
}

#[tokio::test]
async fn the_demo_never_builds_its_sandbox_over_a_folder_that_holds_anything() {
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::write(root.path().join("precious.txt"), "mine").expect("write");
    let out = reconcile(&["demo", "--dir", root.path().to_str().expect("utf-8")]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert!(
        stderr.contains(root.path().to_str().expect("utf-8")),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(root.path())
        .expect("read")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["precious.txt"]);
}
