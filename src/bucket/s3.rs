//! The bucket on S3 or any S3-compatible server (custom endpoint, path-style addressing).

use super::list_page::{self, ListPage, sdk_deserializer, sdk_page, to_chrono, undecodable};
use super::ranges::{self, KeyRange};
use super::{Bucket, CopyOutcome, DeleteOutcome, MAX_HISTORY};
use crate::config::StorageConfig;
use crate::error::{Error, Result, describe_sdk};
use crate::model::{MultipartUpload, ObjectMeta, ObjectVersion, Versioning, decode_form};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{ConfigBag, Intercept};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
use aws_sdk_s3::types::{
    BucketVersioningStatus, CompletedMultipartUpload, CompletedPart, EncodingType,
    ServerSideEncryption,
};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{Output, OutputOrError};
use aws_smithy_runtime_api::client::orchestrator::OrchestratorError;
use aws_smithy_runtime_api::client::ser_de::{DeserializeResponse, SharedResponseDeserializer};
use futures::stream::{self, BoxStream, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::sync::{Arc, Mutex, PoisonError};

pub struct S3Bucket {
    client: Client,
    bucket: String,
    page_size: Option<i32>,
    /// Key ranges listed at once by `list_split`.
    list_concurrency: usize,
    /// Objects larger than this are copied in parts (UploadPartCopy), not by one CopyObject.
    multipart_copy_threshold: u64,
}

pub use super::MAX_COPY_OBJECT_BYTES;

/// Keys per ListObjectsV2 page when `storage.list_page_size` is not set: S3's own default.
const DEFAULT_PAGE_SIZE: i32 = 1000;

/// The longest key S3 takes, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// S3's bounds on a multipart upload: every part but the last at least 5 MiB, none over 5 GiB,
/// at most 10 000 parts.
const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
const MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;

/// What CopySource needs escaped: everything but unreserved characters and the path separator.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// An S3 client for `[storage]`: the AWS chain (env, profile, IMDS...) plus the section's region,
/// endpoint and addressing. The bucket adapter uses it, and so does an app presigning uploads
/// (the example upload API), so both talk to the same server the same way.
pub async fn client(config: &StorageConfig) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared);
    if shared.region().is_none() {
        // S3 answers any region for path-style requests to custom endpoints; AWS itself
        // redirects. Without a region the SDK would refuse to sign at all.
        builder = builder.region(Region::new("us-east-1"));
    }
    if let Some(endpoint) = &config.endpoint_url {
        builder = builder.endpoint_url(endpoint);
    }
    builder = builder.force_path_style(config.force_path_style);
    // Without a read timeout a request that the server (or a middlebox) stops answering
    // waits forever, and so does the poller or sweep that sent it: nothing reports it, and
    // nothing retries. Keep the chain's other timeouts (its connect timeout).
    let read_timeout = config
        .read_timeout
        .unwrap_or(crate::config::DEFAULT_STORAGE_READ_TIMEOUT);
    builder = builder.timeout_config(with_read_timeout(&shared, read_timeout));
    Client::from_conf(builder.build())
}

impl S3Bucket {
    /// Build a client from the AWS chain (env, profile, IMDS...) plus the `[storage]` overrides.
    pub async fn connect(config: &StorageConfig) -> Result<Self> {
        Ok(Self::with_client(client(config).await, config))
    }

    /// Use a client built elsewhere (tests, embedding programs with their own AWS setup).
    pub fn with_client(client: Client, config: &StorageConfig) -> Self {
        S3Bucket {
            client,
            bucket: config.bucket.clone(),
            page_size: config.list_page_size,
            list_concurrency: config
                .list_concurrency
                .unwrap_or(crate::config::DEFAULT_LIST_CONCURRENCY),
            multipart_copy_threshold: config
                .multipart_copy_threshold
                .unwrap_or(MAX_COPY_OBJECT_BYTES),
        }
    }

    fn lister(&self, prefix: &str) -> Lister {
        Lister {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            prefix: prefix.to_owned(),
            page_size: self.page_size,
            context: format!("listing {}", self.object_url(prefix)),
        }
    }

