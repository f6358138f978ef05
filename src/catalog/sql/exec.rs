//! How the catalog's SQL, written once, runs on each database. Statements are written with
//! numbered parameters (`$1`) and the reconciler's tables as `reconciler.<table>`; [`Db::prepare`]
//! turns them into each driver's form. Parameters are [`Value`]s and results are read through
//! [`Cells`]: each dialect binds and reads them by its own database's rules (a time is
//! `timestamptz` on Postgres, fixed-width UTC text on SQLite, `DATETIME(6)` on MySQL), so nothing
//! above knows which database it talks to.

use chrono::{DateTime, Utc};
use sqlx::Postgres;
#[cfg(feature = "mysql")]
use sqlx::mysql::{MySql, MySqlPool};
use sqlx::postgres::PgPool;
use sqlx::sqlite::{Sqlite, SqlitePool};
use uuid::Uuid;

/// A statement's parameter, in the catalog's own types.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(bool),
    Float(f64),
    Time(Option<DateTime<Utc>>),
    Uuid(Option<Uuid>),
    Json(serde_json::Value),
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::Text(Some(text.to_owned()))
    }
}

impl From<&String> for Value {
    fn from(text: &String) -> Self {
        Value::Text(Some(text.clone()))
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::Text(Some(text))
    }
}

impl From<Option<&str>> for Value {
    fn from(text: Option<&str>) -> Self {
        Value::Text(text.map(str::to_owned))
    }
}

impl From<&Option<String>> for Value {
    fn from(text: &Option<String>) -> Self {
        Value::Text(text.clone())
    }
}

impl From<Option<String>> for Value {
    fn from(text: Option<String>) -> Self {
        Value::Text(text)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(Some(n))
    }
}

impl From<Option<i64>> for Value {
    fn from(n: Option<i64>) -> Self {
        Value::Int(n)
    }
}

impl From<DateTime<Utc>> for Value {
    fn from(time: DateTime<Utc>) -> Self {
        Value::Time(Some(time))
    }
}

impl From<Option<DateTime<Utc>>> for Value {
    fn from(time: Option<DateTime<Utc>>) -> Self {
        Value::Time(time)
    }
}

impl From<Uuid> for Value {
    fn from(id: Uuid) -> Self {
        Value::Uuid(Some(id))
    }
}

impl From<Option<Uuid>> for Value {
    fn from(id: Option<Uuid>) -> Self {
        Value::Uuid(id)
    }
}

/// A pool of one of the three databases.
#[derive(Clone)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
    #[cfg(feature = "mysql")]
    MySql(MySqlPool),
}

/// An open transaction on one of them.
pub enum Tx {
    Postgres(sqlx::Transaction<'static, Postgres>),
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    #[cfg(feature = "mysql")]
    MySql(sqlx::Transaction<'static, MySql>),
}

impl Db {
    /// A transaction on the pool.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
            #[cfg(feature = "mysql")]
            Db::MySql(pool) => Tx::MySql(pool.begin().await?),
        })
    }
}

/// How a driver writes parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placeholders {
    /// `$1` (Postgres): each parameter once, numbered by its first use.
    Dollar,
    /// `?`, one per use, in order (MySQL, SQLite): a parameter used twice is bound twice.
    Question,
}

/// A statement in its driver's form, with its parameters in the order the driver takes them.
pub struct Prepared {
    pub sql: String,
    pub args: Vec<Value>,
}

