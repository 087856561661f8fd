//! The Da Vinci PAS API channel: request Bundles built from the sample cases
//! (checked by an independent FHIR validator), payers' answers read into
//! decisions, and whole exchanges with the sandbox payer's FHIR API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use precert::case::{CaseRecord, CaseStatus};
use precert::config::Settings;
use precert::pas::notify::{self, Receiver};
use precert::pas::{self, Applied, ClientError, Endpoint, PasClient, PasError, RetryPolicy};
use precert::store::{Actor, Ledger};
use precert_sandbox::{Decision as PayerDecision, HazardsPatch, Sandbox, SandboxConfig, SandboxHandle};
use secrecy::SecretString;
use serde_json::{json, Value};

use super::support::{stderr, stdout, Project, REPO};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fhir-examples");
const PAS_SD: &str = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition";

fn imported() -> Project {
    let p = Project::new();
    for file in ["samples/cases.csv", "samples/cases.json"] {
        let out = p.precert(&["cases", "import", file]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    p
}

fn decode_file(p: &Project, file: &Path) -> (i32, String, String) {
    let out = p.precert(&["pas", "decode", file.to_str().unwrap()]);
    (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
}

// ---- Reading answers --------------------------------------------------------

#[test]
fn every_shared_example_decodes_to_its_decision_or_is_refused_as_no_answer() {
    let p = Project::new();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(EXAMPLES).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let (code, out, err) = decode_file(&p, &path);
        match name.as_str() {
            "valid_pa_response_bundle.json" => {
                assert_eq!(code, 0, "{err}");
                let v: Value = serde_json::from_str(&out).unwrap();
                assert_eq!(v["status"], "approved");
                assert_eq!(v["auth_number"], "AUTH0001");
                let item = &v["items"][0];
                assert_eq!(item["code"], "A1");
                assert_eq!(item["status"], "approved");
                assert_eq!(item["auth_number"], "AUTH0001");
                assert_eq!(item["period"], json!({"start": "2005-05-02", "end": "2005-06-02"}));
                assert_eq!(item["quantity"], 1.0, "from itemAuthorizedDetail");
                assert_eq!(v["identifiers"], json!(["111099"]));
            }
            // A full-resource notification whose item code is not an X12 306
            // code; the payer's outcome `queued` says it is still working.
            "PAS_notification_example_full_resource.json" => {
                assert_eq!(code, 0, "{err}");
                let v: Value = serde_json::from_str(&out).unwrap();
                assert_eq!(v["status"], "pending");
                assert_eq!(v["outcome"], "queued");
                assert_eq!(v["items"][0]["code"], "PENDEDCODE");
                assert_eq!(v["items"][0]["status"], "pending");
                assert_eq!(v["period"], json!({"start": "2024-01-30", "end": "2024-02-29"}));
                assert_eq!(v["auth_number"], Value::Null);
            }
            "conformant_pas_bundle_v110.json" | "conformant_pas_bundle_v110_multiple_items.json" => {
                assert_eq!(code, 1, "a request is not an answer: {out}");
                assert!(err.contains("this is a request Bundle, not a response"), "{err}");
            }
            "nonconformant_pas_bundle_v110.json" => {
                assert_eq!(code, 1, "{out}");
                assert!(err.contains("the Bundle has no entries"), "{err}");
            }
            "PAS_Subscription_example_v221_good.json" => {
                assert_eq!(code, 1, "{out}");
                assert!(err.contains("a Subscription is not an answer"), "{err}");
            }
            other => panic!("{other}: a new shared example; say here what it must decode to"),
        }
        seen.push(name);
    }
    assert_eq!(seen.len(), 6, "every example was checked: {seen:?}");
}

/// A ClaimResponse with one item per `(review action code, extra parts)`.
fn answer(items: &[(&str, Vec<Value>)], extra: Value) -> Value {
    let items: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(i, (code, parts))| {
            let mut review = vec![json!({
                "url": format!("{PAS_SD}/extension-reviewActionCode"),
                "valueCodeableConcept": {"coding": [{"system": "https://codesystem.x12.org/005010/306", "code": code}]},
            })];
            review.extend(parts.iter().cloned());
            json!({"itemSequence": i + 1, "adjudication": [{
                "extension": [{"url": format!("{PAS_SD}/extension-reviewAction"), "extension": review}],
                "category": {"coding": [{"code": "submitted"}]},
            }]})
        })
        .collect();
    let mut cr = json!({"resourceType": "ClaimResponse", "status": "active", "use": "preauthorization",
        "outcome": "complete", "item": items});
    if let (Value::Object(cr), Value::Object(extra)) = (&mut cr, extra) {
        cr.extend(extra);
    }
    cr
}

fn reason(code: &str, text: &str) -> Value {
    json!({"url": "reasonCode", "valueCodeableConcept": {"coding": [{"code": code, "display": text}]}})
}

fn number(n: &str) -> Value {
    json!({"url": "number", "valueString": n})
}

#[test]
fn pas_answers_map_to_case_statuses_item_by_item() {
    use CaseStatus::*;
    let none = || json!({});
    let cases: Vec<(&str, Value, CaseStatus)> = vec![
        ("certified", answer(&[("A1", vec![number("AUTH1")])], none()), Approved),
        (
            "denied",
            answer(&[("A3", vec![reason("CLIN-06", "Not documented")])], none()),
            Denied,
        ),
        (
            "pended",
            answer(&[("A4", vec![])], json!({"outcome": "queued"})),
            Pending,
        ),
        (
            "pended, information asked for",
            answer(
                &[("A4", vec![])],
                json!({"communicationRequest": [{"reference": "CommunicationRequest/1"}]}),
            ),
            PendedForInfo,
        ),
        (
            "partially certified",
            answer(&[("A2", vec![])], none()),
            PartiallyApproved,
        ),
        ("cancelled", answer(&[("C", vec![])], none()), Cancelled),
        ("contact the payer", answer(&[("CT", vec![])], none()), NeedsAttention),
        ("no action required", answer(&[("NA", vec![])], none()), NotRequired),
        (
            "one line granted, one denied",
            answer(&[("A1", vec![]), ("A3", vec![])], none()),
            PartiallyApproved,
        ),
        (
            "one line granted, one pended",
            answer(&[("A1", vec![]), ("A4", vec![])], none()),
            Pending,
        ),
        (
            "granted, and no action needed",
            answer(&[("A1", vec![]), ("NA", vec![])], none()),
            Approved,
        ),
        (
            "unknown code in a finished answer",
            answer(&[("ZZ", vec![])], none()),
            NeedsAttention,
        ),
    ];
    for (story, v, want) in cases {
        let got = pas::decode(&v).unwrap();
        assert_eq!(got.status, want, "{story}: {got:#?}");
        if want == NeedsAttention {
            assert!(!got.attention.is_empty(), "{story}: a person is told why");
        }
    }
}

#[test]
fn a_rejected_request_needs_attention_with_the_payers_reason_and_is_not_denied() {
    // The X12 AAA segment in PAS form: ClaimResponse.error.
    let aaa = answer(
        &[],
        json!({"outcome": "error", "error": [{"code": {"coding": [{
            "system": "https://codesystem.x12.org/005010/901", "code": "72", "display": "Invalid/Missing Subscriber/Insured ID"}]}}]}),
    );
    let got = pas::decode(&aaa).unwrap();
    assert_eq!(got.status, CaseStatus::NeedsAttention);
    assert!(
        got.attention[0].contains("rejected as unprocessable: 72 (Invalid/Missing Subscriber/Insured ID)"),
        "{got:?}"
    );

    let oo = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid",
        "diagnostics": "Claim.insurance[0].coverage: must reference a Coverage in the Bundle."}]});
    let got = pas::decode(&oo).unwrap();
    assert_eq!(got.status, CaseStatus::NeedsAttention);
    assert!(got.attention[0].contains("must reference a Coverage"), "{got:?}");
    assert!(got.decision(&sample_case().data, chrono::Utc::now(), "api:x").is_none());
}

