//! The executor: applies a finding, or in a dry run only says it would. Every write re-reads its
//! row under a lock and takes a fresh look at the object first; if either changed since the sweep
//! read it, the action is skipped (the next sweep decides again), never forced through.

use crate::bucket::{Bucket, CopyOutcome, DeleteOutcome};
use crate::catalog::{AuditEntry, BucketChange, Catalog, Intent, Transaction};
use crate::decide::{may_restore, same_bytes, under_marker};
use crate::error::Result;
use crate::model::{
    Action, Finding, JobState, MultipartUpload, ObjectMeta, Outcome, Record, Status,
};
use crate::rules::Quarantine;
use chrono::Utc;
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::watch;
use uuid::Uuid;

/// Status-only actions per batch transaction: one statement locks their rows, one sets their
/// statuses, one writes their audit rows.
pub const BATCH: usize = 100;

/// The HEADs of one batch sent at once.
const HEADS_AT_ONCE: usize = 32;

/// A transaction's worth of `execute_many`, by index into its findings.
enum Work {
    /// Any action but a status-only one, in a transaction of its own.
    One(usize),
    /// Up to [`BATCH`] status-only actions, in one transaction.
    Batch(Vec<usize>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    DryRun,
    Apply,
}

/// What happens once an upload is confirmed (adoption, a retry, a stuck record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUpload {
    /// No post-processing configured: the doc is done, `processed` at once.
    MarkProcessed,
    /// Queue the processing job; a worker moves the doc on.
    Enqueue,
}

pub struct Executor<'a> {
    pub mode: Mode,
    pub after_upload: AfterUpload,
    pub catalog: &'a dyn Catalog,
    pub bucket: &'a dyn Bucket,
    /// Where quarantined objects go.
    pub quarantine: &'a Quarantine,
    pub sweep_id: Option<Uuid>,
    /// How recent a delete marker must be for a restore to remove it (`sweep.restore_window`).
    pub restore_window: std::time::Duration,
}

/// Where a finding's object was seen. A listing shows the object as it was (its size, time and
/// ETag), and an adoption must find that very object: one that moved since (a file still being
/// written) is judged again by the next sweep, not adopted with a size it no longer has. An event
/// only says that an object arrived: its re-check takes the object as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Listing,
    Event,
}

/// What an action's re-check found, for its audit row: the record's status before and after, and
/// the object as it is now.
struct Checked {
    old_status: Option<String>,
    new_status: Option<Status>,
    object: Option<ObjectMeta>,
    /// The id of the record an adoption created: the database's, where the key has a column of
    /// its own (the finding only knew the key).
    created: Option<String>,
}

/// Whether an intent's change happened, as the bucket shows it afterwards.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Happened {
    No,
    Yes,
    /// The object it saw is gone and its key holds another: the change happened and a new
    /// object came since, or the object was overwritten before it.
    OrOverwritten,
}

/// The end of the detail of an intent audited as [`Happened::OrOverwritten`].
pub const OVERWRITTEN_SINCE: &str = "; its key holds another object now: it was put after \
                                     this change, or overwrote the object before it";

/// Why an action did not go through; becomes `Outcome::Skipped`.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed(pub String);

impl From<&str> for Changed {
    fn from(reason: &str) -> Self {
        Changed(reason.to_owned())
    }
}

