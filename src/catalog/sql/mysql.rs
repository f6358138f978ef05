//! MySQL 8 and MariaDB 10.6+: the reconciler's tables in a database of their own beside the
//! app's (`<db>_reconciler` unless `database.reconciler_database` says), identifiers quoted as
//! on the other databases (the sessions run with `ANSI_QUOTES`). Text is compared and ordered as
//! its UTF-8 bytes, whatever the column's collation: the default ones (`utf8mb4_general_ci`,
//! `utf8mb4_0900_ai_ci`) are case- and accent-insensitive, and `utf8mb4_bin` ignores trailing
//! spaces, while S3 keys are neither. Row locks `FOR UPDATE`; job claims `SKIP LOCKED`; the
//! sweep lock `GET_LOCK`, held by a session of its own.

use super::dialect::{Column, Dialect, SessionLock, lock_hash};
use super::exec::{Bind, Cells, Db, Placeholders, Value, decode_error, parse_uuid};
use crate::catalog::SweepLock;
use crate::config::{DatabaseConfig, TableName};
use crate::error::{Error, Result};
use crate::model::IdKind;
use crate::redact;
use chrono::{DateTime, Utc};
use sqlx::mysql::{
    MySql, MySqlArguments, MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow,
};
use sqlx::{AssertSqlSafe, Row};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

pub struct MySqlDialect {
    db: Db,
    pool: MySqlPool,
    options: MySqlConnectOptions,
    /// The reconciler's database, unquoted and quoted.
    own: String,
    own_quoted: String,
    migrated: AtomicBool,
}

fn options_of(url: &str) -> std::result::Result<MySqlConnectOptions, String> {
    let url = match url.strip_prefix("mariadb:") {
        Some(rest) => format!("mysql:{rest}"),
        None => url.to_owned(),
    };
    // sqlx's message may quote the URL: say only which URL, redacted.
    MySqlConnectOptions::from_str(&url)
        .map_err(|_| format!("{} is not a MySQL URL", redact::url(&url)))
}

/// The database the reconciler's tables go to for the app database `app`: `reconciler_database`
/// when set, else `<app>_reconciler`.
pub fn own_database(app: &str, configured: Option<&str>) -> String {
    configured.map_or_else(|| format!("{app}_reconciler"), str::to_owned)
}

impl MySqlDialect {
    pub async fn connect(config: &DatabaseConfig) -> Result<Self> {
        let url = config.url.as_deref().unwrap_or_default();
        let options = options_of(url).map_err(|message| Error::config("database.url", message))?;
        let Some(app) = options.get_database().map(str::to_owned) else {
            return Err(Error::config(
                "database.url",
                format!(
                    "{} names no database (mysql://user@host/<database>)",
                    redact::url(url)
                ),
            ));
        };
        let own = own_database(&app, config.reconciler_database.as_deref());
        if own.is_empty() || own.len() > 64 || own.contains(['\0', '`', '"', '/', '\\', '.']) {
            return Err(Error::config(
                "database.reconciler_database",
                format!("{own:?} is not a usable MySQL database name"),
            ));
        }
        let pool = pool(&options, config.max_connections)
            .await
            .map_err(|e| Error::database(format!("connecting to {}", redact::url(url)), e))?;
        check_version(&pool).await?;
        let jobs: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = ? AND table_name = 'jobs'",
        )
        .bind(&own)
        .fetch_one(&pool)
        .await
        .map_err(|e| Error::database(format!("looking for {own}.jobs"), e))?;
        Ok(MySqlDialect {
            db: Db::MySql(pool.clone()),
            pool,
            options,
            own_quoted: format!("\"{own}\""),
            own,
            migrated: AtomicBool::new(jobs > 0),
        })
    }
}

/// A pool whose sessions quote identifiers as the other databases do (`"docs"."id"`); sqlx sets
/// the session's time zone to UTC, in which the reconciler's times are written and read.
async fn pool(
    options: &MySqlConnectOptions,
    max: u32,
) -> std::result::Result<MySqlPool, sqlx::Error> {
    MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')")
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .connect_with(options.clone())
        .await
}

