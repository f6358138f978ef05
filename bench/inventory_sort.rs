//! The external sort an inventory goes through, alone: `N` objects (default 10M) with scattered
//! keys of an upload API's shape (`docs/<32 hex>`, 37 bytes), pushed in no order into the
//! sort with `storage.inventory.memory`'s default (64 MiB, or `MEMORY` bytes), then read back in
//! order (and checked). No bucket, no database:
//!
//!   cargo bench --no-default-features --bench inventory_sort -- 10000000 [MEMORY]
//!
//! Prints keys, wall seconds, keys/s, CPU seconds (user+sys), peak RSS (VmHWM), and the runs
//! spilled. Spill files go to TMPDIR.

use std::time::Instant;
use upload_reconciler::model::ObjectMeta;
use upload_reconciler::sweep::sort::Sorter;

fn cpu_seconds() -> f64 {
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks (100 a second).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |n: usize| {
        fields
            .get(n)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let memory: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64 << 20);
    let modified = chrono::DateTime::from_timestamp(1_764_806_400, 0).expect("a time");
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    let mut sorter = Sorter::new("the inventory", usize::MAX, memory);
    for i in 0..n {
        // A bijection of 0..2^64: every key distinct, in no order.
        let scattered = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 7);
        sorter
            .push(ObjectMeta {
                key: format!("docs/{scattered:016x}{:016x}", !scattered),
                size: 1024,
                etag: Some("\"0cc175b9c0f1b6a831c399e269772661\"".into()),
                last_modified: modified,
                linked: false,
            })
            .expect("pushed");
    }
    let sorted = sorter.finish().expect("sorted");
    let stats = sorted.stats();
    let mut last = String::new();
    let mut count = 0u64;
    for object in sorted {
        let object = object.expect("read back");
        assert!(object.key > last, "out of order at {}", object.key);
        last = object.key;
        count += 1;
    }
    assert_eq!(count, n);
    let seconds = wall.elapsed().as_secs_f64();
    println!(
        "{n} keys sorted in {seconds:.1} s ({:.0} keys/s), {:.1} s CPU, peak RSS {:.0} MiB, \
         memory {} MiB, {} runs spilled",
        n as f64 / seconds,
        cpu_seconds() - cpu,
        peak_rss_mib(),
        memory >> 20,
        stats.spilled_runs
    );
}
