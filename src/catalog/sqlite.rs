//! The catalog on SQLite. The app's table is read through the same mapping as on Postgres; the
//! reconciler's own tables live in a file of their own beside the app's database
//! (`<app.db>.reconciler.db`), attached as `reconciler` on every connection, so the app's
//! database never changes shape. A dry run never creates that file.
//!
//! Locks: SQLite has one writer per database file. A write transaction of the app's table starts
//! with `BEGIN IMMEDIATE` (it takes the write lock up front, so two writers queue on the busy
//! timeout instead of failing on a lock upgrade); it locks the app's database, so it is kept short
//! and never spans a bucket change. One that writes only the reconciler's tables (audit rows,
//! intents, job claims, the sweep history and lock) is deferred and starts with a write: it locks
//! only the reconciler's file. The sweep reads the app's table in pages, each a short read: in
//! rollback-journal mode an open read keeps the app's writers from committing. Job claims are an
//! `UPDATE ... RETURNING`; the sweep lock is a row with an owner and an expiry that its holder
//! renews.

use super::{
    AuditEntry, Catalog, Intent, KeyEvent, PruneTarget, Pruned, Retention, Scope, SweepLock,
    SweepRecord, Transaction,
};
use crate::config::{DatabaseConfig, StatusWords};
use crate::error::{Error, Result};
use crate::model::{IdKind, Job, JobState, ObjectMeta, Record, Status};
use crate::redact;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{AssertSqlSafe, Row, Sqlite};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Duration;

/// How long a writer waits for another to finish before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The records of one page of the sweep's read of the app table, when the ids are text: each
/// page is a short read of its own (one look up the id's index), so a writer waits (in
/// rollback-journal mode) for one page at most.
const PAGE: usize = 1000;
/// The same when the ids are not text (integers): no index of the app's holds their text order,
/// so each page scans the table, however many rows it keeps; bigger pages, fewer scans. (100 000
/// integer ids: 10 scans.)
const SCANNED_PAGE: usize = 10_000;
/// How long a sweep lock lasts without renewal; its holder renews it three times as often.
const SWEEP_LOCK_LEASE: Duration = Duration::from_secs(30);

pub struct SqliteCatalog {
    pool: SqlitePool,
    /// The app's database file and the reconciler's beside it.
    app_path: PathBuf,
    side_path: PathBuf,
    table: String,
    scope_name: String,
    statuses: StatusWords,
    /// What the id column holds, from its declared type.
    id_kind: IdKind,
    /// Whether the reconciler's file exists (checked at connect, set by `migrate`). Shared with
    /// the pool's hooks: once it is true every connection handed out has the file attached.
    migrated: Arc<AtomicBool>,
    with_jobs: Statements,
    without_jobs: Statements,
}

/// The app-table statements, built once from quoted identifiers. Every parameter is numbered:
/// `?1` the id (or, for the pages, the page's size, or the last id of the page before and the
/// page's size), then the status word or the scope.
struct Statements {
    /// Records per page of the sweep's read.
    page_size: usize,
    first_page: String,
    next_page: String,
    select_one: String,
    update_status: String,
    insert: String,
    ids_with_status: String,
}

/// The file of the reconciler's tables for the app database at `app`: `<app>.reconciler.db`.
pub fn side_file(app: &Path) -> PathBuf {
    let mut name = app.as_os_str().to_owned();
    name.push(".reconciler.db");
    PathBuf::from(name)
}

/// The file a `sqlite://` URL names: `sqlite://app.db` (relative), `sqlite:///srv/app.db`.
pub fn path_of(url: &str) -> std::result::Result<PathBuf, String> {
    // Shown redacted, as every database URL: the options refused here may hold a password.
    let shown = || redact::url(url);
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| format!("{:?} is not a sqlite:// URL", shown()))?;
    if path.contains('?') {
        return Err(format!(
            "{:?} has URL options; give only the path of the database file",
            shown()
        ));
    }
    if path.is_empty() || path == ":memory:" {
        return Err(format!("{:?} names no database file", shown()));
    }
    Ok(PathBuf::from(path))
}

