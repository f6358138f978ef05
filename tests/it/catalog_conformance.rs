//! One set of tests for the `Catalog` trait, run against every implementation: Postgres, SQLite,
//! MariaDB (its table in the server's default, case-insensitive collation), and the in-memory
//! double the convergence property runs on (passing here is what entitles it to stand in for the
//! databases). Each case is a function over a `Backend`; `conformance!` makes one
//! test per case and backend (`catalog_conformance::<case>::postgres`, `...::sqlite`,
//! `...::mariadb`, `...::memory`).

use crate::helpers::*;
use crate::memory::{MemoryDb, Schedule};
use chrono::{DateTime, SubsecRound, Utc};
use futures::TryStreamExt;
use std::sync::Arc;
use std::time::Duration;
use upload_reconciler::catalog::sql::SqlCatalog;
use upload_reconciler::catalog::{
    AuditEntry, BucketChange, Catalog, Intent, KeyEvent, Retention, Scope,
};
use upload_reconciler::config::DatabaseConfig;
use upload_reconciler::model::{JobState, ObjectMeta, Status};
use upload_reconciler::processing::SystemClock;

/// A database under test, and a way to write and read its app table from outside the trait.
enum Backend {
    Postgres(TestDb),
    Sqlite(TestSqlite),
    Maria(TestMaria),
    Memory(MemoryDb),
}

const HOUR: Duration = Duration::from_secs(3600);

impl Backend {
    async fn postgres() -> Backend {
        Backend::Postgres(TestDb::with_docs(None).await)
    }

    async fn sqlite() -> Backend {
        Backend::Sqlite(TestSqlite::with_docs().await)
    }

    async fn mariadb() -> Backend {
        Backend::Maria(TestMaria::with_docs().await)
    }

    fn memory() -> Backend {
        Backend::Memory(MemoryDb::new(
            Arc::new(SystemClock),
            Arc::new(Schedule::default()),
        ))
    }

    /// The catalog of the deployment at `bucket` and `prefix` on this database's `docs`.
    async fn catalog_of(&self, bucket: &str, prefix: &str) -> Box<dyn Catalog> {
        let scope = Scope {
            table: "\"docs\"".into(),
            bucket: bucket.into(),
            prefix: prefix.into(),
        };
        match self {
            Backend::Postgres(db) => {
                let config = DatabaseConfig {
                    url: Some(db.url()),
                    ..DatabaseConfig::default()
                };
                Box::new(SqlCatalog::connect(&config, scope).await.expect("connect"))
            }
            Backend::Sqlite(db) => {
                let config = DatabaseConfig {
                    url: Some(db.url()),
                    ..DatabaseConfig::default()
                };
                Box::new(SqlCatalog::connect(&config, scope).await.expect("connect"))
            }
            Backend::Maria(db) => {
                let config = DatabaseConfig {
                    url: Some(db.url()),
                    ..DatabaseConfig::default()
                };
                Box::new(SqlCatalog::connect(&config, scope).await.expect("connect"))
            }
            Backend::Memory(db) => Box::new(db.catalog(&scope)),
        }
    }

    async fn catalog(&self) -> Box<dyn Catalog> {
        self.catalog_of("uploads", "docs/").await
    }

    async fn doc(&self, id: &str, status: &str, age: Duration) {
        match self {
            Backend::Postgres(db) => db.doc(id, status, age).await,
            Backend::Sqlite(db) => db.doc(id, status, age).await,
            Backend::Maria(db) => db.doc(id, status, age).await,
            Backend::Memory(db) => {
                let created_at = Utc::now() - chrono::Duration::from_std(age).expect("small age");
                assert!(db.insert(id, status, created_at), "{id} is new");
            }
        }
    }

    /// Whether the app table's id column compares in a case-insensitive collation.
    fn folds_case(&self) -> bool {
        matches!(self, Backend::Maria(_))
    }

