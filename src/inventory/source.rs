//! The inventory fetched and put in key order: the newest report under the configured
//! destination, its manifest checked ([`super::check`]), each data file downloaded to an
//! anonymous temporary file (its size and MD5 checked against the manifest), its rows read, and
//! the objects sorted by the external sort ([`crate::sweep::sort`]) in `storage.inventory.memory`.
//!
//! [`InventoryBucket`] is the bucket the sweep sees: its listing is the inventory, everything
//! else (HEAD, writes, multipart uploads, versions) goes to the live bucket.

use super::csv::{Layout, ReadError};
use super::{Checked, DataFile, Format, MAX_MANIFEST_BYTES, check, folder_date, hex, object_of};
use crate::bucket::{Bucket, CopyOutcome, DeleteOutcome};
use crate::config::{InventoryConfig, StorageConfig};
use crate::error::{Error, Result, describe_sdk};
use crate::model::{MultipartUpload, ObjectMeta, ObjectVersion, Versioning};
use crate::sweep::sort::{Sorted, Sorter};
use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use md5::{Digest, Md5};
use std::io::{Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the inventory reports of one configuration are, and how to read them.
#[derive(Clone)]
pub struct Inventory {
    client: Client,
    /// The destination bucket and the configuration's folder in it (ending in `/`).
    bucket: String,
    folder: String,
    source_bucket: String,
    max_age: Duration,
    memory: usize,
}

impl Inventory {
    pub fn new(client: Client, storage: &StorageConfig, config: &InventoryConfig) -> Result<Self> {
        let (bucket, folder) = config
            .location()
            .map_err(|message| Error::config("storage.inventory.url", message))?;
        Ok(Inventory {
            client,
            bucket: bucket.to_owned(),
            folder,
            source_bucket: storage.bucket.clone(),
            max_age: config.max_age,
            memory: usize::try_from(config.memory).unwrap_or(usize::MAX),
        })
    }

    /// `s3://dest/prefix/source-bucket/config-id/`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.folder)
    }

    fn fail(&self, message: impl Into<String>) -> Error {
        Error::storage(format!("reading the inventory {}", self.url()), message)
    }

    /// The newest report's folder (`.../2026-12-04T00-00Z/`): the greatest dated folder.
    async fn newest_folder(&self) -> Result<String> {
        let mut newest: Option<(DateTime<Utc>, String)> = None;
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.folder)
                .delimiter("/")
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.fail(describe_sdk(&e)))?;
            for folder in page.common_prefixes().iter().filter_map(|p| p.prefix()) {
                let name = folder
                    .strip_prefix(self.folder.as_str())
                    .unwrap_or(folder)
                    .trim_end_matches('/');
                if let Some(date) = folder_date(name)
                    && newest.as_ref().is_none_or(|(d, _)| date > *d)
                {
                    newest = Some((date, folder.to_owned()));
                }
            }
            token = page.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        newest.map(|(_, folder)| folder).ok_or_else(|| {
            self.fail("no report there (no YYYY-MM-DDTHH-MMZ/ folder with a manifest.json)")
        })
    }

    /// A small object whole, at most `limit` bytes; `None` when it does not exist.
    async fn small(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>> {
        let context = format!("reading s3://{}/{key}", self.bucket);
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let mut body = match got {
            Ok(out) => out.body,
            Err(e) if no_such_key(&e) => return Ok(None),
            Err(e) => return Err(Error::storage(context, describe_sdk(&e))),
        };
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::storage(&context, e.to_string()))?;
            if bytes.len() + chunk.len() > limit {
                return Err(Error::storage(
                    context,
                    format!("larger than {limit} bytes"),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(bytes))
    }

    /// The newest report's manifest, checked: its MD5 against `manifest.checksum`, its source
    /// bucket against `storage.bucket`, its age against `max_age`.
    pub async fn manifest(&self, now: DateTime<Utc>) -> Result<Checked> {
        let folder = self.newest_folder().await?;
        let json_key = format!("{folder}manifest.json");
        // The report as errors name it, after the inventory's URL: `2026-12-04T00-00Z/`.
        let report = folder.strip_prefix(self.folder.as_str()).unwrap_or(&folder);
        let missing = |name: &str| self.fail(format!("report {report}: {name} is missing"));
        let json = self
            .small(&json_key, MAX_MANIFEST_BYTES)
            .await?
            .ok_or_else(|| missing("manifest.json"))?;
        let checksum = self
            .small(&format!("{folder}manifest.checksum"), 1024)
            .await?
            .ok_or_else(|| missing("manifest.checksum"))?;
        let checksum = String::from_utf8_lossy(&checksum);
        check(&json, &checksum, &self.source_bucket, now, self.max_age)
            .map_err(|refused| self.fail(format!("report {report}: {refused}")))
    }

    /// Every object under `prefix` the newest report lists, in key order (one per key).
    pub async fn objects(&self, prefix: &str, now: DateTime<Utc>) -> Result<(Checked, Objects)> {
        let checked = self.manifest(now).await?;
        let layout = match checked.format {
            Format::Csv => Some(
                Layout::of(&checked.manifest.file_schema).map_err(|message| self.fail(message))?,
            ),
            Format::Parquet => None,
        };
        let mut sorter = Sorter::new("the inventory", usize::MAX, self.memory);
        for file in &checked.manifest.files {
            let download = self.download(file).await?;
            let prefix = prefix.to_owned();
            let layout = layout.clone();
            // Decompressing and parsing is CPU work: off the async threads.
            let (back, read) = tokio::task::spawn_blocking(move || {
                let read = read_file(download, layout.as_ref(), &prefix, &mut sorter);
                (sorter, read)
            })
            .await
            .map_err(|e| self.fail(format!("reading a data file stopped: {e}")))?;
            sorter = back;
            read.map_err(|e| match e {
                ReadError::Sink(error) => error,
                ReadError::Line(0, message) => self.data_error(file, message),
                ReadError::Line(n, message) => self.data_error(file, format!("row {n}: {message}")),
            })?;
        }
        let sorted = tokio::task::spawn_blocking(move || sorter.finish())
            .await
            .map_err(|e| self.fail(format!("sorting stopped: {e}")))??;
        Ok((
            checked,
            Objects {
                sorted,
                last: None,
                prefix: prefix.to_owned(),
            },
        ))
    }

    fn data_error(&self, file: &DataFile, message: impl Into<String>) -> Error {
        Error::storage(
            format!(
                "reading the inventory data file s3://{}/{}",
                self.bucket, file.key
            ),
            message,
        )
    }

    /// One data file, to an anonymous temporary file, checked against the manifest's size and
    /// MD5 (a truncated or corrupted copy is an error, not fewer objects).
    async fn download(&self, file: &DataFile) -> Result<std::fs::File> {
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&file.key)
            .send()
            .await;
        let mut body = match got {
            Ok(out) => out.body,
            Err(e) if no_such_key(&e) => {
                return Err(self.data_error(
                    file,
                    "missing: manifest.json lists it, the bucket has no such key",
                ));
            }
            Err(e) => return Err(self.data_error(file, describe_sdk(&e))),
        };
        let local = |e: std::io::Error| {
            Error::io(
                format!(
                    "saving the inventory data file {} to a temporary file",
                    file.key
                ),
                e,
            )
        };
        let mut out = tempfile::tempfile().map_err(local)?;
        let mut md5 = Md5::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.data_error(file, e.to_string()))?;
            size += chunk.len() as u64;
            if size > file.size {
                break;
            }
            md5.update(&chunk);
            out.write_all(&chunk).map_err(local)?;
        }
        if size > file.size {
            return Err(self.data_error(
                file,
                format!("more than the {} bytes manifest.json says", file.size),
            ));
        }
        if size < file.size {
            return Err(self.data_error(
                file,
                format!(
                    "cut short: {size} bytes where manifest.json says {}",
                    file.size
                ),
            ));
        }
        let actual = hex(&md5.finalize());
        if let Some(expected) = &file.md5_checksum
            && !expected.eq_ignore_ascii_case(&actual)
        {
            return Err(self.data_error(
                file,
                format!("MD5 {actual} where manifest.json says {expected}"),
            ));
        }
        out.seek(SeekFrom::Start(0)).map_err(local)?;
        Ok(out)
    }
}

