//! The catalog: the app table, read through the configured mapping, and the reconciler's own
//! tables. The engine sees only the [`Catalog`] and [`Transaction`] traits, so another database
//! fits without touching it.

pub mod deadline;
pub mod sql;

use crate::error::Result;
use crate::model::{IdKind, Job, MultipartUpload, ObjectMeta, ObjectVersion, Record, Status};
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    /// Every record: first those without a key (`Record::key` is `None`), then the others in
    /// byte order of their keys (UTF-8 bytes, as S3 orders keys). The stream ends with an
    /// error, never early, when the query fails.
    fn records(&self) -> BoxStream<'_, Result<Record>>;

    /// One record by id.
    async fn record(&self, id: &str) -> Result<Option<Record>>;

    /// The record whose key below the prefix is `key` (the id, or `database.key_column`).
    async fn record_at(&self, key: &str) -> Result<Option<Record>>;

    /// The NOT NULL columns without a default that a record created by adoption would leave
    /// without a value (none are written but its key, status, unfilled times and
    /// `[database.adopt_values]`).
    fn adoption_gaps(&self) -> Vec<String> {
        Vec::new()
    }

    /// A write transaction; dropping it without `commit` rolls it back.
    async fn begin(&self) -> Result<Box<dyn Transaction + '_>>;

    /// A write transaction of the reconciler's own tables only (audit rows, intents): on SQLite
    /// it leaves the app's database file unlocked (the reconciler's tables are a file of their
    /// own), so the app's writers never wait on its commit. `begin` where the catalog says not.
    async fn begin_own(&self) -> Result<Box<dyn Transaction + '_>> {
        self.begin().await
    }

    /// Create or upgrade the reconciler's own tables.
    async fn migrate(&self) -> Result<()>;

    /// Record that an applying sweep started. Called under the sweep lock: any other sweep of
    /// this scope still `running` was left so by a process that died, and is closed as
    /// `interrupted`.
    async fn sweep_started(&self, sweep: &SweepRecord) -> Result<()>;

    /// Record how an applying sweep ended.
    async fn sweep_finished(&self, sweep: &SweepRecord) -> Result<()>;

    /// A cheap round trip: is the database there?
    async fn ping(&self) -> Result<()>;

    /// Take this deployment's sweep lock if no one holds it: only one replica sweeps a scope at a
    /// time. `None` when another holds it. The lock goes with the guard's session.
    async fn try_sweep_lock(&self) -> Result<Option<Box<dyn SweepLock>>>;

    /// Claim the next due job (queued and due, or running with an expired lease) for `worker`,
    /// leasing it until `now + lease`. `FOR UPDATE SKIP LOCKED`: workers never wait on each other.
    /// The claim counts the attempt (the returned job's `attempts` includes it): a hook that kills
    /// its worker, or outlives its lease, still spends its budget.
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

    /// What the key column (the id, unless `database.key_column`) holds, learned from the
    /// database: which keys below the prefix can name a record.
    fn key_kind(&self) -> IdKind {
        IdKind::Text
    }

    /// How many write transactions the executor may hold at once without starving the rest of
    /// the process (the event path, the workers) of connections. One unless the catalog says.
    fn concurrent_writes(&self) -> usize {
        1
    }

    /// Ids to cut the bucket's listing at, so that its key ranges can be listed at once: every
    /// `every`th id in byte order. Any ids would give the same listing (they only balance its
    /// ranges), so a catalog that cannot pick them cheaply gives none.
    async fn split_points(&self, every: u64) -> Result<Vec<String>> {
        let _ = every;
        Ok(Vec::new())
    }

    /// Delete what is older than the retention (finished jobs, event states, noted objects), in
    /// batches. Returns how many rows of each went.
    async fn prune(&self, retention: &Retention, now: DateTime<Utc>) -> Result<Pruned>;

    /// The audit trail of one doc, oldest first; `None` when the reconciler's tables do not exist
    /// yet (nothing was ever applied).
    async fn audit_trail(&self, id: &str, key: &str) -> Result<Option<Vec<AuditEntry>>>;

    /// What the reconciler noted of the object at `key` when it last adopted it (size, ETag,
    /// modification time), if it did and retention has not pruned it since; `None` too before
    /// the reconciler's tables exist. A catalog that notes nothing answers `None`.
    async fn noted_object(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let _ = key;
        Ok(None)
    }

    /// Record, and commit on its own, the bucket change an action is about to make. Each change
    /// has its own intent (its `id`): several changes of one key (an orphan's quarantine and an
    /// upload's abort, two uploads) may be under way at once.
    async fn note_intent(&self, intent: &Intent) -> Result<()>;

    /// This deployment's intents still recorded: their process ended (or their commit failed)
    /// somewhere between noting them and auditing their change.
    async fn intents(&self) -> Result<Vec<Intent>>;
}

/// The deployment a catalog serves: its app table (as configured, quoted), bucket and prefix.
/// Several deployments may share one database; every row of the reconciler's own tables carries
/// its deployment's scope, and each deployment reads and writes only its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub table: String,
    pub bucket: String,
    pub prefix: String,
}

impl Scope {
    /// The scope's name, as stored in each row and as the sweep lock is named:
    /// `"docs"/uploads/docs/`. Unambiguous: a quoted table name ends at its closing quote, and
    /// bucket names hold no `/`.
    pub fn name(&self) -> String {
        format!("{}/{}/{}", self.table, self.bucket, self.prefix)
    }
}