    async fn status(&self, id: &str) -> Option<String> {
        match self {
            Backend::Postgres(db) => db.status(id).await,
            Backend::Sqlite(db) => db.status(id).await,
            Backend::Maria(db) => db.status(id).await,
            Backend::Memory(db) => db.status(id),
        }
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn postgres() {
                super::$case(super::Backend::postgres().await).await
            }

            #[tokio::test]
            async fn sqlite() {
                super::$case(super::Backend::sqlite().await).await
            }

            #[tokio::test]
            async fn mariadb() {
                super::$case(super::Backend::mariadb().await).await
            }

            #[tokio::test]
            async fn memory() {
                super::$case(super::Backend::memory()).await
            }
        }
    )*};
}

conformance!(
    records_stream_in_utf8_byte_order,
    lock_set_and_create_change_the_app_table_only_on_commit,
    a_second_writer_waits_for_the_first_and_sees_its_commit,
    audit_trail_round_trips,
    free_text_reaches_the_tables_redacted,
    job_claims_count_attempts_and_respect_leases,
    key_event_state_keeps_the_newest_sequencer,
    sweep_lock_excludes_a_second_holder_until_released,
    scopes_on_one_database_do_not_see_each_others_rows,
    prune_deletes_only_what_is_old_enough,
    intents_stay_until_a_committed_clear_and_only_in_their_scope,
);

/// Times as both databases keep them (microseconds).
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

async fn records_stream_in_utf8_byte_order(backend: Backend) {
    // Mixed case, `-` (0x2D) `.` (0x2E) `/` (0x2F), digits, and multi-byte UTF-8: a locale's
    // collation or NOCASE would order these differently.
    let ids: Vec<&str> = [
        "a/b", "B", "a", "a-b", "a_b", "é", "z", "a0", "Z", "~", "a.b", "ä/x", "日本",
    ]
    .into_iter()
    // A unique column in a case-insensitive collation (MariaDB's default) cannot hold both.
    .filter(|id| !(backend.folds_case() && *id == "Z"))
    .collect();
    for id in ids.iter().copied() {
        backend.doc(id, "pending", HOUR).await;
    }
    let catalog = backend.catalog().await;
    for catalog_state in ["before migrating", "after migrating"] {
        let read: Vec<String> = catalog
            .records()
            .map_ok(|r| r.id)
            .try_collect()
            .await
            .expect("records");
        let mut expected: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(read, expected, "{catalog_state}");
        catalog.migrate().await.expect("migrate");
    }
}

async fn lock_set_and_create_change_the_app_table_only_on_commit(backend: Backend) {
    backend.doc("a", "pending", HOUR).await;
    let catalog = backend.catalog().await;
    catalog.migrate().await.expect("migrate");

    let record = catalog
        .record("a")
        .await
        .expect("record")
        .expect("a exists");
    assert_eq!(record.status, Some(Status::Pending));
    let age = Utc::now() - record.created_at;
    assert!(
        age > chrono::Duration::minutes(59) && age < chrono::Duration::minutes(61),
        "created an hour ago, read as {}",
        record.created_at
    );
    assert_eq!(catalog.record("nope").await.expect("record"), None);

    let mut tx = catalog.begin().await.expect("begin");
    let locked = tx.lock_record("a").await.expect("lock").expect("a exists");
    assert_eq!(locked.raw_status, "pending");
    assert_eq!(tx.lock_record("nope").await.expect("lock"), None);
    tx.set_status("a", Status::Uploaded).await.expect("set");
    assert_eq!(
        tx.create_record("b", Status::Missing)
            .await
            .expect("create")
            .as_deref(),
        Some("b")
    );
    assert_eq!(
        tx.create_record("a", Status::Missing)
            .await
            .expect("create"),
        None
    );
    tx.commit().await.expect("commit");
    assert_eq!(backend.status("a").await.as_deref(), Some("uploaded"));
    assert_eq!(backend.status("b").await.as_deref(), Some("missing"));

    // Dropped without commit: rolled back.
    let mut tx = catalog.begin().await.expect("begin");
    tx.set_status("a", Status::Failed).await.expect("set");
    drop(tx);
    assert_eq!(backend.status("a").await.as_deref(), Some("uploaded"));
    assert_eq!(
        catalog.ids_with_status(Status::Missing).await.expect("ids"),
        vec!["b".to_owned()]
    );
}

