//! The catalog on PostgreSQL. All SQL of the app table is built once, here, from identifiers that
//! config validated and this module quotes. Free text (a job's last error, an audit detail, a
//! sweep's error) is written through `redact::text`: the tables are read by people too.

use super::{
    AuditEntry, Catalog, Intent, KeyEvent, PruneTarget, Pruned, Retention, Scope, SweepLock,
    SweepRecord, Transaction,
};
use crate::config::{DatabaseConfig, StatusWords};
use crate::error::{Error, Result};
use crate::model::{IdKind, Job, JobState, ObjectMeta, Record, Status};
use crate::redact;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use sqlx::Connection;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Duration;

pub struct PgCatalog {
    pool: PgPool,
    table: String,
    /// This deployment's rows in the reconciler's tables.
    scope: Scope,
    /// `scope.name()`, bound into every query on the reconciler's tables.
    scope_name: String,
    /// What an id must look like to be one of the id column's values.
    id_type: IdType,
    statuses: StatusWords,
    /// Whether the reconciler's tables exist: before the first migration (a dry run with a
    /// read-only role), records are read without their job state and there is no audit trail.
    migrated: AtomicBool,
    /// Statements that join the job state (and bind the scope after the id), and those that
    /// cannot.
    with_jobs: Statements,
    without_jobs: Statements,
}

/// The app-table statements, built once from quoted identifiers and the columns' real types.
struct Statements {
    /// Whether the statements that join the job state take the scope as a parameter.
    scoped: bool,
    select_all: String,
    select_one: String,
    lock_one: String,
    /// `lock_one` for the ids of the array `$1`.
    lock_many: String,
    update_status: String,
    /// `update_status` for the ids of the array `$1`.
    update_many: String,
    insert: String,
    ids_with_status: String,
    /// Every `$1`th id in byte order.
    split_points: String,
    /// The id column, quoted, unqualified.
    bare_id: String,
}

