//! Exponential backoff with full jitter, for every loop that waits after an error: the queue
//! pollers, the processing workers, the daemon's supervisor.

use std::time::Duration;

/// Exponential backoff with full jitter, reset on success.
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A random delay in `0..=min(max, base * 2^attempt)`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(self.attempt))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        for attempt in 0..10u32 {
            let ceiling = Duration::from_secs(1 << attempt.min(3));
            assert!(b.next_delay() <= ceiling, "attempt {attempt}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
