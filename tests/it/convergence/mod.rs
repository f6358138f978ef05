//! The convergence property: whatever happens to uploads, events, workers and the process, the
//! reconciler brings every record and its object into agreement, never destroys what a record
//! refers to, never expires an upload that could still land, and audits each change once.
//!
//! A history is random steps on a simulated clock, run through the engine's real code (the event
//! effect, the sweep, the processing worker, and below them `decide` and the executor) over the
//! in-memory catalog and bucket (`memory`), which the conformance suites hold to the same
//! contracts as Postgres, SQLite, S3 and the folder. The steps:
//! - the API creates a pending record and hands out a presigned URL valid for `L`; the client's
//!   uploads through it start within `L` and land early, late (after the record expired: a late
//!   upload to revive) or never, once or twice;
//! - an object lands with no record (a stray), or the app confirms one by creating its record;
//!   someone deletes an object;
//! - S3 notifies each change with a sequencer increasing per key; each notification may be lost,
//!   duplicated and delayed, and the consumer takes them in any order;
//! - a sweep runs (`Sweep::run`), a worker runs one job with a hook that succeeds or fails;
//! - the process crashes at a chosen operation (an open transaction is dropped without its
//!   commit; an event not acknowledged is delivered again), or the world moves just before one
//!   (an upload lands, an object goes, a record appears between the engine's read and its write).
//!
//! Checked at every step: (b) no object was deleted while a record referred to it, nor before it
//! was `orphan_grace` old; (c) no pending record was expired before its presigned URL ran out.
//! After quiescence (the last uploads landed, every event that was not lost delivered, every job
//! run) and one sweep past every grace: (a) every record agrees with its object, no orphan is
//! left unless `orphan_action = report`, and a second sweep finds nothing; (d) the audit log has
//! each applied change once.
//!
//! `history.rs` is what a history is and how proptest draws one, `world.rs` runs it, `checks.rs`
//! holds the properties. `CONVERGENCE_CASES` sets the number of histories (default 200, a few
//! seconds); the summary line at the end says what was exercised. Needs no services:
//! `cargo test --test it convergence::`.

mod checks;
mod history;
mod world;

use history::{History, Params};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use upload_reconciler::metrics::Metrics;
use upload_reconciler::model::{Action, FindingKind};
use world::{World, seconds};

/// Histories per run unless `CONVERGENCE_CASES` says otherwise: a few seconds of CI.
const DEFAULT_CASES: u32 = 200;

/// What a run exercised, summed over every history.
#[derive(Default)]
struct Totals {
    histories: AtomicU64,
    steps: AtomicU64,
    events: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
    reordered: AtomicU64,
    redelivered: AtomicU64,
    crashes: AtomicU64,
    meanwhile: AtomicU64,
    sweeps: AtomicU64,
    actions_applied: AtomicU64,
    actions_skipped: AtomicU64,
    jobs_run: AtomicU64,
    hook_failures: AtomicU64,
    late_uploads_revived: AtomicU64,
}

impl Totals {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "convergence: {} histories, {} steps; events {} (lost {}, duplicated {}, delayed {}, \
             reordered {}, redelivered after a failure {}); crashes {}; world moves mid-operation \
             {}; sweeps {} (actions applied {}, skipped as changed {}); jobs run {} (hook failures \
             {}); late uploads revived {}",
            get(&self.histories),
            get(&self.steps),
            get(&self.events),
            get(&self.lost),
            get(&self.duplicated),
            get(&self.delayed),
            get(&self.reordered),
            get(&self.redelivered),
            get(&self.crashes),
            get(&self.meanwhile),
            get(&self.sweeps),
            get(&self.actions_applied),
            get(&self.actions_skipped),
            get(&self.jobs_run),
            get(&self.hook_failures),
            get(&self.late_uploads_revived),
        )
    }
}

