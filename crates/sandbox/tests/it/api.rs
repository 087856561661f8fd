//! The PAS FHIR API: tokens, `$submit`, `$inquire`, subscriptions and notifications.

use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::common::*;

#[tokio::test]
async fn tokens_need_the_right_secret_and_the_api_needs_a_token() {
    let sbx = start().await;
    let base = sbx.base_url();
    let r = api()
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "lakeside-pas"),
            ("client_secret", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");

    let body = fixture("conformant_pas_bundle_v110.json");
    let (status, oo, headers) = fhir_post(&base, "/fhir/Claim/$submit", "not-a-token", &body).await;
    assert_eq!(status, 401);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));

    // Tokens expire on the sandbox clock.
    let token = lakeside_token(&base).await;
    sbx.advance_clock(Duration::from_secs(3601));
    let (status, _, _) = fhir_post(&base, "/fhir/Claim/$submit", &token, &body).await;
    assert_eq!(status, 401);
    sbx.shutdown().await;
}

#[tokio::test]
async fn the_conformant_example_gets_a_well_formed_claim_response_bundle() {
    let sbx = start().await;
    let base = sbx.base_url();
    let token = lakeside_token(&base).await;
    let body = fixture("conformant_pas_bundle_v110.json");
    let (status, bundle, headers) = fhir_post(&base, "/fhir/Claim/$submit", &token, &body).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(headers["content-type"], "application/fhir+json");
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");
    let cr = &bundle["entry"][0]["resource"];
    assert_eq!(cr["resourceType"], "ClaimResponse");
    assert_eq!(cr["use"], "preauthorization");
    assert_eq!(cr["outcome"], "queued");
    assert!(
        cr["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["value"] == "111099"),
        "the Claim identifier is echoed"
    );
    // Every reference of the ClaimResponse resolves inside the Bundle.
    for field in ["patient", "insurer", "requestor"] {
        let reference = cr[field]["reference"].as_str().unwrap();
        assert!(
            bundle["entry"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["fullUrl"].as_str().unwrap().ends_with(reference)),
            "{field} {reference}"
        );
    }
    // Unknown member and a non-CPT service code: in review (pended, A4).
    let (code, number, _) = review_of(&bundle);
    assert_eq!(code, "A4");
    assert_eq!(number, None);
    sbx.shutdown().await;
}

#[tokio::test]
async fn scenarios_answer_with_their_review_action_codes() {
    let sbx = start().await;
    let base = sbx.base_url();
    let token = lakeside_token(&base).await;

    let (_, b, _) = fhir_post(
        &base,
        "/fhir/Claim/$submit",
        &token,
        &pas_bundle("SBX100200306", "E0601", 1, "2026-12-01"),
    )
    .await;
    let (code, number, _) = review_of(&b);
    assert_eq!(code, "A1");
    let cr = &b["entry"][0]["resource"];
    assert_eq!(cr["preAuthRef"].as_str(), number.as_deref());
    assert_eq!(cr["preAuthPeriod"]["start"], "2026-12-01");
    assert_eq!(cr["outcome"], "complete");

    let (_, b, _) = fhir_post(
        &base,
        "/fhir/Claim/$submit",
        &token,
        &pas_bundle("SBX100200303", "72148", 1, "2026-12-01"),
    )
    .await;
    let (code, number, reason) = review_of(&b);
    assert_eq!(
        (code.as_str(), number, reason.as_deref()),
        ("A3", None, Some("CLIN-06"))
    );

    let (_, b, _) = fhir_post(
        &base,
        "/fhir/Claim/$submit",
        &token,
        &pas_bundle("SBX100200305", "97110", 12, "2026-12-01"),
    )
    .await;
    let (code, _, _) = review_of(&b);
    assert_eq!(code, "A6");
    let add = &b["entry"][0]["resource"]["addItem"][0];
    assert_eq!(add["quantity"]["value"], 8);
    assert_eq!(add["productOrService"]["coding"][0]["code"], "97110");

    let (_, b, _) = fhir_post(
        &base,
        "/fhir/Claim/$submit",
        &token,
        &pas_bundle("SBX100200301", "73721", 1, "2026-12-01"),
    )
    .await;
    assert_eq!(review_of(&b).0, "A4");
    // The inactive member is denied on eligibility.
    let (_, b, _) = fhir_post(
        &base,
        "/fhir/Claim/$submit",
        &token,
        &pas_bundle("SBX100200304", "73721", 1, "2026-12-01"),
    )
    .await;
    assert_eq!(review_of(&b).2.as_deref(), Some("ELIG-01"));
    sbx.shutdown().await;
}

#[tokio::test]
async fn malformed_bundles_get_400_with_an_operation_outcome() {
    let sbx = start().await;
    let base = sbx.base_url();
    let token = lakeside_token(&base).await;
    let (status, oo, _) = fhir_post(
        &base,
        "/fhir/Claim/$submit",
        &token,
        &fixture("nonconformant_pas_bundle_v110.json"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["severity"], "error");
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("Bundle.entry"));

    let mut no_patient = fixture("conformant_pas_bundle_v110.json");
    no_patient["entry"]
        .as_array_mut()
        .unwrap()
        .retain(|e| e["resource"]["resourceType"] != "Patient");
    let (status, oo, _) = fhir_post(&base, "/fhir/Claim/$submit", &token, &no_patient).await;
    assert_eq!(status, 400);
    assert!(oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("Claim.patient"));

    let r = api()
        .post(format!("{base}/fhir/Claim/$submit"))
        .bearer_auth(&token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(sbx.submissions().len(), 0, "nothing malformed is stored");
    sbx.shutdown().await;
}

#[tokio::test]
async fn api_and_portal_submissions_share_one_count() {
    let sbx = start().await;
    let base = sbx.base_url();
    let token = lakeside_token(&base).await;
    let bundle = pas_bundle("SBX100200302", "99999", 1, "2027-02-01");
    fhir_post(&base, "/fhir/Claim/$submit", &token, &bundle).await;
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    submit_via_portal(&c, &base, ("SBX100200302", "1975-09-30"), "99999", "1", "2027-02-01").await;
    assert_eq!(count(&base, "SBX100200302", "99999", "2027-02-01").await, 2);
    assert_eq!(count(&base, "SBX100200302", "99999", "2027-02-02").await, 0);
    sbx.shutdown().await;
}

#[tokio::test]
async fn inquire_reports_the_decision_made_since() {
    let sbx = start().await;
    let base = sbx.base_url();
    let token = lakeside_token(&base).await;
    let bundle = pas_bundle("SBX100200301", "73721", 1, "2026-12-07");
    let (_, b, _) = fhir_post(&base, "/fhir/Claim/$submit", &token, &bundle).await;
    assert_eq!(review_of(&b).0, "A4");
    // MRI knee is approved 20 s after submission; move the clock instead of waiting.
    let (_, clock) = admin_post(&base, "/admin/clock/advance", json!({"seconds": 20})).await;
    assert_eq!(clock["decided"].as_array().unwrap().len(), 1);
    let (status, b, _) = fhir_post(&base, "/fhir/Claim/$inquire", &token, &bundle).await;
    assert_eq!(status, 200);
    let (code, number, _) = review_of(&b);
    assert_eq!(code, "A1");
    assert!(number.is_some());
    // Another client cannot see it.
    let valley = token_for_valley(&base).await;
    let (status, oo, _) = fhir_post(&base, "/fhir/Claim/$inquire", &valley, &bundle).await;
    assert_eq!(status, 404);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    sbx.shutdown().await;
}

async fn token_for_valley(base: &str) -> String {
    token(base, "valley-pas", "sandbox-valley-client-secret").await
}

/// A rest-hook receiver: every POST's Authorization header and body go to the channel.
async fn receiver() -> (
    String,
    mpsc::UnboundedReceiver<(Option<String>, Value)>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
                let _ = tx.send((auth, serde_json::from_str(&body).unwrap()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, rx, task)
}

#[tokio::test]
async fn a_subscriber_is_notified_when_a_pended_request_is_decided() {
    let sbx = start().await;
    let base = sbx.base_url();
    let token = lakeside_token(&base).await;
    let (hook, mut notifications, task) = receiver().await;

    let mut subscription = fixture("PAS_Subscription_example_v221_good.json");
    subscription["channel"]["endpoint"] = json!(hook);
    subscription["channel"]["header"] = json!(["Authorization: Bearer hook-secret-123"]);
    subscription["_criteria"]["extension"][0]["valueString"] = json!("org-identifier=1245319599");
    let (status, created, headers) = fhir_post(&base, "/fhir/Subscription", &token, &subscription).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "active");
    assert!(headers["location"].to_str().unwrap().starts_with("/fhir/Subscription/"));

    let bundle = pas_bundle("SBX100200302", "27447", 1, "2027-01-05");
    let (_, b, _) = fhir_post(&base, "/fhir/Claim/$submit", &token, &bundle).await;
    assert_eq!(review_of(&b).0, "A4");
    let reference = b["entry"][0]["resource"]["id"].as_str().unwrap().to_string();

    let (status, _) = admin_post(
        &base,
        &format!("/admin/submissions/{reference}/decide"),
        json!({"action": "approve"}),
    )
    .await;
    assert_eq!(status, 200);

    let (auth, note) = tokio::time::timeout(Duration::from_secs(10), notifications.recv())
        .await
        .expect("a notification arrives")
        .unwrap();
    assert_eq!(auth.as_deref(), Some("Bearer hook-secret-123"));
    assert_eq!(note["resourceType"], "Bundle");
    assert_eq!(note["type"], "history");
    let status_params = &note["entry"][0]["resource"];
    assert_eq!(status_params["resourceType"], "Parameters");
    assert!(status_params["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "type" && p["valueCode"] == "event-notification"));
    let cr = &note["entry"][1]["resource"];
    assert_eq!(cr["resourceType"], "ClaimResponse");
    assert_eq!(cr["id"], reference.as_str());
    let shifted = json!({"entry": [{"resource": cr}]});
    assert_eq!(review_of(&shifted).0, "A1");
    task.abort();
    sbx.shutdown().await;
}

#[tokio::test]
async fn the_ticker_applies_timed_decisions_in_real_time() {
    let mut config = precert_sandbox::SandboxConfig::default_demo();
    config.scenarios.insert(
        0,
        precert_sandbox::config::Scenario {
            code: Some("70551".into()),
            member: None,
            description: "MRI brain: approved after 1 second".into(),
            outcome: Some(precert_sandbox::config::Outcome::Approve { after_seconds: 1 }),
            crd: None,
        },
    );
    let sbx = precert_sandbox::Sandbox::start(config, "127.0.0.1:0").await.unwrap();
    let base = sbx.base_url();
    let token = lakeside_token(&base).await;
    let (hook, mut notifications, task) = receiver().await;
    let mut subscription = fixture("PAS_Subscription_example_v221_good.json");
    subscription["channel"]["endpoint"] = json!(hook);
    subscription["_criteria"]["extension"][0]["valueString"] = json!("org-identifier=1245319599");
    fhir_post(&base, "/fhir/Subscription", &token, &subscription).await;
    let (_, b, _) = fhir_post(
        &base,
        "/fhir/Claim/$submit",
        &token,
        &pas_bundle("SBX100200301", "70551", 1, "2026-12-01"),
    )
    .await;
    assert_eq!(review_of(&b).0, "A4");
    // No clock advance: the background ticker decides, and the subscriber hears of it.
    let (_, note) = tokio::time::timeout(Duration::from_secs(10), notifications.recv())
        .await
        .expect("the ticker approves within seconds")
        .unwrap();
    let shifted = json!({"entry": [{"resource": note["entry"][1]["resource"]}]});
    assert_eq!(review_of(&shifted).0, "A1");
    task.abort();
    sbx.shutdown().await;
}

#[tokio::test]
async fn subscriptions_must_be_rest_hooks_to_the_clients_own_organisation() {
    let sbx = start().await;
    let base = sbx.base_url();
    let token = lakeside_token(&base).await;
    let mut s = fixture("PAS_Subscription_example_v221_good.json");
    s["channel"]["endpoint"] = json!("http://127.0.0.1:9/hook");
    // The example's filter names another organisation.
    let (status, oo, _) = fhir_post(&base, "/fhir/Subscription", &token, &s).await;
    assert_eq!(status, 400);
    assert!(oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("org-identifier"));
    s["channel"]["type"] = json!("email");
    s["_criteria"]["extension"][0]["valueString"] = json!("org-identifier=1245319599");
    let (status, _, _) = fhir_post(&base, "/fhir/Subscription", &token, &s).await;
    assert_eq!(status, 400);
    sbx.shutdown().await;
}

#[tokio::test]
async fn resubmitting_a_pended_claim_with_documents_answers_the_pend() {
    let sbx = start().await;
    let base = sbx.base_url();
    let token = lakeside_token(&base).await;
    let mut bundle = pas_bundle("SBX100200301", "27447", 1, "2027-01-20");
    let (_, b, _) = fhir_post(&base, "/fhir/Claim/$submit", &token, &bundle).await;
    let reference = b["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        sbx.submission(&reference).unwrap().status,
        precert_sandbox::Status::Pended
    );

    bundle["entry"].as_array_mut().unwrap().push(json!({
        "fullUrl": "urn:uuid:5d0a7a3c-1d7e-4c1f-9a55-0c4b9b7f2e11",
        "resource": {
            "resourceType": "DocumentReference",
            "status": "current",
            "content": [{"attachment": {"contentType": "application/pdf", "title": "ortho-notes.pdf", "size": 2048}}],
        },
    }));
    let (status, b, _) = fhir_post(&base, "/fhir/Claim/$submit", &token, &bundle).await;
    assert_eq!(status, 200);
    assert_eq!(b["entry"][0]["resource"]["id"], reference.as_str(), "the same request");
    assert_eq!(
        count(&base, "SBX100200301", "27447", "2027-01-20").await,
        1,
        "no new submission"
    );
    let r = sbx.submission(&reference).unwrap();
    assert_eq!(r.status, precert_sandbox::Status::InReview);
    assert_eq!(r.attachments[0].file_name, "ortho-notes.pdf");
    sbx.advance_clock(Duration::from_secs(20));
    let (_, b, _) = fhir_post(&base, "/fhir/Claim/$inquire", &token, &bundle).await;
    assert_eq!(review_of(&b).0, "A1");
    sbx.shutdown().await;
}

/// A CDS Hooks `order-sign` call with one draft ServiceRequest per code.
fn crd_request(member: &str, codes: &[&str]) -> Value {
    let orders: Vec<Value> = codes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"resource": {"resourceType": "ServiceRequest", "id": format!("sr{i}"), "status": "draft",
                "intent": "order", "subject": {"reference": "Patient/p"},
                "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": c}]}}})
        })
        .collect();
    json!({"hook": "order-sign", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/u", "patientId": "p",
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": orders}},
        "prefetch": {"coverage": {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": {"resourceType": "Coverage", "id": "c", "subscriberId": member}}]}}})
}

#[tokio::test]
async fn the_crd_service_answers_from_the_scenario_rules() {
    let sbx = start().await;
    let base = sbx.base_url();
    let services: Value = api()
        .get(format!("{base}/cds-services"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(services["services"][0]["hook"], "order-sign");
    let url = format!(
        "{base}/cds-services/{}",
        services["services"][0]["id"].as_str().unwrap()
    );

    let post = |token: String, body: Value| {
        let url = url.clone();
        async move {
            let r = api().post(&url).bearer_auth(token).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, _) = post("not-a-token".into(), crd_request("SBX100200301", &["73721"])).await;
    assert_eq!(status, 401);
    let token = lakeside_token(&base).await;
    let (status, v) = post(token.clone(), crd_request("SBX100200301", &["73721", "73560", "99213"])).await;
    assert_eq!(status, 200, "{v}");
    let actions = v["systemActions"].as_array().unwrap();
    assert_eq!(
        actions.len(),
        2,
        "no coverage information for a code no rule answers: {v}"
    );
    let pa = |i: usize| {
        let ext = &actions[i]["resource"]["extension"][0];
        assert_eq!(
            ext["url"],
            "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
        );
        let sub = ext["extension"].as_array().unwrap();
        let get = |u: &str| sub.iter().find(|e| e["url"] == u).cloned().unwrap_or(Value::Null);
        assert_eq!(get("coverage")["valueReference"]["reference"], "Coverage/c");
        assert!(get("coverage-assertion-id")["valueString"].is_string());
        (
            actions[i]["resource"]["id"].clone(),
            get("pa-needed")["valueCode"].clone(),
        )
    };
    assert_eq!(pa(0), (json!("sr0"), json!("auth-needed")));
    assert_eq!(pa(1), (json!("sr1"), json!("no-auth")));
    assert_eq!(v["cards"].as_array().unwrap().len(), 2);
    assert_eq!(v["cards"][0]["source"]["label"], "Sandbox Health Plan");

    let mut bad = crd_request("SBX100200301", &["73721"]);
    bad["hook"] = json!("order-select");
    let (status, v) = post(token.clone(), bad).await;
    assert_eq!(status, 400, "{v}");
    let mut bad = crd_request("SBX100200301", &["73721"]);
    bad["prefetch"] = json!({});
    let (status, v) = post(token, bad).await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("prefetch.coverage"), "{v}");
    sbx.shutdown().await;
}
