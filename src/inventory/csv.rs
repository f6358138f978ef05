//! CSV inventory data files: gzip-compressed, no header line, the columns the manifest's
//! `fileSchema` names, every field in double quotes, keys URL-encoded (form encoding: `+` is a
//! space, a real `+` is `%2B`), dates like `2026-12-04T10:00:00.000Z`.
//!
//! Lines are read one at a time with a bound ([`MAX_LINE_BYTES`]): a file that is not what it
//! claims to be cannot make the reader hold it whole.

use super::{Column, Row};
use crate::model::decode_form;
use chrono::{DateTime, Utc};
use std::io::{BufRead, Read};

/// The longest line read: a key is at most 1024 bytes, three times that URL-encoded, and the
/// other columns (bucket, dates, ETag, storage class, ...) are short.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Where each column the reconciler reads sits in a line.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    columns: Vec<Option<Column>>,
}

impl Layout {
    /// From `fileSchema` (`"Bucket, Key, Size, LastModifiedDate, ETag"`); the key and the date
    /// are required.
    pub fn of(schema: &str) -> Result<Layout, String> {
        let columns: Vec<Option<Column>> =
            schema.split(',').map(|n| Column::named(n.trim())).collect();
        for (needed, name) in [
            (Column::Key, "Key"),
            (Column::LastModifiedDate, "LastModifiedDate"),
        ] {
            if !columns.contains(&Some(needed)) {
                return Err(format!(
                    "the inventory's fileSchema {schema:?} has no {name} column (add it to the \
                     inventory configuration's fields)"
                ));
            }
        }
        Ok(Layout { columns })
    }

    /// One line's row.
    pub fn row(&self, line: &str) -> Result<Row, String> {
        let fields = fields(line)?;
        if fields.len() != self.columns.len() {
            return Err(format!(
                "a line has {} fields where fileSchema names {}",
                fields.len(),
                self.columns.len()
            ));
        }
        let mut row = Row::default();
        for (column, field) in self.columns.iter().zip(fields) {
            let Some(column) = column else { continue };
            // An empty field is an absent value (a delete marker's size, a missing ETag).
            if field.is_empty() {
                continue;
            }
            match column {
                Column::Key => {
                    row.key = decode_form(&field)
                        .ok_or_else(|| format!("key {field:?} does not decode to UTF-8"))?;
                }
                Column::Size => {
                    row.size = Some(
                        field
                            .parse()
                            .map_err(|_| format!("size {field:?} is not a number"))?,
                    );
                }
                Column::LastModifiedDate => {
                    row.last_modified = Some(
                        DateTime::parse_from_rfc3339(&field)
                            .map_err(|_| format!("LastModifiedDate {field:?} is not a date"))?
                            .with_timezone(&Utc),
                    );
                }
                Column::ETag => row.etag = Some(field),
                Column::IsLatest => row.is_latest = Some(boolean(&field)?),
                Column::IsDeleteMarker => row.is_delete_marker = Some(boolean(&field)?),
            }
        }
        if row.key.is_empty() {
            return Err("a line has an empty Key".into());
        }
        Ok(row)
    }
}

fn boolean(field: &str) -> Result<bool, String> {
    match field {
        "true" | "TRUE" | "True" => Ok(true),
        "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{field:?} is not true or false")),
    }
}

