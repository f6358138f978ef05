//! Dependency faults, injected on the wire by a [`FaultProxy`] in front of each of the daemon's
//! dependencies (Postgres, S3, SQS): connections reset, answers that never come, 5xx bursts and
//! SlowDown. The daemon must keep running, say it is unready (naming the dependency) while it
//! cannot work, recover by itself, and lose nothing; a sweep must never apply a plan built from a
//! partial listing, and the breaker must still hold.
//!
//! Knobs: `FAULT_SEED` replays a campaign (every run prints its seed); `FAULT_ROUNDS` sets the
//! number of fault rounds (default: each kind of fault once, about a minute). A long campaign:
//! `FAULT_ROUNDS=60 scripts/test --test it faults:: -- --nocapture` (about 5 minutes).

use crate::daemon::{signal, wait_exit};
use crate::helpers::*;
use crate::sweep::{LISTING_BREAKS, listed_through, listing_after, listing_world};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dependency {
    Database,
    Bucket,
    Queue,
}

impl Dependency {
    /// The word `/readyz` names it by.
    fn word(self) -> &'static str {
        match self {
            Dependency::Database => "database",
            Dependency::Bucket => "bucket",
            Dependency::Queue => "queue",
        }
    }
}

/// One kind of fault round: which dependencies, what they do, and whether it is a hard outage
/// (nothing gets through: `/readyz` must say so) or a soft one (the SDK's retries may cover it).
struct Kind {
    on: &'static [Dependency],
    fault: Fault,
    hard: bool,
}

const ALL: &[Dependency] = &[Dependency::Database, Dependency::Bucket, Dependency::Queue];

const KINDS: &[Kind] = &[
    kind(&[Dependency::Database], Fault::Reset, true),
    kind(&[Dependency::Database], Fault::Stall, true),
    kind(&[Dependency::Bucket], Fault::Reset, true),
    kind(&[Dependency::Bucket], Fault::Stall, true),
    kind(
        &[Dependency::Bucket],
        Fault::Answer(HttpError::InternalError, Pick::All),
        true,
    ),
    kind(
        &[Dependency::Bucket],
        Fault::Answer(HttpError::SlowDown, Pick::Fraction(0.5)),
        false,
    ),
    kind(&[Dependency::Queue], Fault::Reset, true),
    kind(&[Dependency::Queue], Fault::Stall, true),
    kind(
        &[Dependency::Queue],
        Fault::Answer(HttpError::ServiceUnavailable, Pick::EveryNth(2)),
        false,
    ),
    kind(
        &[Dependency::Queue],
        Fault::Answer(HttpError::SlowDown, Pick::Fraction(0.5)),
        false,
    ),
    kind(ALL, Fault::Reset, true),
    kind(ALL, Fault::Stall, true),
];

const fn kind(on: &'static [Dependency], fault: Fault, hard: bool) -> Kind {
    Kind { on, fault, hard }
}

/// How long a soft fault lasts, and a hard one once `/readyz` has reported it.
const SOFT_FAULT: Duration = Duration::from_secs(4);
const HARD_FAULT_AFTER_UNREADY: Duration = Duration::from_secs(1);
/// Bounds: a hard outage shows on `/readyz` within the first, and readiness comes back by
/// itself within the second once it ends (backoffs grow with the outage: pollers probe every
/// 1 to 30 s, receives retry every 0.5 to 60 s).
const UNREADY_WITHIN: Duration = Duration::from_secs(30);
const READY_WITHIN: Duration = Duration::from_secs(120);

fn rounds_from_env() -> usize {
    std::env::var("FAULT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(KINDS.len())
}

/// The kinds of the rounds: each kind once in a seeded order, then seeded draws.
fn schedule(rounds: usize, seed: u64) -> Vec<&'static Kind> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut order: Vec<&Kind> = KINDS.iter().collect();
    rng.shuffle(&mut order);
    (0..rounds)
        .map(|i| {
            order
                .get(i)
                .copied()
                .unwrap_or_else(|| &KINDS[rng.usize(..KINDS.len())])
        })
        .collect()
}

/// What the daemon's endpoints said, sampled through the campaign.
#[derive(Default)]
struct Watch {
    last_ready: Option<bool>,
    transitions: usize,
}

