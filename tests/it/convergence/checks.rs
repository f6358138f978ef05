//! The properties, checked against what the doubles logged and what the world knows.

use super::world::{QUARANTINE, World, lock, seconds};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, BTreeSet};
use upload_reconciler::catalog::Catalog;
use upload_reconciler::execute::{AfterUpload, OVERWRITTEN_SINCE};
use upload_reconciler::model::OrphanAction;

impl World {
    /// (b) and (c), on what the doubles logged since the last check.
    pub fn check_safety(&self) -> Result<(), TestCaseError> {
        let mut sim = lock(&self.sim);
        let destroyed = self.bucket.destroyed();
        let grace = seconds(self.params.orphan_grace);
        for gone in &destroyed[sim.destroyed_checked..] {
            prop_assert!(
                !gone.referenced,
                "(b) {} was deleted at {} while a record referred to it",
                gone.key,
                gone.at
            );
            prop_assert!(
                gone.at - gone.last_modified > grace,
                "(b) {} was deleted at {}, modified at {}: within orphan_grace",
                gone.key,
                gone.at,
                gone.last_modified
            );
        }
        sim.destroyed_checked = destroyed.len();
        let transitions = self.db.transitions();
        let rows: BTreeMap<String, DateTime<Utc>> = self
            .db
            .rows()
            .into_iter()
            .map(|(id, _, created_at)| (id, created_at))
            .collect();
        for change in &transitions[sim.transitions_checked..] {
            if change.new != "expired" || !sim.presigned.contains(&change.id) {
                continue;
            }
            let created_at = rows[&change.id];
            let url_expires = created_at + seconds(self.params.lifetime);
            prop_assert!(
                change.at > url_expires,
                "(c) {} was expired at {}, while its presigned URL (created {}, valid {}s) could \
                 still start an upload until {}",
                change.id,
                change.at,
                created_at,
                self.params.lifetime,
                url_expires
            );
        }
        sim.transitions_checked = transitions.len();
        Ok(())
    }

    /// (a) and (d), once everything settled.
    pub async fn check_convergence(&self) -> Result<(), TestCaseError> {
        self.check_agreement()?;
        self.check_audit(&self.bucket.destroyed()).await
    }

    /// (a): every record agrees with its object; no orphan left unless reported; what was
    /// quarantined is kept.
    pub fn check_agreement(&self) -> Result<(), TestCaseError> {
        let sim = lock(&self.sim);
        let after_upload = self.params.after_upload;
        let mut records = BTreeSet::new();
        for (id, status, _) in self.db.rows() {
            let key = format!("{}{id}", self.params.prefix);
            let has_object = self.bucket.body(&key).is_some();
            let truth = sim.truth.get(&key).cloned().unwrap_or_default();
            let agrees = match (status.as_str(), has_object) {
                ("processed", true) => true,
                ("failed", _) => after_upload == AfterUpload::Enqueue,
                ("expired", false) => true,
                ("missing", false) => !truth.landed.is_empty(),
                ("missing", true) => truth.reappeared(),
                _ => false,
            };
            prop_assert!(
                agrees,
                "(a) {id} ended {status} with{} its object ({truth:?})",
                if has_object { "" } else { "out" }
            );
            records.insert(key);
        }
        for key in self.bucket.keys() {
            if self.id_of(&key).is_none() || records.contains(&key) {
                continue;
            }
            prop_assert_eq!(
                self.params.orphan_action,
                OrphanAction::Report,
                "(a) the orphan {} is left",
                key
            );
        }
        let destroyed = self.bucket.destroyed();
        if self.params.orphan_action == OrphanAction::Quarantine {
            for gone in &destroyed {
                let area = format!("{QUARANTINE}{}/", gone.key);
                let kept = self.bucket.keys().iter().any(|k| {
                    k.starts_with(&area) && self.bucket.body(k) == Some(gone.body.clone())
                });
                prop_assert!(
                    kept,
                    "the quarantined {} has no copy under {}",
                    gone.key,
                    area
                );
            }
        }
        Ok(())
    }

    /// (d): per doc, the status changes its audit rows tell are the ones committed, in order;
    /// per key, one audit row for each object the engine destroyed.
    pub async fn check_audit(
        &self,
        destroyed: &[crate::memory::bucket::Destroyed],
    ) -> Result<(), TestCaseError> {
        let transitions = self.db.transitions();
        let mut keys: BTreeSet<String> = destroyed.iter().map(|d| d.key.clone()).collect();
        keys.extend(
            self.db
                .rows()
                .into_iter()
                .map(|(id, _, _)| format!("{}{id}", self.params.prefix)),
        );
        for key in keys {
            let id = key.strip_prefix(self.params.prefix).unwrap_or(&key);
            let trail = self
                .catalog
                .audit_trail(id, &key)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .unwrap_or_default();
            let told: Vec<(Option<String>, Option<String>)> = trail
                .iter()
                .filter(|entry| entry.old_status != entry.new_status)
                .map(|entry| (entry.old_status.clone(), entry.new_status.clone()))
                .collect();
            let committed: Vec<(Option<String>, Option<String>)> = transitions
                .iter()
                .filter(|t| t.id == id)
                .map(|t| (t.old.clone(), Some(t.new.clone())))
                .collect();
            prop_assert_eq!(
                &told,
                &committed,
                "(d) the audit of {} tells other changes than were made: {:?}",
                key,
                trail
            );
            let destroying = |entry: &&upload_reconciler::catalog::AuditEntry| {
                entry.action == "delete" || entry.action == "quarantine"
            };
            // A change settled by a later sweep with another object at its key cannot tell
            // whether it destroyed the object or an overwrite did first: it says so, and may
            // stand without a destroy of its own.
            let unsure = trail
                .iter()
                .filter(destroying)
                .filter(|entry| entry.detail.ends_with(OVERWRITTEN_SINCE))
                .count() as u64;
            let audited_destroys = trail.iter().filter(destroying).count() as u64 - unsure;
            let destroys = destroyed.iter().filter(|d| d.key == key).count() as u64;
            let unaudited = lock(&self.sim)
                .truth
                .get(&key)
                .map_or(0, |t| t.unaudited_destroys);
            prop_assert!(
                audited_destroys <= destroys && destroys - audited_destroys <= unaudited + unsure,
                "(d) {} destroyed {} times, audited {} times ({} cut at the commit): {:?}",
                key,
                destroys,
                audited_destroys,
                unaudited,
                trail
            );
        }
        Ok(())
    }
}
