//! A crash campaign: `reconcile daemon` is SIGKILLed again and again (`CRASH_KILLS`, default 20)
//! while a stream of presigned uploads, lost and duplicated notifications, removals, orphans and
//! stale records flows in, and restarted each time. Each kill is aimed at a phase: right after
//! the hook server receives a call (mid-job), right after a sweep's history row turns up
//! `running` (mid-sweep, in its apply phase), right after a burst of notifications is received
//! (messages in flight, mid-batch), in the middle of an orphan's quarantine (the S3 proxy kills
//! the daemon right after the bucket answered the re-check, the copy or the delete, before the
//! daemon hears it), or at a random moment. Once the last life settles, every effect must be
//! there exactly once.
//!
//! "Exactly once", checked with SQL against the app table and `reconciler.*`, the bucket, the
//! queues and the hook server's record of its calls:
//! - each doc ends in the status its history implies (uploaded: `processed`; uploaded then
//!   removed: `missing`; never uploaded: `expired`), each orphan object sits once under the
//!   quarantine prefix and no longer under the docs' prefix, and nothing else is in the bucket;
//! - each doc's audit trail is exactly the transitions of its history, in order, each once (an
//!   upload: `upload_confirmed`/`adopt` by its event (`lost_notification` by a sweep) then
//!   `processing`/`process`; a removal adds
//!   `missing_object`/`mark_missing`; `stale_pending`/`expire`; `orphan_object`/`quarantine`),
//!   and the audit log holds nothing else; an upload whose notification was lost was adopted by
//!   a sweep; a quarantine cut after its delete was recorded by a later sweep, from its intent,
//!   and no intent is left;
//! - every job is `done` within its budget, the queue and its dead-letter queue are empty, no
//!   sweep row is left `running`, and a dry-run sweep finds nothing left to do;
//! - the hook: README's Post-processing promises at-least-once: a claim counts an attempt, a
//!   worker that dies leaves its job `running` until the lease runs out, and then another worker
//!   claims it and calls the hook again. So a doc's calls are its recorded attempts plus the
//!   attempts whose worker was killed before it wrote the result. The hook here fails each doc's
//!   first call and answers 2xx after, so the recorded attempts are at most one failure and one
//!   success: calls <= 2 + (claims of that doc cut by a kill). A cut claim is read after each
//!   kill: the doc's job is still `running`, leased by the killed process (the pair doc, attempt
//!   number is counted once, however many kills it outlives). With `max_attempts` = kills + 2 the
//!   budget always has room for the success, so every uploaded doc must end `processed`. Each
//!   call carries its attempt number: no number twice for one doc, and never two calls for one
//!   doc at once.
//!
//! The seed (printed; `CRASH_SEED` replays it) fixes the workload, the aims and the delays; the
//! timing of the daemon's own work still varies from run to run.

use crate::daemon::{signal, wait_exit};
use crate::events::s3_message;
use crate::helpers::*;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const DEFAULT_KILLS: usize = 20;
/// The daemon's settings that make every phase short enough to land kills in.
const PENDING_TTL: &str = "5s";
const ORPHAN_GRACE: &str = "2s";
/// How long an aimed kill waits for its moment before it fires anyway.
const TRIGGER_LIMIT: Duration = Duration::from_secs(5);
/// The hook answers each call after this long: a call is in flight long enough to kill into.
const HOOK_DELAY: Duration = Duration::from_millis(200);

/// What a kill is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Aim {
    Job,
    Sweep,
    Batch,
    /// Mid-apply of an orphan's quarantine: right after the bucket answered its re-check, its
    /// copy or its delete, before the daemon hears the answer (the S3 proxy kills it).
    Bucket,
    Random,
}

/// The request of an orphan's quarantine or delete after which the S3 proxy kills the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BucketCut {
    /// The re-check of the orphan: the action's intent is noted, nothing changed yet.
    Head,
    /// A quarantine's copy: the copy is made, the original still there.
    Copy,
    /// The delete of the original: the bucket changed, its audit row not yet committed.
    Delete,
}

impl BucketCut {
    const ALL: [BucketCut; 3] = [BucketCut::Head, BucketCut::Copy, BucketCut::Delete];

    fn matches(self, request: &SeenRequest) -> bool {
        let orphan =
            request.path().contains("/docs/orphan-") && !request.path().contains("/quarantine/");
        match self {
            BucketCut::Head => request.method == "HEAD" && orphan,
            BucketCut::Copy => request.method == "PUT" && request.path().contains("/quarantine/"),
            BucketCut::Delete => request.method == "DELETE" && orphan,
        }
    }
}

