//! A one-line progress counter on stderr, for long sweeps run by a person at a terminal.

use crate::sweep::Progress;
use std::io::Write;
use std::time::{Duration, Instant};

pub struct Terminal {
    last: Option<Instant>,
    drawn: bool,
}

impl Terminal {
    const EVERY: Duration = Duration::from_millis(200);

    pub fn new() -> Self {
        Terminal {
            last: None,
            drawn: false,
        }
    }
}

impl Default for Terminal {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Terminal {
    fn scanned(&mut self, records: u64, objects: u64) {
        let now = Instant::now();
        // The first draw waits too: short sweeps should not flash a line.
        let last = *self.last.get_or_insert(now);
        if now.duration_since(last) < Self::EVERY {
            return;
        }
        self.last = Some(now);
        self.drawn = true;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2Kscanned {records} records, listed {objects} objects"
        );
        let _ = err.flush();
    }

    fn done(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}