/// A writer that locks what an open transaction holds (the record, a key's event state) waits
/// for its commit and then sees it: two event effects for one key, or the sweep and an event for
/// one doc, never both act on what they read before the other wrote.
async fn a_second_writer_waits_for_the_first_and_sees_its_commit(backend: Backend) {
    backend.doc("a", "pending", HOUR).await;
    let first = backend.catalog().await;
    first.migrate().await.expect("migrate");
    // Opened once the tables exist, as a replica's daemon opens it (it migrates at start too).
    let second = backend.catalog().await;

    let mut tx = first.begin().await.expect("begin");
    tx.lock_record("a").await.expect("lock").expect("a exists");
    tx.lock_key_events("docs/a").await.expect("lock");
    tx.set_status("a", Status::Uploaded).await.expect("set");
    tx.store_key_event(&KeyEvent {
        key: "docs/a".into(),
        sequencer: Some("0A".into()),
        kind: "created",
        time: None,
    })
    .await
    .expect("store");
    let commit_later = async {
        // Time for the second writer to run into the lock. Were it slower, it would read after
        // the commit and the test would still hold: this wait can only make it pass for the
        // wrong reason on a very slow machine, never fail for one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.commit().await.expect("commit");
    };
    let lock_meanwhile = async {
        let mut tx = second.begin().await.expect("begin");
        let record = tx.lock_record("a").await.expect("lock").expect("a exists");
        let sequencer = tx.lock_key_events("docs/a").await.expect("lock");
        (record.raw_status, sequencer)
    };
    let ((), seen) = tokio::join!(commit_later, lock_meanwhile);
    assert_eq!(
        seen,
        ("uploaded".to_owned(), Some("0A".to_owned())),
        "the second writer read what the first had not committed yet"
    );
}

async fn audit_trail_round_trips(backend: Backend) {
    let catalog = backend.catalog().await;
    assert_eq!(
        catalog.audit_trail("a", "docs/a").await.expect("trail"),
        None,
        "no trail before the reconciler's tables exist"
    );
    catalog.migrate().await.expect("migrate");
    let entry = |doc_id: &str, action: &str| AuditEntry {
        at: now(),
        sweep_id: Some(uuid::Uuid::new_v4()),
        finding: "stale_pending".into(),
        action: action.into(),
        doc_id: doc_id.into(),
        key: format!("docs/{doc_id}"),
        old_status: Some("pending".into()),
        new_status: None,
        detail: "a detail with 'quotes' and é".into(),
    };
    let first = entry("a", "mark_expired");
    let second = AuditEntry {
        sweep_id: None,
        ..entry("a", "quarantine")
    };
    let mut tx = catalog.begin().await.expect("begin");
    tx.audit(&first).await.expect("audit");
    tx.audit(&entry("other", "mark_expired"))
        .await
        .expect("audit");
    tx.audit(&second).await.expect("audit");
    tx.commit().await.expect("commit");
    assert_eq!(
        catalog.audit_trail("a", "docs/a").await.expect("trail"),
        Some(vec![first, second])
    );
}

