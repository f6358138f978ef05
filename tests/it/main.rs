//! Integration tests over real Postgres and moto's S3 (started by scripts/test).

mod bucket;
mod bucket_conformance;
mod catalog_conformance;
mod config;
mod crash;
mod daemon;
mod demo;
mod deployments;
mod events;
mod execute;
mod explain;
mod folder;
mod folder_events;
mod helpers;
mod housekeeping;
mod interrupt;
mod lookups;
mod operations;
mod outage;
mod poison;
mod processing;
mod scenarios;
mod secrets;
mod sqlite;
mod sweep;
