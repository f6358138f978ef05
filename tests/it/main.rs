//! Integration tests over real Postgres and moto's S3 (started by scripts/test).

mod helpers;
mod execute;
mod sweep;
