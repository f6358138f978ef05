//! The simulated world: the API, the clients, S3's notifications and whoever deletes objects,
//! around the engine's real event effect, sweep and worker on the in-memory doubles.

use super::Totals;
use super::history::{Fate, History, Move, Params, Pick, Step, Trouble};
use crate::memory::catalog::MemoryCatalog;
use crate::memory::{MemoryBucket, MemoryDb, Schedule};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upload_reconciler::catalog::Catalog;
use upload_reconciler::decide::Policy;
use upload_reconciler::events::effect::Effects;
use upload_reconciler::events::parse::{EventKind, S3Event};
use upload_reconciler::metrics::Metrics;
use upload_reconciler::model::{Action, Finding, FindingKind, MissingAction, Outcome};
use upload_reconciler::processing::hook::Hook;
use upload_reconciler::processing::worker::{self, Worker};
use upload_reconciler::processing::{Clock, ManualClock, RetryPolicy};
use upload_reconciler::report::{Footer, Header, Sink};
use upload_reconciler::rules::{Breaker, Quarantine, Rules};
use upload_reconciler::sweep::{Options, Quiet, Summary, Sweep};

pub const BUCKET: &str = "uploads";
pub const QUARANTINE: &str = "quarantine/";

/// How long any one engine call may take before the test calls it a deadlock.
const HANG: Duration = Duration::from_secs(30);

/// Far ahead of the wall clock: the executor stamps a queued job's first attempt with the wall
/// clock (`Utc::now()`), so simulated time must never be behind it for that job to be due.
pub fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date")
}

pub fn seconds(n: u32) -> chrono::Duration {
    chrono::Duration::seconds(i64::from(n))
}

/// An upload in flight, landing at `at`.
#[derive(Debug, Clone)]
pub struct Landing {
    pub at: DateTime<Utc>,
    pub key: String,
    pub body: String,
}

/// A notification waiting for the consumer.
#[derive(Debug, Clone)]
pub struct Queued {
    pub event: S3Event,
    pub visible_at: DateTime<Utc>,
    /// Its place in the order S3 emitted notifications.
    pub emitted: u64,
}

/// What happened to one key, as the world knows it (the engine does not).
#[derive(Debug, Clone, Default)]
pub struct Truth {
    pub landed: Vec<DateTime<Utc>>,
    pub deleted: Vec<DateTime<Utc>>,
    /// Objects the engine destroyed while a crash cut its transaction at the commit: their audit
    /// row went with the transaction (the window `Executor::change_bucket` documents).
    pub unaudited_destroys: u64,
}

impl Truth {
    /// An object landed after one was deleted: a record marked missing may see it come back.
    pub fn reappeared(&self) -> bool {
        self.deleted
            .iter()
            .any(|gone| self.landed.iter().any(|landed| landed >= gone))
    }
}

#[derive(Default)]
pub struct Sim {
    pub next_fate: usize,
    /// Keys made so far (ids are never reused).
    pub keys_made: usize,
    pub in_flight: Vec<Landing>,
    pub queue: Vec<Queued>,
    pub emitted: u64,
    pub truth: BTreeMap<String, Truth>,
    /// Keys written with no record (before any record was made for them).
    pub strays: Vec<String>,
    /// The records the API made and handed a presigned URL out for.
    pub presigned: BTreeSet<String>,
    /// How far the logs of the doubles have been checked.
    pub transitions_checked: usize,
    pub destroyed_checked: usize,
}

pub struct World {
    pub params: Params,
    pub rules: Rules,
    pub fates: Vec<Fate>,
    pub clock: Arc<ManualClock>,
    pub schedule: Arc<Schedule>,
    pub db: MemoryDb,
    pub catalog: Arc<MemoryCatalog>,
    pub bucket: MemoryBucket,
    pub effects: Effects,
    pub healthy_worker: Worker,
    pub failing_worker: Worker,
    pub sim: Mutex<Sim>,
    pub totals: Arc<Totals>,
}

