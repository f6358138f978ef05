//! The catalog in memory: one [`MemoryDb`] (the app's table and the reconciler's tables, as one
//! database holds them) and a [`MemoryCatalog`] per deployment (scope) over it.
//!
//! What the real adapters promise, kept here:
//! - Records stream in UTF-8 byte order (a `BTreeMap<String, _>` orders by bytes), read from a
//!   snapshot taken when the stream starts, as a query's snapshot is.
//! - One writer at a time, as SQLite's `BEGIN IMMEDIATE`: a transaction takes the database's
//!   write lock at `begin` and keeps it until it commits or is dropped, so `lock_record`,
//!   `lock_job` and `lock_key_events` exclude every other writer. Job claims, migrations, sweep
//!   rows and pruning take the same lock for their one statement.
//! - A transaction sees its own writes (the committed state with its writes replayed over it) and
//!   commits them all at once, or none when dropped. The app's own inserts are not transactions
//!   of the reconciler's: they land at once, as the app's committed rows do.
//! - Each scope sees only its own jobs, event states, noted objects, audit rows and sweep lock;
//!   the app table is shared.
//! - Free text (audit detail, a job's last error, a sweep's error) is stored redacted.

use super::{Down, Schedule, locked};
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upload_reconciler::catalog::{
    AuditEntry, Catalog, Intent, KeyEvent, Pruned, Retention, Scope, SweepLock, SweepRecord,
    Transaction,
};
use upload_reconciler::config::StatusWords;
use upload_reconciler::error::{Error, Result};
use upload_reconciler::model::{Job, JobState, ObjectMeta, Record, Status};
use upload_reconciler::processing::Clock;
use upload_reconciler::redact;

/// One database: the app's table and, once migrated, the reconciler's tables. Cheap to clone;
/// every clone is the same database.
#[derive(Clone)]
pub struct MemoryDb {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    schedule: Arc<Schedule>,
    statuses: StatusWords,
    /// The committed state.
    state: Mutex<State>,
    /// The write lock: held by an open transaction, taken by every write.
    writer: tokio::sync::Mutex<()>,
    /// Every committed status change made through the trait, in commit order.
    transitions: Mutex<Vec<Transition>>,
}

/// A committed change of one record's status word (`old` is `None` for a record the reconciler
/// created).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub id: String,
    pub old: Option<String>,
    pub new: String,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Default)]
struct State {
    app: BTreeMap<String, Row>,
    /// The reconciler's tables; `None` until `migrate`.
    own: Option<Own>,
    /// Scopes whose sweep lock is held (the lock lives outside the tables, as an advisory lock).
    sweep_locks: BTreeSet<String>,
}

