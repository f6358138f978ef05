//! The retry policy of one event, shared by the SQS poller and the folder watcher: an event
//! whose effect fails because a dependency (the database, the bucket) is down is held, and
//! applied again once the dependency answers; an error of the event's own is given back to the
//! caller (the SQS poller leaves the message to the queue's redrive policy).

use super::effect::{Effect, Effects};
use super::gate::Gate;
use super::parse::S3Event;
use crate::backoff::Backoff;
use crate::error::{Dependency, Error, Result};
use crate::metrics::Metrics;
use chrono::Utc;
use std::time::Duration;
use tokio::sync::watch;

/// Probing a dependency that is down: full jitter from 1 s up to 30 s between probes.
const PROBE_BASE: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(30);

/// How many times an event may fail while its dependency answers the probe at once before it is
/// left to the queue: an error that outlives the outage is the event's own.
pub const FAILURES_WHILE_UP: u32 = 3;

/// What becomes of an event whose effect failed: the retry policy, as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// A dependency failed, not the message: keep the batch, close the gate, wait until the
    /// dependency answers, then apply the event again.
    RetryWhenUp(Dependency),
    /// The message meets an error of its own: leave it in the queue, to be received again and,
    /// after the queue's maxReceiveCount, moved to its dead-letter queue.
    LeaveToRedrive,
}

/// The policy: `failed_while_up` counts this event's failures right after its dependency
/// answered a probe.
pub fn on_failure(error: &Error, failed_while_up: u32) -> OnFailure {
    match error.dependency() {
        Some(dependency) if failed_while_up < FAILURES_WHILE_UP => {
            OnFailure::RetryWhenUp(dependency)
        }
        _ => OnFailure::LeaveToRedrive,
    }
}

/// How applying an event under the retry policy ended.
pub enum Held {
    Applied,
    /// An error of the event's own (counted as `effect_failed`); the caller says what becomes of it.
    Failed(Error),
    /// A stop came while a dependency was awaited.
    Stopped,
}

/// Run `attempt` (one event's effect) again after each dependency failure, once the dependency
/// answers, as `on_failure` says: counted as `dependency_down`, logged with `holding` saying
/// what waits meanwhile.
pub async fn apply_holding<F, Fut>(
    effects: &Effects,
    gate: &Gate,
    metrics: &Metrics,
    key: &str,
    holding: &str,
    stop: &mut watch::Receiver<bool>,
    mut attempt: F,
) -> Held
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut failed_while_up = 0;
    loop {
        let error = match attempt().await {
            Ok(()) => return Held::Applied,
            Err(error) => error,
        };
        match on_failure(&error, failed_while_up) {
            OnFailure::LeaveToRedrive => {
                metrics
                    .events_failed
                    .with_label_values(&["effect_failed"])
                    .inc();
                return Held::Failed(error);
            }
            OnFailure::RetryWhenUp(dependency) => {
                metrics
                    .events_failed
                    .with_label_values(&["dependency_down"])
                    .inc();
                tracing::warn!(key, error = %error, dependency = dependency.as_str(),
                    "event could not be applied; {holding} until the {} answers",
                    dependency.as_str());
                match await_recovery(effects, gate, dependency, stop).await {
                    None => return Held::Stopped,
                    Some(true) => failed_while_up += 1,
                    Some(false) => {}
                }
            }
        }
    }
}

/// Count and log what one event did; `id` names where it came from (a message id, a path).
pub fn took_effect(metrics: &Metrics, id: &str, event: &S3Event, effect: Effect) {
    match effect {
        Effect::Applied { kind, action } => {
            metrics.action(kind, action, &crate::model::Outcome::Applied);
            if let Some(at) = event.time {
                let lag = (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
                metrics.event_lag.observe(lag);
            }
            tracing::info!(message_id = id, key = %event.key, action = action.as_str(),
                "event applied");
        }
        Effect::Ignored(reason) => {
            metrics.events_ignored.with_label_values(&[reason]).inc();
            tracing::debug!(message_id = id, key = %event.key, reason, "event ignored");
        }
    }
}

/// Keep the gate closed and probe `dependency` with backoff until it answers: `Some(true)`
/// when the first probe answered (it may never have been down), `Some(false)` after an
/// outage, `None` on a stop.
async fn await_recovery(
    effects: &Effects,
    gate: &Gate,
    dependency: Dependency,
    stop: &mut watch::Receiver<bool>,
) -> Option<bool> {
    let _closed = gate.close(dependency);
    let mut backoff = Backoff::new(PROBE_BASE, PROBE_MAX);
    let mut probes = 0u32;
    loop {
        tokio::select! {
            _ = crate::stop::requested(stop) => return None,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
        probes += 1;
        let answer = match dependency {
            Dependency::Database => effects.catalog.ping().await,
            Dependency::Bucket => effects.bucket.ping().await,
        };
        match answer {
            Ok(()) if probes == 1 => return Some(true),
            Ok(()) => {
                tracing::warn!(
                    dependency = dependency.as_str(),
                    probes,
                    "the {} answers again; resuming",
                    dependency.as_str()
                );
                return Some(false);
            }
            Err(e) => tracing::debug!(dependency = dependency.as_str(), error = %e,
                "still no answer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_dependency_holds_the_event_and_anything_else_goes_to_the_redrive_policy() {
        let database = Error::database("locking the doc", sqlx::Error::PoolTimedOut);
        let bucket = Error::storage("HEAD s3://uploads/a", "cannot reach the endpoint");
        let own = Error::Usage("an error of the message's own".into());
        let cases = [
            (&database, 0, OnFailure::RetryWhenUp(Dependency::Database)),
            (&bucket, 0, OnFailure::RetryWhenUp(Dependency::Bucket)),
            (
                &bucket,
                FAILURES_WHILE_UP - 1,
                OnFailure::RetryWhenUp(Dependency::Bucket),
            ),
            // It keeps failing while the dependency answers: the error is the event's own.
            (&database, FAILURES_WHILE_UP, OnFailure::LeaveToRedrive),
            (&own, 0, OnFailure::LeaveToRedrive),
        ];
        for (error, failed_while_up, expected) in cases {
            assert_eq!(
                on_failure(error, failed_while_up),
                expected,
                "{error} after {failed_while_up} failures while up"
            );
        }
    }
}
