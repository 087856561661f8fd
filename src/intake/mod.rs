//! Intake: case files from a practice, validated into `CaseData`.
//!
//! A file is read whole, every record is checked, and the valid ones are
//! stored one transaction each; invalid ones are reported with where they
//! are (line), which field and why. Nothing half-valid gets in.

mod csv_rows;
mod validate;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use validate::{validate, FieldError, RawCase};

use crate::config::Settings;
use crate::store::{Actor, ImportOutcome, Ledger, StoreError};

/// A file-level problem: nothing in it was imported.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One record that was not stored, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordProblem {
    /// Line in the file where the record starts.
    pub line: u64,
    /// The practice's case ID, when the record had one.
    pub case_ref: Option<String>,
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Default)]
pub struct ImportReport {
    pub records: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub invalid: Vec<RecordProblem>,
}

impl ImportReport {
    pub fn is_clean(&self) -> bool {
        self.invalid.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// A record as read from the file, before validation.
pub(crate) struct SourceRecord {
    pub line: u64,
    /// None when the record could not be read at all.
    pub raw: Option<RawCase>,
    /// Problems found while reading, before validation.
    pub errors: Vec<FieldError>,
    /// CSV names fields by column, JSON by path.
    pub csv: bool,
}

/// What validation needs besides the record itself.
pub struct Context<'a> {
    pub settings: &'a Settings,
    /// Used for records that name no practice.
    pub default_practice: Option<&'a str>,
    /// Relative attachment paths are resolved against it (the file's folder).
    pub base_dir: &'a Path,
    pub today: chrono::NaiveDate,
}

/// Imports a CSV or JSON file of cases. `progress` is called after each
/// record with (done, total).
pub async fn import_file(
    path: &Path,
    format: Format,
    ctx: &Context<'_>,
    ledger: &Ledger,
    actor: &Actor,
    mut progress: impl FnMut(usize, usize),
) -> Result<ImportReport, IntakeError> {
    let text = std::fs::read_to_string(path).map_err(|source| IntakeError::Read {
        path: path.to_owned(),
        source,
    })?;
    let records = match format {
        Format::Csv => csv_rows::read(&text, ctx.default_practice.is_some()),
        Format::Json => read_json(&text),
    }
    .map_err(|message| IntakeError::Format {
        path: path.to_owned(),
        message,
    })?;
    let mut report = ImportReport {
        records: records.len(),
        ..ImportReport::default()
    };
    let total = records.len();
    for (i, record) in records.into_iter().enumerate() {
        let line = record.line;
        let (case_ref, validated) = match record.raw {
            None => (None, Err(record.errors)),
            Some(raw) => (raw.case_id.clone(), validate(raw, record.errors, ctx)),
        };
        match validated {
            Err(mut errors) => {
                if record.csv {
                    errors.iter_mut().for_each(FieldError::to_csv_column);
                }
                report.invalid.push(RecordProblem { line, case_ref, errors });
            }
            Ok((data, required)) => {
                tracing::debug!(line, ?data, "Record validated.");
                let outcome = ledger.import_case(&data, required, actor).await?;
                match outcome {
                ImportOutcome::Created { id } => {
                    tracing::info!(case_id = id, practice = %data.practice_id, case_ref = %data.case_ref, member = %data.patient.member_id, "Case imported.");
                    report.created += 1;
                }
                ImportOutcome::Updated { id } => {
                    tracing::info!(case_id = id, practice = %data.practice_id, case_ref = %data.case_ref, "Case updated by re-import.");
                    report.updated += 1;
                }
                ImportOutcome::Unchanged { .. } => report.unchanged += 1,
                ImportOutcome::Refused { id, status } => report.invalid.push(RecordProblem {
                    line,
                    case_ref: Some(data.case_ref.clone()),
                    errors: vec![FieldError::new(
                        "case_id",
                        format!(
                            "case {id} ({}/{}) is already {status} with the payer; its data differs from this file but can no longer change by import",
                            data.practice_id, data.case_ref
                        ),
                    )],
                }),
            }
            }
        }
        progress(i + 1, total);
    }
    Ok(report)
}

/// Reads a JSON array of cases, keeping each element's line so errors can
/// point at it. One bad element does not spoil the others.
fn read_json(text: &str) -> Result<Vec<SourceRecord>, String> {
    #[derive(Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow)]
        cases: Vec<&'a serde_json::value::RawValue>,
    }
    // RawValue cannot sit inside an untagged enum, so try the two shapes in
    // turn and report the array's error, the usual shape.
    let items: Vec<&serde_json::value::RawValue> = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => match serde_json::from_str::<Wrapped<'_>>(text) {
            Ok(w) => w.cases,
            Err(_) => return Err(format!("not a JSON array of cases (or {{\"cases\": [...]}}): {e}")),
        },
    };
    let start = text.as_ptr() as usize;
    Ok(items
        .into_iter()
        .map(|item| {
            let offset = item.get().as_ptr() as usize - start;
            let line = 1 + text[..offset].bytes().filter(|b| *b == b'\n').count() as u64;
            match serde_json::from_str::<RawCase>(item.get()) {
                Ok(raw) => SourceRecord {
                    line,
                    raw: Some(raw),
                    errors: Vec::new(),
                    csv: false,
                },
                Err(e) => {
                    // serde's line and column count from the element's start.
                    let field = unknown_or_typed_field(&e.to_string());
                    let error = FieldError::new(field, format!("{e} (within this case)"));
                    SourceRecord {
                        line,
                        raw: None,
                        errors: vec![error],
                        csv: false,
                    }
                }
            }
        })
        .collect())
}

/// serde's messages name the offending field in backticks; use it as the
/// field when there is one.
fn unknown_or_typed_field(message: &str) -> String {
    message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"))
        .unwrap_or("record")
        .to_owned()
}
