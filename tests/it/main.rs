//! Integration tests over real Postgres and moto's S3 (started by scripts/test).

mod bucket;
mod config;
mod daemon;
mod events;
mod execute;
mod explain;
mod helpers;
mod operations;
mod processing;
mod sweep;
