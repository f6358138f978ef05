//! Findings wait here between the scan and the execution, one JSON line each, in an anonymous
//! temporary file: memory stays flat even for a million findings, and the file vanishes with the
//! process whatever happens.

use crate::error::{Error, Result};
use crate::model::Finding;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};

pub struct Spool {
    state: State,
}

enum State {
    Writing(BufWriter<File>),
    Reading(BufReader<File>),
    Done,
}

fn io(e: std::io::Error) -> Error {
    Error::io("spooling findings to a temporary file", e)
}

impl Spool {
    pub fn new() -> Result<Self> {
        let file = tempfile::tempfile().map_err(io)?;
        Ok(Spool {
            state: State::Writing(BufWriter::new(file)),
        })
    }

    pub fn push(&mut self, finding: &Finding) -> Result<()> {
        let State::Writing(out) = &mut self.state else {
            return Err(io(std::io::Error::other("spool already read")));
        };
        serde_json::to_writer(&mut *out, finding).map_err(|e| io(e.into()))?;
        out.write_all(b"\n").map_err(io)
    }

    /// The next finding in the order they were pushed; `None` at the end.
    pub fn pop(&mut self) -> Result<Option<Finding>> {
        if let State::Writing(_) = self.state {
            let State::Writing(out) = std::mem::replace(&mut self.state, State::Done) else {
                unreachable!("matched above")
            };
            let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            self.state = State::Reading(BufReader::new(file));
        }
        let State::Reading(input) = &mut self.state else {
            return Ok(None);
        };
        let mut line = String::new();
        if input.read_line(&mut line).map_err(io)? == 0 {
            self.state = State::Done;
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| io(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, FindingKind};

    #[test]
    fn findings_come_back_in_order_then_none() {
        let mut spool = Spool::new().expect("temp file");
        for id in ["a", "b\nwith newline", "c"] {
            spool
                .push(&Finding {
                    kind: FindingKind::OrphanObject,
                    id: id.into(),
                    key: id.into(),
                    action: Action::Report,
                    detail: String::new(),
                    record: None,
                    object: None,
                    upload: None,
                })
                .expect("push");
        }
        let mut ids = Vec::new();
        while let Some(f) = spool.pop().expect("pop") {
            ids.push(f.id);
        }
        assert_eq!(ids, ["a", "b\nwith newline", "c"]);
        assert!(spool.pop().expect("pop after end").is_none());
    }
}
