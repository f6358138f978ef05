//! The catalog on an SQL database: Postgres, SQLite or MySQL/MariaDB, written once. The app's
//! table is read through the configured mapping; the reconciler's own tables are in a schema of
//! their own (Postgres), a file beside the app's (SQLite) or a database beside the app's (MySQL).
//! What the three do differently is each [`Dialect`]'s; how a statement runs on each is
//! [`exec`]'s. All SQL of the app table is built once, at connect ([`statements`]), from
//! identifiers that config validated and quoted. Free text (a job's last error, an audit detail,
//! a sweep's error) is written through `redact::text`: the tables are read by people too.

pub mod dialect;
pub mod exec;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod postgres;
pub mod sqlite;
mod statements;

use super::{
    AuditEntry, Catalog, Intent, KeyEvent, PruneTarget, Pruned, Retention, Scope, SweepLock,
    SweepRecord, Transaction,
};
use crate::config::{AdoptValue, DatabaseConfig, StatusWords};
use crate::error::{Error, Result};
use crate::model::{IdKind, Job, JobState, ObjectMeta, Record, Status};
use crate::redact;
use chrono::{DateTime, Utc};
use dialect::Dialect;
use exec::{Bind, Cells, Prepared, Tx, Value, on_db, on_tx};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use sqlx::AssertSqlSafe;
use statements::{Cursor, Read, Statements, params};
use std::time::Duration;

/// Rows per statement of the batched writes (locks, status changes, audit rows): few round
/// trips, well under every database's limit on parameters.
const BATCH: usize = 100;

pub struct SqlCatalog {
    dialect: Box<dyn Dialect>,
    /// The app table, quoted.
    table: String,
    scope: Scope,
    /// `scope.name()`, bound into every query on the reconciler's tables.
    scope_name: String,
    statuses: StatusWords,
    /// What the id column holds, and the key column (the same unless the key has a column of
    /// its own).
    id_kind: IdKind,
    key_kind: IdKind,
    /// Columns an adopted row would leave without a value.
    adoption_gaps: Vec<String>,
    /// `[database.adopt_values]`, bound after an adopted row's key, status and time.
    adopt_values: Vec<Value>,
    /// The statements that join the job state, and those that cannot (before the reconciler's
    /// tables exist: a dry run with a read-only role).
    with_jobs: Statements,
    without_jobs: Statements,
}

impl SqlCatalog {
    /// Connect to the database `config.url` names (`postgres://`, `sqlite://`, `mysql://` or
    /// `mariadb://`) and check that the table and its columns exist, so that a typo in the
    /// mapping is an error naming the key now, not a failed query in the middle of a sweep.
    /// `scope` is the deployment this catalog serves: it sees only that deployment's rows of the
    /// reconciler's tables.
    pub async fn connect(config: &DatabaseConfig, scope: Scope) -> Result<Self> {
        let url = config.url.as_deref().unwrap_or_default();
        let dialect: Box<dyn Dialect> = if url.starts_with("sqlite:") {
            Box::new(sqlite::SqliteDialect::connect(config).await?)
        } else if crate::config::is_mysql_url(url) {
            #[cfg(feature = "mysql")]
            {
                Box::new(mysql::MySqlDialect::connect(config).await?)
            }
            // Refused by the config's validation before a connection is tried.
            #[cfg(not(feature = "mysql"))]
            {
                return Err(Error::config(
                    "database.url",
                    "this reconcile was built without MySQL support (cargo's `mysql` feature)",
                ));
            }
        } else {
            Box::new(postgres::PgDialect::connect(config).await?)
        };
        Self::over(dialect, config, scope).await
    }

    async fn over(
        dialect: Box<dyn Dialect>,
        config: &DatabaseConfig,
        scope: Scope,
    ) -> Result<Self> {
        let table = config.table.quoted();
        let columns = dialect.columns(&config.table).await?;
        let mapped = statements::Mapped::find(config, &table, &columns, dialect.name())?;
        let id_kind = dialect.id_kind(&mapped.id);
        let key_kind = dialect.id_kind(&mapped.key);
        let adopt_values = mapped
            .adopt
            .iter()
            .map(|(_, value)| match value {
                AdoptValue::Bool(b) => Value::Bool(*b),
                AdoptValue::Integer(n) => Value::Int(Some(*n)),
                AdoptValue::Float(x) => Value::Float(*x),
                AdoptValue::Text(text) => Value::Text(Some(text.clone())),
            })
            .collect();
        Ok(SqlCatalog {
            adoption_gaps: mapped.gaps.clone(),
            adopt_values,
            key_kind,
            with_jobs: Statements::build(dialect.as_ref(), config, &table, &mapped, true),
            without_jobs: Statements::build(dialect.as_ref(), config, &table, &mapped, false),
            dialect,
            scope_name: scope.name(),
            scope,
            statuses: config.statuses.clone(),
            id_kind,
            table,
        })
    }

