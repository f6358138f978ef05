//! PostgreSQL: the reconciler's tables in schema `reconciler`; row locks `FOR UPDATE OF t`; job
//! claims `FOR UPDATE SKIP LOCKED`; the sweep lock a session-level advisory lock. Ids are
//! compared in the id column's own type where that keeps its index usable.

use super::dialect::{Column, Dialect, SessionLock, lock_hash};
use super::exec::{Bind, Cells, Db, Placeholders, Value};
use crate::catalog::{Scope, SweepLock};
use crate::config::{DatabaseConfig, TableName};
use crate::error::{Error, Result};
use crate::model::IdKind;
use crate::redact;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

pub struct PgDialect {
    db: Db,
    pool: PgPool,
    migrated: AtomicBool,
}

impl PgDialect {
    pub async fn connect(config: &DatabaseConfig) -> Result<Self> {
        let url = config.url.as_deref().unwrap_or_default();
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| Error::database(format!("connecting to {}", redact::url(url)), e))?;
        let jobs_table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('reconciler.jobs')::text")
                .fetch_one(&pool)
                .await
                .map_err(|e| Error::database("looking for reconciler.jobs", e))?;
        Ok(PgDialect {
            db: Db::Postgres(pool.clone()),
            pool,
            migrated: AtomicBool::new(jobs_table.is_some()),
        })
    }
}

/// What the id column holds, as far as looking a row up by id is concerned. Ids arrive as text
/// (object keys); comparing `CAST(id AS text)` would defeat the primary-key index, so a uuid or
/// integer id is compared in its own type, after checking that the text is that type's canonical
/// spelling (the one `CAST(id AS text)` gives, so the same ids match).
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
}

