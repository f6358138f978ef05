//! A property campaign over the folder bucket, on the real platform: random file operations
//! (slow writes, renames in with old mtimes, symbolic and hard links to other docs' files, files
//! replaced under their name, deletes) race the folder daemon's watcher and sweeps run with
//! `orphan_action = "delete"`, and after each sweep:
//! - (a) no byte of a file that a record or a link reaches is lost;
//! - (b) nothing younger than `orphan_grace` by arrival was touched;
//! - (c) no record was adopted while its file was still being written (a partial size);
//! - (d) every sweep finished (exit 0: no link or file state stopped it).
//!
//! - (e) the app's own SQLite writes are never locked out: an app writer INSERTs every 20 ms
//!   with a busy timeout of [`APP_BUSY_TIMEOUT`], so a longer wait is an INSERT that fails with
//!   "database is locked" (SQLite's bound, not a timing of the test). The longest wait is
//!   reported beside it. The bound is ten times the 100 ms the reconciler aims at: here the
//!   app also waits on the campaign's own writes and reads of the database, on two cores shared
//!   with CI's other tests (a run at load average 7 saw 2 of 1 126 INSERTs past 100 ms). The
//!   100 ms bound itself is asserted where the reconciler is the only other party:
//!   `sqlite::the_apps_writes_never_wait_*`, whose app gives up after 100 ms.
//!
//! `FOLDER_CASES` steps (default [`DEFAULT_STEPS`], CI), `FOLDER_SEED` to replay; the long
//! setting is in RELIABILITY.md. Unreadable files are not among the operations: the campaign
//! runs as root, which reads everything (`folder::an_unreadable_folder_...` covers them).

use crate::daemon::{signal, wait_exit};
use crate::helpers::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

const DEFAULT_STEPS: usize = 12;
const ORPHAN_GRACE: Duration = Duration::from_secs(2);
const NO_SWEEP: &str = "0 0 0 1 1 * 2099";
/// How long the app's INSERT waits for a lock before it fails (see (e)).
const APP_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// A file being written in chunks by a thread of its own.
struct Writer {
    id: String,
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

struct World {
    db: TestSqlite,
    folder: TestFolder,
    rng: fastrand::Rng,
    n: usize,
    /// Docs with a record whose file a record or link reaches: key -> the bytes it must hold
    /// (`None` once the campaign itself removed the file).
    reached: BTreeMap<String, Option<String>>,
    /// Files with no record that arrived at their key, and when.
    arrivals: Vec<(String, SystemTime)>,
    writers: Vec<Writer>,
    /// Docs whose file is still written (checked for (c)).
    growing: BTreeMap<String, Arc<AtomicBool>>,
}

impl World {
    fn path(&self, key: &str) -> std::path::PathBuf {
        self.folder.path().join(key)
    }

    fn next(&mut self, what: &str) -> String {
        self.n += 1;
        format!("{what}{}", self.n)
    }

    /// A doc whose file is complete: one of `reached` with bytes, not a link's name.
    fn pick_doc(&mut self) -> Option<String> {
        let docs: Vec<String> = self
            .reached
            .iter()
            .filter(|(key, bytes)| {
                bytes.is_some() && key.starts_with("docs/d") && !self.growing.contains_key(*key)
            })
            .map(|(key, _)| key.clone())
            .collect();
        (!docs.is_empty()).then(|| docs[self.rng.usize(..docs.len())].clone())
    }

