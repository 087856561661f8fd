//! Case files: valid records stored, invalid ones reported by line, field
//! and reason, and importing again adds nothing.

use precert::case::CaseStatus;
use precert::store::{Actor, CaseFilter};

use super::support::{stderr, stdout, Project, REPO};

fn fixture(name: &str) -> String {
    format!("{REPO}/tests/fixtures/{name}")
}

#[tokio::test]
async fn a_csv_with_good_and_bad_rows_stores_the_good_and_reports_the_bad() {
    let p = Project::new();
    let file = p.path("samples/mixed.csv");
    std::fs::copy(fixture("cases-mixed.csv"), &file).unwrap();
    let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "invalid rows make the exit code 1");
    let err = stderr(&out);
    let f = file.display().to_string();
    for needle in [
        format!("{f}:3 (case MIX-2): requesting_provider_npi: `1987654320` fails the NPI check digit"),
        format!("{f}:3 (case MIX-2): service_end: 2027-01-10 is before the service start 2027-01-12"),
        format!("{f}:4 (case MIX-3): service_lines: entry 2: `9711*x`: `x` is not a whole number of units"),
        format!("{f}:5 (case MIX-4): coverage_payer: `aetna` is not a payer of practice valley-imaging"),
        format!("{f}:5 (case MIX-4): diagnoses: entry 2: `54.16` is not an ICD-10-CM code"),
        format!("{f}:5 (case MIX-4): urgency: `soon` is not one of: standard, urgent"),
        format!("{f}:7 (case MIX-6): patient_birth_date: 2031-12-01 is in the future"),
        format!("{f}:7 (case MIX-6): patient_member_id: is required"),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    // The attachment of a bad row is not even looked at.
    assert!(!err.contains("missing.pdf"), "{err}");
    assert!(
        stdout(&out).contains("6 record(s): 2 created, 0 updated, 0 unchanged, 4 invalid"),
        "{}",
        stdout(&out)
    );

    let ledger = p.ledger().await;
    let cases = ledger.list(&CaseFilter::default()).await.unwrap();
    let refs: Vec<(&str, CaseStatus)> = cases.iter().map(|c| (c.data.case_ref.as_str(), c.status)).collect();
    assert_eq!(refs, [("MIX-1", CaseStatus::Ready), ("MIX-5", CaseStatus::NotRequired)]);
    let attachment = &cases[0].data.attachments[0];
    let stored = p.settings().data_dir.join(&attachment.stored_path);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777, 0o600);
    ledger.close().await;

    // Again: nothing new, the same problems.
    let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("0 created, 0 updated, 2 unchanged, 4 invalid"),
        "{}",
        stdout(&out)
    );
    let ledger = p.ledger().await;
    assert_eq!(ledger.list(&CaseFilter::default()).await.unwrap().len(), 2);
    let events = ledger.events(cases[0].id).await.unwrap();
    assert_eq!(
        events.len(),
        3,
        "imported, required, ready; a re-import adds no event: {events:#?}"
    );
}

#[tokio::test]
async fn the_sample_files_import_cleanly_and_idempotently() {
    let p = Project::new();
    for file in ["samples/cases.csv", "samples/cases.json"] {
        let out = p.precert(&["cases", "import", file]);
        assert!(out.status.success(), "{file}: {}", stderr(&out));
    }
    let out = p.precert(&["cases", "import", "samples/cases.csv"]);
    assert!(
        stdout(&out).contains("6 record(s): 0 created, 0 updated, 6 unchanged, 0 invalid"),
        "{}",
        stdout(&out)
    );
    let out = p.precert(&["cases", "list", "--practice", "lakeside-ortho"]);
    let list = stdout(&out);
    assert!(list.contains("4 case(s)"), "{list}");
    assert!(list.contains("lakeside-ortho/LO-2026-1004"), "{list}");
    assert!(!list.contains("Marsh"), "lists show initials only: {list}");
    let out = p.precert(&["cases", "list", "--status", "ready", "--payer", "sandbox"]);
    assert!(stdout(&out).contains("7 case(s)"), "{}", stdout(&out));
}