    fn sql(&self) -> &Statements {
        if self.dialect.migrated() {
            &self.with_jobs
        } else {
            &self.without_jobs
        }
    }

    fn prepare(&self, sql: &str, args: &[Value]) -> Prepared {
        exec::prepare(
            sql,
            args,
            self.dialect.placeholders(),
            self.dialect.own_schema(),
        )
    }

    /// Run a statement that returns no rows; how many it changed.
    async fn execute(&self, sql: &str, args: &[Value]) -> std::result::Result<u64, sqlx::Error> {
        let p = self.prepare(sql, args);
        on_db!(self.dialect.db(), pool => {
            let done = sqlx::query(AssertSqlSafe(p.sql)).bind_all(&p.args).execute(pool).await?;
            Ok(done.rows_affected())
        })
    }

    /// Run a query; each row as `map` reads it.
    async fn fetch_all<T: Send>(
        &self,
        sql: &str,
        args: &[Value],
        map: impl Fn(&dyn Cells) -> std::result::Result<T, sqlx::Error> + Send + Sync,
    ) -> std::result::Result<Vec<T>, sqlx::Error> {
        let p = self.prepare(sql, args);
        on_db!(self.dialect.db(), pool => {
            let rows = sqlx::query(AssertSqlSafe(p.sql)).bind_all(&p.args).fetch_all(pool).await?;
            rows.iter().map(|row| map(row)).collect()
        })
    }

    async fn fetch_optional<T: Send>(
        &self,
        sql: &str,
        args: &[Value],
        map: impl Fn(&dyn Cells) -> std::result::Result<T, sqlx::Error> + Send + Sync,
    ) -> std::result::Result<Option<T>, sqlx::Error> {
        let p = self.prepare(sql, args);
        on_db!(self.dialect.db(), pool => {
            let row = sqlx::query(AssertSqlSafe(p.sql)).bind_all(&p.args).fetch_optional(pool).await?;
            row.as_ref().map(|row| map(row)).transpose()
        })
    }

    /// Begin a transaction; `own` when it writes only the reconciler's tables.
    async fn transaction(&self, own: bool, context: &str) -> Result<SqlTransaction<'_>> {
        let tx = self.dialect.begin(own, context).await?;
        Ok(SqlTransaction { catalog: self, tx })
    }

    /// The record columns of a row that `Statements` selected.
    fn record_from(&self, row: &dyn Cells) -> std::result::Result<Record, sqlx::Error> {
        let raw_status = row.text("status")?.unwrap_or_default();
        let job = row.text("job_state")?;
        Ok(Record {
            id: row.required_text("id")?,
            key: row.text("key")?.filter(|key| !key.is_empty()),
            status: self.statuses.status(&raw_status),
            raw_status,
            // A row without a (readable) creation time cannot be judged old: it stays in grace.
            created_at: row
                .app_time("created_at")?
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            updated_at: row.app_time("updated_at")?,
            job: job.as_deref().and_then(JobState::parse),
        })
    }

    /// The ids of `ids` that can be values of the id column: no row has any other, and asking
    /// would only be an error (`foo.txt` in a uuid column).
    fn admitted<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        ids.into_iter()
            .filter(|id| self.id_kind.refusal(id).is_none())
            .collect()
    }

    /// Whether `key` can be a value of the key column.
    fn admits_key(&self, key: &str) -> bool {
        self.key_kind.refusal(key).is_none()
    }

    /// One page of `read`: up to `size` records after `after` (an id or a key, as the read's
    /// cursor says), in byte order. Checked to come after it: a page that did not (an id stored
    /// as a blob in a SQLite TEXT column sorts after every text, and its text need not) would be
    /// read again and again.
    async fn page(&self, read: &Read, after: Option<&str>, size: usize) -> Result<Vec<Record>> {
        let context = || format!("reading table {}", self.table);
        let size = Value::from(i64::try_from(size).unwrap_or(i64::MAX));
        let scope = Value::from(&self.scope_name);
        let page = match after {
            None => {
                self.fetch_all(&read.first_page, &[scope, size], |row| {
                    self.record_from(row)
                })
                .await
            }
            Some(after) => {
                self.fetch_all(&read.next_page, &[scope, after.into(), size], |row| {
                    self.record_from(row)
                })
                .await
            }
        }
        .map_err(|e| Error::database(context(), e))?;
        let mut before = after;
        for record in &page {
            let cursor = cursor_of(read.cursor, record);
            if before.is_some_and(|b| b.as_bytes() >= cursor.as_bytes()) {
                return Err(Error::database(
                    context(),
                    sqlx::Error::Protocol(format!(
                        "the rows did not come in byte order: {cursor:?} came after {:?} (is \
                         an id stored as a blob?)",
                        before.unwrap_or_default()
                    )),
                ));
            }
            before = Some(cursor);
        }
        Ok(page)
    }

    /// Every record of `read`, in its order: in pages where the dialect reads so, else one
    /// streamed statement.
    fn read<'a>(&'a self, read: &'a Read) -> BoxStream<'a, Result<Record>> {
        if let Some(size) = self.sql().page_size {
            // `None` before the first page, then the last cursor read; done once a page comes
            // short.
            let start: Option<Option<String>> = Some(None);
            return stream::try_unfold(start, move |after| async move {
                let Some(after) = after else {
                    return Ok::<_, Error>(None);
                };
                let page = self.page(read, after.as_deref(), size).await?;
                let next = match page.last() {
                    Some(last) if page.len() == size => {
                        Some(Some(cursor_of(read.cursor, last).to_owned()))
                    }
                    _ => None,
                };
                Ok(Some((page, next)))
            })
            .map_ok(|page| stream::iter(page.into_iter().map(Ok)))
            .try_flatten()
            .boxed();
        }
        let context = format!("reading table {}", self.table);
        let p = self.prepare(&read.all, &[(&self.scope_name).into()]);
        on_db!(self.dialect.db(), pool => {
            let context = context.clone();
            sqlx::query(AssertSqlSafe(p.sql))
                .bind_all(&p.args)
                .fetch(pool)
                .map(move |row| {
                    row.and_then(|row| self.record_from(&row))
                        .map_err(|e| Error::database(context.clone(), e))
                })
                .boxed()
        })
    }

    /// Delete this scope's rows of `table` whose `older` column is before `cutoff`, a batch per
    /// statement so that no statement holds many locks or runs long.
    async fn prune_table(&self, target: &PruneTarget) -> Result<u64> {
        const PRUNE_BATCH: i64 = 1000;
        let PruneTarget {
            table,
            older,
            cutoff,
        } = *target;
        let sql = self
            .dialect
            .delete_some(table, &format!("scope = $1 AND {older} < $2"), "$3");
        let mut deleted = 0;
        loop {
            let done = self
                .execute(
                    &sql,
                    &[(&self.scope_name).into(), cutoff.into(), PRUNE_BATCH.into()],
                )
                .await
                .map_err(|e| Error::database(format!("pruning {table}"), e))?;
            deleted += done;
            if done < PRUNE_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }
}

