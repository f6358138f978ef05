//! Histories: plain data, so that proptest can shrink them and a failure prints one.

use proptest::prelude::*;
use upload_reconciler::execute::AfterUpload;
use upload_reconciler::model::OrphanAction;

#[derive(Debug, Clone)]
pub struct Params {
    /// The key prefix of the docs: `docs/`, or the bucket root (quarantine area inside it).
    pub prefix: &'static str,
    /// `L`: how long a presigned URL is valid, in seconds.
    pub lifetime: u32,
    /// `pending_ttl - L` (a configuration with `pending_ttl < L` is wrong, and not simulated).
    pub ttl_beyond_lifetime: u32,
    pub orphan_grace: u32,
    pub processing_timeout: u32,
    pub orphan_action: OrphanAction,
    pub after_upload: AfterUpload,
    pub max_attempts: u32,
    /// A worker's job lease, in seconds.
    pub lease: u32,
}

impl Params {
    pub fn pending_ttl(&self) -> u32 {
        self.lifetime + self.ttl_beyond_lifetime
    }
}

/// Which one of several: the n-th, counted round; shrinks towards the first.
#[derive(Debug, Clone, Copy)]
pub struct Pick(pub u16);

impl Pick {
    pub fn of(self, len: usize) -> usize {
        usize::from(self.0) % len
    }
}

pub fn pick() -> impl Strategy<Value = Pick> {
    any::<u16>().prop_map(Pick)
}

/// One upload through a presigned URL: it starts within the URL's lifetime (`start_permille` of
/// it) and lands `duration` seconds later, which may be long after the record expired.
#[derive(Debug, Clone)]
pub struct Put {
    pub start_permille: u16,
    pub duration: u32,
}

/// What the world does: the API, the clients, whoever deletes objects.
#[derive(Debug, Clone)]
pub enum Move {
    /// The API creates a pending record and hands out a URL, used by these uploads.
    Create(Vec<Put>),
    /// An object lands with no record: at a new key, or again at the key of an earlier stray.
    Stray(Option<Pick>),
    /// The app creates the record of a stray, while it is younger than `orphan_grace` (the
    /// deployment's contract: an app that records uploads after they land does so within it).
    Confirm(Pick),
    /// Someone deletes an object.
    Delete(Pick),
    /// The next upload in flight lands now.
    LandNext,
}

/// What happens to the process during one step.
#[derive(Debug, Clone)]
pub enum Trouble {
    Calm,
    /// The process crashes at this operation of the step (counted from 0).
    Crash(u8),
    /// The world moves just before this operation of the step.
    Meanwhile(u8, Move),
}

#[derive(Debug, Clone)]
pub enum Step {
    /// The clock moves on (seconds); uploads due meanwhile land in time order.
    Advance(u32),
    World(Move),
    /// The consumer takes one of the notifications it can see and applies it.
    Deliver(Pick, Trouble),
    Sweep(Trouble),
    /// A worker runs one due job; its hook succeeds or fails.
    Work {
        hook_ok: bool,
        trouble: Trouble,
    },
}

/// What becomes of one notification.
#[derive(Debug, Clone)]
pub struct Fate {
    pub lost: bool,
    pub copies: u8,
    /// Seconds before the consumer can see it.
    pub delay: u32,
}

#[derive(Debug, Clone)]
pub struct History {
    pub params: Params,
    /// The fates of successive notifications, taken in turn (round and round).
    pub fates: Vec<Fate>,
    pub steps: Vec<Step>,
    /// Seeds the workers' retry jitter, so that a history replays the same.
    pub seed: u64,
}

pub fn orphan_action() -> impl Strategy<Value = OrphanAction> {
    prop_oneof![
        Just(OrphanAction::Report),
        Just(OrphanAction::Adopt),
        Just(OrphanAction::Quarantine),
        Just(OrphanAction::Delete),
    ]
}

prop_compose! {
    fn params()(
        prefix in prop_oneof![Just("docs/"), Just("")],
        lifetime in 60u32..=3600,
        ttl_beyond_lifetime in prop_oneof![Just(0u32), 1u32..=3600],
        orphan_grace in 60u32..=7200,
        processing_timeout in 60u32..=3600,
        orphan_action in orphan_action(),
        after_upload in prop_oneof![Just(AfterUpload::MarkProcessed), Just(AfterUpload::Enqueue)],
        max_attempts in 1u32..=3,
        lease in 30u32..=600,
    ) -> Params {
        Params {
            prefix,
            lifetime,
            ttl_beyond_lifetime,
            orphan_grace,
            processing_timeout,
            orphan_action,
            after_upload,
            max_attempts,
            lease,
        }
    }
}

pub fn put() -> impl Strategy<Value = Put> {
    (0u16..=1000, prop_oneof![3 => 0u32..=60, 1 => 0u32..=14_400]).prop_map(
        |(start_permille, duration)| Put {
            start_permille,
            duration,
        },
    )
}

pub fn puts() -> impl Strategy<Value = Vec<Put>> {
    prop_oneof![
        1 => Just(vec![]),
        4 => put().prop_map(|p| vec![p]),
        1 => (put(), put()).prop_map(|(a, b)| vec![a, b]),
    ]
}

pub fn world_move() -> impl Strategy<Value = Move> {
    prop_oneof![
        4 => puts().prop_map(Move::Create),
        1 => proptest::option::of(pick()).prop_map(Move::Stray),
        1 => pick().prop_map(Move::Confirm),
        1 => pick().prop_map(Move::Delete),
        1 => Just(Move::LandNext),
    ]
}

/// What moves between the engine's read and its write: mostly what its re-checks are for.
pub fn meanwhile_move() -> impl Strategy<Value = Move> {
    prop_oneof![
        3 => Just(Move::LandNext),
        2 => pick().prop_map(Move::Delete),
        1 => proptest::option::of(pick()).prop_map(Move::Stray),
        1 => pick().prop_map(Move::Confirm),
        1 => puts().prop_map(Move::Create),
    ]
}

pub fn trouble() -> impl Strategy<Value = Trouble> {
    prop_oneof![
        3 => Just(Trouble::Calm),
        1 => (0u8..24).prop_map(Trouble::Crash),
        2 => (0u8..24, meanwhile_move()).prop_map(|(at, change)| Trouble::Meanwhile(at, change)),
    ]
}

pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => prop_oneof![1u32..=120, 120u32..=7200].prop_map(Step::Advance),
        4 => world_move().prop_map(Step::World),
        5 => (pick(), trouble()).prop_map(|(pick, trouble)| Step::Deliver(pick, trouble)),
        2 => trouble().prop_map(Step::Sweep),
        2 => (any::<bool>(), trouble()).prop_map(|(hook_ok, trouble)| Step::Work { hook_ok, trouble }),
    ]
}

pub fn fate() -> impl Strategy<Value = Fate> {
    (
        proptest::bool::weighted(0.2),
        prop_oneof![4 => Just(1u8), 1 => Just(2u8)],
        prop_oneof![Just(0u32), 0u32..=1800],
    )
        .prop_map(|(lost, copies, delay)| Fate {
            lost,
            copies,
            delay,
        })
}

pub fn history() -> impl Strategy<Value = History> {
    (
        params(),
        proptest::collection::vec(fate(), 1..=16),
        proptest::collection::vec(step(), 1..=60),
        any::<u64>(),
    )
        .prop_map(|(params, fates, steps, seed)| History {
            params,
            fates,
            steps,
            seed,
        })
}
