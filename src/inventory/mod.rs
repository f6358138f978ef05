//! S3 Inventory as the sweep's source of objects: AWS's daily (or weekly) list of a bucket's
//! objects, read instead of a listing that takes a million requests at a billion objects.
//!
//! The layout (AWS's S3 user guide, "Locating your inventory list"): under the configured
//! destination `s3://dest/prefix/source-bucket/config-id/`, one folder per report,
//! `YYYY-MM-DDTHH-MMZ/`, with `manifest.json` (the report: its source bucket, creation time,
//! format, schema and data files) and `manifest.checksum` (the MD5 of `manifest.json`).
//!
//! This module is the pure part: what a manifest says and whether it may be used, how a row
//! becomes an object. [`csv`] and [`parquet`] read the data files, [`source`] fetches them and
//! puts the objects in key order for the sweep's merge.
//!
//! An inventory is a snapshot: objects put or deleted after it are what it cannot know. The
//! sweep therefore confirms every finding that rests on an object's presence or absence with a
//! HEAD before reporting it (`sweep::confirm`).

pub mod csv;
pub mod parquet;
pub mod source;

use crate::model::ObjectMeta;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use serde::Deserialize;
use std::time::Duration;

/// The most `manifest.json` may weigh: a manifest lists its data files (about 200 bytes each);
/// a billion-object inventory has a few thousand.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

/// `manifest.json` as AWS writes it (the fields the reconciler uses; the rest are ignored).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub source_bucket: String,
    /// Milliseconds since the epoch, as a string.
    pub creation_timestamp: String,
    pub file_format: String,
    /// CSV: the column names, comma-separated. Parquet and ORC: the file's schema as text.
    pub file_schema: String,
    pub files: Vec<DataFile>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DataFile {
    /// The data file's key in the destination bucket.
    pub key: String,
    pub size: u64,
    #[serde(rename = "MD5checksum")]
    pub md5_checksum: Option<String>,
}

/// The formats AWS writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Gzip-compressed CSV.
    Csv,
    /// Parquet (AWS compresses it with Snappy).
    Parquet,
}

/// A manifest that passed every check: the inventory the sweep reads.
#[derive(Debug, Clone)]
pub struct Checked {
    pub manifest: Manifest,
    pub format: Format,
    /// When the inventory's scan began.
    pub created: DateTime<Utc>,
}

/// Why a manifest may not be used. Each names what is at fault; the caller adds where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("manifest.json does not match manifest.checksum (MD5 {actual}, checksum {expected})")]
    Checksum { expected: String, actual: String },
    #[error("manifest.json is not an inventory manifest: {0}")]
    Malformed(String),
    #[error("the inventory is of bucket {found:?}, not storage.bucket {expected:?}")]
    OtherBucket { expected: String, found: String },
    #[error(
        "the newest inventory is from {created}, older than storage.inventory.max_age ({max_age})"
    )]
    TooOld { created: String, max_age: String },
    #[error(
        "the inventory is in {0} format, which this reconcile does not read: configure the \
         inventory as CSV or Parquet"
    )]
    Unsupported(String),
}

/// Check a manifest against its checksum file, the bucket it must describe, and its age.
pub fn check(
    manifest_json: &[u8],
    checksum: &str,
    source_bucket: &str,
    now: DateTime<Utc>,
    max_age: Duration,
) -> Result<Checked, Refused> {
    let actual = hex(&Md5::digest(manifest_json));
    // The file holds the hex digest, perhaps followed by a newline.
    let expected = checksum.trim().to_ascii_lowercase();
    if actual != expected {
        return Err(Refused::Checksum { expected, actual });
    }
    let manifest: Manifest =
        serde_json::from_slice(manifest_json).map_err(|e| Refused::Malformed(e.to_string()))?;
    if manifest.source_bucket != source_bucket {
        return Err(Refused::OtherBucket {
            expected: source_bucket.to_owned(),
            found: manifest.source_bucket,
        });
    }
    let created = manifest
        .creation_timestamp
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| {
            Refused::Malformed(format!(
                "creationTimestamp {:?} is not milliseconds since the epoch",
                manifest.creation_timestamp
            ))
        })?;
    let age = (now - created).to_std().unwrap_or(Duration::ZERO);
    if age > max_age {
        return Err(Refused::TooOld {
            created: shown(created),
            max_age: humantime::format_duration(max_age).to_string(),
        });
    }
    let format = match manifest.file_format.to_ascii_lowercase().as_str() {
        "csv" => Format::Csv,
        "parquet" => Format::Parquet,
        _ => return Err(Refused::Unsupported(manifest.file_format.clone())),
    };
    Ok(Checked {
        manifest,
        format,
        created,
    })
}