/// An error text that repeats a URL with a password (as client libraries do) is stored redacted,
/// whichever database holds the reconciler's tables.
async fn free_text_reaches_the_tables_redacted(backend: Backend) {
    let catalog = backend.catalog().await;
    catalog.migrate().await.expect("migrate");
    let leaky = "POST failed: http://app:PW4CONFORMANCE@hook.internal/x?token=TOKEN4CONFORMANCE";
    let mut tx = catalog.begin().await.expect("begin");
    tx.audit(&AuditEntry {
        at: now(),
        sweep_id: None,
        finding: "processing_exhausted".into(),
        action: "fail".into(),
        doc_id: "a".into(),
        key: "docs/a".into(),
        old_status: Some("uploaded".into()),
        new_status: Some("failed".into()),
        detail: leaky.into(),
    })
    .await
    .expect("audit");
    tx.commit().await.expect("commit");
    let trail = catalog
        .audit_trail("a", "docs/a")
        .await
        .expect("trail")
        .expect("migrated");
    let stored = &trail[0].detail;
    assert!(stored.starts_with("POST failed: http://"), "{stored}");
    for secret in ["PW4CONFORMANCE", "TOKEN4CONFORMANCE"] {
        assert!(!stored.contains(secret), "{secret} stored: {stored}");
    }
}

async fn job_claims_count_attempts_and_respect_leases(backend: Backend) {
    let catalog = backend.catalog().await;
    catalog.migrate().await.expect("migrate");
    let t0 = now();
    let object = ObjectMeta {
        key: "docs/a".into(),
        size: 42,
        etag: Some("\"e\"".into()),
        last_modified: t0,
        linked: false,
    };
    let mut tx = catalog.begin().await.expect("begin");
    tx.enqueue_job("a", "docs/a", Some(&object), t0)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    assert_eq!(catalog.queue_depth().await.expect("depth"), 1);

    let lease = Duration::from_secs(60);
    let claimed = catalog
        .claim_job("w1", t0, lease)
        .await
        .expect("claim")
        .expect("a due job");
    assert_eq!(claimed.doc_id, "a");
    assert_eq!(claimed.state, JobState::Running);
    assert_eq!(claimed.attempts, 1, "the claim counts the attempt");
    assert_eq!(claimed.leased_by.as_deref(), Some("w1"));
    assert_eq!(claimed.size, Some(42));
    assert_eq!(
        claimed.lease_until,
        Some(t0 + chrono::Duration::seconds(60))
    );

    assert_eq!(
        catalog
            .claim_job("w2", t0 + chrono::Duration::seconds(30), lease)
            .await
            .expect("claim"),
        None,
        "leased to w1"
    );
    let reclaimed = catalog
        .claim_job("w2", t0 + chrono::Duration::seconds(61), lease)
        .await
        .expect("claim")
        .expect("the lease ran out");
    assert_eq!(reclaimed.attempts, 2);
    assert_eq!(reclaimed.leased_by.as_deref(), Some("w2"));

    // Written back under the job's lock; a done job is claimed no more.
    let mut tx = catalog.begin().await.expect("begin");
    let mut job = tx.lock_job("a").await.expect("lock").expect("job");
    assert_eq!(job, reclaimed);
    job.state = JobState::Done;
    job.lease_until = None;
    tx.save_job(&job).await.expect("save");
    tx.commit().await.expect("commit");
    assert_eq!(catalog.job("a").await.expect("job"), Some(job));
    assert_eq!(
        catalog
            .claim_job("w3", t0 + chrono::Duration::hours(1), lease)
            .await
            .expect("claim"),
        None
    );
    assert_eq!(catalog.queue_depth().await.expect("depth"), 0);

    // Queued again: a fresh budget.
    let mut tx = catalog.begin().await.expect("begin");
    tx.enqueue_job("a", "docs/a", None, t0)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    let again = catalog
        .claim_job("w4", t0, lease)
        .await
        .expect("claim")
        .expect("queued again");
    assert_eq!(again.attempts, 1);
}

/// Apply an event to `docs/a`: lock its state, return the sequencer seen, store the event.
async fn apply_event(
    catalog: &dyn Catalog,
    sequencer: Option<&str>,
    kind: &'static str,
) -> Option<String> {
    let mut tx = catalog.begin().await.expect("begin");
    let seen = tx.lock_key_events("docs/a").await.expect("lock");
    tx.store_key_event(&KeyEvent {
        key: "docs/a".into(),
        sequencer: sequencer.map(str::to_owned),
        kind,
        time: sequencer.map(|_| now()),
    })
    .await
    .expect("store");
    tx.commit().await.expect("commit");
    seen
}