impl SqliteCatalog {
    /// Open the app's database (never creating it) and check that the table and its columns
    /// exist, so a typo in the mapping is an error naming the key now.
    pub async fn connect(config: &DatabaseConfig, scope: Scope) -> Result<Self> {
        let url = config.url.as_deref().unwrap_or_default();
        let app_path = path_of(url).map_err(|message| Error::config("database.url", message))?;
        // The app makes its database; a path that names none is a typo, not an outage.
        if let Err(e) = std::fs::metadata(&app_path)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            return Err(Error::config(
                "database.url",
                format!(
                    "the SQLite database {} does not exist (give the path of the app's database file)",
                    app_path.display()
                ),
            ));
        }
        let side_path = side_file(&app_path);
        let migrated = Arc::new(AtomicBool::new(side_path.exists()));
        // The app's journal mode is the app's call: only the connection's own settings here.
        let options = SqliteConnectOptions::new()
            .filename(&app_path)
            .create_if_missing(false)
            .busy_timeout(BUSY_TIMEOUT);
        let (on_connect, on_acquire) = (
            (migrated.clone(), side_path.clone()),
            (migrated.clone(), side_path.clone()),
        );
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(BUSY_TIMEOUT)
            .after_connect(move |conn, _| {
                let (wanted, side) = on_connect.clone();
                Box::pin(async move { attach_when_wanted(conn, &wanted, &side).await })
            })
            .before_acquire(move |conn, _| {
                let (wanted, side) = on_acquire.clone();
                Box::pin(async move {
                    attach_when_wanted(conn, &wanted, &side).await?;
                    Ok(true)
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| {
                Error::database(
                    format!("opening the SQLite database {}", app_path.display()),
                    e,
                )
            })?;
        check_encoding(&pool, &app_path).await?;
        if migrated.load(AtomicOrdering::SeqCst) {
            // A side file whose first migration did not finish holds no tables yet: read as
            // before any migration until `migrate` completes it.
            let jobs: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM reconciler.sqlite_master WHERE type = 'table' AND name = 'jobs'",
            )
            .fetch_one(&pool)
            .await
            .map_err(|e| Error::database(format!("reading {}", side_path.display()), e))?;
            migrated.store(jobs > 0, AtomicOrdering::SeqCst);
        }
        let table = config.table.quoted();
        let id_type = check_columns(&pool, config, &table).await?;
        Ok(SqliteCatalog {
            pool,
            app_path,
            side_path,
            scope_name: scope.name(),
            statuses: config.statuses.clone(),
            id_kind: id_kind(&id_type),
            migrated,
            with_jobs: Statements::build(config, &table, &id_type, true),
            without_jobs: Statements::build(config, &table, &id_type, false),
            table,
        })
    }

    /// One page of [`Catalog::records`]: up to `page_size` records after the id `after`, in byte
    /// order. Checked to come after it: a page that did not (an id stored as a blob in a TEXT
    /// column sorts after every text, and its text need not) would be read again and again.
    async fn page(&self, after: Option<&str>) -> Result<Vec<Record>> {
        let context = || format!("reading table {}", self.table);
        let sql = self.sql();
        let query = match after {
            None => sqlx::query(AssertSqlSafe(sql.first_page.as_str())).bind(sql.page_size as i64),
            Some(after) => sqlx::query(AssertSqlSafe(sql.next_page.as_str()))
                .bind(after)
                .bind(sql.page_size as i64),
        };
        let query = if self.migrated() {
            query.bind(&self.scope_name)
        } else {
            query
        };
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::database(context(), e))?;
        let page = rows
            .iter()
            .map(|row| self.record_from(row))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::database(context(), e))?;
        let mut before = after;
        for record in &page {
            if before.is_some_and(|b| b.as_bytes() >= record.id.as_bytes()) {
                return Err(Error::database(
                    context(),
                    sqlx::Error::Protocol(format!(
                        "the ids did not come in byte order: {:?} came after {:?} (is an id \
                         stored as a blob?)",
                        record.id,
                        before.unwrap_or_default()
                    )),
                ));
            }
            before = Some(&record.id);
        }
        Ok(page)
    }

    fn migrated(&self) -> bool {
        self.migrated.load(AtomicOrdering::SeqCst)
    }

    fn sql(&self) -> &Statements {
        if self.migrated() {
            &self.with_jobs
        } else {
            &self.without_jobs
        }
    }

    /// A write transaction: `BEGIN IMMEDIATE` takes the write lock now, so a second writer waits
    /// (busy timeout) rather than failing later when a read lock would have to be upgraded.
    async fn begin_immediate(&self, context: &str) -> Result<sqlx::Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| Error::database(context.to_owned(), e))
    }

    /// A write transaction of the reconciler's own tables only: deferred, so it locks only the
    /// reconciler's file when it first writes, never the app's database (`BEGIN IMMEDIATE` locks
    /// every attached file), and the app's writers never wait on its commit. Its first statement
    /// must write, so that the write lock is waited for on the busy timeout, not refused.
    async fn begin_own_tx(&self, context: &str) -> Result<sqlx::Transaction<'static, Sqlite>> {
        self.pool
            .begin()
            .await
            .map_err(|e| Error::database(context.to_owned(), e))
    }

    fn record_from(&self, row: &SqliteRow) -> std::result::Result<Record, sqlx::Error> {
        let raw_status: Option<String> = row.try_get("status")?;
        let raw_status = raw_status.unwrap_or_default();
        let created_at = app_time(row, "created_at")?;
        let job: Option<String> = row.try_get("job_state")?;
        Ok(Record {
            id: row.try_get("id")?,
            status: self.statuses.status(&raw_status),
            raw_status,
            // A creation time that cannot be read cannot be judged old: it stays in grace.
            created_at: created_at.unwrap_or(DateTime::<Utc>::MAX_UTC),
            updated_at: app_time(row, "updated_at")?,
            job: job.as_deref().and_then(JobState::parse),
        })
    }

    /// Delete this scope's rows of `table` where `older` is before `cutoff`, in batches, each its
    /// own short write transaction so that the app's writers are never kept waiting long.
    async fn prune_table(&self, target: &PruneTarget) -> Result<u64> {
        const BATCH: i64 = 1000;
        let PruneTarget {
            table,
            older,
            cutoff,
        } = *target;
        let sql = format!(
            "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} \
             WHERE scope = ?1 AND {older} < ?2 LIMIT ?3)"
        );
        let mut deleted = 0;
        loop {
            let done = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(&self.scope_name)
                .bind(stamp(cutoff))
                .bind(BATCH)
                .execute(&self.pool)
                .await
                .map_err(|e| Error::database(format!("pruning {table}"), e))?;
            deleted += done.rows_affected();
            if done.rows_affected() < BATCH as u64 {
                return Ok(deleted);
            }
        }
    }
}

