//! One record → `CaseData`, with every field error at once.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use chrono::NaiveDate;
use serde::Deserialize;

use super::text::{tidy_field, tidy_reason};
use super::Context;
use crate::case::codes::quoted;
use crate::case::{
    Attachment, CaseData, Coverage, DateRange, Icd10, Modifier, Npi, Patient, PlanType, ProcedureCode, Provider,
    ServiceLine, Setting, TaxId, Urgency, UsState, Usd,
};
use crate::files::{safe_name, sha256_hex, write_private};
use crate::phi::{MemberId, PersonName};

/// A field that failed, named by its JSON path (`patient.birth_date`,
/// `service_lines[1].units`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    /// The field and reason as a message shows them: whatever produced the
    /// reason, a long value in it is cut and control characters are escaped
    /// (see `text::tidy_reason`), so a multi-megabyte cell or a NUL never
    /// comes back whole or raw.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: tidy_field(&field.into()),
            reason: tidy_reason(&reason.into()),
        }
    }

    /// Renames a JSON path to the CSV column that holds it:
    /// `service_lines[1].units` → `service_lines` with "entry 2: " first.
    pub fn to_csv_column(&mut self) {
        if let Some((head, rest)) = self.field.split_once('[') {
            if let Some((index, _)) = rest.split_once(']') {
                if let Ok(i) = index.parse::<usize>() {
                    self.reason = format!("entry {}: {}", i + 1, self.reason);
                }
            }
            self.field = head.to_owned();
        }
        self.field = self.field.replace('.', "_");
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The JSON form of a case (`samples/cases.json`); CSV rows are read into it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCase {
    pub practice_id: Option<String>,
    /// The practice's own case ID.
    pub case_id: Option<String>,
    #[serde(default)]
    pub patient: RawPatient,
    #[serde(default)]
    pub coverage: RawCoverage,
    #[serde(default)]
    pub requesting_provider: RawProvider,
    #[serde(default)]
    pub servicing_provider: RawProvider,
    #[serde(default)]
    pub service_lines: Vec<RawLine>,
    #[serde(default)]
    pub diagnoses: Vec<String>,
    pub service_start: Option<String>,
    pub service_end: Option<String>,
    pub setting: Option<String>,
    pub urgency: Option<String>,
    #[serde(default)]
    pub attachments: Vec<String>,
    pub precert_required: Option<bool>,
    /// US dollars, `"1250.00"` (a JSON number is taken too); absent, null
    /// or empty: unknown.
    #[serde(default, deserialize_with = "crate::case::amount::deserialize_raw")]
    pub expected_amount: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPatient {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub birth_date: Option<String>,
    pub member_id: Option<String>,
    pub group_number: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoverage {
    pub payer: Option<String>,
    pub plan: Option<String>,
    pub plan_type: Option<String>,
    pub state: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: Option<String>,
    pub npi: Option<String>,
    pub tax_id: Option<String>,
    pub location: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLine {
    pub code: Option<String>,
    pub units: Option<u32>,
    #[serde(default)]
    pub modifiers: Vec<String>,
}

/// Attachments larger than this are refused: portals cap uploads near it.
pub const MAX_ATTACHMENT_BYTES: u64 = 25 * 1024 * 1024;

/// The longest free text (a name, a plan, a group number) taken, in
/// characters: far above any real value, far below a pasted document.
pub const MAX_TEXT_CHARS: usize = 200;

/// The longest attachment path taken, in characters.
const MAX_PATH_CHARS: usize = 1024;

/// A practice's case ID: what `FILE:LINE (case ID)` shows and the ledger
/// keys a case by, with the practice.
pub(crate) fn check_case_id(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("is required".into())
    } else if s.chars().count() > 64 || s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        Err(format!(
            "{} is not a case ID: at most 64 characters, no spaces, control characters or `/`",
            quoted(s)
        ))
    } else {
        Ok(s.to_owned())
    }
}

/// Free text: at most `MAX_TEXT_CHARS` characters, none of them control
/// characters (a NUL or a line break would reach a portal's form as is).
fn check_text(s: &str) -> Result<String, String> {
    let n = s.chars().count();
    if n > MAX_TEXT_CHARS {
        Err(format!("{} is {n} characters; at most {MAX_TEXT_CHARS}", quoted(s)))
    } else if s.chars().any(char::is_control) {
        Err(format!("{} has a control character", quoted(s)))
    } else {
        Ok(s.to_owned())
    }
}

/// A keyword (`PlanType`, `Setting`, `Urgency`) from its own `FromStr`, whose
/// message shows the value whole: shown as `quoted` shows it instead.
fn keyword<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T, String> {
    s.parse::<T>()
        .map_err(|e| e.replacen(&format!("`{}`", s.trim()), &quoted(s.trim()), 1))
}

const MEDIA_TYPES: &[(&str, &str)] = &[
    ("pdf", "application/pdf"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("tif", "image/tiff"),
    ("tiff", "image/tiff"),
    ("txt", "text/plain"),
];

struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    fn required<'v>(&mut self, field: &str, v: &'v Option<String>) -> Option<&'v str> {
        match v.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() => Some(s),
            _ => {
                self.add(field, "is required");
                None
            }
        }
    }

    /// Runs a parser on a required field, recording its error.
    fn parse<T>(&mut self, field: &str, v: &Option<String>, f: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let s = self.required(field, v)?;
        f(s).map_err(|e| self.add(field, e)).ok()
    }
}

