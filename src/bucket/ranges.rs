//! A listing split into key ranges, listed several at once and handed on in byte order.
//!
//! One ListObjectsV2 stream fetches a page, waits for it, and only then can ask for the next: its
//! speed is one round trip per page. Splitting the key space at known keys lets several ranges
//! fetch their pages at the same time. Each range runs as its own task and keeps at most
//! [`PAGES_AHEAD`] pages waiting; the consumer reads the ranges one after the other, so the
//! output is in byte order and memory holds at most `concurrency × PAGES_AHEAD` pages, whatever
//! the size of the bucket or of a range.
//!
//! The split points only balance the work: any set of keys gives the same listing. A range that
//! fails ends the whole listing with its error, in its place: nothing after it is yielded.

use crate::error::{Error, Result};
use futures::stream::{self, BoxStream, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Pages a range lists ahead of the consumer.
pub const PAGES_AHEAD: usize = 2;

/// The keys of one range: after `after` (exclusive; from the start without one) up to `until`
/// (inclusive; to the end without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub after: Option<String>,
    pub until: Option<String>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> KeyRange {
        KeyRange {
            after: None,
            until: None,
        }
    }

    /// Whether `key`, met in a range's byte-ordered listing, is past its end.
    pub fn past_end(&self, key: &str) -> bool {
        self.until.as_deref().is_some_and(|until| key > until)
    }
}

/// The consecutive ranges that `split_points` cut the key space into: one more than there are
/// distinct points. The points need not be sorted or distinct.
pub fn ranges(mut split_points: Vec<String>) -> Vec<KeyRange> {
    split_points.sort_unstable();
    split_points.dedup();
    let mut ranges = Vec::with_capacity(split_points.len() + 1);
    let mut after = None;
    for point in split_points {
        ranges.push(KeyRange {
            after: after.replace(point.clone()),
            until: Some(point),
        });
    }
    ranges.push(KeyRange { after, until: None });
    ranges
}

/// The pages of every range, in range order, listing up to `concurrency` ranges at once (at
/// least two). `list(range)` lists one range's pages in byte order, ending with an error rather
/// than early.
pub fn list_concurrently<T, L, S>(
    ranges: Vec<KeyRange>,
    concurrency: usize,
    list: L,
) -> BoxStream<'static, Result<Vec<T>>>
where
    T: Send + 'static,
    L: Fn(KeyRange) -> S + Send + 'static,
    S: Stream<Item = Result<Vec<T>>> + Send + 'static,
{
    // `buffered` starts the next ranges while the consumer reads the current one (which the
    // flatten holds): `concurrency - 1` waiting plus the one being read.
    stream::iter(ranges)
        .map(move |range| std::future::ready(spawn_range(list(range))))
        .buffered(concurrency.saturating_sub(1).max(1))
        .flatten()
        .scan(false, |failed, page| {
            // Nothing after the first error: the ranges after it are dropped, and stop.
            let next = (!*failed).then_some(page);
            *failed = next.as_ref().is_some_and(Result::is_err);
            std::future::ready(next)
        })
        .boxed()
}

/// A range's pages, from a task that lists them ahead of the consumer.
fn spawn_range<T, S>(pages: S) -> BoxStream<'static, Result<Vec<T>>>
where
    T: Send + 'static,
    S: Stream<Item = Result<Vec<T>>> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(PAGES_AHEAD);
    let task = tokio::spawn(async move {
        let mut pages = std::pin::pin!(pages);
        while let Some(page) = pages.next().await {
            let failed = page.is_err();
            // A closed channel: the consumer stopped listening (an error elsewhere, a stop).
            if sender.send(page).await.is_err() || failed {
                return;
            }
        }
    });
    let task = AbortOnDrop(Some(task));
    stream::unfold((receiver, task), |(mut receiver, mut task)| async move {
        if let Some(page) = receiver.recv().await {
            return Some((page, (receiver, task)));
        }
        // The channel closed: the range ended, or its task did not finish (a panic). Only the
        // first ends the range quietly: a listing never ends early.
        let handle = task.0.take()?;
        match handle.await {
            Ok(()) => None,
            Err(e) => Some((
                Err(Error::storage("listing a key range", e.to_string())),
                (receiver, task),
            )),
        }
    })
    .boxed()
}

