//! Helpers: start a sandbox, log in through the portal, build PAS bundles.

use std::time::Duration;

use precert_sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use reqwest::redirect::Policy;
use reqwest::Client;
use serde_json::{json, Value};

pub const LAKESIDE: (&str, &str, &str) = ("lakeside.precert", "Sandbox-Lakeside-2026", "JBSWY3DPEHPK3PXP");
pub const VALLEY: (&str, &str, &str) = ("valley.auth", "Sandbox-Valley-2026", "KRSXG5CTMVRXEZLU");

pub async fn start() -> SandboxHandle {
    Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .expect("sandbox starts")
}

/// A browser-like client: keeps cookies, follows redirects.
pub fn browser() -> Client {
    Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A client that keeps cookies but shows redirects instead of following them.
pub fn no_redirects() -> Client {
    Client::builder()
        .cookie_store(true)
        .redirect(Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn api() -> Client {
    Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

/// Posts the login form; returns the final response after redirects.
pub async fn password_step(c: &Client, base: &str, account: (&str, &str, &str)) -> reqwest::Response {
    c.post(format!("{base}/portal/login"))
        .form(&[("username", account.0), ("password", account.1)])
        .send()
        .await
        .unwrap()
}

pub async fn mfa_step(c: &Client, base: &str, seed: &str) -> reqwest::Response {
    let code = precert_sandbox::totp::current_code(seed).unwrap();
    c.post(format!("{base}/portal/mfa"))
        .form(&[("code", code.as_str())])
        .send()
        .await
        .unwrap()
}

/// Logs in with password and MFA; returns the page landed on.
pub async fn login(c: &Client, base: &str, account: (&str, &str, &str)) -> String {
    let r = password_step(c, base, account).await;
    assert!(r.url().path().ends_with("/portal/mfa"), "{}", r.url());
    mfa_step(c, base, account.2).await.text().await.unwrap()
}

pub async fn get_text(c: &Client, url: &str) -> (reqwest::StatusCode, String, String) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status();
    let path = r.url().path().to_string();
    (status, path, r.text().await.unwrap())
}

pub async fn set_hazards(base: &str, patch: Value) -> Value {
    let r = api()
        .put(format!("{base}/admin/hazards"))
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "hazards: {}", r.status());
    r.json().await.unwrap()
}

pub async fn admin_post(base: &str, path: &str, body: Value) -> (reqwest::StatusCode, Value) {
    let r = api().post(format!("{base}{path}")).json(&body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The status search's JSON answer, with its HTTP status.
pub async fn status_search(c: &Client, base: &str, query: &str) -> (reqwest::StatusCode, String) {
    let r = c.get(format!("{base}/portal/api/status?{query}")).send().await.unwrap();
    let status = r.status();
    (status, r.text().await.unwrap())
}

pub async fn admin_get(base: &str, path: &str) -> Value {
    api()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn count(base: &str, member: &str, code: &str, date: &str) -> u64 {
    admin_get(
        base,
        &format!("/admin/submissions/count?member_id={member}&code={code}&service_date={date}"),
    )
    .await["count"]
        .as_u64()
        .unwrap()
}

/// A complete, valid service-details form for wizard step 2.
pub fn service_form(code: &str, units: &str, start: &str) -> Vec<(String, String)> {
    [
        ("request_type", "imaging"),
        ("urgency", "standard"),
        ("setting", "outpatient"),
        ("code_1", code),
        ("units_1", units),
        ("diagnoses", "M23.91"),
        ("start_date", start),
        ("end_date", start),
        ("servicing_npi", "1245319599"),
        ("attestation", "yes"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Walks the wizard over HTTP and returns the reference number.
pub async fn submit_via_portal(
    c: &Client,
    base: &str,
    member: (&str, &str),
    code: &str,
    units: &str,
    start: &str,
) -> String {
    submit_via_portal_dates(c, base, member, code, units, (start, start)).await
}

/// [`submit_via_portal`] with a service end date of its own.
pub async fn submit_via_portal_dates(
    c: &Client,
    base: &str,
    member: (&str, &str),
    code: &str,
    units: &str,
    (start, end): (&str, &str),
) -> String {
    let mut form = service_form(code, units, start);
    for (k, v) in &mut form {
        if k == "end_date" {
            *v = end.to_string();
        }
    }
    let r = c
        .post(format!("{base}/portal/requests/new"))
        .form(&[("member_id", member.0), ("birth_date", member.1)])
        .send()
        .await
        .unwrap();
    let page = r.text().await.unwrap();
    assert!(page.contains("id=\"eligibility-result\""), "{page}");
    let r = c
        .post(format!("{base}/portal/requests/new/service"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(r.url().path().ends_with("/attachments"), "{}", r.url());
    let r = c
        .post(format!("{base}/portal/requests/new/submit"))
        .send()
        .await
        .unwrap();
    let page = r.text().await.unwrap();
    reference_in(&page)
}

pub fn reference_in(page: &str) -> String {
    let at = page.find("id=\"reference-number\">").expect("confirmation page") + 22;
    page[at..at + 12].to_string()
}

pub fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fhir-examples")).to_path_buf()
}

pub fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The conformant PAS example, rewritten for a sandbox member, code, units and date.
pub fn pas_bundle(member: &str, code: &str, units: u32, date: &str) -> Value {
    let mut b = fixture("conformant_pas_bundle_v110.json");
    for e in b["entry"].as_array_mut().unwrap() {
        let r = &mut e["resource"];
        match r["resourceType"].as_str().unwrap() {
            "Patient" => r["identifier"][0]["value"] = json!(member),
            "Coverage" => r["subscriberId"] = json!(member),
            "Claim" => {
                let item = &mut r["item"][0];
                item["productOrService"] =
                    json!({"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": code}]});
                item["quantity"] = json!({"value": units});
                item["servicedDate"] = json!(date);
                r["identifier"][0]["value"] = json!(format!("TRACE-{member}-{code}-{date}"));
            }
            _ => {}
        }
    }
    b
}

pub async fn token(base: &str, id: &str, secret: &str) -> String {
    let r = api()
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

pub async fn lakeside_token(base: &str) -> String {
    token(base, "lakeside-pas", "sandbox-lakeside-client-secret").await
}

pub async fn fhir_post(
    base: &str,
    path: &str,
    token: &str,
    body: &Value,
) -> (reqwest::StatusCode, Value, reqwest::header::HeaderMap) {
    let r = api()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

/// The review action code, auth number and reason code of a ClaimResponse's first item.
pub fn review_of(bundle: &Value) -> (String, Option<String>, Option<String>) {
    let cr = &bundle["entry"][0]["resource"];
    assert_eq!(cr["resourceType"], "ClaimResponse");
    let ext = cr["item"][0]["adjudication"][0]["extension"][0]["extension"]
        .as_array()
        .unwrap();
    let find = |suffix: &str| {
        ext.iter()
            .find(|e| e["url"].as_str().unwrap().ends_with(suffix))
            .cloned()
    };
    let code = find("extension-reviewActionCode").unwrap()["valueCodeableConcept"]["coding"][0]["code"]
        .as_str()
        .unwrap()
        .to_string();
    let number = find("number").map(|e| e["valueString"].as_str().unwrap().to_string());
    let reason = find("reasonCode").map(|e| {
        e["valueCodeableConcept"]["coding"][0]["code"]
            .as_str()
            .unwrap()
            .to_string()
    });
    (code, number, reason)
}
