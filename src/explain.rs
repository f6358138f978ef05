//! `reconcile explain ID|KEY`: everything known about one doc, and what a sweep would do now.

use crate::bucket::Bucket;
use crate::catalog::{AuditEntry, Catalog};
use crate::decide::{Decision, Policy, adoptable, decide, decide_key, decide_keyless};
use crate::error::{Error, Result};
use crate::model::{Job, MultipartUpload, ObjectMeta, ObjectVersion, Record, key_of};
use crate::report::Format;
use crate::sweep::{Seen, second_look};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use std::io::Write;

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub id: String,
    pub key: String,
    pub record: Option<Record>,
    /// A fresh HEAD of the object.
    pub object: Option<ObjectMeta>,
    /// The multipart uploads in progress at the key, oldest first, each with what a sweep would
    /// do with it.
    pub uploads: Vec<UploadVerdict>,
    /// The key's history (versions and delete markers, newest first) in a bucket that keeps
    /// versions; `None` in one that does not.
    pub versions: Option<Vec<ObjectVersion>>,
    /// The doc's post-processing job, if it has one.
    pub job: Option<Job>,
    /// `None` when the reconciler's tables do not exist yet.
    pub audit_trail: Option<Vec<AuditEntry>>,
    pub decision: Verdict,
}

impl Explanation {
    /// Neither a record, an object, a job nor an audit line: the argument names no doc (a
    /// deleted doc with a history still has one to show).
    pub fn matches_nothing(&self) -> bool {
        self.record.is_none()
            && self.object.is_none()
            && self.job.is_none()
            && self.audit_trail.as_ref().is_none_or(Vec::is_empty)
    }
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    /// The finding kind, `in_grace`, or `null` when record and object agree.
    pub finding: Option<&'static str>,
    pub action: Option<&'static str>,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct UploadVerdict {
    pub upload_id: String,
    pub initiated: DateTime<Utc>,
    /// `abandoned_multipart` or `in_grace`.
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
    // By id; failing that, as a key (under the prefix, or below it: a key column holds keys
    // below the prefix).
    let below = id_or_key
        .strip_prefix(prefix)
        .filter(|_| !prefix.is_empty())
        .unwrap_or(id_or_key);
    let mut record = catalog.record(id_or_key).await?;
    if record.is_none() {
        record = catalog.record_at(below).await?;
    }
    // The doc's id and its key below the prefix: the record's, or for an object without one,
    // the key asked for. A record without a key (its key column empty) has no object.
    let (id, name) = match &record {
        Some(record) => (record.id.clone(), record.key.clone()),
        None => (below.to_owned(), Some(below.to_owned())),
    };
    let key = name.as_deref().map(|name| key_of(prefix, name));
    let mut object = match &key {
        Some(key) => bucket.head(key).await?,
        None => None,
    };
    if let (Some(object), Some(key)) = (object.as_mut(), &key) {
        // As the listing marks it: a file a link leads to is a doc's bytes, never an orphan.
        object.linked = bucket.reached_by_link(key).await?;
    }
    let uploads = match &key {
        Some(key) => uploads_at(bucket, key).await?,
        None => Vec::new(),
    };
    let key = key.unwrap_or_default();
    let audit_trail = catalog.audit_trail(&id, &key).await?;
    let job = catalog.job(&id).await?;
    let versioning = bucket.versioning().await?;
    let versions = match versioning.keeps_versions() && name.is_some() {
        true => Some(bucket.versions(&key).await?),
        false => None,
    };
    let (decision, upload_decisions) = match (&record, &name) {
        (Some(record), None) => (decide_keyless(record, now, policy), Vec::new()),
        _ => {
            // The sweep's decision: a pending record whose upload is in progress is in grace.
            let (decision, upload_decisions) =
                decide_key(record.as_ref(), object.as_ref(), &uploads, now, policy);
            // An orphan whose name is no key of the column's type is reported, as the sweep
            // does.
            let decision = adoptable(decision, below, catalog.key_kind());
            // And its second look: a missing object's versions, a returned object's noted facts.
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
            (decision, upload_decisions)
        }
    };
    let consistent = match (&record, &object) {
        (None, None) if uploads.is_empty() => "no record and no object by that id or key",
        _ => "record and object agree",
    };
    let uploading = matches!(decision, Decision::InGrace)
        && !matches!(
            decide(record.as_ref(), object.as_ref(), now, policy),
            Decision::InGrace
        );
    let mut decision = verdict(decision, consistent);
    if uploading {
        decision.detail = "pending, with a multipart upload in progress at its key; a sweep \
                           leaves it alone until the upload completes or is abandoned"
            .into();
    }
    let uploads = uploads
        .into_iter()
        .zip(upload_decisions)
        .map(|(upload, decision)| {
            let Verdict {
                finding,
                action,
                detail,
            } = verdict(decision, "in progress");
            UploadVerdict {
                upload_id: upload.upload_id,
                initiated: upload.initiated,
                finding,
                action,
                detail,
            }
        })
        .collect();
    Ok(Explanation {
        id,
        key,
        record,
        object,
        uploads,
        versions,
        job,
        audit_trail,
        decision,
    })
}

/// The uploads in progress at exactly `key` (listed with the key as prefix, which also lists
/// longer keys), oldest first as the sweep has them.
async fn uploads_at(bucket: &dyn Bucket, key: &str) -> Result<Vec<MultipartUpload>> {
    let mut uploads: Vec<MultipartUpload> = bucket
        .multipart_uploads(key)
        .try_filter(|upload| futures::future::ready(upload.key == key))
        .try_collect()
        .await?;
    uploads.sort_by(|a, b| (a.initiated, &a.upload_id).cmp(&(b.initiated, &b.upload_id)));
    Ok(uploads)
}

fn verdict(decision: Decision, consistent: &str) -> Verdict {
    match decision {
        Decision::Consistent => Verdict {
            finding: None,
            action: None,
            detail: consistent.into(),
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
    }
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
    for u in &e.uploads {
        s.push_str(&format!(
            "upload  {}, started {}: {}{}: {}\n",
            u.upload_id,
            time(u.initiated),
            u.finding.unwrap_or("consistent"),
            u.action.map(|a| format!(" -> {a}")).unwrap_or_default(),
            u.detail
        ));
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
