//! Reports: `table` for people, `json` (one object) and `jsonl` (one finding a line, then the
//! summary) for programs. All three stream: the sweep hands findings over one at a time (a chunk
//! executed at a time), after the scan is complete, so no format holds the findings in memory.

use crate::error::{Error, Result};
use crate::model::{Finding, FindingKind, Outcome};
use crate::redact;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::io::Write;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Jsonl,
}

/// How many of each kind a sweep found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts([u64; FindingKind::COUNT]);

impl Counts {
    pub fn add(&mut self, kind: FindingKind) {
        self.0[kind as usize] += 1;
    }

    pub fn get(&self, kind: FindingKind) -> u64 {
        self.0[kind as usize]
    }

    /// Everything but `in_grace`: what `--fail-on-drift` looks at.
    pub fn drift(&self) -> u64 {
        FindingKind::ALL
            .into_iter()
            .filter(|k| *k != FindingKind::InGrace)
            .map(|k| self.get(k))
            .sum()
    }
}

impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(FindingKind::ALL.len()))?;
        for kind in FindingKind::ALL {
            map.serialize_entry(kind.as_str(), &self.get(kind))?;
        }
        map.end()
    }
}

impl Header {
    /// The JSON report's `bucket`: an S3 bucket's name (the contract's `"uploads"`), a folder
    /// as configured (`file:///srv/uploads`), so that it says what kind of place it is.
    pub fn shown_bucket(&self) -> &str {
        if self.location.starts_with("file://") {
            &self.location
        } else {
            &self.bucket
        }
    }
}

/// What a sweep knows once its scan is done: everything but the outcomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub sweep_id: Uuid,
    pub dry_run: bool,
    pub bucket: String,
    /// Where the bucket is, as people write it (`s3://uploads`, `file:///srv/uploads`): the
    /// table's first line. The JSON report keeps the contract's `bucket` name.
    pub location: String,
    pub prefix: String,
    pub started_at: DateTime<Utc>,
    /// When the S3 Inventory the objects came from was taken; `None` for a live listing.
    pub inventory: Option<DateTime<Utc>>,
    pub objects_listed: u64,
    pub records_scanned: u64,
    pub counts: Counts,
}

/// How each finding was dealt with, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    pub applied: u64,
    pub dry_run: u64,
    pub reported: u64,
    pub skipped: u64,
    pub failed: u64,
}

impl Tally {
    pub fn add(&mut self, outcome: &Outcome) {
        let slot = match outcome {
            Outcome::Applied => &mut self.applied,
            Outcome::DryRun => &mut self.dry_run,
            Outcome::Reported => &mut self.reported,
            Outcome::Skipped(_) => &mut self.skipped,
            Outcome::Failed(_) => &mut self.failed,
        };
        *slot += 1;
    }
}

/// The end of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Footer {
    pub finished_at: DateTime<Utc>,
    pub actions: Tally,
    /// Set when the breaker stopped the sweep before its first write.
    pub safety_stop: Option<String>,
}

/// One finding as reports show it.
#[derive(Debug, Serialize)]
struct Line<'a> {
    kind: &'static str,
    id: &'a str,
    key: &'a str,
    action: &'static str,
    applied: bool,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    detail: String,
}

impl<'a> Line<'a> {
    fn new(finding: &'a Finding, outcome: &'a Outcome) -> Self {
        Line {
            kind: finding.kind.as_str(),
            id: &finding.id,
            key: &finding.key,
            action: finding.action.as_str(),
            applied: *outcome == Outcome::Applied,
            result: outcome.as_str(),
            // Why an action failed is often a client library's error text, URLs and all.
            reason: match outcome {
                Outcome::Skipped(reason) | Outcome::Failed(reason) => Some(redact::text(reason)),
                _ => None,
            },
            detail: redact::text(&finding.detail),
        }
    }
}

/// Where a sweep's report goes.
pub trait Sink: Send {
    fn begin(&mut self, header: &Header) -> Result<()>;
    fn finding(&mut self, finding: &Finding, outcome: &Outcome) -> Result<()>;
    fn finish(&mut self, footer: &Footer) -> Result<()>;
}

pub fn sink<'w>(format: Format, out: Box<dyn Write + Send + 'w>) -> Box<dyn Sink + 'w> {
    match format {
        Format::Table => Box::new(Table { out, rows: 0 }),
        Format::Json => Box::new(Json { out, rows: 0 }),
        Format::Jsonl => Box::new(Jsonl { out, header: None }),
    }
}

