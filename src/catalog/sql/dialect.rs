//! What differs between the three databases, and nothing else: each dialect supplies its SQL
//! spelling of a few things (text, byte order, exact comparison, locking, upserts, type casts) and
//! its lifecycle (connecting, reading the table's columns, migrations, transactions, the sweep
//! lock). The catalog ([`super::SqlCatalog`]) is written once over this trait.

use super::exec::{Db, Placeholders, Tx};
use crate::catalog::SweepLock;
use crate::config::TableName;
use crate::error::Result;
use crate::model::IdKind;

/// A column of the app's table, as its database describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    /// The type as the database spells it (`bigint`, `character varying(255)`, `varchar(100)`).
    pub sql_type: String,
    pub nullable: bool,
    /// Whether an INSERT that leaves it out still gives it a value: a default, an identity or
    /// auto-increment, a generated column, a rowid.
    pub filled: bool,
    /// The collation of a text column, where the database has one per column (MySQL).
    pub collation: Option<String>,
}

#[async_trait::async_trait]
pub trait Dialect: Send + Sync {
    /// The database, as messages name it: `Postgres`, `SQLite`, `MySQL`.
    fn name(&self) -> &'static str;

    /// The pool every statement runs on.
    fn db(&self) -> &Db;

    /// How the driver writes parameters.
    fn placeholders(&self) -> Placeholders;

    /// Where the reconciler's own tables are, as statements name it: `reconciler` (a schema on
    /// Postgres, an attached file on SQLite), or a quoted database name.
    fn own_schema(&self) -> &str {
        "reconciler"
    }

    /// `expr` as text (a UTF-8 string of the value: `42` for an integer).
    fn text(&self, expr: &str) -> String;

    /// A text `expr` as an ORDER BY key (or operand of `>`) in UTF-8 byte order, the order S3
    /// lists keys in, whatever the column's collation.
    fn byte_order(&self, expr: &str) -> String;

    /// The app column `column` (qualified) as an ORDER BY key in byte order. Where the column's
    /// own order is byte order, the column itself, so that its index serves the read.
    fn column_order(&self, column: &str, info: &Column) -> String {
        let _ = info;
        self.byte_order(&self.text(column))
    }

    /// A text column of the reconciler's own tables in byte order.
    fn own_order(&self, column: &str) -> String;

    /// The select-list item(s) that read the app's time `expr` (a column, or `NULL`) as `alias`,
    /// for [`super::exec::Cells::app_time`].
    fn app_time(&self, expr: &str, alias: &str) -> String;

    /// Which texts can be values of the column.
    fn id_kind(&self, info: &Column) -> IdKind;

    /// The condition that the app column `column` (of type `info`) holds one of the texts
    /// `params` (`$n`), compared exactly, byte for byte, and through the column's index where it
    /// has one. Only texts of [`Self::id_kind`] are ever passed.
    fn one_of(&self, column: &str, info: &Column, params: &[String]) -> String;

    /// The text parameter `param` as a value of the column (for INSERT and UPDATE).
    fn value_as(&self, param: &str, info: &Column) -> String {
        let _ = info;
        param.to_owned()
    }

    /// What a SELECT of one table's rows ends with to lock them for this transaction.
    fn lock_rows(&self) -> &'static str;

    /// What a SELECT of the app's rows (table `t`, joined to their jobs) ends with to lock
    /// the app's rows.
    fn lock_app_rows(&self) -> &'static str {
        self.lock_rows()
    }

    /// What a SELECT of one job ends with to lock it, skipping any another worker holds.
    fn skip_locked(&self) -> &'static str;

    /// The clause of an INSERT that updates the row with the same `conflict` columns instead
    /// (followed by `column = …` assignments).
    /// (Postgres and SQLite share the `ON CONFLICT` form; MySQL has its own.)
    fn upsert(&self, conflict: &[&str]) -> String {
        format!("ON CONFLICT ({}) DO UPDATE SET", conflict.join(", "))
    }

    /// In an upsert's assignments, the value the INSERT would have written to `column`.
    fn excluded(&self, column: &str) -> String {
        format!("excluded.{column}")
    }

    /// What an INSERT ends with to do nothing when the row exists; empty where the database has
    /// no such clause (the duplicate key error is then taken as "exists").
    fn insert_or_nothing(&self) -> &'static str {
        "ON CONFLICT DO NOTHING"
    }

    /// Whether UPDATE and INSERT … ON CONFLICT can return rows (`RETURNING`).
    fn returning(&self) -> bool {
        true
    }

    /// A DELETE of at most `$limit` rows of `table` (the reconciler's) where `condition`.
    fn delete_some(&self, table: &str, condition: &str, limit: &str) -> String;

    /// The assignment that sets the app's `updated_at` column to now.
    fn touch(&self, column: &str) -> String;

    /// Records per page when the sweep reads the app's table in pages (each a short statement
    /// of its own) instead of one long one; `None` for one long read.
    fn page_size(&self, id: &Column) -> Option<usize> {
        let _ = id;
        None
    }

    /// Whether split points (every nth id) are cheap enough to ask for.
    fn samples_ids(&self) -> bool {
        true
    }

    /// How many write transactions may be open at once: on a server, all but two of the pool's
    /// connections (one is the sweep lock's, one stays free for the event path and workers).
    fn concurrent_writes(&self) -> usize {
        let pool = super::exec::on_db!(self.db(), pool => pool.options().get_max_connections());
        (pool as usize).saturating_sub(2).max(1)
    }

    /// The app table's columns; empty when there is no such table.
    async fn columns(&self, table: &TableName) -> Result<Vec<Column>>;

    /// Whether the reconciler's tables exist.
    fn migrated(&self) -> bool;

    /// Create or upgrade the reconciler's tables.
    async fn migrate(&self) -> Result<()>;

    /// After migrating, for the catalog's scope: Postgres adopts rows written before scopes.
    /// `ids` is a statement selecting the text of every id of the app table.
    async fn after_migrate(&self, scope: &crate::catalog::Scope, ids: &str) -> Result<()> {
        let _ = (scope, ids);
        Ok(())
    }

    /// A write transaction; `own` when it writes only the reconciler's tables.
    async fn begin(&self, own: bool, context: &str) -> Result<Tx> {
        let _ = own;
        self.db()
            .begin()
            .await
            .map_err(|e| crate::error::Error::database(context.to_owned(), e))
    }

    /// Take the sweep lock named `scope` if no one holds it.
    async fn try_sweep_lock(&self, scope: &str) -> Result<Option<Box<dyn SweepLock>>>;
}

/// A sweep lock held by a session of its own (a connection taken out of the pool): the database
/// releases the session's locks when it ends, however the sweep ends, even if the process dies.
pub struct SessionLock<C: sqlx::Connection> {
    conn: C,
}

impl<C: sqlx::Connection + 'static> SessionLock<C> {
    /// The lock `got` (as the database answered the session `conn`), or `None`.
    pub async fn held(conn: C, got: bool) -> Option<Box<dyn SweepLock>> {
        if got {
            Some(Box::new(SessionLock { conn }))
        } else {
            let _ = conn.close().await;
            None
        }
    }
}

#[async_trait::async_trait]
impl<C: sqlx::Connection> SweepLock for SessionLock<C> {
    async fn release(self: Box<Self>) {
        let _ = self.conn.close().await;
    }
}

/// A stable 64-bit hash (FNV-1a) of a sweep lock's name: the same scope, the same lock, on every
/// replica and every version.
pub fn lock_hash(scope: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("upload-reconciler/sweep/{scope}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
