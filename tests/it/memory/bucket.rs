//! The bucket in memory. What S3 and the folder promise, kept here:
//! - The listing comes in UTF-8 byte order (a `BTreeMap<String, _>`), filtered by a byte prefix,
//!   from a snapshot taken when the listing starts.
//! - An object's ETag is made of its bytes, as S3's is for a single-part upload, so the same
//!   bytes copied keep it.
//! - A copy never replaces an object: a key that holds the same bytes is `AlreadyCopied`, another
//!   object is `Taken`, and a source that is not the object described is `SourceChanged`.
//! - A delete removes only the very object described (same ETag); anything else is `Changed`.
//!
//! Like S3, the double numbers every change with a sequencer (increasing per key: one counter for
//! the whole bucket) and keeps them as a feed a test turns into event notifications. It also logs
//! each object the engine destroyed (`delete_if` that deleted), with whether a record referred to
//! it at that moment, as a referee set by the test says.

use super::{Schedule, locked};
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use upload_reconciler::bucket::{Bucket, CopyOutcome, DeleteOutcome};
use upload_reconciler::error::{Error, Result};
use upload_reconciler::model::ObjectMeta;
use upload_reconciler::processing::Clock;

/// Whether a record refers to the object at a key, asked at each destructive call.
pub type Referee = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// A bucket in memory. Cheap to clone; every clone is the same bucket.
#[derive(Clone)]
pub struct MemoryBucket {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    clock: Arc<dyn Clock>,
    schedule: Arc<Schedule>,
    state: Mutex<State>,
    referee: Mutex<Option<Arc<Referee>>>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Stored>,
    /// The last sequencer given out.
    sequencer: u64,
    /// Changes not yet taken by `take_changes`.
    changes: Vec<Change>,
    destroyed: Vec<Destroyed>,
}

struct Stored {
    body: Vec<u8>,
    etag: String,
    last_modified: DateTime<Utc>,
}

/// One change of the bucket, as S3 notifies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: String,
    /// `Some(object)` for a created object, `None` for a removed one.
    pub created: Option<ObjectMeta>,
    /// S3's per-key ordering token: 16 hex digits, increasing.
    pub sequencer: String,
    pub at: DateTime<Utc>,
}

/// An object the engine deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct Destroyed {
    pub key: String,
    pub body: Vec<u8>,
    /// When it was last modified: its age when it went.
    pub last_modified: DateTime<Utc>,
    /// Whether a record referred to it when it was deleted (per the referee; `false` without).
    pub referenced: bool,
    pub at: DateTime<Utc>,
}

impl MemoryBucket {
    /// An empty bucket called `name`, its times from `clock`, crashing as `schedule` says.
    pub fn new(name: &str, clock: Arc<dyn Clock>, schedule: Arc<Schedule>) -> MemoryBucket {
        MemoryBucket {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                clock,
                schedule,
                state: Mutex::new(State::default()),
                referee: Mutex::new(None),
            }),
        }
    }

    /// Someone writes an object (an upload lands): it is modified now.
    pub fn put(&self, key: &str, body: &[u8]) -> ObjectMeta {
        let now = self.inner.clock.now();
        let mut state = locked(&self.inner.state);
        write(&mut state, key, body.to_vec(), now)
    }

    /// Someone deletes an object; `false` when there was none.
    pub fn remove(&self, key: &str) -> bool {
        let now = self.inner.clock.now();
        let mut state = locked(&self.inner.state);
        state.objects.remove(key).is_some() && {
            changed(&mut state, key, None, now);
            true
        }
    }

    pub fn body(&self, key: &str) -> Option<Vec<u8>> {
        locked(&self.inner.state)
            .objects
            .get(key)
            .map(|stored| stored.body.clone())
    }

    /// Every key, in byte order.
    pub fn keys(&self) -> Vec<String> {
        locked(&self.inner.state).objects.keys().cloned().collect()
    }

    /// The changes since the last call, in the order they happened.
    pub fn take_changes(&self) -> Vec<Change> {
        std::mem::take(&mut locked(&self.inner.state).changes)
    }

    /// Every object the engine deleted, oldest first.
    pub fn destroyed(&self) -> Vec<Destroyed> {
        locked(&self.inner.state).destroyed.clone()
    }

    /// Ask `referee` at each destructive call whether a record refers to the key.
    pub fn set_referee(&self, referee: Referee) {
        *locked(&self.inner.referee) = Some(Arc::new(referee));
    }

    fn enter(&self, op: &'static str) -> Result<()> {
        self.inner
            .schedule
            .enter(op)
            .map_err(|down| Error::storage(format!("{op} {}", self.url()), down.to_string()))
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }
}

