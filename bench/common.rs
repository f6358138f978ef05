//! What the benches share: the docs they sweep, the table that holds them, and how their figures
//! are printed. Each bench uses its part.
#![allow(dead_code)]

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPoolOptions;

/// Row i is doc `{i:09}`. Every 10th row has no object (half of them pending, to expire; half
/// uploaded, to mark missing), every 50th object has no row (an orphan `{i:09}o`, which sorts
/// right after its neighbour in byte order).
pub fn has_object(i: u64) -> bool {
    i % 10 != 3
}

/// [`has_object`] as an SQL condition on i, for [`seed_where`].
pub const HAS_OBJECT: &str = "i % 10 <> 3";

pub fn has_orphan(i: u64) -> bool {
    i % 50 == 7
}

/// The status of row i, as an SQL expression for [`seed`]: those without an object pending or
/// uploaded (as [`has_object`] says), the rest processed.
pub const STATUS_OF_ROW: &str = "CASE WHEN i % 10 = 3 AND i % 20 = 3 THEN 'pending' \
                                      WHEN i % 10 = 3 THEN 'uploaded' ELSE 'processed' END";

/// The median of `values`.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn database_url(db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{db}")
}

/// A fresh database `db` whose table `docs` holds docs `{i:09}` for i in 0..rows, created two
/// hours ago, each with the status `status` (an SQL expression of i) says.
pub async fn seed(db: &str, rows: u64, status: &str) {
    seed_where(db, rows, status, "true").await;
}

/// As [`seed`], only the rows for which `kept` (an SQL condition on i) holds.
pub async fn seed_where(db: &str, rows: u64, status: &str, kept: &str) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(ADMIN)
        .await
        .expect("Postgres at 127.0.0.1:5432");
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        sqlx::query(AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect("recreate bench database");
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url(db))
        .await
        .expect("connect bench database");
    for sql in [
        "CREATE TABLE docs (id text PRIMARY KEY, title text NOT NULL DEFAULT '', \
         status text NOT NULL DEFAULT 'pending', created_at timestamptz NOT NULL DEFAULT now(), \
         updated_at timestamptz NOT NULL DEFAULT now())"
            .to_owned(),
        format!(
            "INSERT INTO docs (id, status, created_at) \
             SELECT lpad(i::text, 9, '0'), {status}, now() - interval '2 hours' \
             FROM generate_series(0, {}) AS i WHERE {kept}",
            rows - 1
        ),
        "CREATE INDEX ON docs (id COLLATE \"C\")".to_owned(),
        "ANALYZE docs".to_owned(),
    ] {
        sqlx::query(AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect("seed bench table");
    }
    pool.close().await;
    admin.close().await;
}

/// Print the median of one measure over the rounds, min and max beside it; returns the median.
pub fn show(label: &str, values: &[f64], unit: &str) -> f64 {
    let median = median(values);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    println!("  {label:<40} {median:>9.3} {unit:<10} (min {min:.3}, max {max:.3})");
    median
}
