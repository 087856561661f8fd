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
    assert!(err.contains("samples/typo.csv: unknown column `urgancy`"), "{err}");
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
            "three.json:{} (case LO-BAD-1): patient.middle_name: unknown field `middle_name`",
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

/// The columns of a full CSV case file, with the values of one valid case.
fn valid_row(case_id: &str) -> Vec<(&'static str, String)> {
    [
        ("practice_id", "lakeside-ortho"),
        ("case_id", case_id),
        ("patient_first_name", "Avery"),
        ("patient_last_name", "Marsh"),
        ("patient_birth_date", "1961-04-12"),
        ("patient_member_id", "SBX100200301"),
        ("patient_group_number", "GRP-4410"),
        ("coverage_payer", "sandbox"),
        ("coverage_plan", "Sandbox Advantage PPO"),
        ("coverage_plan_type", "medicare_advantage"),
        ("coverage_state", "IL"),
        ("requesting_provider_name", "Jordan Reyes, MD"),
        ("requesting_provider_npi", "1987654328"),
        ("requesting_provider_tax_id", "36-1234567"),
        ("requesting_provider_location", "main"),
        ("servicing_provider_name", "Lakeside Orthopedics Imaging"),
        ("servicing_provider_npi", "1555012347"),
        ("servicing_provider_tax_id", "36-1234567"),
        ("servicing_provider_location", "main"),
        ("service_lines", "73721-RT*1"),
        ("diagnoses", "M25.561;M17.11"),
        ("service_start", "2026-12-08"),
        ("service_end", "2026-12-08"),
        ("setting", "outpatient"),
        ("urgency", "standard"),
        ("attachments", "documents/knee-xray-report.pdf"),
        ("precert_required", "yes"),
        ("expected_amount", "1250.00"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

/// Hostile variants of a value: a non-ASCII letter, an emoji, a NUL inside
/// it, and 5 MB more of a two-byte letter.
const HOSTILE: [&str; 4] = ["non-ascii", "emoji", "nul", "5 MB"];

/// Stands for the 5 MB, put in after formatting: formatting megabytes in a
/// debug build is what would make these tests slow.
const PAD: &str = "@@5MB@@";

fn hostile(kind: &str, value: &str) -> String {
    let at = value.char_indices().nth(2).map_or(value.len(), |(i, _)| i);
    let (head, tail) = value.split_at(at);
    match kind {
        "non-ascii" => format!("{head}é{tail}"),
        "emoji" => format!("{head}🦀{tail}"),
        "nul" => format!("{head}\0{tail}"),
        _ => format!("{value}{PAD}"),
    }
}

fn pad(line: String) -> String {
    line.replacen(PAD, &"é".repeat(5 << 19), 1)
}

/// A CSV line, quoted where needed.
fn csv_line<'a>(fields: impl IntoIterator<Item = &'a str>) -> String {
    let quote = |f: &str| {
        if f.contains([',', '"', '\r', '\n']) {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_owned()
        }
    };
    fields.into_iter().map(quote).collect::<Vec<_>>().join(",") + "\n"
}

/// Fields where a non-ASCII letter or an emoji is still a valid value:
/// names, free text, the case ID and the member ID (taken as the payer
/// wrote it). Everything else is a code, a date, a keyword, a configured
/// name or a path, and any of the hostile values makes it invalid.
const TEXT_FIELDS: &[&str] = &[
    "case_id",
    "patient.first_name",
    "patient.last_name",
    "patient.member_id",
    "patient.group_number",
    "coverage.plan",
    "requesting_provider.name",
    "servicing_provider.name",
];

/// What the import said and stored, checked against what each record was.
struct Expected {
    /// (line, case ID or None when it is not a valid one, field as
    /// reported, whether the value is valid).
    records: Vec<(usize, Option<String>, String, bool)>,
}

impl Expected {
    fn check(&self, file: &std::path::Path, out: &std::process::Output, stored: &[String]) {
        assert_eq!(out.status.code(), Some(1), "some records are invalid: exit 1");
        let err = stderr(out);
        assert!(!err.contains("panicked"), "{}", &err[..err.len().min(4000)]);
        assert!(!err.contains('\0'), "a NUL is shown escaped, never raw");
        for line in err.lines() {
            assert!(
                line.len() < 1000,
                "a message of {} bytes: {}…",
                line.len(),
                &line[..200]
            );
        }
        let f = file.display().to_string();
        let valid = self.records.iter().filter(|r| r.3).count();
        let summary = format!(
            "{f}: {} record(s): {valid} created, 0 updated, 0 unchanged, {} invalid",
            self.records.len(),
            self.records.len() - valid
        );
        assert!(stdout(out).contains(&summary), "{summary:?} in {}", stdout(out));
        for (line, case_ref, field, ok) in &self.records {
            let case = case_ref.as_ref().map(|c| format!(" (case {c})")).unwrap_or_default();
            let prefix = format!("{f}:{line}{case}: {field}: ");
            assert_eq!(
                err.contains(&prefix),
                !ok,
                "line {line} ({field}) should be {}: {}",
                if *ok { "imported" } else { "reported" },
                err.lines()
                    .filter(|l| l.starts_with(&format!("{f}:{line}")))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            if let (true, Some(c)) = (ok, case_ref) {
                assert!(stored.contains(c), "{c} was valid and is not stored");
            }
        }
        assert_eq!(stored.len(), valid, "{stored:?}");
    }
}

async fn stored_refs(p: &Project) -> Vec<String> {
    let ledger = p.ledger().await;
    let cases = ledger.list(&CaseFilter::default()).await.unwrap();
    ledger.close().await;
    cases.into_iter().map(|c| c.data.case_ref).collect()
}

#[tokio::test]
async fn hostile_csv_values_in_every_column_are_reported_by_line_and_field_and_the_rest_imported() {
    let p = Project::new();
    let mut csv = csv_line(valid_row("").iter().map(|(k, _)| *k));
    let mut expected = Expected { records: Vec::new() };
    let mut push = |row: Vec<(&str, String)>, field: &str, ok: bool| {
        let case_id = &row[1].1;
        let case_ref = (!case_id.contains(['\0', '@']) && case_id.chars().count() <= 64).then(|| case_id.clone());
        csv.push_str(&pad(csv_line(row.iter().map(|(_, v)| v.as_str()))));
        expected
            .records
            .push((expected.records.len() + 2, case_ref, field.to_owned(), ok));
    };
    push(valid_row("H-000"), "", true);
    // The value that once made the importer panic, and every record after
    // it vanish.
    let mut m2ex = valid_row("H-001");
    m2ex[20].1 = "M17.11;M2éX".into();
    push(m2ex, "diagnoses", false);
    for column in 0..valid_row("").len() {
        for kind in HOSTILE {
            let mut row = valid_row(&format!("H-{column:02}-{}", kind.replace(' ', "")));
            let name = row[column].0;
            row[column].1 = hostile(kind, &row[column].1);
            let json_name = name
                .replacen("patient_", "patient.", 1)
                .replacen("coverage_", "coverage.", 1)
                .replacen("provider_", "provider.", 1);
            let ok = matches!(kind, "non-ascii" | "emoji") && TEXT_FIELDS.contains(&json_name.as_str());
            push(row, name, ok);
        }
    }
    let file = p.path("samples/hostile.csv");
    std::fs::write(&file, csv).unwrap();

    let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
    let stored = stored_refs(&p).await;
    expected.check(&file, &out, &stored);
    let err = stderr(&out);
    let f = file.display();
    for needle in [
        format!("{f}:3 (case H-001): diagnoses: entry 2: `M2éX` is not an ICD-10-CM code"),
        format!("{f}:4 (case H-00-non-ascii): practice_id: `laékeside-ortho` is not a configured practice"),
        format!("{f}:6 (case H-00-nul): practice_id: `la\\0keside-ortho` is not a configured practice"),
        format!(
            "{f}:7 (case H-00-5MB): practice_id: `lakeside-ortho{}…` ({} bytes) is not a configured practice",
            "é".repeat(26),
            "lakeside-ortho".len() + (5 << 20)
        ),
        format!("{f}:15 (case H-02-5MB): patient_first_name: must be at most 100 characters"),
    ] {
        assert!(
            err.contains(&needle),
            "missing {needle:?} in:\n{}",
            &err[..err.len().min(6000)]
        );
    }
    // A name in any script is a name.
    let ledger = p.ledger().await;
    let case = ledger.find("lakeside-ortho", "H-02-emoji").await.unwrap().unwrap();
    assert_eq!(case.data.patient.name.expose_given(), "Av🦀ery");
    ledger.close().await;
}

#[tokio::test]
async fn hostile_json_values_in_every_field_are_reported_by_line_and_field_and_the_rest_imported() {
    let p = Project::new();
    let text = std::fs::read_to_string(p.path("samples/cases.json")).unwrap();
    let sample: serde_json::Value = serde_json::from_str(&text).unwrap();
    let base = &sample[0];
    // Every leaf of the sample record, as a JSON pointer and the field name
    // an error about it carries.
    let leaves: Vec<(String, String)> = {
        fn walk(v: &serde_json::Value, pointer: String, field: String, out: &mut Vec<(String, String)>) {
            match v {
                serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| {
                    let f = if field.is_empty() {
                        k.clone()
                    } else {
                        format!("{field}.{k}")
                    };
                    walk(v, format!("{pointer}/{k}"), f, out)
                }),
                serde_json::Value::Array(a) => a
                    .iter()
                    .enumerate()
                    .for_each(|(i, v)| walk(v, format!("{pointer}/{i}"), format!("{field}[{i}]"), out)),
                _ => out.push((pointer, field)),
            }
        }
        let mut out = Vec::new();
        walk(base, String::new(), String::new(), &mut out);
        out
    };
    assert!(leaves.len() >= 25, "{leaves:?}");
    let mut records = Vec::new();
    let mut expected = Expected { records: Vec::new() };
    let mut push = |record: serde_json::Value, field: &str, ok: bool| {
        let case_id = record["case_id"].as_str().unwrap().to_owned();
        let case_ref = (!case_id.contains(['\0', '@']) && case_id.chars().count() <= 64).then_some(case_id);
        records.push(pad(serde_json::to_string(&record).unwrap()));
        expected
            .records
            .push((records.len() + 1, case_ref, field.to_owned(), ok));
    };
    let with_id = |id: &str| {
        let mut r = base.clone();
        r["case_id"] = id.into();
        r
    };
    push(with_id("J-000"), "", true);
    for (n, (pointer, field)) in leaves.iter().enumerate() {
        for kind in HOSTILE {
            let mut record = with_id(&format!("J-{n:02}-{}", kind.replace(' ', "")));
            let leaf = record.pointer_mut(pointer).unwrap();
            let value = match &*leaf {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            *leaf = hostile(kind, &value).into();
            // Modifiers are checked as a list, the rest where they are.
            let reported = field.replace(".modifiers[0]", ".modifiers");
            let ok = matches!(kind, "non-ascii" | "emoji") && TEXT_FIELDS.contains(&field.as_str());
            push(record, &reported, ok);
        }
    }
    let file = p.path("samples/hostile.json");
    std::fs::write(&file, format!("[\n{}\n]\n", records.join(",\n"))).unwrap();

    let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
    let stored = stored_refs(&p).await;
    expected.check(&file, &out, &stored);
    let err = stderr(&out);
    assert!(
        err.contains("service_lines[0].units: invalid type: string \"1\\0\", expected u32 (line "),
        "{}",
        &err[..err.len().min(6000)]
    );
}

#[test]
fn line_numbers_are_right_with_crlf_and_cr_line_ends() {
    let p = Project::new();
    let sample = std::fs::read_to_string(p.path("samples/cases.csv")).unwrap();
    let json = std::fs::read_to_string(p.path("samples/cases.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&json).unwrap();
    for end in ["\r\n", "\r", "\n"] {
        let name = match end {
            "\r\n" => "crlf",
            "\r" => "cr",
            _ => "lf",
        };
        // LO-2026-1001 (line 2) has a line break inside a quoted name: two
        // lines, and an invalid name. LO-2026-1003 is therefore on line 5.
        let rows: Vec<String> = sample
            .lines()
            .map(|row| match &row[..row.len().min(30)] {
                r if r.contains("LO-2026-1001") => row.replace("Jordan Reyes, MD", &format!("Jordan{end}Reyes, MD")),
                r if r.contains("LO-2026-1003") => row.replace("1987654328", "1987654320"),
                _ => row.to_owned(),
            })
            .collect();
        let file = p.write(&format!("samples/{name}.csv"), &(rows.join(end) + end));
        let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let (err, f) = (stderr(&out), file.display());
        let shown = end.replace('\r', "\\r").replace('\n', "\\n");
        for needle in [
            format!(
                "{f}:2 (case LO-2026-1001): requesting_provider_name: `Jordan{shown}Reyes, MD` has a control character"
            ),
            format!("{f}:5 (case LO-2026-1003): requesting_provider_npi: `1987654320` fails the NPI check digit"),
        ] {
            assert!(err.contains(&needle), "{name}: missing {needle:?} in:\n{err}");
        }

        // JSON: the third record of a pretty-printed array.
        let mut records = vec![base[0].clone(), base[0].clone(), base[0].clone()];
        for (i, r) in records.iter_mut().enumerate() {
            r["case_id"] = format!("EOL-{i}").into();
        }
        records[2]["servicing_provider"]["npi"] = "1234567890".into();
        let pretty = serde_json::to_string_pretty(&serde_json::Value::Array(records)).unwrap();
        let lines: Vec<&str> = pretty.lines().collect();
        let case_id_at = lines.iter().position(|l| l.contains("EOL-2")).unwrap();
        let line = 1 + (0..case_id_at).rev().find(|&i| lines[i] == "  {").unwrap();
        let file = p.write(&format!("samples/{name}.json"), &pretty.replace('\n', end));
        let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
        let err = stderr(&out);
        let needle = format!(
            "{}:{line} (case EOL-2): servicing_provider.npi: `1234567890` fails the NPI check digit",
            file.display()
        );
        assert!(err.contains(&needle), "{name}: missing {needle:?} in:\n{err}");
    }
}

#[tokio::test]
async fn a_case_twice_in_one_file_keeps_the_first_and_reports_the_later_one() {
    let p = Project::new();
    let sample = std::fs::read_to_string(p.path("samples/cases.csv")).unwrap();
    let rows: Vec<&str> = sample.lines().collect();
    let text = [
        rows[0].to_owned(),
        rows[1].to_owned(),                                // line 2: LO-2026-1001
        rows[2].to_owned(),                                // line 3: LO-2026-1002
        rows[1].replace("Avery,Marsh", "Morgan,Quist"),    // line 4: LO-2026-1001 again
        rows[4].replace("VI-88120", "LO-2026-1001"),       // line 5: another practice's case
        rows[1].replace("LO-2026-1001", " LO-2026-1001 "), // line 6: the same, padded
    ]
    .join("\n");
    let file = p.write("samples/twice.csv", &text);
    let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "a repeated case is an invalid record");
    let (err, f) = (stderr(&out), file.display());
    for line in [4, 6] {
        let needle = format!(
            "{f}:{line} (case LO-2026-1001): case_id: repeats the case at line 2 (same practice and case ID); this record was not imported"
        );
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    assert!(
        !err.contains(&format!("{f}:5")),
        "another practice's case of that ID is its own: {err}"
    );
    assert!(
        stdout(&out).contains("5 record(s): 3 created, 0 updated, 0 unchanged, 2 invalid"),
        "{}",
        stdout(&out)
    );
    let ledger = p.ledger().await;
    let first = ledger.find("lakeside-ortho", "LO-2026-1001").await.unwrap().unwrap();
    assert_eq!(
        first.data.patient.name.expose_given(),
        "Avery",
        "the first record stays as imported"
    );
    assert!(ledger.find("valley-imaging", "LO-2026-1001").await.unwrap().is_some());
    ledger.close().await;

    // JSON too, and a repeat is reported even when the first record could
    // not be read (the file is ambiguous either way).
    let json = std::fs::read_to_string(p.path("samples/cases.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut unreadable = base[0].clone();
    unreadable["case_id"] = "LO-TWICE".into();
    unreadable["patient"]["middle_name"] = "X".into();
    let mut again = base[0].clone();
    again["case_id"] = "LO-TWICE".into();
    let text = format!("[\n{},\n{}\n]\n", unreadable, again);
    let file = p.write("samples/twice.json", &text);
    let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
    let (err, f) = (stderr(&out), file.display());
    assert!(
        err.contains(&format!(
            "{f}:2 (case LO-TWICE): patient.middle_name: unknown field `middle_name`"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{f}:3 (case LO-TWICE): case_id: repeats the case at line 2")),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_utf8_is_refused_once_saying_where() {
    let p = Project::new();
    let mut bytes = std::fs::read(p.path("samples/cases.csv")).unwrap();
    // A Latin-1 export: `é` as the single byte 0xE9, in Okafor on line 3.
    let at = bytes.windows(6).position(|w| w == b"Okafor").unwrap() + 2;
    bytes[at] = 0xe9;
    let line_start = bytes[..at].iter().rposition(|b| *b == b'\n').unwrap() + 1;
    let column = at - line_start + 1;
    let file = p.path("samples/latin1.csv");
    std::fs::write(&file, &bytes).unwrap();
    let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a file that cannot be read as text is refused whole"
    );
    let err = stderr(&out);
    let needle = format!(
        "{}: is not UTF-8: the byte 0xE9 at offset {at} (line 3, column {column})",
        file.display()
    );
    assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    assert_eq!(err.matches("is not UTF-8").count(), 1, "said once: {err}");
    let out = p.precert(&["cases", "list"]);
    assert!(stdout(&out).contains("0 case(s)"), "nothing was imported");

    let out = p.precert(&["cases", "import", "samples/missing.csv"]);
    let err = stderr(&out);
    assert!(err.contains("samples/missing.csv: cannot read: No such file"), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "said once: {err}");
}

#[tokio::test]
async fn a_json_file_of_20_000_cases_is_read_in_one_pass_with_every_line_right() {
    // Each record's line used to be counted from the start of the file,
    // which made the import quadratic (2 500 records: minutes). This file
    // would not finish that way; its records are checked line by line. Most
    // are invalid so that every line shows up in a message, and so that the
    // test measures reading rather than the ledger.
    const N: usize = 20_000;
    let p = Project::new();
    let json = std::fs::read_to_string(p.path("samples/cases.json")).unwrap();
    let mut base: serde_json::Value = serde_json::from_str::<serde_json::Value>(&json).unwrap()[0].clone();
    base["attachments"] = serde_json::json!([]);
    let mut text = String::from("[\n");
    let mut expected = Vec::new();
    let mut line = 2;
    for i in 0..N {
        let mut record = base.clone();
        record["case_id"] = format!("BULK-{i:05}").into();
        if i % 100 != 0 {
            record["requesting_provider"]["npi"] = "1987654320".into();
            expected.push(format!(
                "{line} (case BULK-{i:05}): requesting_provider.npi: `1987654320` fails the NPI check digit"
            ));
        }
        let pretty = serde_json::to_string_pretty(&record).unwrap();
        line += pretty.lines().count();
        text.push_str(&pretty);
        text.push_str(if i + 1 < N { ",\r\n" } else { "\r\n]\r\n" });
    }
    let file = p.write("samples/bulk.json", &text);
    let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!(
            "{N} record(s): 200 created, 0 updated, 0 unchanged, {} invalid",
            N - 200
        )),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    let prefix = format!("{}:", file.display());
    let reported: std::collections::HashSet<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|l| &l[..l.find(" (expected").unwrap_or(l.len())])
        .collect();
    assert_eq!(reported.len(), N - 200);
    for e in &expected {
        assert!(reported.contains(e.as_str()), "missing {e:?}");
    }
    let ledger = p.ledger().await;
    assert_eq!(ledger.list(&CaseFilter::default()).await.unwrap().len(), 200);
    ledger.close().await;
}

#[tokio::test]
async fn an_expected_amount_is_kept_exactly_and_a_bad_one_refused_by_line_and_field() {
    let p = Project::new();
    let csv = |amounts: &[(&str, &str)]| {
        let mut text = csv_line(valid_row("").iter().map(|(k, _)| *k));
        for (case_id, amount) in amounts {
            let mut row = valid_row(case_id);
            row.last_mut().unwrap().1 = (*amount).into();
            text.push_str(&csv_line(row.iter().map(|(_, v)| v.as_str())));
        }
        text
    };
    let mut amounts = [
        ("AMT-1", "1250.00"),  // line 2
        ("AMT-2", ""),         // line 3: unknown
        ("AMT-3", "-5.00"),    // line 4
        ("AMT-4", "12.345"),   // line 5
        ("AMT-5", "twelve"),   // line 6
        ("AMT-6", "25000000"), // line 7
        ("AMT-7", "$980.5"),   // line 8
    ];
    let file = p.write("samples/amounts.csv", &csv(&amounts));
    let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let (err, f) = (stderr(&out), file.display());
    for needle in [
        format!("{f}:4 (case AMT-3): expected_amount: `-5.00` is negative; an expected amount is 0 or more"),
        format!("{f}:5 (case AMT-4): expected_amount: `12.345` has more than 2 decimals"),
        format!("{f}:6 (case AMT-5): expected_amount: `twelve` is not an amount in US dollars"),
        format!("{f}:7 (case AMT-6): expected_amount: `25000000` is more than 10000000.00"),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    assert!(
        stdout(&out).contains("7 record(s): 3 created, 0 updated, 0 unchanged, 4 invalid"),
        "{}",
        stdout(&out)
    );
    let cents = |c: &precert::case::CaseRecord| c.data.expected_amount.map(|a| a.cents());
    let ledger = p.ledger().await;
    let mut stored = Vec::new();
    for case_id in ["AMT-1", "AMT-2", "AMT-7"] {
        let case = ledger.find("lakeside-ortho", case_id).await.unwrap().unwrap();
        stored.push((case_id, cents(&case)));
    }
    assert_eq!(
        stored,
        [("AMT-1", Some(125_000)), ("AMT-2", None), ("AMT-7", Some(98_050))],
        "exact cents; an empty cell is unknown, not zero"
    );
    ledger.close().await;

    // An amount taken away, or given later, is a change the case's
    // timeline names.
    amounts[0].1 = "";
    amounts[1].1 = "75.25";
    let file = p.write("samples/amounts.csv", &csv(&amounts));
    let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("0 created, 2 updated, 1 unchanged, 4 invalid"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let ledger = p.ledger().await;
    for (case_id, want) in [("AMT-1", None), ("AMT-2", Some(7_525))] {
        let case = ledger.find("lakeside-ortho", case_id).await.unwrap().unwrap();
        assert_eq!(cents(&case), want, "{case_id}");
        let last = ledger.events(case.id).await.unwrap().pop().unwrap();
        assert_eq!(
            last.detail["changed"],
            serde_json::json!(["expected_amount"]),
            "{case_id}"
        );
    }
    ledger.close().await;

    // JSON: a string, or a number read as the decimal it is written as.
    let json = std::fs::read_to_string(p.path("samples/cases.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&json).unwrap();
    let record = |case_id: &str, amount: serde_json::Value| {
        let mut r = base[0].clone();
        r["case_id"] = case_id.into();
        r["expected_amount"] = amount;
        r.to_string()
    };
    let text = [
        "[".to_owned(),
        record("AMJ-1", serde_json::json!("3400.00")) + ",",
        record("AMJ-2", serde_json::json!(1250.1)) + ",",
        record("AMJ-3", serde_json::json!(12.345)) + ",",
        record("AMJ-4", serde_json::json!(true)) + ",",
        record("AMJ-5", serde_json::Value::Null),
        "]".to_owned(),
    ]
    .join("\n");
    let file = p.write("samples/amounts.json", &text);
    let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
    let (err, f) = (stderr(&out), file.display());
    assert!(
        err.contains(&format!(
            "{f}:4 (case AMJ-3): expected_amount: `12.345` has more than 2 decimals"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:5 (case AMJ-4): expected_amount: invalid type: boolean `true`, expected an amount in US dollars"
        )),
        "{err}"
    );
    assert!(
        stdout(&out).contains("5 record(s): 3 created, 0 updated, 0 unchanged, 2 invalid"),
        "{}",
        stdout(&out)
    );
    let ledger = p.ledger().await;
    let mut stored = Vec::new();
    for case_id in ["AMJ-1", "AMJ-2", "AMJ-5"] {
        let case = ledger.find("lakeside-ortho", case_id).await.unwrap().unwrap();
        stored.push((case_id, cents(&case)));
    }
    assert_eq!(
        stored,
        [("AMJ-1", Some(340_000)), ("AMJ-2", Some(125_010)), ("AMJ-5", None)]
    );
    ledger.close().await;
}