pub fn rules_of(params: &Params) -> Rules {
    let secs = |n: u32| Duration::from_secs(u64::from(n));
    Rules {
        policy: Policy {
            pending_ttl: secs(params.pending_ttl()),
            orphan_grace: secs(params.orphan_grace),
            orphan_action: params.orphan_action,
            processing_timeout: secs(params.processing_timeout),
            // The bucket double has no multipart uploads: their decisions are unit-tested in
            // decide.rs and proven on moto in tests/it/multipart.rs.
            multipart_grace: Duration::from_secs(7 * 86_400),
            // The bucket double is S3's: objects appear whole.
            settle_time: Duration::ZERO,
            // The bucket double keeps no versions: restores are proven on moto (tests/it/heal.rs).
            missing_action: MissingAction::Mark,
            restore_window: Duration::from_secs(7 * 86_400),
        },
        quarantine: Quarantine::new(QUARANTINE),
        // Never trips: a history is small, and every change in it is meant.
        breaker: Breaker {
            max_action_ratio: 1.0,
            max_action_floor: u64::MAX,
        },
        after_upload: params.after_upload,
    }
}

/// Ids over characters on both sides of `/` in byte order, upper and lower case, and two-byte
/// UTF-8, so that the merge of the two sorted streams has something to get wrong.
pub fn new_key(sim: &mut Sim, prefix: &str, kind: &str) -> String {
    const STEMS: [&str; 7] = ["doc", "Doc", "a b", "é", "a/b", "a-b", "a.b"];
    let n = sim.keys_made;
    sim.keys_made += 1;
    format!("{prefix}{}{kind}{n}", STEMS[n % STEMS.len()])
}

pub fn lock(sim: &Mutex<Sim>) -> std::sync::MutexGuard<'_, Sim> {
    sim.lock().unwrap_or_else(|e| e.into_inner())
}

/// A sweep's findings and what became of each.
#[derive(Default)]
pub struct Report {
    pub findings: Vec<(FindingKind, Action, String, Outcome)>,
}

impl Sink for Report {
    fn begin(&mut self, _: &Header) -> upload_reconciler::Result<()> {
        Ok(())
    }

    fn finding(&mut self, finding: &Finding, outcome: &Outcome) -> upload_reconciler::Result<()> {
        self.findings.push((
            finding.kind,
            finding.action,
            finding.key.clone(),
            outcome.clone(),
        ));
        Ok(())
    }

    fn finish(&mut self, _: &Footer) -> upload_reconciler::Result<()> {
        Ok(())
    }
}