    fn object_url(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, key)
    }

    fn copy_source(&self, key: &str) -> String {
        format!("{}/{}", self.bucket, utf8_percent_encode(key, COPY_SOURCE))
    }

    fn copy_error<E>(&self, from: &str, to: &str, error: &SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        Error::storage(self.copy_context(from, to), describe_sdk(error))
    }

    fn copy_context(&self, from: &str, to: &str) -> String {
        format!(
            "copying {} to {}",
            self.object_url(from),
            self.object_url(to)
        )
    }

    fn method(&self, size: i64) -> CopyMethod {
        if u64::try_from(size).unwrap_or(0) > self.multipart_copy_threshold {
            CopyMethod::Parts
        } else {
            CopyMethod::Whole
        }
    }

    /// One CopyObject, conditional on the source's ETag and on the destination being free
    /// (servers that ignore either condition still got the HEAD before). `None`: a condition
    /// failed, nothing written.
    async fn copy_whole(&self, from: &ObjectMeta, to: &str) -> Result<Option<Written>> {
        let copied = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(self.copy_source(&from.key))
            .set_copy_source_if_match(from.etag.clone())
            .if_none_match("*")
            .send()
            .await;
        match copied {
            Ok(out) => {
                let kms = out.server_side_encryption().is_some_and(|sse| {
                    matches!(
                        sse,
                        ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse
                    )
                });
                let expected_etag = if etag_carries_over(from.etag.as_deref(), kms) {
                    from.etag.clone()
                } else {
                    out.copy_object_result()
                        .and_then(|r| r.e_tag())
                        .map(str::to_owned)
                };
                Ok(Some(Written { expected_etag }))
            }
            Err(e) if object_changed(&e) => Ok(None),
            Err(e) => Err(self.copy_error(&from.key, to, &e)),
        }
    }

    /// A multipart copy: parts copied by byte range, each conditional on the source's ETag (so
    /// every part comes from the same version), completed only if the destination is free.
    /// Anything short of completion aborts the upload, so no parts are left behind.
    async fn copy_in_parts(&self, from: &ObjectMeta, to: &str) -> Result<Option<Written>> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(to)
            .send()
            .await
            .map_err(|e| self.copy_error(&from.key, to, &e))?;
        let Some(upload_id) = created.upload_id() else {
            return Err(Error::storage(
                self.copy_context(&from.key, to),
                "CreateMultipartUpload answered without an upload id",
            ));
        };
        let copied = self.copy_parts(from, to, upload_id).await;
        if !matches!(copied, Ok(Some(_))) {
            let aborted = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(to)
                .upload_id(upload_id)
                .send()
                .await;
            if let Err(e) = aborted {
                tracing::warn!(
                    key = %to, upload_id, error = %describe_sdk(&e),
                    "could not abort the multipart copy; a bucket lifecycle rule \
                     (AbortIncompleteMultipartUpload) will remove its parts"
                );
            }
        }
        copied
    }

    async fn copy_parts(
        &self,
        from: &ObjectMeta,
        to: &str,
        upload_id: &str,
    ) -> Result<Option<Written>> {
        let size = u64::try_from(from.size).unwrap_or(0);
        let mut parts = Vec::new();
        for (number, (first, last)) in (1..).zip(part_ranges(
            size,
            part_size(size, self.multipart_copy_threshold),
        )) {
            let copied = self
                .client
                .upload_part_copy()
                .bucket(&self.bucket)
                .key(to)
                .upload_id(upload_id)
                .part_number(number)
                .copy_source(self.copy_source(&from.key))
                .copy_source_range(format!("bytes={first}-{last}"))
                .set_copy_source_if_match(from.etag.clone())
                .send()
                .await;
            let etag = match copied {
                Ok(out) => out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .map(str::to_owned),
                Err(e) if object_changed(&e) => return Ok(None),
                Err(e) => return Err(self.copy_error(&from.key, to, &e)),
            };
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(etag)
                    .build(),
            );
        }
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(to)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .if_none_match("*")
            .send()
            .await;
        match completed {
            // A multipart object's ETag is not the original's: the check can only confirm
            // that the destination holds the object this upload completed.
            Ok(out) => Ok(Some(Written {
                expected_etag: out.e_tag().map(str::to_owned),
            })),
            Err(e) if object_changed(&e) => Ok(None),
            Err(e) => Err(self.copy_error(&from.key, to, &e)),
        }
    }
}

/// How an object is copied: in one CopyObject up to the threshold, in parts above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyMethod {
    Whole,
    Parts,
}

/// A copy the server accepted, and the ETag the destination must then show.
struct Written {
    expected_etag: Option<String>,
}

/// State of a paginated listing: where to continue, or done.
enum Page {
    First,
    Next(String),
    Done,
}

