//! What the benches share: the table they sweep, and how their figures are printed.

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPoolOptions;

const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn database_url(db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{db}")
}

/// A fresh database `db` whose table `docs` holds docs `{i:09}` for i in 0..rows, created two
/// hours ago, each with the status `status` (an SQL expression of i) says.
pub async fn seed(db: &str, rows: u64, status: &str) {
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
             FROM generate_series(0, {}) AS i",
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
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "  {label:<40} {median:>9.3} {unit:<10} (min {:.3}, max {:.3})",
        sorted[0],
        sorted[sorted.len() - 1]
    );
    median
}
