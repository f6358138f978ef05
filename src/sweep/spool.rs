//! Items wait here, one JSON line each, in an anonymous temporary file: the findings between the
//! scan and the execution, the sorted runs of a listing put in order ([`super::sort`]). Memory
//! stays flat even for a million of them, and the file vanishes with the process whatever
//! happens.

use crate::error::{Error, Result};
use crate::model::Finding;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::marker::PhantomData;

pub struct Spool<T = Finding> {
    state: State,
    /// What is spooled, for errors: `findings`.
    what: &'static str,
    items: PhantomData<fn(T) -> T>,
}

enum State {
    Writing(BufWriter<File>),
    Reading(BufReader<File>),
    Done,
}

impl<T: Serialize + DeserializeOwned> Spool<T> {
    pub fn new(what: &'static str) -> Result<Self> {
        let file = tempfile::tempfile().map_err(|e| io(what, e))?;
        Ok(Spool {
            state: State::Writing(BufWriter::new(file)),
            what,
            items: PhantomData,
        })
    }

    pub fn push(&mut self, item: &T) -> Result<()> {
        let what = self.what;
        let State::Writing(out) = &mut self.state else {
            return Err(io(what, std::io::Error::other("spool already read")));
        };
        serde_json::to_writer(&mut *out, item).map_err(|e| io(what, e.into()))?;
        out.write_all(b"\n").map_err(|e| io(what, e))
    }

    /// The next item in the order they were pushed; `None` at the end.
    pub fn pop(&mut self) -> Result<Option<T>> {
        let what = self.what;
        if let State::Writing(_) = self.state {
            let State::Writing(out) = std::mem::replace(&mut self.state, State::Done) else {
                unreachable!("matched above")
            };
            let mut file = out.into_inner().map_err(|e| io(what, e.into_error()))?;
            file.seek(SeekFrom::Start(0)).map_err(|e| io(what, e))?;
            self.state = State::Reading(BufReader::new(file));
        }
        let State::Reading(input) = &mut self.state else {
            return Ok(None);
        };
        let mut line = String::new();
        if input.read_line(&mut line).map_err(|e| io(what, e))? == 0 {
            self.state = State::Done;
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| io(what, e.into()))
    }
}

fn io(what: &'static str, e: std::io::Error) -> Error {
    Error::io(format!("spooling {what} to a temporary file"), e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, FindingKind};

    #[test]
    fn findings_come_back_in_order_then_none() {
        let mut spool = Spool::new("findings").expect("temp file");
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