/// Attach the reconciler's file as `reconciler` on a connection that lacks it, once the file is
/// wanted (it exists, or `migrate` is making it). Connections opened before that are caught up
/// when next handed out.
async fn attach_when_wanted(
    conn: &mut SqliteConnection,
    wanted: &AtomicBool,
    side: &Path,
) -> std::result::Result<(), sqlx::Error> {
    if !wanted.load(AtomicOrdering::SeqCst) {
        return Ok(());
    }
    let attached: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pragma_database_list WHERE name = 'reconciler'")
            .fetch_one(&mut *conn)
            .await?;
    if attached == 0 {
        sqlx::query("ATTACH DATABASE ?1 AS reconciler")
            .bind(side.to_string_lossy().into_owned())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// BINARY compares the bytes of the database's text encoding: only in UTF-8 is that S3's order.
async fn check_encoding(pool: &SqlitePool, app_path: &Path) -> Result<()> {
    let encoding: String = sqlx::query_scalar("PRAGMA encoding")
        .fetch_one(pool)
        .await
        .map_err(|e| Error::database(format!("reading {}", app_path.display()), e))?;
    if encoding != "UTF-8" {
        return Err(Error::config(
            "database.url",
            format!(
                "{} stores text as {encoding}: its ids would not sort in the UTF-8 byte order \
                 of the bucket's keys (only UTF-8 SQLite databases are supported)",
                app_path.display()
            ),
        ));
    }
    Ok(())
}

/// Check that the mapped columns exist; the declared type of the id column.
async fn check_columns(pool: &SqlitePool, config: &DatabaseConfig, table: &str) -> Result<String> {
    let schema = config
        .table
        .schema
        .as_ref()
        .map_or("main", |schema| schema.as_str());
    let columns: Vec<(String, String)> =
        sqlx::query_as("SELECT name, type FROM pragma_table_info(?1, ?2)")
            .bind(config.table.name.as_str())
            .bind(schema)
            .fetch_all(pool)
            .await
            .map_err(|e| Error::database(format!("reading the columns of table {table}"), e))?;
    if columns.is_empty() {
        return Err(Error::config(
            "database.table",
            format!("table {table} does not exist in the SQLite database"),
        ));
    }
    let find = |key: &str, column: &str| -> Result<()> {
        if columns.iter().any(|(name, _)| name == column) {
            Ok(())
        } else {
            Err(Error::config(
                key,
                format!("table {table} has no column {column:?}"),
            ))
        }
    };
    find("database.id_column", config.id_column.as_str())?;
    find("database.status_column", config.status_column.as_str())?;
    find(
        "database.created_at_column",
        config.created_at_column.as_str(),
    )?;
    if let Some(updated_at) = &config.updated_at_column {
        find("database.updated_at_column", updated_at.as_str())?;
    }
    Ok(columns
        .into_iter()
        .find(|(name, _)| name == config.id_column.as_str())
        .map(|(_, declared)| declared)
        .unwrap_or_default())
}

/// Which texts can be ids of a column declared `declared`: INTEGER affinity (an `INTEGER PRIMARY
/// KEY` holds nothing else, and any other integer column turns `042` into 42) takes integers in
/// their canonical text; the others keep text as written.
fn id_kind(declared: &str) -> IdKind {
    if declared.to_ascii_uppercase().contains("INT") {
        IdKind::Integer {
            min: i64::MIN,
            max: i64::MAX,
        }
    } else {
        IdKind::Text
    }
}

/// Whether a column declared `declared` has TEXT affinity (SQLite's rules, in their order: INT
/// first, then CHAR, CLOB or TEXT): every value stored in it is text, a blob or NULL.
fn text_affinity(declared: &str) -> bool {
    let declared = declared.to_ascii_uppercase();
    !declared.contains("INT")
        && ["CHAR", "CLOB", "TEXT"]
            .iter()
            .any(|t| declared.contains(t))
}

impl Statements {
    fn build(config: &DatabaseConfig, table: &str, id_type: &str, with_jobs: bool) -> Self {
        let bare_id = config.id_column.quoted();
        let id = format!("t.{bare_id}");
        let status = config.status_column.quoted();
        let created_at = format!("t.{}", config.created_at_column.quoted());
        let updated_at = config
            .updated_at_column
            .as_ref()
            .map(|c| format!("t.{}", c.quoted()));
        let updated_columns = match &updated_at {
            Some(u) => format!("typeof({u}) AS updated_at_type, CAST({u} AS TEXT) AS updated_at"),
            None => "'null' AS updated_at_type, NULL AS updated_at".to_owned(),
        };
        // Only this deployment's jobs: the scope is the statement's parameter `?{scope_param}`.
        let from = |scope_param: u8| {
            if with_jobs {
                format!(
                    "{table} t LEFT JOIN reconciler.jobs j \
                     ON j.scope = ?{scope_param} AND j.doc_id = CAST({id} AS TEXT)"
                )
            } else {
                format!("{table} t")
            }
        };
        let job_state = if with_jobs { "j.state" } else { "NULL" };
        let order_key = if text_affinity(id_type) {
            id.clone()
        } else {
            format!("CAST({id} AS TEXT)")
        };
        // The stored type of each time comes along: an app may write text, or Unix seconds.
        let columns = format!(
            "CAST({id} AS TEXT) AS id, CAST(t.{status} AS TEXT) AS status, \
             typeof({created_at}) AS created_at_type, CAST({created_at} AS TEXT) AS created_at, \
             {updated_columns}, {job_state} AS job_state"
        );
        // `id = ?1` lets an integer id column use its index (the text converts to the column's
        // affinity); the text comparison then refuses spellings like `042` that convert too.
        let by_id = |id: &str| format!("{id} = ?1 AND CAST({id} AS TEXT) = ?1");
        // A status change also touches updated_at, in the form the row already uses.
        let touch = config
            .updated_at_column
            .as_ref()
            .map(|c| {
                let c = c.quoted();
                format!(
                    ", {c} = CASE typeof({c}) \
                     WHEN 'integer' THEN CAST(strftime('%s', 'now') AS INTEGER) \
                     WHEN 'real' THEN (julianday('now') - 2440587.5) * 86400.0 \
                     WHEN 'text' THEN CASE WHEN instr({c}, 'T') > 0 \
                       THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') ELSE CURRENT_TIMESTAMP END \
                     ELSE CURRENT_TIMESTAMP END"
                )
            })
            .unwrap_or_default();
        Statements {
            page_size: if text_affinity(id_type) {
                PAGE
            } else {
                SCANNED_PAGE
            },
            // Records come in UTF-8 byte order, as S3 lists keys: BINARY compares the bytes,
            // whatever collation the column was declared with. They come in pages, each its own
            // short read: in rollback-journal mode a read keeps every writer from committing
            // while its statement is open. The next page starts after the last id of the one
            // before (keyset pagination), so each page is one look up an index when the ids
            // are text (a TEXT column's own values, BINARY as its primary key's index is unless
            // declared otherwise). Other ids are ordered as their text, which no index of the
            // app's holds: each page then scans the table.
            first_page: format!(
                "SELECT {columns} FROM {} ORDER BY {order_key} COLLATE BINARY LIMIT ?1",
                from(2)
            ),
            next_page: format!(
                "SELECT {columns} FROM {} WHERE {order_key} > ?1 COLLATE BINARY \
                 ORDER BY {order_key} COLLATE BINARY LIMIT ?2",
                from(3)
            ),
            select_one: format!("SELECT {columns} FROM {} WHERE {}", from(2), by_id(&id)),
            update_status: format!(
                "UPDATE {table} SET {status} = ?2{touch} WHERE {}",
                by_id(&bare_id)
            ),
            // Only id and status: every other column keeps the app's default.
            insert: format!(
                "INSERT INTO {table} ({bare_id}, {status}) VALUES (?1, ?2) ON CONFLICT DO NOTHING"
            ),
            ids_with_status: format!(
                "SELECT CAST({bare_id} AS TEXT) FROM {table} WHERE CAST({status} AS TEXT) = ?1 \
                 ORDER BY 1 COLLATE BINARY"
            ),
        }
    }
}

/// A time of the app's table, as its stored type and its text.
fn app_time(
    row: &SqliteRow,
    column: &str,
) -> std::result::Result<Option<DateTime<Utc>>, sqlx::Error> {
    let kind: Option<String> = row.try_get(format!("{column}_type").as_str())?;
    let text: Option<String> = row.try_get(column)?;
    Ok(parse_timestamp(
        kind.as_deref().unwrap_or("null"),
        text.as_deref(),
    ))
}

/// A time as SQLite apps store it, from its stored type (`typeof()`) and its text:
/// `CURRENT_TIMESTAMP` text (`2026-11-25 10:00:00`, UTC), ISO-8601 with `T` or a space, with or
/// without fractional seconds, with `Z`, an offset or no zone (UTC, as SQLite's own functions
/// read it), a bare date, or Unix seconds (integer or real, or their text of 10+ digits). `None`
/// when it is none of these: the caller treats such a time as unknown.
pub fn parse_timestamp(kind: &str, text: Option<&str>) -> Option<DateTime<Utc>> {
    let text = text?.trim();
    match kind {
        "integer" | "real" => unix_seconds(text),
        // Unix seconds as text only with ten digits or more (any time since 2001): a shorter
        // number is as likely a compact date (`20261125`), and misread it would look old.
        "text"
            if text.split('.').next().is_some_and(|whole| {
                whole.len() >= 10 && whole.bytes().all(|b| b.is_ascii_digit())
            }) =>
        {
            unix_seconds(text)
        }
        "text" => text_time(text),
        _ => None,
    }
}

fn unix_seconds(text: &str) -> Option<DateTime<Utc>> {
    let seconds: f64 = text.parse().ok()?;
    if !seconds.is_finite() {
        return None;
    }
    let whole = seconds.floor();
    // Nanoseconds rounded to microseconds: a float's last digits are noise.
    let micros = ((seconds - whole) * 1e6).round() as u32;
    if whole < i64::MIN as f64 || whole > i64::MAX as f64 {
        return None;
    }
    Utc.timestamp_opt(whole as i64, micros.min(999_999) * 1000)
        .single()
}

fn text_time(text: &str) -> Option<DateTime<Utc>> {
    const NAIVE: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    const ZONED: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ];
    let naive = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix('z'))
        .unwrap_or(text);
    if let Some(time) = NAIVE
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(naive, f).ok())
    {
        return Some(time.and_utc());
    }
    if let Some(time) = ZONED
        .iter()
        .find_map(|f| DateTime::parse_from_str(text, f).ok())
    {
        return Some(time.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// How the reconciler's tables store a time: UTC text of one fixed width, so that comparing the
/// text compares the times.
fn stamp(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A time of the reconciler's own tables.
fn own_time(
    row: &SqliteRow,
    column: &str,
) -> std::result::Result<Option<DateTime<Utc>>, sqlx::Error> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| {
        parse_timestamp("text", Some(&text)).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: column.into(),
            source: format!("unreadable time {text:?}").into(),
        })
    })
    .transpose()
}

