//! The sweep through the binary on Postgres and S3: what only that pair has (a role that may only
//! SELECT, a locale collation, an S3 listing cut mid-way, the table report's `s3://`). The
//! scenarios every pair shares are in `scenarios.rs`.

use crate::helpers::*;

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

/// `fine` processed docs with their objects (`fine-00`, ...), and `stale` pending records whose
/// upload never came (`stale-0`, ...: a sweep expires them).
pub async fn listing_world(db: &TestDb, bucket: &TestBucket, fine: usize, stale: usize) {
    for i in 0..fine {
        let id = format!("fine-{i:02}");
        db.doc(&id, "processed", HOUR).await;
        bucket.put(&id, "x").await;
    }
    for i in 0..stale {
        db.doc(&format!("stale-{i}"), "pending", 2 * HOUR).await;
    }
}

/// Every listing request after the first `pages`, in `fault`'s way.
pub fn listing_after(pages: usize, fault: Fault) -> Rule {
    Rule {
        fault,
        only: Some("list-type=2".into()),
        after: pages,
    }
}

/// The ways a listing breaks for good: cut on the wire, or a 500 on every try the SDK makes.
pub const LISTING_BREAKS: [Fault; 2] = [
    Fault::Reset,
    Fault::Answer(HttpError::InternalError, Pick::All),
];

/// `listing_world(8, 3)`, listed in pages of two (four requests or more) through a proxy that
/// treats every page after the first `pages` in `fault`'s way.
pub async fn listed_through(
    pages: usize,
    fault: Fault,
) -> (TestDb, TestBucket, FaultProxy, Reconcile) {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    listing_world(&db, &bucket, 8, 3).await;
    let proxy = FaultProxy::http(&bucket.endpoint).await;
    proxy.set(listing_after(pages, fault));
    let mut reconcile = Reconcile::new(&db, &bucket).set("storage.list_page_size", "2");
    reconcile.endpoint = proxy.endpoint.clone();
    (db, bucket, proxy, reconcile)
}

#[tokio::test]
async fn a_listing_that_fails_mid_sweep_aborts_it_and_nothing_is_applied() {
    for fault in LISTING_BREAKS {
        let (db, bucket, proxy, reconcile) = listed_through(2, fault).await;
        let before = db.snapshot().await;

        let run = reconcile.run(&["--format", "json"]).await;
        assert_eq!(
            run.code, 1,
            "{fault:?}: stdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        assert!(proxy.injected()[fault.label()] >= 1, "{fault:?}");
        let expected = format!("listing s3://{}/", bucket.name);
        assert!(run.stderr.contains(&expected), "{fault:?}: {}", run.stderr);
        assert!(
            run.stdout.is_empty(),
            "{fault:?}: a failed listing still printed a report: {}",
            run.stdout
        );
        assert_eq!(
            db.snapshot().await,
            before,
            "{fault:?}: rows changed after a failed listing"
        );
        // Not even the reconciler's schema: the scan writes nothing, and it never finished.
        assert!(!db.reconciler_schema_exists().await, "{fault:?}");

        // The same sweep through moto directly: the stale docs were real, and are fixed.
        let direct = Reconcile::new(&db, &bucket).set("storage.list_page_size", "2");
        let run = direct.run(&["--format", "json"]).await;
        assert_eq!(run.code, 0, "{fault:?}: {}", run.stderr);
        assert_eq!(run.json()["actions"]["applied"], 3, "{fault:?}");
    }
}

#[tokio::test]
async fn a_split_listing_whose_later_range_fails_aborts_the_sweep_and_nothing_is_applied() {
    // Pages of two: the sweep cuts the listing at every fourth id of the table (fine-03, fine-07)
    // and lists the three ranges at once; the two after the first start after a key. Only those
    // fail: the first range lists fine, and its keys must not be taken for the whole bucket.
    for fault in LISTING_BREAKS {
        let db = TestDb::with_docs(None).await;
        let bucket = TestBucket::new().await;
        listing_world(&db, &bucket, 8, 3).await;
        let before = db.snapshot().await;
        let proxy = FaultProxy::http(&bucket.endpoint).await;
        proxy.set(Rule {
            fault,
            only: Some("start-after=".into()),
            after: 0,
        });
        let mut reconcile = Reconcile::new(&db, &bucket).set("storage.list_page_size", "2");
        reconcile.endpoint = proxy.endpoint.clone();

        let run = reconcile.run(&["--format", "json"]).await;
        assert_eq!(run.code, 1, "{fault:?}: {}\n{}", run.stdout, run.stderr);
        assert!(proxy.injected()[fault.label()] >= 1, "{fault:?}");
        let expected = format!("listing s3://{}/", bucket.name);
        assert!(run.stderr.contains(&expected), "{fault:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{fault:?}: {}", run.stdout);
        assert_eq!(db.snapshot().await, before, "{fault:?}");
        assert!(!db.reconciler_schema_exists().await, "{fault:?}");

        // Split the same way without the fault: every key once, the stale docs expired.
        proxy.set(Fault::Pass);
        let run = reconcile.run(&["--format", "json"]).await;
        assert_eq!(run.code, 0, "{fault:?}: {}", run.stderr);
        let report = run.json();
        assert_eq!(report["objects_listed"], 8, "{report}");
        assert_eq!(report["records_scanned"], 11, "{report}");
        assert_eq!(report["actions"]["applied"], 3, "{report}");
        for i in 0..3 {
            assert_eq!(
                db.status(&format!("stale-{i}")).await.as_deref(),
                Some("expired")
            );
        }
    }
}

#[tokio::test]
async fn a_listing_slowed_down_mid_way_is_retried_and_read_whole() {
    // From the third page on, each page's first try is answered 503 SlowDown; its retry passes
    // (the key ranges listed at once ask for several pages at the same time).
    let slow_down = Fault::Answer(HttpError::SlowDown, Pick::FirstTry);
    let (db, _bucket, proxy, reconcile) = listed_through(2, slow_down).await;

    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        proxy.injected()["slowdown"] >= 2,
        "one per page after the second"
    );
    let report = run.json();
    assert_eq!(report["objects_listed"], 8, "{report}");
    assert_eq!(report["records_scanned"], 11, "{report}");
    // Complete: no object read as missing, every stale doc found and expired.
    assert_eq!(
        run.findings(),
        triples(&[
            ("stale_pending", "stale-0", "expire"),
            ("stale_pending", "stale-1", "expire"),
            ("stale_pending", "stale-2", "expire"),
        ])
    );
    assert_eq!(report["actions"]["applied"], 3);
    for i in 0..8 {
        let id = format!("fine-{i:02}");
        assert_eq!(db.status(&id).await.as_deref(), Some("processed"), "{id}");
    }
}
