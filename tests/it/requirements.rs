//! "Is a pre-cert required?": the payers' requirement rules decide `new`
//! cases by code, code range, plan, setting and effective date, through the
//! one entry point (`Ledger::decide_requirement`); bad rules files are
//! refused with file:line; `precert rules explain` says why; the daemon
//! decides, on reload, a case the old rules left `new`.

use std::time::Duration;

use precert::case::CaseStatus;
use precert::requirements::{self, RuleBook};
use precert::store::Ledger;
use serde_json::{json, Value};

use super::postgres::{both_backends, Backend, TestDb};
use super::support::{stderr, stdout, Project};

/// The test payer's list: one rule per kind of condition, in an order where
/// the first match matters (the plan exemption above the imaging range).
const RULES: &str = r#"version: "T-1"
source: "test list"
rules:
  - id: plan-exempt
    plans: ["Sandbox Exempt Plan"]
    required: false
  - id: inpatient
    settings: [inpatient]
    required: true
  - id: imaging-range
    codes: ["70010-76499"]
    required: true
  - id: knee-scope
    codes: ["29881"]
    plan_types: [medicare_advantage]
    required: true
  - id: cpap-list
    codes_file: cpap.csv
    required: true
  - id: office-visit
    codes: ["99213"]
    required: false
"#;

/// CPAP joins the list on 2027-01-01.
const CPAP: &str = "code,from,until,description\nE0601,2027-01-01,,CPAP device\n";

