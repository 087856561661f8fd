//! Intake: case files from a practice, validated into `CaseData`.
//!
//! A file is read as a stream (CSV and JSON alike), every record is
//! checked, and the valid ones are stored a batch per transaction; invalid ones are reported with where they
//! are (line), which field and why. Nothing half-valid gets in, and no
//! record, however malformed, stops the others: a case appearing twice in a
//! file is an error on the later record, and a record that makes a check
//! panic is reported as a bug in that record alone.

mod csv_rows;
pub mod folder;
mod json_stream;
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
/// file likewise: once to check that it is UTF-8, once that it is JSON and
/// a list of cases (`json_stream::check`: a file that is not is refused
/// whole), once for its elements, one at a time. Either way records are
/// validated and stored `BATCH` at a time, one transaction each.
pub async fn import_file(
    path: &Path,
    format: Format,
    ctx: &Context<'_>,
    ledger: &Ledger,
    actor: &Actor,
    progress: impl FnMut(usize, usize),
) -> Result<ImportReport, IntakeError> {
    import_file_limited(path, format, ctx, &Limits::default(), ledger, actor, progress).await
}

/// [`import_file`] under a source's [`Limits`] (the drop folder's).
pub async fn import_file_limited(
    path: &Path,
    format: Format,
    ctx: &Context<'_>,
    limits: &Limits<'_>,
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
    let mut importer = Importer::new(ctx, limits, ledger, actor, false);
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
                if importer.push(record) {
                    importer.flush().await?;
                    progress(importer.report.records, total.max(importer.report.records));
                }
            }
        }
        Format::Json => {
            let checked = stream::check_utf8(path).map_err(read_error)?.map_err(format_error)?;
            let total = json_stream::check(path, checked.bom)
                .map_err(read_error)?
                .map_err(format_error)?;
            let mut elements = json_stream::Elements::open(path, checked.bom).map_err(read_error)?;
            while let Some(element) = elements.next_element().map_err(read_error)? {
                if importer.push(streamed_json_record(&element)) {
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
    limits: &'a Limits<'c>,
    ledger: &'a Ledger,
    actor: &'a Actor,
    report: ImportReport,
    /// (practice, case ID) → the line of the first record of that case.
    first_line: HashMap<(String, String), u64>,
    /// (index, line, data, precert required) of valid records not yet stored.
    batch: Vec<Valid>,
    /// What happened to each record, in order, when the caller wants it
    /// (the API answers per case; a file's report lists only problems).
    each: Option<Vec<Option<RecordResult>>>,
    /// The ledger's planner statistics, kept up with the cases this import
    /// creates (PostgreSQL: `Ledger::keep_planner_stats`).
    stats: crate::store::BulkStats,
}

/// A valid record waiting for its transaction: (index, line, data,
/// precert required).
type Valid = (usize, u64, crate::case::CaseData, Option<bool>);

/// What a source allows besides what `validate` checks.
#[derive(Clone, Debug, Default)]
pub struct Limits<'a> {
    /// Only cases of this practice (a token's, a folder's): a record naming
    /// another is refused.
    pub practice: Option<&'a str>,
    pub attachments: AttachmentRule,
}

/// Which attachment paths a source may name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachmentRule {
    /// Any readable path (a file given on the command line by its operator).
    #[default]
    Any,
    /// Paths relative to the file's folder that stay inside it (the drop
    /// folder: a practice system must not make precert copy other files).
    Inside,
    /// None at all (the API has no files to name).
    Refused,
}

/// One record's fate, for a caller that answers per record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordResult {
    /// The record's position in the source (0-based).
    pub index: usize,
    pub line: u64,
    pub practice_id: Option<String>,
    pub case_ref: Option<String>,
    pub outcome: RecordOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordOutcome {
    Created { id: i64 },
    Updated { id: i64 },
    Unchanged { id: i64 },
    Invalid { errors: Vec<FieldError> },
}

impl<'a, 'c> Importer<'a, 'c> {
    fn new(ctx: &'a Context<'c>, limits: &'a Limits<'c>, ledger: &'a Ledger, actor: &'a Actor, each: bool) -> Self {
        Importer {
            ctx,
            limits,
            ledger,
            actor,
            report: ImportReport::default(),
            first_line: HashMap::new(),
            batch: Vec::with_capacity(BATCH),
            each: each.then(Vec::new),
            stats: Default::default(),
        }
    }

    /// Records one record's fate when the caller keeps them.
    fn record(&mut self, (index, line): (usize, u64), ids: (Option<String>, Option<String>), outcome: RecordOutcome) {
        let (practice_id, case_ref) = ids;
        if let Some(each) = &mut self.each {
            if each.len() <= index {
                each.resize(index + 1, None);
            }
            each[index] = Some(RecordResult {
                index,
                line,
                practice_id,
                case_ref,
                outcome,
            });
        }
    }

