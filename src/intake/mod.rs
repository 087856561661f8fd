//! Intake: case files from a practice, validated into `CaseData`.
//!
//! A file is read as a stream (CSV) or whole (JSON), every record is
//! checked, and the valid ones are stored a batch per transaction; invalid ones are reported with where they
//! are (line), which field and why. Nothing half-valid gets in, and no
//! record, however malformed, stops the others: a case appearing twice in a
//! file is an error on the later record, and a record that makes a check
//! panic is reported as a bug in that record alone.

mod csv_rows;
mod stream;
mod text;
mod validate;

use std::collections::hash_map::{Entry, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use csv_rows::COLUMNS as CSV_COLUMNS;
use text::LineIndex;
pub use validate::{validate, FieldError, RawCase};

use crate::config::Settings;
use crate::store::{Actor, ImportOutcome, Ledger, StoreError};

/// A file-level problem: nothing in it was imported.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The cause is the error's `source`, which `{:#}` prints after this.
    #[error("{}: cannot read", path.display())]
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
    /// The practice's case ID, when the record had a valid one.
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
    /// File-level notes that refused nothing (a CSV's ignored columns).
    pub warnings: Vec<String>,
    /// Cases of this file that say nothing of whether a pre-cert is
    /// required (created, updated or unchanged): the requirement rules
    /// decide those still `new` (`requirements::decide_cases`).
    pub undecided: Vec<i64>,
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
    /// The record's practice and case ID as written, even when the record
    /// could not be read whole: they name it in messages and find repeats.
    pub practice_id: Option<String>,
    pub case_id: Option<String>,
    /// None when the record could not be read at all.
    pub raw: Option<RawCase>,
    /// Problems found while reading, before validation.
    pub errors: Vec<FieldError>,
    /// CSV names fields by column, JSON by path.
    pub csv: bool,
    /// The line the record's attachments are written on, when it is not
    /// the record's first (a CSV row with a quoted line break before its
    /// attachments cell, a JSON object over many lines): their errors name
    /// it.
    pub attachments_line: Option<u64>,
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

/// Records validated and stored per transaction.
const BATCH: usize = 500;

/// Imports a CSV or JSON file of cases. `progress` is called after each
/// batch with (done, total); for CSV the total is the file's line count
/// less the header, an estimate (a quoted value may span lines).
///
/// A CSV file is read twice as a stream — once to check that it is UTF-8
/// text (a file that is not is refused whole, before anything is stored),
/// once for its records — so memory does not grow with its size, but for
/// the (practice, case ID) of each record, kept to refuse a repeat. A JSON
/// file is read whole. Either way records are validated and stored
/// `BATCH` at a time, one transaction each.
pub async fn import_file(
    path: &Path,
    format: Format,
    ctx: &Context<'_>,
    ledger: &Ledger,
    actor: &Actor,
    mut progress: impl FnMut(usize, usize),
) -> Result<ImportReport, IntakeError> {
    let format_error = |message: String| IntakeError::Format {
        path: path.to_owned(),
        message,
    };
    let read_error = |source: std::io::Error| IntakeError::Read {
        path: path.to_owned(),
        source,
    };
    let mut importer = Importer {
        ctx,
        ledger,
        actor,
        report: ImportReport::default(),
        first_line: HashMap::new(),
        batch: Vec::with_capacity(BATCH),
    };
    match format {
        Format::Csv => {
            let checked = stream::check_utf8(path).map_err(read_error)?.map_err(format_error)?;
            let total = checked.lines.saturating_sub(1) as usize;
            // The practice named for the file says how its systems write CSV.
            let dialect = ctx
                .default_practice
                .and_then(|p| ctx.settings.practice(p))
                .map(|p| p.csv.clone())
                .unwrap_or_default();
            let (mut records, warning) =
                csv_rows::Records::open(path, checked.bom, ctx.default_practice.is_some(), &dialect)
                    .map_err(read_error)?
                    .map_err(format_error)?;
            importer.report.warnings.extend(warning);
            while let Some(record) = records.next_record().map_err(read_error)? {
                importer.report.records += 1;
                if importer.push(record) {
                    importer.flush().await?;
                    progress(importer.report.records, total.max(importer.report.records));
                }
            }
        }
        Format::Json => {
            let bytes = std::fs::read(path).map_err(read_error)?;
            let text = text::decode(&bytes).map_err(format_error)?;
            let lines = LineIndex::new(text);
            let records = read_json(text, &lines).map_err(format_error)?;
            let total = records.len();
            for record in records {
                importer.report.records += 1;
                if importer.push(record) {
                    importer.flush().await?;
                    progress(importer.report.records, total);
                }
            }
        }
    }
    importer.flush().await?;
    let done = importer.report.records;
    progress(done, done);
    Ok(importer.report)
}

/// The import loop's state: the report, the cases seen in the file, and
/// the valid records waiting for their transaction.
struct Importer<'a, 'c> {
    ctx: &'a Context<'c>,
    ledger: &'a Ledger,
    actor: &'a Actor,
    report: ImportReport,
    /// (practice, case ID) → the line of the first record of that case.
    first_line: HashMap<(String, String), u64>,
    /// (line, data, precert required) of valid records not yet stored.
    batch: Vec<(u64, crate::case::CaseData, Option<bool>)>,
}

impl Importer<'_, '_> {
    /// Checks one record: a problem goes in the report, a valid record in
    /// the batch. True when the batch is full.
    fn push(&mut self, record: SourceRecord) -> bool {
        let line = record.line;
        let case_ref = record
            .case_id
            .as_deref()
            .and_then(|c| validate::check_case_id(c.trim()).ok());
        let practice = record
            .practice_id
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .or(self.ctx.default_practice);
        let repeats = match (practice, &case_ref) {
            (Some(practice), Some(case_ref)) => match self.first_line.entry((practice.to_owned(), case_ref.clone())) {
                Entry::Occupied(first) => Some(*first.get()),
                Entry::Vacant(slot) => {
                    slot.insert(line);
                    None
                }
            },
            _ => None,
        };
        let validated = match (repeats, record.raw) {
            // The first record of a case is the one imported; a later one
            // would silently replace its data, so it is refused unread.
            (Some(first), _) => Err(vec![FieldError::new(
                "case_id",
                format!("repeats the case at line {first} (same practice and case ID); this record was not imported"),
            )]),
            (None, None) => Err(record.errors),
            (None, Some(raw)) => checked(raw, record.errors, self.ctx),
        };
        match validated {
            Err(mut errors) => {
                if let Some(at) = record.attachments_line.filter(|&at| at != line) {
                    for e in errors.iter_mut().filter(|e| e.field.starts_with("attachments")) {
                        e.reason = format!("(line {at}) {}", e.reason);
                    }
                }
                if record.csv {
                    errors.iter_mut().for_each(FieldError::to_csv_column);
                }
                self.report.invalid.push(RecordProblem { line, case_ref, errors });
            }
            Ok((data, required)) => {
                tracing::debug!(line, ?data, "Record validated.");
                self.batch.push((line, data, required));
            }
        }
        self.batch.len() >= BATCH
    }

    /// Stores the batch in one transaction and counts what it did.
    async fn flush(&mut self) -> Result<(), IntakeError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let (lines, cases): (Vec<u64>, Vec<_>) = batch.into_iter().map(|(l, d, r)| (l, (d, r))).unzip();
        let outcomes = self.ledger.import_cases(&cases, self.actor).await?;
        // Problems are listed in file order: a refused case among the
        // others of its batch.
        let mut refused = Vec::new();
        for ((line, (data, required)), outcome) in lines.into_iter().zip(&cases).zip(outcomes) {
            match outcome {
                ImportOutcome::Created { id } | ImportOutcome::Updated { id } | ImportOutcome::Unchanged { id }
                    if required.is_none() =>
                {
                    self.report.undecided.push(id)
                }
                _ => {}
            }
            match outcome {
                ImportOutcome::Created { id } => {
                    tracing::info!(case_id = id, practice = %data.practice_id, case_ref = %data.case_ref, member = %data.patient.member_id, "Case imported.");
                    self.report.created += 1;
                }
                ImportOutcome::Updated { id } => {
                    tracing::info!(case_id = id, practice = %data.practice_id, case_ref = %data.case_ref, "Case updated by re-import.");
                    self.report.updated += 1;
                }
                ImportOutcome::Unchanged { .. } => self.report.unchanged += 1,
                ImportOutcome::Refused { id, status } => refused.push(RecordProblem {
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
        if !refused.is_empty() {
            self.report.invalid.extend(refused);
            self.report.invalid.sort_by_key(|p| p.line);
        }
        Ok(())
    }
}

/// `validate`, with a panic in it turned into an error on this record: the
/// checks are written not to panic, and if one still does, that is a bug to
/// report, not a reason to drop every record after this one. Validation
/// holds no state across records (it copies attachments last, atomically),
/// so nothing is left half-done.
fn checked(
    raw: RawCase,
    read_errors: Vec<FieldError>,
    ctx: &Context<'_>,
) -> Result<(crate::case::CaseData, Option<bool>), Vec<FieldError>> {
    catch_unwind(AssertUnwindSafe(|| validate(raw, read_errors, ctx))).unwrap_or_else(|_| {
        Err(vec![FieldError::new(
            "record",
            "precert failed while checking this record (a bug: please report it with the message above); it was not imported",
        )])
    })
}

/// Reads a JSON array of cases, keeping each element's line so errors can
/// point at it. One bad element does not spoil the others.
fn read_json(text: &str, lines: &LineIndex) -> Result<Vec<SourceRecord>, String> {
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
            Err(_) => {
                let (message, offset) = text::json_error(&e, text, 0);
                let at = offset
                    .map(|o| format!(" ({})", lines.describe(text, o)))
                    .unwrap_or_default();
                return Err(text::tidy_reason(&format!(
                    "not a JSON array of cases (or {{\"cases\": [...]}}): {message}{at}"
                )));
            }
        },
    };
    let start = text.as_ptr() as usize;
    Ok(items
        .into_iter()
        .map(|item| {
            // Items come in file order; each line is a binary search in the
            // index made once, so the whole file is read a constant number of
            // times however many records it has.
            let offset = item.get().as_ptr() as usize - start;
            let line = lines.line(offset);
            let mut de = serde_json::Deserializer::from_str(item.get());
            match serde_path_to_error::deserialize::<_, RawCase>(&mut de) {
                Ok(raw) => SourceRecord {
                    line,
                    practice_id: raw.practice_id.clone(),
                    case_id: raw.case_id.clone(),
                    raw: Some(raw),
                    errors: Vec::new(),
                    csv: false,
                    attachments_line: json_key_offset(item.get(), "attachments").map(|o| lines.line(offset + o)),
                },
                Err(e) => {
                    let field = json_field(&e);
                    let (message, at) = text::json_error(e.inner(), text, offset);
                    let reason = match at {
                        Some(at) => format!("{message} ({})", lines.describe(text, at)),
                        None => message,
                    };
                    // Name the record in the message when its IDs can be read.
                    #[derive(Default, Deserialize)]
                    struct Ids {
                        practice_id: Option<String>,
                        case_id: Option<String>,
                    }
                    let ids: Ids = serde_json::from_str(item.get()).unwrap_or_default();
                    SourceRecord {
                        line,
                        practice_id: ids.practice_id,
                        case_id: ids.case_id,
                        raw: None,
                        errors: vec![FieldError::new(field, reason)],
                        csv: false,
                        attachments_line: None,
                    }
                }
            }
        })
        .collect())
}

/// Where key `key` of a JSON object's text is written: its first
/// occurrence as `"key"` followed by `:`. Only used to point a message at a
/// line, so a look-alike inside a string value costs at most a wrong line.
fn json_key_offset(object: &str, key: &str) -> Option<usize> {
    let quoted = format!("\"{key}\"");
    let mut from = 0;
    while let Some(i) = object[from..].find(&quoted) {
        let at = from + i;
        let rest = object[at + quoted.len()..].trim_start();
        if rest.starts_with(':') && !object[..at].ends_with('\\') {
            return Some(at);
        }
        from = at + quoted.len();
    }
    None
}

/// The field a JSON record's error is about: serde's path to it
/// (`service_lines[0].units`), and for an unknown field its name too.
fn json_field(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let message = e.inner().to_string();
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split_once('`'))
        .map(|(name, _)| name);
    match (path.as_str(), unknown) {
        (".", Some(name)) => name.to_owned(),
        (".", None) => "record".to_owned(),
        (p, Some(name)) if !p.ends_with(name) => format!("{p}.{name}"),
        (p, _) => p.to_owned(),
    }
}
