//! The streaming merge: the table's rows (ordered by their key below the prefix: the id, or the
//! key column) against the bucket's listing (ordered by key) and its multipart uploads in
//! progress (ordered by key, several per key possible: put in that order by [`super::sort`], as
//! servers list them otherwise), all in byte order, one key at a time. Memory stays constant
//! whatever the size of any side (one key's uploads at a time). An out-of-order stream is an
//! error: a merge over it would report false findings. A row without a key (its key column
//! NULL or empty) pairs with nothing: it is a pair of its own, whenever it comes.

use crate::error::{Error, Result};
use crate::model::{MultipartUpload, ObjectMeta, Record};
use futures::stream::{self, BoxStream, Peekable, StreamExt};
use std::pin::Pin;

/// What both sides hold for one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The key below the prefix; empty for a record without a key.
    pub name: String,
    pub record: Option<Record>,
    pub object: Option<ObjectMeta>,
    /// The multipart uploads in progress at the key, oldest first.
    pub uploads: Vec<MultipartUpload>,
}

pub struct Merge<'a> {
    records: Peekable<BoxStream<'a, Result<Record>>>,
    objects: Peekable<BoxStream<'a, Result<ObjectMeta>>>,
    uploads: Peekable<BoxStream<'a, Result<MultipartUpload>>>,
    prefix: String,
    last_id: Option<String>,
    last_key: Option<String>,
    last_upload_key: Option<String>,
    pub records_scanned: u64,
    pub objects_listed: u64,
    pub uploads_listed: u64,
}

impl<'a> Merge<'a> {
    /// `objects` must all start with `prefix`; an object's id is its key without it.
    pub fn new(
        records: BoxStream<'a, Result<Record>>,
        objects: BoxStream<'a, Result<ObjectMeta>>,
        prefix: &str,
    ) -> Self {
        Merge {
            records: records.peekable(),
            objects: objects.peekable(),
            uploads: stream::empty().boxed().peekable(),
            prefix: prefix.to_owned(),
            last_id: None,
            last_key: None,
            last_upload_key: None,
            records_scanned: 0,
            objects_listed: 0,
            uploads_listed: 0,
        }
    }

    /// Merge the multipart uploads in progress too; they must all start with the prefix.
    pub fn with_uploads(mut self, uploads: BoxStream<'a, Result<MultipartUpload>>) -> Self {
        self.uploads = uploads.peekable();
        self
    }

    /// The next key, or `None` when every side is done.
    pub async fn next(&mut self) -> Result<Option<Pair>> {
        if let Some(Ok(record)) = Pin::new(&mut self.records).peek().await
            && record.key.is_none()
        {
            let record = self.records.next().await.expect("peeked")?;
            self.records_scanned += 1;
            return Ok(Some(Pair {
                name: String::new(),
                record: Some(record),
                object: None,
                uploads: Vec::new(),
            }));
        }
        let Some(id) = self.next_id().await? else {
            return Ok(None);
        };
        let record = match Pin::new(&mut self.records).peek().await {
            Some(Ok(record)) if record.key.as_deref() == Some(id.as_str()) => {
                Some(self.take_record().await?)
            }
            _ => None,
        };
        let object = match Pin::new(&mut self.objects).peek().await {
            Some(Ok(object)) if id_of(&self.prefix, &object.key)? == id => {
                Some(self.take_object().await?)
            }
            _ => None,
        };
        let mut uploads = Vec::new();
        while let Some(Ok(upload)) = Pin::new(&mut self.uploads).peek().await {
            if id_of(&self.prefix, &upload.key)? != id {
                break;
            }
            uploads.push(self.take_upload().await?);
        }
        Ok(Some(Pair {
            name: id,
            record,
            object,
            uploads,
        }))
    }