impl Watch {
    /// One sample: the process is alive and live; returns `/readyz`'s answer.
    async fn sample(&mut self, daemon: &mut tokio::process::Child, addr: &str) -> (u16, String) {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("the daemon exited during the campaign: {status}");
        }
        let (health, body) = http_get(addr, "/healthz").await;
        assert_eq!(health, 200, "/healthz: {body}");
        let ready = http_get(addr, "/readyz").await;
        let is_ready = ready.0 == 200;
        if self.last_ready.is_some_and(|last| last != is_ready) {
            self.transitions += 1;
        }
        self.last_ready = Some(is_ready);
        ready
    }
}

/// Uploads as the API's clients make them, until told to stop: a pending record, then a PUT to
/// a presigned URL (straight to the bucket: the client's path is not the daemon's dependency),
/// and now and then a record whose upload never came (a sweep expires it).
async fn upload_stream(
    db: Arc<TestDb>,
    bucket: Arc<TestBucket>,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, Vec<String>) {
    let (mut uploaded, mut abandoned) = (Vec::new(), Vec::new());
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let id = format!("up-{n:04}");
        db.doc(&id, "pending", MINUTE).await;
        bucket.presigned_put(&id, "body").await;
        uploaded.push(id);
        if n % 8 == 0 {
            let id = format!("gone-{n:04}");
            db.doc(&id, "pending", 2 * HOUR).await;
            abandoned.push(id);
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    (uploaded, abandoned)
}

#[tokio::test]
async fn a_campaign_of_dependency_faults_loses_nothing_and_the_daemon_tells_and_recovers() {
    let seed = fault_seed();
    let rounds = schedule(rounds_from_env(), seed);
    println!(
        "fault campaign: FAULT_SEED={seed} FAULT_ROUNDS={}",
        rounds.len()
    );
    let began = Instant::now();
    let db = Arc::new(TestDb::with_docs(None).await);
    let bucket = Arc::new(TestBucket::new().await);
    let queue = TestQueue::with_dead_letters(3).await;
    bucket.notify(&queue).await;
    let hook = HookServer::start(Duration::ZERO, |_| Reply::Status(200)).await;
    let mut proxies = BTreeMap::new();
    proxies.insert(
        Dependency::Database,
        FaultProxy::tcp("127.0.0.1:5432").await,
    );
    proxies.insert(Dependency::Bucket, FaultProxy::http(&bucket.endpoint).await);
    proxies.insert(Dependency::Queue, FaultProxy::http(&moto_endpoint()).await);
    let mut reconcile = Reconcile::new(&db, &bucket)
        .set("events.endpoint_url", &proxies[&Dependency::Queue].endpoint)
        .set("events.queue_url", &queue.url)
        .set("events.wait_time", "1s")
        .set("events.visibility_timeout", "4s")
        .set("events.read_timeout", "1s")
        .set("events.pollers", "2")
        .set("storage.read_timeout", "1s")
        .set("sweep.schedule", "*/3 * * * * *")
        .set("processing.hook", "webhook")
        .set("processing.url", &hook.url)
        .set("processing.timeout", "2s")
        .set("processing.lease_grace", "2s")
        .set("processing.backoff_base", "1s")
        .set("processing.backoff_max", "2s");
    reconcile.database_url = proxies[&Dependency::Database].url_of(&db);
    reconcile.endpoint = proxies[&Dependency::Bucket].endpoint.clone();
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon", "-v"], &log);
    let addr = daemon_address(&log).await;
    let mut watch = Watch::default();

    let stop = Arc::new(AtomicBool::new(false));
    let stream = tokio::spawn(upload_stream(db.clone(), bucket.clone(), stop.clone()));
    let mut slowest_recovery = Duration::ZERO;
    for (i, kind) in rounds.iter().enumerate() {
        let what = format!("round {i}: {:?} on {:?}", kind.fault, kind.on);
        println!("{what}");
        for dependency in kind.on {
            proxies[dependency].set(kind.fault);
        }
        let started = Instant::now();
        if kind.hard {
            let words: Vec<&str> = kind.on.iter().map(|d| d.word()).collect();
            loop {
                let (status, body) = watch.sample(&mut daemon, &addr).await;
                if status == 503 && words.iter().any(|w| body.contains(w)) {
                    break;
                }
                assert!(
                    started.elapsed() < UNREADY_WITHIN,
                    "{what}: /readyz did not name {words:?} within {UNREADY_WITHIN:?}: \
                     {status} {body}\nthe daemon's log ends:\n{}",
                    log_tail(&log)
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let hold = if kind.hard {
            HARD_FAULT_AFTER_UNREADY
        } else {
            SOFT_FAULT
        };
        let held = Instant::now();
        while held.elapsed() < hold {
            watch.sample(&mut daemon, &addr).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for dependency in kind.on {
            proxies[dependency].set(Fault::Pass);
        }
        let healed = Instant::now();
        loop {
            let (status, body) = watch.sample(&mut daemon, &addr).await;
            if status == 200 {
                break;
            }
            assert!(
                healed.elapsed() < READY_WITHIN,
                "{what}: not ready {READY_WITHIN:?} after the fault ended: {status} {body}\n\
                 the daemon's log ends:\n{}",
                log_tail(&log)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        slowest_recovery = slowest_recovery.max(healed.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    let (uploaded, abandoned) = stream.await.expect("the upload stream");

    // Every doc ends as it would have without a fault: each upload processed, each abandoned
    // record expired, nothing dead-lettered, the queue drained.
    // (The bounds below are generous: CI runs this beside other tests on two cores. On a
    // timeout the docs not yet settled are named, with the daemon's log.)
    let settle_by = Instant::now() + Duration::from_secs(240);
    loop {
        assert_eq!(queue.dead_letter_depth().await, 0, "dead-lettered");
        let mut unsettled = Vec::new();
        for (ids, status) in [(&uploaded, "processed"), (&abandoned, "expired")] {
            for id in ids {
                let now = db.status(id).await;
                if now.as_deref() != Some(status) {
                    unsettled.push(format!("{id}: {now:?}, not {status}"));
                }
            }
        }
        if unsettled.is_empty() {
            break;
        }
        assert!(
            Instant::now() < settle_by,
            "docs not settled 240 s after the campaign: {unsettled:?}\nthe daemon's log ends:\n{}",
            log_tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eventually(Duration::from_secs(120), "the queue drained", || async {
        queue.depth().await == 0
    })
    .await;
    assert_eq!(
        queue.dead_letter_depth().await,
        0,
        "dead-lettered at the end"
    );
    // One audit row per action: an adoption (by its event or by a sweep) and its processing for
    // each upload, an expiry for each abandoned record.
    let mut actions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, _, action, _, _) in db.audit().await {
        actions.entry(id).or_default().push(action);
    }
    for id in &uploaded {
        let mut seen = actions.get(id).cloned().unwrap_or_default();
        seen.sort();
        assert_eq!(seen, ["adopt", "process"], "{id}: {}", log_tail(&log));
        assert!(hook.calls_for(id) >= 1, "{id}: the hook was never called");
    }
    for id in &abandoned {
        assert_eq!(
            actions.get(id).cloned().unwrap_or_default(),
            ["expire"],
            "{id}"
        );
    }
    // A sweep that ran after the last fault closed any row a cut connection left `running`.
    let after = chrono::Utc::now();
    eventually(
        Duration::from_secs(60),
        "a sweep after the campaign",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM reconciler.sweeps WHERE outcome = 'ok' AND started_at > $1",
            )
            .bind(after)
            .fetch_one(&db.pool)
            .await
            .expect("read sweeps")
                > 0
        },
    )
    .await;
    watch.sample(&mut daemon, &addr).await;
    let metrics = http_get(&addr, "/metrics").await.1;
    let failed = |reason: &str| {
        let series = format!("reconcile_events_failed_total{{reason=\"{reason}\"}}");
        metric_value(&metrics, &series).unwrap_or_default()
    };
    let (held, given_up) = (failed("dependency_down"), failed("effect_failed"));
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)).await, 0);
    let running: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reconciler.sweeps WHERE outcome = 'running'")
            .fetch_one(&db.pool)
            .await
            .expect("read sweeps");
    assert_eq!(running, 0, "sweep rows left running");
    let text = std::fs::read_to_string(&log).expect("daemon log");
    assert!(!text.contains("panicked"), "a task panicked:\n{text}");

    let injected: Vec<String> = proxies
        .iter()
        .map(|(dependency, proxy)| format!("{}={:?}", dependency.word(), proxy.injected()))
        .collect();
    for (dependency, proxy) in &proxies {
        if rounds.iter().any(|k| k.on.contains(dependency)) {
            assert!(
                !proxy.injected().is_empty(),
                "{dependency:?}: no fault reached it"
            );
        }
    }
    println!(
        "fault campaign summary: seed {seed}, {} rounds; injected {}; readiness transitions {}, \
         slowest recovery {:.1}s; events held for a dependency {held}, left to redrive \
         {given_up}; docs {} uploaded + {} abandoned; {:.0}s",
        rounds.len(),
        injected.join(" "),
        watch.transitions,
        slowest_recovery.as_secs_f64(),
        uploaded.len(),
        abandoned.len(),
        began.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn a_scheduled_sweep_whose_listing_breaks_mid_way_applies_nothing_until_it_is_whole() {
    for fault in LISTING_BREAKS {
        // The first page passes, every later one breaks.
        let (db, _bucket, proxy, reconcile) = listed_through(1, fault).await;
        let reconcile = reconcile.set("sweep.schedule", "*/2 * * * * *");
        let before = db.snapshot().await;
        let logs = tempfile::tempdir().expect("temp dir");
        let log = logs.path().join("daemon.log");
        let mut daemon = reconcile.spawn(&["daemon", "-v"], &log);
        let addr = daemon_address(&log).await;

        eventually(Duration::from_secs(30), "two failed sweeps", || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.matches("sweep failed").count() >= 2
        })
        .await;
        let (status, body) = http_get(&addr, "/readyz").await;
        assert_eq!(status, 503, "{fault:?}: {body}");
        assert!(
            body.contains("the last sweep failed on the bucket"),
            "{fault:?}: {body}"
        );
        assert_eq!(db.snapshot().await, before, "{fault:?}: rows changed");
        assert_eq!(db.audit().await, vec![], "{fault:?}: audited");
        let sweeps: i64 = sqlx::query_scalar("SELECT count(*) FROM reconciler.sweeps")
            .fetch_one(&db.pool)
            .await
            .expect("read sweeps");
        // A sweep whose scan failed never began to apply: it has no history row at all.
        assert_eq!(sweeps, 0, "{fault:?}");

        proxy.set(Fault::Pass);
        eventually(
            Duration::from_secs(30),
            "the stale docs expired once the listing is whole",
            || async {
                let stale: Vec<String> = (0..3).map(|i| format!("stale-{i}")).collect();
                db.all_have_status(&stale, "expired").await
            },
        )
        .await;
        eventually(Duration::from_secs(30), "/readyz ready again", || async {
            http_get(&addr, "/readyz").await.0 == 200
        })
        .await;
        assert_eq!(db.audit().await.len(), 3, "{fault:?}");
        signal(&daemon, "TERM");
        assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)).await, 0);
    }
}

#[tokio::test]
async fn the_breaker_holds_under_listing_faults_and_after_them() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    listing_world(&db, &bucket, 30, 0).await;
    let proxy = FaultProxy::http(&bucket.endpoint).await;
    let mut reconcile = Reconcile::new(&db, &bucket)
        .set("storage.list_page_size", "10")
        .set("sweep.max_action_floor", "5");
    reconcile.endpoint = proxy.endpoint.clone();
    let before = db.snapshot().await;

    // Cut after the first page: read as whole, the listing would make 20 records missing.
    proxy.set(listing_after(1, Fault::Reset));
    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert_eq!(db.snapshot().await, before);

    // Real mass drift, listed through SlowDown answers: retried, read whole, and the breaker
    // stops the sweep on the true numbers before its first write.
    for i in 10..30 {
        bucket.delete(&format!("fine-{i:02}")).await;
    }
    proxy.set(listing_after(
        0,
        Fault::Answer(HttpError::SlowDown, Pick::FirstTry),
    ));
    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(proxy.injected()["slowdown"] >= 1);
    let report = run.json();
    assert_eq!(report["records_scanned"], 30, "{report}");
    assert_eq!(report["objects_listed"], 10, "{report}");
    assert_eq!(report["counts"]["missing_object"], 20, "{report}");
    assert_eq!(
        db.snapshot().await,
        before,
        "the breaker let a write through"
    );
    // Not even the reconciler's schema: a safety stop leaves the database as it was.
    assert!(!db.reconciler_schema_exists().await);
}

/// The last 40 lines of the daemon's log, for a failure's message.
fn log_tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
