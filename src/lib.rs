//! upload-reconciler: keeps an upload API's database and its S3 bucket consistent.
//!
//! Data flows one way: bucket + catalog -> sweep (merge) -> decide -> execute -> report, and
//! events -> decide -> execute: both paths share the decision and the executor.
//! `decide` is pure; the adapters (`catalog`, `bucket`) do all I/O.

pub mod adapters;
pub mod app;
pub mod backoff;
pub mod bucket;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod demo;
pub mod error;
pub mod events;
pub mod execute;
pub mod explain;
#[cfg(feature = "s3")]
pub mod inventory;
pub mod metrics;
pub mod model;
pub mod processing;
pub mod progress;
pub mod redact;
pub mod report;
pub mod rules;
pub mod server;
pub mod stop;
pub mod sweep;
pub mod telemetry;

pub use error::{Error, Result};
