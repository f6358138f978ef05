//! The bucket: listing, HEAD, copy and delete behind one narrow trait, so the engine does not
//! care whether the objects live in S3 or in a local folder.

pub mod folder;
pub mod s3;

use crate::error::Result;
use crate::model::ObjectMeta;
use futures::stream::BoxStream;

#[async_trait::async_trait]
pub trait Bucket: Send + Sync {
    /// A name for reports and errors: `s3://uploads`.
    fn url(&self) -> String;

    /// The bucket name as the report shows it.
    fn name(&self) -> &str;

    /// Every object under `prefix`, keys decoded, in UTF-8 byte order. A failed page ends the
    /// stream with an error, never early.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectMeta>>;

    /// A fresh look at one object; `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Server-side copy of `from` to `to` in the same bucket.
    async fn copy(&self, from: &str, to: &str) -> Result<()>;

    async fn delete(&self, key: &str) -> Result<()>;

    /// Check that the bucket exists and these credentials reach it.
    async fn ping(&self) -> Result<()>;
}