/// Run one history and check every property; the world as it ended.
async fn run(
    history: &History,
    metrics: Arc<Metrics>,
    totals: Arc<Totals>,
) -> Result<Arc<World>, TestCaseError> {
    fastrand::seed(history.seed);
    let world = World::new(history, metrics, totals.clone()).await;
    Totals::add(&totals.histories, 1);
    let result = async {
        for step in &history.steps {
            world.step(step).await?;
        }
        world.quiesce().await?;
        let grace = [
            world.params.pending_ttl(),
            world.params.orphan_grace,
            world.params.processing_timeout,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        world.advance_to(world.now() + seconds(grace + 1));
        world.final_sweep().await?;
        world.check_convergence().await?;
        let second = world.final_sweep().await?;
        for (kind, action, key, _) in &second.findings {
            prop_assert!(
                (*kind, *action) == (FindingKind::OrphanObject, Action::Report),
                "a second sweep found {:?} {:?} at {}",
                kind,
                action,
                key
            );
        }
        world.check_convergence().await
    }
    .await;
    // Break the cycle a pending world move makes (world -> schedule -> move -> world).
    world.schedule.restart();
    result.map(|()| world)
}

fn cases() -> u32 {
    std::env::var("CONVERGENCE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// A plain test around proptest's `TestRunner` (rather than `proptest!`): the summary line comes
/// once, after the last history, and one runtime serves every history.
#[test]
fn histories_converge() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let metrics = Metrics::new();
    let totals = Arc::new(Totals::default());
    let mut runner = TestRunner::new(ProptestConfig {
        cases: cases(),
        // Histories worth keeping are written out as the named tests below, not kept as seeds.
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let started = std::time::Instant::now();
    let result = runner.run(&history::history(), |history| {
        runtime
            .block_on(run(&history, metrics.clone(), totals.clone()))
            .map(drop)
    });
    println!("{} in {:.1?}", totals.line(), started.elapsed());
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Histories written by hand: the cases the property exists for, run through the same checks.
mod by_hand {
    use super::history::{Fate, Move, Pick, Put, Step, Trouble};
    use super::*;
    use upload_reconciler::catalog::Catalog;
    use upload_reconciler::execute::AfterUpload;
    use upload_reconciler::model::OrphanAction;

    fn params() -> Params {
        Params {
            prefix: "docs/",
            lifetime: 600,
            ttl_beyond_lifetime: 300,
            orphan_grace: 3600,
            processing_timeout: 600,
            orphan_action: OrphanAction::Report,
            after_upload: AfterUpload::MarkProcessed,
            max_attempts: 1,
            lease: 60,
        }
    }

    const DELIVERED: Fate = Fate {
        lost: false,
        copies: 1,
        delay: 0,
    };

    async fn replay(steps: Vec<Step>, totals: Arc<Totals>) -> Arc<World> {
        let history = History {
            params: params(),
            fates: vec![DELIVERED],
            steps,
            seed: 0,
        };
        run(&history, Metrics::new(), totals)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn changes(world: &World, id: &str) -> Vec<(Option<String>, String)> {
        world
            .db
            .transitions()
            .into_iter()
            .filter(|t| t.id == id)
            .map(|t| (t.old, t.new))
            .collect()
    }

    fn change(old: &str, new: &str) -> (Option<String>, String) {
        (Some(old.into()), new.into())
    }

    /// The API creates a record (`doc0` first), and the client uploads once: starting after
    /// `start_permille` of the URL's lifetime, landing `duration` seconds later.
    fn create_then_upload(start_permille: u16, duration: u32) -> Step {
        Step::World(Move::Create(vec![Put {
            start_permille,
            duration,
        }]))
    }

    #[tokio::test]
    async fn an_upload_landing_after_its_record_expired_is_revived_by_its_event() {
        let world = replay(
            vec![
                // Started in the URL's last second (600 s), landing an hour later.
                create_then_upload(1000, 3600),
                // Past pending_ttl (900 s): expired.
                Step::Advance(901),
                Step::Sweep(Trouble::Calm),
                Step::Advance(3600),
                Step::Deliver(Pick(0), Trouble::Calm),
            ],
            Arc::new(Totals::default()),
        )
        .await;
        assert_eq!(
            changes(&world, "doc0"),
            [change("pending", "expired"), change("expired", "processed")]
        );
        let trail = world
            .catalog
            .audit_trail("doc0", "docs/doc0")
            .await
            .expect("trail")
            .expect("migrated");
        let findings: Vec<&str> = trail.iter().map(|e| e.finding.as_str()).collect();
        assert_eq!(findings, ["stale_pending", "late_upload"]);
    }

    #[tokio::test]
    async fn an_event_whose_effect_crashed_is_delivered_again_and_applied_once() {
        let totals = Arc::new(Totals::default());
        let world = replay(
            vec![
                create_then_upload(0, 0),
                Step::Advance(1),
                // At the effect's commit, as the effect is written today; any of its operations
                // would leave the event unacknowledged.
                Step::Deliver(Pick(0), Trouble::Crash(10)),
                Step::Deliver(Pick(0), Trouble::Calm),
            ],
            totals.clone(),
        )
        .await;
        assert_eq!(totals.crashes.load(Ordering::Relaxed), 1);
        assert_eq!(totals.redelivered.load(Ordering::Relaxed), 1);
        assert_eq!(changes(&world, "doc0"), [change("pending", "processed")]);
    }

    /// Found by `histories_converge` and shrunk: a sweep killed between an orphan's delete and
    /// its audit (its intent noted, the object gone), then another object put at the same key
    /// before the next sweep. That sweep's settling of the intent must still audit the delete:
    /// the object the intent saw is gone, though its key holds another now. (It took the new
    /// object for the old one, forgot the intent, and the delete was never audited.)
    #[tokio::test]
    async fn an_orphan_deleted_by_a_killed_sweep_is_audited_though_another_object_took_its_key() {
        let history = History {
            params: Params {
                prefix: "docs/",
                lifetime: 60,
                ttl_beyond_lifetime: 0,
                orphan_grace: 60,
                processing_timeout: 60,
                orphan_action: OrphanAction::Delete,
                after_upload: AfterUpload::MarkProcessed,
                max_attempts: 1,
                lease: 30,
            },
            fates: vec![DELIVERED],
            steps: vec![
                Step::World(Move::Create(vec![])),
                Step::World(Move::Create(vec![])),
                Step::Advance(2),
                create_then_upload(0, 0),
                Step::Advance(2),
                Step::World(Move::Stray(None)),
                Step::Advance(120),
                Step::Deliver(Pick(0), Trouble::Calm),
                Step::Sweep(Trouble::Crash(11)),
                Step::World(Move::Stray(Some(Pick(0)))),
            ],
            seed: 0,
        };
        run(&history, Metrics::new(), Arc::new(Totals::default()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