#[async_trait::async_trait]
impl Bucket for S3Bucket {
    fn url(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    fn name(&self) -> &str {
        &self.bucket
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectMeta>> {
        flatten_pages(self.lister(prefix).pages(KeyRange::all()))
    }

    fn keys_per_range(&self) -> Option<u64> {
        // Two pages a range: each range's first request overlaps the others' second.
        let page = u64::try_from(self.page_size.unwrap_or(DEFAULT_PAGE_SIZE)).unwrap_or(1);
        (self.list_concurrency > 1).then_some(2 * page.max(1))
    }

    fn list_split<'a>(
        &'a self,
        prefix: &'a str,
        split_points: Vec<String>,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        if self.list_concurrency < 2 || split_points.is_empty() {
            return self.list(prefix);
        }
        // S3 keys are at most 1024 bytes: a longer id is no key, and no use as a StartAfter.
        let split_points = split_points
            .into_iter()
            .filter(|key| key.len() <= MAX_KEY_BYTES)
            .collect();
        let lister = self.lister(prefix);
        flatten_pages(ranges::list_concurrently(
            ranges::ranges(split_points),
            self.list_concurrency,
            move |range| lister.clone().pages(range),
        ))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: out.content_length().unwrap_or(0),
                etag: out.e_tag().map(str::to_owned),
                last_modified: to_chrono(out.last_modified()),
                linked: false,
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(Error::storage(
                format!("HEAD {}", self.object_url(key)),
                describe_sdk(&e),
            )),
        }
    }

    async fn copy_new(&self, from: &ObjectMeta, to: &str) -> Result<CopyOutcome> {
        let method = self.method(from.size);
        // Moto and garage ignore If-None-Match on copies: this look is what keeps them from
        // overwriting. (Quarantine keys name one object version, and sweeps hold a lock, so
        // nothing else writes them between this HEAD and the copy.)
        if let Some(there) = self.head(to).await? {
            return Ok(judge_existing(from, there, method));
        }
        let written = match method {
            CopyMethod::Whole => self.copy_whole(from, to).await?,
            CopyMethod::Parts => self.copy_in_parts(from, to).await?,
        };
        let Some(written) = written else {
            // Refused: the destination was taken meanwhile, or the original changed.
            return Ok(match self.head(to).await? {
                Some(there) => judge_existing(from, there, method),
                None => CopyOutcome::SourceChanged,
            });
        };
        let copy = self.head(to).await?;
        if let Err(problem) = check_copy(from, copy.as_ref(), written.expected_etag.as_deref()) {
            // A server that ignores `x-amz-copy-source-if-match` (moto) copies whatever the key
            // holds by then. When the original changed, the copy is ours to take back (the key
            // was free), as the folder does, and nothing was copied.
            if let Some(copy) = &copy
                && self.head(&from.key).await?.map(|now| now.etag) != Some(from.etag.clone())
                && self.delete_if(copy).await? == DeleteOutcome::Deleted
            {
                return Ok(CopyOutcome::SourceChanged);
            }
            return Err(Error::storage(
                self.copy_context(&from.key, to),
                format!("{problem}; the original is kept"),
            ));
        }
        Ok(CopyOutcome::Copied)
    }