fn no_such_key<E: aws_sdk_s3::error::ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    e.as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "NoSuchKey" || code == "NotFound")
}

/// Read one downloaded data file into the sort: a CSV one (gzip) when there is a layout, a
/// Parquet one otherwise.
fn read_file(
    file: std::fs::File,
    layout: Option<&Layout>,
    prefix: &str,
    sorter: &mut Sorter<ObjectMeta>,
) -> std::result::Result<(), ReadError> {
    let push = |row| match object_of(row, prefix) {
        Ok(Some(object)) => sorter.push(object).map_err(ReadError::Sink),
        Ok(None) => Ok(()),
        // The message names the key: enough to find the row.
        Err(message) => Err(ReadError::Line(0, message)),
    };
    match layout {
        Some(layout) => super::csv::read(flate2::read::MultiGzDecoder::new(file), layout, push),
        None => super::parquet::read(file, push),
    }
}

/// The inventory's objects in key order, one per key (the newest, were a key listed twice).
pub struct Objects {
    sorted: Sorted<ObjectMeta>,
    last: Option<String>,
    prefix: String,
}

impl Objects {
    pub fn stats(&self) -> crate::sweep::sort::Stats {
        self.sorted.stats()
    }
}

impl Iterator for Objects {
    type Item = Result<ObjectMeta>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let object = match self.sorted.next()? {
                Ok(object) => object,
                Err(e) => return Some(Err(e)),
            };
            if self.last.as_deref() == Some(object.key.as_str()) {
                continue;
            }
            self.last = Some(object.key.clone());
            return Some(Ok(object));
        }
    }
}