#[async_trait::async_trait]
impl Dialect for PgDialect {
    fn name(&self) -> &'static str {
        "Postgres"
    }

    fn db(&self) -> &Db {
        &self.db
    }

    fn placeholders(&self) -> Placeholders {
        Placeholders::Dollar
    }

    fn text(&self, expr: &str) -> String {
        format!("CAST({expr} AS text)")
    }

    fn byte_order(&self, expr: &str) -> String {
        format!("{expr} COLLATE \"C\"")
    }

    fn own_order(&self, column: &str) -> String {
        self.byte_order(column)
    }

    fn app_time(&self, expr: &str, alias: &str) -> String {
        format!("CAST({expr} AS timestamptz) AS {alias}")
    }

    fn id_kind(&self, info: &Column) -> IdKind {
        match IdType::of(&info.sql_type) {
            IdType::Text | IdType::Other => IdKind::Text,
            IdType::Uuid => IdKind::Uuid,
            IdType::Integer { min, max } => IdKind::Integer { min, max },
        }
    }

    fn one_of(&self, column: &str, info: &Column, params: &[String]) -> String {
        let list = |wrap: &dyn Fn(&str) -> String| {
            params
                .iter()
                .map(|p| wrap(p))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match IdType::of(&info.sql_type) {
            IdType::Text => format!("{column} IN ({})", list(&|p| p.to_owned())),
            IdType::Uuid | IdType::Integer { .. } => format!(
                "{column} IN ({})",
                list(&|p| format!("CAST({p} AS {})", info.sql_type))
            ),
            IdType::Other => format!("CAST({column} AS text) IN ({})", list(&|p| p.to_owned())),
        }
    }

    fn value_as(&self, param: &str, info: &Column) -> String {
        // Casts make any id type (text, uuid, bigint) and any status type (text, an enum) work.
        format!("CAST({param} AS {})", info.sql_type)
    }

    fn lock_rows(&self) -> &'static str {
        " FOR UPDATE"
    }

    fn lock_app_rows(&self) -> &'static str {
        // Not the jobs' rows: they are the nullable side of the join.
        " FOR UPDATE OF t"
    }

    fn skip_locked(&self) -> &'static str {
        " FOR UPDATE SKIP LOCKED"
    }

    fn delete_some(&self, table: &str, condition: &str, limit: &str) -> String {
        format!(
            "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE {condition} \
             LIMIT {limit})"
        )
    }

    fn touch(&self, column: &str) -> String {
        format!("{column} = now()")
    }

    async fn columns(&self, table: &TableName) -> Result<Vec<Column>> {
        let quoted = table.quoted();
        let rows = sqlx::query(
            "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type, \
             NOT a.attnotnull AS nullable, \
             (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') AS filled \
             FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
        )
        .bind(&quoted)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::database(format!("reading the columns of table {quoted}"), e))?;
        rows.iter()
            .map(|row| {
                Ok(Column {
                    name: row.try_get("name")?,
                    sql_type: row.try_get("type")?,
                    nullable: row.try_get("nullable")?,
                    filled: row.try_get("filled")?,
                    collation: None,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(|e| Error::database("reading pg_attribute", e))
    }

    fn migrated(&self) -> bool {
        self.migrated.load(Ordering::Relaxed)
    }

    async fn migrate(&self) -> Result<()> {
        let mut migrator = sqlx::migrate!("./migrations");
        // Keep sqlx's bookkeeping table in our schema too: nothing of ours in the app's schemas.
        migrator.create_schema("reconciler");
        migrator.dangerous_set_table_name("reconciler._sqlx_migrations");
        migrator.run(&self.pool).await?;
        self.migrated.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn after_migrate(&self, scope: &Scope, ids: &str) -> Result<()> {
        adopt_legacy_rows(&self.pool, scope, ids).await
    }

    async fn try_sweep_lock(&self, scope: &str) -> Result<Option<Box<dyn SweepLock>>> {
        // A session-level advisory lock.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Error::database("connecting for the sweep lock", e))?
            .detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(i64::from_ne_bytes(lock_hash(scope).to_ne_bytes()))
            .fetch_one(&mut conn)
            .await
            .map_err(|e| Error::database("taking the sweep lock", e))?;
        Ok(SessionLock::held(conn, got).await)
    }
}

/// Adopt the rows written before deployments had scopes that are provably this one's (see the
/// migration that added `scope`, and docs/operations.md): a job or audit line whose doc is in
/// this table under this deployment's key, an object or event state at such a key, a sweep of
/// this bucket and prefix. Cheap once done: the empty scope is the head of each index. `ids`
/// selects the text of every id of the app table.
async fn adopt_legacy_rows(pool: &PgPool, scope: &Scope, ids: &str) -> Result<()> {
    // Nothing left to adopt is the common case: say so without joining the app table.
    let legacy: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM reconciler.jobs WHERE scope = '') \
         OR EXISTS (SELECT 1 FROM reconciler.audit_log WHERE scope = '') \
         OR EXISTS (SELECT 1 FROM reconciler.objects WHERE scope = '') \
         OR EXISTS (SELECT 1 FROM reconciler.key_events WHERE scope = '') \
         OR EXISTS (SELECT 1 FROM reconciler.sweeps WHERE scope = '')",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| Error::database("looking for rows written before scopes", e))?;
    if !legacy {
        return Ok(());
    }
    let name = scope.name();
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
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| Error::database("adopting legacy rows", e))?;
    for (sql, with_bucket) in &statements {
        let query = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(&name)
            .bind(&scope.prefix);
        let query = if *with_bucket {
            query.bind(&scope.bucket)
        } else {
            query
        };
        let done = query
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::database("adopting the reconciler's rows from before scopes", e))?;
        if done.rows_affected() > 0 {
            tracing::info!(
                rows = done.rows_affected(),
                scope = %name,
                "adopted rows written before deployments had scopes"
            );
        }
    }
    tx.commit()
        .await
        .map_err(|e| Error::database("adopting legacy rows", e))
}

impl Bind for sqlx::query::Query<'_, Postgres, PgArguments> {
    fn bind_value(self, value: &Value) -> Self {
        match value {
            Value::Text(text) => self.bind(text.clone()),
            Value::Int(n) => self.bind(*n),
            Value::Bool(b) => self.bind(*b),
            Value::Float(x) => self.bind(*x),
            Value::Time(time) => self.bind(*time),
            Value::Uuid(id) => self.bind(*id),
            Value::Json(json) => self.bind(json.clone()),
        }
    }
}

impl Cells for PgRow {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }

    fn int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        // Postgres decodes only the column's own width.
        match self.try_get::<Option<i64>, _>(column) {
            Ok(n) => Ok(n),
            Err(_) => match self.try_get::<Option<i32>, _>(column) {
                Ok(n) => Ok(n.map(i64::from)),
                Err(_) => Ok(self.try_get::<Option<i16>, _>(column)?.map(i64::from)),
            },
        }
    }

    fn time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.try_get(column)
    }

    fn app_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.try_get(column)
    }

    fn uuid(&self, column: &str) -> Result<Option<Uuid>, sqlx::Error> {
        self.try_get(column)
    }
}
