//! The processing worker. `try_execute_task` claims one due job, runs the hook, and records the
//! result; `run` is a thin loop around it. Tests drive `try_execute_task` directly, on a manual
//! clock, so no test sleeps for a backoff.

use super::hook::{Call, Hook, HookError, bounded};
use super::{Clock, RetryPolicy};
use crate::catalog::{AuditEntry, Catalog};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::model::{Job, JobState, Status};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct Worker {
    /// Names this worker in job leases (`host:pid:n`).
    pub id: String,
    pub catalog: Arc<dyn Catalog>,
    pub hook: Arc<Hook>,
    /// The bucket name the hook is told.
    pub bucket: String,
    pub retry: RetryPolicy,
    /// How long a claim holds; longer than the hook's timeout, so a live worker never loses it.
    pub lease: Duration,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

/// What one call of `try_execute_task` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No job was due.
    Empty,
    /// The hook succeeded; the doc is `processed`.
    Processed { id: String },
    /// The hook failed; the next attempt waits until `at`.
    Retrying { id: String, at: DateTime<Utc> },
    /// The hook failed `max_attempts` times; the doc is `failed`.
    Exhausted { id: String },
    /// The doc is no longer `uploaded` (processed, deleted, missing...): nothing to run.
    Cancelled { id: String },
    /// Another worker took the job over (this one outlived its lease); its result was dropped.
    LeaseLost { id: String },
}

impl Worker {
    pub async fn try_execute_task(&self) -> Result<Outcome> {
        let Some(job) = self
            .catalog
            .claim_job(&self.id, self.clock.now(), self.lease)
            .await?
        else {
            return Ok(Outcome::Empty);
        };
        let record = self.catalog.record(&job.doc_id).await?;
        if record.as_ref().and_then(|r| r.status) != Some(Status::Uploaded) {
            return self.cancel(job).await;
        }
        // The claim counted this attempt. Past the budget, the earlier attempts never reported
        // back (the hook killed its worker, or outlived its lease): give up without running it.
        let attempt = job.attempts;
        if attempt > self.retry.max_attempts {
            let error = HookError::Failed(format!(
                "no result from the last attempt: its worker ended or outlived its lease \
                 (a hook that crashes the daemon, or runs past processing.timeout + \
                 processing.lease_grace?); last error: {}",
                job.last_error.as_deref().unwrap_or("none")
            ));
            return self.record(job, self.retry.max_attempts, Err(error)).await;
        }
        let result = self
            .hook
            .call(&Call {
                id: &job.doc_id,
                key: &job.key,
                bucket: &self.bucket,
                size: job.size,
                etag: job.etag.as_deref(),
                attempt,
            })
            .await;
        let label = result.as_ref().map_or_else(HookError::label, |()| "ok");
        self.metrics
            .processing_attempts
            .with_label_values(&[label])
            .inc();
        self.record(job, attempt, result).await
    }

    /// Write an attempt's result: the job, the record and the audit log in one transaction,
    /// provided the lease is still this worker's.
    async fn record(
        &self,
        job: Job,
        attempt: u32,
        result: std::result::Result<(), HookError>,
    ) -> Result<Outcome> {
        let id = job.doc_id.clone();
        let mut tx = self.catalog.begin().await?;
        let Some(mut current) = tx.lock_job(&id).await? else {
            return Ok(Outcome::LeaseLost { id });
        };
        if current.state != JobState::Running || current.leased_by.as_deref() != Some(&self.id) {
            tracing::warn!(doc_id = %id, "job taken over by another worker; dropping this result");
            return Ok(Outcome::LeaseLost { id });
        }
        let now = self.clock.now();
        let record = tx.lock_record(&id).await?;
        let uploaded = record.as_ref().and_then(|r| r.status) == Some(Status::Uploaded);
        current.attempts = attempt;
        current.lease_until = None;
        current.leased_by = None;
        let (outcome, status_change) = match result {
            Ok(()) => {
                current.state = JobState::Done;
                current.last_error = None;
                (
                    Outcome::Processed { id: id.clone() },
                    uploaded.then_some(("processing", "process", Status::Processed)),
                )
            }
            Err(error) => {
                current.last_error = Some(bounded(&error.to_string()));
                if attempt >= self.retry.max_attempts {
                    current.state = JobState::Failed;
                    tracing::warn!(doc_id = %id, attempts = attempt, error = %error,
                        "processing gave up");

                    (
                        Outcome::Exhausted { id: id.clone() },
                        uploaded.then_some(("processing_exhausted", "fail", Status::Failed)),
                    )
                } else {
                    let delay = self.retry.delay(attempt, fastrand::f64());
                    let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
                    current.state = JobState::Queued;
                    current.next_attempt_at = at;
                    tracing::info!(doc_id = %id, attempt, error = %error,
                        retry_in_s = delay.as_secs(), "processing failed; will retry");
                    (Outcome::Retrying { id: id.clone(), at }, None)
                }
            }
        };
        if let (Some((finding, action, status)), Some(record)) = (status_change, &record) {
            tx.set_status(&id, status).await?;
            tx.audit(&AuditEntry {
                at: now,
                sweep_id: None,
                finding: finding.into(),
                action: action.into(),
                doc_id: id.clone(),
                key: current.key.clone(),
                old_status: Some(record.raw_status.clone()),
                new_status: Some(status.as_str().into()),
                detail: format!(
                    "attempt {attempt} of {}{}",
                    self.retry.max_attempts,
                    current
                        .last_error
                        .as_deref()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                ),
            })
            .await?;
        }
        tx.save_job(&current).await?;
        tx.commit().await?;
        if matches!(outcome, Outcome::Exhausted { .. }) {
            self.metrics.action(
                crate::model::FindingKind::ProcessingExhausted,
                crate::model::Action::Fail,
                &crate::model::Outcome::Applied,
            );
        }
        Ok(outcome)
    }

    /// The doc moved on without us: close the job without running an attempt (the one the claim
    /// counted is given back).
    async fn cancel(&self, job: Job) -> Result<Outcome> {
        let id = job.doc_id.clone();
        let mut tx = self.catalog.begin().await?;
        if let Some(mut current) = tx.lock_job(&id).await?
            && current.leased_by.as_deref() == Some(&self.id)
        {
            current.state = JobState::Done;
            current.attempts = current.attempts.saturating_sub(1);
            current.lease_until = None;
            current.leased_by = None;
            current.last_error = Some("cancelled: the doc is no longer uploaded".into());
            tx.save_job(&current).await?;
            tx.commit().await?;
        }
        Ok(Outcome::Cancelled { id })
    }

    /// Work until `shutdown`: a job in hand is finished first. Idle, check for due jobs every
    /// `idle`; on a database error, back off.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>, idle: Duration) {
        let mut backoff = crate::backoff::Backoff::new(idle, Duration::from_secs(60));
        while !*shutdown.borrow() {
            let pause = match self.try_execute_task().await {
                Ok(Outcome::Empty) => {
                    backoff.reset();
                    idle
                }
                Ok(_) => {
                    backoff.reset();
                    Duration::ZERO
                }
                Err(e) => {
                    tracing::error!(worker = %self.id, error = %e, "processing worker error");
                    backoff.next_delay()
                }
            };
            if let Ok(depth) = self.catalog.queue_depth().await {
                self.metrics
                    .processing_queue_depth
                    .set(i64::try_from(depth).unwrap_or(i64::MAX));
            }
            if !pause.is_zero() {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}
