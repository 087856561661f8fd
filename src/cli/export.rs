//! `precert cases list --format csv|json`: cases for a practice's own
//! system, so that it can read back auth numbers and statuses.
//!
//! Minimum necessary: the fields of the table view (the patient as initials
//! only: no name, birth date or member ID) plus what the payer decided that
//! a practice management system posts back: the auth number, its dates, the
//! payer's reference and when it was decided. No payer free text (a denial's
//! or pend's wording may quote the patient).

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::case::CaseRecord;

const COLUMNS: &[&str] = &[
    "id",
    "practice_id",
    "case_id",
    "payer",
    "status",
    "urgency",
    "setting",
    "service_start",
    "service_end",
    "codes",
    "letters",
    "patient_initials",
    "auth_number",
    "auth_valid_from",
    "auth_valid_until",
    "decided_at",
    "payer_ref",
    "updated_at",
];

pub fn csv_header() -> String {
    format!("{}\n", COLUMNS.join(","))
}

/// The row's values, in `COLUMNS` order.
fn values(c: &CaseRecord, letters: usize) -> Vec<String> {
    let d = &c.data;
    let dec = c.decision.as_ref();
    vec![
        c.id.to_string(),
        d.practice_id.clone(),
        d.case_ref.clone(),
        d.coverage.payer.clone(),
        c.status.as_str().to_owned(),
        d.urgency.as_str().to_owned(),
        d.setting.as_str().to_owned(),
        d.service_dates.start.to_string(),
        d.service_dates.end.to_string(),
        d.service_lines
            .iter()
            .map(|l| l.code.as_str())
            .collect::<Vec<_>>()
            .join(";"),
        letters.to_string(),
        d.patient.name.initials(),
        dec.and_then(|x| x.auth_number.clone()).unwrap_or_default(),
        dec.and_then(|x| x.valid)
            .map(|v| v.start.to_string())
            .unwrap_or_default(),
        dec.and_then(|x| x.valid).map(|v| v.end.to_string()).unwrap_or_default(),
        dec.map(|x| x.decided_at.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default(),
        c.payer_ref.clone().unwrap_or_default(),
        c.updated_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    ]
}

/// One CSV row (RFC 4180 quoting), each cell kept from running as a
/// spreadsheet formula (a leading `=`, `+`, `-`, `@` gets a `'`, as the
/// console's export does): auth numbers and references come from payers.
pub fn csv_row(out: &mut String, c: &CaseRecord, letters: usize) {
    let cells: Vec<String> = values(c, letters)
        .iter()
        .map(|v| {
            let v = match v.chars().next() {
                Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{v}"),
                _ => v.clone(),
            };
            if v.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", v.replace('"', "\"\""))
            } else {
                v
            }
        })
        .collect();
    let _ = writeln!(out, "{}", cells.join(","));
}

/// One case as a JSON object: the CSV's fields, empty ones as null, codes
/// as a list, numbers as numbers.
pub fn json_row(c: &CaseRecord, letters: usize) -> Value {
    let mut map = serde_json::Map::new();
    for (k, v) in COLUMNS.iter().zip(values(c, letters)) {
        let v = match *k {
            "id" => json!(c.id),
            "letters" => json!(letters),
            "codes" => json!(c.data.service_lines.iter().map(|l| l.code.as_str()).collect::<Vec<_>>()),
            _ if v.is_empty() => Value::Null,
            _ => Value::String(v),
        };
        map.insert((*k).to_owned(), v);
    }
    Value::Object(map)
}
