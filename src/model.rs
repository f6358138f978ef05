//! Plain data shared by every stage: records, objects, findings, actions. No I/O here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The six states a doc moves through, by their canonical names. An app table spells them in its
/// own words (`[database.statuses]`); the catalog translates at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Uploaded,
    Processed,
    Failed,
    Expired,
    Missing,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Uploaded,
        Status::Processed,
        Status::Failed,
        Status::Expired,
        Status::Missing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Uploaded => "uploaded",
            Status::Processed => "processed",
            Status::Failed => "failed",
            Status::Expired => "expired",
            Status::Missing => "missing",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the app table, as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// The object's key below `storage.prefix`: the id, or the value of `database.key_column`.
    /// `None` when that column is NULL or empty (a file field never filled): no object pairs
    /// with the record, which is judged by its status alone.
    #[serde(default)]
    pub key: Option<String>,
    /// The status word exactly as stored, so a write can check that nothing changed since.
    pub raw_status: String,
    /// `None` when the word maps to none of the six statuses: such rows are never touched.
    pub status: Option<Status>,
    pub created_at: DateTime<Utc>,
    /// The last change of the row, when the table has such a column.
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    /// The state of the doc's post-processing job, if it has one.
    #[serde(default)]
    pub job: Option<JobState>,
}

/// Where a post-processing job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    pub fn parse(word: &str) -> Option<JobState> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Done,
            JobState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == word)
    }

    /// A job that a worker will still run.
    pub fn is_live(self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }
}

/// One object of the bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub key: String,
    pub size: i64,
    pub etag: Option<String>,
    /// When the object arrived at its key. For a folder that is the later of the file's mtime
    /// and ctime: `mv`, `cp -p`, `rsync -a` and `tar x` keep an old mtime, but the rename or
    /// the copy sets ctime to now.
    pub last_modified: DateTime<Utc>,
    /// Folder buckets only: a symbolic link inside the folder leads to this file, so its bytes
    /// are a doc's even when no record names its own key (a content-addressed layout). Such an
    /// object is never an orphan. Always false on S3 and on a HEAD (the folder's delete
    /// re-checks it itself).
    #[serde(default)]
    pub linked: bool,
}

#[cfg(test)]
impl ObjectMeta {
    /// A three-byte object, for unit tests.
    pub fn sample(key: &str, etag: &str, last_modified: DateTime<Utc>) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 3,
            etag: Some(etag.into()),
            last_modified,
            linked: false,
        }
    }
}

/// One entry of a key's version history in a versioned bucket: an object version or a delete
/// marker. A marker has no size or ETag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectVersion {
    pub key: String,
    pub version_id: String,
    pub is_delete_marker: bool,
    /// The current version of the key (for a marker: the key reads as absent).
    pub is_latest: bool,
    pub size: i64,
    pub etag: Option<String>,
    /// For a marker: when it was set (when the object was deleted).
    pub last_modified: DateTime<Utc>,
}

impl ObjectVersion {
    /// The object this version holds, as a listing would show it current.
    pub fn as_object(&self) -> ObjectMeta {
        ObjectMeta {
            key: self.key.clone(),
            size: self.size,
            etag: self.etag.clone(),
            last_modified: self.last_modified,
            linked: false,
        }
    }
}

/// Whether a bucket keeps the versions of its objects (GetBucketVersioning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Versioning {
    /// Never enabled (or a store without versions: a folder, garage): a delete is final.
    Unversioned,
    Enabled,
    /// Enabled once, suspended since: the versions kept until then are still there, and a delete
    /// still sets a marker (with the `null` version id).
    Suspended,
}

impl Versioning {
    /// Whether a key's history may hold versions and delete markers.
    pub fn keeps_versions(self) -> bool {
        self != Versioning::Unversioned
    }
}

/// A multipart upload in progress (started, neither completed nor aborted): no object exists
/// for it yet, but its parts are stored, and billed, until one of the two happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultipartUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: DateTime<Utc>,
}