/// How long the reconciler keeps the rows that only grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// Jobs `done` (processed or cancelled) this long ago.
    pub finished_jobs: std::time::Duration,
    /// Per-key event state last written this long ago.
    pub key_events: std::time::Duration,
    /// Objects noted at adoption this long ago.
    pub objects: std::time::Duration,
}

impl Retention {
    /// What housekeeping deletes at `now`, the same on every database: each table, the condition
    /// on its age column, and the cutoff. Failed jobs stay: the sweep reads them
    /// (processing_exhausted) and `retry` resets them.
    pub fn targets(&self, now: DateTime<Utc>) -> [PruneTarget; 3] {
        let before =
            |age: std::time::Duration| now - chrono::Duration::from_std(age).unwrap_or_default();
        [
            PruneTarget {
                table: "reconciler.jobs",
                older: "state = 'done' AND updated_at",
                cutoff: before(self.finished_jobs),
            },
            PruneTarget {
                table: "reconciler.key_events",
                older: "updated_at",
                cutoff: before(self.key_events),
            },
            PruneTarget {
                table: "reconciler.objects",
                older: "noted_at",
                cutoff: before(self.objects),
            },
        ]
    }
}

/// One table to prune: rows of this scope where `older < cutoff`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PruneTarget {
    pub table: &'static str,
    /// An SQL condition ending in the age column, valid in both dialects.
    pub older: &'static str,
    pub cutoff: DateTime<Utc>,
}

/// What one pruning pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pruned {
    pub finished_jobs: u64,
    pub key_events: u64,
    pub objects: u64,
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

    /// `lock_record` for many ids at once: each record as it is now, in the order of `ids`.
    async fn lock_records(&mut self, ids: &[String]) -> Result<Vec<Option<Record>>> {
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            records.push(self.lock_record(id).await?);
        }
        Ok(records)
    }

    /// `set_status` for many records at once.
    async fn set_statuses(&mut self, changes: &[(String, Status)]) -> Result<()> {
        for (id, status) in changes {
            self.set_status(id, *status).await?;
        }
        Ok(())
    }

    /// `audit` for many entries at once.
    async fn audit_all(&mut self, entries: &[AuditEntry]) -> Result<()> {
        for entry in entries {
            self.audit(entry).await?;
        }
        Ok(())
    }

    /// [`Catalog::record_at`], locked like `lock_record`.
    async fn lock_record_at(&mut self, key: &str) -> Result<Option<Record>>;

    /// Create the record of the object at `key` (below the prefix); its id, or `None` when one
    /// with that id exists already.
    async fn create_record(&mut self, key: &str, status: Status) -> Result<Option<String>>;

    /// [`Catalog::noted_object`], read in this transaction.
    async fn noted_object(&mut self, key: &str) -> Result<Option<ObjectMeta>> {
        let _ = key;
        Ok(None)
    }

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

    /// Forget the intent `id`: this transaction audits its change (or it did not happen).
    async fn clear_intent(&mut self, id: &str) -> Result<()>;

    async fn commit(self: Box<Self>) -> Result<()>;
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// A bucket change an action is about to make: a quarantine's move, a delete or an abort. The
/// bucket cannot roll back with the transaction that audits the change, so the intent is
/// committed first, on its own, and cleared in that transaction. One still recorded later names a
/// change whose audit row may be missing: its process died between the bucket call and the commit
/// (or the commit failed). The next applying sweep settles it (`Executor::settle_intents`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// This change's own name, unique in its scope (a UUID; the key, for an intent noted before
    /// intents had ids).
    #[serde(default)]
    pub id: String,
    pub change: BucketChange,
    /// The audit row the change gets.
    pub entry: AuditEntry,
}

/// What an intent is about to do to the bucket, with what its decision saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketChange {
    /// Copy `object` to `target`, then delete it.
    Quarantine {
        object: ObjectMeta,
        target: String,
    },
    Delete {
        object: ObjectMeta,
    },
    /// Abort a multipart upload in progress.
    Abort {
        upload: MultipartUpload,
    },
    /// Remove the delete `marker` over `version`, so that it is current again.
    Restore {
        marker: ObjectVersion,
        version: ObjectVersion,
    },
}

impl Intent {
    /// The key the change is at.
    pub fn key(&self) -> &str {
        match &self.change {
            BucketChange::Quarantine { object, .. } | BucketChange::Delete { object } => {
                &object.key
            }
            BucketChange::Abort { upload } => &upload.key,
            BucketChange::Restore { marker, .. } => &marker.key,
        }
    }

    /// As `reconciler.intents` stores it: JSON, its audit detail redacted like every free text
    /// of the reconciler's tables.
    pub(crate) fn to_json(&self) -> std::result::Result<String, sqlx::Error> {
        let mut stored = self.clone();
        stored.entry.detail = crate::redact::text(&stored.entry.detail);
        serde_json::to_string(&stored).map_err(|e| sqlx::Error::Encode(e.into()))
    }

    /// Intents as `reconciler.intents` stores them (id and JSON), read back.
    pub(crate) fn from_json(rows: &[(String, String)]) -> Result<Vec<Self>> {
        rows.iter()
            .map(|(id, text)| {
                serde_json::from_str(text).map(|intent: Intent| Intent {
                    id: id.clone(),
                    ..intent
                })
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| {
                let e = sqlx::Error::ColumnDecode {
                    index: "intent".into(),
                    source: Box::new(e),
                };
                crate::error::Error::database("reading reconciler.intents", e)
            })
    }
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