/// A row of the app's table: id, status, created_at, updated_at.
#[derive(Clone)]
struct Row {
    raw_status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The reconciler's tables; every key starts with the scope's name.
#[derive(Clone, Default)]
struct Own {
    jobs: BTreeMap<(String, String), StoredJob>,
    /// The newest sequencer applied to each key, and when the row was last written.
    key_events: BTreeMap<(String, String), (Option<String>, DateTime<Utc>)>,
    /// Objects noted at adoption, with when.
    objects: Vec<(String, ObjectMeta, DateTime<Utc>)>,
    audit: Vec<(String, AuditEntry)>,
    sweeps: Vec<(String, SweepRecord)>,
    /// Bucket changes about to be made, by scope and key.
    intents: BTreeMap<(String, String), Intent>,
}

#[derive(Clone)]
struct StoredJob {
    job: Job,
    updated_at: DateTime<Utc>,
}

impl MemoryDb {
    /// An empty database whose times come from `clock`, crashing as `schedule` says.
    pub fn new(clock: Arc<dyn Clock>, schedule: Arc<Schedule>) -> MemoryDb {
        MemoryDb {
            inner: Arc::new(Inner {
                clock,
                schedule,
                statuses: StatusWords::default(),
                state: Mutex::new(State::default()),
                writer: tokio::sync::Mutex::new(()),
                transitions: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The catalog of one deployment over this database.
    pub fn catalog(&self, scope: &Scope) -> MemoryCatalog {
        MemoryCatalog {
            db: self.clone(),
            scope: scope.name(),
        }
    }

    /// The app inserts a record, committed at once; `false` when the id is taken.
    pub fn insert(&self, id: &str, status: &str, created_at: DateTime<Utc>) -> bool {
        let mut state = locked(&self.inner.state);
        if state.app.contains_key(id) {
            return false;
        }
        state.app.insert(
            id.to_owned(),
            Row {
                raw_status: status.to_owned(),
                created_at,
                updated_at: created_at,
            },
        );
        true
    }

    /// A record's committed status word.
    pub fn status(&self, id: &str) -> Option<String> {
        locked(&self.inner.state)
            .app
            .get(id)
            .map(|row| row.raw_status.clone())
    }

    /// Every committed record: id, status word, created_at.
    pub fn rows(&self) -> Vec<(String, String, DateTime<Utc>)> {
        locked(&self.inner.state)
            .app
            .iter()
            .map(|(id, row)| (id.clone(), row.raw_status.clone(), row.created_at))
            .collect()
    }

    /// The committed status changes made through the trait, oldest first.
    pub fn transitions(&self) -> Vec<Transition> {
        locked(&self.inner.transitions).clone()
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    fn enter(&self, op: &'static str) -> Result<()> {
        self.inner.schedule.enter(op).map_err(crashed)
    }

    fn committed(&self) -> State {
        locked(&self.inner.state).clone()
    }
}

fn crashed(down: Down) -> Error {
    Error::database(down.to_string(), sqlx::Error::PoolClosed)
}

fn not_migrated(what: &str) -> Error {
    Error::database(
        format!("{what}: the reconciler's tables do not exist"),
        sqlx::Error::RowNotFound,
    )
}

/// One deployment's view of a [`MemoryDb`].
pub struct MemoryCatalog {
    db: MemoryDb,
    scope: String,
}

impl MemoryCatalog {
    /// This scope's jobs, by doc id.
    pub fn jobs(&self) -> Vec<Job> {
        let state = locked(&self.db.inner.state);
        state
            .own
            .iter()
            .flat_map(|own| own.jobs.iter())
            .filter(|((scope, _), _)| *scope == self.scope)
            .map(|(_, stored)| stored.job.clone())
            .collect()
    }

    /// This scope's sweep history, oldest first.
    pub fn sweeps(&self) -> Vec<SweepRecord> {
        let state = locked(&self.db.inner.state);
        state
            .own
            .iter()
            .flat_map(|own| own.sweeps.iter())
            .filter(|(scope, _)| *scope == self.scope)
            .map(|(_, sweep)| sweep.clone())
            .collect()
    }

    fn record_from(&self, state: &State, id: &str, row: &Row) -> Record {
        let job = state
            .own
            .as_ref()
            .and_then(|own| own.jobs.get(&(self.scope.clone(), id.to_owned())))
            .map(|stored| stored.job.state);
        Record {
            id: id.to_owned(),
            key: Some(id.to_owned()).filter(|id| !id.is_empty()),
            raw_status: row.raw_status.clone(),
            status: self.db.inner.statuses.status(&row.raw_status),
            created_at: row.created_at,
            updated_at: Some(row.updated_at),
            job,
        }
    }

    fn key(&self, name: &str) -> (String, String) {
        (self.scope.clone(), name.to_owned())
    }

    /// One write statement on the reconciler's tables, under the write lock; refused as a
    /// missing table would refuse it before `migrate`.
    async fn write_own<T>(
        &self,
        op: &'static str,
        what: &str,
        change: impl FnOnce(&mut Own) -> T,
    ) -> Result<T> {
        self.db.enter(op)?;
        let _writer = self.db.inner.writer.lock().await;
        let mut state = locked(&self.db.inner.state);
        let own = state.own.as_mut().ok_or_else(|| not_migrated(what))?;
        Ok(change(own))
    }
}

#[async_trait::async_trait]
impl Catalog for MemoryCatalog {
    fn records(&self) -> BoxStream<'_, Result<Record>> {
        if let Err(e) = self.db.enter("records") {
            return stream::once(async { Err(e) }).boxed();
        }
        let state = self.db.committed();
        let records: Vec<Result<Record>> = state
            .app
            .iter()
            .map(|(id, row)| Ok(self.record_from(&state, id, row)))
            .collect();
        stream::iter(records).boxed()
    }

    async fn record(&self, id: &str) -> Result<Option<Record>> {
        self.db.enter("record")?;
        let state = self.db.committed();
        Ok(state
            .app
            .get(id)
            .map(|row| self.record_from(&state, id, row)))
    }

    async fn record_at(&self, key: &str) -> Result<Option<Record>> {
        // The double's key is its id.
        self.record(key).await
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>> {
        self.db.enter("begin")?;
        let writer = self.db.inner.writer.lock().await;
        Ok(Box::new(MemoryTransaction {
            catalog: self,
            _writer: writer,
            writes: Vec::new(),
        }))
    }

    async fn migrate(&self) -> Result<()> {
        self.db.enter("migrate")?;
        let _writer = self.db.inner.writer.lock().await;
        locked(&self.db.inner.state).own.get_or_insert_default();
        Ok(())
    }

    async fn sweep_started(&self, sweep: &SweepRecord) -> Result<()> {
        self.write_own("sweep_started", "recording a sweep", |own| {
            for (scope, left) in &mut own.sweeps {
                if *scope == self.scope && left.outcome == "running" {
                    left.outcome = "interrupted";
                    left.finished_at = Some(sweep.started_at);
                    left.error =
                        Some("the process running this sweep ended before it finished".into());
                }
            }
            own.sweeps.push((self.scope.clone(), sweep.clone()));
        })
        .await
    }

    async fn sweep_finished(&self, sweep: &SweepRecord) -> Result<()> {
        self.write_own("sweep_finished", "recording a sweep", |own| {
            for (scope, row) in &mut own.sweeps {
                if *scope == self.scope && row.id == sweep.id {
                    *row = SweepRecord {
                        started_at: row.started_at,
                        bucket: row.bucket.clone(),
                        prefix: row.prefix.clone(),
                        error: sweep.error.as_deref().map(redact::text),
                        ..sweep.clone()
                    };
                }
            }
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.db.enter("ping")
    }

    async fn try_sweep_lock(&self) -> Result<Option<Box<dyn SweepLock>>> {
        self.db.enter("try_sweep_lock")?;
        let mut state = locked(&self.db.inner.state);
        if !state.sweep_locks.insert(self.scope.clone()) {
            return Ok(None);
        }
        Ok(Some(Box::new(MemorySweepLock {
            db: self.db.clone(),
            scope: self.scope.clone(),
        })))
    }

    async fn claim_job(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Job>> {
        self.db.enter("claim_job")?;
        let _writer = self.db.inner.writer.lock().await;
        let mut state = locked(&self.db.inner.state);
        let Some(own) = state.own.as_mut() else {
            return Ok(None);
        };
        let due = own
            .jobs
            .iter_mut()
            .filter(|((scope, _), _)| *scope == self.scope)
            .map(|(_, stored)| stored)
            .filter(|stored| {
                let job = &stored.job;
                (job.state == JobState::Queued && job.next_attempt_at <= now)
                    || (job.state == JobState::Running
                        && job.lease_until.is_some_and(|until| until <= now))
            })
            .min_by(|a, b| a.job.next_attempt_at.cmp(&b.job.next_attempt_at));
        let Some(stored) = due else {
            return Ok(None);
        };
        let job = &mut stored.job;
        job.state = JobState::Running;
        job.leased_by = Some(worker.to_owned());
        job.lease_until =
            Some(now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX));
        job.attempts += 1;
        stored.updated_at = now;
        Ok(Some(job.clone()))
    }

    async fn job(&self, id: &str) -> Result<Option<Job>> {
        self.db.enter("job")?;
        let state = locked(&self.db.inner.state);
        Ok(state
            .own
            .as_ref()
            .and_then(|own| own.jobs.get(&self.key(id)))
            .map(|stored| stored.job.clone()))
    }

    async fn queue_depth(&self) -> Result<u64> {
        self.db.enter("queue_depth")?;
        Ok(self.jobs().iter().filter(|job| job.state.is_live()).count() as u64)
    }

    async fn ids_with_status(&self, status: Status) -> Result<Vec<String>> {
        self.db.enter("ids_with_status")?;
        let word = self.db.inner.statuses.word(status);
        let state = locked(&self.db.inner.state);
        Ok(state
            .app
            .iter()
            .filter(|(_, row)| row.raw_status == word)
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn prune(&self, retention: &Retention, now: DateTime<Utc>) -> Result<Pruned> {
        // The same plan as the databases run: the cutoffs of `Retention::targets`, in its order.
        let [jobs, key_events, objects] = retention.targets(now).map(|target| target.cutoff);
        self.write_own("prune", "pruning", |own| {
            let mine = |scope: &String| *scope == self.scope;
            let before = (own.jobs.len(), own.key_events.len(), own.objects.len());
            own.jobs.retain(|(scope, _), stored| {
                !(mine(scope) && stored.job.state == JobState::Done && stored.updated_at < jobs)
            });
            own.key_events
                .retain(|(scope, _), (_, updated_at)| !(mine(scope) && *updated_at < key_events));
            own.objects
                .retain(|(scope, _, noted_at)| !(mine(scope) && *noted_at < objects));
            Pruned {
                finished_jobs: (before.0 - own.jobs.len()) as u64,
                key_events: (before.1 - own.key_events.len()) as u64,
                objects: (before.2 - own.objects.len()) as u64,
            }
        })
        .await
    }

    async fn audit_trail(&self, id: &str, key: &str) -> Result<Option<Vec<AuditEntry>>> {
        self.db.enter("audit_trail")?;
        let state = locked(&self.db.inner.state);
        Ok(state.own.as_ref().map(|own| {
            own.audit
                .iter()
                .filter(|(scope, entry)| {
                    *scope == self.scope && (entry.doc_id == id || entry.key == key)
                })
                .map(|(_, entry)| entry.clone())
                .collect()
        }))
    }

    async fn note_intent(&self, intent: &Intent) -> Result<()> {
        // Stored as the adapters store it: the audit detail redacted.
        let mut stored = intent.clone();
        stored.entry.detail = redact::text(&stored.entry.detail);
        let key = self.key(&intent.id);
        self.write_own("note_intent", "noting an intent", |own| {
            own.intents.insert(key, stored);
        })
        .await
    }

    async fn intents(&self) -> Result<Vec<Intent>> {
        self.db.enter("intents")?;
        let state = self.db.committed();
        let own = state
            .own
            .as_ref()
            .ok_or_else(|| not_migrated("reading the intents"))?;
        let mut intents: Vec<Intent> = own
            .intents
            .iter()
            .filter(|((scope, _), _)| *scope == self.scope)
            .map(|(_, intent)| intent.clone())
            .collect();
        // As the adapters give them: by key.
        intents.sort_by(|a, b| a.key().cmp(b.key()));
        Ok(intents)
    }
}

/// A held sweep lock: freed when released or dropped, as an advisory lock goes with its session.
struct MemorySweepLock {
    db: MemoryDb,
    scope: String,
}

#[async_trait::async_trait]
impl SweepLock for MemorySweepLock {
    async fn release(self: Box<Self>) {}
}

impl Drop for MemorySweepLock {
    fn drop(&mut self) {
        locked(&self.db.inner.state).sweep_locks.remove(&self.scope);
    }
}

/// One write of a transaction, replayed over the committed state to read and to commit.
enum Write {
    Status { id: String, raw: String },
    Create { id: String, raw: String },
    Note(ObjectMeta),
    Audit(AuditEntry),
    Enqueue(Job),
    SaveJob(Job),
    TouchKey(String),
    StoreKey(KeyEvent),
    ClearIntent(String),
}

struct MemoryTransaction<'c> {
    catalog: &'c MemoryCatalog,
    _writer: tokio::sync::MutexGuard<'c, ()>,
    writes: Vec<Write>,
}

impl MemoryTransaction<'_> {
    fn enter(&self, op: &'static str) -> Result<()> {
        self.catalog.db.enter(op)
    }

    /// The committed state with this transaction's writes over it.
    fn view(&self) -> State {
        let mut state = self.catalog.db.committed();
        let now = self.catalog.db.now();
        for write in &self.writes {
            apply(&mut state, &self.catalog.scope, write, now);
        }
        state
    }

    /// A write to the reconciler's tables, refused as a missing table would refuse it.
    fn write_own(&mut self, what: &str, write: Write) -> Result<()> {
        if self.view().own.is_none() {
            return Err(not_migrated(what));
        }
        self.writes.push(write);
        Ok(())
    }
}

/// Apply one write to `state` at `now`.
fn apply(state: &mut State, scope: &str, write: &Write, now: DateTime<Utc>) {
    let key = |name: &str| (scope.to_owned(), name.to_owned());
    match write {
        Write::Status { id, raw } => {
            if let Some(row) = state.app.get_mut(id) {
                row.raw_status = raw.clone();
                // The table's updated_at column, touched as the adapters touch it.
                row.updated_at = now;
            }
        }
        Write::Create { id, raw } => {
            // ON CONFLICT DO NOTHING.
            state.app.entry(id.clone()).or_insert(Row {
                raw_status: raw.clone(),
                created_at: now,
                updated_at: now,
            });
        }
        Write::Note(object) => {
            if let Some(own) = state.own.as_mut() {
                own.objects.push((scope.to_owned(), object.clone(), now));
            }
        }
        Write::Audit(entry) => {
            if let Some(own) = state.own.as_mut() {
                let entry = AuditEntry {
                    detail: redact::text(&entry.detail),
                    ..entry.clone()
                };
                own.audit.push((scope.to_owned(), entry));
            }
        }
        Write::Enqueue(job) | Write::SaveJob(job) => {
            if let Some(own) = state.own.as_mut() {
                let job = Job {
                    last_error: job.last_error.as_deref().map(redact::text),
                    ..job.clone()
                };
                let saved = StoredJob {
                    job,
                    updated_at: now,
                };
                match write {
                    Write::Enqueue(_) => {
                        own.jobs.insert(key(&saved.job.doc_id), saved);
                    }
                    // An UPDATE: a job that is not there stays absent.
                    _ => {
                        if let Some(stored) = own.jobs.get_mut(&key(&saved.job.doc_id)) {
                            *stored = saved;
                        }
                    }
                }
            }
        }
        Write::TouchKey(name) => {
            if let Some(own) = state.own.as_mut() {
                own.key_events.entry(key(name)).or_insert((None, now));
            }
        }
        Write::ClearIntent(name) => {
            if let Some(own) = state.own.as_mut() {
                own.intents.remove(&key(name));
            }
        }
        Write::StoreKey(event) => {
            if let Some(own) = state.own.as_mut() {
                let row = own.key_events.entry(key(&event.key)).or_insert((None, now));
                // COALESCE(new, old): an event without a sequencer keeps the one known.
                if event.sequencer.is_some() {
                    row.0 = event.sequencer.clone();
                }
                row.1 = now;
            }
        }
    }
}

#[async_trait::async_trait]
impl Transaction for MemoryTransaction<'_> {
    async fn lock_record(&mut self, id: &str) -> Result<Option<Record>> {
        self.enter("lock_record")?;
        let state = self.view();
        Ok(state
            .app
            .get(id)
            .map(|row| self.catalog.record_from(&state, id, row)))
    }

    async fn set_status(&mut self, id: &str, status: Status) -> Result<()> {
        self.enter("set_status")?;
        let raw = self.catalog.db.inner.statuses.word(status).to_owned();
        self.writes.push(Write::Status {
            id: id.to_owned(),
            raw,
        });
        Ok(())
    }

    async fn lock_record_at(&mut self, key: &str) -> Result<Option<Record>> {
        self.lock_record(key).await
    }

    async fn create_record(&mut self, id: &str, status: Status) -> Result<Option<String>> {
        self.enter("create_record")?;
        if self.view().app.contains_key(id) {
            return Ok(None);
        }
        let raw = self.catalog.db.inner.statuses.word(status).to_owned();
        self.writes.push(Write::Create {
            id: id.to_owned(),
            raw,
        });
        Ok(Some(id.to_owned()))
    }

    async fn note_object(&mut self, object: &ObjectMeta) -> Result<()> {
        self.enter("note_object")?;
        self.write_own("noting an object", Write::Note(object.clone()))
    }

    async fn audit(&mut self, entry: &AuditEntry) -> Result<()> {
        self.enter("audit")?;
        self.write_own("writing the audit log", Write::Audit(entry.clone()))
    }

    async fn enqueue_job(
        &mut self,
        id: &str,
        key: &str,
        object: Option<&ObjectMeta>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.enter("enqueue_job")?;
        let job = Job {
            doc_id: id.to_owned(),
            key: key.to_owned(),
            state: JobState::Queued,
            attempts: 0,
            next_attempt_at: now,
            lease_until: None,
            leased_by: None,
            last_error: None,
            size: object.map(|o| o.size),
            etag: object.and_then(|o| o.etag.clone()),
        };
        self.write_own("queueing a job", Write::Enqueue(job))
    }

    async fn lock_job(&mut self, id: &str) -> Result<Option<Job>> {
        self.enter("lock_job")?;
        let state = self.view();
        let own = state
            .own
            .as_ref()
            .ok_or_else(|| not_migrated("locking a job"))?;
        Ok(own
            .jobs
            .get(&self.catalog.key(id))
            .map(|stored| stored.job.clone()))
    }

    async fn save_job(&mut self, job: &Job) -> Result<()> {
        self.enter("save_job")?;
        self.write_own("writing a job", Write::SaveJob(job.clone()))
    }

    async fn lock_key_events(&mut self, key: &str) -> Result<Option<String>> {
        self.enter("lock_key_events")?;
        self.write_own("locking a key's events", Write::TouchKey(key.to_owned()))?;
        let state = self.view();
        Ok(state
            .own
            .as_ref()
            .and_then(|own| own.key_events.get(&self.catalog.key(key)))
            .and_then(|(sequencer, _)| sequencer.clone()))
    }

    async fn store_key_event(&mut self, event: &KeyEvent) -> Result<()> {
        self.enter("store_key_event")?;
        self.write_own("writing a key's event", Write::StoreKey(event.clone()))
    }

    async fn clear_intent(&mut self, id: &str) -> Result<()> {
        self.enter("clear_intent")?;
        self.write_own("clearing an intent", Write::ClearIntent(id.to_owned()))
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.enter("commit")?;
        let db = &self.catalog.db;
        let now = db.now();
        let mut state = locked(&db.inner.state);
        let touched: BTreeMap<String, Option<String>> = self
            .writes
            .iter()
            .filter_map(|write| match write {
                Write::Status { id, .. } | Write::Create { id, .. } => Some(id),
                _ => None,
            })
            .map(|id| {
                (
                    id.clone(),
                    state.app.get(id).map(|row| row.raw_status.clone()),
                )
            })
            .collect();
        for write in &self.writes {
            apply(&mut state, &self.catalog.scope, write, now);
        }
        let mut transitions = locked(&db.inner.transitions);
        for (id, old) in touched {
            let Some(new) = state.app.get(&id).map(|row| row.raw_status.clone()) else {
                continue;
            };
            if old.as_ref() != Some(&new) {
                transitions.push(Transition {
                    id,
                    old,
                    new,
                    at: now,
                });
            }
        }
        Ok(())
    }
}
