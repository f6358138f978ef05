//! The Prometheus metrics of the contract. Label values come from fixed sets only (kinds, actions,
//! results, reasons): never ids, keys or error texts, which would grow without bound.

use crate::model::{Action, FindingKind, Outcome};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::sync::Arc;

pub struct Metrics {
    registry: Registry,
    /// `type`: created, removed, test, unknown.
    pub events_received: IntCounterVec,
    /// `reason`: a parse error's reason, `effect_failed`, `dependency_down` or `delete_failed`.
    pub events_failed: IntCounterVec,
    /// `reason`: why a well-formed event changed nothing (other_bucket, outside_prefix, ...).
    pub events_ignored: IntCounterVec,
    /// S3 event time to committed effect.
    pub event_lag: Histogram,
    /// `result`: ok, error, timeout.
    pub processing_attempts: IntCounterVec,
    /// Jobs queued or running.
    pub processing_queue_depth: IntGauge,
    /// `kind`: every finding kind, from the last completed sweep.
    pub findings: IntGaugeVec,
    /// `kind`, `action`, `result` (applied, failed, dry_run, skipped).
    pub actions: IntCounterVec,
    pub sweep_duration: Histogram,
    pub sweep_last_success: Gauge,
    /// What the parts of the abandoned multipart uploads the last sweep found hold.
    pub abandoned_multipart_bytes: IntGauge,
    pub objects_listed: IntCounter,
    pub records_scanned: IntCounter,
    /// Scheduled sweeps skipped because another replica held the sweep lock.
    pub sweeps_skipped: IntCounter,
    /// Paths with file notifications the folder watcher has not read yet (collapsed per path,
    /// bounded by `events::folder::MAX_WAITING`).
    pub file_notifications_waiting: IntGauge,
}

/// Every `result` of `reconcile_actions_total`.
pub const ACTION_RESULTS: [&str; 4] = ["applied", "failed", "dry_run", "skipped"];

/// Every `type` of `reconcile_events_received_total`.
pub const EVENT_TYPES: [&str; 4] = ["created", "removed", "test", "unknown"];

/// Every `reason` of `reconcile_events_failed_total`.
pub const EVENT_FAILURES: [&str; 12] = [
    "too_large",
    "not_json",
    "unknown_shape",
    "no_records",
    "bad_record",
    "bad_sns_message",
    "bad_eventbridge",
    "bad_key",
    "effect_failed",
    "dependency_down",
    "delete_failed",
    "notifications_lost",
];

