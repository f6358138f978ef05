//! The sweep and the apply on a real S3 server (garage), beside what listing the same bucket costs
//! without the reconciler. Run through `scripts/bench`, which starts garage and passes its address
//! and key; this file loads the buckets (once: they stay cached with garage's data), seeds the
//! table, and measures.
//!
//!     scripts/bench                      # 10k and 100k objects, 3 rounds
//!     scripts/bench 10000 100000 1000000 # the long setting (loading 1M objects: about 4 minutes)
//!
//! For each size, every round runs these one after the other (alternated, so that a slower moment
//! of the machine weighs on all alike):
//! - `sweep`: `reconcile sweep --dry-run`, the release binary, Postgres and garage;
//! - `rclone`: `rclone lsf -R` of the same prefix;
//! - `floor`: the ListObjectsV2 pages of the prefix fetched by one curl, 4 at once (the pages'
//!   start-after keys are known, since the harness generated the keys);
//! - the sweep from the bucket's S3 Inventory, once from a CSV report and once from a Parquet one,
//!   written before the rounds in AWS's layout and formats (bench/inventory.rs) into the bucket
//!   `bench-inventory`: each must find what the sweep from the listing found. The three sweeps
//!   run on the table and again on a healthy one (no row without its object: no finding, so no
//!   HEAD to confirm one).
//!
//! Then the apply: the table seeded afresh, `reconcile sweep --force` applies the expire and
//! mark_missing actions (a tenth of the rows: 1k at 10k, 10k at 100k); its actions a second count
//! the time beyond the dry run's median.
//!
//! `BENCH_SWEEP_ONLY=1` runs the dry-run sweeps alone (from the listing and from the inventories:
//! no rclone, floor or apply), `BENCH_INVENTORY=0` leaves out the inventories, and
//! `BENCH_CALLGRIND=DIR` first runs one dry-run sweep under `valgrind --tool=callgrind`, printing
//! the instructions it executed and leaving the profile in DIR.
//!
//! Wall time, CPU time and peak RSS come from `/usr/bin/time`; beside them garage's CPU time over
//! the same command, from `/proc` (scripts/bench passes its pid as `BENCH_SERVER_PID`): both share
//! the machine's cores. Each figure printed is the median of the
//! rounds, min and max beside it.

mod common;
mod inventory;