    async fn delete_if(&self, object: &ObjectMeta) -> Result<DeleteOutcome> {
        let deleted = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&object.key)
            .set_if_match(object.etag.clone())
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(e) if object_changed(&e) => Ok(DeleteOutcome::Changed),
            Err(e) => Err(Error::storage(
                format!("deleting {}", self.object_url(&object.key)),
                describe_sdk(&e),
            )),
        }
    }

    async fn ping(&self) -> Result<()> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| Error::storage(format!("reaching {}", self.url()), describe_sdk(&e)))?;
        Ok(())
    }

    fn multipart_uploads<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<MultipartUpload>> {
        let context = format!(
            "listing the multipart uploads of {}",
            self.object_url(prefix)
        );
        // ListMultipartUploads pages by two markers, the last key and upload id of a page.
        let pages = stream::try_unfold(Some((None, None)), move |markers| {
            let context = context.clone();
            async move {
                let Some((key_marker, upload_id_marker)) = markers else {
                    return Ok(None);
                };
                let out = self
                    .client
                    .list_multipart_uploads()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .encoding_type(EncodingType::Url)
                    .set_key_marker(key_marker)
                    .set_upload_id_marker(upload_id_marker)
                    .send()
                    .await
                    .map_err(|e| Error::storage(&context, describe_sdk(&e)))?;
                let next = match out.is_truncated() {
                    Some(true) => Some((
                        out.next_key_marker().map(str::to_owned),
                        out.next_upload_id_marker().map(str::to_owned),
                    )),
                    _ => None,
                };
                if next
                    .as_ref()
                    .is_some_and(|(key, _)| key.as_deref().is_none_or(str::is_empty))
                {
                    return Err(Error::storage(
                        &context,
                        "a truncated page came without a next key marker",
                    ));
                }
                let uploads = out
                    .uploads()
                    .iter()
                    .map(|u| {
                        let raw = u.key().unwrap_or_default();
                        Ok(MultipartUpload {
                            key: decode_key(raw, &context)?,
                            upload_id: u.upload_id().unwrap_or_default().to_owned(),
                            initiated: to_chrono(u.initiated()),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Some((uploads, next)))
            }
        });
        flatten_pages(pages)
    }

    async fn multipart_bytes(&self, upload: &MultipartUpload) -> Result<u64> {
        let context = format!(
            "listing the parts of upload {} of {}",
            upload.upload_id,
            self.object_url(&upload.key)
        );
        let mut bytes = 0u64;
        let mut marker: Option<String> = None;
        loop {
            let out = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(&upload.key)
                .upload_id(&upload.upload_id)
                .set_part_number_marker(marker.take())
                .send()
                .await
                .map_err(|e| Error::storage(&context, describe_sdk(&e)))?;
            bytes += out
                .parts()
                .iter()
                .map(|p| p.size().unwrap_or(0).max(0) as u64)
                .sum::<u64>();
            match (out.is_truncated(), out.next_part_number_marker()) {
                (Some(true), Some(next)) => marker = Some(next.to_owned()),
                _ => return Ok(bytes),
            }
        }
    }

    async fn multipart_in_progress(&self, upload: &MultipartUpload) -> Result<bool> {
        let result = self
            .client
            .list_parts()
            .bucket(&self.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .max_parts(1)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            // NoSuchUpload: completed or aborted.
            Err(e) if no_such_upload(&e) => Ok(false),
            Err(e) => Err(Error::storage(
                format!(
                    "looking up upload {} of {}",
                    upload.upload_id,
                    self.object_url(&upload.key)
                ),
                describe_sdk(&e),
            )),
        }
    }

    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<bool> {
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            // Completed or aborted since it was listed: nothing left to abort.
            Err(e) if no_such_upload(&e) => Ok(false),
            Err(e) => Err(Error::storage(
                format!(
                    "aborting upload {} of {}",
                    upload.upload_id,
                    self.object_url(&upload.key)
                ),
                describe_sdk(&e),
            )),
        }
    }

    async fn versioning(&self) -> Result<Versioning> {
        match self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
        {
            // No status: versioning was never enabled.
            Ok(out) => Ok(match out.status() {
                Some(BucketVersioningStatus::Enabled) => Versioning::Enabled,
                Some(BucketVersioningStatus::Suspended) => Versioning::Suspended,
                _ => Versioning::Unversioned,
            }),
            // A server without versions (some S3-compatible stores) may not know the call.
            Err(e) if e.code() == Some("NotImplemented") => Ok(Versioning::Unversioned),
            // moto names the answer's root `GetBucketVersioningResponse`, where AWS documents
            // `VersioningConfiguration`, and the SDK refuses it: a successful answer is read here.
            Err(e)
                if let Some(versioning) = e
                    .raw_response()
                    .filter(|r| r.status().is_success())
                    .and_then(|r| r.body().bytes())
                    .and_then(versioning_in) =>
            {
                Ok(versioning)
            }
            Err(e) => Err(Error::storage(
                format!("reading the versioning of {}", self.url()),
                describe_sdk(&e),
            )),
        }
    }

    async fn versions(&self, key: &str) -> Result<Vec<ObjectVersion>> {
        let context = format!("listing the versions of {}", self.object_url(key));
        let mut history: Vec<ObjectVersion> = Vec::new();
        let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let out = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(key)
                .encoding_type(EncodingType::Url)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| Error::storage(&context, describe_sdk(&e)))?;
            // The prefix matches longer keys too (`doc` lists `doc2`); `key` is the first of
            // them in byte order, so its history comes first and ends at the first other key.
            let mut page = Vec::new();
            let mut past_key = false;
            for v in out.versions() {
                match decode_key(v.key().unwrap_or_default(), &context)? == key {
                    true => page.push(ObjectVersion {
                        key: key.to_owned(),
                        version_id: v.version_id().unwrap_or("null").to_owned(),
                        is_delete_marker: false,
                        is_latest: v.is_latest() == Some(true),
                        size: v.size().unwrap_or(0),
                        etag: v.e_tag().map(str::to_owned),
                        last_modified: to_chrono(v.last_modified()),
                    }),
                    false => past_key = true,
                }
            }
            for m in out.delete_markers() {
                match decode_key(m.key().unwrap_or_default(), &context)? == key {
                    true => page.push(ObjectVersion {
                        key: key.to_owned(),
                        version_id: m.version_id().unwrap_or("null").to_owned(),
                        is_delete_marker: true,
                        is_latest: m.is_latest() == Some(true),
                        size: 0,
                        etag: None,
                        last_modified: to_chrono(m.last_modified()),
                    }),
                    false => past_key = true,
                }
            }
            history.extend(page);
            let truncated = out.is_truncated() == Some(true);
            if past_key || !truncated || history.len() >= MAX_HISTORY {
                break;
            }
            key_marker = out.next_key_marker().map(str::to_owned);
            version_marker = out.next_version_id_marker().map(str::to_owned);
            if key_marker.as_deref().is_none_or(str::is_empty) {
                return Err(Error::storage(
                    &context,
                    "a truncated page came without a next key marker",
                ));
            }
        }
        Ok(newest_first(history))
    }

    async fn remove_delete_marker(&self, marker: &ObjectVersion) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&marker.key)
            .version_id(&marker.version_id)
            .send()
            .await
            .map_err(|e| {
                Error::storage(
                    format!(
                        "removing the delete marker {} of {}",
                        marker.version_id,
                        self.object_url(&marker.key)
                    ),
                    describe_sdk(&e),
                )
            })?;
        Ok(())
    }
}