fn write_err(e: std::io::Error) -> Error {
    Error::io("writing the report", e)
}

fn json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::io("writing the report", e.into()))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The summary fields, in the contract's order, without the braces around them.
fn header_fields(h: &Header) -> Result<String> {
    // Only a sweep from an inventory says so: a live listing's report is as it always was.
    let inventory = match h.inventory {
        Some(date) => format!("\"inventory\":{},", json(&time(date))?),
        None => String::new(),
    };
    Ok(format!(
        "\"sweep_id\":{},\"dry_run\":{},\"bucket\":{},\"prefix\":{},\"started_at\":{},\
         {inventory}\"objects_listed\":{},\"records_scanned\":{},\"counts\":{}",
        json(&h.sweep_id)?,
        h.dry_run,
        json(h.shown_bucket())?,
        json(&h.prefix)?,
        json(&time(h.started_at))?,
        h.objects_listed,
        h.records_scanned,
        json(&h.counts)?,
    ))
}

fn footer_fields(f: &Footer) -> Result<String> {
    Ok(format!(
        "\"finished_at\":{},\"actions\":{},\"safety_stop\":{}",
        json(&time(f.finished_at))?,
        json(&f.actions)?,
        json(&f.safety_stop)?,
    ))
}

/// `--format json`: one object; the findings array is written as it comes.
struct Json<'w> {
    out: Box<dyn Write + Send + 'w>,
    rows: u64,
}

impl Sink for Json<'_> {
    fn begin(&mut self, header: &Header) -> Result<()> {
        write!(self.out, "{{{},\"findings\":[", header_fields(header)?).map_err(write_err)
    }

    fn finding(&mut self, finding: &Finding, outcome: &Outcome) -> Result<()> {
        let sep = if self.rows == 0 { "\n" } else { ",\n" };
        self.rows += 1;
        write!(self.out, "{sep}{}", json(&Line::new(finding, outcome))?).map_err(write_err)
    }

    fn finish(&mut self, footer: &Footer) -> Result<()> {
        writeln!(self.out, "\n],{}}}", footer_fields(footer)?).map_err(write_err)?;
        self.out.flush().map_err(write_err)
    }
}

/// `--format jsonl`: one finding a line, then the summary object as the last line.
struct Jsonl<'w> {
    out: Box<dyn Write + Send + 'w>,
    header: Option<String>,
}

impl Sink for Jsonl<'_> {
    fn begin(&mut self, header: &Header) -> Result<()> {
        self.header = Some(header_fields(header)?);
        Ok(())
    }

    fn finding(&mut self, finding: &Finding, outcome: &Outcome) -> Result<()> {
        writeln!(self.out, "{}", json(&Line::new(finding, outcome))?).map_err(write_err)
    }

    fn finish(&mut self, footer: &Footer) -> Result<()> {
        let header = self.header.take().unwrap_or_default();
        writeln!(self.out, "{{{header},{}}}", footer_fields(footer)?).map_err(write_err)?;
        self.out.flush().map_err(write_err)
    }
}

/// `--format table`: counts first, then a row per finding.
struct Table<'w> {
    out: Box<dyn Write + Send + 'w>,
    rows: u64,
}

