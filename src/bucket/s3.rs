//! The bucket on S3 or any S3-compatible server (custom endpoint, path-style addressing).

use super::Bucket;
use crate::config::StorageConfig;
use crate::error::{Error, Result, describe_sdk};
use crate::model::{ObjectMeta, decode_form};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::types::EncodingType;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

pub struct S3Bucket {
    client: Client,
    bucket: String,
    page_size: Option<i32>,
}

/// What CopySource needs escaped: everything but unreserved characters and the path separator.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

impl S3Bucket {
    /// Build a client from the AWS chain (env, profile, IMDS...) plus the `[storage]` overrides.
    pub async fn connect(config: &StorageConfig) -> Result<Self> {
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
        Ok(Self::with_client(
            Client::from_conf(builder.build()),
            config,
        ))
    }

    /// Use a client built elsewhere (tests, embedding programs with their own AWS setup).
    pub fn with_client(client: Client, config: &StorageConfig) -> Self {
        S3Bucket {
            client,
            bucket: config.bucket.clone(),
            page_size: config.list_page_size,
        }
    }

    fn object_url(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, key)
    }
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
        let context = format!("listing {}", self.object_url(prefix));
        let pages = stream::try_unfold(Page::First, move |page| {
            let context = context.clone();
            async move {
                let token = match page {
                    Page::Done => return Ok(None),
                    Page::First => None,
                    Page::Next(token) => Some(token),
                };
                // URL encoding: keys may hold characters XML 1.0 cannot carry.
                let out = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .encoding_type(EncodingType::Url)
                    .set_max_keys(self.page_size)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .map_err(|e| Error::storage(&context, describe_sdk(&e)))?;
                let next = match (out.is_truncated(), out.next_continuation_token()) {
                    (Some(true), Some(token)) => Page::Next(token.to_owned()),
                    (Some(true), None) => {
                        return Err(Error::storage(
                            &context,
                            "a truncated page came without a continuation token",
                        ));
                    }
                    _ => Page::Done,
                };
                let objects: Vec<Result<ObjectMeta>> = out
                    .contents()
                    .iter()
                    .map(|o| {
                        let raw = o.key().unwrap_or_default();
                        Ok(ObjectMeta {
                            key: decode_form(raw).ok_or_else(|| {
                                Error::storage(
                                    &context,
                                    format!("key {raw:?} does not decode to UTF-8"),
                                )
                            })?,
                            size: o.size().unwrap_or(0),
                            etag: o.e_tag().map(str::to_owned),
                            last_modified: to_chrono(o.last_modified()),
                        })
                    })
                    .collect();
                Ok(Some((stream::iter(objects), next)))
            }
        });
        pages
            .map(|page: Result<_>| match page {
                Ok(objects) => objects.boxed(),
                Err(e) => stream::once(async { Err(e) }).boxed(),
            })
            .flatten()
            .boxed()
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
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(Error::storage(
                format!("HEAD {}", self.object_url(key)),
                describe_sdk(&e),
            )),
        }
    }

    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        let source = format!("{}/{}", self.bucket, utf8_percent_encode(from, COPY_SOURCE));
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(source)
            .send()
            .await
            .map_err(|e| {
                Error::storage(
                    format!(
                        "copying {} to {}",
                        self.object_url(from),
                        self.object_url(to)
                    ),
                    describe_sdk(&e),
                )
            })?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                Error::storage(
                    format!("deleting {}", self.object_url(key)),
                    describe_sdk(&e),
                )
            })?;
        Ok(())
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
}

/// An object without a modification time cannot be judged old: it stays in grace.
fn to_chrono(time: Option<&aws_smithy_types::DateTime>) -> DateTime<Utc> {
    time.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn copy_sources_escape_everything_but_the_path() {
        let encoded = utf8_percent_encode("docs/a b+c%é", COPY_SOURCE).to_string();
        assert_eq!(encoded, "docs/a%20b%2Bc%25%C3%A9");
    }
}