/// The ETag of `body`: 32 hex digits made of its bytes.
fn etag_of(body: &[u8]) -> String {
    let half = |salt: u8| {
        let mut hasher = DefaultHasher::new();
        salt.hash(&mut hasher);
        body.hash(&mut hasher);
        hasher.finish()
    };
    format!("\"{:016x}{:016x}\"", half(0), half(1))
}

fn meta(key: &str, stored: &Stored) -> ObjectMeta {
    ObjectMeta {
        key: key.to_owned(),
        size: stored.body.len() as i64,
        etag: Some(stored.etag.clone()),
        last_modified: stored.last_modified,
        linked: false,
    }
}

fn write(state: &mut State, key: &str, body: Vec<u8>, now: DateTime<Utc>) -> ObjectMeta {
    let stored = Stored {
        etag: etag_of(&body),
        body,
        last_modified: now,
    };
    let object = meta(key, &stored);
    state.objects.insert(key.to_owned(), stored);
    changed(state, key, Some(object.clone()), now);
    object
}

fn changed(state: &mut State, key: &str, created: Option<ObjectMeta>, at: DateTime<Utc>) {
    state.sequencer += 1;
    let sequencer = format!("{:016X}", state.sequencer);
    state.changes.push(Change {
        key: key.to_owned(),
        created,
        sequencer,
        at,
    });
}

#[async_trait::async_trait]
impl Bucket for MemoryBucket {
    fn url(&self) -> String {
        format!("memory://{}", self.inner.name)
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectMeta>> {
        if let Err(e) = self.enter("list") {
            return stream::once(async { Err(e) }).boxed();
        }
        let listed: Vec<Result<ObjectMeta>> = locked(&self.inner.state)
            .objects
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, stored)| Ok(meta(key, stored)))
            .collect();
        stream::iter(listed).boxed()
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.enter("head")?;
        Ok(locked(&self.inner.state)
            .objects
            .get(key)
            .map(|stored| meta(key, stored)))
    }

    async fn copy_new(&self, from: &ObjectMeta, to: &str) -> Result<CopyOutcome> {
        self.enter("copy_new")?;
        let now = self.now();
        let mut state = locked(&self.inner.state);
        let Some(source) = state.objects.get(&from.key) else {
            return Ok(CopyOutcome::SourceChanged);
        };
        if from.etag.as_ref().is_some_and(|etag| *etag != source.etag) {
            return Ok(CopyOutcome::SourceChanged);
        }
        if let Some(there) = state.objects.get(to) {
            return Ok(if there.body == source.body {
                CopyOutcome::AlreadyCopied
            } else {
                CopyOutcome::Taken(meta(to, there))
            });
        }
        let body = source.body.clone();
        write(&mut state, to, body, now);
        Ok(CopyOutcome::Copied)
    }

    async fn delete_if(&self, object: &ObjectMeta) -> Result<DeleteOutcome> {
        self.enter("delete_if")?;
        let now = self.now();
        let deleted = {
            let mut state = locked(&self.inner.state);
            let same = state
                .objects
                .get(&object.key)
                .is_some_and(|stored| object.etag.as_ref().is_none_or(|etag| *etag == stored.etag));
            let deleted = same.then(|| state.objects.remove(&object.key)).flatten();
            if deleted.is_some() {
                changed(&mut state, &object.key, None, now);
            }
            deleted
        };
        let Some(deleted) = deleted else {
            return Ok(DeleteOutcome::Changed);
        };
        // Asked outside the bucket's lock: the referee reads the catalog.
        let referee = locked(&self.inner.referee).clone();
        let referenced = referee.is_some_and(|referee| referee(&object.key));
        locked(&self.inner.state).destroyed.push(Destroyed {
            key: object.key.clone(),
            body: deleted.body,
            last_modified: deleted.last_modified,
            referenced,
            at: now,
        });
        Ok(DeleteOutcome::Deleted)
    }

    async fn ping(&self) -> Result<()> {
        self.enter("ping")
    }
}
