//! The Prometheus metrics of the contract. Label values come from fixed sets only (kinds, actions,
//! results, reasons): never ids, keys or error texts, which would grow without bound.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use std::sync::Arc;

pub struct Metrics {
    registry: Registry,
    /// `type`: created, removed, test, unknown.
    pub events_received: IntCounterVec,
    /// `reason`: a parse error's reason, `effect_failed` or `delete_failed`.
    pub events_failed: IntCounterVec,
    /// `reason`: why a well-formed event changed nothing (other_bucket, outside_prefix, ...).
    pub events_ignored: IntCounterVec,
    /// S3 event time to committed effect.
    pub event_lag: Histogram,
    /// `result`: ok, error, timeout.
    pub processing_attempts: IntCounterVec,
    /// Jobs queued or running.
    pub processing_queue_depth: IntGauge,
}

/// Every `type` of `reconcile_events_received_total`.
pub const EVENT_TYPES: [&str; 4] = ["created", "removed", "test", "unknown"];

/// Every `reason` of `reconcile_events_failed_total`.
pub const EVENT_FAILURES: [&str; 10] = [
    "too_large",
    "not_json",
    "unknown_shape",
    "no_records",
    "bad_record",
    "bad_sns_message",
    "bad_eventbridge",
    "bad_key",
    "effect_failed",
    "delete_failed",
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
        Arc::new(Metrics {
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

    /// The current value of one counter series, for tests and logs.
    pub fn count(counter: &IntCounterVec, label: &str) -> u64 {
        counter.with_label_values(&[label]).get()
    }
}
