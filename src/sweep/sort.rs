//! The multipart uploads in key order, whatever order the server lists them in. S3 documents
//! key order (then initiation time), garage 2.5.0 answers in upload-id order: a secondary listing
//! is no promise worth stopping the sweep over, so it is sorted here. The object listing keeps
//! its strict check in the merge: there the order is the server's promise, and the data is too
//! large to sort.
//!
//! Memory stays bounded whatever the listing's size: runs of at most `run` uploads are sorted in
//! memory, each full run is spilled to a temporary file ([`Spool`]), and the runs are merged.

use super::spool::Spool;
use crate::error::Result;
use crate::model::MultipartUpload;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};

/// How many uploads are sorted in memory before a run is spilled (a few MB).
pub const RUN: usize = 10_000;

/// The order of the merge: by key in byte order, several at one key oldest first.
fn order(upload: &MultipartUpload) -> (&str, DateTime<Utc>, &str) {
    (&upload.key, upload.initiated, &upload.upload_id)
}

/// Read the whole listing (an error ends it, and is returned), then give it back in order.
pub async fn by_key(
    mut listing: BoxStream<'_, Result<MultipartUpload>>,
    run: usize,
) -> Result<ByKey> {
    let run = run.max(1);
    let mut runs = Vec::new();
    let mut current = Vec::new();
    while let Some(upload) = listing.next().await {
        current.push(upload?);
        if current.len() >= run {
            runs.push(Run::Spilled(spill(std::mem::take(&mut current))?));
        }
    }
    current.sort_by(|a, b| order(a).cmp(&order(b)));
    runs.push(Run::Memory(current.into_iter()));
    let mut heads = Vec::with_capacity(runs.len());
    for run in &mut runs {
        heads.push(run.next()?);
    }
    Ok(ByKey {
        runs,
        heads,
        failed: None,
    })
}

fn spill(mut uploads: Vec<MultipartUpload>) -> Result<Spool<MultipartUpload>> {
    uploads.sort_by(|a, b| order(a).cmp(&order(b)));
    let mut spool = Spool::new("the multipart upload listing")?;
    for upload in &uploads {
        spool.push(upload)?;
    }
    Ok(spool)
}

enum Run {
    Memory(std::vec::IntoIter<MultipartUpload>),
    Spilled(Spool<MultipartUpload>),
}

impl Run {
    fn next(&mut self) -> Result<Option<MultipartUpload>> {
        match self {
            Run::Memory(uploads) => Ok(uploads.next()),
            Run::Spilled(spool) => spool.pop(),
        }
    }
}

/// The sorted runs, merged: the smallest head each time (the runs are few: one per `RUN`
/// uploads listed).
pub struct ByKey {
    runs: Vec<Run>,
    heads: Vec<Option<MultipartUpload>>,
    /// A run that could not be read back: reported after the upload before it.
    failed: Option<crate::error::Error>,
}

impl ByKey {
    pub fn into_stream<'a>(self) -> BoxStream<'a, Result<MultipartUpload>> {
        futures::stream::iter(self).boxed()
    }
}

impl Iterator for ByKey {
    type Item = Result<MultipartUpload>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(error) = self.failed.take() {
            self.heads.clear();
            return Some(Err(error));
        }
        let smallest = self
            .heads
            .iter()
            .enumerate()
            .filter_map(|(n, head)| head.as_ref().map(|upload| (n, upload)))
            .min_by(|(_, a), (_, b)| order(a).cmp(&order(b)))
            .map(|(n, _)| n)?;
        let upload = self.heads[smallest].take();
        match self.runs[smallest].next() {
            Ok(next) => self.heads[smallest] = next,
            Err(error) => self.failed = Some(error),
        }
        upload.map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
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
        expected.sort_by(|a, b| order(a).cmp(&order(b)));
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
}
