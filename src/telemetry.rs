//! Logging setup: everything goes to stderr, so stdout carries only the report.

use crate::cli::{Global, LogFormat};
use crate::daemon;
use std::io::{IsTerminal, Write};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

pub fn init_logging(global: &Global) {
    // aws-config warns at length while it walks the credential chain (IMDS and so on); what
    // matters reaches the user as the error of the call that needed the credentials. The
    // daemon's lifecycle (start, each sweep, shutdown) is what an operator looks for first, so it
    // speaks at the default level too.
    let default = match (global.quiet, global.verbose) {
        (true, _) => "error".to_owned(),
        (false, 0) => format!("warn,aws_config=error,{}=info", daemon::LIFECYCLE),
        (false, 1) => "info,aws_config=error".to_owned(),
        (false, _) => "debug".to_owned(),
    };
    // RUST_LOG wins when set; a bad RUST_LOG falls back to the default rather than failing.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactedStderr)
        // Colour codes only for a terminal: in a log file they split `name=value` pairs, which
        // both readers and the redaction of secret-looking fields rely on.
        .with_ansi(std::io::stderr().is_terminal());
    match global.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Every log line passes through `redact::text` on its way to stderr: sqlx, reqwest and the AWS
/// SDK put URLs and headers in their messages at every level, and this is the one exit they share.
struct RedactedStderr;

impl<'a> MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedLine;

    fn make_writer(&'a self) -> RedactedLine {
        RedactedLine(Vec::new())
    }
}

/// One formatted event (tracing-subscriber writes each in one go), redacted and written when
/// dropped: a URL is never cut in two between writes.
struct RedactedLine(Vec<u8>);

impl Write for RedactedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactedLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = crate::redact::text(&String::from_utf8_lossy(&self.0));
        // A log line that cannot be written has nowhere else to go.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}
