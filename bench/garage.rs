//! The sweep and the apply on a real S3 server (garage), beside what listing the same bucket costs
//! without the reconciler. Run through `scripts/bench`, which starts garage and passes its address
//! and key; this file loads the buckets (once: they stay cached with garage's data), seeds the
//! table, and measures.
//!
//!     scripts/bench                      # 10k and 100k objects, 3 rounds
//!     scripts/bench 10000 100000 1000000 # the long setting (loading 1M objects takes an hour)
//!
//! For each size, every round runs the three listings one after the other (alternated, so that a
//! slower moment of the machine weighs on all three alike):
//! - `sweep`: `reconcile sweep --dry-run`, the release binary, Postgres and garage;
//! - `rclone`: `rclone lsf -R` of the same prefix;
//! - `floor`: the ListObjectsV2 pages of the prefix fetched by one curl, 4 at once (the pages'
//!   start-after keys are known, since the harness generated the keys).
//!
//! Then the apply: the table seeded afresh, `reconcile sweep --force` applies the expire and
//! mark_missing actions (a tenth of the rows: 1k at 10k, 10k at 100k); its actions a second count
//! the time beyond the dry run's median.
//!
//! Wall time and peak RSS come from `/usr/bin/time`. Each figure printed is the median of the
//! rounds, min and max beside it.

mod common;

use aws_sdk_s3::primitives::ByteStream;
use common::show;
use futures::stream::{self, StreamExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use upload_reconciler::config::StorageConfig;

const PREFIX: &str = "docs/";
const PAGE: usize = 1000;

/// Row i is doc `{i:09}`. Every 10th row has no object (half of them pending, to expire; half
/// uploaded, to mark missing), every 50th object has no row (an orphan `{i:09}o`, in grace).
fn has_object(i: u64) -> bool {
    i % 10 != 3
}

fn has_orphan(i: u64) -> bool {
    i % 50 == 7
}

/// Every key of a bucket of `rows` docs, in byte order.
fn keys(rows: u64) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..rows {
        if has_object(i) {
            keys.push(format!("{PREFIX}{i:09}"));
        }
        if has_orphan(i) {
            keys.push(format!("{PREFIX}{i:09}o"));
        }
    }
    keys
}

struct Garage {
    endpoint: String,
    access_key: String,
    secret_key: String,
}

impl Garage {
    fn from_env() -> Garage {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| panic!("{name} (run scripts/bench)"))
        };
        Garage {
            endpoint: var("BENCH_S3_ENDPOINT"),
            access_key: var("AWS_ACCESS_KEY_ID"),
            secret_key: var("AWS_SECRET_ACCESS_KEY"),
        }
    }

    fn storage(&self, bucket: &str) -> StorageConfig {
        let toml = format!(
            "[storage]\nbucket = \"{bucket}\"\nregion = \"garage\"\nendpoint_url = \"{}\"\n\
             force_path_style = true\n",
            self.endpoint
        );
        upload_reconciler::config::Config::from_toml(&toml)
            .expect("storage config")
            .storage
    }
}

fn bucket_name(rows: u64) -> String {
    format!("bench-{rows}")
}