/// moto behind a proxy that SIGKILLs a process right after the bucket answered the request it is
/// armed for, before the process hears the answer.
struct KillingProxy {
    proxy: FaultProxy,
    /// What to wait for, and whom to kill then.
    armed: Trigger,
}

type Trigger = std::sync::Arc<std::sync::Mutex<Option<(BucketCut, u32)>>>;

impl KillingProxy {
    async fn start(upstream: &str) -> KillingProxy {
        let armed: Trigger = Default::default();
        let trigger = armed.clone();
        let proxy = FaultProxy::rewriting(
            upstream,
            |_| Box::pin(async {}),
            move |request, body| {
                let mut armed = trigger.lock().expect("armed");
                if let Some((cut, pid)) = *armed
                    && cut.matches(request)
                {
                    *armed = None;
                    let killed = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()
                        .expect("run kill");
                    assert!(killed.success(), "kill -KILL {pid}");
                }
                body
            },
        )
        .await;
        KillingProxy { proxy, armed }
    }

    /// Kill `pid` after the next request `cut` matches.
    fn arm(&self, cut: BucketCut, pid: u32) {
        *self.armed.lock().expect("armed") = Some((cut, pid));
    }

    /// Stand down; whether it fired since `arm`.
    fn disarm(&self) -> bool {
        self.armed.lock().expect("armed").take().is_none()
    }

    fn fired(&self) -> bool {
        self.armed.lock().expect("armed").is_none()
    }
}

/// What a doc went through; its final status and its audit trail follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum History {
    /// Uploaded with a notification.
    Notified,
    /// Uploaded while the bucket sent no notifications: only a sweep can adopt it.
    Lost,
    /// Uploaded, processed, then its object deleted.
    Removed,
    /// A record whose upload never came.
    NeverUploaded,
    /// An object under the prefix without a record.
    Orphan,
}

impl History {
    fn final_status(self) -> Option<&'static str> {
        match self {
            History::Notified | History::Lost => Some("processed"),
            History::Removed => Some("missing"),
            History::NeverUploaded => Some("expired"),
            History::Orphan => None,
        }
    }

    /// The audit trail: (finding, action, old status, new status), in order. An upload is
    /// `lost_notification` when a sweep adopted it, `upload_confirmed` when its event did.
    fn audit(self, adopted_by_a_sweep: bool) -> Vec<AuditRow> {
        let row = |f: &str, a: &str, old: Option<&str>, new: Option<&str>| {
            (
                f.to_owned(),
                a.to_owned(),
                old.map(str::to_owned),
                new.map(str::to_owned),
            )
        };
        let adopt = row(
            if adopted_by_a_sweep {
                "lost_notification"
            } else {
                "upload_confirmed"
            },
            "adopt",
            Some("pending"),
            Some("uploaded"),
        );
        let process = row("processing", "process", Some("uploaded"), Some("processed"));
        match self {
            History::Notified | History::Lost => vec![adopt, process],
            History::Removed => vec![
                adopt,
                process,
                row(
                    "missing_object",
                    "mark_missing",
                    Some("processed"),
                    Some("missing"),
                ),
            ],
            History::NeverUploaded => {
                vec![row(
                    "stale_pending",
                    "expire",
                    Some("pending"),
                    Some("expired"),
                )]
            }
            History::Orphan => vec![row("orphan_object", "quarantine", None, None)],
        }
    }

    fn hooked(self) -> bool {
        matches!(self, History::Notified | History::Lost | History::Removed)
    }
}

type AuditRow = (String, String, Option<String>, Option<String>);

/// Where a kill landed, read from the database, the queue and the log right after it.
#[derive(Debug, Default)]
struct Landed {
    /// The daemon had not logged `daemon started` yet.
    startup: bool,
    /// A sweep of this life had its history row `running`: it was applying its actions.
    sweep: bool,
    /// Jobs leased by this life still `running`: (doc, attempt) claims whose result was lost.
    jobs: Vec<(String, i32)>,
    /// Messages received by this life and not deleted.
    batch: bool,
    /// The S3 proxy killed it after this request of a quarantine reached the bucket.
    bucket: Option<BucketCut>,
}

/// One daemon process.
struct Life {
    child: tokio::process::Child,
    pid: u32,
    /// Its Postgres sessions' `application_name`.
    sessions: String,
    log: std::path::PathBuf,
    spawned: Instant,
    started_at: DateTime<Utc>,
    /// Hook calls before this life began.
    calls_before: usize,
    /// The queue had nothing in flight at some moment of this life: whatever is in flight after
    /// that moment was received by this life.
    queue_idle_seen: bool,
}

