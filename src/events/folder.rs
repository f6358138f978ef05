//! The folder bucket's event source: file-system notifications (inotify, through `notify`) become
//! `S3Event`s and take the same effect path as the SQS events of an S3 bucket.
//!
//! - A file is complete when the writer closes it (close-write) or when it is renamed into place;
//!   opening, creating and each write are not looked at, so a file written slowly in chunks gives
//!   one event, after its last write.
//! - Bursts on one key collapse: a key's event waits `DEBOUNCE` after its latest notification, and
//!   the latest kind wins (keys take effect in the order their bursts ended). There is no
//!   sequencer: each effect reads the file afresh, a "landed" key whose file is gone again, or a
//!   "gone" key whose file is back, is left to the notification that followed.
//! - A folder that appears (made, or renamed in) is walked once: files written into it before its
//!   own watch was in place gave no notification.
//! - The folder bucket's own temporary files (`.reconcile-*`) and keys outside `storage.prefix` or
//!   under the quarantine prefix are never turned into events.
//! - A dependency that fails holds the event (and those after it) until it answers, as the SQS
//!   poller does; a stop while holding, an error of the event's own, or a notification queue that
//!   overflowed leaves the key to the next sweep, logged and counted.
//! - Memory is bounded whatever the folder does while an event is held: notifications wait in an
//!   [`Inbox`] collapsed per path (a file written in a million chunks, or rewritten a million
//!   times, waits as one path), at most [`MAX_WAITING`] paths; so do the keys waiting their
//!   debounce. Past the bound a notification is dropped and counted as `notifications_lost`,
//!   like inotify's own overflow: the next sweep catches up.

use super::effect::Effects;
use super::gate::Gate;
use super::hold::{Held, apply_holding, took_effect};
use super::parse::{EventKind, S3Event};
use crate::bucket::folder::TEMP_PREFIX;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::rules::Quarantine;
use chrono::Utc;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// How long a key stays quiet before its event takes effect.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The most paths whose notifications wait to be read, and the most keys waiting their
/// debounce: a few hundred bytes each, so about a megabyte at most.
pub const MAX_WAITING: usize = 4096;

/// Notifications not yet read by the watcher, filled on `notify`'s thread (which must never
/// block) and drained by the watcher's loop, which reads nothing while an effect is held.
/// Collapsed per path, the latest change winning (the loop's debounce does the same), in the
/// order paths first came; bounded by [`MAX_WAITING`] paths.
#[derive(Default)]
pub struct Inbox {
    waiting: Mutex<Waiting>,
    ready: Notify,
    /// Set when `notify` dropped its handler: no notification will come any more.
    closed: std::sync::atomic::AtomicBool,
}

/// Held by `notify`'s handler: closes the inbox when the handler is dropped (its thread ended).
struct Sender(Arc<Inbox>);

impl Drop for Sender {
    fn drop(&mut self) {
        self.0
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.ready.notify_one();
    }
}

#[derive(Default)]
struct Waiting {
    order: Vec<PathBuf>,
    /// Path -> landed (else gone).
    latest: HashMap<PathBuf, bool>,
    /// Notifications dropped since the last drain: past the bound, or lost by inotify itself.
    lost: u64,
    /// The last error `notify` reported since the last drain, and how many there were.
    errors: Option<(u64, String)>,
}

/// What one drain of the inbox holds.
#[derive(Debug, Default, PartialEq)]
pub struct Drained {
    pub changes: Vec<Change>,
    pub lost: u64,
    pub errors: Option<(u64, String)>,
}