    /// The source's limits on a record that could be read.
    fn limit_errors(&self, record: &SourceRecord) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let Some(raw) = &record.raw else { return errors };
        if let (Some(only), Some(named)) = (self.limits.practice, record.practice_id.as_deref().map(str::trim)) {
            if !named.is_empty() && named != only {
                errors.push(FieldError::new(
                    "practice_id",
                    format!(
                        "{} is not this source's practice: only cases of practice {only} are taken here",
                        crate::case::codes::quoted(named)
                    ),
                ));
            }
        }
        for (i, a) in raw.attachments.iter().enumerate() {
            let field = format!("attachments[{i}]");
            match self.limits.attachments {
                AttachmentRule::Any => {}
                AttachmentRule::Refused => errors.push(FieldError::new(
                    field,
                    "attachments are not taken through the API; send the case without them (or through the drop folder)",
                )),
                AttachmentRule::Inside => {
                    let path = Path::new(a.trim());
                    let inside = path.is_relative()
                        && path
                            .components()
                            .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
                    if !inside {
                        errors.push(FieldError::new(
                            field,
                            format!(
                                "{} is not a path inside the drop folder (relative, without `..`)",
                                crate::case::codes::quoted(a)
                            ),
                        ));
                    }
                }
            }
        }
        errors
    }

    /// Checks one record: a problem goes in the report, a valid record in
    /// the batch. True when the batch is full.
    fn push(&mut self, mut record: SourceRecord) -> bool {
        let index = self.report.records;
        self.report.records += 1;
        let line = record.line;
        let limited = self.limit_errors(&record);
        record.errors.extend(limited);
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
                if self.each.is_some() {
                    let practice = practice.map(str::to_owned);
                    let outcome = RecordOutcome::Invalid { errors: errors.clone() };
                    self.record((index, line), (practice, case_ref.clone()), outcome);
                }
                self.report.invalid.push(RecordProblem { line, case_ref, errors });
            }
            Ok((data, required)) => {
                tracing::debug!(line, ?data, "Record validated.");
                self.batch.push((index, line, data, required));
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
        let (places, cases): (Vec<(usize, u64)>, Vec<_>) =
            batch.into_iter().map(|(i, l, d, r)| ((i, l), (d, r))).unzip();
        let outcomes = self.ledger.import_cases(&cases, self.actor).await?;
        // Problems are listed in file order: a refused case among the
        // others of its batch.
        let mut refused = Vec::new();
        for ((at, (data, required)), outcome) in places.into_iter().zip(&cases).zip(outcomes) {
            let line = at.1;
            let ids = (Some(data.practice_id.clone()), Some(data.case_ref.clone()));
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
                    self.record(at, ids.clone(), RecordOutcome::Created { id });
                }
                ImportOutcome::Updated { id } => {
                    tracing::info!(case_id = id, practice = %data.practice_id, case_ref = %data.case_ref, "Case updated by re-import.");
                    self.report.updated += 1;
                    self.record(at, ids.clone(), RecordOutcome::Updated { id });
                }
                ImportOutcome::Unchanged { id } => {
                    self.report.unchanged += 1;
                    self.record(at, ids.clone(), RecordOutcome::Unchanged { id });
                }
                ImportOutcome::Refused { id, status } => {
                    let errors = vec![FieldError::new(
                        "case_id",
                        format!(
                            "case {id} ({}/{}) is already {status} with the payer; its data differs from this file but can no longer change by import",
                            data.practice_id, data.case_ref
                        ),
                    )];
                    self.record(at, ids.clone(), RecordOutcome::Invalid { errors: errors.clone() });
                    refused.push(RecordProblem {
                        line,
                        case_ref: Some(data.case_ref.clone()),
                        errors,
                    });
                }
            }
        }
        if !refused.is_empty() {
            self.report.invalid.extend(refused);
            self.report.invalid.sort_by_key(|p| p.line);
        }
        self.ledger
            .keep_planner_stats(&mut self.stats, self.report.created as u64)
            .await;
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

/// A JSON request body that is not a case, an array of cases or
/// `{"cases": [...]}`: nothing in it was stored.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Not UTF-8, or not JSON: the message says where (line, column).
    #[error("{0}")]
    Malformed(String),
    /// JSON, but not a case or a list of cases.
    #[error("{0}")]
    Shape(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<IntakeError> for BodyError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::Store(e) => BodyError::Store(e),
            other => BodyError::Malformed(other.to_string()),
        }
    }
}

/// What a request body's import did, case by case.
#[derive(Debug)]
pub struct BodyImport {
    pub report: ImportReport,
    /// One per case in the body, in order.
    pub results: Vec<RecordResult>,
    /// The body was one case object, not a list.
    pub single: bool,
}