impl PgCatalog {
    /// Connect and check that the table and its columns exist, so a typo in the mapping is an
    /// error naming the key now, not a failed query in the middle of a sweep.
    /// `scope` is the deployment this catalog serves: it sees only that deployment's rows of the
    /// reconciler's tables.
    pub async fn connect(config: &DatabaseConfig, scope: Scope) -> Result<Self> {
        let url = config.url.as_deref().unwrap_or_default();
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| Error::database(format!("connecting to {}", redact::url(url)), e))?;
        let table = config.table.quoted();
        let types = column_types(&pool, config, &table).await?;
        let jobs_table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('reconciler.jobs')::text")
                .fetch_one(&pool)
                .await
                .map_err(|e| Error::database("looking for reconciler.jobs", e))?;
        let id_type = IdType::of(&types.id);
        Ok(PgCatalog {
            pool,
            scope_name: scope.name(),
            scope,
            id_type,
            statuses: config.statuses.clone(),
            migrated: AtomicBool::new(jobs_table.is_some()),
            with_jobs: Statements::build(config, &table, &types, id_type, true),
            without_jobs: Statements::build(config, &table, &types, id_type, false),
            table,
        })
    }

    /// Whether the reconciler's tables exist (checked at connect, set by `migrate`).
    fn migrated(&self) -> bool {
        self.migrated.load(AtomicOrdering::Relaxed)
    }

    fn sql(&self) -> &Statements {
        if self.migrated() {
            &self.with_jobs
        } else {
            &self.without_jobs
        }
    }

    /// A query by id on the app table, with the scope bound when the statement joins the jobs.
    /// `None` when `id` cannot be a value of the id column (`foo.txt` in a uuid table): no row
    /// has it, and asking would only be an error.
    fn by_id<'q>(
        &'q self,
        sql: &'q Statements,
        statement: &'q str,
        id: &'q str,
    ) -> Option<sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>> {
        if !self.id_type.admits(id) {
            return None;
        }
        let query = sqlx::query(AssertSqlSafe(statement)).bind(id);
        Some(if sql.scoped {
            query.bind(&self.scope_name)
        } else {
            query
        })
    }

    /// Adopt the rows written before deployments had scopes that are provably this one's (see
    /// the migration that added `scope`, and the README): a job or audit line whose doc is in
    /// this table under this deployment's key, an object or event state at such a key, a sweep
    /// of this bucket and prefix. Cheap once done: the empty scope is the head of each index.
    async fn adopt_legacy_rows(&self) -> Result<()> {
        // Nothing left to adopt is the common case: say so without joining the app table.
        let legacy: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM reconciler.jobs WHERE scope = '') \
             OR EXISTS (SELECT 1 FROM reconciler.audit_log WHERE scope = '') \
             OR EXISTS (SELECT 1 FROM reconciler.objects WHERE scope = '') \
             OR EXISTS (SELECT 1 FROM reconciler.key_events WHERE scope = '') \
             OR EXISTS (SELECT 1 FROM reconciler.sweeps WHERE scope = '')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| Error::database("looking for rows written before scopes", e))?;
        if !legacy {
            return Ok(());
        }
        let ids = format!(
            "SELECT CAST({} AS text) FROM {} t",
            self.with_jobs.bare_id, self.table
        );
        // (statement, whether it takes the bucket as $3)
        let statements = [
            (
                format!(
                    "UPDATE reconciler.jobs SET scope = $1 WHERE scope = '' \
                     AND key = $2 || doc_id AND doc_id IN ({ids})"
                ),
                false,
            ),
            (
                format!(
                    "UPDATE reconciler.audit_log SET scope = $1 WHERE scope = '' \
                     AND key = $2 || doc_id AND doc_id IN ({ids})"
                ),
                false,
            ),
            (
                format!(
                    "UPDATE reconciler.objects SET scope = $1 WHERE scope = '' \
                     AND starts_with(key, $2) AND substr(key, length($2) + 1) IN ({ids})"
                ),
                false,
            ),
            (
                format!(
                    "UPDATE reconciler.key_events SET scope = $1 WHERE scope = '' \
                     AND starts_with(key, $2) AND substr(key, length($2) + 1) IN ({ids})"
                ),
                false,
            ),
            (
                "UPDATE reconciler.sweeps SET scope = $1 WHERE scope = '' \
                 AND prefix = $2 AND bucket = $3"
                    .to_owned(),
                true,
            ),
        ];
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| Error::database("adopting legacy rows", e))?;
        for (sql, with_bucket) in &statements {
            let query = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(&self.scope_name)
                .bind(&self.scope.prefix);
            let query = if *with_bucket {
                query.bind(&self.scope.bucket)
            } else {
                query
            };
            let done = query.execute(&mut *tx).await.map_err(|e| {
                Error::database("adopting the reconciler's rows from before scopes", e)
            })?;
            if done.rows_affected() > 0 {
                tracing::info!(
                    rows = done.rows_affected(),
                    scope = %self.scope_name,
                    "adopted rows written before deployments had scopes"
                );
            }
        }
        tx.commit()
            .await
            .map_err(|e| Error::database("adopting legacy rows", e))
    }

    /// Delete this scope's rows of `table` whose `older` column is before `cutoff`, a batch per
    /// statement so that no statement holds many locks or runs long.
    async fn prune_table(&self, target: &PruneTarget) -> Result<u64> {
        const BATCH: i64 = 1000;
        let PruneTarget {
            table,
            older,
            cutoff,
        } = *target;
        let sql = format!(
            "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} \
             WHERE scope = $1 AND {older} < $2 LIMIT $3)"
        );
        let mut deleted = 0;
        loop {
            let done = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(&self.scope_name)
                .bind(cutoff)
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

    fn record_from(&self, row: &PgRow) -> std::result::Result<Record, sqlx::Error> {
        let raw_status: Option<String> = row.try_get("status")?;
        let raw_status = raw_status.unwrap_or_default();
        let created_at: Option<DateTime<Utc>> = row.try_get("created_at")?;
        let job: Option<String> = row.try_get("job_state")?;
        Ok(Record {
            id: row.try_get("id")?,
            status: self.statuses.status(&raw_status),
            raw_status,
            // A row without a creation time cannot be judged old: it stays in grace.
            created_at: created_at.unwrap_or(DateTime::<Utc>::MAX_UTC),
            updated_at: row.try_get("updated_at")?,
            job: job.as_deref().and_then(JobState::parse),
        })
    }
}

/// The SQL types of the mapped columns, by the names config gave.
struct ColumnTypes {
    id: String,
    status: String,
}

async fn column_types(pool: &PgPool, config: &DatabaseConfig, table: &str) -> Result<ColumnTypes> {
    let rows = sqlx::query(
        "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type \
         FROM pg_attribute a \
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .map_err(|e| Error::database(format!("reading the columns of table {table}"), e))?;
    if rows.is_empty() {
        return Err(Error::config(
            "database.table",
            format!("table {table} does not exist (or this role cannot see it)"),
        ));
    }
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: String = row
            .try_get("name")
            .map_err(|e| Error::database("reading pg_attribute", e))?;
        let ty: String = row
            .try_get("type")
            .map_err(|e| Error::database("reading pg_attribute", e))?;
        columns.push((name, ty));
    }
    let find = |key: &str, column: &str| -> Result<String> {
        columns
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, ty)| ty.clone())
            .ok_or_else(|| Error::config(key, format!("table {table} has no column {column:?}")))
    };
    let id = find("database.id_column", config.id_column.as_str())?;
    let status = find("database.status_column", config.status_column.as_str())?;
    find(
        "database.created_at_column",
        config.created_at_column.as_str(),
    )?;
    if let Some(updated_at) = &config.updated_at_column {
        find("database.updated_at_column", updated_at.as_str())?;
    }
    Ok(ColumnTypes { id, status })
}

