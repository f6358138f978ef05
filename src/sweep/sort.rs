//! External sort: items in order whatever order they arrive in, in bounded memory. Two listings
//! need it. The multipart uploads: S3 documents key order (then initiation time), garage 2.5.0
//! answers in upload-id order, and a secondary listing is no promise worth stopping the sweep
//! over. And an S3 Inventory, whose data files are in no order at all. (The live object listing
//! keeps its strict check in the merge: there the order is the server's promise.)
//!
//! Runs of at most `max_items` items or `memory / 2` bytes (as [`Item::weight`] counts them) are
//! sorted in memory; each full run is spilled to a temporary file ([`Spool`]); the runs are
//! merged, smallest head first. The other half of `memory` is headroom: a `Vec` grows by
//! doubling, and the merge holds a head and a read buffer per run. Runs are merged in levels,
//! as a log-structured store does: [`FAN_IN`] runs of one level become one run of the next, so
//! the final merge holds at most `FAN_IN - 1` runs a level open (a few levels: each is
//! `FAN_IN` times larger than the one below), and every item is rewritten once a level.
//!
//! The spill files are anonymous (`tempfile::tempfile`: `O_TMPFILE` on Linux, created and
//! unlinked at once elsewhere), in `TMPDIR`: they have no name to leave behind, so a kill, a
//! panic or a power cut leaves nothing for the next run to clean up.

use super::spool::Spool;
use crate::error::Result;
use crate::model::{MultipartUpload, ObjectMeta};
use futures::stream::{BoxStream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// How many uploads are sorted in memory before a run is spilled (a few MB).
pub const RUN: usize = 10_000;

/// The most runs of one level merged at once: 16 read buffers of 8 KiB.
pub const FAN_IN: usize = 16;

/// The deepest level of merged runs: `FAN_IN`^8 runs is more than any disk holds.
const LEVELS: usize = 8;

/// What the sort holds besides the current run: a read buffer (8 KiB) and a head per run.
const PER_RUN_BYTES: usize = 8 * 1024 + 256;

/// Something the external sort can order, spill and weigh.
pub trait Item: Serialize + DeserializeOwned {
    fn order(&self, other: &Self) -> Ordering;
    /// The bytes it holds in memory: its own size and its heap parts.
    fn weight(&self) -> usize;
}

impl Item for MultipartUpload {
    /// By key in byte order, several at one key oldest first.
    fn order(&self, other: &Self) -> Ordering {
        (&self.key, self.initiated, &self.upload_id).cmp(&(
            &other.key,
            other.initiated,
            &other.upload_id,
        ))
    }

    fn weight(&self) -> usize {
        std::mem::size_of::<Self>() + self.key.len() + self.upload_id.len()
    }
}

impl Item for ObjectMeta {
    /// By key in byte order; at one key (an inventory listing it twice) the newest first, so
    /// that a reader keeping the first of each key keeps the newest.
    fn order(&self, other: &Self) -> Ordering {
        self.key
            .cmp(&other.key)
            .then(other.last_modified.cmp(&self.last_modified))
    }

    fn weight(&self) -> usize {
        std::mem::size_of::<Self>() + self.key.len() + self.etag.as_ref().map_or(0, String::len)
    }
}

/// Read the whole listing (an error ends it, and is returned), then give it back in order.
pub async fn by_key(
    mut listing: BoxStream<'_, Result<MultipartUpload>>,
    run: usize,
) -> Result<Sorted<MultipartUpload>> {
    let mut sorter = Sorter::new("the multipart upload listing", run, usize::MAX);
    while let Some(upload) = listing.next().await {
        sorter.push(upload?)?;
    }
    sorter.finish()
}

/// Items taken in any order, given back sorted by [`finish`](Sorter::finish).
pub struct Sorter<T> {
    what: &'static str,
    max_items: usize,
    /// Bytes the current run may weigh.
    run_bytes: usize,
    current: Vec<T>,
    current_bytes: usize,
    /// Spilled runs, by level: level 0 sorted in memory, level n+1 merged from FAN_IN of n.
    runs: Vec<(usize, Spool<T>)>,
    stats: Stats,
}

/// What a sort did, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub items: u64,
    /// Runs written to temporary files (merged runs included).
    pub spilled_runs: u64,
    /// The most the run in memory weighed.
    pub peak_run_bytes: usize,
}

