//! `reconcile explain`: one doc across table, bucket and audit log.

use crate::helpers::*;

#[tokio::test]
async fn explain_shows_record_object_audit_trail_and_the_decision_now() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("stale", "pending", 2 * HOUR).await;
    db.doc("fine", "processed", HOUR).await;
    bucket.put("docs/fine", "hello").await;
    let reconcile = Reconcile::new(&db, &bucket).set("storage.prefix", "docs/");

    let before = reconcile
        .run(&["explain", "stale", "--format", "json"])
        .await;
    assert_eq!(before.code, 0, "{}", before.stderr);
    let e = before.json();
    assert_eq!(e["id"], "stale");
    assert_eq!(e["key"], "docs/stale");
    assert_eq!(e["record"]["raw_status"], "pending");
    assert!(e["object"].is_null());
    assert!(e["audit_trail"].is_null(), "no reconciler tables yet");
    assert_eq!(e["decision"]["finding"], "stale_pending");
    assert_eq!(e["decision"]["action"], "expire");

    let fine = reconcile
        .run(&["explain", "docs/fine", "--format", "json"])
        .await;
    let e = fine.json();
    assert_eq!(e["id"], "fine", "a key with the prefix finds its doc");
    assert_eq!(e["object"]["size"], 5);
    assert!(e["decision"]["finding"].is_null());

    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    let after = reconcile
        .run(&["explain", "stale", "--format", "json"])
        .await;
    let e = after.json();
    assert_eq!(e["record"]["raw_status"], "expired");
    let trail = e["audit_trail"].as_array().expect("an audit trail now");
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0]["action"], "expire");
    assert_eq!(trail[0]["old_status"], "pending");
    assert_eq!(trail[0]["new_status"], "expired");
    assert!(e["decision"]["finding"].is_null());

    let table = reconcile
        .run(&["explain", "stale", "--format", "table"])
        .await;
    assert!(
        table.stdout.contains("expire pending -> expired"),
        "{}",
        table.stdout
    );
}

#[tokio::test]
async fn explain_of_an_id_that_matches_nothing_exits_2_naming_it_instead_of_calling_it_consistent()
{
    let db = TestDb::with_docs(None).await;
    let folder = TestFolder::new();
    let reconcile = Reconcile::on_folder(&db, &folder).set("storage.prefix", "docs/");
    for format in ["json", "table"] {
        let nothing = reconcile
            .run(&["explain", "never-heard-of", "--format", format])
            .await;
        assert_eq!(nothing.code, 2, "{format}: {}", nothing.stderr);
        assert!(nothing.stdout.is_empty(), "{format}: {}", nothing.stdout);
        let line = nothing.stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        for part in [
            "\"never-heard-of\"",
            "docs/never-heard-of",
            "no record",
            "no object",
        ] {
            assert!(line.contains(part), "{part:?} missing from: {line}");
        }
    }
}

#[tokio::test]
async fn sweep_flags_before_a_subcommand_are_refused_not_ignored() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let run = Reconcile::new(&db, &bucket)
        .run(&["--dry-run", "explain", "x"])
        .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--dry-run"), "{}", run.stderr);
}