/// The sample JSON case as `case_id`, changed by `edit`, with no
/// `precert_required`: the rules decide it.
fn case(p: &Project, case_id: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let text = std::fs::read_to_string(p.path("samples/cases.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    let mut c = all[0].clone();
    c["case_id"] = json!(case_id);
    c.as_object_mut().unwrap().remove("precert_required");
    edit(&mut c);
    c
}

fn code(c: &mut Value, code: &str) {
    c["service_lines"] = json!([{ "code": code, "units": 1 }]);
}

/// The cases of the story and the status each must end in.
fn cases(p: &Project) -> Vec<(Value, CaseStatus)> {
    vec![
        // By code: 29881 on a Medicare Advantage plan.
        (case(p, "R-CODE", |_| {}), CaseStatus::Ready),
        // The same code on a commercial plan: no rule covers it.
        (
            case(p, "R-CODE-COMMERCIAL", |c| {
                c["coverage"]["plan_type"] = json!("commercial")
            }),
            CaseStatus::New,
        ),
        // By range: 73721 is inside 70010-76499, 77001 is not.
        (case(p, "R-RANGE", |c| code(c, "73721")), CaseStatus::Ready),
        (case(p, "R-OUTSIDE", |c| code(c, "77001")), CaseStatus::New),
        // By plan: the exempt plan's rule comes first, so it decides.
        (
            case(p, "R-PLAN", |c| {
                code(c, "73721");
                c["coverage"]["plan"] = json!("Sandbox Exempt Plan");
            }),
            CaseStatus::NotRequired,
        ),
        // By setting: any inpatient stay.
        (
            case(p, "R-INPATIENT", |c| {
                code(c, "27447");
                c["setting"] = json!("inpatient");
            }),
            CaseStatus::Ready,
        ),
        // By effective date: E0601 is on the list from 2027-01-01, judged by
        // the service start date.
        (
            case(p, "R-CPAP-BEFORE", |c| {
                code(c, "E0601");
                c["service_start"] = json!("2026-12-31");
                c["service_end"] = json!("2026-12-31");
            }),
            CaseStatus::New,
        ),
        (
            case(p, "R-CPAP-FROM", |c| {
                code(c, "E0601");
                c["service_start"] = json!("2027-01-01");
                c["service_end"] = json!("2027-01-01");
            }),
            CaseStatus::Ready,
        ),
        // Every line not required: not required; one line required: required.
        (case(p, "R-OFFICE", |c| code(c, "99213")), CaseStatus::NotRequired),
        (
            case(p, "R-MIXED", |c| {
                c["service_lines"] = json!([{ "code": "99213", "units": 1 }, { "code": "73721", "units": 1 }]);
            }),
            CaseStatus::Ready,
        ),
    ]
}

fn write_rules(p: &Project, rules: &str) {
    p.write("playbooks/sandbox.requirements.yaml", rules);
    p.write("playbooks/cpap.csv", CPAP);
}

async fn status_of(ledger: &Ledger, case_ref: &str) -> CaseStatus {
    ledger.find("lakeside-ortho", case_ref).await.unwrap().unwrap().status
}

async fn requirement_event(ledger: &Ledger, case_ref: &str) -> Option<Value> {
    let case = ledger.find("lakeside-ortho", case_ref).await.unwrap().unwrap();
    ledger
        .events(case.id)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "requirement_decided")
        .map(|e| e.detail)
}

both_backends!(
    #[tokio::test]
    rules_decide_new_cases_by_code_range_plan_setting_and_effective_date
);
async fn rules_decide_new_cases_by_code_range_plan_setting_and_effective_date(backend: Backend) {
    let db = TestDb::new(backend).await;
    let p = &db.project;
    write_rules(p, RULES);
    let story = cases(p);
    let all: Vec<Value> = story.iter().map(|(c, _)| c.clone()).collect();
    p.write("samples/rules.json", &serde_json::to_string_pretty(&all).unwrap());
    let ledger = db.ledger().await;
    // Stored by a route that does not decide (the library's import), as an
    // API or a drop folder would: every case is `new`.
    let report = db.import(&ledger, "samples/rules.json").await;
    assert!(report.is_clean(), "{:?}", report.invalid);
    assert_eq!(report.undecided.len(), story.len());
    for (c, _) in &story {
        assert_eq!(
            status_of(&ledger, c["case_id"].as_str().unwrap()).await,
            CaseStatus::New
        );
    }

    let settings = p.settings();
    let (book, errors) = RuleBook::load_dir(&settings.playbooks_dir);
    assert!(errors.is_empty(), "{errors:?}");
    let pass = requirements::decide_new_cases(&ledger, &settings, &book, "lakeside-ortho", None)
        .await
        .unwrap();
    assert_eq!(pass.looked, story.len());
    assert_eq!((pass.required, pass.not_required, pass.undecided), (5, 2, 3));
    for (c, want) in &story {
        let r = c["case_id"].as_str().unwrap();
        assert_eq!(status_of(&ledger, r).await, *want, "{r}");
    }

    // The timeline cites the source, the file, its version, the rule, its
    // line and dates, and the code list's line that listed the code.
    let cpap = requirement_event(&ledger, "R-CPAP-FROM").await.unwrap();
    assert_eq!(cpap["source"], "rules");
    assert_eq!(cpap["required"], true);
    assert_eq!(cpap["version"], "T-1");
    assert_eq!(cpap["rule"], "cpap-list");
    assert_eq!(cpap["line"], 17, "{cpap}");
    assert_eq!(cpap["code"], "E0601");
    assert_eq!(cpap["listed_from"], "2027-01-01");
    assert_eq!(cpap["codes_file_line"], 2);
    assert!(
        cpap["codes_file"].as_str().unwrap().ends_with("playbooks/cpap.csv"),
        "{cpap}"
    );
    assert!(cpap["file"]
        .as_str()
        .unwrap()
        .ends_with("playbooks/sandbox.requirements.yaml"));
    let plan = requirement_event(&ledger, "R-PLAN").await.unwrap();
    assert_eq!(
        (plan["rule"].as_str(), plan["required"].as_bool()),
        (Some("plan-exempt"), Some(false))
    );
    let mixed = requirement_event(&ledger, "R-MIXED").await.unwrap();
    assert_eq!(mixed["rule"], "imaging-range", "the required line decides: {mixed}");
    assert_eq!(mixed["lines"].as_array().unwrap().len(), 2);
    assert!(requirement_event(&ledger, "R-OUTSIDE").await.is_none());

    // A second pass decides nothing more and changes nothing.
    let again = requirements::decide_new_cases(&ledger, &settings, &book, "lakeside-ortho", None)
        .await
        .unwrap();
    assert_eq!((again.looked, again.decided(), again.undecided), (3, 0, 3));
    // A pass after the last case read looks at nothing.
    let later = requirements::decide_new_cases(&ledger, &settings, &book, "lakeside-ortho", pass.last_id)
        .await
        .unwrap();
    assert_eq!(later.looked, 0);
    ledger.close().await;
}

#[tokio::test]
async fn the_import_decides_by_the_rules_and_explain_says_why() {
    let p = Project::new();
    write_rules(&p, RULES);
    let story = cases(&p);
    let all: Vec<Value> = story.iter().map(|(c, _)| c.clone()).collect();
    p.write("samples/rules.json", &serde_json::to_string_pretty(&all).unwrap());
    let out = p.precert(&["cases", "import", "samples/rules.json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("requirement rules: 7 case(s) decided (5 required, 2 not required); 3 need a decision"),
        "{}",
        stdout(&out)
    );
    let ledger = p.ledger().await;
    for (c, want) in &story {
        let r = c["case_id"].as_str().unwrap();
        assert_eq!(status_of(&ledger, r).await, *want, "{r}");
    }
    ledger.close().await;

    // The cases that need a decision, and only they.
    let out = p.precert(&["cases", "list", "--needs-decision"]);
    let list = stdout(&out);
    assert!(list.contains("3 case(s)"), "{list}");
    for r in ["R-CODE-COMMERCIAL", "R-OUTSIDE", "R-CPAP-BEFORE"] {
        assert!(list.contains(r), "{r} in {list}");
    }

    // Why E0601 before 2027 is left new: each rule's reason, none matches.
    let out = p.precert(&["rules", "explain", "lakeside-ortho/R-CPAP-BEFORE"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "version T-1, 6 rules, first match decides each line",
        "rule plan-exempt (line 4): no match: plan `Sandbox Advantage PPO` is not one of Sandbox Exempt Plan",
        "rule inpatient (line 7): no match: setting ambulatory_surgery is not one of inpatient",
        "rule imaging-range (line 10): no match: code E0601 is not among its codes",
        "rule cpap-list (line 17): no match: code E0601 is on its list (",
        "cpap.csv:2) from 2027-01-01, not on the service start 2026-12-31",
        "no rule matches this line",
        "verdict      needs a decision",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("SBX100200303"), "no member ID: {text}");

    // A decided case: the rule recorded in its timeline and the rule that
    // matches now, with the later rules not read.
    let out = p.precert(&["rules", "explain", "R-RANGE"]);
    let text = stdout(&out);
    for needle in [
        "recorded     required, decided by rules: rule imaging-range, version T-1",
        "rule plan-exempt (line 4): no match",
        "rule imaging-range (line 10): MATCHES → required (no effective dates, code listed as 70010-76499)",
        "3 later rules not read: the first match decides",
        "verdict      required by rule imaging-range (",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn a_bad_rules_file_is_refused_with_file_line_and_field() {
    let p = Project::new();
    let bad = RULES
        .replace("settings: [inpatient]", "settings: [inpatiant]")
        .replace(
            "codes: [\"70010-76499\"]",
            "codes: [\"76499-70010\", \"7372\"]\n    plan_type: [ma]",
        )
        .replace("  - id: office-visit", "  - id: inpatient");
    write_rules(&p, &bad);
    p.write(
        "playbooks/cpap.csv",
        "code,from,until\nE0601,2027-01-01,\nE0601X,2027-01-01,\nE0602,2027-02-30,\n",
    );
    p.write("playbooks/nosuch.requirements.yaml", "version: \"1\"\nrules: []\n");
    let out = p.precert(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let yaml = p.path("playbooks/sandbox.requirements.yaml").display().to_string();
    let csv = p.path("playbooks/cpap.csv").display().to_string();
    for needle in [
        format!("{yaml}:8:16: rules[1].settings[0]: `inpatiant` is not one of: outpatient, inpatient"),
        format!("{yaml}:11:13: rules[2].codes[0]: `76499-70010`: the range ends before it starts"),
        format!("{yaml}:11:28: rules[2].codes[1]: `7372` is neither a CPT code"),
        format!("{yaml}:12:5: unknown key `plan_type`; did you mean `plan_types`?"),
        format!("{yaml}:21:9: rules[5].id: `inpatient` is used by an earlier rule"),
        format!("{csv}:3:1: code: `E0601X` is neither a CPT code"),
        format!("{csv}:4:1: from: `2027-02-30` is not a date (YYYY-MM-DD)"),
        "no playbook `nosuch` for these rules".to_owned(),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    // The import still works; with the sandbox rules refused, the cases wait.
    p.write(
        "samples/one.json",
        &serde_json::to_string(&vec![case(&p, "R-1", |_| {})]).unwrap(),
    );
    let out = p.precert(&["cases", "import", "samples/one.json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("a requirement rules file with problems is not used"));
    assert!(stdout(&out).contains("0 case(s) decided"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_reload_with_changed_rules_decides_a_case_left_new() {
    let p = Project::new();
    // Rules that do not cover 29881 yet.
    write_rules(&p, &RULES.replace("codes: [\"29881\"]", "codes: [\"29880\"]"));
    p.write(
        "samples/one.json",
        &serde_json::to_string(&vec![case(&p, "R-LATER", |_| {})]).unwrap(),
    );
    let out = p.precert(&["cases", "import", "samples/one.json"]);
    assert!(stdout(&out).contains("1 need a decision"), "{}", stdout(&out));

    let port = super::daemon::free_port();
    let daemon = super::daemon::start_with(&p, port, false, "daemon", &[], &[]);
    // The start's pass read the case and left it new.
    wait_log(&daemon, "the start's pass", |log| {
        log.contains("Requirement rules applied to new cases.") && log.contains("needs_decision=1")
    })
    .await;
    let ledger = p.ledger().await;
    assert_eq!(status_of(&ledger, "R-LATER").await, CaseStatus::New);

    // The payer's new quarter covers it; a reload reads every new case again.
    write_rules(&p, &RULES.replace("version: \"T-1\"", "version: \"T-2\""));
    daemon.signal(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while status_of(&ledger, "R-LATER").await != CaseStatus::Ready {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not decided after the reload:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event = requirement_event(&ledger, "R-LATER").await.unwrap();
    assert_eq!(
        (event["rule"].as_str(), event["version"].as_str()),
        (Some("knee-scope"), Some("T-2"))
    );
    let case = ledger.find("lakeside-ortho", "R-LATER").await.unwrap().unwrap();
    let actors: Vec<String> = ledger
        .events(case.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "requirement_decided")
        .map(|e| e.actor)
        .collect();
    assert_eq!(actors, ["system:rules"]);
    ledger.close().await;

    // A rules file broken on reload is refused; the running rules stay.
    write_rules(&p, &RULES.replace("required: false", "required: maybe"));
    daemon.signal(libc::SIGHUP);
    wait_log(&daemon, "the refused reload", |log| log.contains("Reload refused")).await;
    assert!(daemon.log().contains("requirement rules:"), "{}", daemon.log());
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit(Duration::from_secs(60)).await.code(), Some(0));
}

/// Waits (bounded) until the daemon's log satisfies `done`.
async fn wait_log(daemon: &super::daemon::Daemon, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = daemon.log();
        if done(&log) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {what} in:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_console_worklist_marks_and_filters_the_cases_that_need_a_decision() {
    let p = Project::new();
    write_rules(&p, RULES);
    p.write(
        "samples/one.json",
        &serde_json::to_string(&vec![case(&p, "R-UNCOVERED", |c| code(c, "77001"))]).unwrap(),
    );
    assert!(p.precert(&["cases", "import", "samples/one.json"]).status.success());
    let w = super::console::world_with(p).await;
    let mut c = w.client();
    c.signed_in("sam").await;
    let new = c.get("/cases?status=new").await.text();
    assert!(new.contains("R-UNCOVERED"), "{new}");
    assert!(new.contains("new: needs a decision"), "{new}");
    assert!(!new.contains("LO-2026-1001"), "only the new cases: {new}");
    w.finish().await;
}
