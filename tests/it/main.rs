//! Integration tests over real Postgres and moto's S3 (started by scripts/test).

mod bucket_conformance;
mod config;
mod daemon;
mod events;
mod execute;
mod explain;
mod folder;
mod helpers;
mod operations;
mod processing;
mod sweep;