/// What the id column holds, as far as looking a row up by id is concerned. Ids arrive as text
/// (object keys); comparing `CAST(id AS text)` would defeat the primary-key index, so a uuid or
/// integer id is compared in its own type, after checking that the text is that type's canonical
/// spelling (the one `CAST(id AS text)` gives, so the same ids match as before).
#[derive(Debug, Clone, Copy, PartialEq)]
enum IdType {
    /// text, varchar: compared as they are.
    Text,
    Uuid,
    /// smallint, integer, bigint, with their range.
    Integer {
        min: i64,
        max: i64,
    },
    /// Anything else: compared as text (correct, but without the index).
    Other,
}

impl IdType {
    /// From `format_type`'s spelling of the column's type.
    fn of(sql_type: &str) -> IdType {
        match sql_type {
            "text" => IdType::Text,
            t if t.starts_with("character varying") => IdType::Text,
            "uuid" => IdType::Uuid,
            "smallint" => IdType::Integer {
                min: i16::MIN.into(),
                max: i16::MAX.into(),
            },
            "integer" => IdType::Integer {
                min: i32::MIN.into(),
                max: i32::MAX.into(),
            },
            "bigint" => IdType::Integer {
                min: i64::MIN,
                max: i64::MAX,
            },
            _ => IdType::Other,
        }
    }

    /// Which texts are ids of this type.
    fn kind(self) -> IdKind {
        match self {
            IdType::Text | IdType::Other => IdKind::Text,
            IdType::Uuid => IdKind::Uuid,
            IdType::Integer { min, max } => IdKind::Integer { min, max },
        }
    }

    /// Whether `id` is the text of a value of this type.
    fn admits(self, id: &str) -> bool {
        self.kind().refusal(id).is_none()
    }

    /// The condition `column = $1`, in the column's type where that keeps the index usable.
    fn equals_param(self, column: &str, sql_type: &str) -> String {
        match self {
            IdType::Text => format!("{column} = $1"),
            IdType::Uuid | IdType::Integer { .. } => format!("{column} = CAST($1 AS {sql_type})"),
            IdType::Other => format!("CAST({column} AS text) = $1"),
        }
    }

    /// The condition that `column` is one of the text array `$1`, as `equals_param` compares.
    fn in_array_param(self, column: &str, sql_type: &str) -> String {
        match self {
            IdType::Text => format!("{column} = ANY($1)"),
            IdType::Uuid | IdType::Integer { .. } => {
                format!("{column} = ANY(CAST($1 AS {sql_type}[]))")
            }
            IdType::Other => format!("CAST({column} AS text) = ANY($1)"),
        }
    }
}

