//! Message shapes: what an SQS message body may hold, turned into S3 events. Pure: no I/O.
//!
//! Three shapes reach a queue in real deployments: S3's own notification (`{"Records": [...]}`,
//! several records per message possible), the same wrapped by SNS (`{"Type": "Notification",
//! "Message": "<the same, as a string>"}`), and EventBridge (`{"detail-type": "Object Created",
//! "detail": {...}}`). S3 also sends an `s3:TestEvent` when a notification is configured.

use crate::model::decode_form;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::cmp::Ordering;

/// The largest body SQS delivers (1 MiB); anything larger did not come from SQS intact.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Removed,
    /// Restore, replication, tagging...: acknowledged, changes nothing.
    Other,
}

impl EventKind {
    /// The `type` label of `reconcile_events_received_total`.
    pub fn label(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Removed => "removed",
            EventKind::Other => "unknown",
        }
    }
}

/// One S3 event, key decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Event {
    pub kind: EventKind,
    pub bucket: String,
    pub key: String,
    pub size: Option<i64>,
    pub etag: Option<String>,
    /// S3's per-key ordering token (hex); moto sends none.
    pub sequencer: Option<String>,
    pub time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `s3:TestEvent`: acknowledge and ignore.
    Test,
    Events(Vec<S3Event>),
}

/// Why a body was not understood. Each has a fixed metric label; the message stays in the queue.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("JSON of no known shape (no Records, no SNS Message, no EventBridge detail)")]
    UnknownShape,
    #[error("Records is empty or not a list")]
    NoRecords,
    #[error("record {index}: {problem}")]
    BadRecord { index: usize, problem: String },
    #[error("SNS Message is not a string holding an S3 notification: {0}")]
    BadSnsMessage(String),
    #[error("EventBridge detail: {0}")]
    BadEventBridge(String),
    #[error("key {0:?} does not decode to UTF-8")]
    BadKey(String),
}

impl ParseError {
    /// The `reason` label of `reconcile_events_failed_total`: a fixed set.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::TooLarge => "too_large",
            ParseError::NotJson(_) => "not_json",
            ParseError::UnknownShape => "unknown_shape",
            ParseError::NoRecords => "no_records",
            ParseError::BadRecord { .. } => "bad_record",
            ParseError::BadSnsMessage(_) => "bad_sns_message",
            ParseError::BadEventBridge(_) => "bad_eventbridge",
            ParseError::BadKey(_) => "bad_key",
        }
    }
}

pub fn parse(body: &str) -> Result<Message, ParseError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ParseError::TooLarge);
    }
    let value: Value =
        serde_json::from_str(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    parse_value(&value, true)
}

fn parse_value(value: &Value, may_be_sns: bool) -> Result<Message, ParseError> {
    if is_test_event(value) {
        return Ok(Message::Test);
    }
    if let Some(records) = value.get("Records") {
        return parse_records(records);
    }
    if may_be_sns && value.get("Type").and_then(Value::as_str) == Some("Notification") {
        let inner = value
            .get("Message")
            .and_then(Value::as_str)
            .ok_or_else(|| ParseError::BadSnsMessage("no Message string".into()))?;
        let inner: Value = serde_json::from_str(inner)
            .map_err(|e| ParseError::BadSnsMessage(format!("not JSON: {e}")))?;
        return parse_value(&inner, false).map_err(|e| match e {
            ParseError::UnknownShape => ParseError::BadSnsMessage("no Records".into()),
            other => other,
        });
    }
    if value.get("detail-type").is_some() {
        return parse_eventbridge(value);
    }
    Err(ParseError::UnknownShape)
}

fn is_test_event(value: &Value) -> bool {
    value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent")
}

