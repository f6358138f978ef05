//! SQLite: the app's table is read through the same mapping as on the other databases; the
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

use super::dialect::{Column, Dialect};
use super::exec::{Bind, Cells, Db, Placeholders, Tx, Value, decode_error, parse_uuid};
use crate::catalog::SweepLock;
use crate::config::{DatabaseConfig, TableName};
use crate::error::{Error, Result};
use crate::model::IdKind;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use sqlx::Row;
use sqlx::sqlite::{
    Sqlite, SqliteArguments, SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions,
    SqliteRow,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Duration;
use uuid::Uuid;

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

pub struct SqliteDialect {
    db: Db,
    pool: SqlitePool,
    /// The reconciler's file beside the app's database.
    side_path: PathBuf,
    /// Whether the reconciler's file exists (checked at connect, set by `migrate`). Shared with
    /// the pool's hooks: once it is true every connection handed out has the file attached.
    migrated: Arc<AtomicBool>,
}

/// The file of the reconciler's tables for the app database at `app`: `<app>.reconciler.db`.
pub fn side_file(app: &Path) -> PathBuf {
    let mut name = app.as_os_str().to_owned();
    name.push(".reconciler.db");
    PathBuf::from(name)
}

impl SqliteDialect {
    /// Open the app's database (never creating it).
    pub async fn connect(config: &DatabaseConfig) -> Result<Self> {
        let url = config.url.as_deref().unwrap_or_default();
        let app_path = crate::config::sqlite_path(url)
            .map_err(|message| Error::config("database.url", message))?;
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
        Ok(SqliteDialect {
            db: Db::Sqlite(pool.clone()),
            pool,
            side_path,
            migrated,
        })
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

#[async_trait::async_trait]
impl Dialect for SqliteDialect {
    fn name(&self) -> &'static str {
        "SQLite"
    }

    fn db(&self) -> &Db {
        &self.db
    }

    fn placeholders(&self) -> Placeholders {
        Placeholders::Question
    }

    fn text(&self, expr: &str) -> String {
        format!("CAST({expr} AS TEXT)")
    }

    fn byte_order(&self, expr: &str) -> String {
        // BINARY compares the bytes, whatever collation the column was declared with.
        format!("{expr} COLLATE BINARY")
    }

    fn column_order(&self, column: &str, info: &Column) -> String {
        // A TEXT column's own values, so that its index (BINARY, as a primary key's is unless
        // declared otherwise) serves the pages; other ids are ordered as their text, which no
        // index of the app's holds: each page then scans the table.
        if text_affinity(&info.sql_type) {
            self.byte_order(column)
        } else {
            self.byte_order(&self.text(column))
        }
    }

    fn own_order(&self, column: &str) -> String {
        column.to_owned()
    }

    fn app_time(&self, expr: &str, alias: &str) -> String {
        // The stored type of each time comes along: an app may write text, or Unix seconds.
        format!("typeof({expr}) AS {alias}_type, CAST({expr} AS TEXT) AS {alias}")
    }

    fn id_kind(&self, info: &Column) -> IdKind {
        id_kind(&info.sql_type)
    }

    fn one_of(&self, column: &str, _info: &Column, params: &[String]) -> String {
        // `id IN (…)` lets an integer id column use its index (the text converts to the
        // column's affinity); the text comparison then refuses spellings like `042` that
        // convert too.
        let list = params.join(", ");
        format!("{column} IN ({list}) AND CAST({column} AS TEXT) IN ({list})")
    }

    fn lock_rows(&self) -> &'static str {
        // The immediate transaction holds the database's write lock: reading a row in it is
        // `FOR UPDATE`.
        ""
    }

    fn skip_locked(&self) -> &'static str {
        ""
    }

    fn delete_some(&self, table: &str, condition: &str, limit: &str) -> String {
        format!(
            "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {condition} \
             LIMIT {limit})"
        )
    }

    fn touch(&self, c: &str) -> String {
        // In the form the row already uses.
        format!(
            "{c} = CASE typeof({c}) \
             WHEN 'integer' THEN CAST(strftime('%s', 'now') AS INTEGER) \
             WHEN 'real' THEN (julianday('now') - 2440587.5) * 86400.0 \
             WHEN 'text' THEN CASE WHEN instr({c}, 'T') > 0 \
               THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') ELSE CURRENT_TIMESTAMP END \
             ELSE CURRENT_TIMESTAMP END"
        )
    }

    fn page_size(&self, id: &Column) -> Option<usize> {
        Some(if text_affinity(&id.sql_type) {
            PAGE
        } else {
            SCANNED_PAGE
        })
    }

    fn samples_ids(&self) -> bool {
        // One statement over the whole table: in rollback-journal mode it would hold back the
        // app's commits for as long.
        false
    }

    fn concurrent_writes(&self) -> usize {
        1
    }

    async fn columns(&self, table: &TableName) -> Result<Vec<Column>> {
        let schema = table
            .schema
            .as_ref()
            .map_or("main", |schema| schema.as_str());
        let rows: Vec<(String, String, i64, Option<String>, i64)> = sqlx::query_as(
            "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1, ?2)",
        )
        .bind(table.name.as_str())
        .bind(schema)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| {
            Error::database(
                format!("reading the columns of table {}", table.quoted()),
                e,
            )
        })?;
        let pk_columns = rows.iter().filter(|(.., pk)| *pk > 0).count();
        Ok(rows
            .into_iter()
            .map(|(name, sql_type, notnull, default, pk)| {
                // An INTEGER PRIMARY KEY is the rowid: SQLite picks one.
                let rowid = pk > 0 && pk_columns == 1 && sql_type.eq_ignore_ascii_case("INTEGER");
                Column {
                    name,
                    nullable: notnull == 0 && !rowid,
                    filled: default.is_some() || rowid,
                    sql_type,
                    collation: None,
                }
            })
            .collect())
    }

    fn migrated(&self) -> bool {
        self.migrated.load(AtomicOrdering::SeqCst)
    }

    async fn migrate(&self) -> Result<()> {
        let context = format!(
            "creating the reconciler's tables in {}",
            self.side_path.display()
        );
        // The migrations run on the reconciler's file as its main database: sqlx's bookkeeping
        // table lands there too.
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

    async fn begin(&self, own: bool, context: &str) -> Result<Tx> {
        // A transaction of the app's table: `BEGIN IMMEDIATE` takes the write lock now, so a
        // second writer waits (busy timeout) rather than failing later when a read lock would
        // have to be upgraded. One of the reconciler's own tables only is deferred: it locks
        // only the reconciler's file when it first writes, never the app's database (`BEGIN
        // IMMEDIATE` locks every attached file), and the app's writers never wait on its
        // commit. Its first statement must write, so that the write lock is waited for on the
        // busy timeout, not refused.
        let tx = if own {
            self.pool.begin().await
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        }
        .map_err(|e| Error::database(context.to_owned(), e))?;
        Ok(Tx::Sqlite(tx))
    }

    async fn try_sweep_lock(&self, scope: &str) -> Result<Option<Box<dyn SweepLock>>> {
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
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| Error::database(context, e))?;
        // A lock past its expiry was left by a holder that died.
        sqlx::query("DELETE FROM reconciler.locks WHERE name = ?1 AND expires_at <= ?2")
            .bind(scope)
            .bind(stamp(now))
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::database(context, e))?;
        let taken = sqlx::query(
            "INSERT INTO reconciler.locks (name, owner, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(scope)
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
            scope.to_owned(),
            owner.clone(),
        ));
        Ok(Some(Box::new(SqliteSweepLock {
            pool: self.pool.clone(),
            name: scope.to_owned(),
            owner,
            renewal,
        })))
    }
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