impl Executor<'_> {
    pub async fn execute(&self, finding: &Finding) -> Outcome {
        if let Some(outcome) = self.without_writing(finding) {
            return outcome;
        }
        let outcome = outcome_of(self.apply(finding).await);
        log(finding, &outcome);
        outcome
    }

    /// Execute many findings, `concurrency` transactions at once: the status-only actions
    /// (expire, fail, mark_missing) in batches of [`BATCH`], one transaction each, every other
    /// action in a transaction of its own. The outcomes come in the order of `findings`; `None`
    /// for an action not started because `stop` was requested.
    pub async fn execute_many(
        &self,
        findings: &[Finding],
        concurrency: usize,
        stop: &watch::Receiver<bool>,
    ) -> Vec<Option<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> =
            findings.iter().map(|f| self.without_writing(f)).collect();
        let (batched, single): (Vec<usize>, Vec<usize>) = (0..findings.len())
            .filter(|i| outcomes[*i].is_none())
            .partition(|i| findings[*i].action.is_status_only());
        let mut work: Vec<Work> = single.into_iter().map(Work::One).collect();
        work.extend(
            batched
                .chunks(BATCH)
                .map(|batch| Work::Batch(batch.to_vec())),
        );
        // Futures built up front (they do nothing until polled): a closure making them inside
        // the stream would not be `Send` for every lifetime, as the daemon's tasks must be.
        let work: Vec<_> = work
            .into_iter()
            .map(|work| self.execute_work(findings, work, stop))
            .collect();
        let mut done = stream::iter(work).buffer_unordered(concurrency.max(1));
        while let Some(finished) = done.next().await {
            for (i, outcome) in finished {
                log(&findings[i], &outcome);
                outcomes[i] = Some(outcome);
            }
        }
        outcomes
    }

    /// The outcome of a finding that writes nothing: a report, or any action in a dry run.
    fn without_writing(&self, finding: &Finding) -> Option<Outcome> {
        if !finding.action.changes_state() {
            Some(Outcome::Reported)
        } else if self.mode == Mode::DryRun {
            Some(Outcome::DryRun)
        } else {
            None
        }
    }

    /// One unit of `execute_many`'s work, with the index of each finding it attempted; nothing
    /// when a stop came first.
    async fn execute_work(
        &self,
        findings: &[Finding],
        work: Work,
        stop: &watch::Receiver<bool>,
    ) -> Vec<(usize, Outcome)> {
        if *stop.borrow() {
            return Vec::new();
        }
        match work {
            Work::One(i) => vec![(i, outcome_of(self.apply(&findings[i]).await))],
            Work::Batch(indices) => {
                let batch: Vec<&Finding> = indices.iter().map(|i| &findings[*i]).collect();
                let outcomes: Vec<Outcome> = match self.apply_batch(&batch).await {
                    Ok(results) => results.into_iter().map(|r| outcome_of(Ok(r))).collect(),
                    Err(e) => vec![Outcome::Failed(e.to_string()); indices.len()],
                };
                indices.into_iter().zip(outcomes).collect()
            }
        }
    }

    /// Status-only actions in one transaction: every row locked, every object looked at afresh
    /// (concurrently), then one write of the statuses and one of the audit rows for those still
    /// due. Each action is still re-checked against its own row and object, and commits with its
    /// audit row; the skipped ones write nothing.
    async fn apply_batch(&self, findings: &[&Finding]) -> Result<Vec<Result<(), Changed>>> {
        let mut tx = self.catalog.begin().await?;
        let ids: Vec<String> = findings.iter().map(|f| f.id.clone()).collect();
        // Rows first, then objects, as `apply_in` does: an event for the key waits on the row
        // lock, so it cannot slip in between the look at the object and the write.
        let now = tx.lock_records(&ids).await?;
        let heads: Vec<_> = findings.iter().map(|f| self.fresh_look(f)).collect();
        let objects: Vec<Option<ObjectMeta>> = stream::iter(heads)
            .buffered(HEADS_AT_ONCE)
            .try_collect()
            .await?;
        let mut results = Vec::with_capacity(findings.len());
        let mut changes = Vec::new();
        let mut entries = Vec::new();
        for ((finding, now), object) in findings.iter().zip(&now).zip(&objects) {
            match status_change(finding, now, object.as_ref()) {
                Ok((old, new)) => {
                    changes.push((finding.id.clone(), new));
                    entries.push(self.entry(finding, Some(old), Some(new), None));
                    results.push(Ok(()));
                }
                Err(changed) => results.push(Err(changed)),
            }
        }
        tx.set_statuses(&changes).await?;
        tx.audit_all(&entries).await?;
        tx.commit().await?;
        Ok(results)
    }

    async fn apply(&self, finding: &Finding) -> Result<Result<(), Changed>> {
        if finding.action == Action::Restore {
            return self.restore(finding).await;
        }
        if !finding.action.changes_bucket() {
            let mut tx = self.catalog.begin().await?;
            let applied = self.apply_seen(tx.as_mut(), finding, Seen::Listing).await?;
            if applied.is_ok() {
                tx.commit().await?;
            }
            return Ok(applied);
        }
        self.change_bucket(finding).await
    }

    /// A quarantine, a delete or an abort, with no database lock held while the bucket changes
    /// (an app's writers would wait on SQLite's writer lock for a whole copy of a large object):
    /// the intent is noted and committed; the row is re-checked in a short transaction; the
    /// bucket changes with no transaction open; then one short transaction writes the audit row
    /// and clears the intent. A process that dies anywhere in between leaves the intent, which
    /// the next sweep settles (`settle_intents`).
    async fn change_bucket(&self, finding: &Finding) -> Result<Result<(), Changed>> {
        let Some(intent) = self.intent(finding) else {
            return Ok(Err("the finding names no object or upload to change".into()));
        };
        self.catalog.note_intent(&intent).await?;
        let checked = match self.recheck(finding).await {
            Ok(checked) => checked,
            Err(e) => {
                // Nothing changed in the bucket yet.
                self.forget_intent(&intent).await;
                return Err(e);
            }
        };
        let changed = match &checked {
            Ok(checked) => self.make_change(finding, checked).await?,
            Err(changed) => Err(changed.clone()),
        };
        let checked = match (changed, checked) {
            (Ok(()), Ok(checked)) => checked,
            (Err(changed), _) | (_, Err(changed)) => {
                // The bucket refused or the world changed: nothing happened. (After an error
                // the intent stays: a delete whose answer was lost may have happened.)
                self.forget_intent(&intent).await;
                return Ok(Err(changed));
            }
        };
        let mut tx = self.catalog.begin_own().await?;
        tx.audit(&self.checked_entry(finding, checked)).await?;
        tx.clear_intent(&intent.id).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// The re-check of a bucket change, in a transaction of its own that writes nothing and ends
    /// before the bucket changes: the row (locked) and the object as they are now.
    async fn recheck(&self, finding: &Finding) -> Result<Result<Checked, Changed>> {
        let mut tx = self.catalog.begin().await?;
        let checked = self.check_in(tx.as_mut(), finding, Seen::Listing).await?;
        // Nothing written: the commit only lets go of the lock.
        tx.commit().await?;
        Ok(checked)
    }

    /// Make the bucket change a re-check allowed.
    async fn make_change(
        &self,
        finding: &Finding,
        checked: &Checked,
    ) -> Result<Result<(), Changed>> {
        match (finding.action, &checked.object, &finding.upload) {
            (Action::Quarantine, Some(object), _) => self.quarantine(finding, object).await,
            (Action::Delete, Some(object), _) => self.delete(object).await,
            (Action::Abort, _, Some(upload)) => self.abort(upload).await,
            _ => Ok(Err("the finding names no object or upload to change".into())),
        }
    }

    /// The object a status-only action depends on, as it is now.
    async fn fresh_look(&self, finding: &Finding) -> Result<Option<ObjectMeta>> {
        match finding.action {
            // A failed job is decided by the job, not the object.
            Action::Fail => Ok(None),
            // A record without a key has no object to look at.
            _ if finding.key.is_empty() => Ok(None),
            _ => self.bucket.head(&finding.key).await,
        }
    }

    /// Forget the intent of a change that did not happen. If that fails too, the next sweep
    /// finds the change did not happen and forgets it then.
    async fn forget_intent(&self, intent: &Intent) {
        let forgotten = async {
            let mut tx = self.catalog.begin_own().await?;
            tx.clear_intent(&intent.id).await?;
            tx.commit().await
        };
        if let Err(e) = forgotten.await {
            tracing::warn!(key = %intent.key(), error = %e,
                "cannot clear the intent of an action that did not happen; the next sweep will");
        }
    }

    /// The bucket change `finding`'s action is about to make, if it makes one.
    fn intent(&self, finding: &Finding) -> Option<Intent> {
        let change = match (finding.action, &finding.object, &finding.upload) {
            (Action::Quarantine, Some(object), _) => BucketChange::Quarantine {
                object: object.clone(),
                target: self.quarantine.key_for(object),
            },
            (Action::Delete, Some(object), _) => BucketChange::Delete {
                object: object.clone(),
            },
            (Action::Abort, _, Some(upload)) => BucketChange::Abort {
                upload: upload.clone(),
            },
            _ => return None,
        };
        Some(Intent {
            id: Uuid::new_v4().to_string(),
            entry: self.entry(finding, None, None, finding.object.as_ref()),
            change,
        })
    }

    /// Settle the intents a process left when it died between a bucket change and the commit of
    /// its audit row (or when that commit failed): a change that happened (the object is gone,
    /// and a quarantine's copy is in place) gets its audit row now; one that did not is forgotten,
    /// and the key is decided again like any other. Run under the sweep lock, before the sweep's
    /// actions: nothing else notes intents meanwhile. Returns how many were audited.
    pub async fn settle_intents(&self) -> Result<u64> {
        let mut audited = 0;
        for intent in self.catalog.intents().await? {
            let happened = self.happened(&intent).await?;
            let mut tx = self.catalog.begin_own().await?;
            if happened != Happened::No {
                let mut entry = intent.entry.clone();
                entry.detail.push_str(
                    "; recorded by a later sweep: the process that made this change ended \
                     before recording it",
                );
                if happened == Happened::OrOverwritten {
                    entry.detail.push_str(OVERWRITTEN_SINCE);
                }
                tx.audit(&entry).await?;
                audited += 1;
            }
            tx.clear_intent(&intent.id).await?;
            tx.commit().await?;
            tracing::warn!(key = %intent.key(), action = %intent.entry.action,
                happened = ?happened,
                "settled a bucket change left unrecorded by a process that ended");
        }
        Ok(audited)
    }

    /// Whether an intent's change took place: the object it saw is gone from its key and, for a
    /// quarantine, its copy is there; an upload is no longer in progress and left no object (it
    /// was not completed instead). The object it saw still at the key means it did not: the
    /// sweep judges that key afresh. Another object at the key is the one case the bucket cannot
    /// settle: the change happened and a new object was put since, or the object was overwritten
    /// before the change (which, conditional on the object, then changed nothing). Either way the
    /// bytes the intent saw are gone, and it is audited saying so: a destroyed file must never go
    /// unaudited.
    async fn happened(&self, intent: &Intent) -> Result<Happened> {
        let now = self.bucket.head(intent.key()).await?;
        let gone = |seen: &ObjectMeta| match &now {
            None => Happened::Yes,
            Some(now) if same_bytes(now, seen) => Happened::No,
            Some(_) => Happened::OrOverwritten,
        };
        Ok(match &intent.change {
            // A restore's change is the version being current again.
            BucketChange::Restore { version, .. } => {
                match now
                    .as_ref()
                    .is_some_and(|now| same_bytes(now, &version.as_object()))
                {
                    true => Happened::Yes,
                    false => Happened::No,
                }
            }
            BucketChange::Quarantine { object, target } => match gone(object) {
                Happened::No => Happened::No,
                happened => {
                    let copied = self.bucket.head(target).await?;
                    match copied.is_some_and(|copy| copy.size == object.size) {
                        true => happened,
                        false => Happened::No,
                    }
                }
            },
            BucketChange::Delete { object } => gone(object),
            BucketChange::Abort { upload } => {
                match now.is_none() && !self.bucket.multipart_in_progress(upload).await? {
                    true => Happened::Yes,
                    false => Happened::No,
                }
            }
        })
    }

    /// The audit row of `finding`'s action, as its re-check found the world.
    fn checked_entry(&self, finding: &Finding, checked: Checked) -> AuditEntry {
        let mut entry = self.entry(
            finding,
            checked.old_status,
            checked.new_status,
            checked.object.as_ref(),
        );
        if let Some(id) = checked.created {
            entry.doc_id = id;
        }
        entry
    }

    /// The audit row of `finding`'s action.
    fn entry(
        &self,
        finding: &Finding,
        old_status: Option<String>,
        new_status: Option<Status>,
        object: Option<&ObjectMeta>,
    ) -> AuditEntry {
        let mut detail = finding.detail.clone();
        if let Some(object) = object {
            detail.push_str(&format!(
                "; object {} bytes, etag {}",
                object.size,
                object.etag.as_deref().unwrap_or("-")
            ));
            if finding.action == Action::Quarantine {
                detail.push_str(&format!("; moved to {}", self.quarantine.key_for(object)));
            }
        }
        if let Some(upload) = &finding.upload {
            detail.push_str(&format!("; upload id {}", upload.upload_id));
        }
        AuditEntry {
            at: Utc::now(),
            sweep_id: self.sweep_id,
            finding: finding.kind.as_str().into(),
            action: finding.action.as_str().into(),
            doc_id: finding.id.clone(),
            key: finding.key.clone(),
            old_status,
            new_status: new_status.map(|s| s.as_str().to_owned()),
            detail,
        }
    }

    /// The checks and writes of one action that leaves the bucket as it is, inside a transaction
    /// the caller commits: the event path commits the key's event state with it. A `Changed`
    /// answer means the action did not happen and the caller must not commit. A bucket change is
    /// never made inside a transaction (`apply` makes it).
    pub async fn apply_in(
        &self,
        tx: &mut (dyn Transaction + '_),
        finding: &Finding,
    ) -> Result<Result<(), Changed>> {
        self.apply_seen(tx, finding, Seen::Event).await
    }

    /// `apply_in`, for a finding whose object was `seen` so.
    async fn apply_seen(
        &self,
        tx: &mut (dyn Transaction + '_),
        finding: &Finding,
        seen: Seen,
    ) -> Result<Result<(), Changed>> {
        if finding.action.changes_bucket() {
            return Ok(Err(Changed(format!(
                "{} changes the bucket, never inside a transaction",
                finding.action.as_str()
            ))));
        }
        let checked = match self.check_in(tx, finding, seen).await? {
            Ok(checked) => checked,
            Err(changed) => return Ok(Err(changed)),
        };
        if finding.action != Action::Report {
            tx.audit(&self.checked_entry(finding, checked)).await?;
        }
        Ok(Ok(()))
    }

    /// Lock the row, look at the object afresh, and check that the action still holds; for an
    /// action that leaves the bucket as it is, make its writes too. What was found, or why the
    /// action no longer holds.
    async fn check_in(
        &self,
        tx: &mut (dyn Transaction + '_),
        finding: &Finding,
        seen: Seen,
    ) -> Result<Result<Checked, Changed>> {
        // A record's action re-reads its record; an orphan's looks for a record at its key (an
        // orphan's finding names it by the key below the prefix).
        let now = if finding.record.is_some() {
            tx.lock_record(&finding.id).await?
        } else {
            tx.lock_record_at(&finding.id).await?
        };
        // A record without a key has no object to look at.
        let object = match finding.key.is_empty() {
            true => None,
            false => self.bucket.head(&finding.key).await?,
        };
        let mut created = None;
        let (old_status, new_status, object) = match finding.action {
            Action::Report => (None, None, None),
            Action::Expire | Action::Fail | Action::MarkMissing => {
                match status_change(finding, &now, object.as_ref()) {
                    Ok((old, new)) => {
                        tx.set_status(&finding.id, new).await?;
                        (Some(old), Some(new), None)
                    }
                    Err(changed) => return Ok(Err(changed)),
                }
            }
            Action::Adopt => {
                let old = match unchanged(&finding.record, &now) {
                    Ok(old) => old,
                    Err(changed) => return Ok(Err(changed)),
                };
                let Some(object) = object else {
                    return Ok(Err("the object is gone since the listing".into()));
                };
                if let (Seen::Listing, Some(listed)) = (seen, &finding.object)
                    && same_object(Some(listed), Some(object.clone())).is_err()
                {
                    return Ok(Err(Changed(format!(
                        "the object changed since the listing ({} bytes then, {} now): still \
                         being written, or overwritten; the next sweep judges it again",
                        listed.size, object.size
                    ))));
                }
                tx.set_status(&finding.id, Status::Uploaded).await?;
                tx.note_object(&object).await?;
                let new = self.uploaded(tx, finding, &object).await?;
                (Some(old), Some(new), Some(object))
            }
            Action::Enqueue => {
                let old = match unchanged(&finding.record, &now) {
                    Ok(old) => old,
                    Err(changed) => return Ok(Err(changed)),
                };
                if now
                    .as_ref()
                    .and_then(|r| r.job)
                    .is_some_and(|j| j.is_live())
                {
                    return Ok(Err("a processing job was queued meanwhile".into()));
                }
                let Some(object) = object else {
                    return Ok(Err("the object is gone since the listing".into()));
                };
                let new = self.uploaded(tx, finding, &object).await?;
                (Some(old), Some(new), Some(object))
            }
            Action::Readopt => {
                let old = match unchanged(&finding.record, &now) {
                    Ok(old) => old,
                    Err(changed) => return Ok(Err(changed)),
                };
                let object = match readoptable(finding, now.as_ref(), object) {
                    Ok(object) => object,
                    Err(changed) => return Ok(Err(changed)),
                };
                tx.set_status(&finding.id, Status::Processed).await?;
                tx.note_object(&object).await?;
                (Some(old), Some(Status::Processed), Some(object))
            }
            Action::Restore => {
                return Ok(Err(
                    "a restore is applied on its own (Executor::restore), not inside another \
                     transaction"
                        .into(),
                ));
            }
            Action::Abort => {
                // Decided by whether a record existed (which grace applied), not by its status.
                if finding.record.is_none() && now.is_some() {
                    return Ok(Err(
                        "a record was created since the sweep read the table".into()
                    ));
                }
                (now.map(|record| record.raw_status), None, None)
            }
            Action::CreateRecord | Action::Quarantine | Action::Delete => {
                if now.is_some() {
                    return Ok(Err(
                        "a record was created since the sweep read the table".into()
                    ));
                }
                let object = match same_object(finding.object.as_ref(), object) {
                    Ok(object) => object,
                    Err(changed) => return Ok(Err(changed)),
                };
                if finding.action == Action::CreateRecord {
                    // The sweep reports such an orphan instead (`decide::adoptable`).
                    if let Some(why) = self.catalog.key_kind().refusal(&finding.id) {
                        return Ok(Err(Changed(format!("cannot be adopted: {why}"))));
                    }
                    let Some(id) = tx.create_record(&finding.id, Status::Uploaded).await? else {
                        return Ok(Err("a record was created concurrently".into()));
                    };
                    tx.note_object(&object).await?;
                    let adopted = Finding {
                        id: id.clone(),
                        ..finding.clone()
                    };
                    let new = self.uploaded(tx, &adopted, &object).await?;
                    created = Some(id);
                    (None, Some(new), Some(object))
                } else {
                    (None, None, Some(object))
                }
            }
        };
        Ok(Ok(Checked {
            old_status,
            new_status,
            object,
            created,
        }))
    }

    /// Remove the delete marker over a missing doc's version (`missing_action = "restore"`),
    /// after checking afresh that it may: the key's history is still a marker over a version
    /// that `may_restore` allows now, and the record is unchanged. Like every bucket change it
    /// is noted as an intent first; the row is checked in a short transaction, the marker removed
    /// with no transaction open, and the audit committed in another short one (a process dying
    /// in between leaves the intent for `settle_intents`). The record keeps its status: its
    /// object is back.
    async fn restore(&self, finding: &Finding) -> Result<Result<(), Changed>> {
        let key = &finding.key;
        let noted = self.catalog.noted_object(key).await?;
        let history = self.bucket.versions(key).await?;
        let Some(under) = under_marker(&history) else {
            return Ok(Err(
                "the key is no longer a delete marker over a version".into()
            ));
        };
        if let Err(why) = may_restore(&under, noted.as_ref(), Utc::now(), self.restore_window) {
            return Ok(Err(Changed(format!("changed since the sweep: {why}"))));
        }
        let (marker, version) = (under.marker.clone(), under.version.clone());
        let mut entry = self.entry(finding, None, None, Some(&version.as_object()));
        entry
            .detail
            .push_str(&format!("; removed delete marker {}", marker.version_id));
        let intent = Intent {
            id: Uuid::new_v4().to_string(),
            entry: entry.clone(),
            change: BucketChange::Restore {
                marker: marker.clone(),
                version,
            },
        };
        self.catalog.note_intent(&intent).await?;
        let checked = async {
            let mut tx = self.catalog.begin().await?;
            let now = tx.lock_record(&finding.id).await?;
            Ok::<_, crate::error::Error>(unchanged(&finding.record, &now))
        }
        .await?;
        let old = match checked {
            Ok(old) => old,
            Err(changed) => {
                self.forget_intent(&intent).await;
                return Ok(Err(changed));
            }
        };
        // An error here keeps the intent: a removal whose answer was lost may have happened.
        self.bucket.remove_delete_marker(&marker).await?;
        entry.old_status = Some(old);
        let mut tx = self.catalog.begin_own().await?;
        tx.audit(&entry).await?;
        tx.clear_intent(&intent.id).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// An upload is confirmed: mark the doc processed, or queue its processing. Returns the status
    /// the record ends with.
    async fn uploaded(
        &self,
        tx: &mut (dyn Transaction + '_),
        finding: &Finding,
        object: &ObjectMeta,
    ) -> Result<Status> {
        match self.after_upload {
            AfterUpload::MarkProcessed => {
                tx.set_status(&finding.id, Status::Processed).await?;
                Ok(Status::Processed)
            }
            AfterUpload::Enqueue => {
                tx.enqueue_job(&finding.id, &finding.key, Some(object), Utc::now())
                    .await?;
                Ok(Status::Uploaded)
            }
        }
    }

    /// Copy under the quarantine prefix (never over another object), check the copy, and only
    /// then delete the original, if it is still the object copied and still has no record: a
    /// failure or a change at any step leaves the original where it was. (The copy of a large
    /// object takes a while, and no lock keeps the app from creating its record meanwhile.)
    async fn quarantine(
        &self,
        finding: &Finding,
        object: &ObjectMeta,
    ) -> Result<Result<(), Changed>> {
        let target = self.quarantine.key_for(object);
        match self.bucket.copy_new(object, &target).await? {
            CopyOutcome::Copied | CopyOutcome::AlreadyCopied => {}
            CopyOutcome::Taken(other) => {
                return Ok(Err(Changed(format!(
                    "the quarantine key {target} holds another object ({} bytes, etag {}); \
                     nothing moved",
                    other.size,
                    other.etag.as_deref().unwrap_or("-")
                ))));
            }
            CopyOutcome::SourceChanged => {
                return Ok(Err("the object was overwritten since the listing".into()));
            }
        }
        if self.catalog.record_at(&finding.id).await?.is_some() {
            return Ok(Err(Changed(format!(
                "a record was created during the copy; the object stays, and a copy of it at \
                 {target}"
            ))));
        }
        match self.bucket.delete_if(object).await? {
            DeleteOutcome::Deleted => Ok(Ok(())),
            DeleteOutcome::Changed => Ok(Err(Changed(format!(
                "the object was overwritten before its delete; kept, and its earlier version \
                 stays copied at {target}"
            )))),
        }
    }

    /// Abort an abandoned multipart upload, if it is still in progress: one completed since the
    /// listing is an object now, for the next sweep to judge.
    async fn abort(&self, upload: &MultipartUpload) -> Result<Result<(), Changed>> {
        match self.bucket.abort_multipart(upload).await? {
            true => Ok(Ok(())),
            false => Ok(Err(
                "the upload was completed or aborted since the listing".into()
            )),
        }
    }

    /// Delete the object only if it is still the one the decision saw.
    async fn delete(&self, object: &ObjectMeta) -> Result<Result<(), Changed>> {
        match self.bucket.delete_if(object).await? {
            DeleteOutcome::Deleted => Ok(Ok(())),
            DeleteOutcome::Changed => Ok(Err(
                "the object was overwritten before its delete; kept".into()
            )),
        }
    }
}

/// Whether a returned object may be `processed` again at once, as decided: its processing is
/// still the finished job the decision saw, and the object at the key is still the one it
/// compared with the noted one (events date objects by the event, so only the bytes compare).
fn readoptable(
    finding: &Finding,
    now: Option<&Record>,
    object: Option<ObjectMeta>,
) -> Result<ObjectMeta, Changed> {
    if now.and_then(|r| r.job) != Some(JobState::Done) {
        return Err("its processing job changed since the sweep read it".into());
    }
    let Some(object) = object else {
        return Err("the object is gone since the listing".into());
    };
    match &finding.object {
        Some(seen) if same_bytes(seen, &object) => Ok(object),
        _ => Err("the object was overwritten since the listing".into()),
    }
}

/// What an attempted action came to.
fn outcome_of(applied: Result<Result<(), Changed>>) -> Outcome {
    match applied {
        Ok(Ok(())) => Outcome::Applied,
        Ok(Err(Changed(reason))) => Outcome::Skipped(reason),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// One log line per action attempted.
fn log(finding: &Finding, outcome: &Outcome) {
    match outcome {
        Outcome::Applied => tracing::info!(
            kind = finding.kind.as_str(), action = finding.action.as_str(),
            key = %finding.key, "applied"
        ),
        Outcome::Skipped(reason) => tracing::warn!(
            kind = finding.kind.as_str(), action = finding.action.as_str(),
            key = %finding.key, reason = %reason, "skipped: changed since the sweep read it"
        ),
        Outcome::Failed(error) => tracing::error!(
            kind = finding.kind.as_str(), action = finding.action.as_str(),
            key = %finding.key, error = %error, "action failed"
        ),
        Outcome::DryRun | Outcome::Reported => {}
    }
}

/// Whether a status-only action (expire, fail, mark_missing) still holds for the record as
/// locked now and the object as seen now: its old status word and the new status, or why not.
fn status_change(
    finding: &Finding,
    now: &Option<Record>,
    object: Option<&ObjectMeta>,
) -> Result<(String, Status), Changed> {
    let old = unchanged(&finding.record, now)?;
    let new = match finding.action {
        Action::Expire if object.is_some() => {
            return Err("the object arrived after the listing".into());
        }
        Action::Expire => Status::Expired,
        Action::MarkMissing if object.is_some() => {
            return Err("the object is back since the listing".into());
        }
        Action::MarkMissing => Status::Missing,
        Action::Fail if now.as_ref().and_then(|r| r.job) != Some(JobState::Failed) => {
            return Err("the processing job was retried meanwhile".into());
        }
        Action::Fail => Status::Failed,
        other => {
            return Err(Changed(format!(
                "{} is not a status-only action",
                other.as_str()
            )));
        }
    };
    Ok((old, new))
}

/// The record as locked now must have the status word the sweep read; returns that word.
fn unchanged(read: &Option<Record>, now: &Option<Record>) -> Result<String, Changed> {
    match (read, now) {
        (Some(read), Some(now)) if read.raw_status == now.raw_status => Ok(now.raw_status.clone()),
        (Some(read), Some(now)) => Err(Changed(format!(
            "the record changed since the sweep read it: status {:?}, was {:?}",
            now.raw_status, read.raw_status
        ))),
        (_, None) => Err("the record was deleted since the sweep read it".into()),
        (None, Some(_)) => Err("a record appeared since the sweep read the table".into()),
    }
}

/// The object as seen now must be the one the listing showed (same ETag, size and modification
/// time): an orphan that was just overwritten is somebody's new upload, not an orphan to act on.
/// Times compare in whole seconds, the precision both carry: listings may give milliseconds
/// (garage, AWS), HEAD's `Last-Modified` is an HTTP date.
fn same_object(
    listed: Option<&ObjectMeta>,
    now: Option<ObjectMeta>,
) -> Result<ObjectMeta, Changed> {
    let Some(now) = now else {
        return Err("the object is gone since the listing".into());
    };
    match listed {
        Some(listed)
            if listed.etag == now.etag
                && listed.size == now.size
                && listed.last_modified.timestamp() == now.last_modified.timestamp() =>
        {
            Ok(now)
        }
        _ => Err("the object was overwritten since the listing".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_listing_in_milliseconds_matches_a_head_in_seconds() {
        let second = Utc.with_ymd_and_hms(2026, 11, 25, 23, 44, 28).unwrap();
        let listed =
            ObjectMeta::sample("a", "\"e1\"", second + chrono::Duration::milliseconds(931));
        let head = ObjectMeta::sample("a", "\"e1\"", second);
        assert_eq!(
            same_object(Some(&listed), Some(head.clone())),
            Ok(head.clone())
        );
        let next_second = ObjectMeta::sample("a", "\"e1\"", second + chrono::Duration::seconds(1));
        assert!(same_object(Some(&listed), Some(next_second)).is_err());
        let rewritten = ObjectMeta::sample("a", "\"e2\"", second);
        assert!(same_object(Some(&listed), Some(rewritten)).is_err());
        let longer = ObjectMeta { size: 4, ..head };
        assert!(same_object(Some(&listed), Some(longer)).is_err());
        assert!(same_object(Some(&listed), None).is_err());
    }
}
