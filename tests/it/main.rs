//! Integration tests over real Postgres and moto's S3 (started by scripts/test).

mod config;
mod execute;
mod explain;
mod helpers;
mod sweep;