fn sample_case() -> CaseRecord {
    let p = imported();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ledger = p.ledger().await;
        ledger.find("lakeside-ortho", "LO-2026-1003").await.unwrap().unwrap()
    })
}

#[test]
fn a_modified_request_records_what_was_granted_and_a_denial_its_reason() {
    let case = sample_case(); // 97110-GP ×12
    let modified = answer(
        &[("A6", vec![number("AUTH-9")])],
        json!({"preAuthRef": "AUTH-9", "preAuthPeriod": {"start": "2026-12-01", "end": "2027-01-31"},
            "addItem": [{"itemSequence": [1], "productOrService": {"coding": [{"code": "97110"}]}, "quantity": {"value": 8}}]}),
    );
    let got = pas::decode(&modified).unwrap();
    assert_eq!(got.status, CaseStatus::PartiallyApproved);
    let d = got.decision(&case.data, chrono::Utc::now(), "api:sandbox").unwrap();
    assert_eq!(d.auth_number.as_deref(), Some("AUTH-9"));
    assert_eq!((d.lines[0].requested_units, d.lines[0].approved_units), (12, 8));
    assert_eq!(d.valid.unwrap().end.to_string(), "2027-01-31");
    assert!(d.conditions.unwrap().contains("97110: 8 of 12 units (A6)"));

    let denied = answer(
        &[("A3", vec![reason("CLIN-06", "Conservative therapy not documented.")])],
        json!({}),
    );
    let d = pas::decode(&denied)
        .unwrap()
        .decision(&case.data, chrono::Utc::now(), "api:sandbox")
        .unwrap();
    let denial = d.denial.unwrap();
    assert_eq!(denial.code.as_deref(), Some("CLIN-06"));
    assert_eq!(denial.text, "Conservative therapy not documented.");
    assert_eq!(d.lines[0].approved_units, 0);
}

