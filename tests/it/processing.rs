//! Post-processing: real hooks (an HTTP server in the test), the durable job table, retries on a
//! manual clock, several workers, a worker that dies mid-job.

use crate::helpers::*;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use upload_reconciler::catalog::Catalog;
use upload_reconciler::catalog::sql::SqlCatalog;
use upload_reconciler::config::Config;
use upload_reconciler::metrics::Metrics;
use upload_reconciler::processing::hook::Hook;
use upload_reconciler::processing::worker::{Outcome, Worker};
use upload_reconciler::processing::{ManualClock, RetryPolicy};

struct Jobs {
    db: TestDb,
    catalog: Arc<SqlCatalog>,
    clock: Arc<ManualClock>,
    metrics: Arc<Metrics>,
}

async fn jobs(ids: &[&str]) -> Jobs {
    let db = TestDb::with_docs(None).await;
    let config = Config::from_toml(&format!(
        "[database]\nurl = \"{}\"\n[storage]\nbucket = \"uploads\"",
        db.url()
    ))
    .expect("valid config");
    let catalog = Arc::new(
        SqlCatalog::connect(
            &config.database,
            upload_reconciler::adapters::scope(&config),
        )
        .await
        .expect("connect"),
    );
    catalog.migrate().await.expect("migrate");
    let clock = Arc::new(ManualClock::new(Utc::now()));
    for id in ids {
        db.doc(id, "uploaded", MINUTE).await;
        let mut tx = catalog.begin().await.expect("begin");
        tx.enqueue_job(id, id, None, clock.now_for_tests())
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
    }
    Jobs {
        db,
        catalog,
        clock,
        metrics: Metrics::new(),
    }
}

trait NowForTests {
    fn now_for_tests(&self) -> chrono::DateTime<Utc>;
}

impl NowForTests for ManualClock {
    fn now_for_tests(&self) -> chrono::DateTime<Utc> {
        use upload_reconciler::processing::Clock;
        self.now()
    }
}