fn lease(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
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

/// How the reconciler's tables store a time on SQLite: UTC text of one fixed width, so that
/// comparing the text compares the times.
pub fn stamp(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl Bind for sqlx::query::Query<'_, Sqlite, SqliteArguments> {
    fn bind_value(self, value: &Value) -> Self {
        match value {
            Value::Text(text) => self.bind(text.clone()),
            Value::Int(n) => self.bind(*n),
            Value::Bool(b) => self.bind(*b),
            Value::Float(x) => self.bind(*x),
            Value::Time(time) => self.bind(time.map(stamp)),
            Value::Uuid(id) => self.bind(id.map(|id| id.to_string())),
            Value::Json(json) => self.bind(json.to_string()),
        }
    }
}

impl Cells for SqliteRow {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }

    fn int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(column)
    }

    fn time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let text: Option<String> = self.try_get(column)?;
        text.map(|text| {
            parse_timestamp("text", Some(&text))
                .ok_or_else(|| decode_error(column, format!("unreadable time {text:?}")))
        })
        .transpose()
    }

    fn app_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        // The statements select each app time's stored type beside its text: an app may write
        // text, or Unix seconds.
        let kind: Option<String> = self.try_get(format!("{column}_type").as_str())?;
        let text: Option<String> = self.try_get(column)?;
        Ok(parse_timestamp(
            kind.as_deref().unwrap_or("null"),
            text.as_deref(),
        ))
    }

    fn uuid(&self, column: &str) -> Result<Option<Uuid>, sqlx::Error> {
        parse_uuid(column, self.try_get(column)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::sql::SqlCatalog;
    use crate::catalog::{Catalog, Scope};
    use futures::StreamExt;
    use sqlx::{AssertSqlSafe, Connection};

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
            crate::config::sqlite_path("sqlite:///srv/app.db"),
            Ok(PathBuf::from("/srv/app.db"))
        );
        assert_eq!(
            crate::config::sqlite_path("sqlite://app.db"),
            Ok(PathBuf::from("app.db"))
        );
        assert!(crate::config::sqlite_path("sqlite://app.db?mode=ro").is_err());
        assert!(crate::config::sqlite_path("sqlite://").is_err());
        assert!(crate::config::sqlite_path("sqlite://:memory:").is_err());
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
            crate::config::sqlite_path("sqlite://app.db?password=hunter2hunter2&mode=ro"),
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
    ) -> Result<SqlCatalog> {
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
        SqlCatalog::connect(&config, scope).await
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

    async fn ids(catalog: &SqlCatalog) -> Vec<String> {
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