/// Imports the cases of a JSON request body (the intake API): one case
/// object, an array of them, or `{"cases": [...]}`, checked and stored
/// exactly as a JSON file is ([`import_file`]: the same reading, the same
/// `validate`, valid cases stored in batches even when others are not),
/// with each case's fate returned by its position in the body.
pub async fn import_json_body(
    bytes: &[u8],
    ctx: &Context<'_>,
    limits: &Limits<'_>,
    ledger: &Ledger,
    actor: &Actor,
) -> Result<BodyImport, BodyError> {
    let text = text::decode(bytes).map_err(|m| BodyError::Malformed(format!("the body {m}")))?;
    let lines = LineIndex::new(text);
    let top: &serde_json::value::RawValue = serde_json::from_str(text).map_err(|e| {
        let (message, offset) = text::json_error(&e, text, 0);
        let at = offset
            .map(|o| format!(" ({})", lines.describe(text, o)))
            .unwrap_or_default();
        BodyError::Malformed(text::tidy_reason(&format!("the body is not JSON: {message}{at}")))
    })?;
    let single = top.get().trim_start().starts_with('{') && !has_cases_key(top.get());
    let records = if single {
        vec![json_record(top, text, &lines)]
    } else {
        read_json(text, &lines).map_err(|m| BodyError::Shape(format!("the body is {m}")))?
    };
    let mut importer = Importer::new(ctx, limits, ledger, actor, true);
    for record in records {
        if importer.push(record) {
            importer.flush().await?;
        }
    }
    importer.flush().await?;
    let results = importer.each.take().unwrap_or_default().into_iter().flatten().collect();
    Ok(BodyImport {
        report: importer.report,
        results,
        single,
    })
}

/// Whether a JSON object has a top-level `cases` key (the wrapped list).
fn has_cases_key(object: &str) -> bool {
    #[derive(Deserialize)]
    struct Keys<'a> {
        #[serde(borrow)]
        cases: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_str::<Keys<'_>>(object).is_ok_and(|k| k.cases.is_some())
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
    Ok(items.into_iter().map(|item| json_record(item, text, lines)).collect())
}

/// One JSON case of a text held whole, read into a `RawCase` or the error
/// that stopped it.
fn json_record(item: &serde_json::value::RawValue, text: &str, lines: &LineIndex) -> SourceRecord {
    // Items come in file order; each line is a binary search in the
    // index made once, so the whole file is read a constant number of
    // times however many records it has.
    let offset = item.get().as_ptr() as usize - text.as_ptr() as usize;
    read_json_record(item.get(), &|o| lines.line(offset + o), &|o| {
        lines.describe(text, offset + o)
    })
}

/// One element of a streamed JSON file: positions in it are counted in
/// its own text and placed after where it starts.
fn streamed_json_record(element: &json_stream::Element) -> SourceRecord {
    let local = LineIndex::new(&element.text);
    let line = |o: usize| element.line + local.line(o) - 1;
    let describe = |o: usize| match local.position(&element.text, o) {
        (1, column) => match element.column.zip(column) {
            Some((start, column)) => format!("line {}, column {}", element.line, start + column as u64 - 1),
            None => format!("line {}, offset {}", element.line, element.offset + o as u64),
        },
        (l, Some(column)) => format!("line {}, column {column}", element.line + l - 1),
        (l, None) => format!("line {}, offset {}", element.line + l - 1, element.offset + o as u64),
    };
    read_json_record(&element.text, &line, &describe)
}

/// One JSON case (`item`, its text), read into a `RawCase` or the error
/// that stopped it; `line` and `describe` place an offset in `item` in the
/// file.
fn read_json_record(item: &str, line_of: &dyn Fn(usize) -> u64, describe: &dyn Fn(usize) -> String) -> SourceRecord {
    let line = line_of(0);
    let mut de = serde_json::Deserializer::from_str(item);
    match serde_path_to_error::deserialize::<_, RawCase>(&mut de) {
        Ok(raw) => SourceRecord {
            line,
            practice_id: raw.practice_id.clone(),
            case_id: raw.case_id.clone(),
            raw: Some(raw),
            errors: Vec::new(),
            csv: false,
            attachments_line: json_key_offset(item, "attachments").map(line_of),
        },
        Err(e) => {
            let field = json_field(&e);
            let (message, at) = text::json_error(e.inner(), item, 0);
            let reason = match at {
                Some(at) => format!("{message} ({})", describe(at)),
                None => message,
            };
            // Name the record in the message when its IDs can be read.
            #[derive(Default, Deserialize)]
            struct Ids {
                practice_id: Option<String>,
                case_id: Option<String>,
            }
            let ids: Ids = serde_json::from_str(item).unwrap_or_default();
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