impl Inbox {
    /// Note one notification; returns how many paths now wait.
    pub fn post(&self, event: notify::Result<notify::Event>) -> usize {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Ok(event) => {
                if event.need_rescan() {
                    waiting.lost += 1;
                }
                for change in changes(&event) {
                    let (path, landed) = match change {
                        Change::Landed(path) => (path, true),
                        Change::Gone(path) => (path, false),
                    };
                    if let Some(latest) = waiting.latest.get_mut(&path) {
                        *latest = landed;
                    } else if waiting.latest.len() < MAX_WAITING {
                        waiting.order.push(path.clone());
                        waiting.latest.insert(path, landed);
                    } else {
                        waiting.lost += 1;
                    }
                }
            }
            Err(e) => {
                let count = waiting.errors.as_ref().map_or(0, |(n, _)| *n);
                waiting.errors = Some((count + 1, e.to_string()));
            }
        }
        let count = waiting.latest.len();
        drop(waiting);
        self.ready.notify_one();
        count
    }

    /// Take everything waiting.
    pub fn drain(&self) -> Drained {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let Waiting {
            order,
            mut latest,
            lost,
            errors,
        } = std::mem::take(&mut *waiting);
        let changes = order
            .into_iter()
            .filter_map(|path| {
                let landed = latest.remove(&path)?;
                Some(if landed {
                    Change::Landed(path)
                } else {
                    Change::Gone(path)
                })
            })
            .collect();
        Drained {
            changes,
            lost,
            errors,
        }
    }

    /// Until something was posted since the last wait.
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    /// Whether the notifications ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a notification says about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Complete at this path: a file closed after writing or renamed in, or a folder to walk.
    Landed(PathBuf),
    /// No longer at this path: removed or renamed away.
    Gone(PathBuf),
}

/// The changes one notification means; anything else (opens, writes, attributes) means none.
pub fn changes(event: &notify::Event) -> Vec<Change> {
    use notify::EventKind as K;
    let paths = &event.paths;
    let landed = |p: &PathBuf| Change::Landed(p.clone());
    let gone = |p: &PathBuf| Change::Gone(p.clone());
    match event.kind {
        K::Access(AccessKind::Close(AccessMode::Write))
        | K::Create(CreateKind::Folder)
        | K::Modify(ModifyKind::Name(RenameMode::To)) => paths.iter().map(landed).collect(),
        K::Modify(ModifyKind::Name(RenameMode::Both)) => match paths.as_slice() {
            [from, to] => vec![gone(from), landed(to)],
            _ => Vec::new(),
        },
        K::Remove(_) | K::Modify(ModifyKind::Name(RenameMode::From)) => {
            paths.iter().map(gone).collect()
        }
        _ => Vec::new(),
    }
}

