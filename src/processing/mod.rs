//! Post-processing: the hooks that run after an upload is confirmed, and the workers that run
//! them from the durable job table with retries.

pub mod hook;
pub mod worker;

use crate::catalog::{AuditEntry, Catalog};
use crate::error::{Error, Result};
use crate::execute::AfterUpload;
use crate::model::{JobState, Status, key_of};
use chrono::{DateTime, Utc};
use std::sync::Mutex;
use std::time::Duration;

/// Where the workers read the time: the system clock, or a hand-moved one in tests, so that
/// backoff and leases are checked without sleeping.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to.
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(start))
    }

    pub fn advance(&self, by: Duration) {
        if let Ok(mut now) = self.0.lock() {
            *now += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
            .lock()
            .map(|now| *now)
            .unwrap_or_else(|e| *e.into_inner())
    }
}

/// What `retry` does with a doc whose job is running: a second run beside it is never started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfRunning {
    /// An error naming the doc (a doc the operator named).
    Refuse,
    /// A line in `Retried::skipped`, and on to the next doc (`retry --failed`).
    Skip,
}

/// What `retry` did: one line per doc.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retried {
    pub retried: Vec<String>,
    pub skipped: Vec<String>,
}

/// Put docs back in line with a fresh attempt budget (`reconcile retry`): `failed` (or still
/// `uploaded`) docs become `uploaded` again and their job is queued, or with no hook configured
/// they are marked `processed`. Each change is audited.
pub async fn retry(
    catalog: &dyn Catalog,
    key_prefix: &str,
    after_upload: AfterUpload,
    ids: &[String],
    if_running: IfRunning,
) -> Result<Retried> {
    let mut done = Retried::default();
    for id in ids {
        let mut tx = catalog.begin().await?;
        let record = tx
            .lock_record(id)
            .await?
            .ok_or_else(|| Error::Usage(format!("no doc with id {id:?}")))?;
        if !matches!(record.status, Some(Status::Failed | Status::Uploaded)) {
            return Err(Error::Usage(format!(
                "doc {id:?} is {:?}: only failed or uploaded docs can be retried",
                record.raw_status
            )));
        }
        if let Some(job) = tx.lock_job(id).await?
            && job.state == JobState::Running
        {
            let line = format!(
                "doc {id:?} is not retried: its job is running (attempt {}, leased by {} until {}); \
                 retry it once that run has ended",
                job.attempts,
                job.leased_by.as_deref().unwrap_or("?"),
                job.lease_until
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "?".into())
            );
            match if_running {
                IfRunning::Refuse => return Err(Error::Usage(line)),
                IfRunning::Skip => {
                    done.skipped.push(line);
                    continue;
                }
            }
        }
        let Some(name) = record.key.as_deref() else {
            return Err(Error::Usage(format!(
                "doc {id:?} has no key (its key column is empty): no object to process"
            )));
        };
        let key = key_of(key_prefix, name);
        let now = Utc::now();
        let new = match after_upload {
            AfterUpload::MarkProcessed => {
                tx.set_status(id, Status::Processed).await?;
                Status::Processed
            }
            AfterUpload::Enqueue => {
                if record.status != Some(Status::Uploaded) {
                    tx.set_status(id, Status::Uploaded).await?;
                }
                tx.enqueue_job(id, &key, None, now).await?;
                Status::Uploaded
            }
        };
        tx.audit(&AuditEntry {
            at: now,
            sweep_id: None,
            finding: "retry".into(),
            action: "retry".into(),
            doc_id: id.clone(),
            key,
            old_status: Some(record.raw_status.clone()),
            new_status: Some(new.as_str().into()),
            detail: "re-enqueued by an operator with a fresh attempt budget".into(),
        })
        .await?;
        tx.commit().await?;
        done.retried
            .push(format!("{id}: {} -> {new}", record.raw_status));
    }
    Ok(done)
}

/// The retry schedule: exponential from `base`, capped at `max`, with full jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The longest wait after the `failures`-th failed attempt: `min(max, base * 2^(failures-1))`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The wait before the next attempt; `jitter` in `[0, 1)` picks where in `[0, ceiling]`.
    /// Full jitter spreads the retries of many docs that failed together.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        self.ceiling(failures).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_base_to_max() {
        let p = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_secs(10),
            max: Duration::from_secs(60),
        };
        let ceilings: Vec<u64> = (1..=6).map(|n| p.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [10, 20, 40, 60, 60, 60]);
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(20));
        assert_eq!(p.delay(3, 0.0), Duration::ZERO);
        assert_eq!(p.delay(200, 1.0), Duration::from_secs(60));
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let start = Utc::now();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - start, chrono::Duration::seconds(90));
    }
}
