//! The effect of one S3 event: the same decision and executor as the sweep, in one transaction
//! with the key's event state, so that a duplicate or an out-of-order event changes nothing.

use super::parse::{EventKind, S3Event, compare_sequencers};
use crate::bucket::Bucket;
use crate::catalog::{Catalog, KeyEvent};
use crate::decide::{Decision, Policy, decide, decide_returned};
use crate::error::Result;
use crate::execute::{Changed, Executor, Mode};
use crate::model::{Action, Finding, FindingKind, ObjectMeta};
use crate::rules::Rules;
use chrono::{DateTime, Utc};
use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What one event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A status change, committed with the key's event state.
    Applied { kind: FindingKind, action: Action },
    /// Nothing to do; the label says why (one of `metrics::EVENT_IGNORED`).
    Ignored(&'static str),
}

/// Everything an event's effect needs; shared by the pollers.
pub struct Effects {
    pub catalog: Arc<dyn Catalog>,
    pub bucket: Arc<dyn Bucket>,
    pub prefix: String,
    pub rules: Rules,
}

impl Effects {
    pub async fn apply(&self, event: &S3Event, now: DateTime<Utc>) -> Result<Effect> {
        if event.bucket != self.bucket.name() {
            return Ok(Effect::Ignored("other_bucket"));
        }
        // The prefix's own key (an empty name, an S3 folder marker) names no doc.
        let Some(name) = event
            .key
            .strip_prefix(&self.prefix)
            .filter(|name| !name.is_empty() && !self.rules.quarantine.contains(&event.key))
        else {
            return Ok(Effect::Ignored("outside_prefix"));
        };
        let object = match event.kind {
            EventKind::Created => Some(ObjectMeta {
                key: event.key.clone(),
                size: event.size.unwrap_or(0),
                etag: event.etag.clone(),
                last_modified: event.time.unwrap_or(now),
                linked: false,
            }),
            EventKind::Removed => None,
            EventKind::Other => return Ok(Effect::Ignored("unknown_type")),
        };

        let mut tx = self.catalog.begin().await?;
        let newest = tx.lock_key_events(&event.key).await?;
        if let (Some(incoming), Some(newest)) = (&event.sequencer, &newest) {
            match compare_sequencers(incoming, newest) {
                Ordering::Greater => {}
                // Dropping the transaction rolls back; the message can go.
                Ordering::Equal => return Ok(Effect::Ignored("duplicate")),
                Ordering::Less => return Ok(Effect::Ignored("out_of_order")),
            }
        }
        let record = tx.lock_record_at(name).await?;
        // An event says its object is whole (S3: the PUT completed; a folder: the writer closed
        // the file or renamed it into place): nothing to wait for.
        let policy = Policy {
            settle_time: Duration::ZERO,
            ..self.rules.policy.clone()
        };
        let mut decision = decide(record.as_ref(), object.as_ref(), now, &policy);
        if let (
            Decision::Drift {
                kind: FindingKind::ObjectReturned,
                ..
            },
            Some(record),
            Some(object),
        ) = (&decision, &record, &object)
        {
            // A missing record's object is back: processed again if it is the one noted.
            let noted = tx.noted_object(&event.key).await?;
            decision = decide_returned(record, object, noted.as_ref());
        }
        let effect = match decision {
            // Only what the event itself shows: an object arrived, or an object went away.
            // Grace periods and orphans are the sweep's to judge.
            Decision::Drift {
                kind,
                action,
                detail,
            } if matches!(
                (event.kind, action),
                (EventKind::Created, Action::Adopt | Action::Readopt)
                    | (EventKind::Removed, Action::MarkMissing)
            ) =>
            {
                let kind = as_confirmed_by_its_event(kind);
                let finding = Finding {
                    kind,
                    // The doc's id; for an object without a record, the key it would have.
                    id: record
                        .as_ref()
                        .map_or_else(|| name.to_owned(), |r| r.id.clone()),
                    key: event.key.clone(),
                    action,
                    detail: format!("{detail} (S3 event)"),
                    record: record.clone(),
                    object,
                    upload: None,
                };
                let executor = Executor {
                    mode: Mode::Apply,
                    after_upload: self.rules.after_upload,
                    catalog: self.catalog.as_ref(),
                    bucket: self.bucket.as_ref(),
                    quarantine: &self.rules.quarantine,
                    sweep_id: None,
                    restore_window: self.rules.policy.restore_window,
                };
                match executor.apply_in(tx.as_mut(), &finding).await? {
                    Ok(()) => Effect::Applied { kind, action },
                    Err(Changed(reason)) => {
                        tracing::info!(key = %event.key, %reason, "event: the world moved on");
                        Effect::Ignored("changed")
                    }
                }
            }
            _ if record.is_none() => Effect::Ignored("no_record"),
            _ => Effect::Ignored("unchanged"),
        };
        tx.store_key_event(&KeyEvent {
            key: event.key.clone(),
            sequencer: event.sequencer.clone(),
            kind: event.kind.label(),
            time: event.time,
        })
        .await?;
        tx.commit().await?;
        Ok(effect)
    }
}

/// The event is the notification: a pending record it adopts had nothing lost, so the audit log
/// and `reconcile_actions_total` say `upload_confirmed`. Every other kind means what it means in
/// a sweep (an upload after its record expired is late either way).
fn as_confirmed_by_its_event(kind: FindingKind) -> FindingKind {
    match kind {
        FindingKind::LostNotification => FindingKind::UploadConfirmed,
        other => other,
    }
}