#[tokio::test]
async fn a_changed_record_updates_a_case_until_it_is_submitted() {
    let p = Project::new();
    assert!(p.precert(&["cases", "import", "samples/cases.csv"]).status.success());
    let text = std::fs::read_to_string(p.path("samples/cases.csv")).unwrap();
    let changed = text.replace("2026-12-08,2026-12-08", "2026-12-09,2026-12-09");
    p.write("samples/changed.csv", &changed);

    let out = p.precert(&["cases", "import", "samples/changed.csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("0 created, 1 updated, 5 unchanged"),
        "{}",
        stdout(&out)
    );
    let ledger = p.ledger().await;
    let case = ledger.find("lakeside-ortho", "LO-2026-1001").await.unwrap().unwrap();
    assert_eq!(case.data.service_dates.start.to_string(), "2026-12-09");
    let last = ledger.events(case.id).await.unwrap().pop().unwrap();
    assert_eq!(last.kind, "updated");
    assert_eq!(last.detail["changed"], serde_json::json!(["service_dates"]));

    // Once with the payer, the data is the payer's record: refuse, keep it.
    ledger
        .transition(case.id, CaseStatus::Submitting, &Actor::user("test"), None)
        .await
        .unwrap();
    ledger
        .transition(case.id, CaseStatus::Pending, &Actor::user("test"), None)
        .await
        .unwrap();
    ledger.close().await;
    let out = p.precert(&["cases", "import", "samples/cases.csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("case_id: case 1 (lakeside-ortho/LO-2026-1001) is already pending with the payer"),
        "{}",
        stderr(&out)
    );
    let ledger = p.ledger().await;
    let case = ledger.get(case.id).await.unwrap();
    assert_eq!(case.data.service_dates.start.to_string(), "2026-12-09");
}

#[test]
fn a_file_with_an_unknown_column_is_refused_whole() {
    let p = Project::new();
    let text = std::fs::read_to_string(p.path("samples/cases.csv"))
        .unwrap()
        .replacen("urgency", "urgancy", 1);
    p.write("samples/typo.csv", &text);
    let out = p.precert(&["cases", "import", "samples/typo.csv"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("samples/typo.csv: unknown column urgancy"), "{err}");
    let out = p.precert(&["cases", "list"]);
    assert!(stdout(&out).contains("0 case(s)"));
}

#[test]
fn json_errors_point_at_the_line_of_the_record() {
    let p = Project::new();
    let text = std::fs::read_to_string(p.path("samples/cases.json")).unwrap();
    let good: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut bad = good[0].clone();
    bad["case_id"] = "LO-BAD-1".into();
    bad["service_lines"][0]["code"] = "2988".into();
    bad["patient"]["middle_name"] = "X".into();
    let mut worse = good[0].clone();
    worse["case_id"] = "LO-BAD-2".into();
    worse["service_lines"][0]["units"] = 0.into();
    let all = serde_json::Value::Array(vec![good[0].clone(), bad, worse]);
    p.write("samples/three.json", &serde_json::to_string_pretty(&all).unwrap());
    let out = p.precert(&["cases", "import", "samples/three.json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let pretty = serde_json::to_string_pretty(&all).unwrap();
    let line_of = |n: usize| {
        1 + pretty
            .lines()
            .enumerate()
            .filter(|(_, l)| *l == "  {")
            .nth(n)
            .unwrap()
            .0
    };
    assert!(
        err.contains(&format!(
            "three.json:{}: middle_name: unknown field `middle_name`",
            line_of(1)
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "three.json:{} (case LO-BAD-2): service_lines[0].units: 0 is not between 1 and 9999",
            line_of(2)
        )),
        "{err}"
    );
    assert!(stdout(&out).contains("3 record(s): 1 created"), "{}", stdout(&out));
}
