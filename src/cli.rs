//! The command line. `reconcile` alone is a sweep; subcommands spell out the rest.

use crate::report::Format;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "reconcile",
    version,
    about = "Keeps an upload API's database and its S3 bucket consistent"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    /// Flags of the default command (a sweep).
    #[command(flatten)]
    pub sweep: SweepArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// The TOML configuration file.
    #[arg(long, global = true, env = "RECONCILE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The database URL (overrides database.url and DATABASE_URL).
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// The bucket (overrides storage.bucket).
    #[arg(long, global = true)]
    pub bucket: Option<String>,

    /// The key prefix of the docs (overrides storage.prefix).
    #[arg(long, global = true)]
    pub prefix: Option<String>,

    /// The SQS queue S3 notifies (overrides events.queue_url).
    #[arg(long, global = true, value_name = "URL")]
    pub queue_url: Option<String>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Args, Clone, Default, PartialEq)]
pub struct SweepArgs {
    /// Report every inconsistency and write nothing, anywhere.
    #[arg(long)]
    pub dry_run: bool,

    /// Report format (default: table on a terminal, json otherwise).
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    /// Exit 3 when anything but in_grace was found.
    #[arg(long)]
    pub fail_on_drift: bool,

    /// Apply even when the breaker (sweep.max_action_ratio) would stop the sweep.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One sweep (the default command).
    Sweep(SweepArgs),
    /// One doc across table, bucket and audit log, and what a sweep would do about it now.
    Explain {
        /// A doc id, or an object key (prefix included).
        id_or_key: String,
        /// Output format (default: table on a terminal, json otherwise).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Run as a sidecar: scheduled sweeps, S3 events from SQS, processing workers, /metrics,
    /// /healthz and /readyz, until SIGTERM or SIGINT.
    Daemon {
        /// Audit mode: scheduled dry-run sweeps and their metrics; no events consumed, no
        /// processing, no writes anywhere.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-enqueue post-processing with a fresh attempt budget (audited).
    Retry {
        /// The doc to retry.
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        id: Option<String>,
        /// Every doc whose processing failed.
        #[arg(long)]
        failed: bool,
    },
    /// Create or upgrade the reconciler's own tables (schema `reconciler`).
    Migrate,
    /// Validate the configuration and reach the database and the bucket.
    CheckConfig,
    /// A first run with nothing to set up: a sandbox (a SQLite database and a local folder)
    /// seeded with every failure mode, audited, repaired and audited again. The sandbox stays,
    /// for the real commands to be tried on it.
    Demo {
        /// Where to build the sandbox: a new or empty folder (default: a new temporary one).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
