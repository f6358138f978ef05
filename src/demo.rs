//! `reconcile demo`: a first run that needs nothing but the binary. It builds a sandbox on the
//! embedded default (a SQLite database and a local folder as the bucket), seeded with one doc in
//! every failure mode at a realistic age, and leaves it in place so the user can run the real
//! commands on it afterwards.
//!
//! The demo only prepares the sandbox; the sweeps it shows are the ordinary ones, through the
//! ordinary config file, so what the user sees is exactly what `reconcile` does.

use crate::error::{Error, Result};
use chrono::{DateTime, Duration, Utc};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// The sandbox's config file, written next to its database and folder.
pub const CONFIG_FILE: &str = "reconcile.toml";

/// Where the docs' files live inside the folder bucket: quarantine needs a prefix.
const PREFIX: &str = "docs/";

/// One seeded doc: a record (or none) and a file (or none), each with its age.
struct Seed {
    id: &'static str,
    title: &'static str,
    /// The record's status and age; `None` for an orphan file.
    record: Option<(&'static str, Duration)>,
    /// The file's age; `None` when the upload never came or the file was deleted.
    file: Option<Duration>,
}

/// Every finding the sweep makes, once, plus what it must leave alone.
fn seeds() -> Vec<Seed> {
    let (min, hour, day) = (Duration::minutes, Duration::hours, Duration::days);
    vec![
        // pending past pending_ttl (1h), no file: stale_pending -> expire
        Seed {
            id: "invoice-2041.pdf",
            title: "upload never came",
            record: Some(("pending", hour(2))),
            file: None,
        },
        // pending, the file is there: the notification was lost -> adopt
        Seed {
            id: "contract-7.pdf",
            title: "event lost",
            record: Some(("pending", min(40))),
            file: Some(min(35)),
        },
        // expired, then a PUT that started in time finished -> late_upload -> adopt
        Seed {
            id: "scan 0012.png",
            title: "finished after expiry",
            record: Some(("expired", hour(3))),
            file: Some(hour(1)),
        },
        // uploaded yesterday, the file is gone -> missing_object -> mark_missing
        Seed {
            id: "avatar-ünï.jpg",
            title: "deleted behind our back",
            record: Some(("uploaded", day(1))),
            file: None,
        },
        // a file nobody owns, two days old -> orphan_object -> quarantine
        Seed {
            id: "tmp/unclaimed.bin",
            title: "",
            record: None,
            file: Some(day(2)),
        },
        // processed, file present: consistent, not reported
        Seed {
            id: "report-q3.pdf",
            title: "all good",
            record: Some(("processed", day(2))),
            file: Some(day(2)),
        },
        // pending for 5 minutes: the upload may still come -> in_grace
        Seed {
            id: "slides.key",
            title: "upload in progress",
            record: Some(("pending", min(5))),
            file: None,
        },
        // pending for 10 minutes: the upload may still come -> in_grace. (A file with no
        // record in grace cannot be seeded: a file's age is when it arrived, which no demo can
        // set back, so the sandbox judges its files at once; see `config_text`.)
        Seed {
            id: "draft.docx",
            title: "upload just started",
            record: Some(("pending", min(10))),
            file: None,
        },
    ]
}

/// Create the sandbox in `dir` (a new folder under the system's temporary folder when `None`)
/// and return its path. Refuses a folder that already holds anything: the demo never writes
/// over a user's files.
pub async fn create(dir: Option<PathBuf>, now: DateTime<Utc>) -> Result<PathBuf> {
    let dir = match dir {
        Some(dir) => {
            let taken = fs::read_dir(&dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
            if taken {
                return Err(Error::Usage(format!(
                    "{} is not empty: give `reconcile demo --dir` a new or empty folder",
                    dir.display()
                )));
            }
            fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            dir
        }
        None => tempfile::Builder::new()
            .prefix("reconcile-demo-")
            .tempdir()
            .map_err(|e| Error::io("creating the demo's folder", e))?
            .keep(),
    };
    let dir = dir.canonicalize().map_err(|e| io(&dir, e))?;
    let uploads = dir.join("uploads");
    fs::create_dir_all(uploads.join(PREFIX)).map_err(|e| io(&uploads, e))?;
    let database = dir.join("app.db");
    seed_database(&database, now).await?;
    for seed in seeds() {
        if let Some(age) = seed.file {
            write_file(&uploads.join(PREFIX).join(seed.id), seed.id, now - age)?;
        }
    }
    let config = dir.join(CONFIG_FILE);
    fs::write(&config, config_text(&database, &uploads)).map_err(|e| io(&config, e))?;
    Ok(dir)
}

/// The app's own database, as a small app would have made it: the reference table, times as
/// `CURRENT_TIMESTAMP` text.
async fn seed_database(path: &Path, now: DateTime<Utc>) -> Result<()> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let context = format!("creating the demo database {}", path.display());
    let mut db = SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| Error::database(&context, e))?;
    sqlx::query(
        "CREATE TABLE docs (
           id          TEXT PRIMARY KEY,
           title       TEXT NOT NULL DEFAULT '',
           status      TEXT NOT NULL DEFAULT 'pending',
           created_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
           updated_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
         )",
    )
    .execute(&mut db)
    .await
    .map_err(|e| Error::database(&context, e))?;
    for seed in seeds() {
        let Some((status, age)) = seed.record else {
            continue;
        };
        let created = (now - age).format("%Y-%m-%d %H:%M:%S").to_string();
        sqlx::query(
            "INSERT INTO docs (id, title, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
        )
        .bind(seed.id)
        .bind(seed.title)
        .bind(status)
        .bind(created)
        .execute(&mut db)
        .await
        .map_err(|e| Error::database(&context, e))?;
    }
    db.close().await.map_err(|e| Error::database(&context, e))
}