    async fn step(&mut self) -> &'static str {
        match self.rng.u8(..7) {
            0 => {
                let id = self.next("d");
                self.db.doc(&id, "pending", MINUTE).await;
                let body = format!("the bytes of {id}");
                self.folder.put(&format!("docs/{id}"), &body);
                self.reached.insert(format!("docs/{id}"), Some(body));
                "doc"
            }
            1 => {
                let id = self.next("s");
                self.db.doc(&id, "pending", MINUTE).await;
                let path = self.path(&format!("docs/{id}"));
                let done = Arc::new(AtomicBool::new(false));
                let finished = done.clone();
                let thread = std::thread::spawn(move || {
                    let mut file = std::fs::File::create(&path).expect("create");
                    for _ in 0..8 {
                        file.write_all(&[b'x'; 1000]).expect("write a chunk");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    drop(file);
                    finished.store(true, Ordering::SeqCst);
                });
                let key = format!("docs/{id}");
                self.growing.insert(key.clone(), done.clone());
                self.reached.insert(key, Some("x".repeat(8000)));
                self.writers.push(Writer { id, done, thread });
                "slow write"
            }
            2 => {
                // mv of a file written two years ago: no record, arrived now.
                let id = self.next("m");
                let incoming = format!("incoming/{id}");
                self.folder.put(&incoming, "moved in");
                std::fs::File::options()
                    .write(true)
                    .open(self.path(&incoming))
                    .and_then(|f| {
                        f.set_modified(SystemTime::now() - Duration::from_secs(730 * 86_400))
                    })
                    .expect("backdate");
                std::fs::rename(self.path(&incoming), self.path(&format!("docs/{id}")))
                    .expect("move in");
                self.arrivals
                    .push((format!("docs/{id}"), SystemTime::now()));
                "move in (old mtime)"
            }
            3 => {
                // A content-addressed doc: a record for the link, none for the blob.
                let id = self.next("l");
                let blob = format!("docs/blobs/{id}");
                let body = format!("blob of {id}");
                self.folder.put(&blob, &body);
                std::os::unix::fs::symlink(format!("blobs/{id}"), self.path(&format!("docs/{id}")))
                    .expect("symlink");
                self.db.doc(&id, "processed", MINUTE).await;
                self.reached.insert(blob, Some(body.clone()));
                self.reached.insert(format!("docs/{id}"), Some(body));
                "symlinked doc"
            }
            4 => {
                let Some(doc) = self.pick_doc() else {
                    return "nothing";
                };
                // A symbolic link, with no record, to another doc's file: its file must stay.
                let id = self.next("k");
                let target = doc.trim_start_matches("docs/").to_owned();
                std::os::unix::fs::symlink(&target, self.path(&format!("docs/{id}")))
                    .expect("symlink");
                // A hard link too: one more name, which may go as an orphan.
                let hard = self.next("h");
                std::fs::hard_link(self.path(&doc), self.path(&format!("docs/{hard}")))
                    .expect("hard link");
                self.arrivals
                    .push((format!("docs/{hard}"), SystemTime::now()));
                self.arrivals
                    .push((format!("docs/{id}"), SystemTime::now()));
                "links to a doc"
            }
            5 => {
                let Some(doc) = self.pick_doc() else {
                    return "nothing";
                };
                let body = format!("replaced {}", self.next("r"));
                let temp = format!("incoming/{}", self.next("t"));
                self.folder.put(&temp, &body);
                std::fs::rename(self.path(&temp), self.path(&doc)).expect("replace");
                self.reached.insert(doc, Some(body));
                "replace"
            }
            _ => {
                let Some(doc) = self.pick_doc() else {
                    return "nothing";
                };
                std::fs::remove_file(self.path(&doc)).expect("remove");
                self.reached.insert(doc, None);
                "delete"
            }
        }
    }