#[async_trait::async_trait]
impl Catalog for SqlCatalog {
    fn records(&self) -> BoxStream<'_, Result<Record>> {
        let sql = self.sql();
        // The records without a key first: the merge pairs them with nothing.
        match &sql.keyless {
            Some(keyless) => self.read(keyless).chain(self.read(&sql.keyed)).boxed(),
            None => self.read(&sql.keyed),
        }
    }

    async fn record_at(&self, key: &str) -> Result<Option<Record>> {
        if !self.admits_key(key) {
            return Ok(None);
        }
        let records = self
            .fetch_all(
                &self.sql().select_at,
                &[(&self.scope_name).into(), key.into()],
                |row| self.record_from(row),
            )
            .await
            .map_err(|e| Error::database(format!("reading key {key:?} from {}", self.table), e))?;
        Ok(records.into_iter().next())
    }

    fn adoption_gaps(&self) -> Vec<String> {
        self.adoption_gaps.clone()
    }

    async fn record(&self, id: &str) -> Result<Option<Record>> {
        if self.admitted([id]).is_empty() {
            return Ok(None);
        }
        self.fetch_optional(
            &self.sql().select_one,
            &[(&self.scope_name).into(), id.into()],
            |row| self.record_from(row),
        )
        .await
        .map_err(|e| Error::database(format!("reading {id:?} from {}", self.table), e))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>> {
        Ok(Box::new(
            self.transaction(false, "starting a transaction").await?,
        ))
    }

    async fn begin_own(&self) -> Result<Box<dyn Transaction + '_>> {
        Ok(Box::new(
            self.transaction(true, "starting a transaction of the reconciler's tables")
                .await?,
        ))
    }

    async fn migrate(&self) -> Result<()> {
        self.dialect.migrate().await?;
        self.dialect
            .after_migrate(&self.scope, &self.with_jobs.all_ids)
            .await
    }

    async fn sweep_started(&self, sweep: &SweepRecord) -> Result<()> {
        let context = "recording the sweep in reconciler.sweeps";
        let mut tx = self.transaction(true, context).await?;
        // Under the sweep lock no other sweep of this scope runs: a `running` row is a dead
        // process's.
        let interrupted = tx
            .execute(
                "UPDATE reconciler.sweeps SET outcome = 'interrupted', finished_at = $2, \
                 error = 'the process running this sweep ended before it finished' \
                 WHERE scope = $1 AND outcome = 'running'",
                &[(&self.scope_name).into(), sweep.started_at.into()],
            )
            .await
            .map_err(|e| Error::database(context, e))?;
        tx.execute(
            "INSERT INTO reconciler.sweeps (id, started_at, bucket, prefix, scope, outcome) \
             VALUES ($1, $2, $3, $4, $5, 'running')",
            &[
                sweep.id.into(),
                sweep.started_at.into(),
                (&sweep.bucket).into(),
                (&sweep.prefix).into(),
                (&self.scope_name).into(),
            ],
        )
        .await
        .map_err(|e| Error::database(context, e))?;
        Box::new(tx).commit().await?;
        if interrupted > 0 {
            tracing::warn!(
                sweeps = interrupted,
                "closed sweeps left running by a process that ended as interrupted"
            );
        }
        Ok(())
    }

    async fn sweep_finished(&self, sweep: &SweepRecord) -> Result<()> {
        self.execute(
            "UPDATE reconciler.sweeps SET finished_at = $2, objects_listed = $3, \
             records_scanned = $4, counts = $5, outcome = $6, error = $7 \
             WHERE id = $1 AND scope = $8",
            &[
                sweep.id.into(),
                sweep.finished_at.into(),
                i64::try_from(sweep.objects_listed)
                    .unwrap_or(i64::MAX)
                    .into(),
                i64::try_from(sweep.records_scanned)
                    .unwrap_or(i64::MAX)
                    .into(),
                Value::Json(sweep.counts.clone()),
                sweep.outcome.into(),
                sweep.error.as_deref().map(redact::text).into(),
                (&self.scope_name).into(),
            ],
        )
        .await
        .map_err(|e| Error::database("recording the sweep in reconciler.sweeps", e))?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(3), self.execute("SELECT 1", &[]))
            .await
            .map_err(|_| Error::database("pinging", sqlx::Error::PoolTimedOut))?
            .map_err(|e| Error::database("pinging", e))?;
        Ok(())
    }

    async fn try_sweep_lock(&self) -> Result<Option<Box<dyn SweepLock>>> {
        self.dialect.try_sweep_lock(&self.scope_name).await
    }

    async fn claim_job(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Job>> {
        let context = "claiming a job in reconciler.jobs";
        let lease_until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let args = [
            worker.into(),
            now.into(),
            lease_until.into(),
            (&self.scope_name).into(),
        ];
        // The attempt counts now, not when its result is written: a hook that kills the worker
        // would otherwise be claimed again and again with its budget untouched. On SQLite, one
        // writer at a time is `SKIP LOCKED`: no other claim runs inside this transaction.
        let due = format!(
            "SELECT doc_id FROM reconciler.jobs \
             WHERE scope = $4 AND ((state = 'queued' AND next_attempt_at <= $2) \
                OR (state = 'running' AND lease_until <= $2)) \
             ORDER BY next_attempt_at LIMIT 1{}",
            self.dialect.skip_locked()
        );
        let claim = "UPDATE reconciler.jobs SET state = 'running', leased_by = $1, \
                     lease_until = $3, attempts = attempts + 1, updated_at = $2 \
                     WHERE scope = $4 AND doc_id = ";
        let mut tx = self.transaction(true, context).await?;
        let job = if self.dialect.returning() {
            tx.fetch_optional(&format!("{claim}({due}) RETURNING *"), &args, job_from)
                .await
        } else {
            // No UPDATE … RETURNING, and no subquery on the table being updated (MySQL): pick
            // the job, locking it, then take it.
            let picked = tx
                .fetch_optional(&due, &args, |row| row.required_text("doc_id"))
                .await
                .map_err(|e| Error::database(context, e))?;
            match picked {
                None => Ok(None),
                Some(doc_id) => {
                    let mut args = args.to_vec();
                    args.push(doc_id.into());
                    tx.execute(&format!("{claim}$5"), &args)
                        .await
                        .map_err(|e| Error::database(context, e))?;
                    tx.fetch_optional(
                        "SELECT * FROM reconciler.jobs WHERE scope = $4 AND doc_id = $5",
                        &args,
                        job_from,
                    )
                    .await
                }
            }
        }
        .map_err(|e| Error::database(context, e))?;
        Box::new(tx).commit().await?;
        Ok(job)
    }

    async fn job(&self, id: &str) -> Result<Option<Job>> {
        if !self.dialect.migrated() {
            return Ok(None);
        }
        self.fetch_optional(
            "SELECT * FROM reconciler.jobs WHERE scope = $1 AND doc_id = $2",
            &[(&self.scope_name).into(), id.into()],
            job_from,
        )
        .await
        .map_err(|e| Error::database(format!("reading the job of {id:?}"), e))
    }

    async fn queue_depth(&self) -> Result<u64> {
        if !self.dialect.migrated() {
            return Ok(0);
        }
        let depth = self
            .fetch_optional(
                "SELECT count(*) AS n FROM reconciler.jobs \
                 WHERE scope = $1 AND state IN ('queued', 'running')",
                &[(&self.scope_name).into()],
                |row| row.int("n"),
            )
            .await
            .map_err(|e| Error::database("counting reconciler.jobs", e))?;
        Ok(depth
            .flatten()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0))
    }

    async fn ids_with_status(&self, status: Status) -> Result<Vec<String>> {
        self.fetch_all(
            &self.sql().ids_with_status,
            &[self.statuses.word(status).into()],
            |row| row.required_text("id"),
        )
        .await
        .map_err(|e| Error::database(format!("listing {status} docs in {}", self.table), e))
    }

    fn key_kind(&self) -> IdKind {
        self.key_kind
    }

    fn concurrent_writes(&self) -> usize {
        self.dialect.concurrent_writes()
    }

    async fn split_points(&self, every: u64) -> Result<Vec<String>> {
        if !self.dialect.samples_ids() {
            return Ok(Vec::new());
        }
        self.fetch_all(
            &self.sql().split_points,
            &[i64::try_from(every.max(1)).unwrap_or(i64::MAX).into()],
            |row| row.required_text("id"),
        )
        .await
        .map_err(|e| Error::database(format!("sampling the ids of {}", self.table), e))
    }

    async fn prune(&self, retention: &Retention, now: DateTime<Utc>) -> Result<Pruned> {
        if !self.dialect.migrated() {
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
        if !self.dialect.migrated() {
            return Ok(None);
        }
        self.fetch_optional(
            NOTED_OBJECT,
            &[key.into(), (&self.scope_name).into()],
            |row| noted_object_from(row, key),
        )
        .await
        .map_err(|e| Error::database("reading reconciler.objects", e))
    }

    async fn audit_trail(&self, id: &str, key: &str) -> Result<Option<Vec<AuditEntry>>> {
        if !self.dialect.migrated() {
            return Ok(None);
        }
        self.fetch_all(
            "SELECT at, sweep_id, finding, action, doc_id, \"key\", old_status, new_status, \
             detail FROM reconciler.audit_log WHERE scope = $3 AND (doc_id = $1 OR \"key\" = $2) \
             ORDER BY seq",
            &[id.into(), key.into(), (&self.scope_name).into()],
            |row| {
                Ok(AuditEntry {
                    at: row.time("at")?.unwrap_or_default(),
                    sweep_id: row.uuid("sweep_id")?,
                    finding: row.required_text("finding")?,
                    action: row.required_text("action")?,
                    doc_id: row.required_text("doc_id")?,
                    key: row.required_text("key")?,
                    old_status: row.text("old_status")?,
                    new_status: row.text("new_status")?,
                    detail: row.text("detail")?.unwrap_or_default(),
                })
            },
        )
        .await
        .map(Some)
        .map_err(|e| Error::database("reading reconciler.audit_log", e))
    }

    async fn note_intent(&self, intent: &Intent) -> Result<()> {
        let context = format!("noting the intent for {:?}", intent.key());
        let json = intent
            .to_json()
            .map_err(|e| Error::database(context.clone(), e))?;
        let mut tx = self.transaction(true, &context).await?;
        tx.execute(
            "INSERT INTO reconciler.intents (scope, id, \"key\", intent, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                (&self.scope_name).into(),
                (&intent.id).into(),
                intent.key().into(),
                json.into(),
                Utc::now().into(),
            ],
        )
        .await
        .map_err(|e| Error::database(context.clone(), e))?;
        Box::new(tx).commit().await
    }

    async fn intents(&self) -> Result<Vec<Intent>> {
        let rows = self
            .fetch_all(
                &format!(
                    "SELECT id, intent FROM reconciler.intents WHERE scope = $1 \
                     ORDER BY {}, created_at, id",
                    self.dialect.own_order("\"key\"")
                ),
                &[(&self.scope_name).into()],
                |row| Ok((row.required_text("id")?, row.required_text("intent")?)),
            )
            .await
            .map_err(|e| Error::database("reading reconciler.intents", e))?;
        Intent::from_json(&rows)
    }
}