/// The fields of one line: comma-separated, each bare or in double quotes (a quote inside
/// written twice).
pub fn fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field is not closed".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("{c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// Every row of one decompressed data file, handed to `each`; an error names the line.
pub fn read(
    input: impl Read,
    layout: &Layout,
    mut each: impl FnMut(Row) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let mut input = std::io::BufReader::new(input);
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let read = (&mut input)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| ReadError::Line(number, format!("cannot be read: {e}")))?;
        if read == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        } else if read > MAX_LINE_BYTES {
            return Err(ReadError::Line(
                number,
                format!("is longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        if line.is_empty() {
            continue;
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| ReadError::Line(number, "is not UTF-8".into()))?;
        let row = layout.row(text).map_err(|e| ReadError::Line(number, e))?;
        each(row)?;
    }
    Ok(())
}

#[derive(Debug)]
pub enum ReadError {
    /// Line `n`: what is wrong with it.
    Line(u64, String),
    /// What the rows were handed to failed (a spill file could not be written).
    Sink(crate::error::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = "Bucket, Key, Size, LastModifiedDate, ETag, IsLatest, IsDeleteMarker";

    fn rows(text: &str) -> Result<Vec<Row>, String> {
        let layout = Layout::of(SCHEMA)?;
        let mut rows = Vec::new();
        read(text.as_bytes(), &layout, |row| {
            rows.push(row);
            Ok(())
        })
        .map_err(|e| format!("{e:?}"))?;
        Ok(rows)
    }

    #[test]
    fn aws_lines_read_with_keys_decoded() {
        let text = "\"uploads\",\"docs/red+flower.jpg\",\"3\",\"2026-12-04T10:00:00.000Z\",\
                    \"d41d8cd98f00b204e9800998ecf8427e\",\"true\",\"false\"\n\
                    \"uploads\",\"docs/a%2Bb%C3%A9%01\",\"\",\"2026-12-04T10:00:00.000Z\",\"\",\
                    \"true\",\"true\"\r\n";
        let rows = rows(text).expect("read");
        assert_eq!(rows[0].key, "docs/red flower.jpg");
        assert_eq!(rows[0].size, Some(3));
        assert_eq!(rows[0].is_delete_marker, Some(false));
        assert_eq!(rows[1].key, "docs/a+bé\u{1}");
        assert_eq!(rows[1].size, None);
        assert_eq!(rows[1].etag, None);
        assert_eq!(rows[1].is_delete_marker, Some(true));
    }

    #[test]
    fn a_bad_line_is_an_error_naming_it() {
        for (text, what) in [
            ("\"b\",\"k\",\"3\"\n", "fields"),
            (
                "\"b\",\"k\",\"x\",\"2026-12-04T10:00:00Z\",\"e\",\"true\",\"false\"\n",
                "size",
            ),
            (
                "\"b\",\"k\",\"3\",\"yesterday\",\"e\",\"true\",\"false\"\n",
                "date",
            ),
            ("\"b\",\"k,\"3\"\n", "field"),
            (
                "\"b\",\"%FF\",\"3\",\"2026-12-04T10:00:00Z\",\"e\",\"true\",\"false\"\n",
                "UTF-8",
            ),
        ] {
            let err = rows(&format!("\n{text}")).expect_err(text);
            assert!(err.contains("Line(2"), "{err}");
            assert!(err.contains(what), "{what}: {err}");
        }
        let long = format!("\"b\",\"{}\"", "k".repeat(MAX_LINE_BYTES + 10));
        assert!(rows(&long).expect_err("too long").contains("longer"));
    }

    #[test]
    fn quoted_fields_may_hold_commas_and_quotes() {
        assert_eq!(
            fields(r#""a,b","say ""hi""",bare,"#).expect("fields"),
            ["a,b", "say \"hi\"", "bare", ""]
        );
    }

    #[test]
    fn a_schema_without_key_or_date_is_refused() {
        assert!(Layout::of("Bucket, Key, Size").is_err());
        assert!(Layout::of("Bucket, Size, LastModifiedDate").is_err());
    }
    proptest::proptest! {
        /// Any fields, quoted as AWS quotes them (every field, quotes doubled), read back as
        /// they were; and any line at all is read or refused, never a panic.
        #[test]
        fn quoted_fields_read_back_and_no_line_panics(
            values in proptest::collection::vec(".*", 1..8),
            line in ".*",
        ) {
            let quoted: Vec<String> =
                values.iter().map(|v| format!("\"{}\"", v.replace('"', "\"\""))).collect();
            proptest::prop_assert_eq!(fields(&quoted.join(",")), Ok(values));
            let _ = fields(&line);
            let _ = Layout::of(SCHEMA).map(|layout| layout.row(&line));
        }
    }
}