struct Campaign {
    db: TestDb,
    bucket: TestBucket,
    queue: TestQueue,
    hook: HookServer,
    /// The daemon's S3 endpoint.
    proxy: KillingProxy,
    reconcile: Reconcile,
    logs: tempfile::TempDir,
    rng: fastrand::Rng,
    docs: BTreeMap<String, History>,
    next_id: usize,
    /// Notifications the workload caused or sent (uploads, deletes, duplicates).
    events: usize,
    /// Per doc, the claims cut by a kill: (doc, attempt number).
    cut: BTreeSet<(String, i32)>,
    lives: usize,
}

#[tokio::test]
async fn a_daemon_killed_mid_job_mid_sweep_and_mid_batch_leaves_every_effect_exactly_once() {
    let kills: usize = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("crash campaign: seed {seed}, {kills} kills (replay with CRASH_SEED={seed})");
    let began = Instant::now();
    let mut c = Campaign::new(seed, kills).await;

    // Every aim as often as the others, in a seeded order.
    let mut aims: Vec<Aim> = (0..kills)
        .map(|i| [Aim::Job, Aim::Sweep, Aim::Batch, Aim::Bucket, Aim::Random][i % 5])
        .collect();
    c.rng.shuffle(&mut aims);
    let mut landed = Vec::new();
    for (n, aim) in aims.iter().enumerate() {
        let mut life = c.spawn().await;
        // The first life creates the reconciler's tables that the kill's classification reads.
        if *aim != Aim::Random || n == 0 {
            daemon_address(&life.log).await;
        }
        let random_at = Duration::from_millis(c.rng.u64(0..2500));
        c.wave(*aim, &mut life).await;
        let bucket = c.aim(*aim, &mut life, random_at).await;
        // The proxy may have killed it already.
        let _ = life.child.start_kill();
        let _ = life.child.wait().await;
        let mut at = c.landed(&life).await;
        at.bucket = bucket;
        println!(
            "kill {n:2} aimed {aim:?}: startup {}, sweep {}, jobs {:?}, batch {}, bucket {:?}",
            at.startup, at.sweep, at.jobs, at.batch, at.bucket
        );
        for job in &at.jobs {
            c.cut.insert(job.clone());
        }
        landed.push((*aim, at));
        // Down for a moment: notifications pile up meanwhile.
        tokio::time::sleep(Duration::from_millis(c.rng.u64(0..300))).await;
    }

    let mut last = c.spawn().await;
    daemon_address(&last.log).await;
    let settled = c.settle(Duration::from_secs(90)).await;
    let problems = c.problems().await;
    assert!(problems.is_empty(), "never settled: {problems:#?}");
    // One whole sweep after the world settled: it closed every sweep row a kill left running.
    eventually(
        Duration::from_secs(30),
        "a sweep ran after the world settled",
        || async { c.sweeps_ok_since(settled).await > 0 },
    )
    .await;
    signal(&last.child, "TERM");
    let log = std::fs::read_to_string(&last.log).unwrap_or_default();
    assert_eq!(
        wait_exit(&mut last.child, Duration::from_secs(30)).await,
        0,
        "{log}"
    );

    c.assert_exactly_once(&landed).await;

    let count = |f: fn(&Landed) -> bool| landed.iter().filter(|(_, l)| f(l)).count();
    let calls = c.hook.calls().len();
    println!(
        "crash campaign: seed {seed}, {kills} kills (landed: {} mid-job, {} mid-sweep, {} \
         mid-batch, in a quarantine {} after its re-check, {} after its copy, {} after its \
         delete, {} at startup, {} elsewhere), {} docs ({}), {} events, {} hook calls ({} claims \
         cut), {:.1} s",
        count(|l| !l.jobs.is_empty()),
        count(|l| l.sweep),
        count(|l| l.batch),
        count(|l| l.bucket == Some(BucketCut::Head)),
        count(|l| l.bucket == Some(BucketCut::Copy)),
        count(|l| l.bucket == Some(BucketCut::Delete)),
        count(|l| l.startup),
        count(|l| {
            !l.startup && !l.sweep && !l.batch && l.jobs.is_empty() && l.bucket.is_none()
        }),
        c.docs.len(),
        c.coverage(),
        c.events,
        calls,
        c.cut.len(),
        began.elapsed().as_secs_f64(),
    );
}

