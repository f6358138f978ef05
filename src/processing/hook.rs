//! The hooks: a webhook POST or a command, each bounded by a timeout. Errors come back as text
//! fit for the job's `last_error`, cut to a bounded size, and are read in bounded memory too: a
//! command's output streams into a tail, a webhook's error body is read to its first bytes only.

use crate::config::{HookKind, ProcessingConfig};
use crate::redact;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a hook is told about the doc.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Call<'a> {
    pub id: &'a str,
    pub key: &'a str,
    pub bucket: &'a str,
    pub size: Option<i64>,
    pub etag: Option<&'a str>,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HookError {
    /// The hook said no (non-2xx, non-zero exit, connection refused...).
    Failed(String),
    /// It did not answer within `processing.timeout`.
    Timeout,
}

impl HookError {
    /// The `result` label of `reconcile_processing_attempts_total`.
    pub fn label(&self) -> &'static str {
        match self {
            HookError::Failed(_) => "error",
            HookError::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for HookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookError::Failed(why) => f.write_str(why),
            HookError::Timeout => f.write_str("timed out"),
        }
    }
}

/// How much of a hook's output or error a job keeps.
pub const MAX_ERROR_BYTES: usize = 2048;

pub enum Hook {
    Webhook {
        client: reqwest::Client,
        url: String,
        timeout: Duration,
    },
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
}

impl Hook {
    /// The configured hook; `None` for `hook = "none"` (nothing to run).
    pub fn from_config(config: &ProcessingConfig) -> Option<Hook> {
        match config.hook {
            HookKind::None => None,
            HookKind::Webhook => Some(Hook::Webhook {
                client: reqwest::Client::new(),
                url: config.url.clone().unwrap_or_default(),
                timeout: config.timeout,
            }),
            HookKind::Command => Some(Hook::Command {
                argv: config.command.clone().unwrap_or_default(),
                timeout: config.timeout,
            }),
        }
    }

    pub async fn call(&self, call: &Call<'_>) -> Result<(), HookError> {
        match self {
            Hook::Webhook {
                client,
                url,
                timeout,
            } => webhook(client, url, *timeout, call).await,
            Hook::Command { argv, timeout } => command(argv, *timeout, call).await,
        }
    }
}

async fn webhook(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    call: &Call<'_>,
) -> Result<(), HookError> {
    let attempt = async {
        // reqwest repeats the URL, token and all, in its errors: say it once, redacted.
        let response = client.post(url).json(call).send().await.map_err(|e| {
            HookError::Failed(format!(
                "POST {}: {}",
                redact::endpoint(url),
                crate::error::causes(&e.without_url())
            ))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = body_start(response, MAX_ERROR_BYTES).await;
        Err(HookError::Failed(bounded(&format!(
            "POST {} answered {status}: {}",
            redact::endpoint(url),
            String::from_utf8_lossy(&body)
        ))))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(HookError::Timeout),
    }
}

async fn command(argv: &[String], timeout: Duration, call: &Call<'_>) -> Result<(), HookError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(HookError::Failed("processing.command is empty".into()));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("DOC_ID", call.id)
        .env("OBJECT_KEY", call.key)
        .env("BUCKET", call.bucket)
        .env("ATTEMPT", call.attempt.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A command that overruns its timeout is killed, not left behind.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HookError::Failed(format!("cannot start {program:?}: {e}")))?;
    // Read as it comes, keeping only the end: the output may be larger than memory.
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (stdout, stderr) = tokio::join!(
            output_tail(stdout, MAX_ERROR_BYTES),
            output_tail(stderr, MAX_ERROR_BYTES)
        );
        (child.wait().await, stdout, stderr)
    };
    let (status, stdout, stderr) = match tokio::time::timeout(timeout, run).await {
        Ok((Ok(status), stdout, stderr)) => (status, stdout, stderr),
        Ok((Err(e), _, _)) => {
            return Err(HookError::Failed(format!("waiting for {program:?}: {e}")));
        }
        Err(_) => return Err(HookError::Timeout),
    };
    if status.success() {
        return Ok(());
    }
    // stderr last: the tail that is kept is where the error usually is.
    let mut text = String::from_utf8_lossy(&stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&stderr));
    let head = format!("{program:?} exited with {status}: ");
    let room = MAX_ERROR_BYTES.saturating_sub(head.len());
    Err(HookError::Failed(format!("{head}{}", tail(&text, room))))
}

/// The last `room` bytes a pipe gives until it closes (or fails), read as they come: memory
/// holds the read buffer and at most three times `room`, whatever the command writes.
async fn output_tail(pipe: Option<impl AsyncRead + Unpin>, room: usize) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::with_capacity(2 * room);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let new = &chunk[..n];
                if new.len() >= room {
                    kept.clear();
                    kept.extend_from_slice(&new[new.len() - room..]);
                } else {
                    kept.extend_from_slice(new);
                    if kept.len() > 2 * room {
                        kept.drain(..kept.len() - room);
                    }
                }
            }
        }
    }
    if kept.len() > room {
        kept.drain(..kept.len() - room);
    }
    kept
}

/// The first `room` bytes of a response's body; the rest is never read (the connection is
/// dropped with the response), however long the body or endless the stream.
async fn body_start(mut response: reqwest::Response, room: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    while kept.len() < room {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(room - kept.len());
                kept.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    kept
}

/// The last `room` bytes of a long output (where the error usually is), on a char boundary.
fn tail(text: &str, room: usize) -> &str {
    let text = text.trim();
    if text.len() <= room {
        return text;
    }
    let mut start = text.len() - room;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// At most `MAX_ERROR_BYTES`, cut on a character boundary.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_ERROR_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call<'static> {
        Call {
            id: "doc 1",
            key: "docs/doc 1",
            bucket: "uploads",
            size: Some(3),
            etag: None,
            attempt: 2,
        }
    }

    #[tokio::test]
    async fn a_command_sees_the_doc_in_its_environment() {
        let argv: Vec<String> = [
            "sh",
            "-c",
            r#"test "$DOC_ID" = "doc 1" && test "$OBJECT_KEY" = "docs/doc 1" && test "$BUCKET" = uploads && test "$ATTEMPT" = 2"#,
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            command(&argv, Duration::from_secs(5), &call()).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn a_failing_command_keeps_the_end_of_its_output_bounded() {
        let argv: Vec<String> = [
            "sh",
            "-c",
            "yes 0123456789 | head -c 100000; echo THE-END >&2; exit 3",
        ]
        .map(String::from)
        .to_vec();
        match command(&argv, Duration::from_secs(5), &call()).await {
            Err(HookError::Failed(why)) => {
                assert!(why.contains("exit status: 3"), "{why}");
                assert!(why.contains("THE-END"), "{why}");
                assert!(why.len() <= MAX_ERROR_BYTES, "{} bytes", why.len());
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_a_timeout() {
        let argv: Vec<String> = ["sleep", "5"].map(String::from).to_vec();
        let started = std::time::Instant::now();
        assert_eq!(
            command(&argv, Duration::from_millis(200), &call()).await,
            Err(HookError::Timeout)
        );
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_failure_naming_it() {
        let argv: Vec<String> = ["/nonexistent/hook"].map(String::from).to_vec();
        match command(&argv, Duration::from_secs(1), &call()).await {
            Err(HookError::Failed(why)) => assert!(why.contains("/nonexistent/hook"), "{why}"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