/// The versioning status in a GetBucketVersioning answer's XML, whatever its root element is
/// called; `None` when it is no such answer.
fn versioning_in(xml: &[u8]) -> Option<Versioning> {
    let xml = std::str::from_utf8(xml).ok()?;
    if !xml.contains("Versioning") {
        return None;
    }
    Some(if xml.contains("<Status>Enabled</Status>") {
        Versioning::Enabled
    } else if xml.contains("<Status>Suspended</Status>") {
        Versioning::Suspended
    } else {
        Versioning::Unversioned
    })
}

/// A key's history as S3 gives it (versions and markers in two lists, each newest first) in one
/// list, newest first: the current version on top, then by modification time. A stable sort, so
/// entries of one second keep the order S3 listed them in.
fn newest_first(mut history: Vec<ObjectVersion>) -> Vec<ObjectVersion> {
    history.sort_by(|a, b| {
        b.is_latest
            .cmp(&a.is_latest)
            .then(b.last_modified.cmp(&a.last_modified))
    });
    history.truncate(MAX_HISTORY);
    history
}

/// A listed key, decoded (listings ask for URL encoding).
fn decode_key(raw: &str, context: &str) -> Result<String> {
    decode_form(raw)
        .ok_or_else(|| Error::storage(context, format!("key {raw:?} does not decode to UTF-8")))
}