/// `SKIP LOCKED` came with MySQL 8.0 and MariaDB 10.6.
async fn check_version(pool: &MySqlPool) -> Result<()> {
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(pool)
        .await
        .map_err(|e| Error::database("reading the server's version", e))?;
    let mut numbers = version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    let supported = if mariadb {
        (major, minor) >= (10, 6)
    } else {
        major >= 8
    };
    if supported {
        Ok(())
    } else {
        Err(Error::config(
            "database.url",
            format!(
                "the server is {} {version}: the reconciler needs MySQL 8.0 or MariaDB 10.6 \
                 or later (SKIP LOCKED)",
                if mariadb { "MariaDB" } else { "MySQL" }
            ),
        ))
    }
}

/// Whether a column of this type and collation is ordered by its index as its UTF-8 bytes are:
/// binary strings, and text in a binary collation that does not pad (`utf8mb4_bin` ignores
/// trailing spaces: `a` and `a ` are one key to it).
fn ordered_as_bytes(info: &Column) -> bool {
    let ty = info.sql_type.to_ascii_lowercase();
    let binary_type =
        ty.starts_with("varbinary") || ty.starts_with("binary(") || ty.ends_with("blob");
    let nopad_bin = info.collation.as_deref().is_some_and(|c| {
        let c = c.to_ascii_lowercase();
        c.starts_with("utf8mb4_") && (c.ends_with("_nopad_bin") || c == "utf8mb4_0900_bin")
    });
    // A fixed-width BINARY(n) is padded with zero bytes: not the value's own bytes.
    (binary_type && !ty.starts_with("binary(")) || nopad_bin
}