// ---- Building requests ------------------------------------------------------

/// The independent validator's interpreter: `scripts/test` installs
/// fhir.resources into a venv and exports `PRECERT_FHIR_PYTHON`.
fn validator_python() -> PathBuf {
    let p = std::env::var_os("PRECERT_FHIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target/fhir-venv/bin/python"));
    assert!(
        p.exists(),
        "the FHIR validator is not installed at {}; run scripts/test (it installs fhir.resources) or set PRECERT_FHIR_PYTHON",
        p.display()
    );
    p
}

fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(validator_python())
        .arg(Path::new(REPO).join("tests/fhir_validate.py"))
        .args(files)
        .output()
        .unwrap();
    (out.status.success(), stderr(&out))
}

#[test]
fn pas_bundle_for_every_sample_case_is_valid_fhir_to_an_independent_validator() {
    let p = imported();
    let refs = [
        "LO-2026-1001",
        "LO-2026-1002",
        "LO-2026-1003",
        "LO-2026-1004",
        "VI-88120",
        "VI-88121",
        "VI-88122",
    ];
    let mut files = Vec::new();
    for r in refs {
        let out = p.precert(&["pas", "bundle", "--case", r]);
        assert!(out.status.success(), "{r}: {}", stderr(&out));
        files.push(p.write(&format!("out/{r}.json"), &stdout(&out)));
    }
    let (ok, problems) = validate(&files);
    assert!(ok, "{problems}");

    // The validator is not a rubber stamp: a Claim with a wrong element fails.
    let mut broken: Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    broken["entry"][0]["resource"]["use"] = json!(7);
    broken["entry"][0]["resource"]["procedureCode"] = json!("27447");
    let bad = p.write("out/broken.json", &broken.to_string());
    let (ok, problems) = validate(&[bad]);
    assert!(
        !ok && problems.contains("use") && problems.contains("procedureCode"),
        "{problems}"
    );
}

fn bundle_of(p: &Project, case: &str) -> Value {
    let out = p.precert(&["pas", "bundle", "--case", case]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn entry<'a>(b: &'a Value, reference: &Value) -> &'a Value {
    let r = reference.as_str().unwrap();
    &b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["fullUrl"] == r)
        .unwrap_or_else(|| panic!("{r} is not in the Bundle"))["resource"]
}