/// A range's task, stopped when its reader is dropped: nobody needs its pages any more.
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn split_points_cut_the_key_space_into_consecutive_ranges() {
        let r = ranges(points(&["m", "c", "m", "x"]));
        let bounds: Vec<_> = r
            .iter()
            .map(|r| (r.after.as_deref(), r.until.as_deref()))
            .collect();
        assert_eq!(
            bounds,
            vec![
                (None, Some("c")),
                (Some("c"), Some("m")),
                (Some("m"), Some("x")),
                (Some("x"), None)
            ]
        );
        assert_eq!(
            ranges(vec![]),
            vec![KeyRange {
                after: None,
                until: None
            }]
        );
        assert!(r[1].past_end("n") && !r[1].past_end("m") && !r[3].past_end("zzz"));
    }

    /// A fake listing of `keys`: the range's keys in pages of two, slowly for early ranges so
    /// that later ones finish first.
    fn fake(keys: Vec<String>, range: KeyRange) -> BoxStream<'static, Result<Vec<String>>> {
        let mine: Vec<String> = keys
            .into_iter()
            .filter(|k| range.after.as_ref().is_none_or(|a| k > a) && !range.past_end(k))
            .collect();
        let delay = if range.after.is_none() { 30 } else { 1 };
        stream::iter(mine.chunks(2).map(<[String]>::to_vec).collect::<Vec<_>>())
            .then(move |page| async move {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                Ok(page)
            })
            .boxed()
    }

    #[tokio::test]
    async fn ranges_listed_at_once_come_out_in_byte_order_each_key_once() {
        let keys: Vec<String> = (0..50).map(|i| format!("k{i:03}")).collect();
        for concurrency in [2, 3, 4, 16] {
            let all = keys.clone();
            let r = ranges(points(&["k010", "k011", "k033", "a", "z"]));
            let listed: Vec<String> =
                list_concurrently(r, concurrency, move |range| fake(all.clone(), range))
                    .map(|page| page.expect("page"))
                    .concat()
                    .await;
            assert_eq!(listed, keys, "concurrency {concurrency}");
        }
    }

    #[tokio::test]
    async fn a_failed_range_ends_the_listing_in_its_place() {
        let r = ranges(points(&["b", "d"]));
        let pages: Vec<Result<Vec<String>>> = list_concurrently(r, 4, |range| {
            let failing = range.after.as_deref() == Some("b");
            stream::iter([
                Ok(vec![format!("{}1", range.after.as_deref().unwrap_or("a"))]),
                if failing {
                    Err(Error::storage("listing", "SlowDown"))
                } else {
                    Ok(vec![format!("{}2", range.after.as_deref().unwrap_or("a"))])
                },
            ])
        })
        .collect()
        .await;
        let shown: Vec<String> = pages
            .iter()
            .map(|p| match p {
                Ok(keys) => keys.join(","),
                Err(e) => format!("error: {e}"),
            })
            .collect();
        assert_eq!(shown.len(), 4, "{shown:?}");
        assert_eq!(&shown[..3], ["a1", "a2", "b1"]);
        assert!(shown[3].starts_with("error") && shown[3].contains("SlowDown"));
    }

    #[tokio::test]
    async fn a_range_whose_task_panics_is_an_error_not_an_early_end() {
        let r = ranges(points(&["b"]));
        let pages: Vec<Result<Vec<u32>>> = list_concurrently(r, 2, |range| {
            let panics = range.after.is_some();
            stream::once(async move {
                assert!(!panics, "lister bug");
                Ok(vec![1])
            })
        })
        .collect()
        .await;
        assert_eq!(pages.len(), 2);
        assert!(pages[0].is_ok());
        assert!(pages[1].is_err(), "{pages:?}");
    }
}
