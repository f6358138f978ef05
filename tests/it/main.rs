//! Integration tests over real Postgres and moto's S3 (started by scripts/test).

mod config;
mod daemon;
mod deployments;
mod events;
mod execute;
mod explain;
mod helpers;
mod housekeeping;
mod lookups;
mod operations;
mod poison;
mod processing;
mod sweep;