fn parse_records(records: &Value) -> Result<Message, ParseError> {
    let records = records
        .as_array()
        .filter(|r| !r.is_empty())
        .ok_or(ParseError::NoRecords)?;
    records
        .iter()
        .enumerate()
        .map(|(index, record)| {
            parse_record(record).map_err(|problem| match problem {
                RecordProblem::Field(problem) => ParseError::BadRecord { index, problem },
                RecordProblem::Key(key) => ParseError::BadKey(key),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Message::Events)
}

enum RecordProblem {
    Field(String),
    Key(String),
}

fn field(problem: impl Into<String>) -> RecordProblem {
    RecordProblem::Field(problem.into())
}

fn parse_record(record: &Value) -> Result<S3Event, RecordProblem> {
    let name = required_str(record, &["eventName"]).map_err(field)?;
    let name = name.strip_prefix("s3:").unwrap_or(name);
    let kind = if name.starts_with("ObjectCreated:") {
        EventKind::Created
    } else if name.starts_with("ObjectRemoved:") || name.starts_with("LifecycleExpiration:Delete") {
        EventKind::Removed
    } else {
        EventKind::Other
    };
    let bucket = required_str(record, &["s3", "bucket", "name"]).map_err(field)?;
    let raw_key = required_str(record, &["s3", "object", "key"]).map_err(field)?;
    // S3 form-encodes keys in notifications: "red flower.jpg" arrives as "red+flower.jpg".
    let key = decode_form(raw_key).ok_or_else(|| RecordProblem::Key(raw_key.to_owned()))?;
    let object = &record["s3"]["object"];
    Ok(S3Event {
        kind,
        bucket: bucket.to_owned(),
        key,
        size: optional_i64(object, "size").map_err(field)?,
        etag: optional_str(object, "eTag").map_err(field)?,
        sequencer: optional_sequencer(object).map_err(field)?,
        time: optional_time(record, "eventTime").map_err(field)?,
    })
}

/// EventBridge's detail carries the key as stored, not form-encoded (its schema shows plain
/// keys). Decoding it anyway would turn a real `+` into a space: the wrong doc.
fn parse_eventbridge(value: &Value) -> Result<Message, ParseError> {
    let bad = |p: String| ParseError::BadEventBridge(p);
    let detail_type = value
        .get("detail-type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("detail-type is not a string".into()))?;
    let kind = match detail_type {
        "Object Created" => EventKind::Created,
        "Object Deleted" => EventKind::Removed,
        _ => EventKind::Other,
    };
    let detail = value
        .get("detail")
        .filter(|d| d.is_object())
        .ok_or_else(|| bad("no detail object".into()))?;
    let object = &detail["object"];
    Ok(Message::Events(vec![S3Event {
        kind,
        bucket: required_str(detail, &["bucket", "name"])
            .map_err(bad)?
            .to_owned(),
        key: required_str(detail, &["object", "key"])
            .map_err(bad)?
            .to_owned(),
        size: optional_i64(object, "size").map_err(bad)?,
        etag: optional_str(object, "etag").map_err(bad)?,
        sequencer: optional_sequencer(object).map_err(bad)?,
        time: optional_time(value, "time").map_err(bad)?,
    }]))
}

fn required_str<'v>(value: &'v Value, path: &[&str]) -> Result<&'v str, String> {
    let mut at = value;
    for step in path {
        at = at
            .get(step)
            .ok_or_else(|| format!("{} is missing", path.join(".")))?;
    }
    at.as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{} is not a non-empty string", path.join(".")))
}

fn optional_str(value: &Value, name: &str) -> Result<Option<String>, String> {
    match value.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{name} is not a string")),
    }
}

fn optional_i64(value: &Value, name: &str) -> Result<Option<i64>, String> {
    match value.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| format!("{name} is not a byte count")),
    }
}

fn optional_sequencer(object: &Value) -> Result<Option<String>, String> {
    match optional_str(object, "sequencer")? {
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(Some(s)),
        Some(s) => Err(format!("sequencer {s:?} is not hexadecimal")),
        None => Ok(None),
    }
}

fn optional_time(value: &Value, name: &str) -> Result<Option<DateTime<Utc>>, String> {
    match optional_str(value, name)? {
        None => Ok(None),
        Some(t) => DateTime::parse_from_rfc3339(&t)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| format!("{name} {t:?} is not a time: {e}")),
    }
}

