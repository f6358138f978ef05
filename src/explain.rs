//! `reconcile explain ID|KEY`: everything known about one doc, and what a sweep would do now.

use crate::bucket::Bucket;
use crate::catalog::{AuditEntry, Catalog};
use crate::decide::{Decision, Policy, decide};
use crate::error::{Error, Result};
use crate::model::{Job, ObjectMeta, ObjectVersion, Record, key_of};
use crate::report::Format;
use crate::sweep::{Seen, second_look};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::io::Write;

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub id: String,
    pub key: String,
    pub record: Option<Record>,
    /// A fresh HEAD of the object.
    pub object: Option<ObjectMeta>,
    /// The key's history (versions and delete markers, newest first) in a bucket that keeps
    /// versions; `None` in one that does not.
    pub versions: Option<Vec<ObjectVersion>>,
    /// The doc's post-processing job, if it has one.
    pub job: Option<Job>,
    /// `None` when the reconciler's tables do not exist yet.
    pub audit_trail: Option<Vec<AuditEntry>>,
    pub decision: Verdict,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    /// The finding kind, `in_grace`, or `null` when record and object agree.
    pub finding: Option<&'static str>,
    pub action: Option<&'static str>,
    pub detail: String,
}

/// Find the doc by id first; failing that, read the argument as a key under the prefix.
pub async fn explain(
    catalog: &dyn Catalog,
    bucket: &dyn Bucket,
    prefix: &str,
    policy: &Policy,
    id_or_key: &str,
    now: DateTime<Utc>,
) -> Result<Explanation> {
    let mut id = id_or_key.to_owned();
    let mut record = catalog.record(&id).await?;
    if record.is_none()
        && let Some(stripped) = id_or_key
            .strip_prefix(prefix)
            .filter(|_| !prefix.is_empty())
    {
        id = stripped.to_owned();
        record = catalog.record(&id).await?;
    }
    let key = key_of(prefix, &id);
    let object = bucket.head(&key).await?;
    let audit_trail = catalog.audit_trail(&id, &key).await?;
    let job = catalog.job(&id).await?;
    let versioning = bucket.versioning().await?;
    let versions = match versioning.keeps_versions() {
        true => Some(bucket.versions(&key).await?),
        false => None,
    };
    let decision = decide(record.as_ref(), object.as_ref(), now, policy);
    let seen = Seen {
        record: record.as_ref(),
        object: object.as_ref(),
        key: &key,
    };
    let decision = second_look(
        catalog,
        bucket,
        policy,
        decision,
        seen,
        now,
        &mut Some(versioning),
    )
    .await?;
    let decision = match decision {
        Decision::Consistent => Verdict {
            finding: None,
            action: None,
            detail: match (&record, &object) {
                (None, None) => "no record and no object by that id or key".into(),
                _ => "record and object agree".into(),
            },
        },
        Decision::InGrace => Verdict {
            finding: Some("in_grace"),
            action: None,
            detail: "younger than its grace period; a sweep leaves it alone for now".into(),
        },
        Decision::Drift {
            kind,
            action,
            detail,
        } => Verdict {
            finding: Some(kind.as_str()),
            action: Some(action.as_str()),
            detail,
        },
    };
    Ok(Explanation {
        id,
        key,
        record,
        object,
        versions,
        job,
        audit_trail,
        decision,
    })
}

pub fn print(explanation: &Explanation, format: Format, out: &mut dyn Write) -> Result<()> {
    // Errors kept in the job and the audit log may predate the redaction of the tables.
    let text = match format {
        Format::Json | Format::Jsonl => serde_json::to_string_pretty(explanation)
            .map_err(|e| Error::io("writing the explanation", e.into()))?,
        Format::Table => table(explanation),
    };
    writeln!(out, "{}", crate::redact::text(&text))
        .map_err(|e| Error::io("writing the explanation", e))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn table(e: &Explanation) -> String {
    let mut s = format!(
        "id      {}\nkey     {}\n",
        e.id.escape_debug(),
        e.key.escape_debug()
    );
    match &e.record {
        Some(r) => s.push_str(&format!(
            "record  status {:?}{}, created {}\n",
            r.raw_status,
            r.status
                .map(|st| format!(" ({st})"))
                .unwrap_or_else(|| " (not a status the reconciler manages)".into()),
            time(r.created_at)
        )),
        None => s.push_str("record  none\n"),
    }
    match &e.object {
        Some(o) => s.push_str(&format!(
            "object  {} bytes, etag {}, last modified {}\n",
            o.size,
            o.etag.as_deref().unwrap_or("-"),
            time(o.last_modified)
        )),
        None => s.push_str("object  none\n"),
    }
    if let Some(versions) = &e.versions {
        s.push_str(&format!("versions {} kept\n", versions.len()));
        for v in versions {
            let what = match v.is_delete_marker {
                true => "delete marker".to_owned(),
                false => format!(
                    "{} bytes, etag {}",
                    v.size,
                    v.etag.as_deref().unwrap_or("-")
                ),
            };
            s.push_str(&format!(
                "  {}{}  {}  {what}\n",
                v.version_id,
                if v.is_latest { " (current)" } else { "" },
                time(v.last_modified)
            ));
        }
    }
    if let Some(j) = &e.job {
        s.push_str(&format!(
            "job     {}, {} attempt(s), next {}{}\n",
            j.state.as_str(),
            j.attempts,
            time(j.next_attempt_at),
            j.last_error
                .as_deref()
                .map(|err| format!(", last error: {err}"))
                .unwrap_or_default()
        ));
    }
    match &e.audit_trail {
        None => s.push_str("audit   none (the reconciler's tables do not exist yet)\n"),
        Some(trail) if trail.is_empty() => s.push_str("audit   nothing applied to this doc\n"),
        Some(trail) => {
            s.push_str("audit\n");
            for a in trail {
                s.push_str(&format!(
                    "  {}  {} {} {} -> {}  {}\n",
                    time(a.at),
                    a.finding,
                    a.action,
                    a.old_status.as_deref().unwrap_or("-"),
                    a.new_status.as_deref().unwrap_or("-"),
                    a.detail
                ));
            }
        }
    }
    let v = &e.decision;
    s.push_str(&format!(
        "now     {}{}: {}",
        v.finding.unwrap_or("consistent"),
        v.action.map(|a| format!(" -> {a}")).unwrap_or_default(),
        v.detail
    ));
    s
}
