//! The app table's statements, built once at connect from the configured mapping, the columns as
//! the database describes them, and the dialect's spelling. Parameters: the statements that join
//! the job state take the scope as `$1` (the others leave it out, and `exec::prepare` drops it).

use super::dialect::{Column, Dialect};
use crate::config::{AdoptValue, DatabaseConfig};
use crate::error::{Error, Result};

/// The mapped columns of the app table, as its database describes them.
pub struct Mapped {
    pub id: Column,
    /// The column that pairs rows with objects: the key column, or the id.
    pub key: Column,
    /// Whether the key is a column of its own.
    pub keyed: bool,
    pub status: Column,
    /// The times a created row gets from the reconciler (now): the mapped ones that would get
    /// no value otherwise (NOT NULL, no default; a framework fills them itself).
    pub stamped: Vec<Column>,
    /// `[database.adopt_values]`, each with its column.
    pub adopt: Vec<(Column, AdoptValue)>,
    /// The columns a created row would leave without a value: NOT NULL, no default, not
    /// written by the reconciler.
    pub gaps: Vec<String>,
}

impl Mapped {
    /// Find each configured column, or say which key names a column the table lacks.
    pub fn find(
        config: &DatabaseConfig,
        table: &str,
        columns: &[Column],
        database: &str,
    ) -> Result<Self> {
        if columns.is_empty() {
            return Err(Error::config(
                "database.table",
                format!(
                    "table {table} does not exist in the {database} database (or this role \
                     cannot see it)"
                ),
            ));
        }
        let find = |key: &str, name: &str| -> Result<Column> {
            columns
                .iter()
                .find(|c| c.name == name)
                .cloned()
                .ok_or_else(|| Error::config(key, format!("table {table} has no column {name:?}")))
        };
        let id = find("database.id_column", config.id_column.as_str())?;
        let key = match &config.key_column {
            Some(key) => find("database.key_column", key.as_str())?,
            None => id.clone(),
        };
        let status = find("database.status_column", config.status_column.as_str())?;
        let created_at = find(
            "database.created_at_column",
            config.created_at_column.as_str(),
        )?;
        let updated_at = config
            .updated_at_column
            .as_ref()
            .map(|c| find("database.updated_at_column", c.as_str()))
            .transpose()?;
        let adopt = config
            .adopt_values
            .iter()
            .map(|(name, value)| {
                Ok((
                    find(&format!("database.adopt_values.{name}"), name)?,
                    value.clone(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let unfilled = |c: &Column| !c.nullable && !c.filled;
        let stamped: Vec<Column> = [Some(created_at), updated_at]
            .into_iter()
            .flatten()
            .filter(unfilled)
            .collect();
        let keyed = config.key_column.is_some();
        // What an INSERT of an adopted row writes: the key (and, when the key is the id, the
        // id), the status, the stamped times, the adopt values.
        let mut written: Vec<&str> = vec![key.name.as_str(), status.name.as_str()];
        written.extend(stamped.iter().map(|c| c.name.as_str()));
        written.extend(adopt.iter().map(|(c, _)| c.name.as_str()));
        let gaps = columns
            .iter()
            .filter(|c| unfilled(c) && !written.contains(&c.name.as_str()))
            .map(|c| c.name.clone())
            .collect();
        Ok(Mapped {
            id,
            key,
            keyed,
            status,
            stamped,
            adopt,
            gaps,
        })
    }
}

/// One ordered read of the app table: whole (one statement) or in pages.
pub struct Read {
    pub all: String,
    pub first_page: String,
    pub next_page: String,
    /// The column the pages go by: `id`, or `key`.
    pub cursor: Cursor,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cursor {
    Id,
    Key,
}

pub struct Statements {
    /// Records per page when the sweep reads in pages (SQLite), else one long read.
    pub page_size: Option<usize>,
    /// The records with a key, in byte order of their keys.
    pub keyed: Read,
    /// The records without one (their key column NULL or empty), in order of their ids: read
    /// first. `None` when the key is the id.
    pub keyless: Option<Read>,
    /// By id (`$2`).
    pub select_one: String,
    /// By key (`$2`); the same as `select_one` when the key is the id.
    pub select_at: String,
    /// `select_at`, locking.
    pub lock_at: String,
    /// Create a row: `$1` its key, `$2` its status, `$3` now, then the adopt values.
    pub insert: String,
    /// The new row's id, where `insert` cannot return it (`$1` its key).
    pub inserted_id: Option<String>,
    pub ids_with_status: String,
    /// Every `$1`th key in byte order.
    pub split_points: String,
    /// The text of every id.
    pub all_ids: String,
    /// `SELECT <columns> FROM <table with jobs> WHERE`, for `lock_many`.
    select_where: String,
    /// `ORDER BY … <lock>`, for `lock_many`.
    lock_tail: String,
    /// `UPDATE <table> SET <status> = $1, <touch> WHERE`, for `update_many`.
    update_where: String,
    /// The id column: qualified (`t."id"`) and bare (`"id"`), and its type.
    id: String,
    bare_id: String,
    id_column: Column,
}

impl Statements {
    pub fn build(
        d: &dyn Dialect,
        config: &DatabaseConfig,
        table: &str,
        mapped: &Mapped,
        with_jobs: bool,
    ) -> Self {
        let bare_id = config.id_column.quoted();
        let id = format!("t.{bare_id}");
        let bare_key = config.pairing_column().quoted();
        let key = format!("t.{bare_key}");
        let status = config.status_column.quoted();
        let created_at = format!("t.{}", config.created_at_column.quoted());
        let updated_at = config
            .updated_at_column
            .as_ref()
            .map(|c| format!("t.{}", c.quoted()))
            .unwrap_or_else(|| "NULL".to_owned());
        let id_text = d.text(&id);
        let key_text = d.text(&key);
        // Only this deployment's jobs: the scope is `$1`. App columns are qualified: the jobs
        // table has created_at and updated_at too.
        let from = if with_jobs {
            format!(
                "{table} t LEFT JOIN reconciler.jobs j ON j.scope = $1 AND j.doc_id = {id_text}"
            )
        } else {
            format!("{table} t")
        };
        let job_state = if with_jobs { "j.state" } else { "NULL" };
        let columns = format!(
            "{id_text} AS id, {key_text} AS \"key\", {} AS status, {}, {}, {job_state} AS job_state",
            d.text(&format!("t.{status}")),
            d.app_time(&created_at, "created_at"),
            d.app_time(&updated_at, "updated_at"),
        );
        // Records come in byte order of their keys, as S3 lists keys, whatever the column's
        // collation.
        let by_key = d.column_order(&key, &mapped.key);
        let by_id = d.column_order(&id, &mapped.id);
        // Pages (keyset pagination): the next starts after the last of the one before, so each
        // is one look along an index where the order is the column's own.
        let read = |filter: &str, order: &str, cursor: Cursor| {
            let and = if filter.is_empty() {
                String::new()
            } else {
                format!("({filter}) AND ")
            };
            let filter = if filter.is_empty() {
                String::new()
            } else {
                format!("WHERE {filter} ")
            };
            Read {
                all: format!("SELECT {columns} FROM {from} {filter}ORDER BY {order}"),
                first_page: format!(
                    "SELECT {columns} FROM {from} {filter}ORDER BY {order} LIMIT $2"
                ),
                next_page: format!(
                    "SELECT {columns} FROM {from} WHERE {and}{order} > $2 ORDER BY {order} LIMIT $3"
                ),
                cursor,
            }
        };
        let (keyed, keyless) = if mapped.keyed {
            (
                read(&format!("{key_text} <> ''"), &by_key, Cursor::Key),
                Some(read(
                    &format!("{key} IS NULL OR {key_text} = ''"),
                    &by_id,
                    Cursor::Id,
                )),
            )
        } else {
            (read("", &by_key, Cursor::Key), None)
        };
        let touch = config
            .updated_at_column
            .as_ref()
            .map(|c| format!(", {}", d.touch(&c.quoted())))
            .unwrap_or_default();
        let select_where = format!("SELECT {columns} FROM {from} WHERE");
        let key_is = d.one_of(&key, &mapped.key, &["$2".to_owned()]);
        // An adopted row: its key and status, the times that need one, the adopt values; every
        // other column keeps the app's default.
        let mut names = vec![bare_key.clone(), status.clone()];
        let mut values = vec![
            d.value_as("$1", &mapped.key),
            d.value_as("$2", &mapped.status),
        ];
        for stamped in &mapped.stamped {
            names.push(quote(&stamped.name));
            values.push(d.value_as("$3", stamped));
        }
        for (n, (column, _)) in mapped.adopt.iter().enumerate() {
            names.push(quote(&column.name));
            values.push(d.value_as(&format!("${}", n + 4), column));
        }
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            values.join(", ")
        );
        let (insert, inserted_id) = if !mapped.keyed {
            (format!("{insert} {}", d.insert_or_nothing()), None)
        } else if d.returning() {
            (
                format!("{insert} RETURNING {} AS id", d.text(&bare_id)),
                None,
            )
        } else {
            let bare_key_is = d.one_of(&bare_key, &mapped.key, &["$1".to_owned()]);
            (
                insert,
                Some(format!(
                    "SELECT {} AS id FROM {table} WHERE {bare_key_is} ORDER BY {bare_id} DESC \
                     LIMIT 1",
                    d.text(&bare_id)
                )),
            )
        };
        Statements {
            page_size: d.page_size(&mapped.key),
            keyed,
            keyless,
            select_one: format!(
                "{select_where} {}",
                d.one_of(&id, &mapped.id, &["$2".to_owned()])
            ),
            select_at: format!("{select_where} {key_is} ORDER BY {by_id}"),
            lock_at: format!(
                "{select_where} {key_is} ORDER BY {by_id}{}",
                d.lock_app_rows()
            ),
            insert,
            inserted_id,
            ids_with_status: format!(
                "SELECT {} AS id FROM {table} WHERE {} = $1 ORDER BY {}",
                d.text(&bare_id),
                d.byte_order(&d.text(&status)),
                d.byte_order(&d.text(&bare_id)),
            ),
            // The order of the keyed read, so that the same index serves both.
            split_points: format!(
                "SELECT id FROM (SELECT {key_text} AS id, row_number() OVER (ORDER BY {by_key}) \
                 AS n FROM {table} t WHERE {key_text} <> '') numbered WHERE n % $1 = 0"
            ),
            all_ids: format!("SELECT {id_text} FROM {table} t"),
            select_where,
            lock_tail: format!("ORDER BY {by_id}{}", d.lock_app_rows()),
            update_where: format!(
                "UPDATE {table} SET {status} = {}{touch} WHERE",
                d.value_as("$1", &mapped.status)
            ),
            id,
            bare_id,
            id_column: mapped.id.clone(),
        }
    }

    /// Lock the records of `count` ids (`$2`…), in byte order of their ids: two transactions
    /// locking overlapping sets take their rows in the same order, and cannot deadlock.
    pub fn lock_many(&self, d: &dyn Dialect, count: usize) -> String {
        format!(
            "{} {} {}",
            self.select_where,
            d.one_of(&self.id, &self.id_column, &params(2, count)),
            self.lock_tail
        )
    }

    /// Set the status `$1` on the records of `count` ids (`$2`…).
    pub fn update_many(&self, d: &dyn Dialect, count: usize) -> String {
        format!(
            "{} {}",
            self.update_where,
            d.one_of(&self.bare_id, &self.id_column, &params(2, count))
        )
    }
}

/// `$first`, `$first+1`, … : the parameters of `count` values from `first` on.
pub fn params(first: usize, count: usize) -> Vec<String> {
    (first..first + count).map(|n| format!("${n}")).collect()
}

/// A column name as the statements quote identifiers.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
