//! The bucket: listing, HEAD, copy and delete behind one narrow trait, so the engine does not
//! care whether the objects live in S3 or in a local folder.
//!
//! The two writes never destroy anything the caller did not see: a copy never replaces an
//! existing object, and a delete only removes the very object the caller describes.

pub mod folder;
#[cfg(feature = "s3-listing")]
pub mod list_page;
pub mod ranges;
#[cfg(feature = "s3")]
pub mod s3;

use crate::error::Result;

/// The largest object one S3 CopyObject may copy (S3's limit, 5 GiB), and so the default and the
/// ceiling of `storage.multipart_copy_threshold` (which config checks in every build).
pub const MAX_COPY_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024;
use crate::model::{MultipartUpload, ObjectMeta, ObjectVersion, Versioning};
use futures::stream::{self, BoxStream, StreamExt};

#[async_trait::async_trait]
pub trait Bucket: Send + Sync {
    /// A name for reports and errors: `s3://uploads`.
    fn url(&self) -> String;

    /// The bucket name as the report shows it.
    fn name(&self) -> &str;

    /// Every object under `prefix`, keys decoded, in UTF-8 byte order. A failed page ends the
    /// stream with an error, never early.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectMeta>>;

    /// How many keys each range of a split listing should hold, for a bucket whose
    /// [`list_split`](Bucket::list_split) lists ranges at once; `None` for one that does not.
    fn keys_per_range(&self) -> Option<u64> {
        None
    }

    /// What [`list`](Bucket::list) yields, listed faster where the store allows: the key ranges
    /// between `split_points` (keys under `prefix`, in any order; they only balance the work)
    /// listed several at once.
    fn list_split<'a>(
        &'a self,
        prefix: &'a str,
        split_points: Vec<String>,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        let _ = split_points;
        self.list(prefix)
    }

    /// For a bucket whose listing is a snapshot (an S3 Inventory): read, check and sort it now,
    /// before the sweep's merge starts, and say when it was taken; the next
    /// [`list`](Bucket::list) of `prefix` yields it. `None`: the listing is live.
    async fn snapshot(
        &self,
        _prefix: &str,
        _now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(None)
    }

    /// A fresh look at one object; `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Copy the object `from` (as the caller saw it) to the new key `to` in the same bucket,
    /// never over an existing object, and check the copy against the original before saying
    /// `Copied`.
    async fn copy_new(&self, from: &ObjectMeta, to: &str) -> Result<CopyOutcome>;

    /// Delete `object.key` only while it is still the object described (same ETag).
    async fn delete_if(&self, object: &ObjectMeta) -> Result<DeleteOutcome>;

    /// Check that the bucket exists and these credentials reach it.
    async fn ping(&self) -> Result<()>;

    /// Whether another key leads to the object at `key` (a folder's symbolic link), so that its
    /// bytes are a doc's whatever its own key: what a listing marks as `ObjectMeta::linked`,
    /// asked of one key (`explain`). Always false on S3.
    async fn reached_by_link(&self, _key: &str) -> Result<bool> {
        Ok(false)
    }

    /// The multipart uploads in progress under `prefix`, in the server's order: S3 lists them by
    /// key, garage by upload id, so the sweep sorts them itself. A store without multipart
    /// uploads (a folder) has none.
    fn multipart_uploads<'a>(&'a self, _prefix: &'a str) -> BoxStream<'a, Result<MultipartUpload>> {
        stream::empty().boxed()
    }

    /// The bytes an upload's parts hold so far (what it costs while nobody completes it).
    async fn multipart_bytes(&self, _upload: &MultipartUpload) -> Result<u64> {
        Ok(0)
    }

    /// Whether the upload is still in progress (neither completed nor aborted).
    async fn multipart_in_progress(&self, _upload: &MultipartUpload) -> Result<bool> {
        Ok(false)
    }

    /// Abort the upload if it is still in progress: its parts are freed and it can no longer be
    /// completed. `false` when it was not (completed or aborted since it was listed).
    async fn abort_multipart(&self, _upload: &MultipartUpload) -> Result<bool> {
        Ok(false)
    }

    /// Whether the bucket keeps versions of its objects: asked once per sweep, and only when a
    /// record's object is missing. A store without versions (a folder) is `Unversioned`.
    async fn versioning(&self) -> Result<Versioning> {
        Ok(Versioning::Unversioned)
    }

    /// The history of exactly `key` (object versions and delete markers), newest first, at most
    /// [`MAX_HISTORY`] entries: never a listing of the whole bucket's versions. Empty in a store
    /// without versions.
    async fn versions(&self, _key: &str) -> Result<Vec<ObjectVersion>> {
        Ok(Vec::new())
    }

    /// Remove the delete marker `marker` (by its version id), so that the version beneath it is
    /// current again. Removing a marker destroys no bytes: were it no longer the newest version,
    /// the key would keep whatever is newer. A store without versions has no markers to remove.
    async fn remove_delete_marker(&self, marker: &ObjectVersion) -> Result<()> {
        Err(crate::error::Error::storage(
            format!("removing the delete marker of {}", marker.key),
            format!("{} keeps no versions", self.url()),
        ))
    }
}

/// The most entries of one key's history [`Bucket::versions`] reads: the restore decision needs
/// only the newest two, `explain` shows them all up to this.
pub const MAX_HISTORY: usize = 1000;

/// What [`Bucket::copy_new`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CopyOutcome {
    /// The new key holds the original's bytes, checked as far as the storage can tell.
    Copied,
    /// The new key already held this very copy (an earlier attempt stopped after copying):
    /// nothing written.
    AlreadyCopied,
    /// The new key holds another object: nothing written.
    Taken(ObjectMeta),
    /// The original is no longer the object described (overwritten or gone): nothing written.
    SourceChanged,
}

/// What [`Bucket::delete_if`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// The key holds another object now, or none: nothing deleted.
    Changed,
}