/// An inventory's date as reports show it: `2026-12-04T00:00:00Z`.
pub fn shown(date: DateTime<Utc>) -> String {
    date.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The report folder's name, `2026-12-04T00-00Z`, as a date; `None` for anything else (`data/`,
/// `hive/`).
pub fn folder_date(name: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(name, "%Y-%m-%dT%H-%MZ")
        .ok()
        .map(|naive| naive.and_utc())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The columns the reconciler reads, by their name in either format: CSV's `LastModifiedDate`
/// and Parquet's `last_modified_date` are one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Key,
    Size,
    LastModifiedDate,
    ETag,
    IsLatest,
    IsDeleteMarker,
}

impl Column {
    pub fn named(name: &str) -> Option<Column> {
        let folded: String = name
            .chars()
            .filter(|c| *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Some(match folded.as_str() {
            "key" => Column::Key,
            "size" => Column::Size,
            "lastmodifieddate" => Column::LastModifiedDate,
            "etag" => Column::ETag,
            "islatest" => Column::IsLatest,
            "isdeletemarker" => Column::IsDeleteMarker,
            _ => return None,
        })
    }
}

/// One inventory row, as far as the reconciler reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    /// Decoded (CSV keys are URL-encoded).
    pub key: String,
    pub size: Option<i64>,
    pub last_modified: Option<DateTime<Utc>>,
    pub etag: Option<String>,
    /// Present when the inventory includes all versions.
    pub is_latest: Option<bool>,
    pub is_delete_marker: Option<bool>,
}

/// What a row is to the sweep: an object under `prefix`, or nothing (a delete marker, a version
/// that is not the current one, a key outside the prefix). A current object without its date
/// is an error: its age decides whether it may be touched.
pub fn object_of(row: Row, prefix: &str) -> Result<Option<ObjectMeta>, String> {
    if row.is_delete_marker == Some(true)
        || row.is_latest == Some(false)
        || !row.key.starts_with(prefix)
    {
        return Ok(None);
    }
    let Some(last_modified) = row.last_modified else {
        return Err(format!("the row of {:?} has no LastModifiedDate", row.key));
    };
    Ok(Some(ObjectMeta {
        key: row.key,
        size: row.size.unwrap_or(0),
        etag: row.etag.map(|etag| quoted(&etag)),
        last_modified,
        linked: false,
    }))
}

/// ETags as the S3 API spells them, in quotes: inventories write them bare.
fn quoted(etag: &str) -> String {
    if etag.starts_with('"') {
        etag.to_owned()
    } else {
        format!("\"{etag}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(bucket: &str, created_ms: i64, format: &str) -> Vec<u8> {
        format!(
            r#"{{"sourceBucket":"{bucket}","destinationBucket":"arn:aws:s3:::inv",
            "version":"2016-11-30","creationTimestamp":"{created_ms}","fileFormat":"{format}",
            "fileSchema":"Bucket, Key, Size, LastModifiedDate, ETag",
            "files":[{{"key":"p/uploads/daily/data/a.csv.gz","size":10,"MD5checksum":"00"}}]}}"#
        )
        .into_bytes()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_764_806_400_000).expect("a time")
    }

    const DAY_MS: i64 = 24 * 3600 * 1000;
    const TWO_DAYS: Duration = Duration::from_secs(48 * 3600);

    fn checked(json: &[u8], bucket: &str) -> Result<Checked, Refused> {
        check(json, &hex(&Md5::digest(json)), bucket, now(), TWO_DAYS)
    }

    #[test]
    fn a_fresh_manifest_of_this_bucket_passes() {
        let json = manifest("uploads", now().timestamp_millis() - DAY_MS, "CSV");
        let ok = checked(&json, "uploads").expect("passes");
        assert_eq!(ok.format, Format::Csv);
        assert_eq!(ok.manifest.files[0].size, 10);
        assert_eq!(shown(ok.created), "2025-12-03T00:00:00Z");
        // The checksum file may end in a newline and be in capitals.
        let upper = format!("{}\n", hex(&Md5::digest(&json)).to_uppercase());
        assert!(check(&json, &upper, "uploads", now(), TWO_DAYS).is_ok());
    }

    #[test]
    fn each_bad_manifest_is_refused_for_its_own_reason() {
        let json = manifest("uploads", now().timestamp_millis(), "CSV");
        assert!(matches!(
            check(&json, "0123", "uploads", now(), TWO_DAYS),
            Err(Refused::Checksum { .. })
        ));
        assert_eq!(
            checked(&json, "other").err(),
            Some(Refused::OtherBucket {
                expected: "other".into(),
                found: "uploads".into()
            })
        );
        let old = manifest("uploads", now().timestamp_millis() - 3 * DAY_MS, "Parquet");
        let err = checked(&old, "uploads").expect_err("too old");
        assert_eq!(
            err.to_string(),
            "the newest inventory is from 2025-12-01T00:00:00Z, older than \
             storage.inventory.max_age (2days)"
        );
        let orc = manifest("uploads", now().timestamp_millis(), "ORC");
        assert!(matches!(
            checked(&orc, "uploads"),
            Err(Refused::Unsupported(_))
        ));
        assert!(matches!(
            checked(b"{}", "uploads"),
            Err(Refused::Malformed(_))
        ));
    }

    #[test]
    fn folder_names_are_dates_and_nothing_else_is() {
        assert_eq!(
            folder_date("2016-11-06T21-32Z").map(shown).as_deref(),
            Some("2016-11-06T21:32:00Z")
        );
        assert_eq!(folder_date("data"), None);
        assert_eq!(folder_date("hive"), None);
    }

    #[test]
    fn delete_markers_old_versions_and_other_prefixes_are_no_objects() {
        let row = |key: &str, latest: Option<bool>, marker: Option<bool>| Row {
            key: key.into(),
            size: Some(3),
            last_modified: Some(now()),
            etag: Some("abc".into()),
            is_latest: latest,
            is_delete_marker: marker,
        };
        let object = object_of(row("docs/a", Some(true), Some(false)), "docs/")
            .expect("ok")
            .expect("an object");
        assert_eq!(object.etag.as_deref(), Some("\"abc\""));
        assert!(
            object_of(row("docs/a", None, None), "docs/")
                .expect("ok")
                .is_some()
        );
        assert!(
            object_of(row("docs/a", Some(false), Some(false)), "docs/")
                .expect("ok")
                .is_none()
        );
        assert!(
            object_of(row("docs/a", Some(true), Some(true)), "docs/")
                .expect("ok")
                .is_none()
        );
        assert!(
            object_of(row("other/a", None, None), "docs/")
                .expect("ok")
                .is_none()
        );
        let undated = Row {
            last_modified: None,
            ..row("docs/a", None, None)
        };
        assert!(object_of(undated, "docs/").is_err());
    }

    #[test]
    fn column_names_of_both_formats_are_one_column() {
        assert_eq!(
            Column::named("LastModifiedDate"),
            Some(Column::LastModifiedDate)
        );
        assert_eq!(
            Column::named("last_modified_date"),
            Some(Column::LastModifiedDate)
        );
        assert_eq!(Column::named("e_tag"), Some(Column::ETag));
        assert_eq!(Column::named("StorageClass"), None);
    }
}