#[async_trait::async_trait]
impl Catalog for SqliteCatalog {
    fn records(&self) -> BoxStream<'_, Result<Record>> {
        // `None` before the first page, then the last id read; done once a page comes short.
        let start: Option<Option<String>> = Some(None);
        stream::try_unfold(start, move |after| async move {
            let Some(after) = after else {
                return Ok::<_, Error>(None);
            };
            let page = self.page(after.as_deref()).await?;
            let next = match page.last() {
                Some(last) if page.len() == self.sql().page_size => Some(Some(last.id.clone())),
                _ => None,
            };
            Ok(Some((page, next)))
        })
        .map_ok(|page| stream::iter(page.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    async fn record(&self, id: &str) -> Result<Option<Record>> {
        let context = || format!("reading {id:?} from {}", self.table);
        let query = sqlx::query(AssertSqlSafe(self.sql().select_one.as_str())).bind(id);
        let query = if self.migrated() {
            query.bind(&self.scope_name)
        } else {
            query
        };
        let row = query
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::database(context(), e))?;
        row.map(|row| self.record_from(&row))
            .transpose()
            .map_err(|e| Error::database(context(), e))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>> {
        let tx = self.begin_immediate("starting a transaction").await?;
        Ok(Box::new(SqliteTransaction { catalog: self, tx }))
    }

    async fn begin_own(&self) -> Result<Box<dyn Transaction + '_>> {
        let tx = self
            .begin_own_tx("starting a transaction of the reconciler's tables")
            .await?;
        Ok(Box::new(SqliteTransaction { catalog: self, tx }))
    }

    async fn migrate(&self) -> Result<()> {
        let context = format!(
            "creating the reconciler's tables in {}",
            self.side_path.display()
        );
        // The migrations run on the reconciler's file as its main database: sqlx's bookkeeping
        // table lands there too, and the Postgres migrations stay as they are.
        let options = SqliteConnectOptions::new()
            .filename(&self.side_path)
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT);
        // A pool of one, not a bare connection: the migrator's future is then `Send`.
        let side = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| Error::database(context.clone(), e))?;
        let migrated = sqlx::migrate!("./migrations/sqlite").run(&side).await;
        side.close().await;
        migrated?;
        self.migrated.store(true, AtomicOrdering::SeqCst);
        Ok(())
    }

    async fn sweep_started(&self, sweep: &SweepRecord) -> Result<()> {
        let context = "recording the sweep in reconciler.sweeps";
        let mut tx = self.begin_own_tx(context).await?;
        // Under the sweep lock no other sweep of this scope runs: a `running` row is a dead
        // process's.
        let interrupted = sqlx::query(
            "UPDATE reconciler.sweeps SET outcome = 'interrupted', finished_at = ?2, \
             error = 'the process running this sweep ended before it finished' \
             WHERE scope = ?1 AND outcome = 'running'",
        )
        .bind(&self.scope_name)
        .bind(stamp(sweep.started_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::database(context, e))?;
        sqlx::query(
            "INSERT INTO reconciler.sweeps (id, started_at, bucket, prefix, scope) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(sweep.id.to_string())
        .bind(stamp(sweep.started_at))
        .bind(&sweep.bucket)
        .bind(&sweep.prefix)
        .bind(&self.scope_name)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::database(context, e))?;
        tx.commit().await.map_err(|e| Error::database(context, e))?;
        if interrupted.rows_affected() > 0 {
            tracing::warn!(
                sweeps = interrupted.rows_affected(),
                "closed sweeps left running by a process that ended as interrupted"
            );
        }
        Ok(())
    }

    async fn sweep_finished(&self, sweep: &SweepRecord) -> Result<()> {
        sqlx::query(
            "UPDATE reconciler.sweeps SET finished_at = ?2, objects_listed = ?3, \
             records_scanned = ?4, counts = ?5, outcome = ?6, error = ?7 \
             WHERE id = ?1 AND scope = ?8",
        )
        .bind(sweep.id.to_string())
        .bind(sweep.finished_at.map(stamp))
        .bind(i64::try_from(sweep.objects_listed).unwrap_or(i64::MAX))
        .bind(i64::try_from(sweep.records_scanned).unwrap_or(i64::MAX))
        .bind(sweep.counts.to_string())
        .bind(sweep.outcome)
        .bind(sweep.error.as_deref().map(redact::text))
        .bind(&self.scope_name)
        .execute(&self.pool)
        .await
        .map_err(|e| Error::database("recording the sweep in reconciler.sweeps", e))?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| Error::database(format!("reading {}", self.app_path.display()), e))?;
        Ok(())
    }

    async fn try_sweep_lock(&self) -> Result<Option<Box<dyn SweepLock>>> {
        // The lock is a row of the reconciler's file. A dry run (`daemon --dry-run`) takes it
        // too, and must not create that file: without it nothing was ever applied here, and a
        // sweep that applies creates it (`migrate`) before its first write. Until then there is
        // nothing to exclude, save two first-ever applying runs started together (README).
        if !self.migrated() {
            if !self.side_path.exists() {
                return Ok(Some(Box::new(NoSweepLockYet)));
            }
            // Made by another process since this one connected.
            self.migrate().await?;
        }
        let context = "taking the sweep lock in reconciler.locks";
        let owner = uuid::Uuid::new_v4().to_string();
        let now = Utc::now();
        let mut tx = self.begin_own_tx(context).await?;
        // A lock past its expiry was left by a holder that died.
        sqlx::query("DELETE FROM reconciler.locks WHERE name = ?1 AND expires_at <= ?2")
            .bind(&self.scope_name)
            .bind(stamp(now))
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::database(context, e))?;
        let taken = sqlx::query(
            "INSERT INTO reconciler.locks (name, owner, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&self.scope_name)
        .bind(&owner)
        .bind(stamp(now + lease(SWEEP_LOCK_LEASE)))
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::database(context, e))?;
        tx.commit().await.map_err(|e| Error::database(context, e))?;
        if taken.rows_affected() == 0 {
            return Ok(None);
        }
        let renewal = tokio::spawn(renew_sweep_lock(
            self.pool.clone(),
            self.scope_name.clone(),
            owner.clone(),
        ));
        Ok(Some(Box::new(SqliteSweepLock {
            pool: self.pool.clone(),
            name: self.scope_name.clone(),
            owner,
            renewal,
        })))
    }

    async fn claim_job(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease_for: Duration,
    ) -> Result<Option<Job>> {
        let context = "claiming a job in reconciler.jobs";
        // One writer at a time is SQLite's `FOR UPDATE SKIP LOCKED`: inside the immediate
        // transaction no other claim runs, so no two workers get the same job. The attempt
        // counts now, not when its result is written.
        let mut tx = self.begin_own_tx(context).await?;
        let row = sqlx::query(
            "UPDATE reconciler.jobs SET state = 'running', leased_by = ?1, lease_until = ?3, \
             attempts = attempts + 1, updated_at = ?2 \
             WHERE scope = ?4 AND doc_id = (SELECT doc_id FROM reconciler.jobs \
                 WHERE scope = ?4 AND ((state = 'queued' AND next_attempt_at <= ?2) \
                    OR (state = 'running' AND lease_until <= ?2)) \
                 ORDER BY next_attempt_at LIMIT 1) \
             RETURNING *",
        )
        .bind(worker)
        .bind(stamp(now))
        .bind(stamp(now + lease(lease_for)))
        .bind(&self.scope_name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| Error::database(context, e))?;
        tx.commit().await.map_err(|e| Error::database(context, e))?;
        row.map(|row| job_from(&row))
            .transpose()
            .map_err(|e| Error::database("reading reconciler.jobs", e))
    }

    async fn job(&self, id: &str) -> Result<Option<Job>> {
        if !self.migrated() {
            return Ok(None);
        }
        let row = sqlx::query("SELECT * FROM reconciler.jobs WHERE scope = ?1 AND doc_id = ?2")
            .bind(&self.scope_name)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::database(format!("reading the job of {id:?}"), e))?;
        row.map(|row| job_from(&row))
            .transpose()
            .map_err(|e| Error::database("reading reconciler.jobs", e))
    }

    async fn queue_depth(&self) -> Result<u64> {
        if !self.migrated() {
            return Ok(0);
        }
        let depth: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reconciler.jobs \
             WHERE scope = ?1 AND state IN ('queued', 'running')",
        )
        .bind(&self.scope_name)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| Error::database("counting reconciler.jobs", e))?;
        Ok(u64::try_from(depth).unwrap_or(0))
    }

    fn id_kind(&self) -> IdKind {
        self.id_kind
    }

    async fn ids_with_status(&self, status: Status) -> Result<Vec<String>> {
        sqlx::query_scalar(AssertSqlSafe(self.sql().ids_with_status.as_str()))
            .bind(self.statuses.word(status))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::database(format!("listing {status} docs in {}", self.table), e))
    }

    async fn prune(&self, retention: &Retention, now: DateTime<Utc>) -> Result<Pruned> {
        if !self.migrated() {
            return Ok(Pruned::default());
        }
        let [jobs, key_events, objects] = retention.targets(now);
        Ok(Pruned {
            finished_jobs: self.prune_table(&jobs).await?,
            key_events: self.prune_table(&key_events).await?,
            objects: self.prune_table(&objects).await?,
        })
    }

    async fn noted_object(&self, key: &str) -> Result<Option<ObjectMeta>> {
        if !self.migrated() {
            return Ok(None);
        }
        noted_object(&self.pool, &self.scope_name, key).await
    }

    async fn audit_trail(&self, id: &str, key: &str) -> Result<Option<Vec<AuditEntry>>> {
        if !self.migrated() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT at, sweep_id, finding, action, doc_id, key, old_status, new_status, detail \
             FROM reconciler.audit_log WHERE scope = ?3 AND (doc_id = ?1 OR key = ?2) \
             ORDER BY seq",
        )
        .bind(id)
        .bind(key)
        .bind(&self.scope_name)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::database("reading reconciler.audit_log", e))?;
        rows.iter()
            .map(|row| {
                let sweep_id: Option<String> = row.try_get("sweep_id")?;
                Ok(AuditEntry {
                    at: own_time(row, "at")?.unwrap_or_default(),
                    sweep_id: sweep_id
                        .map(|s| uuid::Uuid::try_parse(&s))
                        .transpose()
                        .map_err(|e| sqlx::Error::ColumnDecode {
                            index: "sweep_id".into(),
                            source: e.into(),
                        })?,
                    finding: row.try_get("finding")?,
                    action: row.try_get("action")?,
                    doc_id: row.try_get("doc_id")?,
                    key: row.try_get("key")?,
                    old_status: row.try_get("old_status")?,
                    new_status: row.try_get("new_status")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map(Some)
            .map_err(|e| Error::database("reading reconciler.audit_log", e))
    }

    async fn note_intent(&self, intent: &Intent) -> Result<()> {
        let context = format!("noting the intent for {:?}", intent.key());
        let json = intent
            .to_json()
            .map_err(|e| Error::database(context.clone(), e))?;
        let mut tx = self.begin_own_tx(&context).await?;
        sqlx::query(
            "INSERT INTO reconciler.intents (scope, id, key, intent, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&self.scope_name)
        .bind(&intent.id)
        .bind(intent.key())
        .bind(json)
        .bind(stamp(Utc::now()))
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::database(context.clone(), e))?;
        tx.commit()
            .await
            .map_err(|e| Error::database(context.clone(), e))
    }

    async fn intents(&self) -> Result<Vec<Intent>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, intent FROM reconciler.intents WHERE scope = ?1 \
             ORDER BY key, created_at, id",
        )
        .bind(&self.scope_name)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::database("reading reconciler.intents", e))?;
        Intent::from_json(&rows)
    }
}

