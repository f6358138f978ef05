//! The streaming merge: the table's rows (ordered by id) against the bucket's listing (ordered by
//! key), both in byte order, one key at a time. Memory stays constant whatever the size of either
//! side. An out-of-order stream is an error: a merge over it would report false findings.

use crate::error::{Error, Result};
use crate::model::{ObjectMeta, Record};
use futures::stream::{BoxStream, Peekable, StreamExt};
use std::cmp::Ordering;
use std::pin::Pin;

/// What both sides hold for one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub id: String,
    pub record: Option<Record>,
    pub object: Option<ObjectMeta>,
}

pub struct Merge<'a> {
    records: Peekable<BoxStream<'a, Result<Record>>>,
    objects: Peekable<BoxStream<'a, Result<ObjectMeta>>>,
    prefix: String,
    last_id: Option<String>,
    last_key: Option<String>,
    pub records_scanned: u64,
    pub objects_listed: u64,
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
            prefix: prefix.to_owned(),
            last_id: None,
            last_key: None,
            records_scanned: 0,
            objects_listed: 0,
        }
    }

    /// The next key, or `None` when both sides are done.
    pub async fn next(&mut self) -> Result<Option<Pair>> {
        let order = {
            let record = Pin::new(&mut self.records).peek().await;
            let object = Pin::new(&mut self.objects).peek().await;
            match (record, object) {
                (None, None) => return Ok(None),
                // An error on either side ends the merge; take it out of the stream to return it.
                (Some(Err(_)), _) => Ordering::Less,
                (_, Some(Err(_))) => Ordering::Greater,
                (Some(Ok(_)), None) => Ordering::Less,
                (None, Some(Ok(_))) => Ordering::Greater,
                (Some(Ok(record)), Some(Ok(object))) => {
                    let id = id_of(&self.prefix, &object.key)?;
                    record.id.as_str().cmp(id)
                }
            }
        };
        let record = match order {
            Ordering::Less | Ordering::Equal => Some(self.take_record().await?),
            Ordering::Greater => None,
        };
        let object = match order {
            Ordering::Greater | Ordering::Equal => Some(self.take_object().await?),
            Ordering::Less => None,
        };
        let id = match (&record, &object) {
            (Some(record), _) => record.id.clone(),
            (None, Some(object)) => id_of(&self.prefix, &object.key)?.to_owned(),
            (None, None) => unreachable!("one side was peeked non-empty"),
        };
        Ok(Some(Pair { id, record, object }))
    }

    async fn take_record(&mut self) -> Result<Record> {
        let record = self.records.next().await.expect("peeked")?;
        check_order("the table", &mut self.last_id, &record.id)?;
        self.records_scanned += 1;
        Ok(record)
    }

    async fn take_object(&mut self) -> Result<ObjectMeta> {
        let object = self.objects.next().await.expect("peeked")?;
        check_order("the bucket listing", &mut self.last_key, &object.key)?;
        self.objects_listed += 1;
        Ok(object)
    }
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
                })
            })
            .collect();
        stream::iter(items).boxed()
    }

    /// The merge as (id, has record, has object) triples.
    async fn run(mut merge: Merge<'_>) -> Result<Vec<(String, bool, bool)>> {
        let mut out = Vec::new();
        while let Some(pair) = merge.next().await? {
            out.push((pair.id, pair.record.is_some(), pair.object.is_some()));
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
