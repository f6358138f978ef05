//! The plain values the engine runs by. The configuration builds them once (`Config::rules`);
//! the sweep, the event path, the executor and `explain` take these and never a config section,
//! so the engine can be driven by anything that can fill four small structs (a test, the demo, a
//! simulation).

use crate::decide::Policy;
use crate::error::SafetyStop;
use crate::execute::AfterUpload;
use crate::model::ObjectMeta;

/// Everything the engine's decisions and actions depend on besides the catalog and the bucket.
#[derive(Debug, Clone)]
pub struct Rules {
    /// How each key is judged.
    pub policy: Policy,
    /// Where quarantined objects go, and which keys are therefore not docs.
    pub quarantine: Quarantine,
    /// How many state changes one sweep may make before it stops to ask.
    pub breaker: Breaker,
    /// What happens once an upload is confirmed.
    pub after_upload: AfterUpload,
}

/// The quarantine area of the bucket: objects moved there are kept, never judged again (they
/// must not come back as orphans), and each version gets a key of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    prefix: String,
}

impl Quarantine {
    /// An empty prefix means no quarantine area (config validation refuses it where
    /// `orphan_action = "quarantine"`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Quarantine {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether a key lies in the quarantine area.
    pub fn contains(&self, key: &str) -> bool {
        !self.prefix.is_empty() && key.starts_with(&self.prefix)
    }

    /// Where a quarantined object goes: `prefix + key + "/" + LastModified (UTC, whole seconds,
    /// `20261126T010743Z`) + "-" + ETag (quotes dropped)`, e.g.
    /// `quarantine/docs/a/20261126T010743Z-9b2cf535f27731c974343645a3985328`. Every copy of one
    /// key sits under `quarantine/KEY/`, one per version: a later orphan at the same key gets a
    /// key of its own. The key is recovered by dropping the prefix and the last `/` part.
    pub fn key_for(&self, object: &ObjectMeta) -> String {
        let etag: String = object
            .etag
            .as_deref()
            .unwrap_or("no-etag")
            .chars()
            .filter(|c| *c != '"')
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!(
            "{}{}/{}-{etag}",
            self.prefix,
            object.key,
            object.last_modified.format("%Y%m%dT%H%M%SZ")
        )
    }
}

/// The circuit breaker: too many changes at once usually means a wrong config (prefix, mapping,
/// a bucket restored from elsewhere), not a real mess.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Breaker {
    /// The share of the records scanned that one sweep may change...
    pub max_action_ratio: f64,
    /// ...once it changes more than this many.
    pub max_action_floor: u64,
}

impl Breaker {
    /// `Some` when `changes` state changes for `scanned` records is too many.
    pub fn check(&self, changes: u64, scanned: u64) -> Option<SafetyStop> {
        let limit = self.max_action_ratio * scanned as f64;
        let tripped = changes > self.max_action_floor && changes as f64 > limit;
        tripped.then_some(SafetyStop {
            actions: changes,
            records_scanned: scanned,
            max_action_ratio: self.max_action_ratio,
            max_action_floor: self.max_action_floor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn the_breaker_trips_only_above_both_the_floor_and_the_ratio() {
        let breaker = Breaker {
            max_action_ratio: 0.2,
            max_action_floor: 100,
        };
        // Above the ratio, not above the floor.
        assert_eq!(breaker.check(100, 101), None);
        // Above the floor, not above the ratio.
        assert_eq!(breaker.check(101, 1000), None);
        let stop = breaker.check(101, 500).expect("both exceeded");
        assert_eq!((stop.actions, stop.records_scanned), (101, 500));
    }

    #[test]
    fn quarantine_keys_name_the_version_and_keep_the_key_readable() {
        let at = Utc.with_ymd_and_hms(2026, 11, 26, 1, 7, 43).unwrap();
        let area = Quarantine::new("quarantine/");
        let plain = ObjectMeta::sample("docs/a b", "\"9b2cf535\"", at);
        assert_eq!(
            area.key_for(&plain),
            "quarantine/docs/a b/20261126T010743Z-9b2cf535"
        );
        let q = Quarantine::new("q/");
        let multipart = ObjectMeta::sample("docs/a", "\"9b2c-3\"", at);
        assert_eq!(q.key_for(&multipart), "q/docs/a/20261126T010743Z-9b2c-3");
        let odd = ObjectMeta {
            etag: Some("W/\"x/y\"".into()),
            ..plain.clone()
        };
        assert_eq!(q.key_for(&odd), "q/docs/a b/20261126T010743Z-W_x_y");
        let later = ObjectMeta::sample(
            "docs/a b",
            "\"9b2cf535\"",
            at + chrono::Duration::seconds(1),
        );
        assert_ne!(q.key_for(&plain), q.key_for(&later));
    }

    #[test]
    fn the_quarantine_area_is_outside_judgement() {
        let area = Quarantine::new("quarantine/");
        assert!(area.contains("quarantine/docs/a/20261126T010743Z-e"));
        assert!(!area.contains("docs/a"));
        assert!(!Quarantine::new("").contains("anything"));
    }
}