/// The bucket as a sweep from an inventory sees it: the listing is the inventory, read by
/// [`Bucket::snapshot`] before the merge starts; everything else is the live bucket's.
pub struct InventoryBucket {
    live: Arc<dyn Bucket>,
    inventory: Inventory,
    read: Mutex<Option<Objects>>,
}

impl InventoryBucket {
    pub fn new(live: Arc<dyn Bucket>, inventory: Inventory) -> Self {
        InventoryBucket {
            live,
            inventory,
            read: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl Bucket for InventoryBucket {
    fn url(&self) -> String {
        self.live.url()
    }

    fn name(&self) -> &str {
        self.live.name()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectMeta>> {
        let read = self.read.lock().ok().and_then(|mut read| read.take());
        match read {
            Some(objects) if objects.prefix == prefix => stream::iter(objects).boxed(),
            _ => stream::once(async {
                Err(Error::storage(
                    format!("listing {}", self.inventory.url()),
                    "the inventory is read by a sweep's snapshot step, once per listing",
                ))
            })
            .boxed(),
        }
    }

    async fn snapshot(&self, prefix: &str, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let (checked, objects) = self.inventory.objects(prefix, now).await?;
        tracing::info!(
            inventory = %self.inventory.url(),
            created = %super::shown(checked.created),
            files = checked.manifest.files.len(),
            objects = objects.stats().items,
            "read the inventory"
        );
        if let Ok(mut read) = self.read.lock() {
            *read = Some(objects);
        }
        Ok(Some(checked.created))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.live.head(key).await
    }

    async fn copy_new(&self, from: &ObjectMeta, to: &str) -> Result<CopyOutcome> {
        self.live.copy_new(from, to).await
    }

    async fn delete_if(&self, object: &ObjectMeta) -> Result<DeleteOutcome> {
        self.live.delete_if(object).await
    }

    async fn ping(&self) -> Result<()> {
        self.live.ping().await
    }

    async fn reached_by_link(&self, key: &str) -> Result<bool> {
        self.live.reached_by_link(key).await
    }

    fn multipart_uploads<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<MultipartUpload>> {
        // An inventory lists no uploads in progress: those are listed live.
        self.live.multipart_uploads(prefix)
    }

    async fn multipart_bytes(&self, upload: &MultipartUpload) -> Result<u64> {
        self.live.multipart_bytes(upload).await
    }

    async fn multipart_in_progress(&self, upload: &MultipartUpload) -> Result<bool> {
        self.live.multipart_in_progress(upload).await
    }

    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<bool> {
        self.live.abort_multipart(upload).await
    }

    async fn versioning(&self) -> Result<Versioning> {
        self.live.versioning().await
    }

    async fn versions(&self, key: &str) -> Result<Vec<ObjectVersion>> {
        self.live.versions(key).await
    }

    async fn remove_delete_marker(&self, marker: &ObjectVersion) -> Result<()> {
        self.live.remove_delete_marker(marker).await
    }
}
