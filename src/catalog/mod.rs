//! The catalog: the app table, read through the configured mapping, and the reconciler's own
//! tables. The engine sees only the [`Catalog`] and [`Transaction`] traits, so another database
//! fits without touching it.

pub mod postgres;

use crate::error::Result;
use crate::model::{Job, ObjectMeta, Record, Status};
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::Serialize;
use uuid::Uuid;

#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    /// Every record, ordered by id in byte order (UTF-8 bytes, as S3 orders keys). The stream
    /// ends with an error, never early, when the query fails.
    fn records(&self) -> BoxStream<'_, Result<Record>>;

    /// One record by id.
    async fn record(&self, id: &str) -> Result<Option<Record>>;

    /// A write transaction; dropping it without `commit` rolls it back.
    async fn begin(&self) -> Result<Box<dyn Transaction + '_>>;

    /// Create or upgrade the reconciler's own tables.
    async fn migrate(&self) -> Result<()>;

    /// Record that an applying sweep started.
    async fn sweep_started(&self, sweep: &SweepRecord) -> Result<()>;

    /// Record how an applying sweep ended.
    async fn sweep_finished(&self, sweep: &SweepRecord) -> Result<()>;

    /// A cheap round trip: is the database there?
    async fn ping(&self) -> Result<()>;

    /// Take the sweep lock named by `scope` if no one holds it: only one replica sweeps at a time.
    /// `None` when another holds it. The lock goes with the guard's session.
    async fn try_sweep_lock(&self, scope: &str) -> Result<Option<Box<dyn SweepLock>>>;

    /// Claim the next due job (queued and due, or running with an expired lease) for `worker`,
    /// leasing it until `now + lease`. `FOR UPDATE SKIP LOCKED`: workers never wait on each other.
    async fn claim_job(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<Job>>;

    /// A doc's processing job; `None` without one (or before the reconciler's tables exist).
    async fn job(&self, id: &str) -> Result<Option<Job>>;

    /// Jobs queued or running.
    async fn queue_depth(&self) -> Result<u64>;

    /// The ids of every record in `status`.
    async fn ids_with_status(&self, status: Status) -> Result<Vec<String>>;

    /// The audit trail of one doc, oldest first; `None` when the reconciler's tables do not exist
    /// yet (nothing was ever applied).
    async fn audit_trail(&self, id: &str, key: &str) -> Result<Option<Vec<AuditEntry>>>;
}

/// A held sweep lock.
#[async_trait::async_trait]
pub trait SweepLock: Send {
    async fn release(self: Box<Self>);
}

/// The writes of one action, committed together or not at all.
#[async_trait::async_trait]
pub trait Transaction: Send {
    /// Lock the record (`FOR UPDATE`) and return it as it is now.
    async fn lock_record(&mut self, id: &str) -> Result<Option<Record>>;

    /// Set the status of a record locked by `lock_record`.
    async fn set_status(&mut self, id: &str, status: Status) -> Result<()>;

    /// Create a record; `false` when one with that id exists already.
    async fn create_record(&mut self, id: &str, status: Status) -> Result<bool>;

    /// Remember what the object looked like when it was adopted.
    async fn note_object(&mut self, object: &ObjectMeta) -> Result<()>;

    async fn audit(&mut self, entry: &AuditEntry) -> Result<()>;

    /// Queue the doc's processing job with a fresh attempt budget (replacing any old one).
    async fn enqueue_job(
        &mut self,
        id: &str,
        key: &str,
        object: Option<&ObjectMeta>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Lock a doc's job row and return it.
    async fn lock_job(&mut self, id: &str) -> Result<Option<Job>>;

    /// Write back a job locked by `lock_job`.
    async fn save_job(&mut self, job: &Job) -> Result<()>;

    /// Lock the per-key event state (creating it when new) and return the sequencer of the newest
    /// event applied to this key, if any. Serializes concurrent events for one key.
    async fn lock_key_events(&mut self, key: &str) -> Result<Option<String>>;

    /// Remember the newest event applied to a key.
    async fn store_key_event(&mut self, event: &KeyEvent) -> Result<()>;

    async fn commit(self: Box<Self>) -> Result<()>;
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub sweep_id: Option<Uuid>,
    pub finding: String,
    pub action: String,
    pub doc_id: String,
    pub key: String,
    pub old_status: Option<String>,
    pub new_status: Option<String>,
    pub detail: String,
}

/// The newest event applied to one key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyEvent {
    pub key: String,
    pub sequencer: Option<String>,
    pub kind: &'static str,
    pub time: Option<DateTime<Utc>>,
}

/// A row of the sweep history.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRecord {
    pub id: Uuid,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub bucket: String,
    pub prefix: String,
    pub objects_listed: u64,
    pub records_scanned: u64,
    pub counts: serde_json::Value,
    pub outcome: &'static str,
    pub error: Option<String>,
}
