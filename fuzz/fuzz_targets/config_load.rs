//! Any text as the TOML configuration, through `Config::from_toml` (figment's reading, then
//! `validate`). It must never panic, and:
//!
//! - an error is a configuration error that names the key at fault (README: "the message names
//!   the key, file or flag"), and the line `reconcile` prints for it is one line;
//! - that line hides the configured secrets (README, "Secrets are not printed"): the error is
//!   printed before any secret is registered, so only their place can hide them. Checked for
//!   the values `Config::secrets` would register, of 8 characters or more (shorter ones are
//!   documented to be hidden only where their place gives them away);
//! - a configuration that validates is one the daemon can run: the values it derives (the
//!   engine's rules, the lease, the schedule's next tick, the pruning cutoffs, the times a lease
//!   ends and a retry comes) are computed without a panic.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use upload_reconciler::config::Config;
use upload_reconciler::processing::RetryPolicy;
use upload_reconciler::{Error, redact};

/// The sections of the configuration: an error's key is one of them or below one, unless it is
/// a key the user wrote that does not exist, or the document as a whole.
const SECTIONS: [&str; 7] = [
    "database",
    "storage",
    "sweep",
    "events",
    "processing",
    "server",
    "retention",
];

/// What `from_toml` calls the document as a whole (a TOML syntax error has no key to name).
const WHOLE_DOCUMENT: &str = "config";

/// Where `Config::secrets` finds secrets: (section, key, the whole query is a credential).
const SECRET_URLS: [(&str, &str, bool); 5] = [
    ("database", "url", false),
    ("storage", "endpoint_url", false),
    ("events", "queue_url", false),
    ("events", "endpoint_url", false),
    ("processing", "url", true),
];

/// README: values under 8 characters are hidden only where their place in a URL gives them away.
const MIN_SECRET_LEN: usize = 8;

fuzz_target!(|data: &[u8]| {
    // A configuration file is read as UTF-8 text.
    let text = String::from_utf8_lossy(data);
    match Config::from_toml(&text) {
        Ok(config) => check_runnable(&config, Utc::now()),
        Err(error) => check_error(&text, &error),
    }
});

/// The line `reconcile` prints for an error (see main.rs).
fn printed(error: &Error) -> String {
    format!("reconcile: {}", redact::text(&error.to_string()))
}

fn check_error(text: &str, error: &Error) {
    let Error::Config { key, message } = error else {
        panic!("not a configuration error: {error:?}");
    };
    let line = printed(error);
    assert!(!line.contains(['\n', '\r']), "more than one line: {line:?}");
    let section = key.split('.').next().unwrap_or_default();
    assert!(
        key == WHOLE_DOCUMENT || SECTIONS.contains(&section) || message.starts_with("unknown key"),
        "names no key: {line:?}"
    );
    for secret in secrets_in(text) {
        if secret.len() < MIN_SECRET_LEN || text.matches(secret.as_str()).count() != 1 {
            continue;
        }
        if !line.contains(secret.as_str()) {
            continue;
        }
        // The secret may be in the line for another reason (a word of a fixed message): change
        // it in the document; if it leaves the line, the line was quoting the document.
        let changed = text.replacen(secret.as_str(), &rotated(&secret), 1);
        let line_of_changed = match Config::from_toml(&changed) {
            Err(error) => printed(&error),
            Ok(_) => String::new(),
        };
        assert!(
            line_of_changed.contains(secret.as_str()),
            "the secret {secret:?} is shown: {line:?}"
        );
    }
}

/// The secrets `Config::secrets` would register for this document, read with the TOML reader
/// figment uses. A document that is not TOML has no keys: every URL in it counts, read as
/// strictly as a webhook's (whose whole query is a credential).
fn secrets_in(text: &str) -> Vec<String> {
    let Ok(document) = text.parse::<toml::Table>() else {
        return urls_in(text)
            .flat_map(redact::secrets_in_endpoint)
            .collect();
    };
    SECRET_URLS
        .iter()
        .filter_map(|(section, key, whole_query)| {
            let url = document.get(*section)?.get(*key)?.as_str()?;
            Some(if *whole_query {
                redact::secrets_in_endpoint(url)
            } else {
                redact::secrets_in_url(url)
            })
        })
        .flatten()
        .collect()
}

/// `scheme://...` up to a space, a quote or a control character.
fn urls_in(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices("://").filter_map(|(at, _)| {
        let scheme_len = text[..at]
            .bytes()
            .rev()
            .take_while(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
            .count();
        let start = at - scheme_len;
        let end = text[at..]
            .find(|c: char| c.is_whitespace() || c.is_control() || "\"'".contains(c))
            .map_or(text.len(), |i| at + i);
        (start < at).then(|| &text[start..end])
    })
}

/// The same text with every ASCII letter and digit moved one place on (`a`->`b`, `9`->`0`): the
/// document keeps its shape, the secret is no longer in it.
fn rotated(secret: &str) -> String {
    secret
        .chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            c if c.is_ascii_alphanumeric() => char::from(c as u8 + 1),
            c => c,
        })
        .collect()
}

/// What the daemon derives from a valid configuration, computed as it does.
fn check_runnable(config: &Config, now: DateTime<Utc>) {
    let _ = config.rules();
    let _ = config.secrets();
    config.storage.location().expect("a validated bucket");
    let schedule = config.sweep.cron().expect("a validated schedule");
    let _ = schedule.upcoming(Utc).next();
    let processing = &config.processing;
    let lease = processing.lease();
    let retry = RetryPolicy {
        max_attempts: processing.max_attempts,
        base: processing.backoff_base,
        max: processing.backoff_max,
    };
    let longest_retry = retry.delay(processing.max_attempts, 1.0);
    // Pruning computes its cutoffs, now minus each retention.
    let _ = config.retention.retention().targets(now);
    // The catalogs write these as times: when a job's lease ends (claim_job), when its next
    // attempt comes (the worker).
    for (what, duration) in [
        ("the lease", lease),
        ("the longest retry wait", longest_retry),
    ] {
        assert!(
            is_a_time_from(now, duration),
            "{what} ({duration:?}) is valid, but now plus it is not a time"
        );
    }
}

fn is_a_time_from(now: DateTime<Utc>, duration: Duration) -> bool {
    chrono::Duration::from_std(duration).is_ok_and(|d| now.checked_add_signed(d).is_some())
}