pub fn worker_with(
    id: &str,
    program: &str,
    params: &Params,
    catalog: Arc<dyn Catalog>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> Worker {
    Worker {
        id: id.into(),
        catalog,
        hook: Arc::new(Hook::Command {
            argv: vec![program.into()],
            timeout: HANG,
        }),
        bucket: BUCKET.into(),
        retry: RetryPolicy {
            max_attempts: params.max_attempts,
            base: Duration::from_secs(10),
            max: Duration::from_secs(120),
        },
        lease: Duration::from_secs(u64::from(params.lease)),
        clock,
        metrics,
    }
}

impl World {
    pub async fn new(history: &History, metrics: Arc<Metrics>, totals: Arc<Totals>) -> Arc<World> {
        let params = history.params.clone();
        let rules = rules_of(&params);
        let clock = Arc::new(ManualClock::new(epoch()));
        let schedule = Arc::new(Schedule::default());
        let db = MemoryDb::new(clock.clone(), schedule.clone());
        let scope = upload_reconciler::catalog::Scope {
            table: "\"docs\"".into(),
            bucket: BUCKET.into(),
            prefix: params.prefix.into(),
        };
        let catalog = Arc::new(db.catalog(&scope));
        // As the daemon does before its first event.
        catalog.migrate().await.expect("migrate");
        let bucket = MemoryBucket::new(BUCKET, clock.clone(), schedule.clone());
        let referee_db = db.clone();
        let prefix = params.prefix;
        bucket.set_referee(Box::new(move |key| {
            key.strip_prefix(prefix)
                .is_some_and(|id| referee_db.status(id).is_some())
        }));
        let effects = Effects {
            catalog: catalog.clone(),
            bucket: Arc::new(bucket.clone()),
            prefix: params.prefix.into(),
            rules: rules.clone(),
        };
        let worker = |id: &str, program: &str| {
            worker_with(
                id,
                program,
                &params,
                catalog.clone(),
                clock.clone(),
                metrics.clone(),
            )
        };
        Arc::new(World {
            healthy_worker: worker("worker-1", "true"),
            failing_worker: worker("worker-2", "false"),
            rules,
            fates: history.fates.clone(),
            params,
            clock,
            schedule,
            db,
            catalog,
            bucket,
            effects,
            sim: Mutex::new(Sim::default()),
            totals,
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn id_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.params.prefix)
            .filter(|_| !self.rules.quarantine.contains(key))
    }

    /// Move the clock to `to`, landing what is due on the way, each at its own time.
    pub fn advance_to(&self, to: DateTime<Utc>) {
        loop {
            let next = {
                let mut sim = lock(&self.sim);
                let due = sim
                    .in_flight
                    .iter()
                    .enumerate()
                    .filter(|(_, landing)| landing.at <= to)
                    .min_by_key(|(_, landing)| landing.at)
                    .map(|(i, _)| i);
                due.map(|i| sim.in_flight.remove(i))
            };
            let Some(landing) = next else { break };
            self.set_clock(landing.at);
            self.land(&landing);
        }
        self.set_clock(to);
    }

    pub fn set_clock(&self, to: DateTime<Utc>) {
        if let Ok(ahead) = (to - self.now()).to_std() {
            self.clock.advance(ahead);
        }
    }

    pub fn land(&self, landing: &Landing) {
        self.bucket.put(&landing.key, landing.body.as_bytes());
        let now = self.now();
        lock(&self.sim)
            .truth
            .entry(landing.key.clone())
            .or_default()
            .landed
            .push(now);
    }

    /// The world makes a move; `false` when it had nothing to do it to.
    pub fn make(&self, change: &Move) -> bool {
        let now = self.now();
        let prefix = self.params.prefix;
        match change {
            Move::Create(puts) => {
                let key = new_key(&mut lock(&self.sim), prefix, "");
                let id = key.strip_prefix(prefix).unwrap_or(&key).to_owned();
                assert!(self.db.insert(&id, "pending", now), "ids are new");
                let mut sim = lock(&self.sim);
                sim.presigned.insert(id.clone());
                for (n, put) in puts.iter().enumerate() {
                    let start =
                        u64::from(self.params.lifetime) * u64::from(put.start_permille) / 1000;
                    let at = now + chrono::Duration::seconds(start as i64) + seconds(put.duration);
                    sim.in_flight.push(Landing {
                        at,
                        key: key.clone(),
                        body: format!("{id}: upload {n}"),
                    });
                }
                true
            }
            Move::Stray(again) => {
                let mut sim = lock(&self.sim);
                let key = match again {
                    Some(pick) if !sim.strays.is_empty() => {
                        sim.strays[pick.of(sim.strays.len())].clone()
                    }
                    _ => {
                        let key = new_key(&mut sim, prefix, "~");
                        sim.strays.push(key.clone());
                        key
                    }
                };
                let body = format!("{key}: stray {}", sim.keys_made);
                sim.keys_made += 1;
                drop(sim);
                self.land(&Landing { at: now, key, body });
                true
            }
            Move::Confirm(pick) => {
                let grace = seconds(self.params.orphan_grace);
                let candidates: Vec<String> = {
                    let sim = lock(&self.sim);
                    sim.strays
                        .iter()
                        .filter(|key| {
                            let young = sim
                                .truth
                                .get(*key)
                                .and_then(|t| t.landed.last())
                                .is_some_and(|landed| now - *landed <= grace);
                            young && self.bucket.body(key).is_some()
                        })
                        .cloned()
                        .collect()
                };
                let Some(key) =
                    (!candidates.is_empty()).then(|| candidates[pick.of(candidates.len())].clone())
                else {
                    return false;
                };
                let id = key.strip_prefix(prefix).unwrap_or(&key);
                self.db.insert(id, "pending", now)
            }
            Move::Delete(pick) => {
                let keys: Vec<String> = self
                    .bucket
                    .keys()
                    .into_iter()
                    .filter(|key| self.id_of(key).is_some())
                    .collect();
                if keys.is_empty() {
                    return false;
                }
                let key = &keys[pick.of(keys.len())];
                self.bucket.remove(key);
                lock(&self.sim)
                    .truth
                    .entry(key.clone())
                    .or_default()
                    .deleted
                    .push(now);
                true
            }
            Move::LandNext => {
                let next = {
                    let mut sim = lock(&self.sim);
                    let first = sim
                        .in_flight
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, landing)| landing.at)
                        .map(|(i, _)| i);
                    first.map(|i| sim.in_flight.remove(i))
                };
                next.map(|landing| self.land(&landing)).is_some()
            }
        }
    }

    /// Arm the step's trouble.
    pub fn arm(self: &Arc<Self>, trouble: &Trouble) {
        match trouble {
            Trouble::Calm => {}
            Trouble::Crash(at) => self.schedule.crash_at(u64::from(*at)),
            Trouble::Meanwhile(at, change) => {
                let world = Arc::clone(self);
                let change = change.clone();
                self.schedule.meanwhile_at(
                    u64::from(*at),
                    Box::new(move || {
                        if world.make(&change) {
                            Totals::add(&world.totals.meanwhile, 1);
                        }
                    }),
                );
            }
        }
    }

    /// The step is over: the process starts again if it crashed. Whether it did, and where.
    pub fn settle(&self) -> Option<&'static str> {
        let crashed = self.schedule.restart();
        if crashed.is_some() {
            Totals::add(&self.totals.crashes, 1);
        }
        crashed
    }

    /// Turn the bucket's changes into notifications, each meeting its fate.
    pub fn notify(&self) {
        let changes = self.bucket.take_changes();
        let mut sim = lock(&self.sim);
        for change in changes {
            let fate = &self.fates[sim.next_fate % self.fates.len()];
            sim.next_fate += 1;
            sim.emitted += 1;
            Totals::add(&self.totals.events, 1);
            if fate.lost {
                Totals::add(&self.totals.lost, 1);
                continue;
            }
            if fate.copies > 1 {
                Totals::add(&self.totals.duplicated, 1);
            }
            if fate.delay > 0 {
                Totals::add(&self.totals.delayed, 1);
            }
            let event = S3Event {
                kind: if change.created.is_some() {
                    EventKind::Created
                } else {
                    EventKind::Removed
                },
                bucket: BUCKET.into(),
                key: change.key.clone(),
                size: change.created.as_ref().map(|o| o.size),
                // Notifications carry the ETag without its quotes.
                etag: change
                    .created
                    .as_ref()
                    .and_then(|o| o.etag.as_deref())
                    .map(|etag| etag.trim_matches('"').to_owned()),
                sequencer: Some(change.sequencer.clone()),
                time: Some(change.at),
            };
            for _ in 0..fate.copies {
                let emitted = sim.emitted;
                sim.queue.push(Queued {
                    event: event.clone(),
                    visible_at: change.at + seconds(fate.delay),
                    emitted,
                });
            }
        }
    }

    /// Deliver the `pick`-th notification the consumer can see; `Ok(false)` when it sees none.
    pub async fn deliver(&self, pick: Option<Pick>) -> Result<bool, upload_reconciler::Error> {
        let now = self.now();
        let (position, queued, reordered) = {
            let sim = lock(&self.sim);
            let visible: Vec<usize> = (0..sim.queue.len())
                .filter(|i| sim.queue[*i].visible_at <= now)
                .collect();
            if visible.is_empty() {
                return Ok(false);
            }
            let position = pick.map_or(visible[0], |pick| visible[pick.of(visible.len())]);
            let oldest = visible.iter().map(|i| sim.queue[*i].emitted).min();
            let queued = sim.queue[position].clone();
            let reordered = oldest != Some(queued.emitted);
            (position, queued, reordered)
        };
        if reordered {
            Totals::add(&self.totals.reordered, 1);
        }
        let applied = tokio::time::timeout(HANG, self.effects.apply(&queued.event, now))
            .await
            .expect("an event's effect finished (likely deadlocked)");
        match applied {
            Ok(effect) => {
                let revived = matches!(
                    effect,
                    upload_reconciler::events::effect::Effect::Applied {
                        kind: FindingKind::LateUpload,
                        ..
                    }
                );
                if revived {
                    Totals::add(&self.totals.late_uploads_revived, 1);
                }
                // Acknowledged: gone from the queue (which only `notify` adds to, between steps).
                lock(&self.sim).queue.remove(position);
                Ok(true)
            }
            Err(e) => {
                // Not acknowledged: the queue delivers it again.
                Totals::add(&self.totals.redelivered, 1);
                Err(e)
            }
        }
    }

    pub async fn sweep(&self) -> (upload_reconciler::Result<Summary>, Report) {
        let sweep = Sweep {
            catalog: self.catalog.as_ref(),
            bucket: &self.bucket,
            prefix: self.params.prefix,
            rules: &self.rules,
            metrics: None,
        };
        let mut report = Report::default();
        let summary = tokio::time::timeout(
            HANG,
            sweep.run(
                Options::default(),
                self.now(),
                &mut Quiet,
                &mut report,
                upload_reconciler::stop::never(),
            ),
        )
        .await
        .expect("a sweep finished (likely deadlocked)");
        Totals::add(&self.totals.sweeps, 1);
        for (kind, _, _, outcome) in &report.findings {
            match outcome {
                Outcome::Applied => {
                    Totals::add(&self.totals.actions_applied, 1);
                    if *kind == FindingKind::LateUpload {
                        Totals::add(&self.totals.late_uploads_revived, 1);
                    }
                }
                Outcome::Skipped(_) => Totals::add(&self.totals.actions_skipped, 1),
                _ => {}
            }
        }
        (summary, report)
    }

    pub async fn work(&self, hook_ok: bool) -> upload_reconciler::Result<worker::Outcome> {
        let worker = if hook_ok {
            &self.healthy_worker
        } else {
            &self.failing_worker
        };
        let outcome = tokio::time::timeout(HANG, worker.try_execute_task())
            .await
            .expect("a job finished (likely deadlocked)");
        match &outcome {
            Ok(worker::Outcome::Empty) | Err(_) => {}
            Ok(done) => {
                Totals::add(&self.totals.jobs_run, 1);
                if matches!(
                    done,
                    worker::Outcome::Retrying { .. } | worker::Outcome::Exhausted { .. }
                ) {
                    Totals::add(&self.totals.hook_failures, 1);
                }
            }
        }
        outcome
    }

    /// One step of the history. Errors are expected only from a process that crashed.
    pub async fn step(self: &Arc<Self>, step: &Step) -> Result<(), TestCaseError> {
        Totals::add(&self.totals.steps, 1);
        let failure = match step {
            Step::Advance(secs) => {
                self.advance_to(self.now() + seconds(*secs));
                None
            }
            Step::World(change) => {
                self.make(change);
                None
            }
            Step::Deliver(pick, trouble) => {
                self.arm(trouble);
                self.deliver(Some(*pick)).await.err().map(|e| e.to_string())
            }
            Step::Sweep(trouble) => {
                self.arm(trouble);
                let (summary, report) = self.sweep().await;
                match summary {
                    Err(e) => Some(e.to_string()),
                    Ok(_) => {
                        report
                            .findings
                            .iter()
                            .find_map(|(_, _, key, outcome)| match outcome {
                                Outcome::Failed(e) => Some(format!("{key}: {e}")),
                                _ => None,
                            })
                    }
                }
            }
            Step::Work { hook_ok, trouble } => {
                self.arm(trouble);
                self.work(*hook_ok).await.err().map(|e| e.to_string())
            }
        };
        let destroyed_before = lock(&self.sim).destroyed_checked;
        let crashed = self.settle();
        if let (Some(failure), None) = (&failure, crashed) {
            return Err(TestCaseError::fail(format!(
                "{step:?} failed with no crash: {failure}"
            )));
        }
        if crashed == Some("commit") {
            // A delete made before the commit that crashed has no audit row.
            for gone in &self.bucket.destroyed()[destroyed_before..] {
                lock(&self.sim)
                    .truth
                    .entry(gone.key.clone())
                    .or_default()
                    .unaudited_destroys += 1;
            }
        }
        self.notify();
        self.check_safety()
    }

    /// Let everything in flight finish: the last uploads land, every notification not lost is
    /// delivered, every job runs. No more trouble from here on.
    pub async fn quiesce(&self) -> Result<(), TestCaseError> {
        let last_landing = lock(&self.sim).in_flight.iter().map(|l| l.at).max();
        if let Some(at) = last_landing {
            self.advance_to(at.max(self.now()));
        }
        self.notify();
        self.drain_events().await?;
        self.run_jobs().await?;
        self.check_safety()
    }

    pub async fn drain_events(&self) -> Result<(), TestCaseError> {
        loop {
            self.notify();
            let last_visible = lock(&self.sim).queue.iter().map(|q| q.visible_at).max();
            let Some(at) = last_visible else {
                return Ok(());
            };
            self.advance_to(at.max(self.now()));
            while self
                .deliver(None)
                .await
                .map_err(|e| TestCaseError::fail(format!("delivering with no crash: {e}")))?
            {
            }
            self.check_safety()?;
        }
    }

    /// Run jobs until none is queued or running, moving the clock to each retry and each lease
    /// left by a worker that crashed.
    pub async fn run_jobs(&self) -> Result<(), TestCaseError> {
        for _ in 0..1000 {
            match self.work(true).await {
                Ok(worker::Outcome::Empty) => {}
                Ok(_) => continue,
                Err(e) => return Err(TestCaseError::fail(format!("a job with no crash: {e}"))),
            }
            let next_due = self
                .catalog
                .jobs()
                .iter()
                .filter(|job| job.state.is_live())
                .filter_map(|job| match job.state {
                    upload_reconciler::model::JobState::Running => job.lease_until,
                    _ => Some(job.next_attempt_at),
                })
                .min();
            match next_due {
                None => return Ok(()),
                Some(at) => self.advance_to(at.max(self.now())),
            }
        }
        Err(TestCaseError::fail("the jobs never settled"))
    }

    /// One sweep with nothing in grace any more, then what it queued; its history row must say
    /// `ok`.
    pub async fn final_sweep(&self) -> Result<Report, TestCaseError> {
        let (summary, report) = self.sweep().await;
        let summary = summary.map_err(|e| TestCaseError::fail(format!("final sweep: {e}")))?;
        prop_assert_eq!(summary.footer.actions.failed, 0, "{:?}", report.findings);
        prop_assert_eq!(
            summary.header.counts.get(FindingKind::InGrace),
            0,
            "past every grace, nothing is in grace"
        );
        let outcome = self.catalog.sweeps().last().map(|s| s.outcome);
        prop_assert_eq!(outcome, Some("ok"));
        self.notify();
        self.drain_events().await?;
        self.run_jobs().await?;
        self.check_safety()?;
        Ok(report)
    }
}