/// What a read's pages go by.
fn cursor_of(cursor: Cursor, record: &Record) -> &str {
    match cursor {
        Cursor::Id => &record.id,
        Cursor::Key => record.key.as_deref().unwrap_or_default(),
    }
}

const NOTED_OBJECT: &str = "SELECT size, etag, last_modified FROM reconciler.objects \
                            WHERE scope = $2 AND \"key\" = $1";

fn noted_object_from(row: &dyn Cells, key: &str) -> std::result::Result<ObjectMeta, sqlx::Error> {
    Ok(ObjectMeta {
        key: key.to_owned(),
        size: row.int("size")?.unwrap_or(0),
        etag: row.text("etag")?,
        last_modified: row.time("last_modified")?.unwrap_or_default(),
        linked: false,
    })
}

fn job_from(row: &dyn Cells) -> std::result::Result<Job, sqlx::Error> {
    let state = row.required_text("state")?;
    let attempts = row.int("attempts")?.unwrap_or(0);
    Ok(Job {
        doc_id: row.required_text("doc_id")?,
        key: row.required_text("key")?,
        state: JobState::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown job state {state:?}").into(),
        })?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_at: row.time("next_attempt_at")?.unwrap_or_default(),
        lease_until: row.time("lease_until")?,
        leased_by: row.text("leased_by")?,
        last_error: row.text("last_error")?,
        size: row.int("size")?,
        etag: row.text("etag")?,
    })
}

