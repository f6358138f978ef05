//! The sweep from an S3 Inventory, through the binary: inventories written here in AWS's exact
//! layout (`YYYY-MM-DDTHH-MMZ/manifest.json`, `manifest.checksum`, `data/...`) and formats
//! (gzip CSV with URL-encoded keys, Snappy Parquet) into a destination bucket on moto.

use crate::helpers::*;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use std::io::Write;
use std::sync::Arc;

const PREFIX: &str = "docs/";

/// One inventory row.
#[derive(Clone)]
struct Line {
    key: String,
    size: Option<i64>,
    modified: DateTime<Utc>,
    etag: Option<String>,
    latest: bool,
    marker: bool,
}

fn object(key: &str, modified: DateTime<Utc>) -> Line {
    Line {
        key: key.into(),
        size: Some(1),
        modified,
        etag: Some("0cc175b9c0f1b6a831c399e269772661".into()),
        latest: true,
        marker: false,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Csv,
    Parquet,
}

/// A destination bucket and the inventory configuration's folder in it.
struct Destination {
    bucket: TestBucket,
    source: String,
}

impl Destination {
    async fn new(source: &TestBucket) -> Destination {
        Destination {
            bucket: TestBucket::new().await,
            source: source.name.clone(),
        }
    }

    fn folder(&self) -> String {
        format!("inv/{}/daily", self.source)
    }

    fn url(&self) -> String {
        format!("s3://{}/{}/", self.bucket.name, self.folder())
    }

    /// Write a report dated `created`, its lines split over `files` data files in no order.
    async fn write(
        &self,
        kind: Kind,
        created: DateTime<Utc>,
        lines: &[Line],
        files: usize,
    ) -> Report {
        let folder = self.folder();
        let mut entries = Vec::new();
        let mut keys = Vec::new();
        // Reversed and dealt round-robin: no file is in key order, nor are the files.
        let count = files.max(1);
        let mut shares: Vec<Vec<Line>> = vec![Vec::new(); count];
        for (n, line) in lines.iter().rev().enumerate() {
            shares[n % count].push(line.clone());
        }
        for (n, share) in shares.iter().enumerate() {
            let (name, bytes) = match kind {
                Kind::Csv => (format!("data/{n}.csv.gz"), csv_gz(&self.source, share)),
                Kind::Parquet => (format!("data/{n}.parquet"), parquet(&self.source, share)),
            };
            let key = format!("{folder}/{name}");
            entries.push(serde_json::json!({
                "key": key,
                "size": bytes.len(),
                "MD5checksum": hex(&Md5::digest(&bytes)),
            }));
            self.bucket.put_bytes(&key, bytes).await;
            keys.push(key);
        }
        let (format, schema) = match kind {
            Kind::Csv => (
                "CSV",
                "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag",
            ),
            Kind::Parquet => ("Parquet", PARQUET_SCHEMA),
        };
        let manifest = serde_json::json!({
            "sourceBucket": self.source,
            "destinationBucket": format!("arn:aws:s3:::{}", self.bucket.name),
            "version": "2016-11-30",
            "creationTimestamp": created.timestamp_millis().to_string(),
            "fileFormat": format,
            "fileSchema": schema,
            "files": entries,
        });
        let json = serde_json::to_vec_pretty(&manifest).expect("json");
        let dated = format!("{folder}/{}", created.format("%Y-%m-%dT%H-%MZ"));
        self.bucket
            .put(
                &format!("{dated}/manifest.checksum"),
                &hex(&Md5::digest(&json)),
            )
            .await;
        self.bucket
            .put_bytes(&format!("{dated}/manifest.json"), json)
            .await;
        Report {
            manifest: format!("{dated}/manifest.json"),
            data: keys,
        }
    }
}

/// Where a written report's files are.
struct Report {
    manifest: String,
    data: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Gzip CSV as AWS writes it: every field quoted, keys URL-encoded (`+` for a space).
fn csv_gz(bucket: &str, lines: &[Line]) -> Vec<u8> {
    let mut out = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for l in lines {
        let key: String = url::form_urlencoded::byte_serialize(l.key.as_bytes()).collect();
        let version = if l.latest { "v2" } else { "v1" };
        writeln!(
            out,
            "\"{bucket}\",\"{key}\",\"{version}\",\"{}\",\"{}\",\"{}\",\"{}\",\"{}\"",
            l.latest,
            l.marker,
            l.size.map(|s| s.to_string()).unwrap_or_default(),
            l.modified.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            l.etag.clone().unwrap_or_default(),
        )
        .expect("write");
    }
    out.finish().expect("gzip")
}

const PARQUET_SCHEMA: &str = "message s3.inventory { required binary bucket (STRING); \
     required binary key (STRING); optional binary version_id (STRING); optional boolean is_latest; \
     optional boolean is_delete_marker; optional int64 size; \
     optional int64 last_modified_date (TIMESTAMP(MILLIS,true)); optional binary e_tag (STRING); }";

/// Snappy Parquet in AWS's schema, keys as they are.
fn parquet(bucket: &str, lines: &[Line]) -> Vec<u8> {
    use parquet::basic::Compression;
    use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema =
        Arc::new(parquet::schema::parser::parse_message_type(PARQUET_SCHEMA).expect("schema"));
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, props).expect("writer");
    let mut group = writer.next_row_group().expect("row group");
    let text = |s: &str| ByteArray::from(s.as_bytes().to_vec());
    let mut column = 0;
    while let Some(mut col) = group.next_column().expect("column") {
        // Optional columns: a definition level per row (1 present, 0 null), values for those
        // present.
        fn levels<T>(values: &[Option<T>]) -> Vec<i16> {
            values.iter().map(|v| i16::from(v.is_some())).collect()
        }
        match column {
            0 | 1 => {
                let values: Vec<ByteArray> = lines
                    .iter()
                    .map(|l| {
                        if column == 0 {
                            text(bucket)
                        } else {
                            text(&l.key)
                        }
                    })
                    .collect();
                col.typed::<ByteArrayType>()
                    .write_batch(&values, None, None)
                    .expect("write");
            }
            2 | 7 => {
                let all: Vec<Option<ByteArray>> = lines
                    .iter()
                    .map(|l| match column {
                        2 => Some(text(if l.latest { "v2" } else { "v1" })),
                        _ => l.etag.as_deref().map(text),
                    })
                    .collect();
                let present: Vec<ByteArray> = all.iter().flatten().cloned().collect();
                col.typed::<ByteArrayType>()
                    .write_batch(&present, Some(&levels(&all)), None)
                    .expect("write");
            }
            3 | 4 => {
                let all: Vec<Option<bool>> = lines
                    .iter()
                    .map(|l| Some(if column == 3 { l.latest } else { l.marker }))
                    .collect();
                let present: Vec<bool> = all.iter().flatten().copied().collect();
                col.typed::<BoolType>()
                    .write_batch(&present, Some(&levels(&all)), None)
                    .expect("write");
            }
            _ => {
                let all: Vec<Option<i64>> = lines
                    .iter()
                    .map(|l| match column {
                        5 => l.size,
                        _ => Some(l.modified.timestamp_millis()),
                    })
                    .collect();
                let present: Vec<i64> = all.iter().flatten().copied().collect();
                col.typed::<Int64Type>()
                    .write_batch(&present, Some(&levels(&all)), None)
                    .expect("write");
            }
        }
        col.close().expect("close column");
        column += 1;
    }
    group.close().expect("close row group");
    writer.close().expect("close file");
    out
}

/// Keys that break naive code: spaces, `+`, percent signs, unicode, control characters.
const AWKWARD: [&str; 7] = [
    "sp ace",
    "a+b",
    "a%2Bb",
    "é/ü",
    "日本語",
    "ctl\u{1}x",
    "tab\tkey",
];

/// A bucket and a table that disagree in every way a sweep can find, awkward keys included.
async fn world(db: &TestDb, bucket: &TestBucket) {
    for id in AWKWARD {
        db.doc(id, "processed", HOUR).await;
        bucket.put(&format!("{PREFIX}{id}"), "a").await;
    }
    db.doc("stale", "pending", 2 * HOUR).await;
    db.doc("lost+found", "pending", 2 * HOUR).await;
    bucket.put(&format!("{PREFIX}lost+found"), "a").await;
    db.doc("gone one", "uploaded", 2 * HOUR).await;
    bucket.put(&format!("{PREFIX}orphan é+%"), "a").await;
    // Outside the prefix: neither listing nor inventory counts it.
    bucket.put("elsewhere/x", "a").await;
}

/// The inventory AWS would write of `bucket` now, with all versions: besides each object, an
/// old version of one and a delete marker over a key that no longer exists.
async fn inventory_of(bucket: &TestBucket) -> Vec<Line> {
    let modified = Utc::now() - chrono::Duration::hours(1);
    let mut lines: Vec<Line> = bucket
        .snapshot()
        .await
        .into_keys()
        .map(|key| object(&key, modified))
        .collect();
    lines.push(Line {
        latest: false,
        ..object(
            &format!("{PREFIX}sp ace"),
            modified - chrono::Duration::hours(1),
        )
    });
    lines.push(Line {
        size: None,
        etag: None,
        marker: true,
        ..object(&format!("{PREFIX}deleted"), modified)
    });
    lines
}

fn from_inventory(reconcile: Reconcile, destination: &Destination) -> Reconcile {
    reconcile.set("storage.inventory.url", &destination.url())
}

async fn same_findings_as_the_listing(kind: Kind) {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    world(&db, &bucket).await;
    let destination = Destination::new(&bucket).await;
    let created = Utc::now() - chrono::Duration::minutes(30);
    destination
        .write(kind, created, &inventory_of(&bucket).await, 3)
        .await;
    let reconcile = || {
        Reconcile::new(&db, &bucket)
            .set("storage.prefix", PREFIX)
            .set("sweep.orphan_grace", "0s")
    };
    let listed = reconcile().run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let inventoried = from_inventory(reconcile(), &destination)
        .run(&["--dry-run", "--format", "json"])
        .await;
    assert_eq!(inventoried.code, 0, "{}", inventoried.stderr);
    assert_eq!(
        listed.findings(),
        triples(&[
            ("lost_notification", "lost+found", "adopt"),
            ("missing_object", "gone one", "mark_missing"),
            ("orphan_object", "orphan é+%", "report"),
            ("stale_pending", "stale", "expire"),
        ])
    );
    assert_eq!(inventoried.findings(), listed.findings());
    let (a, b) = (listed.json(), inventoried.json());
    assert_eq!(a["objects_listed"], b["objects_listed"]);
    assert_eq!(a["counts"], b["counts"]);
    // The report names the inventory's date; a listing's says nothing of one.
    assert_eq!(
        b["inventory"],
        created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert!(a.get("inventory").is_none(), "{a}");
    let table = from_inventory(reconcile(), &destination)
        .run(&["--dry-run", "--format", "table"])
        .await;
    assert!(
        table
            .stdout
            .contains("objects listed (from the S3 Inventory of "),
        "{}",
        table.stdout
    );
}

#[tokio::test]
async fn a_csv_inventory_gives_the_findings_the_listing_gives() {
    same_findings_as_the_listing(Kind::Csv).await;
}

#[tokio::test]
async fn a_parquet_inventory_gives_the_findings_the_listing_gives() {
    same_findings_as_the_listing(Kind::Parquet).await;
}

#[tokio::test]
async fn what_changed_since_the_inventory_is_confirmed_by_head_before_it_is_reported() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    // In the inventory, deleted since: not present, whatever the inventory says.
    db.doc("deleted-since", "pending", 2 * HOUR).await;
    bucket.put(&format!("{PREFIX}deleted-since"), "a").await;
    bucket
        .put(&format!("{PREFIX}orphan-deleted-since"), "a")
        .await;
    let lines = inventory_of(&bucket).await;
    bucket.delete(&format!("{PREFIX}deleted-since")).await;
    bucket
        .delete(&format!("{PREFIX}orphan-deleted-since"))
        .await;
    // Not in the inventory, uploaded since: not expired, not missing.
    db.doc("landed-since", "pending", 2 * HOUR).await;
    bucket.put(&format!("{PREFIX}landed-since"), "a").await;
    db.doc("restored-since", "processed", 2 * HOUR).await;
    bucket.put(&format!("{PREFIX}restored-since"), "a").await;

    let destination = Destination::new(&bucket).await;
    destination
        .write(
            Kind::Csv,
            Utc::now() - chrono::Duration::hours(20),
            &lines,
            1,
        )
        .await;
    let reconcile = from_inventory(
        Reconcile::new(&db, &bucket)
            .set("storage.prefix", PREFIX)
            .set("sweep.orphan_grace", "0s"),
        &destination,
    );
    let expected = triples(&[
        ("lost_notification", "landed-since", "adopt"),
        ("stale_pending", "deleted-since", "expire"),
    ]);
    let dry = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.findings(), expected);
    let applied = reconcile.run(&["--format", "json"]).await;
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    assert_eq!(applied.findings(), expected);
    // Adopted (with no processing hook, straight to processed), not expired.
    assert_eq!(
        db.status("landed-since").await.as_deref(),
        Some("processed")
    );
    assert_eq!(db.status("deleted-since").await.as_deref(), Some("expired"));
    assert_eq!(
        db.status("restored-since").await.as_deref(),
        Some("processed")
    );
}