/// The key of `path` under `root`: its components joined by `/`. None for the root itself, a path
/// outside it, or a name that is not UTF-8 (S3 keys are).
pub fn key_of(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(name) => parts.push(name.to_str()?),
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Which keys become events.
#[derive(Debug, Clone)]
pub struct Filter {
    pub prefix: String,
    pub quarantine: Quarantine,
}

impl Filter {
    /// A doc's key: under the prefix, not in quarantine, not one of the bucket's temporary files.
    pub fn watches(&self, key: &str) -> bool {
        let name = key.rsplit('/').next().unwrap_or(key);
        key.starts_with(&self.prefix)
            && !self.quarantine.contains(key)
            && !name.starts_with(TEMP_PREFIX)
    }

    /// Whether a folder at `key` may hold watched files: it lies under the prefix, or on the way
    /// to it.
    pub fn may_hold(&self, key: &str) -> bool {
        let folder = format!("{key}/");
        folder.starts_with(&self.prefix) || self.prefix.starts_with(&folder)
    }
}

/// The watcher of one folder bucket.
pub struct FolderWatcher {
    /// The folder as configured; resolved when the watch starts.
    pub root: PathBuf,
    pub filter: Filter,
    pub effects: Arc<Effects>,
    pub metrics: Arc<Metrics>,
    /// Shared with `/readyz`: closed while a dependency is awaited.
    pub gate: Arc<Gate>,
}

impl FolderWatcher {
    /// Watch until `stop` turns true. Returns early (for the supervisor to restart) when the
    /// watch cannot be set up or the notifications end.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        let inbox = Arc::new(Inbox::default());
        let waiting = self.metrics.file_notifications_waiting.clone();
        waiting.set(0);
        let sender = Sender(inbox.clone());
        let post = move |event| {
            let count = sender.0.post(event);
            waiting.set(i64::try_from(count).unwrap_or(i64::MAX));
        };
        // Setting up a recursive watch walks the whole tree: off the async threads.
        let configured = self.root.clone();
        let (root, _watcher) =
            match tokio::task::spawn_blocking(move || watch(&configured, post)).await {
                Ok(Ok(watching)) => watching,
                Ok(Err(e)) => return tracing::error!(error = %e, "cannot watch the folder"),
                Err(e) => return tracing::error!(error = %e, "the watch set-up failed"),
            };
        tracing::info!(folder = %root.display(), "watching the folder for files");
        // Key -> (landed?, due); the latest notification wins and restarts the wait.
        let mut pending: HashMap<String, (bool, Instant)> = HashMap::new();
        loop {
            let next_due = pending.values().map(|(_, due)| *due).min();
            tokio::select! {
                _ = crate::stop::requested(&mut stop) => break,
                _ = inbox.wait() => {
                    if inbox.is_closed() {
                        return tracing::error!("file notifications ended");
                    }
                    let drained = inbox.drain();
                    self.metrics.file_notifications_waiting.set(0);
                    self.note(&root, drained, &mut pending).await;
                }
                _ = sleep_until(next_due), if next_due.is_some() => {
                    let now = Instant::now();
                    let mut due: Vec<(String, bool, Instant)> = pending
                        .iter()
                        .filter(|(_, (_, at))| *at <= now)
                        .map(|(key, (landed, at))| (key.clone(), *landed, *at))
                        .collect();
                    due.sort_by_key(|(_, _, at)| *at);
                    for (key, landed, _) in due {
                        pending.remove(&key);
                        if !self.take_effect(&key, landed, &mut stop).await {
                            break;
                        }
                    }
                }
            }
        }
        if !pending.is_empty() {
            tracing::info!(
                keys = pending.len(),
                "stopping with file events not yet applied; the next sweep catches up"
            );
        }
    }

    /// Note what the notifications drained from the inbox change.
    async fn note(
        &self,
        root: &Path,
        drained: Drained,
        pending: &mut HashMap<String, (bool, Instant)>,
    ) {
        if let Some((count, error)) = drained.errors {
            tracing::warn!(count, error = %error,
                "file notifications failed; the next sweep catches up");
        }
        let mut lost = drained.lost;
        let due = Instant::now() + DEBOUNCE;
        // A key already waiting only moves its due time: the bound is on distinct keys.
        let mut wait = |key: String, landed: bool, lost: &mut u64| {
            if pending.len() < MAX_WAITING || pending.contains_key(&key) {
                pending.insert(key, (landed, due));
            } else {
                *lost += 1;
            }
        };
        for change in drained.changes {
            let (path, landed) = match change {
                Change::Landed(path) => (path, true),
                Change::Gone(path) => (path, false),
            };
            let Some(key) = key_of(root, &path) else {
                continue;
            };
            if landed && self.filter.may_hold(&key) && path.is_dir() {
                let filter = self.filter.clone();
                let (root, folder) = (root.to_owned(), path.clone());
                let (found, more) = tokio::task::spawn_blocking(move || {
                    files_in(&root, &folder, &filter, MAX_WAITING)
                })
                .await
                .unwrap_or_default();
                if more {
                    lost += 1;
                }
                for key in found {
                    wait(key, true, &mut lost);
                }
            } else if self.filter.watches(&key) {
                wait(key, landed, &mut lost);
            }
        }
        if lost > 0 {
            self.metrics
                .events_failed
                .with_label_values(&["notifications_lost"])
                .inc_by(lost);
            tracing::warn!(
                lost,
                "file notifications overflowed; the next sweep catches up"
            );
        }
    }

    /// Apply one key's event; false when a stop came while a dependency was awaited.
    async fn take_effect(&self, key: &str, landed: bool, stop: &mut watch::Receiver<bool>) -> bool {
        let holding = "holding it and the file events after it";
        let attempt = || self.effect(key, landed);
        match apply_holding(
            &self.effects,
            &self.gate,
            &self.metrics,
            key,
            holding,
            stop,
            attempt,
        )
        .await
        {
            Held::Applied => true,
            Held::Failed(error) => {
                tracing::error!(key, error = %error,
                    "file event could not be applied; the next sweep will look at it");
                true
            }
            Held::Stopped => {
                tracing::info!(
                    key,
                    "stopped while holding a file event; the next sweep catches up"
                );
                false
            }
        }
    }

    /// Read the file afresh and apply what it shows, if it agrees with the notification.
    async fn effect(&self, key: &str, landed: bool) -> Result<()> {
        let object = self.effects.bucket.head(key).await?;
        let event = match (landed, object) {
            (true, Some(object)) => S3Event {
                kind: EventKind::Created,
                bucket: self.effects.bucket.name().to_owned(),
                key: key.to_owned(),
                size: Some(object.size),
                etag: object.etag,
                sequencer: None,
                time: Some(object.last_modified),
            },
            (false, None) => S3Event {
                kind: EventKind::Removed,
                bucket: self.effects.bucket.name().to_owned(),
                key: key.to_owned(),
                size: None,
                etag: None,
                sequencer: None,
                time: Some(Utc::now()),
            },
            // Gone again, or back again: the notification that did it follows.
            _ => return Ok(()),
        };
        self.metrics
            .events_received
            .with_label_values(&[event.kind.label()])
            .inc();
        let effect = self.effects.apply(&event, Utc::now()).await?;
        took_effect(&self.metrics, "file", &event, effect);
        Ok(())
    }
}