impl Sink for Table<'_> {
    fn begin(&mut self, h: &Header) -> Result<()> {
        let mode = if h.dry_run { "Dry run" } else { "Sweep" };
        let source = match h.inventory {
            Some(date) => format!(" (from the S3 Inventory of {})", time(date)),
            None => String::new(),
        };
        let mut text = format!(
            "{mode} of {} (prefix {:?}) at {}\n{} objects listed{source}, {} records scanned\n\n",
            h.location,
            h.prefix,
            time(h.started_at),
            h.objects_listed,
            h.records_scanned
        );
        for kind in FindingKind::ALL {
            text.push_str(&format!(
                "  {:<22}{:>8}\n",
                kind.as_str(),
                h.counts.get(kind)
            ));
        }
        write!(self.out, "{text}").map_err(write_err)
    }

    fn finding(&mut self, finding: &Finding, outcome: &Outcome) -> Result<()> {
        if self.rows == 0 {
            writeln!(
                self.out,
                "\n{:<20} {:<13} {:<9} {:<30} DETAIL",
                "KIND", "ACTION", "RESULT", "KEY"
            )
            .map_err(write_err)?;
        }
        self.rows += 1;
        let line = Line::new(finding, outcome);
        let mut detail = line.detail;
        if let Some(reason) = line.reason {
            detail.push_str(&format!(" [{reason}]"));
        }
        // Keys may hold control characters: never print them raw to a terminal.
        let key = line.key.escape_debug().to_string();
        writeln!(
            self.out,
            "{:<20} {:<13} {:<9} {:<30} {}",
            line.kind, line.action, line.result, key, detail
        )
        .map_err(write_err)
    }

    fn finish(&mut self, f: &Footer) -> Result<()> {
        let a = &f.actions;
        let mut text = format!(
            "\nFinished at {}: {} applied, {} dry run, {} reported only, {} skipped, {} failed\n",
            time(f.finished_at),
            a.applied,
            a.dry_run,
            a.reported,
            a.skipped,
            a.failed
        );
        if let Some(stop) = &f.safety_stop {
            text.push_str(&format!("{stop}\n"));
        }
        write!(self.out, "{text}").map_err(write_err)?;
        self.out.flush().map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Action;

    fn header() -> Header {
        let mut counts = Counts::default();
        counts.add(FindingKind::StalePending);
        counts.add(FindingKind::InGrace);
        Header {
            sweep_id: Uuid::nil(),
            dry_run: true,
            bucket: "uploads".into(),
            location: "s3://uploads".into(),
            prefix: "".into(),
            started_at: DateTime::from_timestamp(1_795_000_000, 0).expect("valid time"),
            inventory: None,
            objects_listed: 4,
            records_scanned: 3,
            counts,
        }
    }

    fn finding() -> Finding {
        Finding {
            kind: FindingKind::StalePending,
            id: "ds98sdkl".into(),
            key: "ds98sdkl".into(),
            action: Action::Expire,
            detail: "pending 2h10m, no object".into(),
            record: None,
            object: None,
            upload: None,
        }
    }

    fn footer() -> Footer {
        let mut actions = Tally::default();
        actions.add(&Outcome::DryRun);
        Footer {
            finished_at: DateTime::from_timestamp(1_795_000_003, 0).expect("valid time"),
            actions,
            safety_stop: None,
        }
    }

    fn render(format: Format, findings: usize) -> String {
        let mut buf = Vec::new();
        {
            let mut s = sink(format, Box::new(&mut buf));
            s.begin(&header()).expect("write");
            for _ in 0..findings {
                s.finding(&finding(), &Outcome::DryRun).expect("write");
            }
            s.finish(&footer()).expect("write");
        }
        String::from_utf8(buf).expect("utf-8")
    }

    #[test]
    fn json_is_one_object_with_every_count_and_the_findings() {
        for findings in [0, 1, 3] {
            let text = render(Format::Json, findings);
            let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(v["dry_run"], true);
            assert_eq!(v["records_scanned"], 3);
            assert_eq!(
                v["counts"].as_object().map(|c| c.len()),
                Some(FindingKind::ALL.len())
            );
            assert_eq!(v["counts"]["stale_pending"], 1);
            assert_eq!(v["counts"]["missing_object"], 0);
            assert_eq!(v["findings"].as_array().map(Vec::len), Some(findings));
            let finished = v["finished_at"].as_str().expect("a string");
            let finished = DateTime::parse_from_rfc3339(finished).expect("RFC 3339");
            assert_eq!(finished, footer().finished_at);
            if findings > 0 {
                assert_eq!(v["findings"][0]["action"], "expire");
                assert_eq!(v["findings"][0]["applied"], false);
                assert_eq!(v["findings"][0]["result"], "dry_run");
            }
        }
    }

    #[test]
    fn jsonl_puts_the_summary_last() {
        let text = render(Format::Jsonl, 2);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["kind"], "stale_pending");
        assert_eq!(lines[2]["counts"]["in_grace"], 1);
        assert_eq!(lines[2]["actions"]["dry_run"], 1);
    }

    #[test]
    fn table_escapes_control_characters_in_keys() {
        let mut buf = Vec::new();
        {
            let mut s = sink(Format::Table, Box::new(&mut buf));
            s.begin(&header()).expect("write");
            let mut f = finding();
            f.key = "evil\u{1b}[2Jkey".into();
            s.finding(&f, &Outcome::DryRun).expect("write");
            s.finish(&footer()).expect("write");
        }
        let text = String::from_utf8(buf).expect("utf-8");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("stale_pending"));
    }
}