/// Order two sequencers of the same key. S3's are hex strings whose length may differ: the shorter
/// is right-padded with zeros before comparing, as AWS documents.
pub fn compare_sequencers(a: &str, b: &str) -> Ordering {
    let width = a.len().max(b.len());
    let pad = |s: &str| format!("{:0<width$}", s.to_ascii_uppercase());
    pad(a).cmp(&pad(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_record(name: &str, key: &str, sequencer: Option<&str>) -> String {
        let seq = sequencer
            .map(|s| format!(r#","sequencer":"{s}""#))
            .unwrap_or_default();
        format!(
            r#"{{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"us-east-1",
               "eventTime":"2026-11-25T10:00:00.123Z","eventName":"{name}",
               "s3":{{"s3SchemaVersion":"1.0","bucket":{{"name":"uploads","arn":"arn:aws:s3:::uploads"}},
               "object":{{"key":"{key}","size":1024,"eTag":"d41d8cd98f00b204e9800998ecf8427e"{seq}}}}}}}"#
        )
    }

    fn events(body: &str) -> Vec<S3Event> {
        match parse(body) {
            Ok(Message::Events(events)) => events,
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[test]
    fn a_direct_notification_with_several_records() {
        let body = format!(
            r#"{{"Records":[{},{}]}}"#,
            s3_record("ObjectCreated:Put", "docs/a", Some("0055AED6DCD90281E5")),
            s3_record("ObjectRemoved:Delete", "docs/b", None)
        );
        let got = events(&body);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].kind, EventKind::Created);
        assert_eq!(got[0].bucket, "uploads");
        assert_eq!(got[0].key, "docs/a");
        assert_eq!(got[0].size, Some(1024));
        assert_eq!(got[0].sequencer.as_deref(), Some("0055AED6DCD90281E5"));
        assert!(got[0].time.is_some());
        assert_eq!(got[1].kind, EventKind::Removed);
    }

    #[test]
    fn keys_are_form_decoded() {
        let body = format!(
            r#"{{"Records":[{}]}}"#,
            s3_record("ObjectCreated:Put", "docs%2Fab+c%2B1%C3%A9", None)
        );
        assert_eq!(events(&body)[0].key, "docs/ab c+1é");
    }

    #[test]
    fn the_test_event_is_recognised() {
        let body = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-11-25T10:00:00.000Z",
                       "Bucket":"uploads","RequestId":"5582815E1AEA5ADF","HostId":"8cLeGAmw098X"}"#;
        assert_eq!(parse(body), Ok(Message::Test));
    }

    #[test]
    fn an_sns_wrapped_notification_is_unwrapped() {
        let inner = format!(
            r#"{{"Records":[{}]}}"#,
            s3_record("ObjectCreated:CompleteMultipartUpload", "a+b", Some("AB"))
        );
        let body = serde_json::json!({
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:uploads",
            "Subject": "Amazon S3 Notification",
            "Message": inner,
            "Timestamp": "2026-11-25T10:00:00.000Z",
        })
        .to_string();
        let got = events(&body);
        assert_eq!(got[0].key, "a b");
        assert_eq!(got[0].kind, EventKind::Created);
        let wrapped_test = serde_json::json!({
            "Type": "Notification",
            "Message": r#"{"Service":"Amazon S3","Event":"s3:TestEvent"}"#,
        })
        .to_string();
        assert_eq!(parse(&wrapped_test), Ok(Message::Test));
    }

    #[test]
    fn eventbridge_shapes_are_understood_and_their_keys_kept_as_is() {
        let body = serde_json::json!({
            "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103",
            "detail-type": "Object Created", "source": "aws.s3", "account": "123456789012",
            "time": "2026-11-25T10:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:s3:::uploads"],
            "detail": {
                "version": "0", "bucket": {"name": "uploads"},
                "object": {"key": "docs/a+b", "size": 5, "etag": "b1946ac92492d2347c6235b4d2611184",
                           "sequencer": "00617F08299329D189"},
                "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012", "reason": "PutObject"
            }
        })
        .to_string();
        let got = events(&body);
        assert_eq!(got[0].kind, EventKind::Created);
        assert_eq!(got[0].key, "docs/a+b");
        assert_eq!(got[0].sequencer.as_deref(), Some("00617F08299329D189"));
        let deleted = body.replace("Object Created", "Object Deleted");
        assert_eq!(events(&deleted)[0].kind, EventKind::Removed);
        let restored = body.replace("Object Created", "Object Restore Completed");
        assert_eq!(events(&restored)[0].kind, EventKind::Other);
    }

    #[test]
    fn malformed_bodies_are_errors_with_fixed_reasons() {
        let record = s3_record("ObjectCreated:Put", "k", None);
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "not_json"),
            ("not json".into(), "not_json"),
            (r#"{"Records":[{"#.into(), "not_json"),
            ("[]".into(), "unknown_shape"),
            ("42".into(), "unknown_shape"),
            (r#"{"hello":"world"}"#.into(), "unknown_shape"),
            (r#"{"Records":[]}"#.into(), "no_records"),
            (r#"{"Records":{}}"#.into(), "no_records"),
            (r#"{"Records":[{}]}"#.into(), "bad_record"),
            (
                format!(
                    r#"{{"Records":[{}]}}"#,
                    record.replace(r#""key":"k""#, r#""key":7"#)
                ),
                "bad_record",
            ),
            (
                format!(r#"{{"Records":[{}]}}"#, record.replace("1024", "-1")),
                "bad_record",
            ),
            (
                format!(r#"{{"Records":[{}]}}"#, record.replace("1024", r#""big""#)),
                "bad_record",
            ),
            (
                format!(
                    r#"{{"Records":[{}]}}"#,
                    record.replace(r#""k""#, r#""%FF""#)
                ),
                "bad_key",
            ),
            (
                r#"{"Type":"Notification","Message":"nope"}"#.into(),
                "bad_sns_message",
            ),
            (
                r#"{"Type":"Notification","Message":7}"#.into(),
                "bad_sns_message",
            ),
            (
                r#"{"Type":"Notification","Message":"{}"}"#.into(),
                "bad_sns_message",
            ),
            (
                r#"{"detail-type":"Object Created"}"#.into(),
                "bad_eventbridge",
            ),
            (r#"{"detail-type":5,"detail":{}}"#.into(), "bad_eventbridge"),
            ("x".repeat(MAX_BODY_BYTES + 1), "too_large"),
        ];
        for (body, reason) in cases {
            let got = parse(&body);
            assert_eq!(
                got.as_ref().map_err(ParseError::reason).err(),
                Some(reason),
                "{:.80}: {got:?}",
                body
            );
        }
    }

    #[test]
    fn sequencers_compare_as_right_padded_hex() {
        assert_eq!(compare_sequencers("0A", "0B"), Ordering::Less);
        assert_eq!(compare_sequencers("0a", "0A"), Ordering::Equal);
        assert_eq!(
            compare_sequencers("0055AED6DC", "0055AED6DC00"),
            Ordering::Equal
        );
        assert_eq!(
            compare_sequencers("0055AED6DD", "0055AED6DC99"),
            Ordering::Greater
        );
        assert_eq!(compare_sequencers("1", "0FFF"), Ordering::Greater);
    }
}