/// Pages of a listing as one stream; a failed page ends it with its error.
fn flatten_pages<'a, T: Send + 'a>(
    pages: impl futures::Stream<Item = Result<Vec<T>>> + Send + 'a,
) -> BoxStream<'a, Result<T>> {
    pages
        .map(|page| match page {
            Ok(items) => stream::iter(items.into_iter().map(Ok)).boxed(),
            Err(e) => stream::once(async { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
}

/// Lists the objects of one prefix, a key range at a time; owns what it needs, so that ranges
/// can be listed by tasks of their own.
#[derive(Clone)]
struct Lister {
    client: Client,
    bucket: String,
    prefix: String,
    page_size: Option<i32>,
    context: String,
}

impl Lister {
    /// The pages of the objects in `range`, in byte order.
    fn pages(
        self,
        range: KeyRange,
    ) -> impl futures::Stream<Item = Result<Vec<ObjectMeta>>> + Send + 'static {
        stream::try_unfold(Page::First, move |page| {
            let lister = self.clone();
            let range = range.clone();
            async move {
                let (token, start_after) = match page {
                    Page::Done => return Ok(None),
                    Page::First => (None, range.after.clone()),
                    Page::Next(token) => (Some(token), None),
                };
                let context = &lister.context;
                let page = lister.page(token, start_after).await?;
                let mut next = match (page.is_truncated, page.next_continuation_token) {
                    (Some(true), Some(token)) => Page::Next(token),
                    (Some(true), None) => {
                        return Err(Error::storage(
                            context,
                            "a truncated page came without a continuation token",
                        ));
                    }
                    _ => Page::Done,
                };
                let mut objects = page.objects;
                if let Some(end) = objects.iter().position(|o| range.past_end(&o.key)) {
                    objects.truncate(end);
                    next = Page::Done;
                }
                Ok(Some((objects, next)))
            }
        })
    }
}

impl Lister {
    /// One ListObjectsV2 request, its answer read by [`list_page::parse`] where that parser
    /// reads it, else by the SDK (see [`LeanListing`]).
    async fn page(&self, token: Option<String>, start_after: Option<String>) -> Result<ListPage> {
        let slot = LeanSlot::default();
        // URL encoding: keys may hold characters XML 1.0 cannot carry.
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .encoding_type(EncodingType::Url)
            .set_max_keys(self.page_size)
            .set_start_after(start_after)
            .set_continuation_token(token)
            .customize()
            .interceptor(LeanListing(slot.clone()))
            .send()
            .await
            .map_err(|e| Error::storage(&self.context, describe_sdk(&e)))?;
        match slot.take() {
            Some(page) => Ok(page),
            None => sdk_page(&out).map_err(|key| Error::storage(&self.context, undecodable(&key))),
        }
    }
}

/// The page the lean decoder read during one request, if it did.
#[derive(Debug, Clone, Default)]
struct LeanSlot(Arc<Mutex<Option<ListPage>>>);

impl LeanSlot {
    fn put(&self, page: Option<ListPage>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = page;
    }

    fn take(&self) -> Option<ListPage> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Reads a ListObjectsV2 answer with [`list_page::parse`] instead of the SDK's XML decoder, over
/// half of a sweep's CPU (BENCHMARKS.md). The request itself stays the SDK's: signing,
/// endpoints, credentials, retries and timeouts, and so do errors: only a success (2xx) whose
/// body the parser reads is taken by it, its page left in the slot and the SDK handed an empty
/// output; any other answer goes to the SDK's deserializer as before (an error status, S3's
/// "200 with an error document", a page the parser refuses).
#[derive(Debug)]
struct LeanListing(LeanSlot);

impl Intercept for LeanListing {
    fn name(&self) -> &'static str {
        "LeanListing"
    }

    // Once per request, before the first attempt: every attempt loads the deserializer stored
    // here, which the operation's own configuration put in the bag before.
    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(SharedResponseDeserializer::new(LeanDeserializer(
                self.0.clone(),
            )));
        Ok(())
    }
}

/// The lean parser first, the SDK's ListObjectsV2 deserializer for whatever it does not read.
#[derive(Debug)]
struct LeanDeserializer(LeanSlot);

impl DeserializeResponse for LeanDeserializer {
    fn deserialize_streaming_with_config(
        &self,
        response: &mut HttpResponse,
        cfg: &ConfigBag,
    ) -> Option<OutputOrError> {
        sdk_deserializer()?.deserialize_streaming_with_config(response, cfg)
    }

    fn deserialize_nonstreaming_with_config(
        &self,
        response: &HttpResponse,
        cfg: &ConfigBag,
    ) -> OutputOrError {
        // An earlier attempt's page is not this one's.
        self.0.put(None);
        let lean = response
            .status()
            .is_success()
            .then(|| response.body().bytes())
            .flatten()
            .and_then(|body| list_page::parse(body).ok());
        if let Some(page) = lean {
            self.0.put(Some(page));
            return Ok(Output::erase(ListObjectsV2Output::builder().build()));
        }
        match sdk_deserializer() {
            Some(sdk) => sdk.deserialize_nonstreaming_with_config(response, cfg),
            None => Err(OrchestratorError::other(
                "ListObjectsV2 has no deserializer",
            )),
        }
    }
}

/// NoSuchUpload: the multipart upload was completed or aborted.
fn no_such_upload<E>(error: &SdkError<E, HttpResponse>) -> bool {
    error
        .raw_response()
        .is_some_and(|r| r.status().as_u16() == 404)
}

/// The server refused a conditional request because the object is not the one it was conditional
/// on: 412 Precondition Failed, 409 ConditionalRequestConflict (a concurrent write to the key), or
/// a 404 for the object (not for the bucket).
fn object_changed<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    let status = error.raw_response().map(|r| r.status().as_u16());
    let code = error.as_service_error().and_then(|e| e.code());
    match status {
        Some(412 | 409) => true,
        Some(404) => code != Some("NoSuchBucket"),
        _ => false,
    }
}

