//! The executor against the world moving under it: rows and objects that change between the
//! sweep's read and its write.

use crate::helpers::*;
use std::collections::BTreeMap;
use upload_reconciler::bucket::s3::S3Bucket;
use upload_reconciler::catalog::Catalog;
use upload_reconciler::catalog::sql::SqlCatalog;
use upload_reconciler::config::Config;
use upload_reconciler::execute::{Executor, Mode};
use upload_reconciler::model::{Finding, Outcome};
use upload_reconciler::rules::Rules;
use upload_reconciler::sweep::{Plan, Quiet, Sweep};

struct World {
    db: TestDb,
    bucket: TestBucket,
    config: Config,
    rules: Rules,
    catalog: SqlCatalog,
    s3: S3Bucket,
}

async fn world(sweep_settings: &str) -> World {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let config = Config::from_toml(&format!(
        "[database]\nurl = \"{}\"\n[storage]\nbucket = \"{}\"\n[sweep]\n{sweep_settings}",
        db.url(),
        bucket.name
    ))
    .expect("valid config");
    let catalog = SqlCatalog::connect(
        &config.database,
        upload_reconciler::adapters::scope(&config),
    )
    .await
    .expect("connect");
    catalog.migrate().await.expect("migrate");
    let s3 = S3Bucket::with_client(s3_client(&bucket.endpoint), &config.storage);
    World {
        db,
        bucket,
        rules: config.rules(),
        config,
        catalog,
        s3,
    }
}

impl World {
    fn sweep(&self) -> Sweep<'_> {
        Sweep {
            catalog: &self.catalog,
            bucket: &self.s3,
            prefix: &self.config.storage.prefix,
            rules: &self.rules,
            metrics: None,
        }
    }

    fn executor(&self) -> Executor<'_> {
        Executor {
            mode: Mode::Apply,
            after_upload: self.rules.after_upload,
            catalog: &self.catalog,
            bucket: &self.s3,
            quarantine: &self.rules.quarantine,
            sweep_id: None,
            restore_window: self.rules.policy.restore_window,
        }
    }

    async fn plan(&self) -> Plan {
        self.sweep()
            .plan(chrono::Utc::now(), &mut Quiet)
            .await
            .expect("plan")
    }
}

fn findings(plan: &mut Plan) -> BTreeMap<String, Finding> {
    let mut out = BTreeMap::new();
    while let Some(f) = plan.next_finding().expect("read spool") {
        out.insert(f.id.clone(), f);
    }
    out
}

fn skipped_because(outcome: &Outcome, words: &str) -> bool {
    matches!(outcome, Outcome::Skipped(reason) if reason.contains(words))
}

#[tokio::test]
async fn a_row_or_object_changed_since_the_read_is_skipped_not_clobbered() {
    skipped_not_clobbered(false).await;
}

#[tokio::test]
async fn a_row_or_object_changed_since_the_read_is_skipped_not_clobbered_in_a_batch() {
    skipped_not_clobbered(true).await;
}

/// The findings executed one by one, or all at once as a sweep does (the status-only ones in one
/// batch transaction, the deletes beside it).
async fn execute_all(
    executor: &Executor<'_>,
    found: &BTreeMap<String, Finding>,
    concurrently: bool,
) -> BTreeMap<String, Outcome> {
    let mut outcomes = BTreeMap::new();
    if concurrently {
        let findings: Vec<Finding> = found.values().cloned().collect();
        let (_stop, stop) = tokio::sync::watch::channel(false);
        let done = executor.execute_many(&findings, 3, &stop).await;
        for (finding, outcome) in findings.iter().zip(done) {
            outcomes.insert(finding.id.clone(), outcome.expect("attempted"));
        }
    } else {
        for (id, finding) in found {
            outcomes.insert(id.clone(), executor.execute(finding).await);
        }
    }
    outcomes
}