#[test]
fn pas_bundle_puts_the_claim_first_and_everything_it_references_after() {
    let p = imported();
    let b = bundle_of(&p, "lakeside-ortho/LO-2026-1002"); // 27447-RT, two documents
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "collection");
    assert!(b["identifier"]["value"].is_string() && b["timestamp"].is_string());
    let claim = &b["entry"][0]["resource"];
    assert_eq!(claim["resourceType"], "Claim");
    assert_eq!(claim["use"], "preauthorization");
    assert_eq!(claim["status"], "active");
    assert_eq!(claim["type"]["coding"][0]["code"], "institutional", "an inpatient stay");
    assert_eq!(claim["priority"]["coding"][0]["code"], "normal");
    assert_eq!(claim["identifier"][0]["value"], "LO-2026-1002");
    assert_eq!(
        claim["diagnosis"][0]["diagnosisCodeableConcept"]["coding"][0]["system"],
        "http://hl7.org/fhir/sid/icd-10-cm"
    );
    assert_eq!(claim["insurance"][0]["focal"], true);

    let patient = entry(&b, &claim["patient"]["reference"]);
    assert_eq!(patient["birthDate"], "1975-09-30");
    assert_eq!(patient["identifier"][0]["value"], "SBX100200302");
    let coverage = entry(&b, &claim["insurance"][0]["coverage"]["reference"]);
    assert_eq!(coverage["subscriberId"], "SBX100200302");
    assert_eq!(coverage["class"][0]["value"], "GRP-4410");
    assert_eq!(coverage["beneficiary"], claim["patient"]);
    let org = entry(&b, &claim["provider"]["reference"]);
    assert_eq!(
        org["identifier"][0],
        json!({"system": "http://hl7.org/fhir/sid/us-npi", "value": "1245319599"})
    );
    assert_eq!(org["identifier"][1]["value"], "36-1234567");
    assert_eq!(
        entry(&b, &claim["insurer"]["reference"])["resourceType"],
        "Organization"
    );

    let item = &claim["item"][0];
    assert_eq!(
        item["productOrService"]["coding"][0],
        json!({"system": "http://www.ama-assn.org/go/cpt", "code": "27447"})
    );
    assert_eq!(item["modifier"][0]["coding"][0]["code"], "RT");
    assert_eq!(item["quantity"]["value"], 1.0);
    assert_eq!(
        item["servicedPeriod"],
        json!({"start": "2027-01-12", "end": "2027-01-14"})
    );
    assert_eq!(item["locationCodeableConcept"]["coding"][0]["code"], "21");
    let requested = item["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == format!("{PAS_SD}/extension-requestedService"))
        .unwrap();
    let sr = entry(&b, &requested["valueReference"]["reference"]);
    assert_eq!(sr["resourceType"], "ServiceRequest");
    assert_eq!(sr["code"]["coding"][0]["code"], "27447");
    let requester = entry(&b, &sr["requester"]["reference"]);
    assert_eq!(requester["resourceType"], "Practitioner");
    assert_eq!(requester["identifier"][0]["value"], "1987654328");

    // The documents travel inline, byte for byte.
    let docs = claim["supportingInfo"].as_array().unwrap();
    assert_eq!(docs.len(), 2);
    let doc = entry(&b, &docs[0]["valueReference"]["reference"]);
    let att = &doc["content"][0]["attachment"];
    assert_eq!(att["contentType"], "application/pdf");
    let bytes = data_encoding::BASE64
        .decode(att["data"].as_str().unwrap().as_bytes())
        .unwrap();
    let original = std::fs::read(p.path("samples/documents/ortho-consult-note.pdf")).unwrap();
    assert_eq!(bytes, original);
}

#[test]
fn pas_bundle_orders_equipment_by_device_request_and_marks_urgent_requests_stat() {
    let p = imported();
    let cpap = bundle_of(&p, "VI-88121"); // E0601, home
    let claim = &cpap["entry"][0]["resource"];
    let item = &claim["item"][0];
    assert_eq!(
        item["productOrService"]["coding"][0]["system"],
        "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
    );
    let requested = &item["extension"][1]["valueReference"]["reference"];
    assert_eq!(entry(&cpap, requested)["resourceType"], "DeviceRequest");
    assert_eq!(claim["type"]["coding"][0]["code"], "professional");

    let mri = bundle_of(&p, "VI-88120"); // 72148, urgent
    let claim = &mri["entry"][0]["resource"];
    assert_eq!(claim["priority"]["coding"][0]["code"], "stat");
    assert_eq!(claim["extension"][0]["valueCodeableConcept"]["coding"][0]["code"], "U");

    let out = p.precert(&["pas", "bundle", "--case", "NO-SUCH-CASE"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no case NO-SUCH-CASE"), "{}", stderr(&out));
}

// ---- Exchanges with the sandbox payer ---------------------------------------

struct Payer {
    /// Kept for its temporary directory, which holds the ledger.
    _project: Project,
    settings: Settings,
    ledger: Ledger,
    sandbox: SandboxHandle,
}

/// Short waits: the protocol's backoffs happen, but in milliseconds.
fn quick() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
        ..RetryPolicy::default()
    }
}

impl Payer {
    async fn start() -> Payer {
        Payer::start_with(SandboxConfig::default_demo()).await
    }

    async fn start_with(config: SandboxConfig) -> Payer {
        let project = imported();
        let settings = project.settings();
        let ledger = project.ledger().await;
        let sandbox = Sandbox::start(config, "127.0.0.1:0").await.unwrap();
        Payer {
            _project: project,
            settings,
            ledger,
            sandbox,
        }
    }

    fn endpoint(&self, practice: &str) -> Endpoint {
        let (id, secret) = match practice {
            "lakeside-ortho" => ("lakeside-pas", "sandbox-lakeside-client-secret"),
            _ => ("valley-pas", "sandbox-valley-client-secret"),
        };
        Endpoint {
            fhir_base: format!("{}/fhir", self.sandbox.base_url()),
            token_url: format!("{}/oauth/token", self.sandbox.base_url()),
            client_id: id.into(),
            client_secret: SecretString::from(secret),
        }
    }

    fn client(&self, practice: &str, policy: RetryPolicy) -> PasClient {
        PasClient::new(self.endpoint(practice), policy).unwrap()
    }

    async fn case(&self, key: &str) -> CaseRecord {
        let (practice, case_ref) = key.split_once('/').unwrap();
        self.ledger.find(practice, case_ref).await.unwrap().unwrap()
    }