pub struct SqlTransaction<'c> {
    catalog: &'c SqlCatalog,
    tx: Tx,
}

impl SqlTransaction<'_> {
    async fn execute(
        &mut self,
        sql: &str,
        args: &[Value],
    ) -> std::result::Result<u64, sqlx::Error> {
        let p = self.catalog.prepare(sql, args);
        on_tx!(&mut self.tx, tx => {
            let done = sqlx::query(AssertSqlSafe(p.sql)).bind_all(&p.args).execute(&mut **tx).await?;
            Ok(done.rows_affected())
        })
    }

    async fn fetch_all<T: Send>(
        &mut self,
        sql: &str,
        args: &[Value],
        map: impl Fn(&dyn Cells) -> std::result::Result<T, sqlx::Error> + Send + Sync,
    ) -> std::result::Result<Vec<T>, sqlx::Error> {
        let p = self.catalog.prepare(sql, args);
        on_tx!(&mut self.tx, tx => {
            let rows = sqlx::query(AssertSqlSafe(p.sql)).bind_all(&p.args).fetch_all(&mut **tx).await?;
            rows.iter().map(|row| map(row)).collect()
        })
    }

    async fn fetch_optional<T: Send>(
        &mut self,
        sql: &str,
        args: &[Value],
        map: impl Fn(&dyn Cells) -> std::result::Result<T, sqlx::Error> + Send + Sync,
    ) -> std::result::Result<Option<T>, sqlx::Error> {
        let p = self.catalog.prepare(sql, args);
        on_tx!(&mut self.tx, tx => {
            let row = sqlx::query(AssertSqlSafe(p.sql)).bind_all(&p.args).fetch_optional(&mut **tx).await?;
            row.as_ref().map(|row| map(row)).transpose()
        })
    }
}

