//! CSV rows → `RawCase`: one row a case, multi-valued cells split on `;`.
//!
//! `service_lines` holds `CODE[-MOD...][*UNITS]` entries (`27447-RT*1;
//! 97110-GP*12`); `diagnoses` and `attachments` are `;`-separated lists.

use std::io::Seek as _;
use std::path::Path;

use super::stream::LineCounter;
use super::validate::{FieldError, RawCase, RawLine};
use super::SourceRecord;
use crate::case::codes::quoted;
use crate::config::CsvFormat;

/// Every column precert reads, in the order the sample file uses.
pub const COLUMNS: &[&str] = &[
    "practice_id",
    "case_id",
    "patient_first_name",
    "patient_last_name",
    "patient_birth_date",
    "patient_member_id",
    "patient_group_number",
    "coverage_payer",
    "coverage_plan",
    "coverage_plan_type",
    "coverage_state",
    "requesting_provider_name",
    "requesting_provider_npi",
    "requesting_provider_tax_id",
    "requesting_provider_location",
    "servicing_provider_name",
    "servicing_provider_npi",
    "servicing_provider_tax_id",
    "servicing_provider_location",
    "service_lines",
    "diagnoses",
    "service_start",
    "service_end",
    "setting",
    "urgency",
    "attachments",
    "precert_required",
    "expected_amount",
];

/// Columns a file must have (values may still be missing in a row).
const REQUIRED: &[&str] = &[
    "case_id",
    "patient_first_name",
    "patient_last_name",
    "patient_birth_date",
    "patient_member_id",
    "coverage_payer",
    "coverage_plan",
    "coverage_plan_type",
    "coverage_state",
    "requesting_provider_name",
    "requesting_provider_npi",
    "servicing_provider_name",
    "servicing_provider_npi",
    "service_lines",
    "diagnoses",
    "service_start",
    "setting",
];

/// The rows of a CSV file, read as a stream: a row that cannot be read is
/// a record with an error, never the end of the file.
pub(crate) struct Records {
    reader: csv::Reader<std::io::BufReader<std::fs::File>>,
    headers: Vec<String>,
    lines: LineCounter,
    record: csv::StringRecord,
}

impl Records {
    /// Opens the file (past its byte-order mark) and checks its header row,
    /// read in the practice's dialect (`format`: delimiter, their column
    /// names → ours). Columns that are not precert's are ignored, named in
    /// the returned warning.
    pub fn open(
        path: &Path,
        bom: bool,
        have_default_practice: bool,
        format: &CsvFormat,
    ) -> std::io::Result<Result<(Records, Option<String>), String>> {
        let skip = if bom { 3 } else { 0 };
        let mut file = std::fs::File::open(path)?;
        file.seek(std::io::SeekFrom::Start(skip))?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(format.delimiter)
            .trim(csv::Trim::All)
            // Rows of the wrong length are read and reported here, with the
            // case they belong to, rather than as the reader's bare error.
            .flexible(true)
            .from_reader(std::io::BufReader::with_capacity(64 * 1024, file));
        let headers: Vec<String> = match reader.headers() {
            Ok(h) => h
                .iter()
                .map(|h| {
                    let h = h.to_ascii_lowercase();
                    format.columns.get(&h).cloned().unwrap_or(h)
                })
                .collect(),
            Err(e) => return Ok(Err(format!("cannot read the header row: {e}"))),
        };
        let warning = match check_headers(&headers, have_default_practice) {
            Err(e) => return Ok(Err(e)),
            Ok(ignored) if ignored.is_empty() => None,
            Ok(ignored) => Some(format!(
                "ignored column{} {}: not precert's (map {} to a precert column in the practice's [csv.columns] to read it)",
                if ignored.len() == 1 { "" } else { "s" },
                ignored.join(", "),
                if ignored.len() == 1 { "it" } else { "one" },
            )),
        };
        Ok(Ok((
            Records {
                reader,
                headers,
                lines: LineCounter::open(path, skip)?,
                record: csv::StringRecord::new(),
            },
            warning,
        )))
    }