/// One sweep killed in the middle of an orphan's quarantine or delete, then another: the change
/// is made or finished once and audited once. Killed after the delete, before its audit row
/// committed, only the intent noted before the delete tells the next sweep what happened.
#[tokio::test]
async fn a_sweep_killed_mid_quarantine_or_mid_delete_leaves_the_change_audited_once() {
    for (action, cut) in [
        ("quarantine", BucketCut::Head),
        ("quarantine", BucketCut::Copy),
        ("quarantine", BucketCut::Delete),
        ("delete", BucketCut::Head),
        ("delete", BucketCut::Delete),
    ] {
        let case = format!("{action}, killed after the {cut:?}");
        let db = TestDb::with_docs(None).await;
        let bucket = TestBucket::new().await;
        bucket.put("docs/orphan-1", "nobody's").await;
        let proxy = KillingProxy::start(&bucket.endpoint).await;
        let mut reconcile = Reconcile::new(&db, &bucket)
            .set("storage.prefix", "docs/")
            .set("sweep.orphan_grace", "0s")
            .set("sweep.orphan_action", action);
        reconcile.endpoint = proxy.proxy.endpoint.clone();
        let logs = tempfile::tempdir().expect("temp dir");
        let log = logs.path().join("killed.log");

        let mut killed = reconcile.spawn(&["--format", "json"], &log);
        proxy.arm(cut, killed.id().expect("a running sweep"));
        let code = wait_exit(&mut killed, Duration::from_secs(60)).await;
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(proxy.fired(), "{case}: never fired: {stderr}");
        assert_eq!(code, -1, "{case}: not killed: {stderr}");
        assert_eq!(
            db.audit().await,
            vec![],
            "{case}: audited before the commit"
        );
        let intents: i64 = sqlx::query_scalar("SELECT count(*) FROM reconciler.intents")
            .fetch_one(&db.pool)
            .await
            .expect("read intents");
        assert_eq!(intents, 1, "{case}: the intent outlives the process");

        let next = reconcile.run(&["--format", "json"]).await;
        assert_eq!(next.code, 0, "{case}: {}", next.stderr);
        let audit: Vec<(String, String)> = sqlx::query_as(
            "SELECT action, detail FROM reconciler.audit_log WHERE doc_id = 'orphan-1'",
        )
        .fetch_all(&db.pool)
        .await
        .expect("read the audit log");
        assert_eq!(audit.len(), 1, "{case}: {audit:?}");
        assert_eq!(audit[0].0, action, "{case}");
        assert_eq!(
            audit[0].1.contains("recorded by a later sweep"),
            cut == BucketCut::Delete,
            "{case}: {}",
            audit[0].1
        );
        let objects = bucket.snapshot().await;
        assert!(
            !objects.contains_key("docs/orphan-1"),
            "{case}: {objects:?}"
        );
        let copies = objects
            .keys()
            .filter(|k| k.starts_with("quarantine/docs/orphan-1/"))
            .count();
        assert_eq!(copies, usize::from(action == "quarantine"), "{case}");
        let intents: i64 = sqlx::query_scalar("SELECT count(*) FROM reconciler.intents")
            .fetch_one(&db.pool)
            .await
            .expect("read intents");
        assert_eq!(intents, 0, "{case}: settled");
    }
}

impl Campaign {
    async fn new(seed: u64, kills: usize) -> Campaign {
        let db = TestDb::with_docs(None).await;
        let bucket = TestBucket::new().await;
        // A message is received at most once per life: only a message kept for a failure of
        // its own could reach the dead-letter queue.
        let queue = TestQueue::with_dead_letters(kills as u32 + 2).await;
        bucket.notify(&queue).await;
        let hook = HookServer::start(HOOK_DELAY, |n| {
            Reply::Status(if n == 0 { 503 } else { 200 })
        })
        .await;
        let proxy = KillingProxy::start(&bucket.endpoint).await;
        let mut reconcile = Reconcile::new(&db, &bucket)
            .set("storage.prefix", "docs/")
            .set("events.endpoint_url", &bucket.endpoint)
            .set("database.max_connections", "10")
            .set("events.queue_url", &queue.url)
            .set("events.wait_time", "1s")
            .set("events.visibility_timeout", "2s")
            .set("events.pollers", "3")
            .set("processing.hook", "webhook")
            .set("processing.url", &hook.url)
            .set("processing.timeout", "3s")
            .set("processing.lease_grace", "1s")
            .set("processing.max_attempts", &(kills + 2).to_string())
            .set("processing.backoff_base", "500ms")
            .set("processing.backoff_max", "1s")
            .set("processing.workers", "3")
            .set("sweep.schedule", "* * * * * *")
            .set("sweep.pending_ttl", PENDING_TTL)
            // The upload URLs' lifetime, which pending_ttl may not undercut.
            .set("storage.upload_url_lifetime", PENDING_TTL)
            .set("sweep.orphan_grace", ORPHAN_GRACE)
            .set("sweep.orphan_action", "quarantine")
            .set("sweep.max_action_ratio", "1.0");
        reconcile.endpoint = proxy.proxy.endpoint.clone();
        Campaign {
            db,
            bucket,
            queue,
            hook,
            proxy,
            reconcile,
            logs: tempfile::tempdir().expect("temp dir"),
            rng: fastrand::Rng::with_seed(seed),
            docs: BTreeMap::new(),
            next_id: 0,
            events: 0,
            cut: BTreeSet::new(),
            lives: 0,
        }
    }