/// Rewrite `sql` (numbered `$n` parameters, `reconciler.<table>`) for a driver: parameters in its
/// style, only those the statement uses (a statement may leave one out: the ones that do not
/// join the job state leave out the scope), and the reconciler's tables in `own_schema` (a quoted
/// identifier, or `reconciler`). Quoted identifiers and string literals are copied as they are:
/// an app's column may be named `"a$1"`.
pub fn prepare(sql: &str, args: &[Value], style: Placeholders, own_schema: &str) -> Prepared {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut used: Vec<usize> = Vec::new();
    let mut ordered = Vec::new();
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' | b'"' => {
                // Copy through the closing quote; a doubled quote is an escaped one.
                let start = i;
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == c {
                        if bytes.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(bytes.len());
                out.push_str(&sql[start..i]);
            }
            b'$' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                // A statement names only parameters it is given (a bug otherwise, which the
                // driver reports as a parameter count mismatch).
                let n: usize = sql[start..end].parse().unwrap_or(0);
                let value = n.checked_sub(1).and_then(|k| args.get(k));
                match style {
                    Placeholders::Dollar => {
                        let position = match used.iter().position(|&u| u == n) {
                            Some(p) => p,
                            None => {
                                used.push(n);
                                ordered.extend(value.cloned());
                                used.len() - 1
                            }
                        };
                        out.push('$');
                        out.push_str(&(position + 1).to_string());
                    }
                    Placeholders::Question => {
                        out.push('?');
                        ordered.extend(value.cloned());
                    }
                }
                i = end;
            }
            b'r' if sql[i..].starts_with("reconciler.") && (i == 0 || !is_word(bytes[i - 1])) => {
                out.push_str(own_schema);
                out.push('.');
                i += "reconciler.".len();
            }
            _ => {
                // Copy one whole character: the text is UTF-8.
                let len = utf8_len(c);
                out.push_str(&sql[i..(i + len).min(sql.len())]);
                i += len;
            }
        }
    }
    Prepared {
        sql: out,
        args: ordered,
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'"' || b == b'.'
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Bind [`Value`]s the way one driver's database stores them.
pub trait Bind: Sized {
    fn bind_value(self, value: &Value) -> Self;

    fn bind_all(self, values: &[Value]) -> Self {
        values
            .iter()
            .fold(self, |query, value| query.bind_value(value))
    }
}

/// The columns of a result row, read as the catalog's own types whatever the database.
pub trait Cells {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    /// A time of the reconciler's own tables.
    fn time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;
    /// A time of the app's table, as the statements select it (see `Dialect::app_time`).
    fn app_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;
    fn uuid(&self, column: &str) -> Result<Option<Uuid>, sqlx::Error>;

    /// A text column that must hold a value.
    fn required_text(&self, column: &str) -> Result<String, sqlx::Error> {
        self.text(column)?.ok_or_else(|| sqlx::Error::ColumnDecode {
            index: column.into(),
            source: "unexpected NULL".into(),
        })
    }
}

pub fn decode_error(column: &str, message: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.into(),
        source: message.into(),
    }
}

pub fn parse_uuid(column: &str, text: Option<String>) -> Result<Option<Uuid>, sqlx::Error> {
    text.map(|text| {
        Uuid::try_parse(&text).map_err(|e| decode_error(column, format!("{text:?}: {e}")))
    })
    .transpose()
}

/// Run `$body` with `$conn` bound to the concrete pool or transaction of `$target`: the body is
/// written once and compiled for each database.
macro_rules! on_db {
    ($target:expr, $conn:ident => $body:expr) => {
        match $target {
            $crate::catalog::sql::exec::Db::Postgres($conn) => $body,
            $crate::catalog::sql::exec::Db::Sqlite($conn) => $body,
            #[cfg(feature = "mysql")]
            $crate::catalog::sql::exec::Db::MySql($conn) => $body,
        }
    };
}

macro_rules! on_tx {
    ($target:expr, $conn:ident => $body:expr) => {
        match $target {
            $crate::catalog::sql::exec::Tx::Postgres($conn) => $body,
            $crate::catalog::sql::exec::Tx::Sqlite($conn) => $body,
            #[cfg(feature = "mysql")]
            $crate::catalog::sql::exec::Tx::MySql($conn) => $body,
        }
    };
}

pub(crate) use {on_db, on_tx};

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::from(s)
    }

    #[test]
    fn parameters_take_each_drivers_form() {
        let sql = "SELECT * FROM reconciler.jobs WHERE scope = $3 AND doc_id = $1 OR key = $3";
        let args = [text("a"), text("unused"), text("s")];
        let pg = prepare(sql, &args, Placeholders::Dollar, "reconciler");
        assert_eq!(
            pg.sql,
            "SELECT * FROM reconciler.jobs WHERE scope = $1 AND doc_id = $2 OR key = $1"
        );
        assert_eq!(pg.args, [text("s"), text("a")]);
        let my = prepare(sql, &args, Placeholders::Question, "\"app_reconciler\"");
        assert_eq!(
            my.sql,
            "SELECT * FROM \"app_reconciler\".jobs WHERE scope = ? AND doc_id = ? OR key = ?"
        );
        assert_eq!(my.args, [text("s"), text("a"), text("s")]);
    }

    #[test]
    fn quoted_names_and_literals_are_left_alone() {
        let sql = "SELECT \"a$1\", 'reconciler.x $2', \"x\"\"$1\" FROM \"reconciler\".t, \
                   myreconciler.t WHERE é = $1";
        let my = prepare(sql, &[text("v")], Placeholders::Question, "\"own\"");
        assert_eq!(
            my.sql,
            "SELECT \"a$1\", 'reconciler.x $2', \"x\"\"$1\" FROM \"reconciler\".t, \
             myreconciler.t WHERE é = ?"
        );
        assert_eq!(my.args, [text("v")]);
    }
}