    /// The next row as a record, None at the end. The reader's own line
    /// count falls behind on `\r\n` line endings, and its byte offset of a
    /// row then points at the `\n` before it: the line is the one of the
    /// row's first byte past any line ends.
    pub fn next_record(&mut self) -> std::io::Result<Option<SourceRecord>> {
        loop {
            match self.reader.read_record(&mut self.record) {
                Ok(false) => return Ok(None),
                // With text checked as UTF-8 and flexible rows, the reader
                // has no error left to give; should it, the row is reported.
                Err(e) => {
                    let line = match e.position() {
                        Some(p) => self.lines.line_of(p.byte())?,
                        None => 0,
                    };
                    if let csv::ErrorKind::Io(_) = e.kind() {
                        return Err(std::io::Error::other(e.to_string()));
                    }
                    return Ok(Some(SourceRecord {
                        line,
                        practice_id: None,
                        case_id: None,
                        raw: None,
                        errors: vec![FieldError::new("row", e.to_string())],
                        csv: true,
                        attachments_line: None,
                    }));
                }
                Ok(true) => {
                    let record = &self.record;
                    let line = match record.position() {
                        Some(p) => self.lines.line_of(p.byte())?,
                        None => 0,
                    };
                    // Blank lines at the end of spreadsheets' exports.
                    if record.iter().all(str::is_empty) {
                        continue;
                    }
                    let headers = &self.headers;
                    let get = |col: &str| -> Option<String> {
                        headers
                            .iter()
                            .position(|h| h == col)
                            .and_then(|i| record.get(i))
                            .filter(|v| !v.is_empty())
                            .map(str::to_owned)
                    };
                    let (practice_id, case_id) = (get("practice_id"), get("case_id"));
                    if record.len() != headers.len() {
                        let reason = format!("has {} fields; the header has {}", record.len(), headers.len());
                        return Ok(Some(SourceRecord {
                            line,
                            practice_id,
                            case_id,
                            raw: None,
                            errors: vec![FieldError::new("row", reason)],
                            csv: true,
                            attachments_line: None,
                        }));
                    }
                    let (raw, errors) = row_to_raw(&get);
                    // A quoted cell keeps its line breaks in its value: the
                    // attachments cell is as many lines below the row's
                    // first as the cells before it hold.
                    let attachments_line = headers.iter().position(|h| h == "attachments").map(|i| {
                        line + record
                            .iter()
                            .take(i)
                            .map(|v| v.matches('\n').count() + v.matches('\r').count() - v.matches("\r\n").count())
                            .sum::<usize>() as u64
                    });
                    return Ok(Some(SourceRecord {
                        line,
                        practice_id,
                        case_id,
                        raw: Some(raw),
                        errors,
                        csv: true,
                        attachments_line,
                    }));
                }
            }
        }
    }
}

