//! What only MySQL/MariaDB has, through the binary: a user that may only read the app's table
//! audits (the reconciler's database does not exist, and the dry run does not make it), and the
//! same user cannot apply, in one line. (The Catalog conformance suite, the scenario suite's
//! MariaDB pair and `frameworks.rs` run the rest on MariaDB.)

use crate::helpers::*;

#[tokio::test]
async fn dry_run_works_with_a_user_that_can_only_select() {
    let db = TestMaria::with_docs().await;
    let bucket = TestBucket::new().await;
    db.doc("stale", "pending", 2 * HOUR).await;
    db.doc("lost", "pending", HOUR).await;
    bucket.put("lost", "x").await;
    let reconcile = Reconcile {
        database_url: db.read_only_url().await,
        bucket: bucket.name.clone(),
        endpoint: bucket.endpoint.clone(),
        env: Vec::new(),
    };

    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(
        audit.findings(),
        triples(&[
            ("lost_notification", "lost", "adopt"),
            ("stale_pending", "stale", "expire")
        ])
    );
    assert!(
        !db.reconciler_database_exists().await,
        "the dry run made it"
    );
    // The same user cannot apply: creating the reconciler's database is refused, in one line.
    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 1, "{}", apply.stderr);
    assert!(apply.stderr.contains("denied"), "{}", apply.stderr);
    assert_eq!(apply.stderr.trim().lines().count(), 1, "{}", apply.stderr);
    assert_eq!(db.status("stale").await.as_deref(), Some("pending"));
}