/// What a sweep can find. `InGrace` is counted, never acted on and never listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    StalePending,
    LostNotification,
    LateUpload,
    OrphanObject,
    MissingObject,
    StuckProcessing,
    ProcessingExhausted,
    AbandonedMultipart,
    /// A `missing` record whose object is present again (put back, or its delete marker removed).
    ObjectReturned,
    InGrace,
    /// Not a sweep's: a pending record adopted because its own event (S3's, or a file landing
    /// in a watched folder) said the upload arrived. Nothing was lost, so it is audited and
    /// counted apart from `LostNotification`, which only a sweep can find.
    UploadConfirmed,
}

impl FindingKind {
    /// Every kind a sweep can find, in the order reports list them.
    pub const ALL: [FindingKind; 10] = [
        FindingKind::StalePending,
        FindingKind::LostNotification,
        FindingKind::LateUpload,
        FindingKind::OrphanObject,
        FindingKind::MissingObject,
        FindingKind::StuckProcessing,
        FindingKind::ProcessingExhausted,
        FindingKind::AbandonedMultipart,
        FindingKind::ObjectReturned,
        FindingKind::InGrace,
    ];

    /// How many kinds there are, the event path's own included: the size of a table by kind.
    pub const COUNT: usize = FindingKind::UploadConfirmed as usize + 1;

    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::StalePending => "stale_pending",
            FindingKind::LostNotification => "lost_notification",
            FindingKind::LateUpload => "late_upload",
            FindingKind::OrphanObject => "orphan_object",
            FindingKind::MissingObject => "missing_object",
            FindingKind::StuckProcessing => "stuck_processing",
            FindingKind::ProcessingExhausted => "processing_exhausted",
            FindingKind::AbandonedMultipart => "abandoned_multipart",
            FindingKind::ObjectReturned => "object_returned",
            FindingKind::InGrace => "in_grace",
            FindingKind::UploadConfirmed => "upload_confirmed",
        }
    }
}

/// What to do about an orphan object (`sweep.orphan_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrphanAction {
    #[default]
    Report,
    Adopt,
    Quarantine,
    Delete,
}

/// What to do about a record whose object is gone (`sweep.missing_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingAction {
    /// Mark the record `missing` (and let the alert fire).
    #[default]
    Mark,
    /// In a versioned bucket, remove the delete marker over the version the reconciler noted
    /// (within `restore_window`); anything else is marked as with `mark`.
    Restore,
}

/// What a finding asks for. Everything but `Report` changes state and counts for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing to write: the finding is only reported.
    Report,
    /// A pending record whose upload never came: status -> expired.
    Expire,
    /// A pending or expired record whose object exists: status -> uploaded, object facts noted.
    Adopt,
    /// An object with no record: create the record as uploaded.
    CreateRecord,
    /// An object with no record: copy it under the quarantine prefix, then delete it.
    Quarantine,
    /// An object with no record: delete it.
    Delete,
    /// A record whose object is gone: status -> missing. The record itself is kept.
    MarkMissing,
    /// An uploaded record whose processing never finished: enqueue it again.
    Enqueue,
    /// An uploaded record whose processing gave up: status -> failed.
    Fail,
    /// A multipart upload nobody will complete: AbortMultipartUpload frees its parts.
    Abort,
    /// A missing record whose object is back, the very one noted before it went missing, whose
    /// processing had finished: status -> processed, nothing to process again.
    Readopt,
    /// A record whose object was deleted in a versioned bucket: remove the delete marker, so the
    /// version beneath it (the one noted for the doc) is current again.
    Restore,
}

impl Action {
    /// The word reports and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Report => "report",
            Action::Expire => "expire",
            Action::Adopt | Action::CreateRecord | Action::Readopt => "adopt",
            Action::Quarantine => "quarantine",
            Action::Delete => "delete",
            Action::MarkMissing => "mark_missing",
            Action::Enqueue => "enqueue",
            Action::Fail => "fail",
            Action::Abort => "abort",
            Action::Restore => "restore",
        }
    }

    pub fn changes_state(self) -> bool {
        self != Action::Report
    }

    /// Whether the action only sets the record's status (no object, job or bucket change), so
    /// that many can share one transaction.
    pub fn is_status_only(self) -> bool {
        matches!(self, Action::Expire | Action::Fail | Action::MarkMissing)
    }

    /// Whether the action changes the bucket (quarantine, delete, abort, restore): a change no database
    /// transaction can roll back, made with none open.
    pub fn changes_bucket(self) -> bool {
        matches!(
            self,
            Action::Quarantine | Action::Delete | Action::Abort | Action::Restore
        )
    }
}