/// Whether a one-request copy keeps the original's ETag: S3's ETag is the MD5 of the bytes only
/// for objects uploaded in one part and not encrypted with KMS (a multipart ETag ends in `-N`).
fn etag_carries_over(etag: Option<&str>, kms: bool) -> bool {
    etag.is_some_and(|etag| !etag.contains('-')) && !kms
}

/// An object found at the destination before or after the copy: the very copy an earlier
/// attempt made (same size, and the original's ETag where a copy keeps it), or something else.
fn judge_existing(from: &ObjectMeta, there: ObjectMeta, method: CopyMethod) -> CopyOutcome {
    let same_etag = match method {
        CopyMethod::Whole if etag_carries_over(from.etag.as_deref(), false) => {
            there.etag == from.etag
        }
        _ => true,
    };
    if there.size == from.size && same_etag {
        CopyOutcome::AlreadyCopied
    } else {
        CopyOutcome::Taken(there)
    }
}

/// The copy as HEAD shows it must have the original's size and the ETag the copy promised.
fn check_copy(
    from: &ObjectMeta,
    copy: Option<&ObjectMeta>,
    expected_etag: Option<&str>,
) -> Result<(), String> {
    let Some(copy) = copy else {
        return Err("the copy is not there after the copy succeeded".into());
    };
    if copy.size != from.size {
        return Err(format!(
            "the copy has {} bytes, the original {}",
            copy.size, from.size
        ));
    }
    if let Some(expected) = expected_etag
        && copy.etag.as_deref() != Some(expected)
    {
        return Err(format!(
            "the copy's ETag is {}, expected {expected}",
            copy.etag.as_deref().unwrap_or("(none)")
        ));
    }
    Ok(())
}

/// The part size of a multipart copy: the threshold (within S3's part bounds), larger when the
/// object would need more than 10 000 parts.
fn part_size(size: u64, threshold: u64) -> u64 {
    threshold
        .clamp(MIN_PART_BYTES, MAX_PART_BYTES)
        .max(size.div_ceil(MAX_PARTS))
}

/// Inclusive byte ranges (`first`, `last`) of `part`-sized pieces covering `size` bytes.
fn part_ranges(size: u64, part: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..size.div_ceil(part)).map(move |i| (i * part, ((i + 1) * part).min(size) - 1))
}