#[async_trait::async_trait]
impl Dialect for MySqlDialect {
    fn name(&self) -> &'static str {
        "MySQL"
    }

    fn db(&self) -> &Db {
        &self.db
    }

    fn placeholders(&self) -> Placeholders {
        Placeholders::Question
    }

    fn own_schema(&self) -> &str {
        &self.own_quoted
    }

    fn text(&self, expr: &str) -> String {
        // Its UTF-8 bytes: compared and ordered byte for byte, with no collation, no padding.
        format!("CAST(CONVERT({expr} USING utf8mb4) AS BINARY)")
    }

    fn byte_order(&self, expr: &str) -> String {
        // `text` is binary already.
        expr.to_owned()
    }

    fn column_order(&self, column: &str, info: &Column) -> String {
        if ordered_as_bytes(info) {
            column.to_owned()
        } else {
            self.text(column)
        }
    }

    fn own_order(&self, column: &str) -> String {
        // The reconciler's key columns are VARBINARY.
        column.to_owned()
    }

    fn app_time(&self, expr: &str, alias: &str) -> String {
        format!("CAST({expr} AS DATETIME(6)) AS {alias}")
    }

    fn id_kind(&self, info: &Column) -> IdKind {
        let ty = info.sql_type.to_ascii_lowercase();
        let unsigned = ty.contains("unsigned");
        // (signed range, unsigned maximum) of each integer type; unsigned BIGINTs beyond
        // i64::MAX are refused as ids.
        let ranges: [(&str, i64, i64, i64); 5] = [
            ("tinyint", i8::MIN.into(), i8::MAX.into(), u8::MAX.into()),
            (
                "smallint",
                i16::MIN.into(),
                i16::MAX.into(),
                u16::MAX.into(),
            ),
            ("mediumint", -(1 << 23), (1 << 23) - 1, (1 << 24) - 1),
            ("int", i32::MIN.into(), i32::MAX.into(), u32::MAX.into()),
            ("bigint", i64::MIN, i64::MAX, i64::MAX),
        ];
        match ranges.iter().find(|(name, ..)| ty.starts_with(name)) {
            Some((_, _, _, umax)) if unsigned => IdKind::Integer { min: 0, max: *umax },
            Some((_, min, max, _)) => IdKind::Integer {
                min: *min,
                max: *max,
            },
            None if ty == "uuid" => IdKind::Uuid,
            None => IdKind::Text,
        }
    }

    fn one_of(&self, column: &str, _info: &Column, params: &[String]) -> String {
        // `column IN (…)` finds the rows through the column's index, in its collation (for text
        // in a case-insensitive one: `Report.pdf` for `report.pdf`, and for an integer `042`
        // for `42`); the comparison of the bytes keeps only the exact one.
        let list = params.join(", ");
        let bytes: Vec<String> = params
            .iter()
            .map(|p| format!("CAST({p} AS BINARY)"))
            .collect();
        format!(
            "{column} IN ({list}) AND {} IN ({})",
            self.text(column),
            bytes.join(", ")
        )
    }

    fn lock_rows(&self) -> &'static str {
        " FOR UPDATE"
    }

    fn skip_locked(&self) -> &'static str {
        " FOR UPDATE SKIP LOCKED"
    }

    fn upsert(&self, _conflict: &[&str]) -> String {
        // The conflict is on the table's primary key, which is what the columns name.
        "ON DUPLICATE KEY UPDATE".to_owned()
    }

    fn excluded(&self, column: &str) -> String {
        format!("VALUES({column})")
    }

    fn insert_or_nothing(&self) -> &'static str {
        // `INSERT IGNORE` would also turn a missing NOT NULL value into an empty one: the
        // duplicate key error is taken as "exists" instead.
        ""
    }

    fn returning(&self) -> bool {
        false
    }

    fn delete_some(&self, table: &str, condition: &str, limit: &str) -> String {
        format!("DELETE FROM {table} WHERE {condition} LIMIT {limit}")
    }

    fn touch(&self, column: &str) -> String {
        format!("{column} = CURRENT_TIMESTAMP(6)")
    }

    async fn columns(&self, table: &TableName) -> Result<Vec<Column>> {
        let rows = sqlx::query(
            "SELECT COLUMN_NAME AS name, COLUMN_TYPE AS type, IS_NULLABLE AS nullable, \
             COLUMN_DEFAULT AS dflt, EXTRA AS extra, COLLATION_NAME AS collation \
             FROM information_schema.columns \
             WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? \
             ORDER BY ORDINAL_POSITION",
        )
        .bind(table.schema.as_ref().map(|s| s.as_str().to_owned()))
        .bind(table.name.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| {
            Error::database(
                format!("reading the columns of table {}", table.quoted()),
                e,
            )
        })?;
        let text = |row: &sqlx::mysql::MySqlRow,
                    column: &str|
         -> std::result::Result<Option<String>, sqlx::Error> {
            Cells::text(row, column)
        };
        rows.iter()
            .map(|row| {
                let nullable = text(row, "nullable")?.is_some_and(|n| n == "YES");
                let default = text(row, "dflt")?;
                let extra = text(row, "extra")?.unwrap_or_default().to_ascii_lowercase();
                Ok(Column {
                    name: text(row, "name")?.unwrap_or_default(),
                    sql_type: text(row, "type")?.unwrap_or_default(),
                    nullable,
                    filled: default.is_some()
                        || extra.contains("auto_increment")
                        || extra.contains("generated"),
                    collation: text(row, "collation")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(|e| Error::database("reading information_schema.columns", e))
    }

    fn migrated(&self) -> bool {
        self.migrated.load(Ordering::Relaxed)
    }

    async fn migrate(&self) -> Result<()> {
        let context = format!("creating the reconciler's database {}", self.own);
        sqlx::query(AssertSqlSafe(format!(
            "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4",
            self.own_quoted
        )))
        .execute(&self.pool)
        .await
        .map_err(|e| Error::database(context.clone(), e))?;
        // The migrations run in the reconciler's database: sqlx's bookkeeping table lands
        // there too, nothing of ours in the app's.
        let own = pool(&self.options.clone().database(&self.own), 1)
            .await
            .map_err(|e| Error::database(context.clone(), e))?;
        let migrated = sqlx::migrate!("./migrations/mysql").run(&own).await;
        own.close().await;
        migrated?;
        self.migrated.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn try_sweep_lock(&self, scope: &str) -> Result<Option<Box<dyn SweepLock>>> {
        // A named lock of a session of its own. Lock names are the server's, not a database's:
        // the reconciler's database is part of the name, and the name is hashed to fit 64
        // characters.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Error::database("connecting for the sweep lock", e))?
            .detach();
        let name = format!(
            "upload-reconciler/{:016x}",
            lock_hash(&format!("{}/{scope}", self.own))
        );
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 0)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| Error::database("taking the sweep lock", e))?;
        Ok(SessionLock::held(conn, got == Some(1)).await)
    }
}

impl Bind for sqlx::query::Query<'_, MySql, MySqlArguments> {
    fn bind_value(self, value: &Value) -> Self {
        match value {
            Value::Text(text) => self.bind(text.clone()),
            Value::Int(n) => self.bind(*n),
            Value::Bool(b) => self.bind(*b),
            Value::Float(x) => self.bind(*x),
            // DATETIME(6) in UTC: the session's time zone is UTC (sqlx sets it).
            Value::Time(time) => self.bind(time.map(|t| t.naive_utc())),
            Value::Uuid(id) => self.bind(id.map(|id| id.to_string())),
            Value::Json(json) => self.bind(json.to_string()),
        }
    }
}

impl Cells for MySqlRow {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        // The statements compare and order text as bytes (`CAST(... AS BINARY)`), and the
        // reconciler's key columns are VARBINARY: such a column comes back as bytes, UTF-8.
        match self.try_get::<Option<String>, _>(column) {
            Ok(text) => Ok(text),
            Err(_) => {
                let bytes: Option<Vec<u8>> = self.try_get(column)?;
                bytes
                    .map(|b| {
                        String::from_utf8(b)
                            .map_err(|e| decode_error(column, format!("not UTF-8: {e}")))
                    })
                    .transpose()
            }
        }
    }

    fn int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        match self.try_get::<Option<i64>, _>(column) {
            Ok(n) => Ok(n),
            Err(_) => match self.try_get::<Option<i32>, _>(column) {
                Ok(n) => Ok(n.map(i64::from)),
                Err(_) => {
                    let n: Option<u64> = self.try_get(column)?;
                    Ok(n.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
                }
            },
        }
    }

    fn time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let time: Option<chrono::NaiveDateTime> = self.try_get(column)?;
        Ok(time.map(|t| t.and_utc()))
    }

    fn app_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.time(column)
    }

    fn uuid(&self, column: &str) -> Result<Option<Uuid>, sqlx::Error> {
        parse_uuid(column, self.try_get(column)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(sql_type: &str, collation: Option<&str>) -> Column {
        Column {
            name: "id".into(),
            sql_type: sql_type.into(),
            nullable: false,
            filled: false,
            collation: collation.map(str::to_owned),
        }
    }

    #[test]
    fn only_unpadded_binary_orders_are_byte_order() {
        assert!(ordered_as_bytes(&column("varbinary(255)", None)));
        assert!(ordered_as_bytes(&column(
            "varchar(255)",
            Some("utf8mb4_nopad_bin")
        )));
        assert!(ordered_as_bytes(&column(
            "varchar(255)",
            Some("utf8mb4_0900_bin")
        )));
        assert!(!ordered_as_bytes(&column(
            "varchar(255)",
            Some("utf8mb4_bin")
        )));
        assert!(!ordered_as_bytes(&column(
            "varchar(255)",
            Some("utf8mb4_general_ci")
        )));
        assert!(!ordered_as_bytes(&column("binary(16)", None)));
        assert!(!ordered_as_bytes(&column("bigint(20)", None)));
    }

    #[test]
    fn urls_name_the_reconcilers_database() {
        assert!(crate::config::is_mysql_url("mariadb://root@127.0.0.1/app"));
        let options = options_of("mariadb://root@127.0.0.1:3306/app").expect("url");
        assert_eq!(options.get_database(), Some("app"));
        assert_eq!(own_database("app", None), "app_reconciler");
        assert_eq!(own_database("app", Some("ops")), "ops");
    }
}