/// Run an applying sweep from a broken inventory: exit 1, one line that says what is wrong,
/// and nothing applied (the stale record is still pending).
async fn refused(
    break_it: impl AsyncFnOnce(&Destination, &Report),
    created_hours_ago: i64,
    expected: &str,
) {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("stale", "pending", 2 * HOUR).await;
    bucket.put(&format!("{PREFIX}orphan"), "a").await;
    let destination = Destination::new(&bucket).await;
    let report = destination
        .write(
            Kind::Csv,
            Utc::now() - chrono::Duration::hours(created_hours_ago),
            &inventory_of(&bucket).await,
            2,
        )
        .await;
    break_it(&destination, &report).await;
    let run = from_inventory(
        Reconcile::new(&db, &bucket)
            .set("storage.prefix", PREFIX)
            .set("sweep.orphan_grace", "0s")
            .set("sweep.orphan_action", "delete"),
        &destination,
    )
    .run(&["--format", "json"])
    .await;
    assert_eq!(run.code, 1, "{expected}: {}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains(expected), "{expected}: {}", run.stderr);
    assert!(
        run.stderr.contains(&destination.bucket.name),
        "{}",
        run.stderr
    );
    assert_eq!(db.status("stale").await.as_deref(), Some("pending"));
    assert!(bucket.exists(&format!("{PREFIX}orphan")).await);
}

#[tokio::test]
async fn a_manifest_that_does_not_match_its_checksum_is_refused() {
    refused(
        async |d, r| {
            let json = d.bucket.get(&r.manifest).await;
            let edited = String::from_utf8(json)
                .expect("utf-8")
                .replace("\"size\"", "\"size\" ");
            d.bucket.put(&r.manifest, &edited).await;
        },
        1,
        "does not match manifest.checksum",
    )
    .await;
}

#[tokio::test]
async fn a_missing_data_file_is_refused() {
    refused(
        async |d, r| d.bucket.delete(&r.data[1]).await,
        1,
        "manifest.json lists it, the bucket has no such key",
    )
    .await;
}

#[tokio::test]
async fn a_truncated_data_file_is_refused() {
    refused(
        async |d, r| {
            let bytes = d.bucket.get(&r.data[0]).await;
            d.bucket
                .put_bytes(&r.data[0], bytes[..bytes.len() / 2].to_vec())
                .await;
        },
        1,
        "cut short: ",
    )
    .await;
}

#[tokio::test]
async fn an_inventory_older_than_max_age_is_refused_naming_its_date() {
    refused(
        async |_, _| {},
        50,
        "older than storage.inventory.max_age (2days)",
    )
    .await;
}

#[tokio::test]
async fn an_inventory_of_another_bucket_is_refused() {
    refused(
        async |d, r| {
            let json = d.bucket.get(&r.manifest).await;
            let other = String::from_utf8(json)
                .expect("utf-8")
                .replace(&d.source, "another-bucket");
            d.bucket
                .put(
                    &r.manifest.replace("manifest.json", "manifest.checksum"),
                    &hex(&Md5::digest(other.as_bytes())),
                )
                .await;
            d.bucket.put(&r.manifest, &other).await;
        },
        1,
        "is of bucket \"another-bucket\"",
    )
    .await;
}

/// A CSV inventory of `count` recent objects of about 200 bytes each (in grace, so they need no
/// HEAD and none has to exist), in no order, and a sweep of it with a sort memory of 1 MiB and
/// `TMPDIR` in a folder of its own (returned, to look into).
async fn a_bulk_inventory(db: &TestDb, count: u64) -> (TestBucket, Reconcile, tempfile::TempDir) {
    let bucket = TestBucket::new().await;
    let now = Utc::now();
    let lines: Vec<Line> = (0..count)
        .map(|n| {
            let scattered = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            object(
                &format!("{PREFIX}bulk/{scattered:016x}/{}", "k".repeat(100)),
                now,
            )
        })
        .collect();
    let destination = Destination::new(&bucket).await;
    destination
        .write(Kind::Csv, now - chrono::Duration::minutes(5), &lines, 4)
        .await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut reconcile = from_inventory(
        Reconcile::new(db, &bucket)
            .set("storage.prefix", PREFIX)
            .set("storage.inventory.memory", "1MiB"),
        &destination,
    );
    reconcile
        .env
        .push(("TMPDIR".into(), tmp.path().display().to_string()));
    (bucket, reconcile, tmp)
}

#[tokio::test]
async fn an_inventory_many_times_the_sort_memory_is_read_whole_and_leaves_no_files() {
    let db = TestDb::with_docs(None).await;
    db.doc("stale", "pending", 2 * HOUR).await;
    // 40 000 objects: 8 MB in memory, eight times the bound.
    let (_bucket, reconcile, tmp) = a_bulk_inventory(&db, 40_000).await;
    let run = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["objects_listed"], 40_000);
    assert_eq!(report["counts"]["in_grace"], 40_000);
    assert_eq!(report["counts"]["stale_pending"], 1);
    // The spilled runs were anonymous files: nothing is left where they were.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read temp dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The sort's spilled runs are anonymous files: a sweep killed (SIGKILL, no clean-up code runs)
/// while it holds some leaves nothing behind, for the next run to find or remove.
#[tokio::test]
async fn a_sweep_killed_while_its_sort_has_spilled_leaves_no_temporary_file() {
    let db = TestDb::with_docs(None).await;
    let (_bucket, reconcile, tmp) = a_bulk_inventory(&db, 80_000).await;
    let logs = tempfile::tempdir().expect("temp dir");
    let mut sweep = reconcile.spawn(&["--dry-run", "--format", "json"], &logs.path().join("log"));
    let pid = sweep.id().expect("the sweep's pid");
    // The process's open files under TMPDIR: the spilled runs, already unlinked.
    let spilled = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .map(|target| target.display().to_string())
            .filter(|target| target.starts_with(&tmp.path().display().to_string()))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let held = loop {
        let held = spilled();
        if !held.is_empty() {
            break held;
        }
        assert!(
            sweep.try_wait().expect("the sweep's state").is_none(),
            "the sweep ended before it was seen holding a spilled run"
        );
        assert!(std::time::Instant::now() < deadline, "no spilled run seen");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    crate::daemon::signal(&sweep, "KILL");
    sweep.wait().await.expect("the killed sweep");
    assert!(
        held.iter().all(|target| target.ends_with(" (deleted)")),
        "spilled runs with a name: {held:?}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read temp dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn check_config_names_the_newest_report_after_checking_it() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let destination = Destination::new(&bucket).await;
    let now = Utc::now();
    let line = [object(&format!("{PREFIX}a"), now)];
    destination
        .write(Kind::Csv, now - chrono::Duration::hours(30), &line, 1)
        .await;
    let newest = now - chrono::Duration::hours(2);
    destination.write(Kind::Parquet, newest, &line, 2).await;
    let run = from_inventory(Reconcile::new(&db, &bucket), &destination)
        .run(&["check-config"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = format!(
        "ok: inventory {}: newest report {} (Parquet, 2 data files)",
        destination.url(),
        newest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert!(run.stdout.contains(&expected), "{expected}\n{}", run.stdout);
}
