//! Any SQS message body through `events::parse::parse`, the first code an event from the queue
//! meets. It must never panic, and what it returns must keep the promises of `events/parse.rs`:
//!
//! - every record of a notification is one event, its key taken from `s3.object.key` and
//!   form-decoded exactly once (direct or SNS-wrapped), while an EventBridge key is kept as stored;
//! - bucket and key are never empty, a size is a byte count, a sequencer is hexadecimal;
//! - an S3 notification wrapped by SNS parses to what the notification itself parses to;
//! - `compare_sequencers` orders sequencers as AWS documents: hex values, the shorter
//!   right-padded with zeros. That is a total order; it is checked against an independent
//!   statement of it on every sequencer parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::cmp::Ordering;
use upload_reconciler::events::parse::{
    MAX_BODY_BYTES, Message, ParseError, S3Event, compare_sequencers, parse,
};
use upload_reconciler::model::decode_form;

/// Sequencers every parsed one is also compared with: AWS's documented examples, and the edges
/// of right-padding (a lone zero, a value that pads to the same, the largest digit).
const ANCHORS: [&str; 6] = [
    "0",
    "0055AED6DCD90281E5",
    "0055aed6dcd90281e500",
    "617f08299329d189",
    "F",
    "ffffffffffffffffffff",
];

/// Pairs grow with the square of the sequencers; a body with hundreds of records adds nothing
/// the first few do not.
const MAX_COMPARED: usize = 12;

fuzz_target!(|data: &[u8]| {
    // SQS delivers text: the poller hands the parser a String.
    let body = String::from_utf8_lossy(data);
    let parsed = parse(&body);
    if let Ok(Message::Events(events)) = &parsed {
        check_keys_and_fields(&body, events);
        check_sequencer_order(events);
    }
    check_sns_wrapping(&body, &parsed);
});

/// The parser's reading of each record, stated again from the JSON: which field holds the key,
/// and whether that shape form-encodes it.
fn check_keys_and_fields(body: &str, events: &[S3Event]) {
    let value: Value = serde_json::from_str(body).expect("the parser read this body as JSON");
    let expected = expected_keys(&value, true);
    assert_eq!(
        events.len(),
        expected.len(),
        "one event per record: {events:?}"
    );
    for (event, expected) in events.iter().zip(expected) {
        assert_eq!(event.key, expected, "the key of {event:?}");
        assert!(!event.bucket.is_empty(), "an empty bucket: {event:?}");
        assert!(!event.key.is_empty(), "an empty key: {event:?}");
        assert!(event.size.is_none_or(|n| n >= 0), "a size: {event:?}");
        if let Some(sequencer) = &event.sequencer {
            assert!(
                !sequencer.is_empty() && sequencer.bytes().all(|b| b.is_ascii_hexdigit()),
                "a sequencer that is not hex: {event:?}"
            );
        }
    }
}

/// The keys a message holds, as the reconciler must see them. S3 form-encodes keys in its own
/// notifications (`red+flower.jpg`), SNS wraps that notification unchanged, and EventBridge
/// carries the key as stored.
fn expected_keys(value: &Value, may_be_sns: bool) -> Vec<String> {
    if let Some(records) = value.get("Records") {
        let records = records.as_array().expect("parsed Records are a list");
        return records
            .iter()
            .map(|record| {
                let raw = record["s3"]["object"]["key"].as_str().expect("a key");
                decode_form(raw).expect("a parsed key decodes")
            })
            .collect();
    }
    if may_be_sns && value.get("Type").and_then(Value::as_str) == Some("Notification") {
        let inner = value["Message"].as_str().expect("an SNS Message string");
        let inner: Value = serde_json::from_str(inner).expect("an SNS Message holding JSON");
        return expected_keys(&inner, false);
    }
    let key = value["detail"]["object"]["key"].as_str().expect("a key");
    vec![key.to_owned()]
}

/// `compare_sequencers` against the order it documents, stated independently: right-padding the
/// shorter with zeros compares like dropping trailing zeros and letting a prefix come first
/// (`0` is the smallest digit), on upper-cased hex (ASCII puts `0-9` before `A-F`).
fn check_sequencer_order(events: &[S3Event]) {
    let mut sequencers: Vec<&str> = events
        .iter()
        .filter_map(|e| e.sequencer.as_deref())
        .take(MAX_COMPARED)
        .collect();
    sequencers.extend(ANCHORS);
    let by_value = |s: &str| s.to_ascii_uppercase().trim_end_matches('0').to_owned();
    for a in &sequencers {
        assert_eq!(compare_sequencers(a, a), Ordering::Equal, "{a:?} to itself");
        let padded = format!("{a}000");
        assert_eq!(
            compare_sequencers(a, &padded),
            Ordering::Equal,
            "{a:?} padded"
        );
        for b in &sequencers {
            let got = compare_sequencers(a, b);
            assert_eq!(got, by_value(a).cmp(&by_value(b)), "{a:?} against {b:?}");
            assert_eq!(
                got,
                compare_sequencers(b, a).reverse(),
                "{a:?}, {b:?} both ways"
            );
        }
    }
}

/// SNS delivers S3's notification as the string `Message`: the same notification, or the same
/// test event, must come out of it (or the same failure, for a malformed one).
fn check_sns_wrapping(body: &str, direct: &Result<Message, ParseError>) {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return;
    };
    let is_s3_notification = value.get("Records").is_some()
        || value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent");
    if !is_s3_notification {
        return;
    }
    let wrapped = serde_json::json!({
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:uploads-events",
        "Subject": "Amazon S3 Notification",
        "Message": body,
        "Timestamp": "2026-11-25T10:00:00.000Z",
    })
    .to_string();
    if wrapped.len() > MAX_BODY_BYTES {
        return;
    }
    let through_sns = parse(&wrapped);
    match (direct, &through_sns) {
        (Ok(direct), Ok(through_sns)) => assert_eq!(direct, through_sns),
        (Err(direct), Err(through_sns)) => assert_eq!(direct.reason(), through_sns.reason()),
        _ => panic!("direct {direct:?}, through SNS {through_sns:?}"),
    }
}
