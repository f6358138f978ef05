//! Sweep throughput and peak memory over a real Postgres table of N rows and a generated listing
//! of about N keys (a generated listing because moto lists ~1.5k keys/s: useless at this size).
//!
//!     cargo bench --bench sweep -- 100000
//!     cargo bench --bench sweep -- 1000000
//!
//! Prints one line: rows, objects, findings, seconds, rows/s, peak RSS (VmHWM). Comparing the
//! peak RSS of the two sizes shows whether memory grows with the table and the bucket.

use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use std::time::Instant;
use upload_reconciler::bucket::{Bucket, CopyOutcome, DeleteOutcome};
use upload_reconciler::catalog::sql::SqlCatalog;
use upload_reconciler::config::Config;
use upload_reconciler::model::ObjectMeta;
use upload_reconciler::report::{self, Format};
use upload_reconciler::sweep::{Options, Quiet, Sweep};
use upload_reconciler::{Error, Result};

mod common;

use common::{has_object, has_orphan};

const DB: &str = "reconcile_bench";

struct GeneratedBucket {
    rows: u64,
    modified: DateTime<Utc>,
}

#[async_trait::async_trait]
impl Bucket for GeneratedBucket {
    fn url(&self) -> String {
        "generated://bench".into()
    }

    fn name(&self) -> &str {
        "bench"
    }

    fn list<'a>(&'a self, _prefix: &'a str) -> BoxStream<'a, Result<ObjectMeta>> {
        let modified = self.modified;
        stream::iter(0..self.rows)
            .flat_map(move |i| {
                let object = |key: String| ObjectMeta {
                    key,
                    size: 1024,
                    etag: Some("\"bench\"".into()),
                    last_modified: modified,
                    linked: false,
                };
                let mut keys = Vec::with_capacity(2);
                if has_object(i) {
                    keys.push(Ok(object(format!("{i:09}"))));
                }
                if has_orphan(i) {
                    keys.push(Ok(object(format!("{i:09}o"))));
                }
                stream::iter(keys)
            })
            .boxed()
    }

    async fn head(&self, _key: &str) -> Result<Option<ObjectMeta>> {
        Err(Error::storage("bench", "the generated bucket is read-only"))
    }

    async fn copy_new(&self, _from: &ObjectMeta, _to: &str) -> Result<CopyOutcome> {
        Err(Error::storage("bench", "the generated bucket is read-only"))
    }

    async fn delete_if(&self, _object: &ObjectMeta) -> Result<DeleteOutcome> {
        Err(Error::storage("bench", "the generated bucket is read-only"))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    let rows: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    common::seed(DB, rows, common::STATUS_OF_ROW).await;
    let config = Config::from_toml(&format!(
        "[database]\nurl = \"{}\"\n\
         [storage]\nbucket = \"bench\"\n[sweep]\norphan_grace = \"1h\"\n",
        common::database_url(DB)
    ))
    .expect("bench config");
    let catalog = SqlCatalog::connect(
        &config.database,
        upload_reconciler::adapters::scope(&config),
    )
    .await
    .expect("connect");
    let bucket = GeneratedBucket {
        rows,
        modified: Utc::now() - chrono::Duration::hours(2),
    };
    let sweep = Sweep {
        catalog: &catalog,
        bucket: &bucket,
        prefix: "",
        rules: &config.rules(),
        metrics: None,
    };
    let rss_before = peak_rss_mib();
    let started = Instant::now();
    let mut sink = report::sink(Format::Jsonl, Box::new(std::io::sink()));
    let summary = sweep
        .run(
            Options {
                dry_run: true,
                force: false,
            },
            Utc::now(),
            &mut Quiet,
            sink.as_mut(),
            upload_reconciler::stop::never(),
        )
        .await
        .expect("sweep");
    let seconds = started.elapsed().as_secs_f64();
    let h = &summary.header;
    println!(
        "rows {} objects {} findings {} seconds {:.2} rows/s {:.0} peak_rss_mib {:.1} (before sweep {:.1})",
        h.records_scanned,
        h.objects_listed,
        h.counts.drift(),
        seconds,
        h.records_scanned as f64 / seconds,
        peak_rss_mib(),
        rss_before
    );
}