impl Statements {
    fn build(
        config: &DatabaseConfig,
        table: &str,
        types: &ColumnTypes,
        id_type: IdType,
        with_jobs: bool,
    ) -> Self {
        let id = format!("t.{}", config.id_column.quoted());
        let status = config.status_column.quoted();
        let created_at = config.created_at_column.quoted();
        let updated_at = config
            .updated_at_column
            .as_ref()
            .map(|c| format!("CAST(t.{} AS timestamptz)", c.quoted()))
            .unwrap_or_else(|| "CAST(NULL AS timestamptz)".into());
        // Casts make any id type (text, uuid, bigint) and any status type (text, enum) work; the
        // byte-order collation makes the order match S3's listing whatever the column's collation.
        // App columns are qualified: the jobs table has created_at and updated_at too.
        // Only this deployment's jobs: the scope is the statement's last parameter.
        let from = |scope_param: u8| {
            if with_jobs {
                format!(
                    "{table} t LEFT JOIN reconciler.jobs j \
                     ON j.scope = ${scope_param} AND j.doc_id = CAST({id} AS text)"
                )
            } else {
                format!("{table} t")
            }
        };
        let job_state = if with_jobs {
            "j.state"
        } else {
            "CAST(NULL AS text)"
        };
        let columns = format!(
            "CAST({id} AS text) AS id, CAST(t.{status} AS text) AS status, \
             CAST(t.{created_at} AS timestamptz) AS created_at, {updated_at} AS updated_at, \
             {job_state} AS job_state"
        );
        let by_id = id_type.equals_param(&id, &types.id);
        let touch = config
            .updated_at_column
            .as_ref()
            .map(|c| format!(", {} = now()", c.quoted()))
            .unwrap_or_default();
        let bare_id = config.id_column.quoted();
        Statements {
            scoped: with_jobs,
            select_all: format!(
                "SELECT {columns} FROM {} ORDER BY CAST({id} AS text) COLLATE \"C\"",
                from(1)
            ),
            select_one: format!("SELECT {columns} FROM {} WHERE {by_id}", from(2)),
            lock_one: format!(
                "SELECT {columns} FROM {} WHERE {by_id} FOR UPDATE OF t",
                from(2)
            ),
            // Locked in byte order of the ids: two transactions locking overlapping sets take
            // their rows in the same order, and cannot deadlock on each other.
            lock_many: format!(
                "SELECT {columns} FROM {} WHERE {} ORDER BY CAST({id} AS text) COLLATE \"C\" \
                 FOR UPDATE OF t",
                from(2),
                id_type.in_array_param(&id, &types.id)
            ),
            update_status: format!(
                "UPDATE {table} SET {status} = CAST($2 AS {}){touch} WHERE {}",
                types.status,
                id_type.equals_param(&bare_id, &types.id)
            ),
            update_many: format!(
                "UPDATE {table} SET {status} = CAST($2 AS {}){touch} WHERE {}",
                types.status,
                id_type.in_array_param(&bare_id, &types.id)
            ),
            // Only id and status: every other column keeps the app's default.
            insert: format!(
                "INSERT INTO {table} ({bare_id}, {status}) VALUES (CAST($1 AS {}), CAST($2 AS {})) \
                 ON CONFLICT DO NOTHING",
                types.id, types.status
            ),
            ids_with_status: format!(
                "SELECT CAST({bare_id} AS text) FROM {table} WHERE CAST({status} AS text) = $1 \
                 ORDER BY 1"
            ),
            // The order of `select_all`, so that the same index serves both.
            split_points: format!(
                "SELECT id FROM (SELECT CAST({id} AS text) AS id, \
                 row_number() OVER (ORDER BY CAST({id} AS text) COLLATE \"C\") AS n \
                 FROM {table} t) numbered WHERE n % $1 = 0"
            ),
            bare_id,
        }
    }
}