    fn ctx(&self, practice: &str) -> pas::Context<'_> {
        pas::Context {
            practice: self.settings.practice(practice).unwrap(),
            data_dir: &self.settings.data_dir,
            insurer_name: None,
            now: chrono::Utc::now(),
        }
    }

    async fn submit_with(&self, key: &str, client: &PasClient) -> Result<Applied, PasError> {
        let case = self.case(key).await;
        let practice = case.data.practice_id.clone();
        pas::submit_case(&self.ledger, client, &self.ctx(&practice), &case, &Actor::user("test")).await
    }

    async fn submit(&self, key: &str) -> Applied {
        let practice = key.split('/').next().unwrap();
        self.submit_with(key, &self.client(practice, quick())).await.unwrap()
    }

    /// How many requests to `path` the sandbox answered with `status`.
    fn answered(&self, path: &str, status: u16) -> usize {
        self.sandbox
            .request_log()
            .iter()
            .filter(|e| e.path == path && e.status == status)
            .count()
    }
}

#[tokio::test]
async fn a_lumbar_mri_is_denied_at_once_with_the_payers_reason() {
    let payer = Payer::start().await;
    let applied = payer.submit("valley-imaging/VI-88120").await;
    assert_eq!((applied.from, applied.to), (CaseStatus::Submitting, CaseStatus::Denied));
    let case = payer.case("valley-imaging/VI-88120").await;
    assert_eq!(case.status, CaseStatus::Denied);
    let denial = case.decision.unwrap().denial.unwrap();
    assert_eq!(denial.code.as_deref(), Some("CLIN-06"));
    assert_eq!(
        denial.text,
        "Conservative therapy of at least 6 weeks is not documented."
    );
    payer.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_cpap_is_approved_at_once_with_its_authorization_number() {
    let payer = Payer::start().await;
    let applied = payer.submit("valley-imaging/VI-88121").await;
    assert_eq!(applied.to, CaseStatus::Approved);
    let case = payer.case("valley-imaging/VI-88121").await;
    let decision = case.decision.unwrap();
    let auth = decision.auth_number.unwrap();
    assert!(auth.starts_with("SHP"), "{auth}");
    assert_eq!(decision.source, "api:sandbox");
    assert_eq!(decision.lines[0].approved_units, 1);
    let reference = applied.outcome.claim_response.unwrap();
    assert_eq!(payer.sandbox.submission(&reference).unwrap().lines[0].code, "E0601");
    payer.sandbox.shutdown().await;
}

#[tokio::test]
async fn therapy_is_modified_to_eight_of_twelve_units() {
    let payer = Payer::start().await;
    let applied = payer.submit("lakeside-ortho/LO-2026-1003").await;
    assert_eq!(applied.to, CaseStatus::PartiallyApproved);
    assert_eq!(applied.outcome.items[0].code.as_ref().unwrap().code(), "A6");
    let decision = payer.case("lakeside-ortho/LO-2026-1003").await.decision.unwrap();
    assert_eq!(
        (decision.lines[0].requested_units, decision.lines[0].approved_units),
        (12, 8)
    );
    assert!(decision.conditions.unwrap().contains("8 of 12"));
    payer.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_pended_knee_replacement_is_read_again_by_inquire_once_decided() {
    let payer = Payer::start().await;
    let client = payer.client("lakeside-ortho", quick());
    let applied = payer.submit_with("lakeside-ortho/LO-2026-1002", &client).await.unwrap();
    assert_eq!(applied.to, CaseStatus::Pending, "27447 pends for clinical notes");
    assert_eq!(applied.outcome.items[0].code.as_ref().unwrap().code(), "A4");
    let reference = applied.outcome.claim_response.unwrap();

    // Still pended: an inquiry changes nothing but the timeline.
    let case = payer.case("lakeside-ortho/LO-2026-1002").await;
    let again = pas::inquire_case(
        &payer.ledger,
        &client,
        &payer.ctx("lakeside-ortho"),
        &case,
        &Actor::user("test"),
        None,
    )
    .await
    .unwrap();
    assert_eq!((again.from, again.to), (CaseStatus::Pending, CaseStatus::Pending));

    payer.sandbox.decide(&reference, PayerDecision::Approve).unwrap();
    let case = payer.case("lakeside-ortho/LO-2026-1002").await;
    let read = pas::inquire_case(
        &payer.ledger,
        &client,
        &payer.ctx("lakeside-ortho"),
        &case,
        &Actor::user("test"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(read.to, CaseStatus::Approved);
    let case = payer.case("lakeside-ortho/LO-2026-1002").await;
    assert_eq!(case.status, CaseStatus::Approved);
    assert!(case.decision.unwrap().valid.is_some());
    assert_eq!(payer.answered("/oauth/token", 200), 1, "one token serves every call");
    payer.sandbox.shutdown().await;
}

/// precert's notification endpoint on a free port, with a subscription for
/// `practice` registered at the sandbox.
async fn listen(payer: &Payer, practice: &str) -> (Arc<Receiver>, String, SecretString) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/pas/notify/{practice}", listener.local_addr().unwrap());
    let client = Arc::new(payer.client(practice, quick()));
    let (id, hook) = notify::register(
        client,
        payer.settings.practice(practice).unwrap().clone(),
        &url,
        payer.settings.data_dir.clone(),
        None,
    )
    .await
    .unwrap();
    assert!(!id.is_empty());
    let token = hook.token.clone().unwrap();
    let receiver = Receiver::new(payer.ledger.clone());
    receiver.add(practice, hook);
    let receiver = Arc::new(receiver);
    let app = notify::router(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (receiver, url, token)
}

/// The payer approves `reference`; the notification it sends is handled
/// (within 10 s) and records the approval.
async fn approve_and_hear(
    payer: &Payer,
    reference: &str,
    handled: &mut tokio::sync::broadcast::Receiver<notify::Handled>,
) -> notify::Handled {
    payer.sandbox.decide(reference, PayerDecision::Approve).unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await
        .expect("the notification arrives")
        .unwrap();
    assert_eq!(event.status, CaseStatus::Approved);
    event
}

#[tokio::test]
async fn a_pended_mri_is_approved_when_the_payer_notifies() {
    let payer = Payer::start().await;
    let (receiver, _, _) = listen(&payer, "lakeside-ortho").await;
    let mut handled = receiver.handled();
    let applied = payer.submit("lakeside-ortho/LO-2026-1001").await;
    assert_eq!(applied.to, CaseStatus::Pending);
    let reference = applied.outcome.claim_response.unwrap();

    let event = approve_and_hear(&payer, &reference, &mut handled).await;
    let case = payer.case("lakeside-ortho/LO-2026-1001").await;
    assert_eq!(event.case_id, case.id);
    assert_eq!(case.status, CaseStatus::Approved);
    let decision = case.decision.unwrap();
    assert!(decision.auth_number.unwrap().starts_with("SHP"));
    // The decision was fetched with $inquire, not taken from the payload.
    assert_eq!(payer.answered("/fhir/Claim/$inquire", 200), 1);
    payer.sandbox.shutdown().await;
}

/// A submitter that died after the payer took the request but before the
/// ledger learned the reference: the payer's notification of the decision
/// gives the case its reference as well as its decision (the cluster test
/// met this when the killed daemon's last request was decided by
/// notification before any daemon took the case over).
#[tokio::test]
async fn a_notification_for_a_request_whose_submitter_died_records_its_reference() {
    let payer = Payer::start().await;
    let (receiver, _, _) = listen(&payer, "lakeside-ortho").await;
    let mut handled = receiver.handled();
    let case = payer.case("lakeside-ortho/LO-2026-1001").await;
    let actor = Actor::user("test");
    let lease = payer.ledger.claim_submission(case.id, &actor).await.unwrap();
    payer
        .ledger
        .record_intent(&lease, &actor, &json!({ "action": "submit", "channel": "pas" }))
        .await
        .unwrap();
    let ctx = payer.ctx("lakeside-ortho");
    let bundle = pas::request_bundle(&case.data, &ctx).unwrap().to_json();
    payer.client("lakeside-ortho", quick()).submit(&bundle).await.unwrap();
    // ... and the submitter is gone (its lease with it): nothing of the
    // answer was recorded.
    payer.ledger.release_submission(&lease).await.unwrap();
    let reference = payer.sandbox.submissions()[0].reference.clone();
    let stranded = payer.case("lakeside-ortho/LO-2026-1001").await;
    assert_eq!((stranded.status, stranded.payer_ref), (CaseStatus::Submitting, None));

    let event = approve_and_hear(&payer, &reference, &mut handled).await;
    let case = payer.case("lakeside-ortho/LO-2026-1001").await;
    assert_eq!((event.case_id, case.status), (case.id, CaseStatus::Approved));
    assert_eq!(case.payer_ref.as_deref(), Some(reference.as_str()));
    assert!(payer
        .ledger
        .events(case.id)
        .await
        .unwrap()
        .iter()
        .any(|e| e.detail.to_string().contains(&reference)));
    assert_eq!(payer.sandbox.submissions().len(), 1, "sent once");
    payer.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_forged_or_malformed_notification_changes_nothing() {
    let payer = Payer::start().await;
    let (_receiver, url, token) = listen(&payer, "lakeside-ortho").await;
    let applied = payer.submit("lakeside-ortho/LO-2026-1001").await;
    assert_eq!(applied.to, CaseStatus::Pending);
    // A notification claiming approval, as a forger would write it.
    let mut approved = answer(&[("A1", vec![number("FORGED-1")])], json!({}));
    approved["identifier"] = json!([{"system": "urn:precert:case-id", "value": "LO-2026-1001"}]);
    let forged = json!({"resourceType": "Bundle", "type": "history", "entry": [
        {"resource": {"resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": "event-notification"}]}},
        {"resource": approved},
    ]});
    let http = reqwest::Client::new();
    let post = |auth: Option<String>, body: String| {
        let mut r = http.post(&url).body(body);
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send()
    };
    use secrecy::ExposeSecret;
    let bearer = Some(format!("Bearer {}", token.expose_secret()));
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(post(None, forged.to_string()).await.unwrap()), 401);
    assert_eq!(
        status(post(Some("Bearer guessed".into()), forged.to_string()).await.unwrap()),
        401
    );
    assert_eq!(status(post(bearer.clone(), "{not json".into()).await.unwrap()), 400);
    assert_eq!(
        status(
            post(bearer.clone(), json!({"resourceType": "Bundle"}).to_string())
                .await
                .unwrap()
        ),
        400
    );
    // Even with the right token, the payload's word is not taken: precert
    // asks the payer, which still has the request in review.
    assert_eq!(status(post(bearer, forged.to_string()).await.unwrap()), 200);
    let case = payer.case("lakeside-ortho/LO-2026-1001").await;
    assert_eq!(case.status, CaseStatus::Pending);
    assert!(case.decision.is_none());
    payer.sandbox.shutdown().await;
}

#[tokio::test]
async fn throttling_is_waited_out_as_retry_after_says() {
    let payer = Payer::start().await;
    payer
        .sandbox
        .set_hazards(HazardsPatch {
            api_throttle_next: Some(1),
            api_retry_after_seconds: Some(1),
            ..HazardsPatch::default()
        })
        .unwrap();
    let started = Instant::now();
    let applied = payer.submit("valley-imaging/VI-88121").await;
    assert_eq!(applied.to, CaseStatus::Approved);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as Retry-After asked"
    );
    assert_eq!(payer.answered("/oauth/token", 429), 1);

    // A wait longer than the client's bound goes back to the scheduler.
    payer
        .sandbox
        .set_hazards(HazardsPatch {
            api_throttle_next: Some(1),
            api_retry_after_seconds: Some(30),
            ..HazardsPatch::default()
        })
        .unwrap();
    let err = payer
        .submit_with("valley-imaging/VI-88120", &payer.client("valley-imaging", quick()))
        .await;
    match err {
        Err(PasError::Client(ClientError::Throttled { retry_after })) => {
            assert_eq!(retry_after, Duration::from_secs(30))
        }
        other => panic!("expected throttling, got {other:?}"),
    }
    assert_eq!(
        payer.case("valley-imaging/VI-88120").await.status,
        CaseStatus::Ready,
        "back for the next run"
    );
    payer.sandbox.shutdown().await;
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_given_up() {
    let payer = Payer::start().await;
    // Seeded, so the same requests fail on every run: here the first call fails.
    payer
        .sandbox
        .set_hazards(HazardsPatch {
            error_rate: Some(0.5),
            seed: Some(7),
            ..HazardsPatch::default()
        })
        .unwrap();
    let applied = payer.submit("valley-imaging/VI-88121").await;
    assert_eq!(applied.to, CaseStatus::Approved);
    let failures = payer.answered("/oauth/token", 500) + payer.answered("/fhir/Claim/$submit", 500);
    assert!(failures >= 1, "{:?}", payer.sandbox.request_log());

    payer
        .sandbox
        .set_hazards(HazardsPatch {
            error_rate: Some(1.0),
            ..HazardsPatch::default()
        })
        .unwrap();
    let policy = RetryPolicy {
        max_attempts: 3,
        ..quick()
    };
    let err = payer
        .submit_with("valley-imaging/VI-88120", &payer.client("valley-imaging", policy))
        .await;
    match err {
        Err(PasError::Client(ClientError::Server { status: 500, .. })) => {}
        other => panic!("expected a server error, got {other:?}"),
    }
    // A failed $submit may hide a request the payer stored, and the payer
    // could not be asked: the case stays `submitting`, and the next run
    // asks ($inquire) before anything is sent again.
    assert_eq!(
        payer.case("valley-imaging/VI-88120").await.status,
        CaseStatus::Submitting
    );
    payer.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_malformed_bundle_is_refused_with_the_payers_diagnostics() {
    let payer = Payer::start().await;
    let client = payer.client("lakeside-ortho", quick());
    let empty = json!({"resourceType": "Bundle", "type": "collection", "entry": []});
    let err = client.submit(&empty).await.unwrap_err();
    assert!(err.is_rejected() && !err.is_transient());
    let text = err.to_string();
    assert!(text.contains("HTTP 400") && text.contains("Bundle.entry"), "{text}");

    // Through the channel, a refusal puts the case before a person.
    let wrong = PasClient::new(
        Endpoint {
            fhir_base: format!("{}/no-such-fhir", payer.sandbox.base_url()),
            ..payer.endpoint("lakeside-ortho")
        },
        quick(),
    )
    .unwrap();
    let err = payer
        .submit_with("lakeside-ortho/LO-2026-1004", &wrong)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PasError::Client(ClientError::Rejected { status: 404, .. })),
        "{err:?}"
    );
    assert_eq!(
        payer.case("lakeside-ortho/LO-2026-1004").await.status,
        CaseStatus::NeedsAttention
    );
    payer.sandbox.shutdown().await;
}

#[tokio::test]
async fn the_payer_binding_names_the_api_and_its_credentials() {
    let payer = Payer::start().await;
    let base = payer.sandbox.base_url();
    let project = Project::new();

    // Commands that load no secrets cannot talk to the API, and say why.
    let settings = project.settings();
    let binding = &settings.practice("lakeside-ortho").unwrap().payers["sandbox-pas"];
    let err = Endpoint::from_binding("sandbox-pas", binding, Some(&base))
        .unwrap_err()
        .to_string();
    assert!(err.contains("payers.sandbox-pas.secrets.client_secret"), "{err}");

    // Each test runs in its own process (nextest), so this touches no other test.
    for (k, v) in super::support::SECRETS {
        std::env::set_var(k, v);
    }
    let load = || precert::config::load(&project.config_path(), precert::config::Secrets::Resolve).unwrap();
    let settings = load();
    let binding = &settings.practice("lakeside-ortho").unwrap().payers["sandbox-pas"];
    let err = Endpoint::from_binding("sandbox-pas", binding, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("payers.sandbox-pas.account.fhir_base_url is required"),
        "{err}"
    );

    // The sample binding names only the client; the API sits under the
    // playbook's base URL, in the sandbox's layout.
    let endpoint = Endpoint::from_binding("sandbox-pas", binding, Some(&format!("{base}/"))).unwrap();
    assert_eq!(
        (endpoint.fhir_base.as_str(), endpoint.client_id.as_str()),
        (&*format!("{base}/fhir"), "lakeside-pas")
    );
    assert!(
        !format!("{endpoint:?}").contains("sandbox-lakeside-client-secret"),
        "the secret never prints"
    );
    let client = PasClient::new(endpoint, quick()).unwrap();
    let applied = payer.submit_with("lakeside-ortho/LO-2026-1003", &client).await.unwrap();
    assert_eq!(applied.to, CaseStatus::PartiallyApproved);

    // Addresses in the binding win over the base URL.
    let file = project.path("config/practices/lakeside-ortho.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let bound = text.replace(
        r#"account = { client_id = "lakeside-pas" }"#,
        &format!(r#"account = {{ client_id = "lakeside-pas", fhir_base_url = "{base}/fhir/", token_url = "{base}/oauth/token" }}"#),
    );
    assert_ne!(text, bound, "the sample practice has a PAS binding");
    std::fs::write(&file, bound).unwrap();
    let settings = load();
    let binding = &settings.practice("lakeside-ortho").unwrap().payers["sandbox-pas"];
    let endpoint = Endpoint::from_binding("sandbox-pas", binding, Some("http://127.0.0.1:9")).unwrap();
    assert_eq!(endpoint.fhir_base, format!("{base}/fhir"));
    assert_eq!(endpoint.token_url, format!("{base}/oauth/token"));
    payer.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_token_the_payer_no_longer_accepts_is_renewed_and_the_call_repeated() {
    let payer = Payer::start().await;
    let client = payer.client("valley-imaging", quick());
    payer.submit_with("valley-imaging/VI-88121", &client).await.unwrap();
    // Two hours later by the payer's clock, the cached token has expired there.
    payer.sandbox.advance_clock(Duration::from_secs(2 * 3600));
    let applied = payer.submit_with("valley-imaging/VI-88120", &client).await.unwrap();
    assert_eq!(applied.to, CaseStatus::Denied);
    assert_eq!(payer.answered("/fhir/Claim/$submit", 401), 1);
    assert_eq!(payer.answered("/oauth/token", 200), 2);
    payer.sandbox.shutdown().await;
}
