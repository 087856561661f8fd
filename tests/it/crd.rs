//! Da Vinci CRD against the sandbox payer's CDS Hooks service: `new` cases
//! asked by `precert crd ask` and by the daemon's submit job, decided
//! through the ledger's one requirement path with the answer kept as
//! evidence; the request checked by the independent FHIR validator; a
//! service that is down (asked again later, nothing decided) and answers
//! that break the specifications (PAS and CRD), through the real client.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use precert::case::CaseStatus;
use precert::store::Ledger;
use precert_sandbox::{HazardsPatch, OffSpec, Sandbox, SandboxConfig, SandboxHandle};
use serde_json::Value;

use super::support::{stderr, stdout, Project, REPO};

const HEADER: &str = "practice_id,case_id,patient_first_name,patient_last_name,patient_birth_date,patient_member_id,patient_group_number,coverage_payer,coverage_plan,coverage_plan_type,coverage_state,requesting_provider_name,requesting_provider_npi,requesting_provider_location,servicing_provider_name,servicing_provider_npi,servicing_provider_location,service_lines,diagnoses,service_start,service_end,setting,urgency,attachments,precert_required";

/// A Lakeside case for the sandbox's PAS/CRD binding; `required` empty
/// leaves it `new` (no rule decided it).
fn row(case: &str, member: &str, lines: &str, required: &str) -> String {
    format!(
        "lakeside-ortho,{case},Avery,Marsh,1961-04-12,{member},GRP-4410,sandbox-pas,Sandbox Advantage PPO,medicare_advantage,IL,\"Jordan Reyes, MD\",1987654328,main,Lakeside Orthopedics Imaging,1555012347,main,{lines},M25.561;M17.11,2026-12-20,2026-12-20,outpatient,standard,,{required}"
    )
}

