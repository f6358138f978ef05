//! The crate's one error type. Each variant says what failed and names the thing at fault, in one
//! line, and maps to the exit code the contract promises.

use std::fmt;

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or has a bad value; `key` names it (`sweep.pending_ttl`).
    #[error("configuration: {key}: {message}")]
    Config { key: String, message: String },

    /// The command line was wrong in a way clap cannot see (an id that names nothing, ...).
    #[error("{0}")]
    Usage(String),

    /// A query or connection to the database failed.
    #[error("database: {context}: {}", describe_sqlx(source))]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },

    /// The reconciler's migrations could not be applied.
    #[error("database: migrating schema reconciler: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// A call to the bucket failed (listing, HEAD, copy, delete).
    #[error("storage: {context}: {message}")]
    Storage { context: String, message: String },

    /// A stream that the merge needs in byte order was not; reading it as-is would invent findings.
    #[error(
        "{source_name} is not in byte order: {previous:?} came before {next:?}; refusing to sweep"
    )]
    Unordered {
        source_name: &'static str,
        previous: String,
        next: String,
    },

    /// Another process holds what this one needs (the sweep lock of this deployment).
    #[error("{0}")]
    Busy(String),

    /// The breaker: too many state-changing actions for one sweep.
    #[error("{0}")]
    SafetyStop(SafetyStop),

    /// Local I/O: the spool file, stdout.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A stop signal (SIGTERM, SIGINT) ended a sweep between two of its actions.
    #[error("{0}")]
    Interrupted(Interrupted),
}

/// A dependency whose failure says nothing about the work that met it: the same work succeeds
/// once the dependency answers again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Database,
    Bucket,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Database => "database",
            Dependency::Bucket => "bucket",
        }
    }
}

/// How far an interrupted sweep got.
#[derive(Debug, Clone, PartialEq)]
pub enum Interrupted {
    /// Stopped while scanning: nothing was written.
    Scan,
    /// Stopped between actions; `left` were not attempted.
    Actions {
        applied: u64,
        failed: u64,
        left: u64,
    },
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Interrupted::Scan => {
                write!(f, "sweep interrupted during its scan; nothing was written")
            }
            Interrupted::Actions {
                applied,
                failed,
                left,
            } => {
                write!(f, "sweep interrupted: {applied} action(s) applied")?;
                if *failed > 0 {
                    write!(f, ", {failed} failed")?;
                }
                write!(
                    f,
                    ", {left} skipped (reason `shutdown`), left for the next sweep"
                )
            }
        }
    }
}

/// Why the breaker stopped a sweep before its first write.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyStop {
    pub actions: u64,
    pub records_scanned: u64,
    pub max_action_ratio: f64,
    pub max_action_floor: u64,
}

impl fmt::Display for SafetyStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "safety stop: {} state-changing actions for {} records scanned exceed \
             sweep.max_action_ratio = {} (and sweep.max_action_floor = {}); nothing was written; \
             check the findings with --dry-run, then rerun with --force if they are right",
            self.actions, self.records_scanned, self.max_action_ratio, self.max_action_floor
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn database(context: impl Into<String>, source: sqlx::Error) -> Self {
        Error::Database {
            context: context.into(),
            source,
        }
    }

    pub fn storage(context: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Storage {
            context: context.into(),
            message: message.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The process exit code for this error, as the contract lists them.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } | Error::Usage(_) => 2,
            Error::SafetyStop(_) => 4,
            Error::Database { .. }
            | Error::Migrate(_)
            | Error::Storage { .. }
            | Error::Unordered { .. }
            | Error::Busy(_)
            | Error::Io { .. }
            | Error::Interrupted(_) => 1,
        }
    }

    /// The dependency this error is the failure of, if it is one. The policies that retry once
    /// the dependency answers again (the event pollers') bound their retries themselves: a query
    /// error that outlives the outage is the work's own.
    pub fn dependency(&self) -> Option<Dependency> {
        match self {
            Error::Database { .. } | Error::Migrate(_) => Some(Dependency::Database),
            Error::Storage { .. } => Some(Dependency::Bucket),
            Error::Config { .. }
            | Error::Usage(_)
            | Error::Unordered { .. }
            | Error::SafetyStop(_)
            | Error::Busy(_)
            | Error::Io { .. }
            | Error::Interrupted(_) => None,
        }
    }
}

/// sqlx's own Display of a server error ends with the server's C source line; keep what helps.
fn describe_sqlx(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".into(),
        other => other.to_string(),
    }
}

/// An error and its sources on one line, each said once, cut at 400 characters: what users see
/// of a failure deep in a client library.
pub fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    let line = parts.join(": ").replace('\n', " ");
    match line.char_indices().nth(400) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

#[cfg(feature = "s3")]
/// One readable line for an AWS SDK error (S3 and SQS alike): the service's error code and
/// message, or what went wrong on the way (connection, timeout), never the SDK's debug dump.
pub fn describe_sdk<E>(
    error: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_s3::error::SdkError;
    match error {
        SdkError::ServiceError(service) => {
            let e = service.err();
            match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => {
                    format!("{code} (HTTP {})", service.raw().status().as_u16())
                }
                _ => format!("the server refused the request ({})", causes(e)),
            }
        }
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        SdkError::DispatchFailure(_) => format!("cannot reach the endpoint: {}", causes(error)),
        _ => causes(error),
    }
}