async fn skipped_not_clobbered(concurrently: bool) {
    let w =
        world("orphan_grace = \"0s\"\norphan_action = \"delete\"\nallow_bucket_root = true").await;
    w.db.doc("paid-up", "pending", 2 * HOUR).await; // the API marks it uploaded meanwhile
    w.db.doc("arrives", "pending", 2 * HOUR).await; // its PUT lands meanwhile
    w.db.doc("deleted", "uploaded", HOUR).await; // the API deletes the row meanwhile
    w.db.doc("restored", "uploaded", HOUR).await; // the object comes back meanwhile
    w.db.doc("untouched", "pending", 2 * HOUR).await; // nothing happens: applied
    w.bucket.put("claimed", "orphan").await; // the API creates its record meanwhile
    w.bucket.put("rewritten", "orphan").await; // overwritten by a new upload meanwhile

    let mut plan = w.plan().await;
    let found = findings(&mut plan);
    assert_eq!(found.len(), 7, "{:?}", found.keys());

    w.db.set_status("paid-up", "uploaded").await;
    w.bucket.put("arrives", "late bytes").await;
    sqlx::query("DELETE FROM docs WHERE id = 'deleted'")
        .execute(&w.db.pool)
        .await
        .expect("delete row");
    w.bucket.put("restored", "back").await;
    w.db.doc("claimed", "uploaded", MINUTE).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // a new Last-Modified second
    w.bucket.put("rewritten", "someone's new upload").await;

    let executor = w.executor();
    let outcomes = execute_all(&executor, &found, concurrently).await;
    assert!(
        skipped_because(&outcomes["paid-up"], "changed"),
        "{outcomes:?}"
    );
    assert!(
        skipped_because(&outcomes["arrives"], "arrived"),
        "{outcomes:?}"
    );
    assert!(
        skipped_because(&outcomes["deleted"], "deleted"),
        "{outcomes:?}"
    );
    assert!(
        skipped_because(&outcomes["restored"], "back"),
        "{outcomes:?}"
    );
    assert!(
        skipped_because(&outcomes["claimed"], "record"),
        "{outcomes:?}"
    );
    assert!(
        skipped_because(&outcomes["rewritten"], "overwritten"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes["untouched"], Outcome::Applied);

    assert_eq!(w.db.status("paid-up").await.as_deref(), Some("uploaded"));
    assert_eq!(w.db.status("arrives").await.as_deref(), Some("pending"));
    assert_eq!(w.db.status("restored").await.as_deref(), Some("uploaded"));
    assert_eq!(w.db.status("untouched").await.as_deref(), Some("expired"));
    assert!(w.bucket.exists("claimed").await && w.bucket.exists("rewritten").await);
    let audit = w.db.audit().await;
    assert_eq!(
        audit.len(),
        1,
        "only the applied action is audited: {audit:?}"
    );
    assert_eq!(audit[0].0, "untouched");
}

#[tokio::test]
async fn a_write_waits_for_the_row_lock_and_then_sees_the_new_status() {
    waits_for_the_row_lock(false).await;
}

#[tokio::test]
async fn a_batch_waits_for_the_row_lock_and_then_sees_the_new_status() {
    waits_for_the_row_lock(true).await;
}

async fn waits_for_the_row_lock(concurrently: bool) {
    let w = world("").await;
    w.db.doc("beside", "pending", 2 * HOUR).await;
    w.db.doc("contended", "pending", 2 * HOUR).await;
    let mut plan = w.plan().await;
    let found = findings(&mut plan);

    // The API holds the row mid-transaction, changing it, when the executor arrives.
    let mut api = w.db.pool.begin().await.expect("begin");
    sqlx::query("UPDATE docs SET status = 'uploaded' WHERE id = 'contended'")
        .execute(&mut *api)
        .await
        .expect("update in the API's transaction");
    let executor = w.executor();
    let (outcome, _) = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        tokio::join!(execute_all(&executor, &found, concurrently), async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            api.commit().await.expect("commit");
        })
    })
    .await
    .expect("executor and API finished (likely deadlocked)");

    assert!(
        skipped_because(&outcome["contended"], "changed"),
        "{outcome:?}"
    );
    assert_eq!(w.db.status("contended").await.as_deref(), Some("uploaded"));
    // The other row of the batch went through, audited alone.
    assert_eq!(outcome["beside"], Outcome::Applied);
    assert_eq!(w.db.status("beside").await.as_deref(), Some("expired"));
    let audited: Vec<String> = w.db.audit().await.into_iter().map(|a| a.0).collect();
    assert_eq!(audited, ["beside"]);
}

/// Issue 18 item 3, the executor's part: an adoption re-checks the object, and the object must
/// be the one the listing showed. Here it grows between the listing and the re-check (a file
/// still being written, an upload overwritten): it used to be adopted with the size it had then
/// no longer had; now it is skipped, and the next sweep adopts what is there.
#[tokio::test]
async fn an_object_that_changed_since_the_listing_is_not_adopted() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("growing", "pending", MINUTE).await;
    bucket.put("growing", "1234").await;
    // Right before the executor's HEAD of the object reaches the bucket, the object grows.
    let grown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = std::sync::Arc::new(TestBucket {
        name: bucket.name.clone(),
        client: bucket.client.clone(),
        endpoint: bucket.endpoint.clone(),
    });
    let key_path = format!("/{}/growing", bucket.name);
    let grows = grown.clone();
    let proxy = FaultProxy::rewriting(
        &bucket.endpoint,
        move |request| {
            let (writer, grows) = (writer.clone(), grows.clone());
            let head_of_it = request.method == "HEAD" && request.path() == key_path;
            Box::pin(async move {
                if head_of_it && !grows.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    writer.put("growing", "12345678").await;
                }
            })
        },
        |_, body| body,
    )
    .await;
    let mut reconcile = Reconcile::new(&db, &bucket);
    reconcile.endpoint = proxy.endpoint.clone();

    let first = reconcile.run(&["--format", "json"]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(
        grown.load(std::sync::atomic::Ordering::SeqCst),
        "re-checked"
    );
    assert_eq!(
        first.findings(),
        triples(&[("lost_notification", "growing", "adopt")])
    );
    assert_eq!(
        db.status("growing").await.as_deref(),
        Some("pending"),
        "adopted while it changed: {}",
        first.stdout
    );

    let second = reconcile.run(&["--format", "json"]).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(db.status("growing").await.as_deref(), Some("processed"));
    let size: i64 = sqlx::query_scalar("SELECT size FROM reconciler.objects WHERE key = 'growing'")
        .fetch_one(&db.pool)
        .await
        .expect("the noted object");
    assert_eq!(size, 8, "adopted with the size it has");
}