/// A project whose Lakeside `sandbox-pas` binding talks to `sandbox`, with
/// the cases imported.
fn project(sandbox: &SandboxHandle, rows: &[String]) -> Project {
    let p = Project::new();
    let path = p.path("config/practices/lakeside-ortho.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "[payers.sandbox-pas]\n",
        &format!("[payers.sandbox-pas]\nbase_url = \"{}\"\n", sandbox.base_url()),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let file = p.write("crd-cases.csv", &format!("{HEADER}\n{}\n", rows.join("\n")));
    let out = p.precert(&["cases", "import", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    p
}

fn two_cases() -> Vec<String> {
    vec![
        // MRI knee: the sandbox's CRD says auth-needed.
        row("LO-CRD-1", "SBX100200301", "73721-RT*1", ""),
        // Knee X-ray: no-auth.
        row("LO-CRD-2", "SBX100200302", "73560*1", ""),
    ]
}

async fn start() -> SandboxHandle {
    Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap()
}

async fn status(ledger: &Ledger, case: &str) -> CaseStatus {
    ledger.find("lakeside-ortho", case).await.unwrap().unwrap().status
}

/// The case's events of `kind` whose detail names the `crd` channel.
async fn crd_events(ledger: &Ledger, case: &str, kind: &str) -> Vec<Value> {
    let c = ledger.find("lakeside-ortho", case).await.unwrap().unwrap();
    ledger
        .events(c.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind && e.detail["channel"] == "crd")
        .map(|e| e.detail)
        .collect()
}

/// The evidence an event cites: kept 0600, its SHA-256 as the event says,
/// a CDS Hooks answer.
fn check_evidence(p: &Project, detail: &Value) {
    let rel = detail["evidence"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no evidence: {detail}"));
    let path = p.settings().data_dir.join(rel);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600,
        "{}",
        path.display()
    );
    assert_eq!(detail["evidence"]["sha256"], precert::files::sha256_hex(&bytes));
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(v["cards"].is_array(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_says_auth_needed_for_one_case_and_no_auth_for_another_and_both_move() {
    let sandbox = start().await;
    let p = project(&sandbox, &two_cases());
    let ledger = p.ledger().await;
    assert_eq!(status(&ledger, "LO-CRD-1").await, CaseStatus::New);

    let out = p.precert(&["crd", "ask", "lakeside-ortho/LO-CRD-1"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("CRD says required → ready"), "{}", stdout(&out));
    let out = p.precert(&["crd", "ask", "lakeside-ortho/LO-CRD-2"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("CRD says not_required → not_required"),
        "{}",
        stdout(&out)
    );

    assert_eq!(status(&ledger, "LO-CRD-1").await, CaseStatus::Ready);
    assert_eq!(status(&ledger, "LO-CRD-2").await, CaseStatus::NotRequired);
    for (case, pa, required) in [("LO-CRD-1", "auth-needed", true), ("LO-CRD-2", "no-auth", false)] {
        let decided = crd_events(&ledger, case, "requirement_decided").await;
        assert_eq!(decided.len(), 1, "{case}: {decided:?}");
        let d = &decided[0];
        assert_eq!(d["source"], "crd");
        assert_eq!(d["required"], required);
        assert_eq!(d["pa_needed"], serde_json::json!([pa]), "{d}");
        assert_eq!(d["covered"], serde_json::json!(["covered"]), "{d}");
        assert_eq!(d["coverage_assertion_ids"].as_array().unwrap().len(), 1, "{d}");
        assert!(
            d["hook_instance"].is_string() && d["service"] == "sandbox-crd-order-sign",
            "{d}"
        );
        check_evidence(&p, d);
        // Minimum necessary: the timeline cites codes and the payer's
        // assertion, never the member.
        assert!(!d.to_string().contains("SBX1002003"), "{d}");
    }
    let d = &crd_events(&ledger, "LO-CRD-1", "requirement_decided").await[0];
    assert_eq!(d["doc_needed"], serde_json::json!(["clinical"]), "{d}");
    // Nothing was asked with the member in a URL.
    for e in sandbox.request_log() {
        assert!(!e.path.contains("SBX"), "{}", e.path);
    }
    // A case that is no longer new is not asked again.
    let out = p.precert(&["crd", "ask", "lakeside-ortho/LO-CRD-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("only a new case is asked"), "{}", stderr(&out));
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_answer_leaves_the_case_new_with_the_reason_and_a_payer_it_cannot_reach_decides_nothing() {
    let sandbox = start().await;
    // MRI lumbar: the sandbox's CRD says conditional.
    let p = project(&sandbox, &[row("LO-CRD-3", "SBX100200301", "72148*1", "")]);
    let ledger = p.ledger().await;

    // The payer fails every request: asked, retried within the policy,
    // then given up with nothing written.
    sandbox
        .set_hazards(HazardsPatch {
            error_rate: Some(1.0),
            ..Default::default()
        })
        .unwrap();
    let out = p.precert(&["crd", "ask", "lakeside-ortho/LO-CRD-3"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("could not be asked"), "{}", stderr(&out));
    assert_eq!(status(&ledger, "LO-CRD-3").await, CaseStatus::New);
    let c = ledger.find("lakeside-ortho", "LO-CRD-3").await.unwrap().unwrap();
    assert!(precert::crd::due(&ledger, &c).await.unwrap(), "still to be asked");
    assert_eq!(
        ledger.events(c.id).await.unwrap().len(),
        1,
        "only the import: a failed call writes nothing"
    );

    sandbox
        .set_hazards(HazardsPatch {
            error_rate: Some(0.0),
            ..Default::default()
        })
        .unwrap();
    let out = p.precert(&["crd", "ask", "lakeside-ortho/LO-CRD-3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("CRD says undecided"), "{}", stdout(&out));
    assert_eq!(status(&ledger, "LO-CRD-3").await, CaseStatus::New);
    let notes = crd_events(&ledger, "LO-CRD-3", "note").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["result"], "undecided");
    assert!(
        notes[0]["note"]
            .as_str()
            .unwrap()
            .contains("72148: pa-needed `conditional`"),
        "{}",
        notes[0]
    );
    check_evidence(&p, &notes[0]);
    // Answered once: the daemon does not ask again until the case changes.
    let c = ledger.find("lakeside-ortho", "LO-CRD-3").await.unwrap().unwrap();
    assert!(!precert::crd::due(&ledger, &c).await.unwrap());
    sandbox.shutdown().await;
}

// ---- The request, checked independently ---------------------------------

fn validator_python() -> PathBuf {
    let p = std::env::var_os("PRECERT_FHIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target/fhir-venv/bin/python"));
    assert!(p.exists(), "the FHIR validator is not installed at {}", p.display());
    p
}

fn validate_crd(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(validator_python())
        .arg(Path::new(REPO).join("tests/fhir_validate.py"))
        .arg("--crd")
        .args(files)
        .output()
        .unwrap();
    (out.status.success(), stderr(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_request_is_valid_fhir_to_an_independent_validator() {
    let sandbox = start().await;
    let p = project(
        &sandbox,
        &[
            row("LO-CRD-1", "SBX100200301", "73721-RT*1", ""),
            // Two lines, one of them equipment (a DeviceRequest).
            row("LO-CRD-4", "SBX100200302", "73560*1;E0601*1", ""),
        ],
    );
    let mut files = Vec::new();
    for case in ["lakeside-ortho/LO-CRD-1", "lakeside-ortho/LO-CRD-4"] {
        let out = p.precert(&["crd", "request", case]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["hook"], "order-sign");
        files.push(p.write(&format!("out/{}.json", case.replace('/', "-")), &stdout(&out)));
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&files[1]).unwrap()).unwrap();
    let kinds: Vec<&str> = v["context"]["draftOrders"]["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ServiceRequest", "DeviceRequest"]);
    let (ok, problems) = validate_crd(&files);
    assert!(ok, "{problems}");

    // Not a rubber stamp: a dangling reference and a wrong element fail.
    let mut broken = v.clone();
    broken["context"]["draftOrders"]["entry"][0]["resource"]["subject"]["reference"] = "Patient/nobody".into();
    broken["prefetch"]["patient"]["birthDate"] = 19610412.into();
    let bad = p.write("out/broken.json", &broken.to_string());
    let (ok, problems) = validate_crd(&[bad]);
    assert!(
        !ok && problems.contains("Patient/nobody") && problems.contains("birthDate"),
        "{problems}"
    );
    sandbox.shutdown().await;
}

// ---- Off-spec answers -----------------------------------------------------

fn off_spec(sandbox: &SandboxHandle, how: OffSpec) {
    sandbox
        .set_hazards(HazardsPatch {
            off_spec: Some(how),
            ..Default::default()
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_off_spec_crd_answer_is_used_when_tied_to_the_order_and_sent_to_a_person_when_not() {
    let sandbox = start().await;
    let p = project(&sandbox, &two_cases());
    let ledger = p.ledger().await;

    off_spec(&sandbox, OffSpec::MissingElements);
    let out = p.precert(&["crd", "ask", "lakeside-ortho/LO-CRD-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: lakeside-ortho/LO-CRD-1: the payer's answer is off-spec"),
        "{}",
        stderr(&out)
    );
    assert_eq!(status(&ledger, "LO-CRD-1").await, CaseStatus::Ready);
    let bad = crd_events(&ledger, "LO-CRD-1", "payer_nonconformant").await;
    assert_eq!(bad.len(), 1);
    let problems = bad[0]["problems"].to_string();
    for missing in ["indicator", "source.label", "`date`", "`coverage-assertion-id`"] {
        assert!(problems.contains(missing), "{missing}: {problems}");
    }
    check_evidence(&p, &bad[0]);

    off_spec(&sandbox, OffSpec::Untied);
    let out = p.precert(&["crd", "ask", "lakeside-ortho/LO-CRD-2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(status(&ledger, "LO-CRD-2").await, CaseStatus::NeedsAttention);
    let c = ledger.find("lakeside-ortho", "LO-CRD-2").await.unwrap().unwrap();
    let events = ledger.events(c.id).await.unwrap();
    let moved = events
        .iter()
        .find(|e| e.to_status == Some(CaseStatus::NeedsAttention))
        .unwrap();
    assert!(
        moved.detail.to_string().contains("cannot be tied to this request"),
        "{:?}",
        moved.detail
    );
    assert!(crd_events(&ledger, "LO-CRD-2", "requirement_decided").await.is_empty());
    assert_eq!(crd_events(&ledger, "LO-CRD-2", "payer_nonconformant").await.len(), 1);
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_off_spec_pas_answer_is_decided_when_it_names_the_request_and_needs_attention_when_not() {
    let sandbox = start().await;
    // Already required: CPAP (approved at once) twice, and a knee MRI.
    let p = project(
        &sandbox,
        &[
            row("LO-OFF-1", "SBX100200301", "E0601*1", "yes"),
            row("LO-OFF-2", "SBX100200302", "E0601*1", "yes"),
            // Knee MRI: pended, approved 20 s later.
            row("LO-OFF-3", "SBX100200303", "73721*1", "yes"),
        ],
    );
    let ledger = p.ledger().await;

    off_spec(&sandbox, OffSpec::MissingElements);
    let out = p.precert(&["run", "sandbox-pas", "submit", "--case", "lakeside-ortho/LO-OFF-1"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(status(&ledger, "LO-OFF-1").await, CaseStatus::Approved);
    let c = ledger.find("lakeside-ortho", "LO-OFF-1").await.unwrap().unwrap();
    assert!(c.decision.unwrap().auth_number.is_some());
    let events = ledger.events(c.id).await.unwrap();
    let bad: Vec<&Value> = events
        .iter()
        .filter(|e| e.kind == "payer_nonconformant")
        .map(|e| &e.detail)
        .collect();
    assert_eq!(bad.len(), 1, "{events:?}");
    let problems = bad[0]["problems"].to_string();
    for missing in [
        "Bundle.timestamp is missing",
        "entry[0].fullUrl is missing",
        "entry[0].resource.resourceType is missing",
        "ClaimResponse.patient",
    ] {
        assert!(problems.contains(missing), "{missing}: {problems}");
    }

    // A pended request polled while the payer stays off-spec: the same
    // problems again on an unchanged case add nothing; the decision does.
    let out = p.precert(&["run", "sandbox-pas", "submit", "--case", "lakeside-ortho/LO-OFF-3"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(status(&ledger, "LO-OFF-3").await, CaseStatus::Pending);
    let nonconformant = || async {
        let c = ledger.find("lakeside-ortho", "LO-OFF-3").await.unwrap().unwrap();
        let events = ledger.events(c.id).await.unwrap();
        events.iter().filter(|e| e.kind == "payer_nonconformant").count()
    };
    assert_eq!(nonconformant().await, 1);
    let poll = || p.precert(&["run", "sandbox-pas", "poll_status", "--case", "lakeside-ortho/LO-OFF-3"]);
    let out = poll();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(status(&ledger, "LO-OFF-3").await, CaseStatus::Pending);
    assert_eq!(nonconformant().await, 1, "an unchanged poll records nothing new");
    sandbox.advance_clock(Duration::from_secs(30));
    let out = poll();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(status(&ledger, "LO-OFF-3").await, CaseStatus::Approved);
    assert_eq!(nonconformant().await, 2);

    off_spec(&sandbox, OffSpec::Untied);
    let out = p.precert(&["run", "sandbox-pas", "submit", "--case", "lakeside-ortho/LO-OFF-2"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(status(&ledger, "LO-OFF-2").await, CaseStatus::NeedsAttention);
    let c = ledger.find("lakeside-ortho", "LO-OFF-2").await.unwrap().unwrap();
    assert!(c.decision.is_none(), "an answer that names no request decides nothing");
    let events = ledger.events(c.id).await.unwrap();
    assert!(events.iter().any(|e| e.kind == "payer_nonconformant"));
    let moved = events
        .iter()
        .rfind(|e| e.to_status == Some(CaseStatus::NeedsAttention))
        .unwrap();
    assert!(
        moved.detail.to_string().contains("cannot be tied to this request"),
        "{:?}",
        moved.detail
    );
    sandbox.shutdown().await;
}

#[test]
fn pas_decode_lists_what_an_off_spec_answer_leaves_out_as_warnings() {
    let p = Project::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fhir-examples/valid_pa_response_bundle.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("timestamp");
    let first = v["entry"][0].as_object_mut().unwrap();
    first.remove("fullUrl");
    first["resource"].as_object_mut().unwrap().remove("resourceType");
    let file = p.write("offspec.json", &v.to_string());
    let out = p.precert(&["pas", "decode", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let decoded: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(decoded["status"], "approved", "the decision is still read");
    assert_eq!(decoded["auth_number"], "AUTH0001");
    let warnings = decoded["warnings"].to_string();
    for w in [
        "Bundle.timestamp is missing",
        "entry[0].fullUrl is missing",
        "entry[0].resource.resourceType is missing",
    ] {
        assert!(warnings.contains(w), "{w}: {warnings}");
        assert!(
            stderr(&out).contains(&format!("warning: {}: off-spec: {w}", file.display())),
            "{}",
            stderr(&out)
        );
    }
    // A conformant answer has none.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fhir-examples/valid_pa_response_bundle.json");
    let out = p.precert(&["pas", "decode", example.to_str().unwrap()]);
    let decoded: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(decoded["warnings"], serde_json::json!([]), "{}", stderr(&out));
}

// ---- The daemon ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_asks_crd_about_new_cases_retries_a_payer_that_is_down_and_submits_what_needs_it() {
    use super::daemon::{free_port, start_with, until};
    let sandbox = start().await;
    let p = project(&sandbox, &two_cases());
    // Submit jobs every two seconds; no polling.
    let path = p.path("config/practices/lakeside-ortho.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = text.split("[schedules]").next().unwrap().to_owned();
    let tail = text
        .split_once("[escalations")
        .map(|(_, t)| format!("[escalations{t}"))
        .unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            "{head}[schedules]\nsubmit = \"*/2 * * * * *\"\npoll = \"0 0 1 1 *\"\nletters = \"0 0 1 1 *\"\n\n{tail}"
        ),
    )
    .unwrap();
    let check = p.precert(&["check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    let ledger = p.ledger().await;

    // The payer fails every request at first.
    sandbox
        .set_hazards(HazardsPatch {
            error_rate: Some(1.0),
            ..Default::default()
        })
        .unwrap();
    let daemon = start_with(&p, free_port(), false, "daemon", &[], &[]);
    until(&daemon, Duration::from_secs(60), "a failed CRD call", || async {
        daemon.log().contains("CRD could not be asked.")
    })
    .await;
    until(&daemon, Duration::from_secs(30), "the job's retry", || async {
        daemon.log().contains("Job failed; it will be retried.")
    })
    .await;
    for case in ["LO-CRD-1", "LO-CRD-2"] {
        assert_eq!(
            status(&ledger, case).await,
            CaseStatus::New,
            "not decided while the payer fails"
        );
        let c = ledger.find("lakeside-ortho", case).await.unwrap().unwrap();
        assert!(
            precert::crd::due(&ledger, &c).await.unwrap(),
            "{case} is still to be asked"
        );
    }

    // The payer is back: the retried job asks, decides, and submits the case
    // that needs a pre-cert in the same run.
    sandbox
        .set_hazards(HazardsPatch {
            error_rate: Some(0.0),
            ..Default::default()
        })
        .unwrap();
    until(&daemon, Duration::from_secs(120), "both cases decided", || async {
        status(&ledger, "LO-CRD-1").await == CaseStatus::Pending
            && status(&ledger, "LO-CRD-2").await == CaseStatus::NotRequired
    })
    .await;
    for case in ["LO-CRD-1", "LO-CRD-2"] {
        let decided = crd_events(&ledger, case, "requirement_decided").await;
        assert_eq!(decided.len(), 1, "{case}: {decided:?}");
        check_evidence(&p, &decided[0]);
    }
    let c = ledger.find("lakeside-ortho", "LO-CRD-1").await.unwrap().unwrap();
    let events = ledger.events(c.id).await.unwrap();
    let decided = events.iter().find(|e| e.kind == "requirement_decided").unwrap();
    assert!(decided.actor.starts_with("job:submit#"), "{}", decided.actor);
    assert!(sandbox
        .request_log()
        .iter()
        .any(|e| e.method == "POST" && e.path == "/cds-services/sandbox-crd-order-sign" && e.status == 200));
    assert_eq!(
        sandbox.submissions_for_member("SBX100200302").len(),
        0,
        "the no-auth case is not submitted"
    );
    assert_eq!(sandbox.submissions_for_member("SBX100200301").len(), 1);
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit(Duration::from_secs(60)).await.code(), Some(0));
    sandbox.shutdown().await;
}

#[test]
fn a_crd_declaration_is_checked_with_where_it_is_written() {
    let text = std::fs::read_to_string(Path::new(REPO).join("playbooks/sandbox-pas.yaml")).unwrap();
    let pb = precert::playbook::compile(Path::new("sandbox-pas.yaml"), &text).unwrap();
    let crd = pb.crd.unwrap();
    assert_eq!(crd.url, "http://127.0.0.1:8700");
    assert_eq!((crd.hook.as_str(), crd.service, crd.oauth2), ("order-sign", None, true));

    let base = text.split("\ncrd:").next().unwrap();
    let bad = format!("{base}\ncrd:\n  url: cds\n  hook: order-review\n  auth: jwt\n  servce: x\n");
    let errors = precert::playbook::compile(Path::new("bad.yaml"), &bad).unwrap_err();
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let all = all.join("\n");
    assert!(all.contains("unknown key `servce`"), "{all}");
    assert!(
        all.contains("crd url `cds` is neither an http(s) URL nor a path under base_url"),
        "{all}"
    );
    assert!(
        all.contains("crd hook `order-review` is not `order-sign` or `order-select`"),
        "{all}"
    );
    assert!(all.contains("crd auth `jwt` is not `oauth2` or `none`"), "{all}");
    let line = base.lines().count() + 2;
    assert!(
        all.contains(&format!("bad.yaml:{line}:")),
        "the url's line {line}: {all}"
    );

    let bad = format!("{base}\ncrd:\n  url: https://payer.example/cds/\n  hook: order-review\n");
    let errors = precert::playbook::compile(Path::new("bad.yaml"), &bad).unwrap_err();
    assert!(
        errors.iter().any(|e| e
            .to_string()
            .contains("crd hook `order-review` is not `order-sign` or `order-select`")),
        "{errors:?}"
    );
    let ok = format!("{base}\ncrd:\n  url: https://payer.example/cds/\n  service: payer-crd\n  auth: none\n");
    let crd = precert::playbook::compile(Path::new("ok.yaml"), &ok)
        .unwrap()
        .crd
        .unwrap();
    assert_eq!(crd.url, "https://payer.example/cds");
    assert_eq!((crd.service.as_deref(), crd.oauth2), (Some("payer-crd"), false));
}