#[async_trait::async_trait]
impl Catalog for PgCatalog {
    fn records(&self) -> BoxStream<'_, Result<Record>> {
        let context = format!("reading table {}", self.table);
        let sql = self.sql();
        let query = sqlx::query(AssertSqlSafe(sql.select_all.as_str()));
        let query = if sql.scoped {
            query.bind(&self.scope_name)
        } else {
            query
        };
        query
            .fetch(&self.pool)
            .map(move |row| {
                row.and_then(|row| self.record_from(&row))
                    .map_err(|e| Error::database(context.clone(), e))
            })
            .boxed()
    }

    async fn record(&self, id: &str) -> Result<Option<Record>> {
        let sql = self.sql();
        let Some(query) = self.by_id(sql, &sql.select_one, id) else {
            return Ok(None);
        };
        let row = query
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::database(format!("reading {id:?} from {}", self.table), e))?;
        row.map(|row| self.record_from(&row))
            .transpose()
            .map_err(|e| Error::database(format!("reading {id:?} from {}", self.table), e))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>> {
        let tx = self
            .pool
            .begin()
            .await
            .map_err(|e| Error::database("starting a transaction", e))?;
        Ok(Box::new(PgTransaction { catalog: self, tx }))
    }

    async fn migrate(&self) -> Result<()> {
        let mut migrator = sqlx::migrate!("./migrations");
        // Keep sqlx's bookkeeping table in our schema too: nothing of ours in the app's schemas.
        migrator.create_schema("reconciler");
        migrator.dangerous_set_table_name("reconciler._sqlx_migrations");
        migrator.run(&self.pool).await?;
        self.migrated.store(true, AtomicOrdering::Relaxed);
        self.adopt_legacy_rows().await
    }

    async fn sweep_started(&self, sweep: &SweepRecord) -> Result<()> {
        let context = "recording the sweep in reconciler.sweeps";
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| Error::database(context, e))?;
        // Under the sweep lock no other sweep of this scope runs: a `running` row is a dead
        // process's.
        let interrupted = sqlx::query(
            "UPDATE reconciler.sweeps SET outcome = 'interrupted', finished_at = $2, \
             error = 'the process running this sweep ended before it finished' \
             WHERE scope = $1 AND outcome = 'running'",
        )
        .bind(&self.scope_name)
        .bind(sweep.started_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::database(context, e))?;
        sqlx::query(
            "INSERT INTO reconciler.sweeps (id, started_at, bucket, prefix, scope) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(sweep.id)
        .bind(sweep.started_at)
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
            "UPDATE reconciler.sweeps SET finished_at = $2, objects_listed = $3, \
             records_scanned = $4, counts = $5, outcome = $6, error = $7 \
             WHERE id = $1 AND scope = $8",
        )
        .bind(sweep.id)
        .bind(sweep.finished_at)
        .bind(i64::try_from(sweep.objects_listed).unwrap_or(i64::MAX))
        .bind(i64::try_from(sweep.records_scanned).unwrap_or(i64::MAX))
        .bind(&sweep.counts)
        .bind(sweep.outcome)
        .bind(sweep.error.as_deref().map(redact::text))
        .bind(&self.scope_name)
        .execute(&self.pool)
        .await
        .map_err(|e| Error::database("recording the sweep in reconciler.sweeps", e))?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        tokio::time::timeout(
            Duration::from_secs(3),
            sqlx::query("SELECT 1").execute(&self.pool),
        )
        .await
        .map_err(|_| Error::database("pinging", sqlx::Error::PoolTimedOut))?
        .map_err(|e| Error::database("pinging", e))?;
        Ok(())
    }

    async fn try_sweep_lock(&self) -> Result<Option<Box<dyn SweepLock>>> {
        // A session-level advisory lock on a connection of its own, taken out of the pool: it is
        // released when that session ends, however the sweep ends (even if the process dies).
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Error::database("connecting for the sweep lock", e))?
            .detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(&self.scope_name))
            .fetch_one(&mut conn)
            .await
            .map_err(|e| Error::database("taking the sweep lock", e))?;
        if !got {
            let _ = conn.close().await;
            return Ok(None);
        }
        Ok(Some(Box::new(PgSweepLock { conn })))
    }

    async fn claim_job(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Job>> {
        let lease_until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        // The attempt counts now, not when its result is written: a hook that kills the worker
        // would otherwise be claimed again and again with its budget untouched.
        let row = sqlx::query(
            "UPDATE reconciler.jobs SET state = 'running', leased_by = $1, lease_until = $3, \
             attempts = attempts + 1, updated_at = $2 \
             WHERE scope = $4 AND doc_id = (SELECT doc_id FROM reconciler.jobs \
                 WHERE scope = $4 AND ((state = 'queued' AND next_attempt_at <= $2) \
                    OR (state = 'running' AND lease_until <= $2)) \
                 ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING *",
        )
        .bind(worker)
        .bind(now)
        .bind(lease_until)
        .bind(&self.scope_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::database("claiming a job in reconciler.jobs", e))?;
        row.map(|row| job_from(&row))
            .transpose()
            .map_err(|e| Error::database("reading reconciler.jobs", e))
    }

    async fn job(&self, id: &str) -> Result<Option<Job>> {
        if !self.migrated() {
            return Ok(None);
        }
        let row = sqlx::query("SELECT * FROM reconciler.jobs WHERE scope = $1 AND doc_id = $2")
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
        let depth: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reconciler.jobs \
             WHERE scope = $1 AND state IN ('queued', 'running')",
        )
        .bind(&self.scope_name)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| Error::database("counting reconciler.jobs", e))?;
        Ok(u64::try_from(depth).unwrap_or(0))
    }

    async fn ids_with_status(&self, status: Status) -> Result<Vec<String>> {
        sqlx::query_scalar(AssertSqlSafe(self.sql().ids_with_status.as_str()))
            .bind(self.statuses.word(status))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::database(format!("listing {status} docs in {}", self.table), e))
    }

    fn id_kind(&self) -> IdKind {
        self.id_type.kind()
    }

    fn concurrent_writes(&self) -> usize {
        // One connection is the sweep lock's, one stays free for the event path and workers.
        let pool = self.pool.options().get_max_connections() as usize;
        pool.saturating_sub(2).max(1)
    }

    async fn split_points(&self, every: u64) -> Result<Vec<String>> {
        sqlx::query_scalar(AssertSqlSafe(self.sql().split_points.as_str()))
            .bind(i64::try_from(every.max(1)).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::database(format!("sampling the ids of {}", self.table), e))
    }

    async fn prune(&self, retention: &Retention, now: DateTime<Utc>) -> Result<Pruned> {
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
             FROM reconciler.audit_log WHERE scope = $3 AND (doc_id = $1 OR key = $2) \
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
                Ok(AuditEntry {
                    at: row.try_get("at")?,
                    sweep_id: row.try_get("sweep_id")?,
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
        let context = || format!("noting the intent for {:?}", intent.key());
        sqlx::query(
            "INSERT INTO reconciler.intents (scope, id, key, intent) VALUES ($1, $2, $3, $4)",
        )
        .bind(&self.scope_name)
        .bind(&intent.id)
        .bind(intent.key())
        .bind(
            intent
                .to_json()
                .map_err(|e| Error::database(context(), e))?,
        )
        .execute(&self.pool)
        .await
        .map_err(|e| Error::database(context(), e))?;
        Ok(())
    }

    async fn intents(&self) -> Result<Vec<Intent>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, intent FROM reconciler.intents WHERE scope = $1 \
             ORDER BY key COLLATE \"C\", created_at, id",
        )
        .bind(&self.scope_name)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::database("reading reconciler.intents", e))?;
        Intent::from_json(&rows)
    }
}