impl<T: Item> Sorter<T> {
    /// `what` names the items in errors; `memory` bounds what the sort holds (see the module).
    pub fn new(what: &'static str, max_items: usize, memory: usize) -> Self {
        // Two levels of open runs: already 16 runs of 16 runs of half the memory.
        let overhead = 2 * FAN_IN * PER_RUN_BYTES;
        Sorter {
            what,
            max_items: max_items.max(1),
            run_bytes: (memory / 2).saturating_sub(overhead).max(1),
            current: Vec::new(),
            current_bytes: 0,
            runs: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn push(&mut self, item: T) -> Result<()> {
        self.current_bytes += item.weight();
        self.current.push(item);
        self.stats.items += 1;
        self.stats.peak_run_bytes = self.stats.peak_run_bytes.max(self.current_bytes);
        if self.current.len() >= self.max_items || self.current_bytes >= self.run_bytes {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        let mut run = std::mem::take(&mut self.current);
        self.current_bytes = 0;
        run.sort_unstable_by(T::order);
        let mut spool = Spool::new(self.what)?;
        for item in &run {
            spool.push(item)?;
        }
        drop(run);
        self.runs.push((0, spool));
        self.stats.spilled_runs += 1;
        // A level full of runs becomes one run of the next level (the runs of a level are the
        // last ones pushed: every lower level was emptied when this one grew).
        for level in 0.. {
            let full = self.runs.iter().filter(|(l, _)| *l == level).count() >= FAN_IN;
            if !full || level + 1 >= LEVELS {
                break;
            }
            let first = self.runs.len() - FAN_IN;
            let runs = self.runs.split_off(first);
            let mut merged = Spool::new(self.what)?;
            for item in Sorted::merge(runs.into_iter().map(|(_, r)| Run::Spilled(r)).collect())? {
                merged.push(&item?)?;
            }
            self.runs.push((level + 1, merged));
            self.stats.spilled_runs += 1;
        }
        Ok(())
    }

    /// Everything pushed, in order.
    pub fn finish(mut self) -> Result<Sorted<T>> {
        self.current.sort_unstable_by(T::order);
        let mut runs: Vec<Run<T>> = self.runs.drain(..).map(|(_, r)| Run::Spilled(r)).collect();
        runs.push(Run::Memory(std::mem::take(&mut self.current).into_iter()));
        let mut sorted = Sorted::merge(runs)?;
        sorted.stats = self.stats;
        Ok(sorted)
    }
}

enum Run<T> {
    Memory(std::vec::IntoIter<T>),
    Spilled(Spool<T>),
}

impl<T: Item> Run<T> {
    fn next(&mut self) -> Result<Option<T>> {
        match self {
            Run::Memory(items) => Ok(items.next()),
            Run::Spilled(spool) => spool.pop(),
        }
    }
}

/// The head of one run, ordered so that the heap's top is the smallest item (the earlier run
/// on a tie, so equal items come out in the order they were pushed across runs).
struct Head<T> {
    item: T,
    run: usize,
}

impl<T: Item> Ord for Head<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.item.order(&self.item).then(other.run.cmp(&self.run))
    }
}

impl<T: Item> PartialOrd for Head<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: Item> PartialEq for Head<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T: Item> Eq for Head<T> {}

/// The sorted runs, merged: the smallest head each time.
pub struct Sorted<T> {
    runs: Vec<Run<T>>,
    heads: BinaryHeap<Head<T>>,
    /// A run that could not be read back: reported after the item before it.
    failed: Option<crate::error::Error>,
    stats: Stats,
}

impl<T: Item> Sorted<T> {
    fn merge(mut runs: Vec<Run<T>>) -> Result<Self> {
        let mut heads = BinaryHeap::with_capacity(runs.len());
        for (n, run) in runs.iter_mut().enumerate() {
            if let Some(item) = run.next()? {
                heads.push(Head { item, run: n });
            }
        }
        Ok(Sorted {
            runs,
            heads,
            failed: None,
            stats: Stats::default(),
        })
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn into_stream<'a>(self) -> BoxStream<'a, Result<T>>
    where
        T: Send + 'a,
    {
        futures::stream::iter(self).boxed()
    }
}

impl<T: Item> Iterator for Sorted<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(error) = self.failed.take() {
            self.heads.clear();
            return Some(Err(error));
        }
        let Head { item, run } = self.heads.pop()?;
        match self.runs[run].next() {
            Ok(Some(next)) => self.heads.push(Head { item: next, run }),
            Ok(None) => {}
            Err(error) => self.failed = Some(error),
        }
        Some(Ok(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use chrono::{DateTime, Utc};
    use futures::stream;

    fn upload(key: &str, id: &str, minute: u32) -> MultipartUpload {
        MultipartUpload {
            key: key.into(),
            upload_id: id.into(),
            initiated: DateTime::parse_from_rfc3339(&format!("2026-12-04T10:{minute:02}:00Z"))
                .expect("a time")
                .with_timezone(&Utc),
        }
    }

    async fn sorted(uploads: Vec<MultipartUpload>, run: usize) -> Vec<(String, String)> {
        let listing = stream::iter(uploads.into_iter().map(Ok)).boxed();
        by_key(listing, run)
            .await
            .expect("listed")
            .map(|u| u.map(|u| (u.key, u.upload_id)))
            .collect::<Result<_>>()
            .expect("read back")
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, id)| (k.to_string(), id.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn garage_s_upload_id_order_comes_out_by_key_then_age() {
        // What garage answered for uploads started at z, b, m, a, b: b, m, b, z, a.
        let listed = vec![
            upload("b", "1", 2),
            upload("m", "2", 3),
            upload("b", "3", 1),
            upload("z", "4", 0),
            upload("a", "5", 4),
        ];
        let expected = pairs(&[("a", "5"), ("b", "3"), ("b", "1"), ("m", "2"), ("z", "4")]);
        // In memory, and spilled in runs of one and of two (the last one short).
        for run in [RUN, 1, 2] {
            assert_eq!(sorted(listed.clone(), run).await, expected, "runs of {run}");
        }
    }

    #[tokio::test]
    async fn many_runs_merge_in_byte_order() {
        // Byte order, not a locale's: "B" < "a" < "é".
        let keys = ["é", "a", "B", "a_b", "a-b", "z", "0"];
        let listed: Vec<MultipartUpload> = (0..70)
            .map(|n| upload(keys[n % keys.len()], &format!("{n:02}"), (n % 60) as u32))
            .collect();
        let mut expected: Vec<MultipartUpload> = listed.clone();
        expected.sort_by(Item::order);
        let expected: Vec<(String, String)> =
            expected.into_iter().map(|u| (u.key, u.upload_id)).collect();
        assert_eq!(sorted(listed, 3).await, expected);
    }

    #[tokio::test]
    async fn a_listing_error_is_returned_not_sorted_away() {
        let listing = stream::iter(vec![
            Ok(upload("b", "1", 0)),
            Err(Error::storage("listing uploads", "connection reset")),
            Ok(upload("a", "2", 0)),
        ])
        .boxed();
        let err = by_key(listing, 1).await.err().expect("the listing failed");
        assert!(err.to_string().contains("connection reset"), "{err}");
    }
    fn object(key: String, second: u32) -> ObjectMeta {
        ObjectMeta {
            key,
            size: 1,
            etag: Some("\"0123456789abcdef0123456789abcdef\"".into()),
            last_modified: DateTime::parse_from_rfc3339(&format!("2026-12-04T10:00:{second:02}Z"))
                .expect("a time")
                .with_timezone(&Utc),
            linked: false,
        }
    }

    #[test]
    fn an_input_many_times_the_memory_bound_stays_under_it_and_comes_out_sorted() {
        let memory = 1024 * 1024;
        let mut sorter = Sorter::new("objects", usize::MAX, memory);
        let mut keys = Vec::new();
        let mut weight = 0;
        // Scattered keys (a multiplicative hash of n), 100 bytes of them and more each.
        for n in 0..200_000u64 {
            let key = format!(
                "{:016x}/{}",
                n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                "x".repeat(80)
            );
            let item = object(key.clone(), 0);
            weight += item.weight();
            keys.push(key);
            sorter.push(item).expect("pushed");
        }
        assert!(
            weight > 30 * memory,
            "the input ({weight} bytes) dwarfs the bound"
        );
        let sorted = sorter.finish().expect("merged");
        let stats = sorted.stats();
        assert!(stats.peak_run_bytes <= memory / 2, "{stats:?}");
        // More runs than FAN_IN were spilled: the levels merged them on the way.
        assert!(stats.spilled_runs > FAN_IN as u64, "{stats:?}");
        assert!(
            sorted.runs.len() < 2 * FAN_IN,
            "{} runs open",
            sorted.runs.len()
        );
        let out: Vec<String> = sorted
            .map(|o| o.map(|o| o.key))
            .collect::<Result<_>>()
            .expect("read back");
        keys.sort();
        assert_eq!(out, keys);
    }

    #[test]
    fn one_key_twice_comes_out_newest_first() {
        let mut sorter = Sorter::new("objects", 1, usize::MAX);
        for (key, second) in [("b", 1), ("a", 1), ("b", 9), ("a", 5)] {
            sorter.push(object(key.into(), second)).expect("pushed");
        }
        let out: Vec<(String, u32)> = sorter
            .finish()
            .expect("merged")
            .map(|o| o.map(|o| (o.key, chrono::Timelike::second(&o.last_modified))))
            .collect::<Result<_>>()
            .expect("read back");
        let expected = [("a", 5), ("a", 1), ("b", 9), ("b", 1)];
        assert_eq!(out, expected.map(|(k, s)| (k.to_string(), s)).to_vec());
    }
}
