//! The decision core: given what the table and the bucket say about one key, and the time, what is
//! wrong and what should be done. Pure: no I/O, no clock of its own, so every case is a table row
//! in the tests below. The sweep and (later) the event path both ask this one function.

use crate::model::{
    Action, FindingKind, IdKind, JobState, MissingAction, MultipartUpload, ObjectMeta,
    ObjectVersion, OrphanAction, Record, Status,
};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The settings a decision depends on (from `[sweep]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub pending_ttl: Duration,
    pub orphan_grace: Duration,
    pub orphan_action: OrphanAction,
    /// How long a record may stay `uploaded` without a live processing job.
    pub processing_timeout: Duration,
    /// How long a multipart upload may stay in progress: until then its record, pending or
    /// expired, is still being uploaded (resumable uploads pause for days); after, it is
    /// abandoned and its parts are aborted.
    pub multipart_grace: Duration,
    /// How long an object must have been at its key before anything is done about it: a
    /// folder's file is visible while it is still being written (`storage.settle_time`). Zero
    /// for S3, whose objects appear whole.
    pub settle_time: Duration,
    /// What to do about a record whose object is gone: mark it, or (in a versioned bucket)
    /// restore the version under its delete marker.
    pub missing_action: MissingAction,
    /// How recent a delete marker must be for `restore` to remove it.
    pub restore_window: Duration,
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Record and object agree (or the record's status is not one we manage).
    Consistent,
    /// Looks wrong but is younger than its grace: counted, never touched.
    InGrace,
    /// An inconsistency and what to do about it.
    Drift {
        kind: FindingKind,
        action: Action,
        detail: String,
    },
}

/// Decide one key. `record` and `object` are what the table and the listing hold for it.
///
/// A folder marker (see [`is_folder_marker`]) is no object. An object younger than
/// `policy.settle_time` by arrival may still be growing: whatever it would call for waits
/// (in grace) until it has settled.
pub fn decide(
    record: Option<&Record>,
    object: Option<&ObjectMeta>,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Decision {
    let object = object.filter(|object| !is_folder_marker(object));
    match decide_settled(record, object, now, policy) {
        Decision::Drift { .. }
            if object.is_some_and(|o| age(o.last_modified, now) < policy.settle_time) =>
        {
            Decision::InGrace
        }
        decision => decision,
    }
}

/// A zero-byte object whose key ends in `/`: what the S3 console's "Create folder" (and other
/// tools) write to show a folder. Never a doc: no id ends in `/` that way by design, and
/// adopting one would make a record of a folder.
pub fn is_folder_marker(object: &ObjectMeta) -> bool {
    object.size == 0 && object.key.ends_with('/')
}

fn decide_settled(
    record: Option<&Record>,
    object: Option<&ObjectMeta>,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Decision {
    match (record, object) {
        (None, None) => Decision::Consistent,
        // A symbolic link leads to it: its bytes are a doc's, under another name.
        (None, Some(object)) if object.linked => Decision::Consistent,
        (None, Some(object)) => {
            let age = age(object.last_modified, now);
            if age <= policy.orphan_grace {
                return Decision::InGrace;
            }
            let action = match policy.orphan_action {
                OrphanAction::Report => Action::Report,
                OrphanAction::Adopt => Action::CreateRecord,
                OrphanAction::Quarantine => Action::Quarantine,
                OrphanAction::Delete => Action::Delete,
            };
            drift(
                FindingKind::OrphanObject,
                action,
                format!("object {}, {} bytes, no record", ago(age), object.size),
            )
        }
        (Some(record), object) => {
            let Some(status) = record.status else {
                // A status word the mapping does not know belongs to the app, not to us.
                return Decision::Consistent;
            };
            decide_record(record, status, object, now, policy)
        }
    }
}

/// A record without a key (its key column NULL or empty, a file field never filled): no object
/// can be its, so only what its status says alone holds. A pending one past its grace is stale;
/// one that says its object is there (uploaded, processed) never named one that could go missing.
pub fn decide_keyless(record: &Record, now: DateTime<Utc>, policy: &Policy) -> Decision {
    match decide(Some(record), None, now, policy) {
        Decision::Drift {
            kind: FindingKind::MissingObject,
            ..
        } => Decision::Consistent,
        decision => decision,
    }
}

/// An orphan that `orphan_action = "adopt"` would make a record of, when its id (its key less
/// the prefix) is no id of the column's kind: it cannot be adopted (the INSERT would fail, or
/// the database would store another spelling, whose object the next sweep would miss), so it is
/// reported, saying why. Every other decision stands.
pub fn adoptable(decision: Decision, id: &str, ids: IdKind) -> Decision {
    match decision {
        Decision::Drift {
            kind: FindingKind::OrphanObject,
            action: Action::CreateRecord,
            detail,
        } => match ids.refusal(id) {
            Some(why) => drift(
                FindingKind::OrphanObject,
                Action::Report,
                format!("{detail}; cannot be adopted: {why}"),
            ),
            None => Decision::Drift {
                kind: FindingKind::OrphanObject,
                action: Action::CreateRecord,
                detail,
            },
        },
        decision => decision,
    }
}

/// Decide one key of a sweep, with the multipart uploads in progress at it (oldest first): the
/// record and object as [`decide`] does, except that a pending record whose upload is still in
/// progress within `multipart_grace` is not stale but uploading (in grace); then one verdict per
/// upload, as [`decide_upload`] gives.
pub fn decide_key(
    record: Option<&Record>,
    object: Option<&ObjectMeta>,
    uploads: &[MultipartUpload],
    now: DateTime<Utc>,
    policy: &Policy,
) -> (Decision, Vec<Decision>) {
    let uploading = uploads
        .iter()
        .any(|upload| age(upload.initiated, now) <= policy.multipart_grace);
    let key = match decide(record, object, now, policy) {
        Decision::Drift {
            kind: FindingKind::StalePending,
            ..
        } if uploading => Decision::InGrace,
        decision => decision,
    };
    let verdicts = uploads
        .iter()
        .map(|upload| decide_upload(record, upload, now, policy))
        .collect();
    (key, verdicts)
}

/// Decide one multipart upload in progress. With a record (whatever its status: an expired
/// record's upload may still complete and be revived as a late upload), it is abandoned once
/// older than `multipart_grace`; with none, once older than `orphan_grace`, like an orphan
/// object. Abandoned uploads are aborted, never completed: their parts are not a user's file.
pub fn decide_upload(
    record: Option<&Record>,
    upload: &MultipartUpload,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Decision {
    let age = age(upload.initiated, now);
    let (grace, whose) = match record {
        Some(record) => (
            policy.multipart_grace,
            format!("{} record", record.raw_status),
        ),
        None => (policy.orphan_grace, "no record".to_owned()),
    };
    if age <= grace {
        return Decision::InGrace;
    }
    drift(
        FindingKind::AbandonedMultipart,
        Action::Abort,
        format!(
            "multipart upload {} started {}, {whose}",
            short_id(&upload.upload_id),
            ago(age)
        ),
    )
}

/// Upload ids are long opaque strings; their start is enough to tell them apart in a report.
fn short_id(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(end, _)| &id[..end])
}

fn decide_record(
    record: &Record,
    status: Status,
    object: Option<&ObjectMeta>,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Decision {
    let age = age(record.created_at, now);
    match (status, object) {
        (Status::Pending, Some(object)) => drift(
            FindingKind::LostNotification,
            Action::Adopt,
            format!(
                "pending {}, object present ({} bytes)",
                span(age),
                object.size
            ),
        ),
        (Status::Pending, None) if age <= policy.pending_ttl => Decision::InGrace,
        (Status::Pending, None) => drift(
            FindingKind::StalePending,
            Action::Expire,
            format!("pending {}, no object", span(age)),
        ),
        (Status::Expired, Some(object)) => drift(
            FindingKind::LateUpload,
            Action::Adopt,
            format!(
                "expired, object arrived later ({} bytes, {})",
                object.size,
                ago(self::age(object.last_modified, now))
            ),
        ),
        (Status::Uploaded, Some(_)) if record.job == Some(JobState::Failed) => drift(
            FindingKind::ProcessingExhausted,
            Action::Fail,
            "uploaded, processing gave up after its last attempt".into(),
        ),
        (Status::Uploaded, Some(_)) if !record.job.is_some_and(JobState::is_live) => {
            let since = record.updated_at.unwrap_or(record.created_at);
            let waiting = self::age(since, now);
            if waiting <= policy.processing_timeout {
                return Decision::Consistent;
            }
            let job = record.job.map(JobState::as_str).unwrap_or("no");
            drift(
                FindingKind::StuckProcessing,
                Action::Enqueue,
                format!("uploaded {}, {job} processing job", span(waiting)),
            )
        }
        (Status::Uploaded | Status::Processed, None) => drift(
            FindingKind::MissingObject,
            Action::MarkMissing,
            format!("{status}, no object"),
        ),
        // Without what was noted of it before it went missing: a new upload to process. The
        // sweep and the event path ask `decide_returned` with the noted object.
        (Status::Missing, Some(object)) => decide_returned(record, object, None),
        // Everything else agrees: an uploaded record being processed, a processed record with its
        // object, an expired or missing record without one, a failed record either way
        // (processing gave up; the object is the app's to keep or delete).
        (
            Status::Uploaded
            | Status::Processed
            | Status::Failed
            | Status::Expired
            | Status::Missing,
            _,
        ) => Decision::Consistent,
    }
}

/// A `missing` record whose object is present again (put back from a backup, or its delete
/// marker removed): adopted again. When it is the very object noted before it went missing (same
/// ETag and size) and its processing had finished, the doc is `processed` again at once; any
/// other object is an upload like any other, to process. (A finished job pruned by retention
/// counts as unfinished: processing twice is safe, skipping it is not.)
pub fn decide_returned(
    record: &Record,
    object: &ObjectMeta,
    noted: Option<&ObjectMeta>,
) -> Decision {
    let same = noted.is_some_and(|noted| same_bytes(noted, object));
    let processed = record.job == Some(JobState::Done);
    let mut detail = format!("missing, object present again ({} bytes)", object.size);
    let action = match (same, processed) {
        (true, true) => {
            detail.push_str(", the one noted before it went missing: processed again");
            Action::Readopt
        }
        (true, false) => {
            detail.push_str(", the one noted before, its processing unfinished");
            Action::Adopt
        }
        (false, _) => {
            if let Some(noted) = noted {
                detail.push_str(&format!(
                    ", not the one noted before ({} bytes, etag {})",
                    noted.size,
                    noted.etag.as_deref().unwrap_or("-")
                ));
            }
            Action::Adopt
        }
    };
    drift(FindingKind::ObjectReturned, action, detail)
}

/// Whether two descriptions are of the same bytes: same size and ETag. ETags compare without
/// their quotes: listings and HEAD quote them, S3 event messages do not.
pub fn same_bytes(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    a.size == b.size
        && a.etag.is_some()
        && unquoted(a.etag.as_deref()) == unquoted(b.etag.as_deref())
}

fn unquoted(etag: Option<&str>) -> Option<&str> {
    etag.map(|e| e.trim_matches('"'))
}

/// Why a delete marker may be removed: the version beneath it and the marker.
#[derive(Debug, Clone, PartialEq)]
pub struct Restorable<'a> {
    pub marker: &'a ObjectVersion,
    pub version: &'a ObjectVersion,
}

/// What lies under a missing key of a versioned bucket, from its history (newest first, exactly
/// this key): the delete marker that is its current version and the object version right beneath
/// it, if that is how it stands; `None` when there is no marker, the key holds an object again,
/// or beneath the marker lies another marker (removing one would not bring anything back).
pub fn under_marker(history: &[ObjectVersion]) -> Option<Restorable<'_>> {
    let at = history.iter().position(|v| v.is_latest)?;
    let marker = &history[at];
    let version = history.get(at + 1)?;
    (marker.is_delete_marker && !version.is_delete_marker).then_some(Restorable { marker, version })
}

/// Whether `restore` may remove the marker: only within `restore_window` of its setting and
/// only over the version whose ETag (and size) the reconciler noted for the doc, or, when none
/// was noted, over whatever version lies beneath. `Err` says why not, for the report.
pub fn may_restore(
    under: &Restorable<'_>,
    noted: Option<&ObjectMeta>,
    now: DateTime<Utc>,
    window: Duration,
) -> Result<(), String> {
    let deleted = age(under.marker.last_modified, now);
    if deleted > window {
        return Err(format!(
            "the marker is older than restore_window ({}): not restored",
            span(window)
        ));
    }
    let beneath = under.version.as_object();
    match noted {
        Some(noted) if !same_bytes(noted, &beneath) => Err(format!(
            "it is not the object noted for the doc ({} bytes, etag {}): not restored",
            noted.size,
            noted.etag.as_deref().unwrap_or("-")
        )),
        _ => Ok(()),
    }
}

/// A record whose object is missing from a versioned bucket, judged with the key's history
/// (newest first) and what was noted of its object. The finding says what lies under the delete
/// marker; with `missing_action = "restore"` a marker that [`may_restore`] allows is removed,
/// anything else is marked missing as always.
pub fn decide_missing(
    record: &Record,
    history: &[ObjectVersion],
    noted: Option<&ObjectMeta>,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Decision {
    let status: &str = match record.status {
        Some(status) => status.as_str(),
        None => &record.raw_status,
    };
    let Some(under) = under_marker(history) else {
        return drift(
            FindingKind::MissingObject,
            Action::MarkMissing,
            format!("{status}, no object, nothing restorable under its key"),
        );
    };
    let version = under.version;
    let mut detail = format!(
        "{status}, deleted {} ago: delete marker over version {} ({} bytes, etag {})",
        span(age(under.marker.last_modified, now)),
        version.version_id,
        version.size,
        version.etag.as_deref().unwrap_or("-"),
    );
    let action = match policy.missing_action {
        MissingAction::Mark => Action::MarkMissing,
        MissingAction::Restore => match may_restore(&under, noted, now, policy.restore_window) {
            Ok(()) => Action::Restore,
            Err(why) => {
                detail.push_str("; ");
                detail.push_str(&why);
                Action::MarkMissing
            }
        },
    };
    drift(FindingKind::MissingObject, action, detail)
}

fn drift(kind: FindingKind, action: Action, detail: String) -> Decision {
    Decision::Drift {
        kind,
        action,
        detail,
    }
}

/// How long ago `then` was; a time in the future (clock skew) counts as zero.
fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or(Duration::ZERO)
}

fn ago(age: Duration) -> String {
    format!("{} old", span(age))
}

/// A compact duration for humans: `2h10m`, `3d4h`, `45s`.
pub fn span(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const TTL: Duration = Duration::from_secs(3600);
    const GRACE: Duration = Duration::from_secs(86_400);

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
            .single()
            .expect("valid date")
    }

    const PROCESSING: Duration = Duration::from_secs(900);

    fn policy(orphan_action: OrphanAction) -> Policy {
        Policy {
            pending_ttl: TTL,
            orphan_grace: GRACE,
            orphan_action,
            processing_timeout: PROCESSING,
            multipart_grace: MULTIPART_GRACE,
            settle_time: Duration::ZERO,
            missing_action: MissingAction::Mark,
            restore_window: WINDOW,
        }
    }

    const MULTIPART_GRACE: Duration = Duration::from_secs(7 * 86_400);
    const WINDOW: Duration = Duration::from_secs(7 * 86_400);

    fn upload(age: Duration) -> MultipartUpload {
        MultipartUpload {
            key: "doc".into(),
            upload_id: "2~Xv1a0d3b7c9e4f".into(),
            initiated: now() - age,
        }
    }

    #[test]
    fn a_pending_record_whose_multipart_upload_is_in_progress_is_uploading_not_stale() {
        let p = policy(OrphanAction::Report);
        let rec = record(Status::Pending, 2 * TTL);
        let day = Duration::from_secs(86_400);
        // Without an upload: stale. With a young one: in grace, the upload too.
        assert!(matches!(
            decide_key(Some(&rec), None, &[], now(), &p).0,
            Decision::Drift {
                kind: FindingKind::StalePending,
                ..
            }
        ));
        let (key, uploads) = decide_key(Some(&rec), None, &[upload(day)], now(), &p);
        assert_eq!((key, uploads), (Decision::InGrace, vec![Decision::InGrace]));
        // An upload past the grace no longer shields the record: both are acted on.
        let (key, uploads) = decide_key(
            Some(&rec),
            None,
            &[upload(MULTIPART_GRACE + day)],
            now(),
            &p,
        );
        assert_eq!(
            verdict(&key),
            Some((FindingKind::StalePending, Action::Expire))
        );
        assert_eq!(
            verdict(&uploads[0]),
            Some((FindingKind::AbandonedMultipart, Action::Abort))
        );
        // One young upload among old ones is enough to keep the record pending.
        let (key, uploads) = decide_key(
            Some(&rec),
            None,
            &[upload(MULTIPART_GRACE + day), upload(day)],
            now(),
            &p,
        );
        assert_eq!(key, Decision::InGrace);
        assert_eq!(verdict(&uploads[0]).map(|v| v.1), Some(Action::Abort));
        assert_eq!(uploads[1], Decision::InGrace);
    }

    #[test]
    fn an_upload_is_abandoned_after_multipart_grace_with_a_record_and_orphan_grace_without() {
        let p = policy(OrphanAction::Report);
        let just_over = |grace: Duration| upload(grace + Duration::from_secs(1));
        for status in Status::ALL {
            let rec = record(status, TTL);
            assert_eq!(
                decide_upload(Some(&rec), &upload(MULTIPART_GRACE), now(), &p),
                Decision::InGrace,
                "{status}"
            );
            assert_eq!(
                verdict(&decide_upload(
                    Some(&rec),
                    &just_over(MULTIPART_GRACE),
                    now(),
                    &p
                )),
                Some((FindingKind::AbandonedMultipart, Action::Abort)),
                "{status}"
            );
        }
        assert_eq!(
            decide_upload(None, &upload(GRACE), now(), &p),
            Decision::InGrace
        );
        let Decision::Drift { detail, .. } = decide_upload(None, &just_over(GRACE), now(), &p)
        else {
            panic!("an upload without a record past orphan_grace is abandoned");
        };
        assert_eq!(
            detail,
            "multipart upload 2~Xv1a0d3b7c started 1d0h old, no record"
        );
    }

    fn record(status: Status, age: Duration) -> Record {
        Record {
            id: "doc".into(),
            key: Some("doc".into()),
            raw_status: status.as_str().into(),
            status: Some(status),
            created_at: now() - age,
            updated_at: None,
            // A live job, so that uploaded records only show what the object says.
            job: Some(JobState::Queued),
        }
    }

    fn object(age: Duration) -> ObjectMeta {
        ObjectMeta {
            key: "doc".into(),
            size: 3,
            etag: Some("\"e\"".into()),
            last_modified: now() - age,
            linked: false,
        }
    }

    /// status, object present, age, expected verdict.
    type Row = (Status, bool, Duration, Option<(FindingKind, Action)>);

    /// What a decision boils down to, for table rows.
    fn verdict(d: &Decision) -> Option<(FindingKind, Action)> {
        match d {
            Decision::Consistent => None,
            Decision::InGrace => Some((FindingKind::InGrace, Action::Report)),
            Decision::Drift { kind, action, .. } => Some((*kind, *action)),
        }
    }

    #[test]
    fn every_status_with_and_without_object_inside_and_outside_grace() {
        use Action::*;
        use FindingKind::*;
        let young = Duration::from_secs(60);
        let old = GRACE * 2; // past both pending_ttl and orphan_grace
        let grace = Some((InGrace, Report));
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            // status             object  age    expected
            (Status::Pending,   false, young, grace),
            (Status::Pending,   false, old,   Some((StalePending, Expire))),
            (Status::Pending,   true,  young, Some((LostNotification, Adopt))),
            (Status::Pending,   true,  old,   Some((LostNotification, Adopt))),
            (Status::Uploaded,  false, young, Some((MissingObject, MarkMissing))),
            (Status::Uploaded,  false, old,   Some((MissingObject, MarkMissing))),
            (Status::Uploaded,  true,  young, None),
            (Status::Uploaded,  true,  old,   None),
            (Status::Processed, false, young, Some((MissingObject, MarkMissing))),
            (Status::Processed, false, old,   Some((MissingObject, MarkMissing))),
            (Status::Processed, true,  young, None),
            (Status::Processed, true,  old,   None),
            (Status::Failed,    false, young, None),
            (Status::Failed,    false, old,   None),
            (Status::Failed,    true,  young, None),
            (Status::Failed,    true,  old,   None),
            (Status::Expired,   false, young, None),
            (Status::Expired,   false, old,   None),
            (Status::Expired,   true,  young, Some((LateUpload, Adopt))),
            (Status::Expired,   true,  old,   Some((LateUpload, Adopt))),
            (Status::Missing,   false, young, None),
            (Status::Missing,   false, old,   None),
            (Status::Missing,   true,  young, Some((ObjectReturned, Adopt))),
            (Status::Missing,   true,  old,   Some((ObjectReturned, Adopt))),
        ];
        for (status, has_object, age, expected) in table {
            let rec = record(status, age);
            let obj = has_object.then(|| object(age));
            let got = decide(
                Some(&rec),
                obj.as_ref(),
                now(),
                &policy(OrphanAction::Report),
            );
            assert_eq!(
                verdict(&got),
                expected,
                "{status} object={has_object} age={}",
                span(age)
            );
        }
    }

    #[test]
    fn uploaded_records_without_a_live_job_are_stuck_after_the_processing_timeout() {
        let p = policy(OrphanAction::Report);
        let obj = object(Duration::ZERO);
        let mut rec = record(Status::Uploaded, Duration::ZERO);
        rec.updated_at = Some(now() - PROCESSING - Duration::from_secs(1));
        for (job, expected) in [
            (None, Some((FindingKind::StuckProcessing, Action::Enqueue))),
            (
                Some(JobState::Done),
                Some((FindingKind::StuckProcessing, Action::Enqueue)),
            ),
            (Some(JobState::Queued), None),
            (Some(JobState::Running), None),
            (
                Some(JobState::Failed),
                Some((FindingKind::ProcessingExhausted, Action::Fail)),
            ),
        ] {
            rec.job = job;
            assert_eq!(
                verdict(&decide(Some(&rec), Some(&obj), now(), &p)),
                expected,
                "{job:?}"
            );
        }
        // Inside the timeout (counted from updated_at, else created_at) nothing is stuck yet.
        rec.job = None;
        rec.updated_at = Some(now() - PROCESSING);
        assert_eq!(
            decide(Some(&rec), Some(&obj), now(), &p),
            Decision::Consistent
        );
        rec.updated_at = None;
        assert_eq!(
            decide(Some(&rec), Some(&obj), now(), &p),
            Decision::Consistent
        );
        rec.created_at = now() - PROCESSING * 2;
        assert!(matches!(
            decide(Some(&rec), Some(&obj), now(), &p),
            Decision::Drift {
                kind: FindingKind::StuckProcessing,
                ..
            }
        ));
        // A processed record has nothing left to process.
        rec.status = Some(Status::Processed);
        assert_eq!(
            decide(Some(&rec), Some(&obj), now(), &p),
            Decision::Consistent
        );
    }

    #[test]
    fn orphans_follow_orphan_action_once_past_their_grace() {
        let old = object(GRACE + Duration::from_secs(1));
        let young = object(GRACE - Duration::from_secs(1));
        for (orphan_action, expected) in [
            (OrphanAction::Report, Action::Report),
            (OrphanAction::Adopt, Action::CreateRecord),
            (OrphanAction::Quarantine, Action::Quarantine),
            (OrphanAction::Delete, Action::Delete),
        ] {
            let p = policy(orphan_action);
            assert_eq!(
                verdict(&decide(None, Some(&old), now(), &p)),
                Some((FindingKind::OrphanObject, expected))
            );
            assert_eq!(decide(None, Some(&young), now(), &p), Decision::InGrace);
        }
    }

    #[test]
    fn grace_boundaries_are_inclusive() {
        let p = policy(OrphanAction::Delete);
        let at_ttl = record(Status::Pending, TTL);
        assert_eq!(decide(Some(&at_ttl), None, now(), &p), Decision::InGrace);
        let past_ttl = record(Status::Pending, TTL + Duration::from_secs(1));
        assert!(matches!(
            decide(Some(&past_ttl), None, now(), &p),
            Decision::Drift {
                kind: FindingKind::StalePending,
                ..
            }
        ));
        assert_eq!(
            decide(None, Some(&object(GRACE)), now(), &p),
            Decision::InGrace
        );
    }

    #[test]
    fn a_record_from_the_future_is_in_grace_not_stale() {
        let skewed = record(Status::Pending, Duration::ZERO);
        let skewed = Record {
            created_at: now() + chrono::Duration::hours(3),
            ..skewed
        };
        let p = policy(OrphanAction::Report);
        assert_eq!(decide(Some(&skewed), None, now(), &p), Decision::InGrace);
    }

    #[test]
    fn unknown_status_words_are_never_touched() {
        let mut rec = record(Status::Pending, GRACE * 2);
        rec.status = None;
        rec.raw_status = "archived".into();
        let p = policy(OrphanAction::Delete);
        assert_eq!(decide(Some(&rec), None, now(), &p), Decision::Consistent);
        assert_eq!(
            decide(Some(&rec), Some(&object(GRACE * 2)), now(), &p),
            Decision::Consistent
        );
    }

    #[test]
    fn a_file_a_link_leads_to_is_never_an_orphan() {
        let linked = ObjectMeta {
            linked: true,
            ..object(GRACE * 3)
        };
        for action in [OrphanAction::Report, OrphanAction::Delete] {
            assert_eq!(
                decide(None, Some(&linked), now(), &policy(action)),
                Decision::Consistent
            );
        }
        // With a record of its own it is judged as any object.
        let rec = record(Status::Pending, TTL * 2);
        assert_eq!(
            verdict(&decide(
                Some(&rec),
                Some(&linked),
                now(),
                &policy(OrphanAction::Delete)
            )),
            Some((FindingKind::LostNotification, Action::Adopt))
        );
    }

    #[test]
    fn an_object_younger_than_the_settle_time_waits_whatever_it_calls_for() {
        let settle = Duration::from_secs(10);
        let p = Policy {
            settle_time: settle,
            orphan_grace: Duration::ZERO,
            ..policy(OrphanAction::Delete)
        };
        let pending = record(Status::Pending, TTL * 2);
        let expired = record(Status::Expired, TTL * 2);
        let processed = record(Status::Processed, TTL * 2);
        for (rec, busy) in [
            (
                Some(&pending),
                Some((FindingKind::LostNotification, Action::Adopt)),
            ),
            (
                Some(&expired),
                Some((FindingKind::LateUpload, Action::Adopt)),
            ),
            (None, Some((FindingKind::OrphanObject, Action::Delete))),
            (Some(&processed), None),
        ] {
            let growing = object(settle - Duration::from_secs(1));
            let settled = object(settle);
            let expected_growing = busy.map(|_| (FindingKind::InGrace, Action::Report));
            assert_eq!(
                verdict(&decide(rec, Some(&growing), now(), &p)),
                expected_growing
            );
            assert_eq!(verdict(&decide(rec, Some(&settled), now(), &p)), busy);
        }
        // A time in the future (clock skew, a `touch` ahead) has not settled either.
        let ahead = ObjectMeta {
            last_modified: now() + chrono::Duration::hours(1),
            ..object(Duration::ZERO)
        };
        assert_eq!(decide(None, Some(&ahead), now(), &p), Decision::InGrace);
        // Zero (S3): judged at once.
        let s3 = Policy {
            settle_time: Duration::ZERO,
            ..p
        };
        assert_eq!(
            verdict(&decide(
                None,
                Some(&object(Duration::from_secs(1))),
                now(),
                &s3
            )),
            Some((FindingKind::OrphanObject, Action::Delete))
        );
    }

    #[test]
    fn a_folder_marker_is_no_object() {
        let marker = ObjectMeta {
            key: "docs/sub/".into(),
            size: 0,
            ..object(GRACE * 3)
        };
        assert_eq!(
            decide(None, Some(&marker), now(), &policy(OrphanAction::Adopt)),
            Decision::Consistent
        );
        // With bytes it is an object like any other, whatever its name.
        let named = ObjectMeta {
            size: 3,
            ..marker.clone()
        };
        assert_eq!(
            verdict(&decide(
                None,
                Some(&named),
                now(),
                &policy(OrphanAction::Report)
            )),
            Some((FindingKind::OrphanObject, Action::Report))
        );
        let pending = record(Status::Pending, TTL * 2);
        assert_eq!(
            verdict(&decide(
                Some(&pending),
                Some(&marker),
                now(),
                &policy(OrphanAction::Report)
            )),
            Some((FindingKind::StalePending, Action::Expire))
        );
    }

    #[test]
    fn nothing_at_all_is_consistent() {
        assert_eq!(
            decide(None, None, now(), &policy(OrphanAction::Delete)),
            Decision::Consistent
        );
    }

    #[test]
    fn details_say_how_old_and_what_is_missing() {
        let rec = record(Status::Pending, Duration::from_secs(2 * 3600 + 600));
        match decide(Some(&rec), None, now(), &policy(OrphanAction::Report)) {
            Decision::Drift { detail, .. } => assert_eq!(detail, "pending 2h10m, no object"),
            other => panic!("expected drift, got {other:?}"),
        }
    }

    fn version(id: &str, etag: Option<&str>, latest: bool, age: Duration) -> ObjectVersion {
        ObjectVersion {
            key: "doc".into(),
            version_id: id.into(),
            is_delete_marker: etag.is_none(),
            is_latest: latest,
            size: if etag.is_some() { 3 } else { 0 },
            etag: etag.map(Into::into),
            last_modified: now() - age,
        }
    }

    #[test]
    fn a_returned_object_is_processed_again_only_when_it_is_the_noted_one_and_was_processed() {
        let mut rec = record(Status::Missing, GRACE);
        let back = object(Duration::ZERO);
        let noted_same = ObjectMeta {
            // Events and listings quote ETags differently: the same bytes all the same.
            etag: Some("e".into()),
            ..object(GRACE)
        };
        let noted_other = ObjectMeta {
            etag: Some("\"other\"".into()),
            ..object(GRACE)
        };
        rec.job = Some(JobState::Done);
        let returned = |rec: &Record, noted: Option<&ObjectMeta>| {
            verdict(&decide_returned(rec, &back, noted)).map(|v| v.1)
        };
        assert_eq!(returned(&rec, Some(&noted_same)), Some(Action::Readopt));
        assert_eq!(returned(&rec, Some(&noted_other)), Some(Action::Adopt));
        assert_eq!(returned(&rec, None), Some(Action::Adopt));
        let bigger = ObjectMeta {
            size: 4,
            ..noted_same.clone()
        };
        assert_eq!(returned(&rec, Some(&bigger)), Some(Action::Adopt));
        // The same bytes, but their processing had not finished: process them.
        for job in [None, Some(JobState::Failed), Some(JobState::Queued)] {
            rec.job = job;
            assert_eq!(
                returned(&rec, Some(&noted_same)),
                Some(Action::Adopt),
                "{job:?}"
            );
        }
        let no_etag = ObjectMeta {
            etag: None,
            ..back.clone()
        };
        assert!(!same_bytes(&no_etag, &no_etag), "no ETag proves nothing");
    }

    #[test]
    fn a_delete_marker_is_restored_only_over_the_noted_version_within_the_window() {
        let mut p = policy(OrphanAction::Report);
        p.missing_action = MissingAction::Restore;
        let rec = record(Status::Processed, GRACE);
        let hour = Duration::from_secs(3600);
        let deleted = vec![
            version("m1", None, true, hour),
            version("v2", Some("\"e\""), false, GRACE),
            version("v1", Some("\"old\""), false, 2 * GRACE),
        ];
        let noted = object(GRACE);
        let judged = |history: &[ObjectVersion], noted: Option<&ObjectMeta>, p: &Policy| {
            match decide_missing(&rec, history, noted, now(), p) {
                Decision::Drift {
                    kind: FindingKind::MissingObject,
                    action,
                    detail,
                } => (action, detail),
                other => panic!("a missing object, got {other:?}"),
            }
        };
        let (action, detail) = judged(&deleted, Some(&noted), &p);
        assert_eq!(action, Action::Restore);
        assert_eq!(
            detail,
            "processed, deleted 1h0m ago: delete marker over version v2 (3 bytes, etag \"e\")"
        );
        // Nothing noted: the window alone decides.
        assert_eq!(judged(&deleted, None, &p).0, Action::Restore);
        // Another ETag than the noted one: reported, never restored.
        let other = ObjectMeta {
            etag: Some("\"old\"".into()),
            ..noted.clone()
        };
        let (action, detail) = judged(&deleted, Some(&other), &p);
        assert_eq!(action, Action::MarkMissing);
        assert!(
            detail.ends_with(
                "not the object noted for the doc (3 bytes, etag \"old\"): not restored"
            ),
            "{detail}"
        );
        // A marker older than the window: reported, whatever was noted.
        let mut stale = deleted.clone();
        stale[0].last_modified = now() - WINDOW - Duration::from_secs(1);
        let (action, detail) = judged(&stale, Some(&noted), &p);
        assert_eq!(action, Action::MarkMissing);
        assert!(
            detail.ends_with("older than restore_window (7d0h): not restored"),
            "{detail}"
        );
        // Two markers on top: removing one brings nothing back.
        let twice = vec![
            version("m2", None, true, hour),
            version("m1", None, false, 2 * hour),
            version("v2", Some("\"e\""), false, GRACE),
        ];
        assert_eq!(judged(&twice, Some(&noted), &p).0, Action::MarkMissing);
        // No history at all (every version gone), or only versions of other keys' making.
        assert_eq!(judged(&[], Some(&noted), &p).0, Action::MarkMissing);
        // With `mark`, the finding still says what lies beneath, and marks.
        p.missing_action = MissingAction::Mark;
        let (action, detail) = judged(&deleted, Some(&noted), &p);
        assert_eq!(action, Action::MarkMissing);
        assert!(detail.contains("delete marker over version v2"), "{detail}");
    }

    #[test]
    fn spans_are_compact() {
        assert_eq!(span(Duration::from_secs(45)), "45s");
        assert_eq!(span(Duration::from_secs(125)), "2m5s");
        assert_eq!(span(Duration::from_secs(7800)), "2h10m");
        assert_eq!(span(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d4h");
    }

    #[test]
    fn an_orphan_adopts_only_as_the_canonical_text_of_an_id() {
        let int32 = IdKind::Integer {
            min: i32::MIN.into(),
            max: i32::MAX.into(),
        };
        let cases: &[(IdKind, &str, bool)] = &[
            (IdKind::Text, "Thumbs.db", true),
            (IdKind::Uuid, "abcdef00-0000-0000-0000-000000000002", true),
            (IdKind::Uuid, "ABCDEF00-0000-0000-0000-000000000002", false),
            (IdKind::Uuid, "abcdef0000000000000000000000000002", false),
            (IdKind::Uuid, "Thumbs.db", false),
            (int32, "42", true),
            (int32, "-7", true),
            (int32, "0", true),
            (int32, "042", false),
            (int32, "+42", false),
            (int32, "-0", false),
            (int32, "4294967296", false),
            (int32, "Thumbs.db", false),
        ];
        let orphan = || Decision::Drift {
            kind: FindingKind::OrphanObject,
            action: Action::CreateRecord,
            detail: "object 2h old, 5 bytes, no record".into(),
        };
        for (ids, id, adopts) in cases {
            match adoptable(orphan(), id, *ids) {
                Decision::Drift { action, detail, .. } => {
                    assert_eq!(action == Action::CreateRecord, *adopts, "{ids:?} {id:?}");
                    assert_eq!(detail.contains("cannot be adopted"), !*adopts, "{detail}");
                }
                other => panic!("{ids:?} {id:?}: {other:?}"),
            }
        }
        // Only an adoption is refused: a quarantine of the same orphan stands.
        let quarantine = Decision::Drift {
            kind: FindingKind::OrphanObject,
            action: Action::Quarantine,
            detail: String::new(),
        };
        assert_eq!(
            adoptable(quarantine.clone(), "Thumbs.db", IdKind::Uuid),
            quarantine
        );
    }
}