/// Dates as practices export them: `2026-12-01` or US `12/01/2026`.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    let s = s.trim();
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(s, "%m/%d/%Y"))
        .map_err(|_| format!("{} is not a date; write YYYY-MM-DD (or MM/DD/YYYY)", quoted(s)))
}

fn optional_text(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Validates a record, adding to the problems already found while reading
/// it. On success, attachments have been copied into the data directory and
/// the case's data is returned with the record's `precert_required` verdict.
pub fn validate(
    raw: RawCase,
    read_errors: Vec<FieldError>,
    ctx: &Context<'_>,
) -> Result<(CaseData, Option<bool>), Vec<FieldError>> {
    // A field that could not be read is not reported a second time as
    // missing (`service_lines[1]` unreadable → not "list at least one").
    let unreadable: Vec<String> = read_errors
        .iter()
        .map(|f| f.field.split('[').next().unwrap_or_default().to_owned())
        .collect();
    let mut e = Errors(Vec::new());

    // Practice and the references into its configuration.
    let practice_id = optional_text(&raw.practice_id).or_else(|| ctx.default_practice.map(str::to_owned));
    let practice = match &practice_id {
        None => {
            e.add("practice_id", "is required (or pass --practice)");
            None
        }
        Some(id) => match ctx.settings.practice(id) {
            Some(p) => Some(p),
            None => {
                let known: Vec<&str> = ctx.settings.practices.iter().map(|p| p.id.as_str()).collect();
                e.add(
                    "practice_id",
                    format!(
                        "{} is not a configured practice (known: {})",
                        quoted(id),
                        known.join(", ")
                    ),
                );
                None
            }
        },
    };
    let case_ref = e.parse("case_id", &raw.case_id, check_case_id);

    // Patient.
    let p = &raw.patient;
    let name = match (
        e.required("patient.first_name", &p.first_name),
        e.required("patient.last_name", &p.last_name),
    ) {
        (Some(g), Some(f)) => PersonName::parse(g, f)
            .map_err(|(field, r)| e.add(format!("patient.{field}"), r))
            .ok(),
        _ => None,
    };
    let birth_date = e.parse("patient.birth_date", &p.birth_date, parse_date).and_then(|d| {
        if d > ctx.today {
            e.add("patient.birth_date", format!("{d} is in the future"));
            None
        } else if d.year_ce().1 < 1900 {
            e.add("patient.birth_date", format!("{d} is before 1900; check the year"));
            None
        } else {
            Some(d)
        }
    });
    let member_id = e.parse("patient.member_id", &p.member_id, MemberId::parse);
    let group_number = optional_text(&p.group_number)
        .and_then(|g| check_text(&g).map_err(|err| e.add("patient.group_number", err)).ok());

    // Coverage.
    let c = &raw.coverage;
    let payer = e.required("coverage.payer", &c.payer).map(str::to_owned);
    if let (Some(payer), Some(practice)) = (&payer, practice) {
        if !practice.payers.contains_key(payer) {
            let known: Vec<&str> = practice.payers.keys().map(String::as_str).collect();
            e.add(
                "coverage.payer",
                format!(
                    "{} is not a payer of practice {} (its payers: {})",
                    quoted(payer),
                    practice.id,
                    known.join(", ")
                ),
            );
        }
    }
    let plan = e.parse("coverage.plan", &c.plan, check_text);
    let plan_type = e.parse("coverage.plan_type", &c.plan_type, keyword::<PlanType>);
    let state = e.parse("coverage.state", &c.state, UsState::parse);

    // Providers.
    let mut provider = |prefix: &str, r: &RawProvider| -> Option<Provider> {
        let field = |f: &str| format!("{prefix}.{f}");
        let name = e.parse(&field("name"), &r.name, check_text);
        let npi = e.parse(&field("npi"), &r.npi, Npi::parse);
        let tax_id = match optional_text(&r.tax_id) {
            Some(t) => TaxId::parse(&t).map_err(|err| e.add(field("tax_id"), err)).ok(),
            None => practice.map(|p| p.tax_id.clone()),
        };
        let location = match (optional_text(&r.location), practice) {
            (Some(l), Some(p)) if p.location(&l).is_none() => {
                let known: Vec<&str> = p.locations.iter().map(|l| l.id.as_str()).collect();
                e.add(
                    field("location"),
                    format!(
                        "{} is not a location of practice {} (known: {})",
                        quoted(&l),
                        p.id,
                        known.join(", ")
                    ),
                );
                None
            }
            (Some(l), _) => Some(l),
            (None, Some(p)) if p.locations.len() == 1 => Some(p.locations[0].id.clone()),
            (None, Some(_)) => {
                e.add(field("location"), "is required: the practice has several locations");
                None
            }
            (None, None) => None,
        };
        Some(Provider {
            name: name?,
            npi: npi?,
            tax_id: tax_id?,
            location: location?,
        })
    };
    let requesting = provider("requesting_provider", &raw.requesting_provider);
    let servicing = provider("servicing_provider", &raw.servicing_provider);

    // Service lines and diagnoses.
    if raw.service_lines.is_empty() {
        e.add("service_lines", "list at least one procedure code");
    }
    let mut lines = Vec::new();
    for (i, l) in raw.service_lines.iter().enumerate() {
        let field = |f: &str| format!("service_lines[{i}].{f}");
        let code = e.parse(&field("code"), &l.code, ProcedureCode::parse);
        let units = match l.units {
            None => Some(1),
            Some(u) if (1..=9999).contains(&u) => Some(u),
            Some(u) => {
                e.add(field("units"), format!("{u} is not between 1 and 9999"));
                None
            }
        };
        if l.modifiers.len() > 4 {
            e.add(field("modifiers"), "at most 4 modifiers per line");
        }
        let modifiers: Vec<Modifier> = l
            .modifiers
            .iter()
            .filter_map(|m| Modifier::parse(m).map_err(|err| e.add(field("modifiers"), err)).ok())
            .collect();
        if let (Some(code), Some(units)) = (code, units) {
            lines.push(ServiceLine { code, units, modifiers });
        }
    }
    if raw.diagnoses.is_empty() {
        e.add("diagnoses", "list at least one ICD-10-CM code");
    }
    if raw.diagnoses.len() > 12 {
        e.add(
            "diagnoses",
            format!("{} codes; a request carries at most 12", raw.diagnoses.len()),
        );
    }
    let mut diagnoses = Vec::new();
    let mut seen = HashSet::new();
    for (i, d) in raw.diagnoses.iter().enumerate() {
        match Icd10::parse(d) {
            Ok(code) if !seen.insert(code.clone()) => {
                e.add(format!("diagnoses[{i}]"), format!("{code} is listed twice"))
            }
            Ok(code) => diagnoses.push(code),
            Err(err) => e.add(format!("diagnoses[{i}]"), err),
        }
    }

    // Dates.
    let start = e.parse("service_start", &raw.service_start, parse_date);
    let end = match optional_text(&raw.service_end) {
        Some(s) => parse_date(&s).map_err(|err| e.add("service_end", err)).ok(),
        None => start,
    };
    let service_dates = match (start, end) {
        (Some(s), Some(en)) if en < s => {
            e.add("service_end", format!("{en} is before the service start {s}"));
            None
        }
        (Some(s), Some(en)) => {
            if let Some(b) = birth_date {
                if s < b {
                    e.add("service_start", format!("{s} is before the patient's birth date"));
                }
            }
            Some(DateRange { start: s, end: en })
        }
        _ => None,
    };
    let setting = e.parse("setting", &raw.setting, keyword::<Setting>);
    let urgency = match optional_text(&raw.urgency) {
        None => Some(Urgency::Standard),
        Some(u) => keyword::<Urgency>(&u).map_err(|err| e.add("urgency", err)).ok(),
    };
    // Optional: an amount that is not right is refused, never read as none.
    let expected_amount = optional_text(&raw.expected_amount).and_then(|a| {
        Usd::parse_expected(&a)
            .map_err(|err| e.add("expected_amount", err))
            .ok()
    });

    // Attachments are read only when everything else is valid, so a bad row
    // copies nothing into the data directory.
    if !e.0.is_empty() || !read_errors.is_empty() {
        let mut all = read_errors;
        all.extend(e.0.into_iter().filter(|f| !unreadable.contains(&f.field)));
        return Err(all);
    }
    let (practice_id, case_ref) = (practice_id.unwrap_or_default(), case_ref.unwrap_or_default());
    let mut attachments = Vec::new();
    let mut names = HashSet::new();
    for (i, a) in raw.attachments.iter().enumerate() {
        let field = format!("attachments[{i}]");
        match store_attachment(a, ctx, &practice_id, &case_ref) {
            Ok(att) if !names.insert(att.file_name.clone()) => {
                e.add(field, format!("a second file named {}", att.file_name))
            }
            Ok(att) => attachments.push(att),
            Err(err) => e.add(field, err),
        }
    }
    if !e.0.is_empty() {
        return Err(e.0);
    }
    let all = (
        name,
        birth_date,
        member_id,
        payer,
        plan,
        plan_type,
        state,
        requesting,
        servicing,
        service_dates,
        setting,
        urgency,
    );
    match all {
        (
            Some(name),
            Some(birth_date),
            Some(member_id),
            Some(payer),
            Some(plan),
            Some(plan_type),
            Some(state),
            Some(requesting_provider),
            Some(servicing_provider),
            Some(service_dates),
            Some(setting),
            Some(urgency),
        ) => Ok((
            CaseData {
                practice_id,
                case_ref,
                patient: Patient {
                    name,
                    birth_date,
                    member_id,
                    group_number,
                },
                coverage: Coverage {
                    payer,
                    plan,
                    plan_type,
                    state,
                },
                requesting_provider,
                servicing_provider,
                service_lines: lines,
                diagnoses,
                service_dates,
                setting,
                urgency,
                attachments,
                expected_amount,
            },
            raw.precert_required,
        )),
        // Every None above recorded an error, so this arm is unreachable in
        // practice; report it rather than panic.
        _ => Err(vec![FieldError::new("record", "incomplete record")]),
    }
}

use chrono::Datelike;

/// Copies an attachment into `DATA/attachments/PRACTICE/CASE/` (0600),
/// named by its content hash so a re-import finds the same file.
fn store_attachment(raw: &str, ctx: &Context<'_>, practice: &str, case_ref: &str) -> Result<Attachment, String> {
    let raw = raw.trim();
    // Checked before it is a path, so that the messages below, which show
    // the path, show a short one without control characters.
    if raw.chars().count() > MAX_PATH_CHARS || raw.chars().any(char::is_control) {
        return Err(format!(
            "{} is not a usable path: at most {MAX_PATH_CHARS} characters, no control characters",
            quoted(raw)
        ));
    }
    let path = ctx.base_dir.join(raw);
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} does not name a file", quoted(raw)))?
        .to_owned();
    let ext = path
        .extension()
        .and_then(|x| x.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let media_type = MEDIA_TYPES
        .iter()
        .find(|(x, _)| *x == ext)
        .map(|(_, t)| (*t).to_owned())
        .ok_or_else(|| {
            format!(
                "{file_name}: only {} files are accepted",
                MEDIA_TYPES.iter().map(|(x, _)| *x).collect::<Vec<_>>().join(", ")
            )
        })?;
    let meta = std::fs::metadata(&path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    if meta.len() == 0 {
        return Err(format!("{} is empty", path.display()));
    }
    if meta.len() > MAX_ATTACHMENT_BYTES {
        return Err(format!(
            "{} is {} bytes; the limit is {MAX_ATTACHMENT_BYTES}",
            path.display(),
            meta.len()
        ));
    }
    let bytes = std::fs::read(&path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    if media_type == "application/pdf" && !bytes.starts_with(b"%PDF-") {
        return Err(format!("{file_name} is named .pdf but is not a PDF"));
    }
    let sha256 = sha256_hex(&bytes);
    let relative = PathBuf::from("attachments")
        .join(practice)
        .join(safe_name(case_ref))
        .join(format!("{}-{}", &sha256[..12], safe_name(&file_name)));
    let target = ctx.settings.data_dir.join(&relative);
    if !target.exists() {
        write_private(&target, &bytes)
            .map_err(|err| format!("cannot store {file_name} in the data directory: {err}"))?;
    }
    Ok(Attachment {
        file_name,
        stored_path: relative,
        media_type,
        bytes: meta.len(),
        sha256,
    })
}