fn lease(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

struct SqliteTransaction<'c> {
    catalog: &'c SqliteCatalog,
    tx: sqlx::Transaction<'static, Sqlite>,
}

#[async_trait::async_trait]
impl Transaction for SqliteTransaction<'_> {
    async fn lock_record(&mut self, id: &str) -> Result<Option<Record>> {
        // The immediate transaction holds the database's write lock: reading the row in it is
        // `FOR UPDATE`.
        let context = || format!("locking {id:?} in {}", self.catalog.table);
        let query = sqlx::query(AssertSqlSafe(self.catalog.sql().select_one.as_str())).bind(id);
        let query = if self.catalog.migrated() {
            query.bind(&self.catalog.scope_name)
        } else {
            query
        };
        let row = query
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(|e| Error::database(context(), e))?;
        row.map(|row| self.catalog.record_from(&row))
            .transpose()
            .map_err(|e| Error::database(context(), e))
    }

    async fn set_status(&mut self, id: &str, status: Status) -> Result<()> {
        sqlx::query(AssertSqlSafe(self.catalog.sql().update_status.as_str()))
            .bind(id)
            .bind(self.catalog.statuses.word(status))
            .execute(&mut *self.tx)
            .await
            .map_err(|e| {
                Error::database(
                    format!("setting {id:?} to {status} in {}", self.catalog.table),
                    e,
                )
            })?;
        Ok(())
    }

    async fn create_record(&mut self, id: &str, status: Status) -> Result<bool> {
        let done = sqlx::query(AssertSqlSafe(self.catalog.sql().insert.as_str()))
            .bind(id)
            .bind(self.catalog.statuses.word(status))
            .execute(&mut *self.tx)
            .await
            .map_err(|e| {
                Error::database(format!("creating {id:?} in {}", self.catalog.table), e)
            })?;
        Ok(done.rows_affected() == 1)
    }

    async fn noted_object(&mut self, key: &str) -> Result<Option<ObjectMeta>> {
        if !self.catalog.migrated() {
            return Ok(None);
        }
        noted_object(&mut *self.tx, &self.catalog.scope_name, key).await
    }

    async fn note_object(&mut self, object: &ObjectMeta) -> Result<()> {
        sqlx::query(
            "INSERT INTO reconciler.objects (scope, key, size, etag, last_modified, noted_at) \
             VALUES (?5, ?1, ?2, ?3, ?4, ?6) ON CONFLICT (scope, key) DO UPDATE \
             SET size = excluded.size, etag = excluded.etag, \
             last_modified = excluded.last_modified, noted_at = excluded.noted_at",
        )
        .bind(&object.key)
        .bind(object.size)
        .bind(&object.etag)
        .bind(stamp(object.last_modified))
        .bind(&self.catalog.scope_name)
        .bind(stamp(Utc::now()))
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::database("writing reconciler.objects", e))?;
        Ok(())
    }

    async fn audit(&mut self, entry: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO reconciler.audit_log \
             (at, sweep_id, finding, action, doc_id, key, old_status, new_status, detail, scope) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(stamp(entry.at))
        .bind(entry.sweep_id.map(|id| id.to_string()))
        .bind(&entry.finding)
        .bind(&entry.action)
        .bind(&entry.doc_id)
        .bind(&entry.key)
        .bind(&entry.old_status)
        .bind(&entry.new_status)
        .bind(redact::text(&entry.detail))
        .bind(&self.catalog.scope_name)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::database("writing reconciler.audit_log", e))?;
        Ok(())
    }

    async fn enqueue_job(
        &mut self,
        id: &str,
        key: &str,
        object: Option<&ObjectMeta>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO reconciler.jobs \
             (scope, doc_id, key, state, attempts, next_attempt_at, size, etag, created_at, updated_at) \
             VALUES (?6, ?1, ?2, 'queued', 0, ?3, ?4, ?5, ?7, ?7) \
             ON CONFLICT (scope, doc_id) DO UPDATE SET key = excluded.key, state = 'queued', \
             attempts = 0, next_attempt_at = excluded.next_attempt_at, lease_until = NULL, \
             leased_by = NULL, last_error = NULL, size = excluded.size, etag = excluded.etag, \
             updated_at = excluded.updated_at",
        )
        .bind(id)
        .bind(key)
        .bind(stamp(now))
        .bind(object.map(|o| o.size))
        .bind(object.and_then(|o| o.etag.clone()))
        .bind(&self.catalog.scope_name)
        .bind(stamp(Utc::now()))
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::database(format!("queueing processing of {id:?}"), e))?;
        Ok(())
    }

    async fn lock_job(&mut self, id: &str) -> Result<Option<Job>> {
        let row = sqlx::query("SELECT * FROM reconciler.jobs WHERE scope = ?1 AND doc_id = ?2")
            .bind(&self.catalog.scope_name)
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(|e| Error::database(format!("locking the job of {id:?}"), e))?;
        row.map(|row| job_from(&row))
            .transpose()
            .map_err(|e| Error::database("reading reconciler.jobs", e))
    }

    async fn save_job(&mut self, job: &Job) -> Result<()> {
        sqlx::query(
            "UPDATE reconciler.jobs SET state = ?2, attempts = ?3, next_attempt_at = ?4, \
             lease_until = ?5, leased_by = ?6, last_error = ?7, updated_at = ?9 \
             WHERE scope = ?8 AND doc_id = ?1",
        )
        .bind(&job.doc_id)
        .bind(job.state.as_str())
        .bind(i64::from(job.attempts))
        .bind(stamp(job.next_attempt_at))
        .bind(job.lease_until.map(stamp))
        .bind(&job.leased_by)
        .bind(job.last_error.as_deref().map(redact::text))
        .bind(&self.catalog.scope_name)
        .bind(stamp(Utc::now()))
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::database(format!("writing the job of {:?}", job.doc_id), e))?;
        Ok(())
    }

    async fn lock_key_events(&mut self, key: &str) -> Result<Option<String>> {
        // The write lock of the immediate transaction already serializes events; the upsert
        // only makes sure the row exists.
        sqlx::query_scalar(
            "INSERT INTO reconciler.key_events (scope, key, updated_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (scope, key) DO UPDATE SET key = excluded.key RETURNING sequencer",
        )
        .bind(&self.catalog.scope_name)
        .bind(key)
        .bind(stamp(Utc::now()))
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| {
            Error::database(
                format!("locking the event state of {key:?} in reconciler.key_events"),
                e,
            )
        })
    }

    async fn store_key_event(&mut self, event: &KeyEvent) -> Result<()> {
        sqlx::query(
            "UPDATE reconciler.key_events SET sequencer = COALESCE(?2, sequencer), kind = ?3, \
             event_time = ?4, updated_at = ?6 WHERE scope = ?5 AND key = ?1",
        )
        .bind(&event.key)
        .bind(&event.sequencer)
        .bind(event.kind)
        .bind(event.time.map(stamp))
        .bind(&self.catalog.scope_name)
        .bind(stamp(Utc::now()))
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::database("writing reconciler.key_events", e))?;
        Ok(())
    }

    async fn clear_intent(&mut self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM reconciler.intents WHERE scope = ?1 AND id = ?2")
            .bind(&self.catalog.scope_name)
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::database(format!("clearing the intent {id:?}"), e))?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx
            .commit()
            .await
            .map_err(|e| Error::database("committing", e))
    }
}