async fn key_event_state_keeps_the_newest_sequencer(backend: Backend) {
    let catalog = backend.catalog().await;
    catalog.migrate().await.expect("migrate");
    let newest = Some("0055AED6DCD90281E5".to_owned());
    assert_eq!(
        apply_event(catalog.as_ref(), newest.as_deref(), "created").await,
        None
    );
    // An event without a sequencer keeps the one known.
    assert_eq!(apply_event(catalog.as_ref(), None, "removed").await, newest);
    assert_eq!(apply_event(catalog.as_ref(), None, "removed").await, newest);
    let mut tx = catalog.begin().await.expect("begin");
    assert_eq!(tx.lock_key_events("docs/b").await.expect("lock"), None);
}

async fn sweep_lock_excludes_a_second_holder_until_released(backend: Backend) {
    let catalog = backend.catalog().await;
    let replica = backend.catalog().await;
    let other_deployment = backend.catalog_of("uploads", "avatars/").await;
    // As an applying run finds them: the reconciler's tables made.
    catalog.migrate().await.expect("migrate");
    let held = catalog
        .try_sweep_lock()
        .await
        .expect("try")
        .expect("free at first");
    assert!(
        replica.try_sweep_lock().await.expect("try").is_none(),
        "held by the first"
    );
    let other = other_deployment
        .try_sweep_lock()
        .await
        .expect("try")
        .expect("another deployment's lock is its own");
    held.release().await;
    let again = replica
        .try_sweep_lock()
        .await
        .expect("try")
        .expect("free after release");
    again.release().await;
    other.release().await;
}

async fn scopes_on_one_database_do_not_see_each_others_rows(backend: Backend) {
    backend.doc("a", "uploaded", HOUR).await;
    let docs = backend.catalog_of("uploads", "docs/").await;
    let avatars = backend.catalog_of("uploads", "avatars/").await;
    docs.migrate().await.expect("migrate");
    avatars.migrate().await.expect("migrate");
    let t0 = now();
    let mut tx = docs.begin().await.expect("begin");
    tx.enqueue_job("a", "docs/a", None, t0)
        .await
        .expect("enqueue");
    tx.audit(&AuditEntry {
        at: t0,
        sweep_id: None,
        finding: "orphan_object".into(),
        action: "adopt".into(),
        doc_id: "a".into(),
        key: "docs/a".into(),
        old_status: None,
        new_status: Some("uploaded".into()),
        detail: String::new(),
    })
    .await
    .expect("audit");
    tx.commit().await.expect("commit");

    assert_eq!(avatars.job("a").await.expect("job"), None);
    assert_eq!(avatars.queue_depth().await.expect("depth"), 0);
    assert_eq!(
        avatars
            .claim_job("w", t0, Duration::from_secs(60))
            .await
            .expect("claim"),
        None
    );
    assert_eq!(
        avatars.audit_trail("a", "docs/a").await.expect("trail"),
        Some(vec![])
    );
    let record = avatars
        .record("a")
        .await
        .expect("record")
        .expect("same table");
    assert_eq!(
        record.job, None,
        "another deployment's job is not this record's"
    );

    assert_eq!(
        docs.record("a").await.expect("record").expect("a").job,
        Some(JobState::Queued)
    );
    assert!(
        docs.claim_job("w", t0, Duration::from_secs(60))
            .await
            .expect("claim")
            .is_some()
    );
}

