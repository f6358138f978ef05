//! A client-side deadline on every call to a networked catalog. A connection that goes silent (a
//! network path that drops packets, a proxy that hangs, a server frozen mid-answer) is never
//! answered and never closed: without a deadline the query's await, and the sweep, event or job
//! behind it, waits forever. Each call (each row of a stream, each statement of a transaction, its
//! commit) gets `limit`; past it the call fails naming the database, its connection is dropped
//! unfinished (sqlx closes a connection it cannot trust), and the caller's usual error path
//! (the sweep fails, the event stays on the queue, the job is retried) recovers.

use super::{
    AuditEntry, Catalog, Intent, KeyEvent, Pruned, Retention, SweepLock, SweepRecord, Transaction,
};
use crate::error::{Error, Result};
use crate::model::{IdKind, Job, ObjectMeta, Record, Status};
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use std::future::Future;
use std::time::Duration;

/// `inner`, with each call bounded by `limit`.
pub struct Deadline<C> {
    pub inner: C,
    pub limit: Duration,
    /// The database as errors name it (its URL, redacted).
    pub database: String,
}

/// What a call past its deadline fails with.
fn silent(database: &str, limit: Duration, what: &str) -> Error {
    Error::database(
        format!("{what} on {database}"),
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no answer within {}s (database.query_timeout): the connection went silent",
                limit.as_secs_f64()
            ),
        )),
    )
}

async fn within<T>(
    database: &str,
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => answer,
        Err(_) => Err(silent(database, limit, what)),
    }
}

impl<C> Deadline<C> {
    async fn within<T>(&self, what: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
        within(&self.database, self.limit, what, call).await
    }

    fn transaction<'a>(&'a self, inner: Box<dyn Transaction + 'a>) -> Box<dyn Transaction + 'a> {
        Box::new(DeadlineTransaction {
            inner,
            limit: self.limit,
            database: &self.database,
        })
    }
}

#[async_trait::async_trait]
impl<C: Catalog> Catalog for Deadline<C> {
    fn records(&self) -> BoxStream<'_, Result<Record>> {
        // Each row in bounded time; a stream that timed out ends with its error.
        stream::unfold(Some(self.inner.records()), move |rows| async move {
            let mut rows = rows?;
            match tokio::time::timeout(self.limit, rows.next()).await {
                Ok(Some(row)) => Some((row, Some(rows))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(silent(&self.database, self.limit, "reading the app table")),
                    None,
                )),
            }
        })
        .boxed()
    }

    async fn record(&self, id: &str) -> Result<Option<Record>> {
        self.within("reading a record", self.inner.record(id)).await
    }

    async fn record_at(&self, key: &str) -> Result<Option<Record>> {
        self.within("reading a record", self.inner.record_at(key))
            .await
    }

    fn adoption_gaps(&self) -> Vec<String> {
        self.inner.adoption_gaps()
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>> {
        let tx = self
            .within("starting a transaction", self.inner.begin())
            .await?;
        Ok(self.transaction(tx))
    }

    async fn begin_own(&self) -> Result<Box<dyn Transaction + '_>> {
        let tx = self
            .within("starting a transaction", self.inner.begin_own())
            .await?;
        Ok(self.transaction(tx))
    }

    async fn migrate(&self) -> Result<()> {
        self.within("migrating the reconciler's tables", self.inner.migrate())
            .await
    }

    async fn sweep_started(&self, sweep: &SweepRecord) -> Result<()> {
        self.within("recording the sweep", self.inner.sweep_started(sweep))
            .await
    }

    async fn sweep_finished(&self, sweep: &SweepRecord) -> Result<()> {
        self.within("recording the sweep", self.inner.sweep_finished(sweep))
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.within("a round trip", self.inner.ping()).await
    }

    async fn try_sweep_lock(&self) -> Result<Option<Box<dyn SweepLock>>> {
        let lock = self
            .within("taking the sweep lock", self.inner.try_sweep_lock())
            .await?;
        Ok(lock.map(|inner| {
            Box::new(DeadlineSweepLock {
                inner,
                limit: self.limit,
            }) as Box<dyn SweepLock>
        }))
    }

    async fn claim_job(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Job>> {
        self.within("claiming a job", self.inner.claim_job(worker, now, lease))
            .await
    }

    async fn job(&self, id: &str) -> Result<Option<Job>> {
        self.within("reading a job", self.inner.job(id)).await
    }

    async fn queue_depth(&self) -> Result<u64> {
        self.within("counting the jobs", self.inner.queue_depth())
            .await
    }

    async fn ids_with_status(&self, status: Status) -> Result<Vec<String>> {
        self.within("listing ids", self.inner.ids_with_status(status))
            .await
    }

    fn key_kind(&self) -> IdKind {
        self.inner.key_kind()
    }

    fn concurrent_writes(&self) -> usize {
        self.inner.concurrent_writes()
    }

    async fn split_points(&self, every: u64) -> Result<Vec<String>> {
        self.within("picking split points", self.inner.split_points(every))
            .await
    }

    async fn prune(&self, retention: &Retention, now: DateTime<Utc>) -> Result<Pruned> {
        self.within("pruning", self.inner.prune(retention, now))
            .await
    }

    async fn audit_trail(&self, id: &str, key: &str) -> Result<Option<Vec<AuditEntry>>> {
        self.within("reading the audit log", self.inner.audit_trail(id, key))
            .await
    }

    async fn noted_object(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.within("reading a noted object", self.inner.noted_object(key))
            .await
    }

    async fn note_intent(&self, intent: &Intent) -> Result<()> {
        self.within("noting an intent", self.inner.note_intent(intent))
            .await
    }

    async fn intents(&self) -> Result<Vec<Intent>> {
        self.within("reading the intents", self.inner.intents())
            .await
    }
}