struct PgTransaction<'c> {
    catalog: &'c PgCatalog,
    tx: sqlx::Transaction<'static, Postgres>,
}

#[async_trait::async_trait]
impl Transaction for PgTransaction<'_> {
    async fn lock_record(&mut self, id: &str) -> Result<Option<Record>> {
        let context = || format!("locking {id:?} in {}", self.catalog.table);
        let sql = self.catalog.sql();
        let Some(query) = self.catalog.by_id(sql, &sql.lock_one, id) else {
            return Ok(None);
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
        if !self.catalog.id_type.admits(id) {
            return Ok(()); // no row has this id
        }
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

    async fn lock_records(&mut self, ids: &[String]) -> Result<Vec<Option<Record>>> {
        let context = || format!("locking {} records in {}", ids.len(), self.catalog.table);
        let sql = self.catalog.sql();
        let id_type = self.catalog.id_type;
        // An id the column cannot hold has no row (asking would only be an error).
        let asked: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| id_type.admits(id))
            .collect();
        let query = sqlx::query(AssertSqlSafe(sql.lock_many.as_str())).bind(&asked);
        let query = if sql.scoped {
            query.bind(&self.catalog.scope_name)
        } else {
            query
        };
        let rows = query
            .fetch_all(&mut *self.tx)
            .await
            .map_err(|e| Error::database(context(), e))?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let record = self
                .catalog
                .record_from(row)
                .map_err(|e| Error::database(context(), e))?;
            found.insert(record.id.clone(), record);
        }
        Ok(ids.iter().map(|id| found.remove(id)).collect())
    }

    async fn set_statuses(&mut self, changes: &[(String, Status)]) -> Result<()> {
        for status in Status::ALL {
            let ids: Vec<&str> = changes
                .iter()
                .filter(|(id, s)| *s == status && self.catalog.id_type.admits(id))
                .map(|(id, _)| id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            sqlx::query(AssertSqlSafe(self.catalog.sql().update_many.as_str()))
                .bind(&ids)
                .bind(self.catalog.statuses.word(status))
                .execute(&mut *self.tx)
                .await
                .map_err(|e| {
                    Error::database(
                        format!(
                            "setting {} records to {status} in {}",
                            ids.len(),
                            self.catalog.table
                        ),
                        e,
                    )
                })?;
        }
        Ok(())
    }

    async fn audit_all(&mut self, entries: &[AuditEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&AuditEntry) -> Option<String>| -> Vec<Option<String>> {
            entries.iter().map(f).collect()
        };
        // One row per array element: the arrays are the entries' columns.
        sqlx::query(
            "INSERT INTO reconciler.audit_log \
             (at, sweep_id, finding, action, doc_id, key, old_status, new_status, detail, scope) \
             SELECT at, sweep_id, finding, action, doc_id, key, old_status, new_status, detail, $10 \
             FROM unnest($1::timestamptz[], $2::uuid[], $3::text[], $4::text[], $5::text[], \
                         $6::text[], $7::text[], $8::text[], $9::text[]) \
             AS e(at, sweep_id, finding, action, doc_id, key, old_status, new_status, detail)",
        )
        .bind(entries.iter().map(|e| e.at).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.sweep_id).collect::<Vec<_>>())
        .bind(column(|e| Some(e.finding.clone())))
        .bind(column(|e| Some(e.action.clone())))
        .bind(column(|e| Some(e.doc_id.clone())))
        .bind(column(|e| Some(e.key.clone())))
        .bind(column(|e| e.old_status.clone()))
        .bind(column(|e| e.new_status.clone()))
        .bind(column(|e| Some(redact::text(&e.detail))))
        .bind(&self.catalog.scope_name)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::database("writing reconciler.audit_log", e))?;
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
             VALUES ($5, $1, $2, $3, $4, now()) ON CONFLICT (scope, key) DO UPDATE \
             SET size = EXCLUDED.size, etag = EXCLUDED.etag, \
             last_modified = EXCLUDED.last_modified, noted_at = now()",
        )
        .bind(&object.key)
        .bind(object.size)
        .bind(&object.etag)
        .bind(object.last_modified)
        .bind(&self.catalog.scope_name)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::database("writing reconciler.objects", e))?;
        Ok(())
    }

    async fn audit(&mut self, entry: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO reconciler.audit_log \
             (at, sweep_id, finding, action, doc_id, key, old_status, new_status, detail, scope) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(entry.at)
        .bind(entry.sweep_id)
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
             (scope, doc_id, key, state, attempts, next_attempt_at, size, etag) \
             VALUES ($6, $1, $2, 'queued', 0, $3, $4, $5) \
             ON CONFLICT (scope, doc_id) DO UPDATE SET key = EXCLUDED.key, state = 'queued', attempts = 0, \
             next_attempt_at = EXCLUDED.next_attempt_at, lease_until = NULL, leased_by = NULL, \
             last_error = NULL, size = EXCLUDED.size, etag = EXCLUDED.etag, updated_at = now()",
        )
        .bind(id)
        .bind(key)
        .bind(now)
        .bind(object.map(|o| o.size))
        .bind(object.and_then(|o| o.etag.clone()))
        .bind(&self.catalog.scope_name)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::database(format!("queueing processing of {id:?}"), e))?;
        Ok(())
    }

    async fn lock_job(&mut self, id: &str) -> Result<Option<Job>> {
        let row = sqlx::query(
            "SELECT * FROM reconciler.jobs WHERE scope = $1 AND doc_id = $2 FOR UPDATE",
        )
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
            "UPDATE reconciler.jobs SET state = $2, attempts = $3, next_attempt_at = $4, \
             lease_until = $5, leased_by = $6, last_error = $7, updated_at = now() \
             WHERE scope = $8 AND doc_id = $1",
        )
        .bind(&job.doc_id)
        .bind(job.state.as_str())
        .bind(i32::try_from(job.attempts).unwrap_or(i32::MAX))
        .bind(job.next_attempt_at)
        .bind(job.lease_until)
        .bind(&job.leased_by)
        .bind(job.last_error.as_deref().map(redact::text))
        .bind(&self.catalog.scope_name)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::database(format!("writing the job of {:?}", job.doc_id), e))?;
        Ok(())
    }

    async fn lock_key_events(&mut self, key: &str) -> Result<Option<String>> {
        // One round trip: the upsert creates the row when new and, either way, locks it.
        sqlx::query_scalar(
            "INSERT INTO reconciler.key_events (scope, key) VALUES ($1, $2) \
             ON CONFLICT (scope, key) DO UPDATE SET key = EXCLUDED.key RETURNING sequencer",
        )
        .bind(&self.catalog.scope_name)
        .bind(key)
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
            "UPDATE reconciler.key_events SET sequencer = COALESCE($2, sequencer), kind = $3, \
             event_time = $4, updated_at = now() WHERE scope = $5 AND key = $1",
        )
        .bind(&event.key)
        .bind(&event.sequencer)
        .bind(event.kind)
        .bind(event.time)
        .bind(&self.catalog.scope_name)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::database("writing reconciler.key_events", e))?;
        Ok(())
    }

    async fn clear_intent(&mut self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM reconciler.intents WHERE scope = $1 AND id = $2")
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

fn job_from(row: &PgRow) -> std::result::Result<Job, sqlx::Error> {
    let state: String = row.try_get("state")?;
    let attempts: i32 = row.try_get("attempts")?;
    Ok(Job {
        doc_id: row.try_get("doc_id")?,
        key: row.try_get("key")?,
        state: JobState::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown job state {state:?}").into(),
        })?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_at: row.try_get("next_attempt_at")?,
        lease_until: row.try_get("lease_until")?,
        leased_by: row.try_get("leased_by")?,
        last_error: row.try_get("last_error")?,
        size: row.try_get("size")?,
        etag: row.try_get("etag")?,
    })
}

struct PgSweepLock {
    conn: sqlx::PgConnection,
}

#[async_trait::async_trait]
impl SweepLock for PgSweepLock {
    async fn release(self: Box<Self>) {
        // Closing the session releases its advisory locks.
        let _ = self.conn.close().await;
    }
}

/// A stable 64-bit key for an advisory lock (FNV-1a): the same scope, the same lock, on every
/// replica and every version.
fn lock_key(scope: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("upload-reconciler/sweep/{scope}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// What `reconciler.objects` holds of the object at `key`, read through `executor` (the pool, or
/// a transaction).
async fn noted_object<'e>(
    executor: impl sqlx::Executor<'e, Database = Postgres>,
    scope: &str,
    key: &str,
) -> Result<Option<ObjectMeta>> {
    let row = sqlx::query(
        "SELECT size, etag, last_modified FROM reconciler.objects \
         WHERE scope = $2 AND key = $1",
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
            last_modified: row
                .try_get::<Option<DateTime<Utc>>, _>("last_modified")?
                .unwrap_or_default(),
            linked: false,
        })
    })
    .transpose()
    .map_err(|e: sqlx::Error| Error::database("reading reconciler.objects", e))
}