/// The AWS chain's timeouts (its connect timeout) with `read` as the time to the first byte of
/// an answer, for each try: S3 and SQS alike.
pub fn with_read_timeout(
    shared: &aws_config::SdkConfig,
    read: std::time::Duration,
) -> aws_smithy_types::timeout::TimeoutConfig {
    use aws_smithy_types::timeout::TimeoutConfig;
    shared
        .timeout_config()
        .map(TimeoutConfig::to_builder)
        .unwrap_or_else(TimeoutConfig::builder)
        .read_timeout(read)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_versioning_answer_is_read_whatever_its_root_is_called() {
        let aws = br#"<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></VersioningConfiguration>"#;
        let moto = br#"<?xml version="1.0" encoding="utf-8"?>
<GetBucketVersioningResponse xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Suspended</Status></GetBucketVersioningResponse>"#;
        let never =
            br#"<GetBucketVersioningResponse xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>"#;
        assert_eq!(versioning_in(aws), Some(Versioning::Enabled));
        assert_eq!(versioning_in(moto), Some(Versioning::Suspended));
        assert_eq!(versioning_in(never), Some(Versioning::Unversioned));
        assert_eq!(versioning_in(b"<Error><Code>Oops</Code></Error>"), None);
    }

    #[test]
    fn listed_keys_decode_both_spellings_of_a_space() {
        assert_eq!(decode_form("a+b").as_deref(), Some("a b"));
        assert_eq!(decode_form("a%20b").as_deref(), Some("a b"));
        assert_eq!(decode_form("a%2Bb").as_deref(), Some("a+b"));
        assert_eq!(decode_form("a%2520b").as_deref(), Some("a%20b"));
        assert_eq!(
            decode_form("docs/ctl%01x").as_deref(),
            Some("docs/ctl\u{1}x")
        );
        assert_eq!(decode_form("%C3%A9/%C3%BC").as_deref(), Some("é/ü"));
        assert_eq!(decode_form("bad%FF"), None);
    }

    fn object(size: i64, etag: &str) -> ObjectMeta {
        ObjectMeta {
            key: "docs/a".into(),
            size,
            etag: Some(etag.into()),
            last_modified: chrono::DateTime::UNIX_EPOCH,
            linked: false,
        }
    }

    #[test]
    fn parts_cover_the_object_within_s3_bounds() {
        const GIB: u64 = 1024 * 1024 * 1024;
        for (size, threshold) in [
            (6 * 1024 * 1024, 1024 * 1024),
            (6 * GIB, MAX_COPY_OBJECT_BYTES),
            (5 * 1024 * GIB, MAX_COPY_OBJECT_BYTES),
            (5 * 1024 * GIB, 1),
            (10 * 1024 * 1024 + 1, 5 * 1024 * 1024),
        ] {
            let part = part_size(size, threshold);
            let ranges: Vec<_> = part_ranges(size, part).collect();
            assert!(ranges.len() as u64 <= MAX_PARTS, "{size} {threshold}");
            assert_eq!(ranges.first().map(|r| r.0), Some(0));
            assert_eq!(ranges.last().map(|r| r.1), Some(size - 1));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].1 + 1, pair[1].0, "contiguous");
                let length = pair[0].1 - pair[0].0 + 1;
                assert!((MIN_PART_BYTES..=MAX_PART_BYTES).contains(&length));
            }
        }
        assert_eq!(
            part_ranges(11, 5).collect::<Vec<_>>(),
            [(0, 4), (5, 9), (10, 10)]
        );
    }

    #[test]
    fn only_single_part_unencrypted_copies_keep_the_etag() {
        assert!(etag_carries_over(
            Some("\"9b2cf535f27731c974343645a3985328\""),
            false
        ));
        assert!(!etag_carries_over(
            Some("\"9b2cf535f27731c974343645a3985328-3\""),
            false
        ));
        assert!(!etag_carries_over(
            Some("\"9b2cf535f27731c974343645a3985328\""),
            true
        ));
        assert!(!etag_carries_over(None, false));
    }

    #[test]
    fn an_existing_destination_is_ours_only_if_it_matches() {
        let from = object(10, "\"aa\"");
        let same = judge_existing(&from, object(10, "\"aa\""), CopyMethod::Whole);
        assert_eq!(same, CopyOutcome::AlreadyCopied);
        let other = object(10, "\"bb\"");
        let taken = judge_existing(&from, other.clone(), CopyMethod::Whole);
        assert_eq!(taken, CopyOutcome::Taken(other.clone()));
        // A multipart copy has its own ETag: only the size can tell.
        let parts = judge_existing(&from, other, CopyMethod::Parts);
        assert_eq!(parts, CopyOutcome::AlreadyCopied);
        let shorter = judge_existing(&from, object(9, "\"aa\""), CopyMethod::Parts);
        assert!(matches!(shorter, CopyOutcome::Taken(_)));
    }

    #[test]
    fn a_copy_is_checked_by_size_and_etag() {
        let from = object(10, "\"aa\"");
        assert_eq!(
            check_copy(&from, Some(&object(10, "\"aa\"")), Some("\"aa\"")),
            Ok(())
        );
        assert_eq!(
            check_copy(&from, Some(&object(10, "\"bb-2\"")), None),
            Ok(())
        );
        let wrong_etag = check_copy(&from, Some(&object(10, "\"bb\"")), Some("\"aa\""));
        assert!(wrong_etag.is_err_and(|e| e.contains("ETag")));
        let short = check_copy(&from, Some(&object(9, "\"aa\"")), Some("\"aa\""));
        assert!(short.is_err_and(|e| e.contains("9 bytes")));
        assert!(check_copy(&from, None, None).is_err());
    }

    #[test]
    fn copy_sources_escape_everything_but_the_path() {
        let encoded = utf8_percent_encode("docs/a b+c%é", COPY_SOURCE).to_string();
        assert_eq!(encoded, "docs/a%20b%2Bc%25%C3%A9");
    }
}