/// Watch the folder at `root` (resolved), recursively, handing every notification to `post`
/// (on `notify`'s thread).
fn watch(
    root: &Path,
    post: impl Fn(notify::Result<notify::Event>) + Send + 'static,
) -> Result<(PathBuf, notify::RecommendedWatcher)> {
    let context = format!("watching file://{}", root.display());
    let root = std::fs::canonicalize(root).map_err(|e| Error::storage(&context, e.to_string()))?;
    let mut watcher =
        notify::recommended_watcher(post).map_err(|e| Error::storage(&context, e.to_string()))?;
    watcher
        .watch(&root, RecursiveMode::Recursive)
        .map_err(|e| Error::storage(&context, e.to_string()))?;
    Ok((root, watcher))
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// The watched keys of the files under `folder`, walked now: at most `limit`, and whether
/// there were more.
fn files_in(root: &Path, folder: &Path, filter: &Filter, limit: usize) -> (Vec<String>, bool) {
    let mut found = Vec::new();
    let mut folders = vec![folder.to_owned()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            let Some(key) = key_of(root, &path) else {
                continue;
            };
            if kind.is_dir() && filter.may_hold(&key) {
                folders.push(path);
            } else if kind.is_file() && filter.watches(&key) {
                if found.len() == limit {
                    return (found, true);
                }
                found.push(key);
            }
        }
    }
    (found, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::RemoveKind;

    fn event(kind: notify::EventKind, paths: &[&str]) -> notify::Event {
        paths.iter().fold(notify::Event::new(kind), |e, p| {
            e.add_path(PathBuf::from(p))
        })
    }

    #[test]
    fn a_file_counts_once_complete_and_as_gone_once_removed_or_renamed_away() {
        use notify::EventKind as K;
        let landed = |p: &str| Change::Landed(PathBuf::from(p));
        let gone = |p: &str| Change::Gone(PathBuf::from(p));
        let cases = [
            (
                K::Access(AccessKind::Close(AccessMode::Write)),
                vec!["/r/a"],
                vec![landed("/r/a")],
            ),
            (
                K::Modify(ModifyKind::Name(RenameMode::To)),
                vec!["/r/a"],
                vec![landed("/r/a")],
            ),
            (
                K::Modify(ModifyKind::Name(RenameMode::Both)),
                vec!["/r/t", "/r/a"],
                vec![gone("/r/t"), landed("/r/a")],
            ),
            (
                K::Modify(ModifyKind::Name(RenameMode::From)),
                vec!["/r/a"],
                vec![gone("/r/a")],
            ),
            (
                K::Remove(RemoveKind::File),
                vec!["/r/a"],
                vec![gone("/r/a")],
            ),
            (
                K::Create(CreateKind::Folder),
                vec!["/r/d"],
                vec![landed("/r/d")],
            ),
            // Still being written: nothing yet.
            (K::Create(CreateKind::File), vec!["/r/a"], vec![]),
            (
                K::Modify(ModifyKind::Data(notify::event::DataChange::Any)),
                vec!["/r/a"],
                vec![],
            ),
            (
                K::Access(AccessKind::Close(AccessMode::Read)),
                vec!["/r/a"],
                vec![],
            ),
            (
                K::Access(AccessKind::Open(AccessMode::Any)),
                vec!["/r/a"],
                vec![],
            ),
        ];
        for (kind, paths, expected) in cases {
            assert_eq!(changes(&event(kind, &paths)), expected, "{kind:?}");
        }
    }

    #[test]
    fn the_inbox_collapses_notifications_per_path_and_bounds_the_paths() {
        use notify::EventKind as K;
        let closed = |p: &str| Ok(event(K::Access(AccessKind::Close(AccessMode::Write)), &[p]));
        let removed = |p: &str| Ok(event(K::Remove(RemoveKind::File), &[p]));
        let written = |p: &str| {
            Ok(event(
                K::Modify(ModifyKind::Data(notify::event::DataChange::Any)),
                &[p],
            ))
        };
        let inbox = Inbox::default();
        for _ in 0..10_000 {
            inbox.post(written("/r/a"));
            inbox.post(closed("/r/a"));
        }
        inbox.post(closed("/r/b"));
        assert_eq!(inbox.post(removed("/r/a")), 2, "two paths wait");
        assert_eq!(
            inbox.drain(),
            Drained {
                changes: vec![
                    Change::Gone(PathBuf::from("/r/a")),
                    Change::Landed(PathBuf::from("/r/b"))
                ],
                lost: 0,
                errors: None,
            },
            "the latest change of each path, in the order the paths came"
        );
        assert_eq!(inbox.drain(), Drained::default());

        for n in 0..MAX_WAITING + 5 {
            inbox.post(closed(&format!("/r/{n}")));
        }
        // A path already waiting still takes its latest change past the bound.
        inbox.post(removed("/r/0"));
        let mut rescan = notify::Event::new(K::Other);
        rescan = rescan.set_flag(notify::event::Flag::Rescan);
        inbox.post(Ok(rescan));
        let drained = inbox.drain();
        assert_eq!(drained.changes.len(), MAX_WAITING);
        assert_eq!(drained.changes[0], Change::Gone(PathBuf::from("/r/0")));
        assert_eq!(
            drained.lost,
            5 + 1,
            "past the bound, and inotify's own overflow"
        );
    }

    #[tokio::test]
    async fn the_inbox_closes_when_notify_drops_its_handler() {
        let inbox = Arc::new(Inbox::default());
        let sender = Sender(inbox.clone());
        assert!(!inbox.is_closed());
        drop(sender);
        inbox.wait().await;
        assert!(inbox.is_closed());
    }

    #[test]
    fn keys_are_paths_under_the_root_joined_by_slashes() {
        let root = Path::new("/srv/up");
        let cases = [
            ("/srv/up/a", Some("a")),
            (
                "/srv/up/docs/2026/résumé final.pdf",
                Some("docs/2026/résumé final.pdf"),
            ),
            ("/srv/up", None),
            ("/srv/upper/a", None),
            ("/elsewhere/a", None),
        ];
        for (path, expected) in cases {
            assert_eq!(key_of(root, Path::new(path)).as_deref(), expected, "{path}");
        }
        use std::os::unix::ffi::OsStrExt;
        let not_utf8 = root.join(std::ffi::OsStr::from_bytes(b"a\xff"));
        assert_eq!(key_of(root, &not_utf8), None);
    }

    #[test]
    fn only_docs_under_the_prefix_become_events() {
        let filter = Filter {
            prefix: "uploads/".into(),
            quarantine: Quarantine::new("uploads/_quarantine/"),
        };
        let cases = [
            ("uploads/a", true),
            ("uploads/deep/er/a b", true),
            ("other/a", false),
            ("uploadsX", false),
            ("uploads/_quarantine/a", false),
            ("uploads/.reconcile-x1y2", false),
            ("uploads/sub/.reconcile-x1y2", false),
            ("uploads/.hidden", true),
        ];
        for (key, expected) in cases {
            assert_eq!(filter.watches(key), expected, "{key}");
        }
        let folders = [
            ("uploads", true),
            ("uploads/sub", true),
            ("other", false),
            ("up", false),
        ];
        for (key, expected) in folders {
            assert_eq!(filter.may_hold(key), expected, "{key}");
        }
        let everything = Filter {
            prefix: String::new(),
            quarantine: Quarantine::new(""),
        };
        assert!(everything.watches("a/b") && everything.may_hold("a"));
    }
}