/// One inconsistency found by a sweep, with what was observed, so the executor can check that the
/// world still looks the same before it acts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub id: String,
    pub key: String,
    pub action: Action,
    pub detail: String,
    /// The record as read by the sweep (`None` for orphans).
    pub record: Option<Record>,
    /// The object as listed by the sweep (`None` when absent).
    pub object: Option<ObjectMeta>,
    /// For `abandoned_multipart`: the upload as listed by the sweep.
    #[serde(default)]
    pub upload: Option<MultipartUpload>,
}

/// How the executor dealt with one finding.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Written (and audited).
    Applied,
    /// Dry-run: would have been written.
    DryRun,
    /// Nothing to write (`Action::Report`).
    Reported,
    /// The world changed since the sweep read it; left alone for the next sweep.
    Skipped(String),
    /// The write failed; nothing of it was committed.
    Failed(String),
}

impl Outcome {
    /// The word reports use; `applied`, `failed` and `dry_run` are also the metric's `result`s.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::DryRun => "dry_run",
            Outcome::Reported => "reported",
            Outcome::Skipped(_) => "skipped",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// Keys in S3 notifications and URL-encoded listings are form-encoded: `+` is a space (AWS's
/// spelling; others write `%20`), a real `+` is `%2B`. `None` when the bytes are not UTF-8.
pub fn decode_form(raw: &str) -> Option<String> {
    // Most listed keys hold neither: one copy instead of two (a sweep decodes every key).
    if !raw.bytes().any(|b| b == b'+' || b == b'%') {
        return Some(raw.to_owned());
    }
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|key| key.into_owned())
}

/// The bucket key of a doc: `prefix + id`.
pub fn key_of(prefix: &str, id: &str) -> String {
    format!("{prefix}{id}")
}

/// A post-processing job, one per doc.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub doc_id: String,
    pub key: String,
    pub state: JobState,
    /// Attempts started (counted when claimed, so one that never reported back counts too).
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_until: Option<DateTime<Utc>>,
    pub leased_by: Option<String>,
    pub last_error: Option<String>,
    pub size: Option<i64>,
    pub etag: Option<String>,
}

/// What the app table's id column holds, as far as which texts can be its ids: a key names a
/// record only through the canonical text of an id (the text the database gives back for it), so
/// a key that is no such text can never be a record's, and must not be made one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdKind {
    /// Any text (text, varchar, and every type not checked here).
    #[default]
    Text,
    /// A uuid: lower-case hex, hyphenated (`abcdef00-0000-0000-0000-000000000002`).
    Uuid,
    /// An integer in this range, in decimal with no leading zeros or `+`.
    Integer { min: i64, max: i64 },
}

impl IdKind {
    /// Why `id` cannot be an id of this kind; `None` when it can.
    pub fn refusal(self, id: &str) -> Option<String> {
        match self {
            IdKind::Text => None,
            IdKind::Uuid => match uuid::Uuid::try_parse(id) {
                Ok(u) if u.hyphenated().to_string() == id => None,
                Ok(u) => Some(format!(
                    "the id column is a uuid, and {id:?} is not how the database writes one \
                     (it would be {:?})",
                    u.hyphenated().to_string()
                )),
                Err(_) => Some(format!("the id column is a uuid, and {id:?} is not one")),
            },
            IdKind::Integer { min, max } => match id.parse::<i64>() {
                Ok(n) if n.to_string() == id && (min..=max).contains(&n) => None,
                Ok(n) if n.to_string() == id => Some(format!(
                    "the id column holds integers from {min} to {max}, and {id} is out of range"
                )),
                _ => Some(format!(
                    "the id column holds integers, and {id:?} is not one as the database \
                     writes it"
                )),
            },
        }
    }
}