fn job_from(row: &SqliteRow) -> std::result::Result<Job, sqlx::Error> {
    let state: String = row.try_get("state")?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(Job {
        doc_id: row.try_get("doc_id")?,
        key: row.try_get("key")?,
        state: JobState::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown job state {state:?}").into(),
        })?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_at: own_time(row, "next_attempt_at")?.unwrap_or_default(),
        lease_until: own_time(row, "lease_until")?,
        leased_by: row.try_get("leased_by")?,
        last_error: row.try_get("last_error")?,
        size: row.try_get("size")?,
        etag: row.try_get("etag")?,
    })
}

/// Keep a held sweep lock from expiring while its sweep runs.
async fn renew_sweep_lock(pool: SqlitePool, name: String, owner: String) {
    let mut tick = tokio::time::interval(SWEEP_LOCK_LEASE / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let renewed = sqlx::query(
            "UPDATE reconciler.locks SET expires_at = ?3 WHERE name = ?1 AND owner = ?2",
        )
        .bind(&name)
        .bind(&owner)
        .bind(stamp(Utc::now() + lease(SWEEP_LOCK_LEASE)))
        .execute(&pool)
        .await;
        if let Err(e) = renewed {
            tracing::warn!(error = %e, lock = %name, "could not renew the sweep lock");
        }
    }
}