impl Jobs {
    fn worker(&self, name: &str, url: &str, timeout: Duration, retry: RetryPolicy) -> Worker {
        Worker {
            id: name.to_owned(),
            catalog: self.catalog.clone(),
            hook: Arc::new(Hook::Webhook {
                client: reqwest::Client::new(),
                url: url.to_owned(),
                timeout,
            }),
            bucket: "uploads".into(),
            retry,
            lease: Duration::from_secs(60),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Run one worker until the doc settles, moving the clock to each retry instead of sleeping.
    async fn settle(&self, worker: &Worker) -> Outcome {
        for _ in 0..100 {
            let outcome = tokio::time::timeout(Duration::from_secs(30), worker.try_execute_task())
                .await
                .expect("a task finished (likely hung)")
                .expect("task");
            match outcome {
                Outcome::Retrying { at, .. } => {
                    let wait = (at - self.clock.now_for_tests())
                        .to_std()
                        .unwrap_or_default();
                    self.clock.advance(wait);
                }
                Outcome::Empty => panic!("no job due: the retry was scheduled in the future"),
                settled => return settled,
            }
        }
        panic!("never settled");
    }

    async fn job_row(&self, id: &str) -> (String, i32, Option<String>) {
        sqlx::query_as("SELECT state, attempts, last_error FROM reconciler.jobs WHERE doc_id = $1")
            .bind(id)
            .fetch_one(&self.db.pool)
            .await
            .expect("job row")
    }
}

fn retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base: Duration::from_secs(10),
        max: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn a_hook_failing_its_first_k_calls_is_called_k_plus_1_times_and_the_doc_is_processed() {
    let j = jobs(&["doc"]).await;
    let k = 3;
    let hook = HookServer::start(Duration::ZERO, move |n| {
        Reply::Status(if n < k { 503 } else { 204 })
    })
    .await;
    let worker = j.worker("w1", &hook.url, Duration::from_secs(5), retry(10));

    assert_eq!(
        j.settle(&worker).await,
        Outcome::Processed { id: "doc".into() }
    );
    assert_eq!(hook.calls_for("doc"), k + 1);
    let attempts: Vec<u64> = hook
        .calls()
        .iter()
        .map(|c| c["attempt"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(attempts, [1, 2, 3, 4], "each call says which attempt it is");
    assert_eq!(hook.calls()[0]["bucket"], "uploads");
    assert_eq!(hook.calls()[0]["key"], "doc");
    assert_eq!(j.db.status("doc").await.as_deref(), Some("processed"));
    assert_eq!(j.job_row("doc").await, ("done".into(), 4, None));
    assert_eq!(Metrics::count(&j.metrics.processing_attempts, "error"), 3);
    assert_eq!(Metrics::count(&j.metrics.processing_attempts, "ok"), 1);
    let audit = j.db.audit().await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(
        (audit[0].1.as_str(), audit[0].2.as_str()),
        ("processing", "process")
    );
}

#[tokio::test]
async fn a_hook_that_always_fails_gives_up_after_exactly_max_attempts_and_retry_starts_over() {
    let j = jobs(&["doomed"]).await;
    // Four failures, then the processor is fixed.
    let hook = HookServer::start(Duration::ZERO, |n| {
        Reply::Status(if n < 4 { 500 } else { 200 })
    })
    .await;
    let worker = j.worker("w1", &hook.url, Duration::from_secs(5), retry(4));

    assert_eq!(
        j.settle(&worker).await,
        Outcome::Exhausted {
            id: "doomed".into()
        }
    );
    assert_eq!(hook.calls_for("doomed"), 4);
    assert_eq!(j.db.status("doomed").await.as_deref(), Some("failed"));
    let (state, attempts, last_error) = j.job_row("doomed").await;
    assert_eq!((state.as_str(), attempts), ("failed", 4));
    assert!(last_error.unwrap_or_default().contains("500"));
    assert!(
        j.db.audit()
            .await
            .iter()
            .any(|a| a.1 == "processing_exhausted" && a.2 == "fail")
    );
    assert_eq!(
        worker.try_execute_task().await.expect("task"),
        Outcome::Empty
    );

    // The operator retries every failed doc: a fresh budget, audited.
    let run = Reconcile {
        database_url: j.db.url(),
        bucket: "uploads".into(),
        endpoint: moto_endpoint(),
        env: Vec::new(),
    }
    .set("processing.hook", "webhook")
    .set("processing.url", &hook.url)
    .run(&["retry", "--failed"])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("doomed: failed -> uploaded"),
        "{}",
        run.stdout
    );
    assert_eq!(j.db.status("doomed").await.as_deref(), Some("uploaded"));
    assert_eq!(j.job_row("doomed").await, ("queued".into(), 0, None));
    assert!(
        j.db.audit()
            .await
            .iter()
            .any(|a| a.1 == "retry" && a.0 == "doomed")
    );

    assert_eq!(
        j.settle(&worker).await,
        Outcome::Processed {
            id: "doomed".into()
        }
    );
    assert_eq!(hook.calls_for("doomed"), 5);

    // explain lists the key's multipart uploads and asks the bucket whether it keeps versions:
    // the bucket must exist (any test may have made it already in the shared moto; us-east-1
    // answers 200 to both).
    let _ = s3_client(&moto_endpoint())
        .create_bucket()
        .bucket("uploads")
        .send()
        .await;
    let explained = Reconcile {
        database_url: j.db.url(),
        bucket: "uploads".into(),
        endpoint: moto_endpoint(),
        env: Vec::new(),
    }
    .run(&["explain", "doomed", "--format", "json"])
    .await;
    assert_eq!(explained.code, 0, "{}", explained.stderr);
    let job = &explained.json()["job"];
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_u64()),
        (Some("done"), Some(1))
    );
}

#[tokio::test]
async fn a_hook_that_hangs_times_out_and_the_timeout_counts_as_a_failure() {
    let j = jobs(&["slow"]).await;
    let hook = HookServer::start(Duration::ZERO, |_| Reply::Hang).await;
    let worker = j.worker("w1", &hook.url, Duration::from_millis(300), retry(10));
    let started = std::time::Instant::now();
    let outcome = worker.try_execute_task().await.expect("task");
    assert!(matches!(outcome, Outcome::Retrying { .. }), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (state, attempts, last_error) = j.job_row("slow").await;
    assert_eq!((state.as_str(), attempts), ("queued", 1));
    assert_eq!(last_error.as_deref(), Some("timed out"));
    assert_eq!(Metrics::count(&j.metrics.processing_attempts, "timeout"), 1);
    assert_eq!(j.db.status("slow").await.as_deref(), Some("uploaded"));
}

#[tokio::test]
async fn two_workers_share_the_jobs_and_never_run_one_twice_at_once() {
    let ids: Vec<String> = (0..20).map(|i| format!("doc-{i:02}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let j = jobs(&id_refs).await;
    // Every doc fails once, then succeeds: the schedule implies exactly two calls per doc.
    let hook = HookServer::start(Duration::from_millis(20), |n| {
        Reply::Status(if n == 0 { 502 } else { 200 })
    })
    .await;
    let immediate = RetryPolicy {
        max_attempts: 5,
        base: Duration::ZERO,
        max: Duration::ZERO,
    };
    let a = j.worker("a", &hook.url, Duration::from_secs(5), immediate);
    let b = j.worker("b", &hook.url, Duration::from_secs(5), immediate);
    let (ran_a, ran_b) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(drive(&a, &j.db), drive(&b, &j.db))
    })
    .await
    .expect("workers finished (likely deadlocked)");

    assert_eq!(
        hook.calls().len(),
        2 * ids.len(),
        "the schedule implies two calls a doc"
    );
    for id in &ids {
        assert_eq!(hook.calls_for(id), 2, "{id}");
    }
    assert_eq!(
        hook.max_overlap(),
        1,
        "a doc's hook ran twice at the same time"
    );
    assert!(
        ran_a > 0 && ran_b > 0,
        "both workers took jobs: {ran_a} and {ran_b}"
    );
}

/// Run a worker until every doc is processed; how many jobs it ran.
async fn drive(worker: &Worker, db: &TestDb) -> usize {
    let mut ran = 0;
    loop {
        match worker.try_execute_task().await.expect("task") {
            Outcome::Empty => {
                let left: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM docs WHERE status <> 'processed'")
                        .fetch_one(&db.pool)
                        .await
                        .expect("count");
                if left == 0 {
                    return ran;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ => ran += 1,
        }
    }
}

#[tokio::test]
async fn a_job_whose_worker_died_is_taken_again_after_its_lease() {
    let j = jobs(&["orphaned"]).await;
    let hook = HookServer::start(Duration::ZERO, |n| {
        if n == 0 {
            Reply::Hang
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let dying = Arc::new(j.worker("dying", &hook.url, Duration::from_secs(30), retry(10)));
    let task = {
        let dying = dying.clone();
        tokio::spawn(async move { dying.try_execute_task().await })
    };
    eventually(
        Duration::from_secs(10),
        "the first call arrived",
        || async { hook.calls_for("orphaned") == 1 },
    )
    .await;
    task.abort(); // the worker dies mid-call
    let _ = task.await;

    let rescuer = j.worker("rescuer", &hook.url, Duration::from_secs(5), retry(10));
    assert_eq!(
        rescuer.try_execute_task().await.expect("task"),
        Outcome::Empty,
        "still leased"
    );
    j.clock.advance(Duration::from_secs(61));
    assert_eq!(
        rescuer.try_execute_task().await.expect("task"),
        Outcome::Processed {
            id: "orphaned".into()
        }
    );
    assert_eq!(hook.calls_for("orphaned"), 2);
    assert_eq!(j.db.status("orphaned").await.as_deref(), Some("processed"));
    // Both attempts count: the one whose worker died was started (and its call said so).
    assert_eq!(j.job_row("orphaned").await, ("done".into(), 2, None));
    let attempts: Vec<u64> = hook
        .calls()
        .iter()
        .map(|c| c["attempt"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(attempts, [1, 2]);
}

#[tokio::test]
async fn retry_delays_stay_within_the_configured_bounds() {
    let j = jobs(&["flaky"]).await;
    let hook = HookServer::start(Duration::ZERO, |_| Reply::Status(500)).await;
    let policy = retry(8);
    let worker = j.worker("w1", &hook.url, Duration::from_secs(5), policy);
    for failures in 1..policy.max_attempts {
        let before = j.clock.now_for_tests();
        match worker.try_execute_task().await.expect("task") {
            Outcome::Retrying { at, .. } => {
                let delay = (at - before).to_std().expect("not in the past");
                assert!(
                    delay <= policy.ceiling(failures),
                    "attempt {failures}: {delay:?} > {:?}",
                    policy.ceiling(failures)
                );
                // Not due before its time...
                j.clock
                    .advance(delay.saturating_sub(Duration::from_millis(1)));
                if delay > Duration::from_millis(1) {
                    assert_eq!(
                        worker.try_execute_task().await.expect("task"),
                        Outcome::Empty
                    );
                }
                // ...and due at it.
                j.clock.advance(Duration::from_millis(1));
            }
            other => panic!("attempt {failures}: {other:?}"),
        }
    }
    assert_eq!(policy.ceiling(1), Duration::from_secs(10));
    assert_eq!(policy.ceiling(4), Duration::from_secs(60));
    assert_eq!(
        worker.try_execute_task().await.expect("task"),
        Outcome::Exhausted { id: "flaky".into() }
    );
    assert_eq!(hook.calls_for("flaky"), 8);
}

#[tokio::test]
async fn the_sweep_requeues_stuck_docs_and_fails_exhausted_ones() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    for (id, status, age) in [
        ("stuck", "uploaded", HOUR),
        ("young", "uploaded", MINUTE),
        ("exhausted", "uploaded", HOUR),
        ("lost", "pending", MINUTE),
    ] {
        db.doc(id, status, age).await;
        bucket.put(id, "x").await;
    }
    let hooked = Reconcile::new(&db, &bucket)
        .set("processing.hook", "webhook")
        .set(
            "processing.url",
            "http://127.0.0.1:9/never-called-by-a-sweep",
        );
    assert_eq!(hooked.run(&["migrate"]).await.code, 0);
    sqlx::query(
        "INSERT INTO reconciler.jobs (scope, doc_id, key, state, attempts, next_attempt_at) \
         VALUES ($1, 'exhausted', 'exhausted', 'failed', 10, now())",
    )
    .bind(scope_of("docs", &bucket.name, ""))
    .execute(&db.pool)
    .await
    .expect("a failed job");

    let audit = hooked.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(
        audit.findings(),
        triples(&[
            ("lost_notification", "lost", "adopt"),
            ("processing_exhausted", "exhausted", "fail"),
            ("stuck_processing", "stuck", "enqueue"),
        ])
    );

    let apply = hooked.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(db.status("stuck").await.as_deref(), Some("uploaded"));
    assert_eq!(db.status("lost").await.as_deref(), Some("uploaded"));
    assert_eq!(db.status("exhausted").await.as_deref(), Some("failed"));
    let queued: Vec<String> = sqlx::query_scalar(
        "SELECT doc_id FROM reconciler.jobs WHERE state = 'queued' ORDER BY doc_id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("jobs");
    assert_eq!(
        queued,
        ["lost", "stuck"],
        "adoption and stuck docs are queued for processing"
    );

    let again = hooked.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(again.findings(), vec![], "{}", again.stdout);

    // With no hook, a stuck doc is simply done.
    db.doc("stuck-too", "uploaded", HOUR).await;
    bucket.put("stuck-too", "x").await;
    let plain = Reconcile::new(&db, &bucket)
        .run(&["--format", "json"])
        .await;
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert_eq!(db.status("stuck-too").await.as_deref(), Some("processed"));
}

#[tokio::test]
async fn retry_names_a_doc_that_cannot_be_retried() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("done", "processed", HOUR).await;
    let reconcile = Reconcile::new(&db, &bucket);
    let missing = reconcile.run(&["retry", "nope"]).await;
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(missing.stderr.contains("\"nope\""), "{}", missing.stderr);
    let done = reconcile.run(&["retry", "done"]).await;
    assert_eq!(done.code, 2, "{}", done.stderr);
    assert!(done.stderr.contains("\"done\""), "{}", done.stderr);
    let neither = reconcile.run(&["retry"]).await;
    assert_eq!(neither.code, 2, "{}", neither.stderr);
}

/// The most memory a process has held (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc status")
        * 1024
}

/// What a hook may cost the daemon however much it writes: far less than the gigabyte here.
const FLAT_RSS: u64 = 100 * 1024 * 1024;

/// A daemon over one pending doc whose object is there: its first sweep adopts it and queues a
/// job, which runs `reconcile`'s hook once. Returns the job's last error and the daemon's peak
/// memory once the job has failed.
async fn fail_one_job(db: &TestDb, reconcile: Reconcile) -> (String, u64) {
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile
        .set("sweep.schedule", "* * * * * *")
        .set("processing.max_attempts", "1")
        .set("processing.timeout", "120s")
        .spawn(&["daemon", "-v"], &log);
    daemon_address(&log).await;
    let failed = || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM reconciler.jobs WHERE doc_id = 'doc'")
            .fetch_optional(&db.pool)
            .await
            .ok()
            .flatten()
            .as_deref()
            == Some("failed")
    };
    eventually(Duration::from_secs(120), "the doc's job failed", failed).await;
    let peak = peak_rss(daemon.id().expect("the daemon runs"));
    daemon.kill().await.expect("stop the daemon");
    (job_last_error(db, "doc").await, peak)
}

#[tokio::test]
async fn a_command_writing_a_gigabyte_leaves_the_daemon_s_memory_flat_and_keeps_its_output_s_end() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("doc", "pending", MINUTE).await;
    bucket.put("doc", "body").await;
    let command =
        r#"["sh", "-c", "yes 0123456789 | head -c 1000000000; echo THE-END >&2; exit 1"]"#;
    let reconcile = Reconcile::new(&db, &bucket)
        .set("processing.hook", "command")
        .set("processing.command", command);
    let (last_error, peak) = fail_one_job(&db, reconcile).await;
    assert!(last_error.contains("exit status: 1"), "{last_error}");
    assert!(last_error.ends_with("THE-END"), "{last_error}");
    assert!(last_error.contains("0123456789"), "{last_error}");
    assert!(
        peak < FLAT_RSS,
        "the daemon's peak RSS was {} MB",
        peak / 1024 / 1024
    );
}

#[tokio::test]
async fn a_webhook_answering_a_gigabyte_leaves_the_daemon_s_memory_flat_and_keeps_the_body_s_start()
{
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("doc", "pending", MINUTE).await;
    bucket.put("doc", "body").await;
    let host = failing_server(|_| (1_000_000_000, "THE-START".into())).await;
    let url = format!("http://{host}/process");
    let reconcile = Reconcile::new(&db, &bucket)
        .set("processing.hook", "webhook")
        .set("processing.url", &url);
    let (last_error, peak) = fail_one_job(&db, reconcile).await;
    assert!(last_error.contains("answered 500"), "{last_error}");
    assert!(last_error.contains("THE-STARTxxx"), "{last_error}");
    assert!(last_error.len() <= 2100, "{} bytes", last_error.len());
    assert!(
        peak < FLAT_RSS,
        "the daemon's peak RSS was {} MB",
        peak / 1024 / 1024
    );
}
