//! Integration tests over real Postgres and moto's S3 (started by scripts/test).

mod config;
mod daemon;
mod events;
mod execute;
mod explain;
mod helpers;
mod interrupt;
mod operations;
mod outage;
mod processing;
mod sweep;
