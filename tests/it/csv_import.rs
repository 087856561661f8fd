//! CSV from a practice's own systems: its delimiter and column names
//! (`[csv]` in the practice file), extra columns ignored with one warning,
//! attachment errors on the line they are written on, and `cases list
//! --format csv|json` to post auth numbers back.

use chrono::{NaiveDate, TimeZone, Utc};
use precert::case::{CaseStatus, DateRange, Decision, LineDecision, ProcedureCode};
use precert::store::Actor;

use super::support::{stderr, stdout, Project};

/// The sample CSV as a practice management system writes it: `;` between
/// fields, its own names for three columns, and two columns precert does
/// not read.
fn pm_export(p: &Project) -> String {
    let text = std::fs::read_to_string(p.path("samples/cases.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let renamed = |h: &str| match h {
        "case_id" => "Case Number".to_owned(),
        "patient_member_id" => "Member #".to_owned(),
        "service_start" => "DOS".to_owned(),
        h => h.to_owned(),
    };
    let mut out = csv::WriterBuilder::new().delimiter(b';').from_writer(Vec::new());
    let mut header: Vec<String> = reader.headers().unwrap().iter().map(renamed).collect();
    header.extend(["Referring Clinic".to_owned(), "Internal Notes".to_owned()]);
    out.write_record(&header).unwrap();
    for r in reader.records() {
        let mut row: Vec<String> = r.unwrap().iter().map(str::to_owned).collect();
        if row[0] != "lakeside-ortho" {
            continue;
        }
        row.extend(["North Shore".to_owned(), "call back, Tuesday".to_owned()]);
        out.write_record(&row).unwrap();
    }
    String::from_utf8(out.into_inner().unwrap()).unwrap()
}

const MAPPING: &str = "\n[csv]\ndelimiter = \";\"\n[csv.columns]\n\"Case Number\" = \"case_id\"\n\"Member #\" = \"patient_member_id\"\nDOS = \"service_start\"\n";

#[tokio::test]
async fn a_pm_export_with_its_own_delimiter_names_and_extra_columns_imports_with_one_warning() {
    let p = Project::new();
    let practice = p.path("config/practices/lakeside-ortho.toml");
    let text = std::fs::read_to_string(&practice).unwrap();
    std::fs::write(&practice, format!("{text}{MAPPING}")).unwrap();
    p.write("samples/pm.csv", &pm_export(&p));

    let out = p.precert(&["cases", "import", "--practice", "lakeside-ortho", "samples/pm.csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("warning:").count(), 1, "one warning: {err}");
    assert!(
        err.contains("samples/pm.csv: ignored columns `referring clinic`, `internal notes`: not precert's"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("3 record(s): 3 created, 0 updated, 0 unchanged, 0 invalid"),
        "{}",
        stdout(&out)
    );
    let ledger = p.ledger().await;
    let case = ledger.find("lakeside-ortho", "LO-2026-1001").await.unwrap().unwrap();
    assert_eq!(case.data.patient.member_id.expose(), "SBX100200301");
    assert_eq!(case.data.service_dates.start.to_string(), "2026-12-08");
    assert_eq!(case.status, CaseStatus::Ready);
    ledger.close().await;

    // The same file read as precert's own format (no --practice): the
    // mapped headers are missing, so the file is refused whole.
    let out = p.precert(&["cases", "import", "samples/pm.csv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing column"), "{}", stderr(&out));
}

#[test]
fn a_mapping_to_a_column_precert_does_not_have_is_a_configuration_error() {
    let p = Project::new();
    let practice = p.path("config/practices/lakeside-ortho.toml");
    let text = std::fs::read_to_string(&practice).unwrap();
    let bad = "\n[csv]\ndelimiter = \";;\"\n[csv.columns]\n\"Member #\" = \"patient_memberid\"\nMRN = \"medical_record\"\nID = \"case_id\"\n\"Case Number\" = \"case_id\"\n";
    std::fs::write(&practice, format!("{text}{bad}")).unwrap();
    let out = p.precert(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let f = practice.display().to_string();
    for needle in [
        format!("{f}: csv.delimiter: `;;` is not one character"),
        format!(
            "{f}: csv.columns.Member #: `patient_memberid` is not a precert column; did you mean `patient_member_id`?"
        ),
        format!("{f}: csv.columns.MRN: `medical_record` is not a precert column"),
        format!("{f}: csv.columns.ID: `case_id` is already the column `Case Number` maps to"),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn a_misspelt_column_is_still_refused_rather_than_ignored() {
    let p = Project::new();
    let text = std::fs::read_to_string(p.path("samples/cases.csv")).unwrap().replacen(
        "precert_required",
        "precert_requird",
        1,
    );
    p.write("samples/typo.csv", &text);
    let out = p.precert(&["cases", "import", "samples/typo.csv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown column `precert_requird` (did you mean precert_required?)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn attachment_errors_name_the_line_the_attachment_is_written_on() {
    let p = Project::new();
    let text = std::fs::read_to_string(p.path("samples/cases.csv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Line 2: a row whose diagnoses cell holds a line break, so its
    // attachments cell is on line 3; line 4: a row on one line.
    let spread = lines[2]
        .replace(",M17.11,", ",\"M17.11;\nM25.561\",")
        .replace("documents/ortho-consult-note.pdf", "documents/missing.pdf");
    let single = lines[3].replace(",,yes", ",documents/absent.pdf,yes");
    p.write("samples/att.csv", &format!("{}\n{spread}\n{single}\n", lines[0]));
    let out = p.precert(&["cases", "import", "samples/att.csv"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("samples/att.csv:2 (case LO-2026-1002): attachments: entry 1: (line 3) cannot read"),
        "{err}"
    );
    assert!(
        err.contains("samples/att.csv:4 (case LO-2026-1003): attachments: entry 1: cannot read"),
        "{err}"
    );

    // JSON: the line of the record's `attachments`.
    let json = std::fs::read_to_string(p.path("samples/cases.json")).unwrap();
    let json = json.replace("documents/ortho-consult-note.pdf", "documents/gone.pdf");
    p.write("samples/att.json", &json);
    let at = 1 + json.lines().position(|l| l.contains("\"attachments\"")).unwrap();
    let out = p.precert(&["cases", "import", "samples/att.json"]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "samples/att.json:2 (case LO-2026-1004): attachments[0]: (line {at}) cannot read"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn cases_list_as_csv_and_json_carries_auth_numbers_and_no_more_phi_than_the_table() {
    let p = Project::new();
    assert!(p.precert(&["cases", "import", "samples/cases.csv"]).status.success());
    let ledger = p.ledger().await;
    let case = ledger.find("lakeside-ortho", "LO-2026-1001").await.unwrap().unwrap();
    let job = Actor::job("submit", 1);
    ledger
        .transition(case.id, CaseStatus::Submitting, &job, None)
        .await
        .unwrap();
    ledger
        .transition(case.id, CaseStatus::Pending, &job, None)
        .await
        .unwrap();
    let decision = Decision {
        auth_number: Some("=AUTH-778812".into()),
        valid: Some(DateRange {
            start: NaiveDate::from_ymd_opt(2026, 12, 8).unwrap(),
            end: NaiveDate::from_ymd_opt(2027, 3, 8).unwrap(),
        }),
        lines: vec![LineDecision {
            code: ProcedureCode::parse("73721").unwrap(),
            requested_units: 1,
            approved_units: 1,
        }],
        conditions: None,
        denial: None,
        decided_at: Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap(),
        source: "portal:sandbox".into(),
    };
    ledger
        .record_decision(case.id, &decision, CaseStatus::Approved, &Actor::job("poll", 2))
        .await
        .unwrap();
    ledger.close().await;

    let out = p.precert(&["cases", "list", "--format", "csv", "--practice", "lakeside-ortho"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header[..5], ["id", "practice_id", "case_id", "payer", "status"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3, "{text}");
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let approved = rows.iter().find(|r| &r[col("case_id")] == "LO-2026-1001").unwrap();
    assert_eq!(&approved[col("status")], "approved");
    // A payer's value that a spreadsheet would run as a formula is defused.
    assert_eq!(&approved[col("auth_number")], "'=AUTH-778812");
    assert_eq!(&approved[col("auth_valid_until")], "2027-03-08");
    assert_eq!(&approved[col("patient_initials")], "A. M.");
    assert!(stderr(&out).contains("3 case(s)"), "the count goes to stderr");
    // Minimum necessary: no name, birth date or member ID.
    for phi in ["Avery", "Marsh", "1961-04-12", "SBX100200301"] {
        assert!(!text.contains(phi), "{phi} in {text}");
    }

    let out = p.precert(&["cases", "list", "--format", "json", "--status", "approved"]);
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["auth_number"], "=AUTH-778812");
    assert_eq!(list[0]["codes"], serde_json::json!(["73721"]));
    assert_eq!(list[0]["decided_at"], "2026-12-03T10:00:00Z");
    assert!(list[0].get("patient_member_id").is_none());
    let json = stdout(&out);
    for phi in ["Avery", "Marsh", "1961-04-12", "SBX100200301"] {
        assert!(!json.contains(phi), "{phi} in {json}");
    }
    // An empty list is still JSON.
    let out = p.precert(&["cases", "list", "--format", "json", "--status", "denied"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap(),
        serde_json::json!([])
    );
}