    async fn spawn(&mut self) -> Life {
        let log = self.logs.path().join(format!("life-{:02}.log", self.lives));
        let sessions = format!("crash-life-{:02}", self.lives);
        self.lives += 1;
        self.reconcile.database_url = format!("{}?application_name={sessions}", self.db.url());
        let started_at = Utc::now();
        let child = self.reconcile.spawn(&["daemon", "-v"], &log);
        Life {
            pid: child.id().expect("a running daemon"),
            sessions,
            child,
            log,
            spawned: Instant::now(),
            started_at,
            calls_before: self.hook.calls().len(),
            queue_idle_seen: false,
        }
    }

    fn new_id(&mut self, kind: &str) -> String {
        self.next_id += 1;
        format!("{kind}-{:03}", self.next_id)
    }

    /// The workload that gives the aimed phase something to do.
    async fn wave(&mut self, aim: Aim, life: &mut Life) {
        match aim {
            Aim::Job => {
                let n = self.rng.usize(2..=4);
                self.upload(n).await;
                let n = self.rng.usize(0..=1);
                self.duplicate(n).await;
            }
            Aim::Sweep => {
                let n = self.rng.usize(2..=4);
                self.never_uploaded(n, HOUR).await;
                let n = self.rng.usize(1..=3);
                self.upload_lost(n).await;
                if self.rng.bool() {
                    self.orphan().await;
                }
            }
            Aim::Batch => {
                // Wait out what an earlier life left in flight, so that what is in flight at the
                // kill is this life's.
                let idle = Instant::now();
                while idle.elapsed() < TRIGGER_LIMIT && !life.queue_idle_seen {
                    life.queue_idle_seen = in_flight(&self.queue).await == 0;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let n = self.rng.usize(2..=4);
                self.upload(n).await;
                let n = self.rng.usize(1..=3);
                self.duplicate(n).await;
                let n = self.rng.usize(0..=2);
                self.remove(n).await;
            }
            Aim::Bucket => {
                self.orphan().await;
                let cut = BucketCut::ALL[self.rng.usize(..BucketCut::ALL.len())];
                self.proxy.arm(cut, life.pid);
            }
            Aim::Random => {
                let n = self.rng.usize(1..=2);
                self.upload(n).await;
                let n = self.rng.usize(1..=2);
                self.never_uploaded(n, Duration::ZERO).await;
                self.orphan().await;
                let n = self.rng.usize(0..=1);
                self.remove(n).await;
            }
        }
    }

    /// Wait for the aimed moment (or `TRIGGER_LIMIT`), watching the queue meanwhile. Returns the
    /// bucket request after which the S3 proxy killed the daemon, if it did.
    async fn aim(&mut self, aim: Aim, life: &mut Life, random_at: Duration) -> Option<BucketCut> {
        let armed = *self.proxy.armed.lock().expect("armed");
        let deadline = Instant::now() + TRIGGER_LIMIT;
        loop {
            let in_flight = in_flight(&self.queue).await;
            life.queue_idle_seen |= in_flight == 0;
            let hit = match aim {
                Aim::Job => self.hook.calls().len() > life.calls_before,
                Aim::Sweep => self.sweep_running_since(life.started_at).await,
                Aim::Batch => life.queue_idle_seen && in_flight > 0,
                Aim::Bucket => self.proxy.fired(),
                Aim::Random => life.spawned.elapsed() >= random_at,
            };
            if hit || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if aim == Aim::Bucket {
            return armed.filter(|_| self.proxy.disarm()).map(|(cut, _)| cut);
        }
        // Somewhere inside the phase: a hook call lasts HOOK_DELAY, a sweep's apply and an event
        // batch tens of milliseconds.
        let within = match aim {
            Aim::Job => 250,
            Aim::Sweep => 60,
            Aim::Batch => 10,
            Aim::Bucket | Aim::Random => 1,
        };
        tokio::time::sleep(Duration::from_millis(self.rng.u64(0..within))).await;
        None
    }

    async fn landed(&self, life: &Life) -> Landed {
        // A statement the process sent just before it died still runs (and an autocommit one
        // commits): read the state once its sessions are gone.
        eventually(
            Duration::from_secs(10),
            "the killed daemon's sessions ended",
            || async {
                let left: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                )
                .bind(&life.sessions)
                .fetch_one(&self.db.pool)
                .await
                .expect("read pg_stat_activity");
                left == 0
            },
        )
        .await;
        let log = std::fs::read_to_string(&life.log).unwrap_or_default();
        let jobs: Vec<(String, i32)> = sqlx::query_as(
            "SELECT doc_id, attempts FROM reconciler.jobs \
             WHERE state = 'running' AND leased_by LIKE '%:' || $1 || ':%' ORDER BY doc_id",
        )
        .bind(life.pid.to_string())
        .fetch_all(&self.db.pool)
        .await
        .unwrap_or_default();
        Landed {
            startup: !log.contains("daemon started"),
            sweep: self.sweep_running_since(life.started_at).await,
            jobs,
            batch: life.queue_idle_seen && in_flight(&self.queue).await > 0,
            bucket: None,
        }
    }

    /// A new record, as the upload API makes it: `pending`, created now (or `age` ago).
    async fn record(&mut self, kind: &str, history: History, age: Duration) -> String {
        let id = self.new_id(kind);
        self.db.doc(&id, "pending", age).await;
        self.docs.insert(id.clone(), history);
        id
    }

    async fn upload(&mut self, n: usize) {
        for _ in 0..n {
            let id = self.record("doc", History::Notified, Duration::ZERO).await;
            self.bucket
                .presigned_put(&format!("docs/{id}"), &format!("body of {id}"))
                .await;
            self.events += 1;
        }
    }

    /// Uploads whose notifications never come: the bucket notifies nobody meanwhile.
    async fn upload_lost(&mut self, n: usize) {
        use aws_sdk_s3::types::NotificationConfiguration;
        self.bucket
            .client
            .put_bucket_notification_configuration()
            .bucket(&self.bucket.name)
            .notification_configuration(NotificationConfiguration::builder().build())
            .send()
            .await
            .expect("turn notifications off");
        for _ in 0..n {
            let id = self.record("lost", History::Lost, Duration::ZERO).await;
            self.bucket
                .presigned_put(&format!("docs/{id}"), &format!("body of {id}"))
                .await;
        }
        self.bucket.notify(&self.queue).await;
    }

    /// Send the creation event of notified uploads once more (never of a lost one: only a sweep may
    /// find those).
    async fn duplicate(&mut self, n: usize) {
        let uploaded: Vec<String> = self
            .docs
            .iter()
            .filter(|(_, h)| **h == History::Notified)
            .map(|(id, _)| id.clone())
            .collect();
        for _ in 0..n.min(uploaded.len()) {
            let id = &uploaded[self.rng.usize(..uploaded.len())];
            let message = s3_message(
                "ObjectCreated:Put",
                &self.bucket.name,
                &format!("docs/{id}"),
                None,
            );
            self.queue.send(&message).await;
            self.events += 1;
        }
    }

    async fn never_uploaded(&mut self, n: usize, age: Duration) {
        for _ in 0..n {
            self.record("never", History::NeverUploaded, age).await;
        }
    }

    async fn orphan(&mut self) {
        let id = self.new_id("orphan");
        self.bucket
            .presigned_put(&format!("docs/{id}"), "nobody's")
            .await;
        self.docs.insert(id, History::Orphan);
        self.events += 1;
    }

    /// Delete the objects of up to `n` docs that are `processed` now.
    async fn remove(&mut self, n: usize) {
        let mut removed = 0;
        let candidates: Vec<String> = self
            .docs
            .iter()
            .filter(|(_, h)| **h == History::Notified)
            .map(|(id, _)| id.clone())
            .collect();
        for id in candidates {
            if removed == n {
                break;
            }
            if self.db.status(&id).await.as_deref() == Some("processed") {
                self.bucket.delete(&format!("docs/{id}")).await;
                self.docs.insert(id, History::Removed);
                self.events += 1;
                removed += 1;
            }
        }
    }

    async fn sweep_running_since(&self, since: DateTime<Utc>) -> bool {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM reconciler.sweeps \
             WHERE outcome = 'running' AND started_at >= $1)",
        )
        .bind(since)
        .fetch_one(&self.db.pool)
        .await
        .unwrap_or(false)
    }

    async fn sweeps_ok_since(&self, since: DateTime<Utc>) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM reconciler.sweeps WHERE outcome = 'ok' AND started_at > $1",
        )
        .bind(since)
        .fetch_one(&self.db.pool)
        .await
        .expect("read sweeps")
    }

    /// Wait until nothing is left to happen; returns when that was first seen.
    async fn settle(&self, limit: Duration) -> DateTime<Utc> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.problems().await.is_empty() {
                return Utc::now();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Utc::now()
    }

    /// What still differs from the settled world: statuses, orphans, the queue, live jobs.
    async fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let objects = self.bucket.snapshot().await;
        for (id, history) in &self.docs {
            let status = self.db.status(id).await;
            if status.as_deref() != history.final_status() {
                problems.push(format!("{id} ({history:?}) is {status:?}"));
            }
            let key = format!("docs/{id}");
            let present = objects.contains_key(&key);
            let expected = matches!(history, History::Notified | History::Lost);
            if present != expected {
                problems.push(format!("{key} ({history:?}): object present {present}"));
            }
            if *history == History::Orphan {
                let copies = objects
                    .keys()
                    .filter(|k| k.starts_with(&format!("quarantine/{key}/")))
                    .count();
                if copies != 1 {
                    problems.push(format!("{key}: {copies} quarantined copies"));
                }
            }
        }
        let depth = self.queue.depth().await;
        if depth > 0 {
            problems.push(format!("{depth} messages in the queue"));
        }
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reconciler.jobs WHERE state IN ('queued', 'running')",
        )
        .fetch_one(&self.db.pool)
        .await
        .expect("count live jobs");
        if live > 0 {
            problems.push(format!("{live} jobs queued or running"));
        }
        problems
    }

    fn coverage(&self) -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for history in self.docs.values() {
            *counts.entry(format!("{history:?}")).or_default() += 1;
        }
        counts
            .iter()
            .map(|(h, n)| format!("{n} {h}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    async fn assert_exactly_once(&self, landed: &[(Aim, Landed)]) {
        // The audit log: each doc's history, each transition once, nothing else.
        let audit = self.db.audit().await;
        let mut trails: BTreeMap<&str, Vec<AuditRow>> = BTreeMap::new();
        for (doc, finding, action, old, new) in &audit {
            trails.entry(doc.as_str()).or_default().push((
                finding.clone(),
                action.clone(),
                old.clone(),
                new.clone(),
            ));
        }
        let adopted_by_sweeps: Vec<String> = sqlx::query_scalar(
            "SELECT doc_id FROM reconciler.audit_log WHERE action = 'adopt' AND sweep_id IS NOT NULL",
        )
        .fetch_all(&self.db.pool)
        .await
        .expect("read the audit log");
        // A kill after an orphan's delete left its move unrecorded: a later sweep recorded it.
        let settled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reconciler.audit_log WHERE detail LIKE '%recorded by a later sweep%'",
        )
        .fetch_one(&self.db.pool)
        .await
        .expect("read the audit log");
        let after_delete = landed
            .iter()
            .filter(|(_, l)| l.bucket == Some(BucketCut::Delete))
            .count();
        assert!(
            settled >= after_delete as i64,
            "{settled} settled, {after_delete} cut"
        );
        let intents: i64 = sqlx::query_scalar("SELECT count(*) FROM reconciler.intents")
            .fetch_one(&self.db.pool)
            .await
            .expect("read intents");
        assert_eq!(intents, 0, "intents left unsettled");
        for (id, history) in &self.docs {
            let trail = trails.remove(id.as_str()).unwrap_or_default();
            let by_sweep = adopted_by_sweeps.contains(id);
            assert_eq!(trail, history.audit(by_sweep), "{id} ({history:?})");
            if *history == History::Lost {
                assert!(
                    adopted_by_sweeps.contains(id),
                    "{id}: its notification was lost, yet no sweep adopted it: {audit:?}"
                );
            }
        }
        assert!(trails.is_empty(), "audit rows of unknown docs: {trails:?}");

        // The bucket: each uploaded doc's object, each orphan once in quarantine, nothing else.
        let objects = self.bucket.snapshot().await;
        let mut expected = BTreeSet::new();
        for (id, history) in &self.docs {
            if matches!(history, History::Notified | History::Lost) {
                expected.insert(format!("docs/{id}"));
            }
        }
        let quarantined: BTreeSet<String> = objects
            .keys()
            .filter(|k| k.starts_with("quarantine/"))
            .cloned()
            .collect();
        let plain: BTreeSet<String> = objects
            .keys()
            .filter(|k| !k.starts_with("quarantine/"))
            .cloned()
            .collect();
        assert_eq!(plain, expected, "objects under docs/");
        let orphans = self
            .docs
            .values()
            .filter(|h| **h == History::Orphan)
            .count();
        assert_eq!(quarantined.len(), orphans, "{quarantined:?}");

        // Adopted objects noted once each; jobs done within their budget, one per upload.
        let noted: Vec<String> = sqlx::query_scalar("SELECT key FROM reconciler.objects")
            .fetch_all(&self.db.pool)
            .await
            .expect("read objects");
        let noted: BTreeSet<String> = noted.into_iter().collect();
        let hooked: BTreeSet<String> = self
            .docs
            .iter()
            .filter(|(_, h)| h.hooked())
            .map(|(id, _)| id.clone())
            .collect();
        let adopted: BTreeSet<String> = hooked.iter().map(|id| format!("docs/{id}")).collect();
        assert_eq!(noted, adopted, "reconciler.objects");
        let jobs: Vec<(String, String, i32)> =
            sqlx::query_as("SELECT doc_id, state, attempts FROM reconciler.jobs ORDER BY doc_id")
                .fetch_all(&self.db.pool)
                .await
                .expect("read jobs");
        let job_docs: BTreeSet<String> = jobs.iter().map(|j| j.0.clone()).collect();
        assert_eq!(job_docs, hooked, "one job per upload");
        let max_attempts = landed.len() as i32 + 2;
        for (doc, state, attempts) in &jobs {
            assert_eq!(state, "done", "{doc}");
            assert!(
                (1..=max_attempts).contains(attempts),
                "{doc}: {attempts} attempts"
            );
        }

        // The hook: at least once, at most once per recorded attempt and per claim cut.
        let calls = self.hook.calls();
        for (id, history) in &self.docs {
            let numbers: Vec<u64> = calls
                .iter()
                .filter(|c| c["id"] == id.as_str())
                .map(|c| c["attempt"].as_u64().unwrap_or(0))
                .collect();
            if !history.hooked() {
                assert!(numbers.is_empty(), "{id} ({history:?}) was processed");
                continue;
            }
            let cut = self.cut.iter().filter(|(doc, _)| doc == id).count();
            assert!(
                (1..=2 + cut).contains(&numbers.len()),
                "{id}: {} hook calls (attempts {numbers:?}), {cut} claims cut by a kill; at most \
                 one failure and one success are recorded",
                numbers.len()
            );
            let distinct: BTreeSet<&u64> = numbers.iter().collect();
            assert_eq!(
                distinct.len(),
                numbers.len(),
                "{id}: one attempt called twice: {numbers:?}"
            );
        }
        assert_eq!(self.hook.max_overlap(), 1, "a doc's hook ran twice at once");

        // Sweeps: none left running; each killed mid-apply was closed as interrupted.
        let outcomes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT outcome, count(*) FROM reconciler.sweeps GROUP BY outcome ORDER BY outcome",
        )
        .fetch_all(&self.db.pool)
        .await
        .expect("read sweeps");
        let of = |o: &str| {
            outcomes
                .iter()
                .find(|(outcome, _)| outcome == o)
                .map_or(0, |(_, n)| *n)
        };
        assert_eq!(of("running"), 0, "{outcomes:?}");
        let mid_sweep = landed.iter().filter(|(_, l)| l.sweep).count() as i64;
        assert!(of("interrupted") >= mid_sweep, "{outcomes:?}");

        assert_eq!(self.queue.depth().await, 0, "messages left in the queue");
        assert_eq!(self.queue.dead_letter_depth().await, 0, "dead letters");
        let audit = self.reconcile.run(&["--dry-run", "--format", "json"]).await;
        assert_eq!(audit.code, 0, "{}", audit.stderr);
        assert_eq!(audit.findings(), vec![], "drift left: {}", audit.stdout);
    }
}

/// Messages received and not yet deleted.
async fn in_flight(queue: &TestQueue) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    queue
        .client
        .get_queue_attributes()
        .queue_url(&queue.url)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .and_then(|a| a.get(&A::ApproximateNumberOfMessagesNotVisible).cloned())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