/// Every `reason` of `reconcile_events_ignored_total`.
pub const EVENT_IGNORED: [&str; 8] = [
    "other_bucket",
    "outside_prefix",
    "unknown_type",
    "no_record",
    "duplicate",
    "out_of_order",
    "unchanged",
    "changed",
];

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, label: &str, values: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("each metric is registered once");
            // Every series exists from the start at 0, so rate() and alerts see it.
            for v in values {
                c.with_label_values(&[*v]);
            }
            c
        };
        let events_received = counter(
            "reconcile_events_received_total",
            "S3 events read from the queue, by type.",
            "type",
            &EVENT_TYPES,
        );
        let events_failed = counter(
            "reconcile_events_failed_total",
            "Queue messages that could not be handled and were left to the queue, by reason.",
            "reason",
            &EVENT_FAILURES,
        );
        let events_ignored = counter(
            "reconcile_events_ignored_total",
            "Well-formed S3 events that changed nothing, by reason.",
            "reason",
            &EVENT_IGNORED,
        );
        let event_lag = Histogram::with_opts(
            HistogramOpts::new(
                "reconcile_event_lag_seconds",
                "Time from the S3 event to its committed effect.",
            )
            .buckets(vec![
                0.1, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(event_lag.clone()))
            .expect("each metric is registered once");
        let processing_attempts = counter(
            "reconcile_processing_attempts_total",
            "Post-processing attempts that ran, by result.",
            "result",
            &["ok", "error", "timeout"],
        );
        let processing_queue_depth = IntGauge::new(
            "reconcile_processing_queue_depth",
            "Post-processing jobs queued or running.",
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(processing_queue_depth.clone()))
            .expect("each metric is registered once");
        let register = |c: Box<dyn prometheus::core::Collector>| {
            registry
                .register(c)
                .expect("each metric is registered once");
        };
        let findings = IntGaugeVec::new(
            Opts::new(
                "reconcile_findings",
                "Findings of the last completed sweep, by kind.",
            ),
            &["kind"],
        )
        .expect("static metric definition is valid");
        for kind in FindingKind::ALL {
            findings.with_label_values(&[kind.as_str()]);
        }
        register(Box::new(findings.clone()));
        let actions = IntCounterVec::new(
            Opts::new(
                "reconcile_actions_total",
                "State-changing actions of sweeps, events and workers, by kind, action and result.",
            ),
            &["kind", "action", "result"],
        )
        .expect("static metric definition is valid");
        // The series alerts watch exist from the start, so increase() sees the first one.
        for (kind, action) in [
            (FindingKind::ProcessingExhausted, Action::Fail),
            (FindingKind::MissingObject, Action::MarkMissing),
        ] {
            actions.with_label_values(&[kind.as_str(), action.as_str(), "applied"]);
        }
        register(Box::new(actions.clone()));
        let sweep_duration = Histogram::with_opts(
            HistogramOpts::new(
                "reconcile_sweep_duration_seconds",
                "Duration of completed sweeps.",
            )
            .buckets(vec![
                0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
            ]),
        )
        .expect("static metric definition is valid");
        register(Box::new(sweep_duration.clone()));
        let sweep_last_success = Gauge::new(
            "reconcile_sweep_last_success_timestamp_seconds",
            "When the last sweep completed without error (Unix time).",
        )
        .expect("static metric definition is valid");
        register(Box::new(sweep_last_success.clone()));
        let abandoned_multipart_bytes = IntGauge::new(
            "reconcile_abandoned_multipart_bytes",
            "Bytes held by the parts of the multipart uploads the last sweep found abandoned \
             (summed with ListParts).",
        )
        .expect("static metric definition is valid");
        register(Box::new(abandoned_multipart_bytes.clone()));
        let objects_listed = IntCounter::new(
            "reconcile_objects_listed_total",
            "Objects listed by sweeps.",
        )
        .expect("static metric definition is valid");
        register(Box::new(objects_listed.clone()));
        let records_scanned =
            IntCounter::new("reconcile_records_scanned_total", "Records read by sweeps.")
                .expect("static metric definition is valid");
        register(Box::new(records_scanned.clone()));
        let sweeps_skipped = IntCounter::new(
            "reconcile_sweeps_skipped_total",
            "Scheduled sweeps skipped because another replica held the sweep lock.",
        )
        .expect("static metric definition is valid");
        register(Box::new(sweeps_skipped.clone()));
        let file_notifications_waiting = IntGauge::new(
            "reconcile_file_notifications_waiting",
            "Paths whose file notifications the folder watcher has not read yet, one per path.",
        )
        .expect("static metric definition is valid");
        register(Box::new(file_notifications_waiting.clone()));
        let build_info = IntGaugeVec::new(
            Opts::new(
                "reconcile_build_info",
                "Always 1; the version is in the label.",
            ),
            &["version"],
        )
        .expect("static metric definition is valid");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        register(Box::new(build_info));
        Arc::new(Metrics {
            findings,
            actions,
            sweep_duration,
            sweep_last_success,
            abandoned_multipart_bytes,
            objects_listed,
            records_scanned,
            sweeps_skipped,
            file_notifications_waiting,
            processing_attempts,
            processing_queue_depth,
            registry,
            events_received,
            events_failed,
            events_ignored,
            event_lag,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Count one executed action (report-only findings are not actions).
    pub fn action(&self, kind: FindingKind, action: Action, outcome: &Outcome) {
        let result = match outcome {
            Outcome::Applied => "applied",
            Outcome::Failed(_) => "failed",
            Outcome::DryRun => "dry_run",
            Outcome::Skipped(_) => "skipped",
            Outcome::Reported => return,
        };
        self.actions
            .with_label_values(&[kind.as_str(), action.as_str(), result])
            .inc();
    }

    /// The current value of one counter series, for tests and logs.
    pub fn count(counter: &IntCounterVec, label: &str) -> u64 {
        counter.with_label_values(&[label]).get()
    }
}