use aws_sdk_s3::primitives::ByteStream;
use common::{has_object, has_orphan, show};
use futures::stream::{self, StreamExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use upload_reconciler::config::StorageConfig;

const PREFIX: &str = "docs/";
const PAGE: usize = 1000;

/// Every key of a bucket of `rows` docs, in byte order (the orphans within their grace).
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
        StorageConfig {
            bucket: bucket.to_owned(),
            region: Some("garage".into()),
            endpoint_url: Some(self.endpoint.clone()),
            force_path_style: true,
            ..StorageConfig::default()
        }
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

/// The table of a bucket with no drift: only the rows whose object is there (for the sweeps from
/// an inventory, whose findings each cost a HEAD).
fn healthy_database(rows: u64) -> String {
    format!("reconcile_bench_{rows}_healthy")
}

/// A fresh table of `rows` docs: the rows without objects were created two hours ago (past the
/// pending TTL), the orphans' objects are young for an orphan grace of years.
async fn seed(rows: u64) {
    common::seed(&database(rows), rows, common::STATUS_OF_ROW).await;
}

/// The same table without the rows whose object is missing: nothing to find but the orphans,
/// in their grace.
async fn seed_healthy(rows: u64) {
    common::seed_where(
        &healthy_database(rows),
        rows,
        "'processed'",
        common::HAS_OBJECT,
    )
    .await;
}

/// Postgres on localhost, without TLS: its handshake is a fixed cost of each process (about
/// 0.2 s here, BENCHMARKS.md), nothing to do with the bucket's size. With `inventory` (its
/// `s3://` URL), the sweep reads that S3 Inventory instead of listing the bucket; `name` names
/// the file beside the database's.
fn write_config(
    dir: &Path,
    garage: &Garage,
    rows: u64,
    db: &str,
    name: &str,
    inventory: Option<&str>,
) -> PathBuf {
    let path = dir.join(format!("{db}-{name}.toml"));
    let mut toml = format!(
        "[database]\nurl = \"{}?sslmode=disable\"\n\
         [storage]\nbucket = \"{}\"\nprefix = \"{PREFIX}\"\nregion = \"garage\"\n\
         endpoint_url = \"{}\"\nforce_path_style = true\n\
         [sweep]\norphan_grace = \"10years\"\n",
        common::database_url(db),
        bucket_name(rows),
        garage.endpoint
    );
    if let Some(url) = inventory {
        toml.push_str(&format!("[storage.inventory]\nurl = \"{url}\"\n"));
    }
    std::fs::write(&path, toml).expect("write bench config");
    path
}

/// What one measured command took: wall seconds, its own CPU seconds and peak RSS (from
/// `/usr/bin/time`), and the CPU seconds garage spent meanwhile (both share the machine's cores).
#[derive(Debug, Clone, Copy)]
struct Run {
    seconds: f64,
    cpu: f64,
    rss_mib: f64,
    server_cpu: f64,
}

/// Garage's CPU seconds so far (user and system), from /proc: scripts/bench passes its pid.
fn server_cpu() -> f64 {
    let Some(pid) = std::env::var("BENCH_SERVER_PID").ok() else {
        return 0.0;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses: utime and stime are the 12th
    // and 13th, in clock ticks (100 a second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Run `program args` under `/usr/bin/time`, its stdout to `out` (or nowhere); panics when it
/// fails, so that no figure comes from a run that did not do its work.
fn timed(program: &str, args: &[String], out: Option<&Path>) -> Run {
    let mut command = Command::new("/usr/bin/time");
    command
        .arg("-f")
        .arg("BENCH %e %M %U %S")
        .arg(program)
        .args(args)
        // rclone refuses to start with a custom CA bundle set; nobody here uses TLS.
        .env_remove("AWS_CA_BUNDLE")
        .stderr(Stdio::piped());
    command.stdout(match out {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("bench output file")),
        None => Stdio::null(),
    });
    let server_before = server_cpu();
    let output = command
        .output()
        .expect("run /usr/bin/time (Debian package `time`)");
    let server_cpu = server_cpu() - server_before;
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
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().expect("a figure of /usr/bin/time"))
        .collect();
    let [seconds, kib, user, system] = fields[..] else {
        panic!("/usr/bin/time's line: {line}");
    };
    Run {
        seconds,
        cpu: user + system,
        rss_mib: kib / 1024.0,
        server_cpu,
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

/// The median wall time of `runs` (printed with min and max), and beside it the median CPU
/// seconds of the command and of garage: on a machine they share, the listing cannot end before
/// both have had their CPU time.
fn show_runs(label: &str, runs: &[Run]) -> f64 {
    let median = |f: fn(&Run) -> f64| common::median(&runs.iter().map(f).collect::<Vec<_>>());
    let wall = show(
        label,
        &runs.iter().map(|r| r.seconds).collect::<Vec<_>>(),
        "s",
    );
    println!(
        "  {:<40} {:>9.3} s CPU, garage {:.3} s CPU, peak RSS {:.1} MiB",
        "",
        median(|r| r.cpu),
        median(|r| r.server_cpu),
        median(|r| r.rss_mib)
    );
    wall
}

fn actions(summary: &serde_json::Value, outcome: &str) -> u64 {
    summary["actions"][outcome].as_u64().unwrap_or(0)
}

/// The bucket's S3 Inventory, written afresh (dated now) in AWS's layout, once as CSV and once
/// as Parquet, into the bucket `bench-inventory`: each report's format and `s3://` URL. Every
/// object of the bucket has the body [`load`] put: one HEAD gives the size, ETag and date the
/// inventory lists for all of them.
async fn inventories(
    garage: &Garage,
    rows: u64,
    keys: &[String],
) -> Vec<(inventory::Format, String)> {
    let destination = "bench-inventory";
    let client = upload_reconciler::bucket::s3::client(&garage.storage(destination)).await;
    let _ = client.create_bucket().bucket(destination).send().await;
    let bucket = bucket_name(rows);
    let head = client
        .head_object()
        .bucket(&bucket)
        .key(&keys[0])
        .send()
        .await
        .expect("HEAD an object of the bench bucket");
    let etag = head.e_tag().expect("an ETag").trim_matches('"').to_owned();
    let modified = head.last_modified().expect("a date");
    let objects = inventory::Objects {
        bucket: &bucket,
        keys,
        size: head.content_length().expect("a size"),
        etag: &etag,
        modified: chrono::DateTime::from_timestamp_millis(
            modified.to_millis().expect("a date in range"),
        )
        .expect("a date in range"),
    };
    let mut reports = Vec::new();
    for format in [inventory::Format::Csv, inventory::Format::Parquet] {
        let started = Instant::now();
        // destination-prefix/source-bucket/config-ID, as AWS lays it out.
        let folder = format!("inventory/{bucket}/daily-{}", format.name());
        let (url, bytes) = inventory::write(
            &client,
            destination,
            &folder,
            format,
            &objects,
            chrono::Utc::now(),
        )
        .await;
        eprintln!(
            "  {} inventory of {} objects written to {url}: {:.1} MiB of data files, {:.1} s",
            format.name(),
            keys.len(),
            bytes as f64 / 1048576.0,
            started.elapsed().as_secs_f64()
        );
        reports.push((format, url));
    }
    reports
}

/// The dry-run sweeps of one table: from the listing first, then from each inventory.
struct Sweeps {
    table: &'static str,
    sources: Vec<(String, PathBuf)>,
    runs: Vec<Vec<Run>>,
}

impl Sweeps {
    fn new(
        table: &'static str,
        dir: &Path,
        garage: &Garage,
        rows: u64,
        db: &str,
        inventories: &[(inventory::Format, String)],
    ) -> Sweeps {
        let mut sources = vec![(
            "dry-run sweep".to_owned(),
            write_config(dir, garage, rows, db, "listing", None),
        )];
        for (format, url) in inventories {
            sources.push((
                format!("  from the {} inventory", format.name()),
                write_config(dir, garage, rows, db, format.name(), Some(url)),
            ));
        }
        Sweeps {
            table,
            runs: vec![vec![]; sources.len()],
            sources,
        }
    }

    fn listing(&self) -> &Path {
        &self.sources[0].1
    }

    /// One round: each sweep once. Those from an inventory must list the objects and find what
    /// the listing's found (each of their findings confirmed by a HEAD).
    fn round(&mut self, tools: &Tools, objects: usize) {
        let mut listing = serde_json::Value::Null;
        for (i, (label, config)) in self.sources.iter().enumerate() {
            let (run, summary) = tools.sweep(config, true);
            if i == 0 {
                assert_eq!(summary["objects_listed"].as_u64(), Some(objects as u64));
                listing = summary;
            } else {
                assert!(summary["inventory"].is_string(), "{label}: not from it");
                for field in ["objects_listed", "counts"] {
                    assert_eq!(summary[field], listing[field], "{label}: {field}");
                }
            }
            self.runs[i].push(run);
        }
    }

    /// Each sweep's medians; returns the listing's wall time.
    fn show(&self) -> f64 {
        println!("  {}", self.table);
        let mut listing_s = 0.0;
        for (i, ((label, _), runs)) in self.sources.iter().zip(&self.runs).enumerate() {
            let wall = show_runs(label, runs);
            show(
                "  CPU (user+sys)",
                &runs.iter().map(|r| r.cpu).collect::<Vec<_>>(),
                "s",
            );
            if i == 0 {
                listing_s = wall;
            } else {
                println!(
                    "  wall from the inventory / from the listing {:.2}",
                    wall / listing_s
                );
            }
        }
        listing_s
    }
}

async fn size(garage: &Garage, tools: &Tools, rows: u64, rounds: usize) {
    load(garage, rows).await;
    seed(rows).await;
    let keys = keys(rows);
    println!(
        "\n{rows} rows, {} objects under {PREFIX}, {rounds} rounds",
        keys.len()
    );
    // BENCH_INVENTORY=0 leaves out the sweeps from an inventory (and the healthy table).
    let inventories = if std::env::var("BENCH_INVENTORY").is_ok_and(|v| v == "0") {
        vec![]
    } else {
        seed_healthy(rows).await;
        inventories(garage, rows, &keys).await
    };
    let (dir, db) = (&tools.dir, &database(rows));
    let mut tables = vec![Sweeps::new(
        "the table: every 10th row without its object",
        dir,
        garage,
        rows,
        db,
        &inventories,
    )];
    if !inventories.is_empty() {
        let db = &healthy_database(rows);
        let table = "the healthy table: only the rows whose object is there";
        tables.push(Sweeps::new(table, dir, garage, rows, db, &inventories));
    }
    let config = tables[0].listing().to_owned();

    if let Some(dir) = std::env::var_os("BENCH_CALLGRIND") {
        callgrind(tools, &config, rows, Path::new(&dir));
    }
    if std::env::var("BENCH_SWEEP_ONLY").is_ok_and(|v| v == "1") {
        for _ in 0..rounds {
            for table in &mut tables {
                table.round(tools, keys.len());
            }
        }
        for table in &tables {
            table.show();
        }
        return;
    }

    let (mut rclone, mut floor) = (vec![], vec![]);
    for _ in 0..rounds {
        for table in &mut tables {
            table.round(tools, keys.len());
        }
        let (run, listed) = tools.rclone(rows);
        assert_eq!(listed, keys.len(), "rclone listed another bucket");
        rclone.push(run);
        let (run, _) = tools.floor(garage, rows, &keys);
        floor.push(run);
    }
    let sweep_s = tables[0].show();
    for table in &tables[1..] {
        table.show();
    }
    let sweep = &tables[0].runs[0];
    let rclone_s = show_runs("rclone lsf -R", &rclone);
    let floor_s = show_runs("listing floor (curl, 4 at once)", &floor);
    show(
        "sweep peak RSS",
        &sweep.iter().map(|r| r.rss_mib).collect::<Vec<_>>(),
        "MiB",
    );
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

/// One dry-run sweep under callgrind: instructions executed are stable where CPU seconds on
/// a shared machine are not. The profile is left in `dir` for `callgrind_annotate`.
fn callgrind(tools: &Tools, config: &Path, rows: u64, dir: &Path) {
    std::fs::create_dir_all(dir).expect("callgrind output folder");
    let out = dir.join(format!("callgrind.{rows}.out"));
    let status = Command::new("valgrind")
        .args(["--tool=callgrind", "--quiet"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&tools.reconcile)
        .arg("--config")
        .arg(config)
        .args(["-q", "sweep", "--dry-run", "--format", "jsonl"])
        .stdout(Stdio::null())
        .status()
        .expect("run valgrind (Debian package `valgrind`)");
    assert!(status.success(), "the sweep under callgrind failed");
    let profile = std::fs::read_to_string(&out).expect("read the callgrind profile");
    let total = profile
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary: ")
                .or_else(|| l.strip_prefix("totals: "))
        })
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("callgrind's instruction total");
    println!(
        "  {:<40} {:>9.3} G instructions ({})",
        "dry-run sweep under callgrind",
        total as f64 / 1e9,
        out.display()
    );
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