/// Create and fill the bucket unless an earlier run did: a marker object outside the prefix says
/// the load finished.
async fn load(garage: &Garage, rows: u64) {
    let bucket = bucket_name(rows);
    let client = upload_reconciler::bucket::s3::client(&garage.storage(&bucket)).await;
    let marker = format!("loaded-{rows}");
    if client
        .head_object()
        .bucket(&bucket)
        .key(&marker)
        .send()
        .await
        .is_ok()
    {
        return;
    }
    let _ = client.create_bucket().bucket(&bucket).send().await;
    let keys = keys(rows);
    eprintln!(
        "loading {} objects into {bucket} (once; cached with garage's data)",
        keys.len()
    );
    let started = Instant::now();
    let client = &client;
    let bucket = &bucket;
    let mut puts = stream::iter(keys)
        .map(|key| async move {
            client
                .put_object()
                .bucket(bucket)
                .key(&key)
                .body(ByteStream::from_static(b"bench object body"))
                .send()
                .await
                .map_err(|e| format!("{key}: {e:?}"))
        })
        .buffer_unordered(64);
    let mut done = 0u64;
    while let Some(put) = puts.next().await {
        put.expect("put object");
        done += 1;
        if done.is_multiple_of(20_000) {
            eprintln!(
                "  {done} objects, {:.0}/s",
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    client
        .put_object()
        .bucket(bucket)
        .key(&marker)
        .body(ByteStream::from_static(b"done"))
        .send()
        .await
        .expect("put marker");
}

fn database(rows: u64) -> String {
    format!("reconcile_bench_{rows}")
}

/// A fresh table of `rows` docs: the rows without objects were created two hours ago (past the
/// pending TTL), the orphans' objects are young for an orphan grace of years.
async fn seed(rows: u64) {
    common::seed(
        &database(rows),
        rows,
        "CASE WHEN i % 10 = 3 AND i % 20 = 3 THEN 'pending' \
              WHEN i % 10 = 3 THEN 'uploaded' ELSE 'processed' END",
    )
    .await;
}

fn write_config(dir: &Path, garage: &Garage, rows: u64) -> PathBuf {
    let path = dir.join(format!("reconcile-{rows}.toml"));
    let toml = format!(
        "[database]\nurl = \"{}\"\n\
         [storage]\nbucket = \"{}\"\nprefix = \"{PREFIX}\"\nregion = \"garage\"\n\
         endpoint_url = \"{}\"\nforce_path_style = true\n\
         [sweep]\norphan_grace = \"100years\"\n",
        common::database_url(&database(rows)),
        bucket_name(rows),
        garage.endpoint
    );
    std::fs::write(&path, toml).expect("write bench config");
    path
}

/// What one measured command took: wall seconds and peak RSS, from `/usr/bin/time`.
#[derive(Debug, Clone, Copy)]
struct Run {
    seconds: f64,
    rss_mib: f64,
}

/// Run `program args` under `/usr/bin/time`, its stdout to `out` (or nowhere); panics when it
/// fails, so that no figure comes from a run that did not do its work.
fn timed(program: &str, args: &[String], out: Option<&Path>) -> Run {
    let mut command = Command::new("/usr/bin/time");
    command
        .arg("-f")
        .arg("BENCH %e %M")
        .arg(program)
        .args(args)
        // rclone refuses to start with a custom CA bundle set; nobody here uses TLS.
        .env_remove("AWS_CA_BUNDLE")
        .stderr(Stdio::piped());
    command.stdout(match out {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("bench output file")),
        None => Stdio::null(),
    });
    let output = command
        .output()
        .expect("run /usr/bin/time (Debian package `time`)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{program} failed: {}",
        stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("BENCH "))
        .expect("/usr/bin/time's line");
    let mut fields = line.split_whitespace().skip(1);
    let seconds = fields.next().and_then(|s| s.parse().ok()).expect("seconds");
    let kib: f64 = fields.next().and_then(|s| s.parse().ok()).expect("max RSS");
    Run {
        seconds,
        rss_mib: kib / 1024.0,
    }
}

struct Tools {
    reconcile: String,
    dir: PathBuf,
}

impl Tools {
    fn sweep(&self, config: &Path, dry_run: bool) -> (Run, serde_json::Value) {
        let report = self.dir.join("report.jsonl");
        let mut args = vec![
            "--config".into(),
            config.display().to_string(),
            "-q".into(),
            "sweep".into(),
            "--format".into(),
            "jsonl".into(),
        ];
        args.push(if dry_run { "--dry-run" } else { "--force" }.into());
        let run = timed(&self.reconcile, &args, Some(&report));
        let text = std::fs::read_to_string(&report).expect("read report");
        let summary = text
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .expect("the report's summary line");
        (run, summary)
    }

    fn rclone(&self, rows: u64) -> (Run, usize) {
        let listing = self.dir.join("rclone.txt");
        let run = timed(
            "rclone",
            &[
                "lsf".into(),
                "-R".into(),
                format!("garage:{}/{PREFIX}", bucket_name(rows)),
            ],
            Some(&listing),
        );
        let lines = std::fs::read_to_string(&listing)
            .expect("read rclone listing")
            .lines()
            .count();
        (run, lines)
    }

    /// One curl fetching every page of the prefix, 4 at once.
    fn floor(&self, garage: &Garage, rows: u64, keys: &[String]) -> (Run, usize) {
        let bucket = bucket_name(rows);
        let mut args: Vec<String> = [
            "-s",
            "--fail",
            "-Z",
            "--parallel-max",
            "4",
            "--aws-sigv4",
            "aws:amz:garage:s3",
            "-H",
            // garage wants the payload hash: that of the empty body.
            "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--user".into());
        args.push(format!("{}:{}", garage.access_key, garage.secret_key));
        let mut pages = 0;
        let starts = std::iter::once(None).chain(keys.chunks(PAGE).map(|c| c.last()));
        for start in starts.take(keys.len().div_ceil(PAGE)) {
            let mut url = format!(
                "{}/{bucket}?list-type=2&max-keys={PAGE}&prefix={}",
                garage.endpoint,
                urlencode(PREFIX)
            );
            if let Some(start) = start {
                url.push_str(&format!("&start-after={}", urlencode(start)));
            }
            args.push("-o".into());
            args.push("/dev/null".into());
            args.push(url);
            pages += 1;
        }
        (timed("curl", &args, None), pages)
    }
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn actions(summary: &serde_json::Value, outcome: &str) -> u64 {
    summary["actions"][outcome].as_u64().unwrap_or(0)
}

async fn size(garage: &Garage, tools: &Tools, rows: u64, rounds: usize) {
    load(garage, rows).await;
    seed(rows).await;
    let config = write_config(&tools.dir, garage, rows);
    let keys = keys(rows);
    println!(
        "\n{rows} rows, {} objects under {PREFIX}, {rounds} rounds",
        keys.len()
    );

    let (mut sweep, mut rss, mut rclone, mut floor) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let (run, summary) = tools.sweep(&config, true);
        assert_eq!(summary["objects_listed"].as_u64(), Some(keys.len() as u64));
        sweep.push(run.seconds);
        rss.push(run.rss_mib);
        let (run, listed) = tools.rclone(rows);
        assert_eq!(listed, keys.len(), "rclone listed another bucket");
        rclone.push(run.seconds);
        let (run, _) = tools.floor(garage, rows, &keys);
        floor.push(run.seconds);
    }
    let sweep_s = show("dry-run sweep", &sweep, "s");
    let rclone_s = show("rclone lsf -R", &rclone, "s");
    let floor_s = show("listing floor (curl, 4 at once)", &floor, "s");
    show("sweep peak RSS", &rss, "MiB");
    println!(
        "  sweep/floor {:.2}   sweep/rclone {:.2}   objects/s in the sweep {:.0}",
        sweep_s / floor_s,
        sweep_s / rclone_s,
        keys.len() as f64 / sweep_s
    );

    let (mut apply, mut per_second, mut applied) = (vec![], vec![], 0);
    for _ in 0..rounds.min(2) {
        seed(rows).await;
        let (run, summary) = tools.sweep(&config, false);
        applied = actions(&summary, "applied");
        assert_eq!(
            actions(&summary, "failed") + actions(&summary, "skipped"),
            0,
            "every action applies"
        );
        apply.push(run.seconds);
        per_second.push(applied as f64 / (run.seconds - sweep_s).max(1e-3));
    }
    show(&format!("apply of {applied} actions"), &apply, "s");
    show(
        "apply actions/s beyond the dry run",
        &per_second,
        "actions/s",
    );
    // Leave the table as the next run's dry run expects it.
    seed(rows).await;
}

#[tokio::main]
async fn main() {
    let mut sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.replace('_', "").parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = vec![10_000, 100_000];
    }
    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let garage = Garage::from_env();
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = Tools {
        reconcile: std::env::var("BENCH_RECONCILE").expect("BENCH_RECONCILE (run scripts/bench)"),
        dir: dir.path().to_owned(),
    };
    for rows in sizes {
        size(&garage, &tools, rows, rounds).await;
    }
}