/// The header row (after the practice's mapping): no repeated column,
/// every required one, and no column one typo away from a precert column
/// (`urgancy`: a misspelt column would silently lose its values). Returns
/// the other columns, which are not precert's and are ignored, quoted.
fn check_headers(headers: &[String], have_default_practice: bool) -> Result<Vec<String>, String> {
    let extra: Vec<&str> = headers
        .iter()
        .map(String::as_str)
        .filter(|h| !COLUMNS.contains(h))
        .collect();
    let typos: Vec<String> = extra
        .iter()
        .filter_map(|h| {
            crate::config::unknown::closest(h, COLUMNS)
                .filter(|c| !headers.iter().any(|x| x == c))
                .map(|c| format!("{} (did you mean {c}?)", quoted(h)))
        })
        .collect();
    if !typos.is_empty() {
        return Err(format!(
            "unknown column{} {} (the columns are: {})",
            if typos.len() == 1 { "" } else { "s" },
            typos.join(", "),
            COLUMNS.join(", ")
        ));
    }
    let mut missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|c| !headers.iter().any(|h| h == c))
        .collect();
    if !have_default_practice && !headers.iter().any(|h| h == "practice_id") {
        missing.insert(0, "practice_id (or pass --practice)");
    }
    if !missing.is_empty() {
        return Err(format!(
            "missing column{}: {}",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = headers.iter().find(|h| !seen.insert(h.as_str())) {
        return Err(format!(
            "column {dup} appears twice (written so, or mapped to it by the practice's [csv.columns])"
        ));
    }
    Ok(extra.into_iter().map(quoted).collect())
}

fn list(v: Option<String>) -> Vec<String> {
    v.map(|s| {
        s.split(';')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

/// The row as a `RawCase`, and what could not even be read into one.
fn row_to_raw(get: &dyn Fn(&str) -> Option<String>) -> (RawCase, Vec<FieldError>) {
    let mut errors = Vec::new();
    let mut raw = RawCase {
        practice_id: get("practice_id"),
        case_id: get("case_id"),
        diagnoses: list(get("diagnoses")),
        service_start: get("service_start"),
        service_end: get("service_end"),
        setting: get("setting"),
        urgency: get("urgency"),
        attachments: list(get("attachments")),
        expected_amount: get("expected_amount"),
        ..RawCase::default()
    };
    raw.patient.first_name = get("patient_first_name");
    raw.patient.last_name = get("patient_last_name");
    raw.patient.birth_date = get("patient_birth_date");
    raw.patient.member_id = get("patient_member_id");
    raw.patient.group_number = get("patient_group_number");
    raw.coverage.payer = get("coverage_payer");
    raw.coverage.plan = get("coverage_plan");
    raw.coverage.plan_type = get("coverage_plan_type");
    raw.coverage.state = get("coverage_state");
    for (prefix, p) in [
        ("requesting_provider", &mut raw.requesting_provider),
        ("servicing_provider", &mut raw.servicing_provider),
    ] {
        p.name = get(&format!("{prefix}_name"));
        p.npi = get(&format!("{prefix}_npi"));
        p.tax_id = get(&format!("{prefix}_tax_id"));
        p.location = get(&format!("{prefix}_location"));
    }
    for (i, entry) in list(get("service_lines")).iter().enumerate() {
        match parse_line(entry) {
            Ok(line) => raw.service_lines.push(line),
            Err(reason) => errors.push(FieldError::new(format!("service_lines[{i}]"), reason)),
        }
    }
    raw.precert_required = match get("precert_required").map(|s| s.to_ascii_lowercase()) {
        None => None,
        Some(v) if matches!(v.as_str(), "yes" | "y" | "true" | "1") => Some(true),
        Some(v) if matches!(v.as_str(), "no" | "n" | "false" | "0") => Some(false),
        Some(v) => {
            errors.push(FieldError::new(
                "precert_required",
                format!("{} is not yes or no", quoted(&v)),
            ));
            None
        }
    };
    (raw, errors)
}

/// `27447-RT*1` → code 27447, modifier RT, 1 unit. Codes are checked later.
fn parse_line(entry: &str) -> Result<RawLine, String> {
    let (left, units) = match entry.split_once('*') {
        Some((l, u)) => {
            let u = u.trim();
            let n = u.parse::<u32>().map_err(|_| {
                format!(
                    "{}: {} is not a whole number of units (write CODE*UNITS, e.g. 97110-GP*12)",
                    quoted(entry),
                    quoted(u)
                )
            })?;
            (l, Some(n))
        }
        None => (entry, None),
    };
    let mut parts = left.split('-').map(str::trim);
    let code = parts
        .next()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("{} has no procedure code", quoted(entry)))?;
    Ok(RawLine {
        code: Some(code.to_owned()),
        units,
        modifiers: parts.map(str::to_owned).collect(),
    })
}
