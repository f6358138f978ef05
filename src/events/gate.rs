//! The pollers' shared gate. While any poller waits for a dependency (the database, the bucket)
//! to answer again, the gate is closed: no poller receives a new batch, so messages are not
//! received again and again (and dead-lettered) during an outage, and `/readyz` says why. It
//! also counts the pollers that cannot reach the queue itself, for `/readyz` to say so.

use crate::error::Dependency;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

/// How many pollers wait for each dependency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Waiting {
    database: usize,
    bucket: usize,
}

impl Waiting {
    fn slot(&mut self, dependency: Dependency) -> &mut usize {
        match dependency {
            Dependency::Database => &mut self.database,
            Dependency::Bucket => &mut self.bucket,
        }
    }

    fn awaited(&self) -> Option<Dependency> {
        if self.database > 0 {
            Some(Dependency::Database)
        } else if self.bucket > 0 {
            Some(Dependency::Bucket)
        } else {
            None
        }
    }
}

pub struct Gate {
    waiting: watch::Sender<Waiting>,
    /// Pollers whose last receive failed: the queue does not answer them. It closes nothing (a
    /// poller backs off by itself, and the next receive is the probe), but `/readyz` says it.
    unreached: AtomicUsize,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            waiting: watch::Sender::new(Waiting::default()),
            unreached: AtomicUsize::new(0),
        }
    }
}

/// One poller cannot reach the queue until this is dropped.
#[must_use = "the queue counts as reached again when this is dropped"]
pub struct Unreached<'a> {
    gate: &'a Gate,
}

impl Drop for Unreached<'_> {
    fn drop(&mut self) {
        self.gate.unreached.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The gate stays closed for `dependency` until this is dropped.
#[must_use = "the gate opens again when this is dropped"]
pub struct Closed<'a> {
    gate: &'a Gate,
    dependency: Dependency,
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        let dependency = self.dependency;
        self.gate.waiting.send_modify(|w| {
            let slot = w.slot(dependency);
            *slot = slot.saturating_sub(1);
        });
    }
}

impl Gate {
    /// Close the gate while the caller waits for `dependency`.
    pub fn close(&self, dependency: Dependency) -> Closed<'_> {
        self.waiting.send_modify(|w| *w.slot(dependency) += 1);
        Closed {
            gate: self,
            dependency,
        }
    }

    /// The dependency some poller waits for (the database before the bucket), if any.
    pub fn awaited(&self) -> Option<Dependency> {
        self.waiting.borrow().awaited()
    }

    /// A poller's receive failed: the queue counts as unreached until the guard is dropped.
    pub fn queue_unreached(&self) -> Unreached<'_> {
        self.unreached.fetch_add(1, Ordering::SeqCst);
        Unreached { gate: self }
    }

    /// Whether every poller's last receive succeeded.
    pub fn queue_reached(&self) -> bool {
        self.unreached.load(Ordering::SeqCst) == 0
    }

    /// Resolves once no poller waits for any dependency.
    pub async fn opened(&self) {
        let mut waiting = self.waiting.subscribe();
        // The sender is `self`: it cannot be gone while this borrows it.
        let _ = waiting.wait_for(|w| w.awaited().is_none()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn the_gate_opens_only_when_the_last_waiter_is_done() {
        let gate = Arc::new(Gate::default());
        assert_eq!(gate.awaited(), None);
        tokio::time::timeout(Duration::from_secs(1), gate.opened())
            .await
            .expect("an open gate lets through at once");

        let bucket = gate.close(Dependency::Bucket);
        let database = gate.close(Dependency::Database);
        assert_eq!(gate.awaited(), Some(Dependency::Database));
        let through = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.opened().await })
        };
        drop(database);
        assert_eq!(gate.awaited(), Some(Dependency::Bucket));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!through.is_finished(), "the gate opened with a waiter left");
        drop(bucket);
        tokio::time::timeout(Duration::from_secs(1), through)
            .await
            .expect("the gate opened (likely deadlocked)")
            .expect("join");
        assert_eq!(gate.awaited(), None);
    }

    #[test]
    fn the_queue_counts_as_reached_again_only_when_every_failing_poller_received() {
        let gate = Gate::default();
        assert!(gate.queue_reached());
        let one = gate.queue_unreached();
        let two = gate.queue_unreached();
        drop(one);
        assert!(!gate.queue_reached(), "a poller still cannot receive");
        drop(two);
        assert!(gate.queue_reached());
        // Failing receives close nothing: the pollers back off by themselves.
        let _unreached = gate.queue_unreached();
        assert_eq!(gate.awaited(), None);
    }
}
