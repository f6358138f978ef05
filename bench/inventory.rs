//! S3 Inventory reports of a bench bucket, written as AWS writes them, for the sweep from an
//! inventory (bench/garage.rs). The layout (AWS's S3 user guide, "Locating your inventory list")
//! under the configuration's folder `destination-prefix/source-bucket/config-ID/`:
//! `data/<name>.csv.gz` or `data/<name>.parquet`, and `YYYY-MM-DDTHH-MMZ/manifest.json` with
//! `manifest.checksum` (the MD5 of manifest.json, in hex).
//!
//! The configuration is a daily inventory of current versions with the fields Size,
//! LastModifiedDate, ETag and StorageClass: AWS's CSV columns `Bucket, Key, Size,
//! LastModifiedDate, ETag, StorageClass` (gzip, every field quoted, keys URL-encoded), and its
//! Parquet schema below (Snappy). The objects are dealt over data files of [`OBJECTS_PER_FILE`]
//! in a shuffled order, as AWS's files are in no order.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use std::io::Write;
use std::sync::Arc;
use upload_reconciler::inventory::hex;

/// How many objects a data file holds (AWS cuts large inventories into several files).
pub const OBJECTS_PER_FILE: usize = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

const CSV_SCHEMA: &str = "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass";

const PARQUET_SCHEMA: &str = "message s3.inventory { required binary bucket (STRING); \
     required binary key (STRING); optional int64 size; \
     optional int64 last_modified_date (TIMESTAMP(MILLIS,true)); optional binary e_tag (STRING); \
     optional binary storage_class (STRING); }";

/// What every object of a bench bucket has in common: they were all put with one body.
pub struct Objects<'a> {
    pub bucket: &'a str,
    pub keys: &'a [String],
    pub size: i64,
    /// The body's MD5 in hex, as inventories write ETags (without quotes).
    pub etag: &'a str,
    pub modified: DateTime<Utc>,
}

impl Objects<'_> {
    /// Gzip CSV, as AWS writes it.
    fn csv_gz(&self, keys: &[&String]) -> Vec<u8> {
        let mut out = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let modified = self.modified.format("%Y-%m-%dT%H:%M:%S%.3fZ");
        for key in keys {
            let key: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
            writeln!(
                out,
                "\"{}\",\"{key}\",\"{}\",\"{modified}\",\"{}\",\"STANDARD\"",
                self.bucket, self.size, self.etag
            )
            .expect("write CSV");
        }
        out.finish().expect("gzip")
    }

    /// Snappy Parquet in AWS's schema, keys as they are: one row group, the columns in the
    /// schema's order, every optional value present.
    fn parquet(&self, keys: &[&String]) -> Vec<u8> {
        use parquet::basic::Compression;
        use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        enum Values {
            Text(Vec<ByteArray>),
            Int(Vec<i64>),
        }
        let n = keys.len();
        let text = |s: &str| Values::Text(vec![ByteArray::from(s); n]);
        let columns = [
            text(self.bucket),
            Values::Text(keys.iter().map(|k| ByteArray::from(k.as_str())).collect()),
            Values::Int(vec![self.size; n]),
            Values::Int(vec![self.modified.timestamp_millis(); n]),
            text(self.etag),
            text("STANDARD"),
        ];
        let schema =
            Arc::new(parquet::schema::parser::parse_message_type(PARQUET_SCHEMA).expect("schema"));
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut out = Vec::new();
        let mut writer =
            SerializedFileWriter::new(&mut out, schema, Arc::new(props)).expect("writer");
        let mut group = writer.next_row_group().expect("row group");
        let present = vec![1i16; n];
        for (i, values) in columns.iter().enumerate() {
            let mut column = group.next_column().expect("column").expect("a column");
            // Bucket and key are required; the others carry a definition level (1: present).
            let levels = (i >= 2).then_some(&present[..]);
            match values {
                Values::Text(v) => column.typed::<ByteArrayType>().write_batch(v, levels, None),
                Values::Int(v) => column.typed::<Int64Type>().write_batch(v, levels, None),
            }
            .expect("write column");
            column.close().expect("close column");
        }
        group.close().expect("close row group");
        writer.close().expect("close file");
        out
    }
}

/// `manifest.json`, its fields in AWS's order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    source_bucket: &'a str,
    destination_bucket: &'a str,
    version: &'a str,
    /// Milliseconds since the epoch, as a string.
    creation_timestamp: String,
    file_format: &'a str,
    file_schema: &'a str,
    /// Each data file's key, size and `MD5checksum`.
    files: Vec<serde_json::Value>,
}

/// Write a report of `objects` dated `created` into `destination`, under `folder` (the
/// configuration's folder, `prefix/source-bucket/config-ID`); returns its `s3://` URL for
/// `storage.inventory.url`, and the bytes of its data files.
pub async fn write(
    client: &Client,
    destination: &str,
    folder: &str,
    format: Format,
    objects: &Objects<'_>,
    created: DateTime<Utc>,
) -> (String, usize) {
    let mut order: Vec<&String> = objects.keys.iter().collect();
    fastrand::Rng::with_seed(objects.keys.len() as u64).shuffle(&mut order);
    let put = |key: String, body: Vec<u8>| async move {
        client
            .put_object()
            .bucket(destination)
            .key(&key)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put s3://{destination}/{key}: {e:?}"));
    };
    let mut files = Vec::new();
    let mut bytes = 0;
    for (n, share) in order.chunks(OBJECTS_PER_FILE).enumerate() {
        let created = created.timestamp_millis();
        let (key, body) = match format {
            Format::Csv => (
                format!("{folder}/data/{created}-{n}.csv.gz"),
                objects.csv_gz(share),
            ),
            Format::Parquet => (
                format!("{folder}/data/{created}-{n}.parquet"),
                objects.parquet(share),
            ),
        };
        bytes += body.len();
        files.push(serde_json::json!({
            "key": key,
            "size": body.len(),
            "MD5checksum": hex(&Md5::digest(&body)),
        }));
        put(key, body).await;
    }
    let (file_format, file_schema) = match format {
        Format::Csv => ("CSV", CSV_SCHEMA),
        Format::Parquet => ("Parquet", PARQUET_SCHEMA),
    };
    let manifest = Manifest {
        source_bucket: objects.bucket,
        destination_bucket: &format!("arn:aws:s3:::{destination}"),
        version: "2016-11-30",
        creation_timestamp: created.timestamp_millis().to_string(),
        file_format,
        file_schema,
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest");
    let dated = format!("{folder}/{}", created.format("%Y-%m-%dT%H-%MZ"));
    put(
        format!("{dated}/manifest.checksum"),
        hex(&Md5::digest(&json)).into_bytes(),
    )
    .await;
    put(format!("{dated}/manifest.json"), json).await;
    (format!("s3://{destination}/{folder}/"), bytes)
}