async fn prune_deletes_only_what_is_old_enough(backend: Backend) {
    let catalog = backend.catalog().await;
    catalog.migrate().await.expect("migrate");
    let t0 = now();
    let mut tx = catalog.begin().await.expect("begin");
    for id in ["done", "queued", "failed"] {
        tx.enqueue_job(id, &format!("docs/{id}"), None, t0)
            .await
            .expect("enqueue");
    }
    for (id, state) in [("done", JobState::Done), ("failed", JobState::Failed)] {
        let mut job = tx.lock_job(id).await.expect("lock").expect("job");
        job.state = state;
        tx.save_job(&job).await.expect("save");
    }
    tx.lock_key_events("docs/done").await.expect("lock");
    tx.note_object(&ObjectMeta {
        key: "docs/done".into(),
        size: 1,
        etag: None,
        last_modified: t0,
        linked: false,
    })
    .await
    .expect("note");
    tx.commit().await.expect("commit");

    let keep_a_day = Retention {
        finished_jobs: Duration::from_secs(86_400),
        key_events: Duration::from_secs(86_400),
        objects: Duration::from_secs(86_400),
    };
    let pruned = catalog.prune(&keep_a_day, Utc::now()).await.expect("prune");
    assert_eq!(pruned, Default::default(), "nothing is a day old");

    let keep_nothing = Retention {
        finished_jobs: Duration::ZERO,
        key_events: Duration::ZERO,
        objects: Duration::ZERO,
    };
    let later = Utc::now() + chrono::Duration::hours(1);
    let pruned = catalog.prune(&keep_nothing, later).await.expect("prune");
    assert_eq!(
        (pruned.finished_jobs, pruned.key_events, pruned.objects),
        (1, 1, 1)
    );
    assert_eq!(catalog.job("done").await.expect("job"), None);
    assert!(catalog.job("queued").await.expect("job").is_some());
    assert!(
        catalog.job("failed").await.expect("job").is_some(),
        "failed jobs stay for retry"
    );
}

/// An intent noted before a bucket change outlives everything but the commit that clears it;
/// each change of a key has its own; its free text is stored redacted.
async fn intents_stay_until_a_committed_clear_and_only_in_their_scope(backend: Backend) {
    let catalog = backend.catalog().await;
    catalog.migrate().await.expect("migrate");
    let intent = |id: &str, key: &str, detail: &str| Intent {
        id: id.into(),
        change: BucketChange::Quarantine {
            object: ObjectMeta {
                key: key.into(),
                size: 8,
                etag: Some("\"e\"".into()),
                last_modified: now(),
                linked: false,
            },
            target: format!("quarantine/{key}/20261127T000000Z-e"),
        },
        entry: AuditEntry {
            at: now(),
            sweep_id: Some(uuid::Uuid::new_v4()),
            finding: "orphan_object".into(),
            action: "quarantine".into(),
            doc_id: key.trim_start_matches("docs/").into(),
            key: key.into(),
            old_status: None,
            new_status: None,
            detail: detail.into(),
        },
    };
    // Two changes of one key (issue 18: a quarantine and an abort, two aborts) each keep their
    // own intent: noting the second does not replace the first.
    let b1 = intent("b-1", "docs/b", "first");
    let b2 = intent("b-2", "docs/b", "then http://u:PW4INTENT@h/x");
    let a = intent("a-1", "docs/a", "a");
    catalog.note_intent(&b1).await.expect("note");
    catalog
        .note_intent(&b2)
        .await
        .expect("note another at the same key");
    catalog.note_intent(&a).await.expect("note");
    let mut stored_b2 = b2.clone();
    stored_b2.entry.detail = "then http://u:***@h/x".into();
    assert_eq!(
        catalog.intents().await.expect("intents"),
        vec![a.clone(), b1.clone(), stored_b2.clone()]
    );
    let other = backend.catalog_of("uploads", "avatars/").await;
    other.migrate().await.expect("migrate");
    assert_eq!(other.intents().await.expect("intents"), vec![]);

    let mut tx = catalog.begin_own().await.expect("begin");
    tx.clear_intent("a-1").await.expect("clear");
    drop(tx);
    assert_eq!(catalog.intents().await.expect("intents").len(), 3);
    let mut tx = catalog.begin_own().await.expect("begin");
    tx.clear_intent("a-1").await.expect("clear");
    tx.clear_intent("b-1").await.expect("clear");
    tx.commit().await.expect("commit");
    assert_eq!(catalog.intents().await.expect("intents"), vec![stored_b2]);
}