/// An uploaded file, its modification time set back to when it landed.
fn write_file(path: &Path, id: &str, landed: DateTime<Utc>) -> Result<()> {
    if let Some(folder) = path.parent() {
        fs::create_dir_all(folder).map_err(|e| io(folder, e))?;
    }
    fs::write(path, format!("the bytes of {id}\n")).map_err(|e| io(path, e))?;
    let file = File::options()
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    file.set_modified(landed.into()).map_err(|e| io(path, e))
}

fn config_text(database: &Path, uploads: &Path) -> String {
    // The paths are the sandbox's own (canonical, absolute); TOML basic strings escape `\` and `"`.
    let quote = |text: String| format!("{text:?}");
    format!(
        "# The sandbox of `reconcile demo`: a SQLite database and a local folder as the bucket.\n\
         # Try: {program} --config {config} --dry-run\n\n\
         [database]\nurl = {url}\n\n\
         [storage]\nbucket = {bucket}\nprefix = {PREFIX:?}\n\
         # The sandbox's files were all written just now: a file's age is the time it arrived\n\
         # (the later of its mtime, set back, and its ctime, which nothing sets back), so the\n\
         # demo judges them at once. Leave both settings out anywhere else.\n\
         settle_time = \"0s\"\n\n\
         [sweep]\norphan_action = \"quarantine\"\norphan_grace = \"0s\"\n",
        program = program(),
        config = shell_word(&database.with_file_name(CONFIG_FILE).display().to_string()),
        url = quote(format!("sqlite://{}", database.display())),
        bucket = quote(format!("file://{}", uploads.display())),
    )
}

/// How to run this very binary from a shell: `reconcile` when that is what the PATH finds,
/// else its full path (`cargo run` leaves it in `target/`, not on the PATH), so that the
/// commands the demo suggests run as printed.
pub fn program() -> String {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "reconcile".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .filter_map(|dir| dir.join("reconcile").canonicalize().ok())
            .next()
            .is_some_and(|found| found == me)
    });
    if on_path {
        "reconcile".into()
    } else {
        shell_word(&me.display().to_string())
    }
}

/// `word` as one shell word: as it is when it holds nothing a shell would read, else quoted.
pub fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What each kind of the report means, which seeded doc shows it, and where the orphan went.
pub fn legend(sandbox: &Path, quarantine_prefix: &str) -> String {
    let kinds = [
        (
            "stale_pending",
            "a record pending past sweep.pending_ttl (1h), no file: expired (invoice-2041.pdf)",
        ),
        (
            "lost_notification",
            "a pending record whose file is there, its event lost: adopted, processed (contract-7.pdf)",
        ),
        (
            "late_upload",
            "an expired record whose upload finished later: adopted (scan 0012.png)",
        ),
        (
            "orphan_object",
            "a file no record names, past sweep.orphan_grace (24h by default; 0s in this sandbox, whose files all arrived just now): quarantined here (tmp/unclaimed.bin)",
        ),
        (
            "missing_object",
            "an uploaded record whose file is gone: marked missing, never deleted (avatar-ünï.jpg)",
        ),
        (
            "stuck_processing",
            "uploaded, but its post-processing never finished: enqueued again",
        ),
        (
            "processing_exhausted",
            "post-processing gave up after processing.max_attempts: marked failed",
        ),
        (
            "abandoned_multipart",
            "an S3 multipart upload nobody completed: aborted (not on a folder)",
        ),
        (
            "object_returned",
            "a missing record whose file is back (put back, or its delete marker removed): adopted again",
        ),
        (
            "in_grace",
            "younger than its grace period: counted, never touched (slides.key and draft.docx, pending 5 and 10 minutes)",
        ),
    ];
    let mut text = String::from("\nWhat the kinds mean:\n");
    for (kind, meaning) in kinds {
        text.push_str(&format!("  {kind:<22}{meaning}\n"));
    }
    let orphan = sandbox
        .join("uploads")
        .join(quarantine_prefix)
        .join(PREFIX)
        .join("tmp/unclaimed.bin");
    // The one file under the orphan's quarantine folder: its name is the time and ETag.
    let copy = fs::read_dir(&orphan)
        .ok()
        .and_then(|mut entries| entries.next())
        .and_then(|entry| entry.ok())
        .map(|entry| entry.path());
    if let Some(copy) = copy {
        text.push_str(&format!(
            "\nThe orphan was quarantined to {}\n",
            copy.display()
        ));
    }
    text
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::io(path.display().to_string(), source)
}