/// The sweep lock before the reconciler's file exists: nothing to hold.
struct NoSweepLockYet;

#[async_trait::async_trait]
impl SweepLock for NoSweepLockYet {
    async fn release(self: Box<Self>) {}
}

struct SqliteSweepLock {
    pool: SqlitePool,
    name: String,
    owner: String,
    renewal: tokio::task::JoinHandle<()>,
}

#[async_trait::async_trait]
impl SweepLock for SqliteSweepLock {
    async fn release(self: Box<Self>) {
        self.renewal.abort();
        let released = sqlx::query("DELETE FROM reconciler.locks WHERE name = ?1 AND owner = ?2")
            .bind(&self.name)
            .bind(&self.owner)
            .execute(&self.pool)
            .await;
        if let Err(e) = released {
            // It expires on its own.
            tracing::warn!(error = %e, lock = %self.name, "could not release the sweep lock");
        }
    }
}

/// What `reconciler.objects` holds of the object at `key`, read through `executor` (the pool, or
/// a transaction).
async fn noted_object<'e>(
    executor: impl sqlx::Executor<'e, Database = Sqlite>,
    scope: &str,
    key: &str,
) -> Result<Option<ObjectMeta>> {
    let row = sqlx::query(
        "SELECT size, etag, last_modified FROM reconciler.objects \
         WHERE scope = ?2 AND key = ?1",
    )
    .bind(key)
    .bind(scope)
    .fetch_optional(executor)
    .await
    .map_err(|e| Error::database("reading reconciler.objects", e))?;
    row.map(|row| {
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: row.try_get("size")?,
            etag: row.try_get("etag")?,
            last_modified: own_time(&row, "last_modified")?.unwrap_or_default(),
            linked: false,
        })
    })
    .transpose()
    .map_err(|e: sqlx::Error| Error::database("reading reconciler.objects", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test time")
            .with_timezone(&Utc)
    }

    #[test]
    fn reads_the_times_sqlite_apps_write() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            // CURRENT_TIMESTAMP: UTC, a space, no zone.
            (
                "text",
                Some("2026-11-25 10:00:00"),
                Some("2026-11-25T10:00:00Z"),
            ),
            (
                "text",
                Some("2026-11-25T10:00:00Z"),
                Some("2026-11-25T10:00:00Z"),
            ),
            (
                "text",
                Some("2026-11-25T10:00:00"),
                Some("2026-11-25T10:00:00Z"),
            ),
            (
                "text",
                Some("2026-11-25T12:00:00+02:00"),
                Some("2026-11-25T10:00:00Z"),
            ),
            (
                "text",
                Some("2026-11-25 12:00:00+0200"),
                Some("2026-11-25T10:00:00Z"),
            ),
            (
                "text",
                Some("2026-11-25T10:00:00.250Z"),
                Some("2026-11-25T10:00:00.250Z"),
            ),
            (
                "text",
                Some("2026-11-25 10:00:00.123456"),
                Some("2026-11-25T10:00:00.123456Z"),
            ),
            (
                "text",
                Some("2026-11-25T05:30:00.5-04:30"),
                Some("2026-11-25T10:00:00.5Z"),
            ),
            (
                "text",
                Some("2026-11-25 10:00"),
                Some("2026-11-25T10:00:00Z"),
            ),
            ("text", Some("2026-11-25"), Some("2026-11-25T00:00:00Z")),
            (
                "text",
                Some(" 2026-11-25 10:00:00 "),
                Some("2026-11-25T10:00:00Z"),
            ),
            // Unix seconds, as integer, real, or their text.
            ("integer", Some("1795600800"), Some("2026-11-25T10:00:00Z")),
            ("real", Some("1795600800.5"), Some("2026-11-25T10:00:00.5Z")),
            ("text", Some("1795600800"), Some("2026-11-25T10:00:00Z")),
            ("integer", Some("0"), Some("1970-01-01T00:00:00Z")),
            // Unreadable: the caller keeps such a row in grace.
            ("text", Some("1795600800.5"), Some("2026-11-25T10:00:00.5Z")),
            // Too short to be a recent Unix time as text: a compact date, perhaps.
            ("text", Some("20261125"), None),
            ("text", Some("-1795600800"), None),
            ("text", Some("yesterday"), None),
            ("text", Some("25/11/2026 10:00"), None),
            ("text", Some(""), None),
            ("text", Some("2026-13-45 10:00:00"), None),
            ("real", Some("inf"), None),
            ("real", Some("NaN"), None),
            ("null", None, None),
            ("blob", Some("2026-11-25 10:00:00"), None),
        ];
        for (kind, text, expected) in cases {
            assert_eq!(
                parse_timestamp(kind, *text),
                expected.map(at),
                "{kind} {text:?}"
            );
        }
    }

    #[test]
    fn own_times_compare_as_text_in_time_order() {
        let times = [
            at("2026-11-25T10:00:00Z"),
            at("2026-11-25T10:00:00.000001Z"),
            at("2026-11-25T10:00:00.5Z"),
            at("2026-11-25T10:00:01Z"),
        ];
        let stamps: Vec<String> = times.iter().map(|t| stamp(*t)).collect();
        let mut sorted = stamps.clone();
        sorted.sort();
        assert_eq!(stamps, sorted);
        for (time, text) in times.iter().zip(&stamps) {
            assert_eq!(parse_timestamp("text", Some(text)), Some(*time));
        }
    }

    #[test]
    fn urls_name_the_file_and_its_side_file() {
        assert_eq!(
            path_of("sqlite:///srv/app.db"),
            Ok(PathBuf::from("/srv/app.db"))
        );
        assert_eq!(path_of("sqlite://app.db"), Ok(PathBuf::from("app.db")));
        assert!(path_of("sqlite://app.db?mode=ro").is_err());
        assert!(path_of("sqlite://").is_err());
        assert!(path_of("sqlite://:memory:").is_err());
        assert_eq!(
            side_file(Path::new("/srv/app.db")),
            PathBuf::from("/srv/app.db.reconciler.db")
        );
    }

    // Found by fuzz/fuzz_targets/config_load.rs: the refused URL was shown as written, password
    // and all ("sqlite:db?password=hunter2hux...": has URL options).
    #[test]
    fn a_refused_url_is_shown_without_its_password() {
        assert_eq!(
            path_of("sqlite://app.db?password=hunter2hunter2&mode=ro"),
            Err(
                "\"sqlite://app.db?password=***&mode=ro\" has URL options; give only the path \
                 of the database file"
                    .into()
            )
        );
    }

    /// A `docs` table made by `statements` in a new database at `path` (opened with `options`),
    /// and the catalog over it.
    async fn catalog_over(
        path: &Path,
        options: SqliteConnectOptions,
        statements: &[&str],
    ) -> Result<SqliteCatalog> {
        let mut conn =
            SqliteConnection::connect_with(&options.filename(path).create_if_missing(true))
                .await
                .expect("create app db");
        for statement in statements {
            sqlx::query(AssertSqlSafe(*statement))
                .execute(&mut conn)
                .await
                .expect("make the app's table");
        }
        conn.close().await.expect("close");
        let config = DatabaseConfig {
            url: Some(format!("sqlite://{}", path.display())),
            ..DatabaseConfig::default()
        };
        let scope = Scope {
            table: "\"docs\"".into(),
            bucket: "b".into(),
            prefix: String::new(),
        };
        SqliteCatalog::connect(&config, scope).await
    }

    #[tokio::test]
    async fn a_utf16_database_is_refused_naming_the_url() {
        let dir = tempfile::tempdir().expect("temp dir");
        let utf16 = SqliteConnectOptions::new().pragma("encoding", "'UTF-16le'");
        let create = "CREATE TABLE docs (id TEXT, status TEXT, created_at TEXT, updated_at TEXT)";
        match catalog_over(&dir.path().join("utf16.db"), utf16, &[create]).await {
            Err(Error::Config { key, message }) => {
                assert_eq!(key, "database.url");
                assert!(message.contains("UTF-16le"), "{message}");
            }
            Err(other) => panic!("expected a configuration error, got {other}"),
            Ok(_) => panic!("a UTF-16 database was accepted"),
        }
    }

    #[tokio::test]
    async fn a_side_file_left_without_tables_is_read_as_unmigrated_then_completed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        // As a first migration that died before its first statement leaves it.
        std::fs::write(side_file(&path), b"").expect("empty side file");
        let catalog = catalog_over(
            &path,
            SqliteConnectOptions::new(),
            &[
                "CREATE TABLE docs (id TEXT, status TEXT, created_at TEXT, updated_at TEXT)",
                "INSERT INTO docs VALUES ('a', 'pending', CURRENT_TIMESTAMP, NULL)",
            ],
        )
        .await
        .expect("connect");
        assert_eq!(ids(&catalog).await, ["a"]);
        assert_eq!(catalog.job("a").await.expect("job"), None);
        let lock = catalog
            .try_sweep_lock()
            .await
            .expect("the lock completes the migration")
            .expect("free");
        assert_eq!(ids(&catalog).await, ["a"]);
        lock.release().await;
    }

    async fn ids(catalog: &SqliteCatalog) -> Vec<String> {
        catalog
            .records()
            .map(|r| r.expect("record").id)
            .collect()
            .await
    }

    /// The byte order of ids is SQLite's BINARY collation over UTF-8: what S3 lists.
    #[tokio::test]
    async fn records_come_in_utf8_byte_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        let ids = [
            "a/b", "B", "a", "a-b", "é", "z", "a0", "Z", "~", "a.b", "ä/x",
        ];
        let inserts: Vec<String> = ids
            .iter()
            .map(|id| {
                format!(
                    "INSERT INTO docs (id, status, created_at) \
                     VALUES ('{id}', 'pending', CURRENT_TIMESTAMP)"
                )
            })
            .collect();
        // NOCASE would put `a` and `B` the other way round: BINARY must win.
        let mut statements = vec![
            "CREATE TABLE docs (id TEXT COLLATE NOCASE, status TEXT, \
             created_at TEXT, updated_at TEXT)",
        ];
        statements.extend(inserts.iter().map(String::as_str));
        let catalog = catalog_over(&path, SqliteConnectOptions::new(), &statements)
            .await
            .expect("connect");
        let read: Vec<String> = catalog
            .records()
            .map(|r| r.expect("record").id)
            .collect()
            .await;
        let mut expected: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(read, expected);
        assert!(!side_file(&path).exists(), "reading made no side file");
    }
}