    /// The smallest id at the head of the three sides. An error at a head is returned here, so
    /// the merge ends with it rather than skipping past it.
    async fn next_id(&mut self) -> Result<Option<String>> {
        let mut smallest: Option<String> = None;
        let mut consider = |id: &str| {
            if smallest.as_deref().is_none_or(|s| id < s) {
                smallest = Some(id.to_owned());
            }
        };
        match Pin::new(&mut self.records).peek().await {
            // A keyless record is taken before the heads are compared (`next`).
            Some(Ok(record)) => consider(record.key.as_deref().unwrap_or_default()),
            Some(Err(_)) => return Err(self.take_record().await.err().unwrap_or_else(broken)),
            None => {}
        }
        match Pin::new(&mut self.objects).peek().await {
            Some(Ok(object)) => consider(id_of(&self.prefix, &object.key)?),
            Some(Err(_)) => return Err(self.take_object().await.err().unwrap_or_else(broken)),
            None => {}
        }
        match Pin::new(&mut self.uploads).peek().await {
            Some(Ok(upload)) => consider(id_of(&self.prefix, &upload.key)?),
            Some(Err(_)) => return Err(self.take_upload().await.err().unwrap_or_else(broken)),
            None => {}
        }
        Ok(smallest)
    }

    async fn take_record(&mut self) -> Result<Record> {
        let record = self.records.next().await.expect("peeked")?;
        let key = record.key.as_deref().unwrap_or_default();
        if self.last_id.as_deref() == Some(key) {
            // Two rows naming one object: which of them is the object's doc?
            return Err(Error::database(
                "reading the table",
                sqlx::Error::Protocol(format!(
                    "two records have the key {key:?} (the second is {:?}): an object is one \
                     doc's only",
                    record.id
                )),
            ));
        }
        check_order("the table", &mut self.last_id, key)?;
        self.records_scanned += 1;
        Ok(record)
    }

    async fn take_object(&mut self) -> Result<ObjectMeta> {
        let object = self.objects.next().await.expect("peeked")?;
        check_order("the bucket listing", &mut self.last_key, &object.key)?;
        self.objects_listed += 1;
        Ok(object)
    }

    async fn take_upload(&mut self) -> Result<MultipartUpload> {
        let upload = self.uploads.next().await.expect("peeked")?;
        // Several uploads may share a key; keys themselves must not go back.
        if let Some(previous) = self.last_upload_key.as_deref()
            && previous > upload.key.as_str()
        {
            return Err(Error::Unordered {
                source_name: "the multipart upload listing",
                previous: previous.to_owned(),
                next: upload.key.clone(),
            });
        }
        self.last_upload_key = Some(upload.key.clone());
        self.uploads_listed += 1;
        Ok(upload)
    }
}

/// A peeked error that could not be taken again: cannot happen with a peekable stream.
fn broken() -> Error {
    Error::storage("merge", "a stream lost the error it showed")
}

/// The id of an object: its key without the prefix.
fn id_of<'k>(prefix: &str, key: &'k str) -> Result<&'k str> {
    key.strip_prefix(prefix).ok_or_else(|| {
        Error::storage(
            "listing",
            format!("key {key:?} is outside prefix {prefix:?}"),
        )
    })
}

