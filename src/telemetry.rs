//! Logging setup: everything goes to stderr, so stdout carries only the report.

use crate::cli::{Global, LogFormat};
use tracing_subscriber::EnvFilter;

pub fn init_logging(global: &Global) {
    // aws-config warns at length while it walks the credential chain (IMDS and so on); what
    // matters reaches the user as the error of the call that needed the credentials.
    let default = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn,aws_config=error",
        (false, 1) => "info,aws_config=error",
        (false, _) => "debug",
    };
    // RUST_LOG wins when set; a bad RUST_LOG falls back to the default rather than failing.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match global.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
