//! In-memory doubles of the `Catalog` and the `Bucket`, for tests that run the engine's real
//! decision code many thousand times (the convergence property). The conformance suites run every
//! case of the real adapters on them too (`catalog_conformance::<case>::memory`,
//! `bucket_conformance::<case>::memory`): that is what makes a history checked on them say
//! something about Postgres, SQLite, S3 and the folder.
//!
//! Besides the traits, each double lets a test do what the world around the reconciler does: the
//! app inserts a record, an upload lands, someone deletes an object. Their times come from a
//! [`Clock`] (a `ManualClock` in simulations), and a shared [`Schedule`] can make the simulated
//! process crash at a chosen operation, or let the world move just before one.

pub mod bucket;
pub mod catalog;

pub use bucket::MemoryBucket;
pub use catalog::MemoryDb;

use std::sync::Mutex;

/// A move of the world, run just before a chosen operation of the doubles.
pub type Meanwhile = Box<dyn FnOnce() + Send>;

/// What happens at the n-th operation of the doubles (every call of a `Catalog`, `Transaction` or
/// `Bucket` method counts one; the test-side methods count none): the simulated process crashes
/// there, or the world moves just before it. After a crash every operation fails until
/// [`Schedule::restart`]: the process is gone, nothing it had not committed is, and an open
/// transaction is dropped without its commit.
#[derive(Default)]
pub struct Schedule {
    plan: Mutex<Plan>,
}

#[derive(Default)]
struct Plan {
    /// Operations entered since the last restart.
    entered: u64,
    crash_at: Option<u64>,
    meanwhile: Option<(u64, Meanwhile)>,
    /// The operation the process crashed in, once it has.
    crashed: Option<&'static str>,
}

impl Schedule {
    /// Crash at the `n`-th operation from now (0: the next one).
    pub fn crash_at(&self, n: u64) {
        let mut plan = self.lock();
        plan.crash_at = Some(plan.entered + n);
    }

    /// Run `change` just before the `n`-th operation from now.
    pub fn meanwhile_at(&self, n: u64, change: Meanwhile) {
        let mut plan = self.lock();
        plan.meanwhile = Some((plan.entered + n, change));
    }

    /// Start the process again: forget the crash and whatever did not happen. Returns the
    /// operation it crashed in, if it did.
    pub fn restart(&self) -> Option<&'static str> {
        let mut plan = self.lock();
        let crashed = plan.crashed.take();
        plan.crash_at = None;
        plan.meanwhile = None;
        crashed
    }

    /// Enter the operation `op`: `Err` when the process is down.
    fn enter(&self, op: &'static str) -> Result<(), Down> {
        let change = {
            let mut plan = self.lock();
            let n = plan.entered;
            plan.entered += 1;
            if plan.crashed.is_some() {
                return Err(Down(op));
            }
            if plan.crash_at == Some(n) {
                plan.crashed = Some(op);
                return Err(Down(op));
            }
            match plan.meanwhile.take() {
                Some((at, change)) if at == n => Some(change),
                other => {
                    plan.meanwhile = other;
                    None
                }
            }
        };
        // Outside the lock: the change may use the doubles, which enter no operation.
        if let Some(change) = change {
            change();
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The simulated process is down: the operation named did not happen.
#[derive(Debug, Clone, Copy)]
struct Down(&'static str);

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: the process crashed (simulated)", self.0)
    }
}

/// Lock a std mutex of a double; a panicking test thread poisons nothing worth stopping for.
fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