/// Each item must sort strictly after the one before; equal ids would also be a broken table.
fn check_order(source_name: &'static str, last: &mut Option<String>, next: &str) -> Result<()> {
    if let Some(previous) = last.as_deref()
        && previous >= next
    {
        return Err(Error::Unordered {
            source_name,
            previous: previous.to_owned(),
            next: next.to_owned(),
        });
    }
    *last = Some(next.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use futures::stream;

    fn records(ids: &[&str]) -> BoxStream<'static, Result<Record>> {
        let items: Vec<Result<Record>> = ids
            .iter()
            .map(|id| {
                Ok(Record {
                    id: id.to_string(),
                    key: Some(id.to_string()),
                    raw_status: "pending".into(),
                    status: None,
                    created_at: Utc::now(),
                    updated_at: None,
                    job: None,
                })
            })
            .collect();
        stream::iter(items).boxed()
    }

    fn objects(keys: &[&str]) -> BoxStream<'static, Result<ObjectMeta>> {
        let items: Vec<Result<ObjectMeta>> = keys
            .iter()
            .map(|key| {
                Ok(ObjectMeta {
                    key: key.to_string(),
                    size: 1,
                    etag: None,
                    last_modified: Utc::now(),
                    linked: false,
                })
            })
            .collect();
        stream::iter(items).boxed()
    }

    /// The merge as (id, has record, has object) triples.
    async fn run(mut merge: Merge<'_>) -> Result<Vec<(String, bool, bool)>> {
        let mut out = Vec::new();
        while let Some(pair) = merge.next().await? {
            out.push((pair.name, pair.record.is_some(), pair.object.is_some()));
        }
        Ok(out)
    }

    fn triples(items: &[(&str, bool, bool)]) -> Vec<(String, bool, bool)> {
        items
            .iter()
            .map(|(id, r, o)| (id.to_string(), *r, *o))
            .collect()
    }

    #[tokio::test]
    async fn pairs_each_key_once_in_byte_order() {
        // Byte order, not a locale's: "B" < "a", "a-b" < "a_b", "é" after every ASCII letter.
        let merged = run(Merge::new(
            records(&["B", "a-b", "a_b", "z"]),
            objects(&["docs/B", "docs/a b", "docs/a_b", "docs/é"]),
            "docs/",
        ))
        .await
        .expect("ordered input merges");
        assert_eq!(
            merged,
            triples(&[
                ("B", true, true),
                ("a b", false, true),
                ("a-b", true, false),
                ("a_b", true, true),
                ("z", true, false),
                ("é", false, true),
            ])
        );
    }

    fn uploads(keys: &[&str]) -> BoxStream<'static, Result<MultipartUpload>> {
        let items: Vec<Result<MultipartUpload>> = keys
            .iter()
            .enumerate()
            .map(|(n, key)| {
                Ok(MultipartUpload {
                    key: key.to_string(),
                    upload_id: format!("u{n}"),
                    initiated: Utc::now(),
                })
            })
            .collect();
        stream::iter(items).boxed()
    }

    #[tokio::test]
    async fn multipart_uploads_join_their_key_and_several_at_one_key_stay_together() {
        let mut merge = Merge::new(
            records(&["a", "c"]),
            objects(&["docs/a", "docs/b"]),
            "docs/",
        )
        .with_uploads(uploads(&["docs/a-b", "docs/c", "docs/c", "docs/d"]));
        let mut seen = Vec::new();
        while let Some(pair) = merge.next().await.expect("ordered") {
            let ids: Vec<String> = pair.uploads.iter().map(|u| u.upload_id.clone()).collect();
            seen.push((pair.name, pair.record.is_some(), pair.object.is_some(), ids));
        }
        let expected: Vec<(String, bool, bool, Vec<String>)> = vec![
            ("a".into(), true, true, vec![]),
            ("a-b".into(), false, false, vec!["u0".into()]),
            ("b".into(), false, true, vec![]),
            ("c".into(), true, false, vec!["u1".into(), "u2".into()]),
            ("d".into(), false, false, vec!["u3".into()]),
        ];
        assert_eq!(seen, expected);
        assert_eq!(merge.uploads_listed, 4);
        let err =
            run(Merge::new(records(&[]), objects(&[]), "").with_uploads(uploads(&["b", "a"])))
                .await
                .expect_err("out of order");
        assert!(
            matches!(
                err,
                Error::Unordered {
                    source_name: "the multipart upload listing",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn counts_what_each_side_held() {
        let mut merge = Merge::new(records(&["a", "b"]), objects(&["b", "c", "d"]), "");
        while merge.next().await.expect("ordered").is_some() {}
        assert_eq!((merge.records_scanned, merge.objects_listed), (2, 3));
    }

    #[tokio::test]
    async fn an_unordered_listing_stops_the_merge() {
        let err = run(Merge::new(records(&[]), objects(&["b", "a"]), ""))
            .await
            .expect_err("out of order");
        assert!(
            matches!(
                err,
                Error::Unordered {
                    source_name: "the bucket listing",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_table_in_locale_order_stops_the_merge() {
        // en_US order puts "a" before "B"; the merge must refuse it rather than misread it.
        let err = run(Merge::new(records(&["a", "B"]), objects(&[]), ""))
            .await
            .expect_err("out of order");
        assert!(
            matches!(
                err,
                Error::Unordered {
                    source_name: "the table",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_error_mid_stream_ends_the_merge_with_it() {
        let listing = stream::iter(vec![
            Ok(ObjectMeta {
                key: "a".into(),
                size: 1,
                etag: None,
                last_modified: Utc::now(),
                linked: false,
            }),
            Err(Error::storage("listing s3://b/", "connection reset")),
        ])
        .boxed();
        let err = run(Merge::new(records(&["a", "b", "c"]), listing, ""))
            .await
            .expect_err("the listing failed");
        assert!(err.to_string().contains("connection reset"), "{err}");
    }
}
