//! Parquet inventory data files, read with the `parquet` crate's row API (no arrow: a fraction
//! of the compile time). AWS names the columns in snake case (`key`, `size`,
//! `last_modified_date`, `e_tag`, `is_latest`, `is_delete_marker`), writes keys as they are
//! (not URL-encoded, unlike CSV) and dates as `TIMESTAMP(MILLIS)`. Only the columns read are
//! decoded (a projection).

use super::{Column, Row};
use chrono::{DateTime, Utc};
use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use std::sync::Arc;

/// Every row of one data file, handed to `each`.
pub fn read<R: ChunkReader + 'static>(
    input: R,
    mut each: impl FnMut(Row) -> Result<(), super::csv::ReadError>,
) -> Result<(), super::csv::ReadError> {
    use super::csv::ReadError;
    let broken = |e: parquet::errors::ParquetError| ReadError::Line(0, e.to_string());
    let reader = SerializedFileReader::new(input).map_err(broken)?;
    let root = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema();
    let wanted: Vec<Arc<Type>> = root
        .get_fields()
        .iter()
        .filter(|field| Column::named(field.name()).is_some())
        .cloned()
        .collect();
    for (needed, name) in [
        (Column::Key, "key"),
        (Column::LastModifiedDate, "last_modified_date"),
    ] {
        if !wanted
            .iter()
            .any(|f| Column::named(f.name()) == Some(needed))
        {
            return Err(ReadError::Line(
                0,
                format!("the file's schema has no {name} column"),
            ));
        }
    }
    let projection = Type::group_type_builder(root.name())
        .with_fields(wanted)
        .build()
        .map_err(broken)?;
    let rows = reader.get_row_iter(Some(projection)).map_err(broken)?;
    for (number, row) in (1..).zip(rows) {
        let row = row.map_err(|e| ReadError::Line(number, e.to_string()))?;
        let mut out = Row::default();
        for (name, field) in row.get_column_iter() {
            let Some(column) = Column::named(name) else {
                continue;
            };
            set(&mut out, column, field).map_err(|e| ReadError::Line(number, e))?;
        }
        if out.key.is_empty() {
            return Err(ReadError::Line(number, "a row has an empty key".into()));
        }
        each(out)?;
    }
    Ok(())
}

fn set(row: &mut Row, column: Column, field: &Field) -> Result<(), String> {
    if matches!(field, Field::Null) {
        return Ok(());
    }
    let unexpected = || format!("column {column:?} holds {field:?}");
    match column {
        Column::Key => match field {
            Field::Str(key) => row.key = key.clone(),
            _ => return Err(unexpected()),
        },
        Column::ETag => match field {
            Field::Str(etag) => row.etag = Some(etag.clone()),
            _ => return Err(unexpected()),
        },
        Column::Size => match field {
            Field::Long(n) => row.size = Some(*n),
            Field::Int(n) => row.size = Some(i64::from(*n)),
            _ => return Err(unexpected()),
        },
        Column::LastModifiedDate => {
            let date = match field {
                Field::TimestampMillis(ms) | Field::Long(ms) => {
                    DateTime::from_timestamp_millis(*ms)
                }
                Field::TimestampMicros(us) => DateTime::from_timestamp_micros(*us),
                _ => return Err(unexpected()),
            };
            row.last_modified = Some(date.ok_or_else(unexpected)?.with_timezone(&Utc));
        }
        Column::IsLatest | Column::IsDeleteMarker => {
            let Field::Bool(flag) = field else {
                return Err(unexpected());
            };
            if column == Column::IsLatest {
                row.is_latest = Some(*flag);
            } else {
                row.is_delete_marker = Some(*flag);
            }
        }
    }
    Ok(())
}