    /// (a), (b) and (c) after a sweep that ended at `ended`: the sweep judged every file at
    /// some time before, so one still younger than the grace at `ended` was younger then.
    async fn check(&self, ended: SystemTime, step: usize, report: &str) {
        for (key, bytes) in &self.reached {
            let Some(bytes) = bytes else { continue };
            let now = std::fs::read_to_string(self.path(key));
            if self
                .growing
                .get(key)
                .is_some_and(|d| !d.load(Ordering::SeqCst))
            {
                let now = now.unwrap_or_else(|e| panic!("step {step}: {key} lost mid-write: {e}"));
                assert!(bytes.starts_with(&now), "step {step}: {key} holds {now:?}");
            } else {
                assert_eq!(
                    now.ok().as_deref(),
                    Some(bytes.as_str()),
                    "step {step}: (a) the bytes of {key}, reached by a record or a link: {report}"
                );
            }
        }
        for (key, arrived) in &self.arrivals {
            let young = ended
                .duration_since(*arrived)
                .map_or(true, |age| age < ORPHAN_GRACE);
            if young {
                assert!(
                    std::fs::symlink_metadata(self.path(key)).is_ok(),
                    "step {step}: (b) {key} was touched within orphan_grace of its arrival ({:?} before the \
                     sweep ended): {report}",
                    ended.duration_since(*arrived)
                );
            }
        }
        let mut adopted = Vec::new();
        for (key, done) in &self.growing {
            let finished = done.load(Ordering::SeqCst);
            let id = key.trim_start_matches("docs/");
            let status = self.db.status(id).await;
            if !finished {
                assert_eq!(
                    status.as_deref(),
                    Some("pending"),
                    "step {step}: (c) {id} adopted while its file was still written: {report}"
                );
            } else if status.as_deref() != Some("pending") {
                adopted.push(key);
            }
        }
        if adopted.is_empty() {
            return;
        }
        // The sizes the reconciler noted when it adopted them, read through one connection.
        let side = self.db.side_pool().await;
        for key in adopted {
            let noted: Option<i64> = sqlx::query_scalar("SELECT size FROM objects WHERE key = ?1")
                .bind(key)
                .fetch_optional(&side)
                .await
                .expect("read the noted objects");
            assert_eq!(
                noted,
                Some(8000),
                "step {step}: (c) {key} adopted with a size its file does not have: {report}"
            );
        }
        side.close().await;
    }
}

#[tokio::test]
async fn a_campaign_of_file_operations_racing_sweeps_and_the_watcher_loses_no_doc() {
    let steps: usize = std::env::var("FOLDER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_STEPS);
    let seed: u64 = std::env::var("FOLDER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("folder campaign: seed {seed}, {steps} steps (replay with FOLDER_SEED={seed})");
    let began = Instant::now();
    let db = TestSqlite::with_docs().await;
    let folder = TestFolder::new();
    for key in ["docs/blobs", "incoming"] {
        std::fs::create_dir_all(folder.path().join(key)).expect("folder");
    }
    let reconcile = Reconcile {
        database_url: db.url(),
        ..Reconcile::on_folder_url(&folder)
    }
    .set("storage.prefix", "docs/")
    .set("storage.settle_time", "1s")
    .set("sweep.orphan_action", "delete")
    .set("sweep.orphan_grace", "2s")
    .set("sweep.max_action_ratio", "1.0")
    .set("sweep.schedule", NO_SWEEP);

    // The app's own writes, timed.
    let app_options: sqlx::sqlite::SqliteConnectOptions =
        db.url().parse().expect("the database URL");
    let app = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(app_options.busy_timeout(APP_BUSY_TIMEOUT))
        .await
        .expect("the app's connection");
    sqlx::query("CREATE TABLE app_log (at TEXT)")
        .execute(&app)
        .await
        .expect("app table");
    let longest_wait = Arc::new(AtomicU64::new(0));
    let stop_app = Arc::new(AtomicBool::new(false));
    let app_task = {
        let (longest_wait, stop_app) = (longest_wait.clone(), stop_app.clone());
        tokio::spawn(async move {
            let (mut writes, mut locked_out) = (0u64, Vec::new());
            while !stop_app.load(Ordering::SeqCst) {
                let at = Instant::now();
                if let Err(e) = sqlx::query("INSERT INTO app_log VALUES (CURRENT_TIMESTAMP)")
                    .execute(&app)
                    .await
                {
                    locked_out.push(e.to_string());
                }
                let waited = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                longest_wait.fetch_max(waited, Ordering::SeqCst);
                writes += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (writes, locked_out)
        })
    };

    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon", "-v"], &log);
    daemon_address(&log).await;

    let mut world = World {
        db,
        folder,
        rng: fastrand::Rng::with_seed(seed),
        n: 0,
        reached: BTreeMap::new(),
        arrivals: Vec::new(),
        writers: Vec::new(),
        growing: BTreeMap::new(),
    };
    let mut ops: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut deleted = 0;
    for step in 0..steps {
        for _ in 0..world.rng.usize(1..4) {
            *ops.entry(world.step().await).or_default() += 1;
        }
        // Let some arrivals age past the grace, some not.
        tokio::time::sleep(Duration::from_millis(world.rng.u64(0..1500))).await;
        let run = reconcile.run(&["--format", "json"]).await;
        let ended = SystemTime::now();
        assert_eq!(
            run.code, 0,
            "step {step}: (d) {}\n{}",
            run.stdout, run.stderr
        );
        deleted += run
            .findings()
            .iter()
            .filter(|(kind, _, action)| kind == "orphan_object" && action == "delete")
            .count();
        world.check(ended, step, &run.stdout).await;
    }

    // The writers finish; their docs are then adopted whole, by the watcher or a sweep.
    for writer in std::mem::take(&mut world.writers) {
        writer.thread.join().expect("a writer");
        assert!(writer.done.load(Ordering::SeqCst), "{}", writer.id);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let run = reconcile.run(&["--format", "json"]).await;
    assert_eq!(run.code, 0, "the last sweep: {}", run.stderr);
    for id in world.growing.keys().map(|k| k.trim_start_matches("docs/")) {
        assert_eq!(
            world.db.status(id).await.as_deref(),
            Some("processed"),
            "{id} written whole"
        );
    }
    world.check(SystemTime::now(), steps, &run.stdout).await;

    stop_app.store(true, Ordering::SeqCst);
    let (writes, locked_out) = app_task.await.expect("the app task");
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)).await, 0);
    assert!(
        locked_out.is_empty(),
        "(e) {} of {writes} app INSERTs waited past their {APP_BUSY_TIMEOUT:?} busy timeout: {:?}",
        locked_out.len(),
        locked_out.first()
    );
    println!(
        "folder campaign: {steps} steps, operations {ops:?}, orphans deleted {deleted}, {} files \
         reached by records or links kept, {writes} app INSERTs, the longest waited {} ms, {:.1} s",
        world.reached.values().filter(|b| b.is_some()).count(),
        longest_wait.load(Ordering::SeqCst) / 1000,
        began.elapsed().as_secs_f64()
    );
}