#[async_trait::async_trait]
impl Transaction for SqlTransaction<'_> {
    async fn lock_record(&mut self, id: &str) -> Result<Option<Record>> {
        Ok(self
            .lock_records(&[id.to_owned()])
            .await?
            .into_iter()
            .next()
            .flatten())
    }

    async fn set_status(&mut self, id: &str, status: Status) -> Result<()> {
        self.set_statuses(&[(id.to_owned(), status)]).await
    }

    async fn lock_records(&mut self, ids: &[String]) -> Result<Vec<Option<Record>>> {
        let catalog = self.catalog;
        let context = || format!("locking {} records in {}", ids.len(), catalog.table);
        let asked = catalog.admitted(ids.iter().map(String::as_str));
        let mut found = std::collections::HashMap::with_capacity(asked.len());
        // In byte order of the ids, batch after batch: two transactions locking overlapping
        // sets take their rows in the same order, and cannot deadlock on each other.
        let mut sorted = asked;
        sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        sorted.dedup();
        for batch in sorted.chunks(BATCH) {
            let sql = catalog
                .sql()
                .lock_many(catalog.dialect.as_ref(), batch.len());
            let mut args: Vec<Value> = vec![(&catalog.scope_name).into()];
            args.extend(batch.iter().map(|id| Value::from(*id)));
            let records = self
                .fetch_all(&sql, &args, |row| catalog.record_from(row))
                .await
                .map_err(|e| Error::database(context(), e))?;
            for record in records {
                found.insert(record.id.clone(), record);
            }
        }
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    async fn set_statuses(&mut self, changes: &[(String, Status)]) -> Result<()> {
        let catalog = self.catalog;
        for status in Status::ALL {
            let ids = catalog.admitted(
                changes
                    .iter()
                    .filter(|(_, s)| *s == status)
                    .map(|(id, _)| id.as_str()),
            );
            for batch in ids.chunks(BATCH) {
                let sql = catalog
                    .sql()
                    .update_many(catalog.dialect.as_ref(), batch.len());
                let mut args: Vec<Value> = vec![catalog.statuses.word(status).into()];
                args.extend(batch.iter().map(|id| Value::from(*id)));
                self.execute(&sql, &args).await.map_err(|e| {
                    Error::database(
                        format!(
                            "setting {} records to {status} in {}",
                            batch.len(),
                            catalog.table
                        ),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }

    async fn audit_all(&mut self, entries: &[AuditEntry]) -> Result<()> {
        for batch in entries.chunks(BATCH) {
            const COLUMNS: usize = 10;
            let rows: Vec<String> = (0..batch.len())
                .map(|i| format!("({})", params(1 + i * COLUMNS, COLUMNS).join(", ")))
                .collect();
            let sql = format!(
                "INSERT INTO reconciler.audit_log \
                 (at, sweep_id, finding, action, doc_id, \"key\", old_status, new_status, detail, \
                 scope) VALUES {}",
                rows.join(", ")
            );
            let mut args = Vec::with_capacity(batch.len() * COLUMNS);
            for entry in batch {
                args.extend([
                    entry.at.into(),
                    entry.sweep_id.into(),
                    (&entry.finding).into(),
                    (&entry.action).into(),
                    (&entry.doc_id).into(),
                    (&entry.key).into(),
                    (&entry.old_status).into(),
                    (&entry.new_status).into(),
                    redact::text(&entry.detail).into(),
                    (&self.catalog.scope_name).into(),
                ]);
            }
            self.execute(&sql, &args)
                .await
                .map_err(|e| Error::database("writing reconciler.audit_log", e))?;
        }
        Ok(())
    }

    async fn lock_record_at(&mut self, key: &str) -> Result<Option<Record>> {
        let catalog = self.catalog;
        if !catalog.admits_key(key) {
            return Ok(None);
        }
        let scope = Value::from(&catalog.scope_name);
        let records = self
            .fetch_all(&catalog.sql().lock_at, &[scope, key.into()], |row| {
                catalog.record_from(row)
            })
            .await
            .map_err(|e| Error::database(format!("locking key {key:?} in {}", catalog.table), e))?;
        Ok(records.into_iter().next())
    }

    async fn create_record(&mut self, key: &str, status: Status) -> Result<Option<String>> {
        let catalog = self.catalog;
        let context = || format!("creating {key:?} in {}", catalog.table);
        let sql = catalog.sql();
        let mut args: Vec<Value> = vec![
            key.into(),
            catalog.statuses.word(status).into(),
            Utc::now().into(),
        ];
        args.extend(catalog.adopt_values.iter().cloned());
        let created = if sql.keyless.is_none() {
            // The key is the id.
            self.execute(&sql.insert, &args)
                .await
                .map(|rows| (rows == 1).then(|| key.to_owned()))
        } else if let Some(inserted_id) = &sql.inserted_id {
            match self.execute(&sql.insert, &args).await {
                Ok(_) => {
                    self.fetch_optional(inserted_id, &[key.into()], |row| row.required_text("id"))
                        .await
                }
                Err(e) => Err(e),
            }
        } else {
            self.fetch_optional(&sql.insert, &args, |row| row.required_text("id"))
                .await
        };
        match created {
            Ok(id) => Ok(id),
            // Where an INSERT cannot be told to do nothing on a conflict (MySQL), the conflict
            // is its answer; the statement alone is rolled back, not the transaction.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(Error::database(context(), e)),
        }
    }

    async fn noted_object(&mut self, key: &str) -> Result<Option<ObjectMeta>> {
        if !self.catalog.dialect.migrated() {
            return Ok(None);
        }
        let scope = Value::from(&self.catalog.scope_name);
        self.fetch_optional(NOTED_OBJECT, &[key.into(), scope], |row| {
            noted_object_from(row, key)
        })
        .await
        .map_err(|e| Error::database("reading reconciler.objects", e))
    }

    async fn note_object(&mut self, object: &ObjectMeta) -> Result<()> {
        let d = self.catalog.dialect.as_ref();
        let sql = format!(
            "INSERT INTO reconciler.objects (scope, \"key\", size, etag, last_modified, noted_at) \
             VALUES ($5, $1, $2, $3, $4, $6) {} size = {}, etag = {}, last_modified = {}, \
             noted_at = {}",
            d.upsert(&["scope", "\"key\""]),
            d.excluded("size"),
            d.excluded("etag"),
            d.excluded("last_modified"),
            d.excluded("noted_at"),
        );
        self.execute(
            &sql,
            &[
                (&object.key).into(),
                object.size.into(),
                (&object.etag).into(),
                object.last_modified.into(),
                (&self.catalog.scope_name).into(),
                Utc::now().into(),
            ],
        )
        .await
        .map_err(|e| Error::database("writing reconciler.objects", e))?;
        Ok(())
    }

    async fn audit(&mut self, entry: &AuditEntry) -> Result<()> {
        self.audit_all(std::slice::from_ref(entry)).await
    }

    async fn enqueue_job(
        &mut self,
        id: &str,
        key: &str,
        object: Option<&ObjectMeta>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let d = self.catalog.dialect.as_ref();
        let sql = format!(
            "INSERT INTO reconciler.jobs \
             (scope, doc_id, \"key\", state, attempts, next_attempt_at, size, etag, created_at, \
             updated_at) VALUES ($6, $1, $2, 'queued', 0, $3, $4, $5, $7, $7) \
             {} \"key\" = {}, state = 'queued', attempts = 0, next_attempt_at = {}, \
             lease_until = NULL, leased_by = NULL, last_error = NULL, size = {}, etag = {}, \
             updated_at = {}",
            d.upsert(&["scope", "doc_id"]),
            d.excluded("\"key\""),
            d.excluded("next_attempt_at"),
            d.excluded("size"),
            d.excluded("etag"),
            d.excluded("updated_at"),
        );
        self.execute(
            &sql,
            &[
                id.into(),
                key.into(),
                now.into(),
                object.map(|o| o.size).into(),
                object.and_then(|o| o.etag.clone()).into(),
                (&self.catalog.scope_name).into(),
                Utc::now().into(),
            ],
        )
        .await
        .map_err(|e| Error::database(format!("queueing processing of {id:?}"), e))?;
        Ok(())
    }

    async fn lock_job(&mut self, id: &str) -> Result<Option<Job>> {
        let sql = format!(
            "SELECT * FROM reconciler.jobs WHERE scope = $1 AND doc_id = $2{}",
            self.catalog.dialect.lock_rows()
        );
        let scope = Value::from(&self.catalog.scope_name);
        self.fetch_optional(&sql, &[scope, id.into()], job_from)
            .await
            .map_err(|e| Error::database(format!("locking the job of {id:?}"), e))
    }

    async fn save_job(&mut self, job: &Job) -> Result<()> {
        self.execute(
            "UPDATE reconciler.jobs SET state = $2, attempts = $3, next_attempt_at = $4, \
             lease_until = $5, leased_by = $6, last_error = $7, updated_at = $9 \
             WHERE scope = $8 AND doc_id = $1",
            &[
                (&job.doc_id).into(),
                job.state.as_str().into(),
                i64::from(job.attempts).into(),
                job.next_attempt_at.into(),
                job.lease_until.into(),
                (&job.leased_by).into(),
                job.last_error.as_deref().map(redact::text).into(),
                (&self.catalog.scope_name).into(),
                Utc::now().into(),
            ],
        )
        .await
        .map_err(|e| Error::database(format!("writing the job of {:?}", job.doc_id), e))?;
        Ok(())
    }

    async fn lock_key_events(&mut self, key: &str) -> Result<Option<String>> {
        let context = || format!("locking the event state of {key:?} in reconciler.key_events");
        let d = self.catalog.dialect.as_ref();
        let upsert = format!(
            "INSERT INTO reconciler.key_events (scope, \"key\", updated_at) VALUES ($1, $2, $3) \
             {} \"key\" = {}",
            d.upsert(&["scope", "\"key\""]),
            d.excluded("\"key\"")
        );
        let args = [
            (&self.catalog.scope_name).into(),
            key.into(),
            Utc::now().into(),
        ];
        // The upsert creates the row when new and, either way, locks it (on SQLite the write
        // lock of the immediate transaction already serializes events).
        let sequencer = if d.returning() {
            self.fetch_optional(&format!("{upsert} RETURNING sequencer"), &args, |row| {
                row.text("sequencer")
            })
            .await
        } else {
            self.execute(&upsert, &args)
                .await
                .map_err(|e| Error::database(context(), e))?;
            let select = format!(
                "SELECT sequencer FROM reconciler.key_events WHERE scope = $1 AND \"key\" = $2{}",
                d.lock_rows()
            );
            self.fetch_optional(&select, &args, |row| row.text("sequencer"))
                .await
        }
        .map_err(|e| Error::database(context(), e))?;
        Ok(sequencer.flatten())
    }

    async fn store_key_event(&mut self, event: &KeyEvent) -> Result<()> {
        self.execute(
            "UPDATE reconciler.key_events SET sequencer = COALESCE($2, sequencer), kind = $3, \
             event_time = $4, updated_at = $6 WHERE scope = $5 AND \"key\" = $1",
            &[
                (&event.key).into(),
                (&event.sequencer).into(),
                event.kind.into(),
                event.time.into(),
                (&self.catalog.scope_name).into(),
                Utc::now().into(),
            ],
        )
        .await
        .map_err(|e| Error::database("writing reconciler.key_events", e))?;
        Ok(())
    }

    async fn clear_intent(&mut self, id: &str) -> Result<()> {
        self.execute(
            "DELETE FROM reconciler.intents WHERE scope = $1 AND id = $2",
            &[(&self.catalog.scope_name).into(), id.into()],
        )
        .await
        .map_err(|e| Error::database(format!("clearing the intent {id:?}"), e))?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let done = on_tx!(self.tx, tx => tx.commit().await);
        done.map_err(|e| Error::database("committing", e))
    }
}