struct DeadlineSweepLock {
    inner: Box<dyn SweepLock>,
    limit: Duration,
}

#[async_trait::async_trait]
impl SweepLock for DeadlineSweepLock {
    async fn release(self: Box<Self>) {
        // A lock not released in time goes with its session.
        if tokio::time::timeout(self.limit, self.inner.release())
            .await
            .is_err()
        {
            tracing::warn!("the sweep lock's release went unanswered; it goes with its session");
        }
    }
}

struct DeadlineTransaction<'a> {
    inner: Box<dyn Transaction + 'a>,
    limit: Duration,
    database: &'a str,
}

#[async_trait::async_trait]
impl Transaction for DeadlineTransaction<'_> {
    async fn lock_record(&mut self, id: &str) -> Result<Option<Record>> {
        within(
            self.database,
            self.limit,
            "locking a record",
            self.inner.lock_record(id),
        )
        .await
    }

    async fn set_status(&mut self, id: &str, status: Status) -> Result<()> {
        within(
            self.database,
            self.limit,
            "setting a status",
            self.inner.set_status(id, status),
        )
        .await
    }

    async fn lock_records(&mut self, ids: &[String]) -> Result<Vec<Option<Record>>> {
        within(
            self.database,
            self.limit,
            "locking records",
            self.inner.lock_records(ids),
        )
        .await
    }

    async fn set_statuses(&mut self, changes: &[(String, Status)]) -> Result<()> {
        within(
            self.database,
            self.limit,
            "setting statuses",
            self.inner.set_statuses(changes),
        )
        .await
    }

    async fn audit_all(&mut self, entries: &[AuditEntry]) -> Result<()> {
        within(
            self.database,
            self.limit,
            "writing the audit log",
            self.inner.audit_all(entries),
        )
        .await
    }

    async fn lock_record_at(&mut self, key: &str) -> Result<Option<Record>> {
        within(
            self.database,
            self.limit,
            "locking a record",
            self.inner.lock_record_at(key),
        )
        .await
    }

    async fn create_record(&mut self, key: &str, status: Status) -> Result<Option<String>> {
        within(
            self.database,
            self.limit,
            "creating a record",
            self.inner.create_record(key, status),
        )
        .await
    }

    async fn noted_object(&mut self, key: &str) -> Result<Option<ObjectMeta>> {
        within(
            self.database,
            self.limit,
            "reading a noted object",
            self.inner.noted_object(key),
        )
        .await
    }

    async fn note_object(&mut self, object: &ObjectMeta) -> Result<()> {
        within(
            self.database,
            self.limit,
            "noting an object",
            self.inner.note_object(object),
        )
        .await
    }

    async fn audit(&mut self, entry: &AuditEntry) -> Result<()> {
        within(
            self.database,
            self.limit,
            "writing the audit log",
            self.inner.audit(entry),
        )
        .await
    }

    async fn enqueue_job(
        &mut self,
        id: &str,
        key: &str,
        object: Option<&ObjectMeta>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        within(
            self.database,
            self.limit,
            "queueing a job",
            self.inner.enqueue_job(id, key, object, now),
        )
        .await
    }

    async fn lock_job(&mut self, id: &str) -> Result<Option<Job>> {
        within(
            self.database,
            self.limit,
            "locking a job",
            self.inner.lock_job(id),
        )
        .await
    }

    async fn save_job(&mut self, job: &Job) -> Result<()> {
        within(
            self.database,
            self.limit,
            "writing a job",
            self.inner.save_job(job),
        )
        .await
    }

    async fn lock_key_events(&mut self, key: &str) -> Result<Option<String>> {
        within(
            self.database,
            self.limit,
            "locking a key's events",
            self.inner.lock_key_events(key),
        )
        .await
    }

    async fn store_key_event(&mut self, event: &KeyEvent) -> Result<()> {
        within(
            self.database,
            self.limit,
            "writing a key's events",
            self.inner.store_key_event(event),
        )
        .await
    }

    async fn clear_intent(&mut self, id: &str) -> Result<()> {
        within(
            self.database,
            self.limit,
            "clearing an intent",
            self.inner.clear_intent(id),
        )
        .await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let DeadlineTransaction {
            inner,
            limit,
            database,
        } = *self;
        within(database, limit, "committing", inner.commit()).await
    }
}
