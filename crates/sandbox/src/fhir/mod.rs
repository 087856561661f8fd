//! The Da Vinci PAS API: OAuth2 client credentials, `Claim/$submit`, `Claim/$inquire`,
//! rest-hook `Subscription`s and their notifications.
//!
//! `oauth` hands out and checks bearer tokens, `bundle` reads PAS request Bundles,
//! `response` writes ClaimResponse and notification Bundles, `subscription` keeps the
//! rest-hooks; this module holds the routes and the Claim operations.

mod bundle;
mod crd;
mod oauth;
mod response;
mod subscription;

use bundle::{claim_of, parse_submit, str_at};
use oauth::{authorize, token};
pub use response::notification_bundle;
use response::{off_spec, response_bundle};
use subscription::{delete_subscription, get_subscription, subscribe};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::config::ApiClient;
use crate::state::Shared;
use crate::store::{Attachment, Channel, Decision, NewRequest, Status};

/// The base of the `fullUrl`s the sandbox writes (a reserved, unresolvable domain).
pub const FULL_URL_BASE: &str = "https://sandbox-payer.invalid/fhir";
const PAS: &str = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition";
const PAS_TOPIC: &str = "http://hl7.org/fhir/us/davinci-pas/SubscriptionTopic/PASSubscriptionTopic";
const FHIR_JSON: &str = "application/fhir+json";

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/fhir/Claim/$submit", post(submit))
        .route("/fhir/Claim/$inquire", post(inquire))
        .route("/fhir/Subscription", post(subscribe))
        .route(
            "/fhir/Subscription/{id}",
            get(get_subscription).delete(delete_subscription),
        )
        .route("/fhir/metadata", get(metadata))
        .route("/cds-services", get(crd::discovery))
        .route("/cds-services/{id}", post(crd::service))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// Largest accepted request body: PAS Bundles may carry base64 clinical documents.
const BODY_LIMIT: usize = 20 * 1024 * 1024;

/// A FHIR response with the right media type.
fn fhir(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, FHIR_JSON)], body.to_string()).into_response()
}

/// An OperationOutcome with one issue per message.
pub fn outcome(status: StatusCode, code: &str, messages: &[String]) -> Response {
    let issues: Vec<Value> = messages
        .iter()
        .map(|m| json!({"severity": "error", "code": code, "diagnostics": m}))
        .collect();
    fhir(status, json!({"resourceType": "OperationOutcome", "issue": issues}))
}

fn parse_json(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        outcome(
            StatusCode::BAD_REQUEST,
            "structure",
            &[format!("The body is not valid JSON: {e}")],
        )
    })
}

pub async fn submit(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let client = match authorize(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let bundle = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let today = state.now().date_naive();
    let parsed = match parse_submit(&bundle, today) {
        Ok(p) => p,
        Err(errors) => return outcome(StatusCode::BAD_REQUEST, "invalid", &errors),
    };
    if let Some(answer) = answer_pend(&state, &client, &bundle, parsed.claim_identifier.as_deref()) {
        return answer;
    }
    let member = state.config.member(&parsed.member_id).cloned();
    let provider_name = state
        .config
        .accounts
        .iter()
        .find(|a| a.provider_npi == client.provider_npi)
        .map(|a| a.provider_name.clone())
        .unwrap_or_else(|| client.client_id.clone());
    let new = NewRequest {
        channel: Channel::Api,
        submitted_by: client.client_id.clone(),
        provider_npi: client.provider_npi.clone(),
        provider_name,
        member_id: parsed.member_id.clone(),
        member_name: member.as_ref().map(|m| m.full_name()).unwrap_or(parsed.member_name),
        request_type: parsed.request_type,
        urgency: parsed.urgency,
        setting: "outpatient".into(),
        lines: parsed.lines,
        diagnoses: parsed.diagnoses,
        service_start: parsed.start,
        service_end: parsed.end,
        servicing_npi: parsed.servicing_npi,
        attachments: Vec::new(),
        claim_identifier: parsed.claim_identifier,
    };
    // Decisions made while submitting travel in the synchronous response, so they are
    // not notified; subscribers hear of changes after submission.
    let body = {
        let mut inner = state.lock();
        let now = Utc::now() + inner.clock_offset;
        let (id, _) = inner.store.submit(new, now, &state.scenarios);
        // A known member without coverage on the service date is denied outright.
        if member.as_ref().is_some_and(|m| !m.is_active_on(parsed.start)) {
            let reference = inner.store.get(id).map(|r| r.reference.clone()).unwrap_or_default();
            let denial = Decision::Deny {
                reason_code: "ELIG-01".into(),
                reason_text: "The member's coverage is not active on the requested service date.".into(),
            };
            let _ = inner.store.decide(&reference, denial, now);
        }
        let r = inner.store.get(id).cloned();
        let how = inner.hazards.off_spec;
        r.map(|r| off_spec(response_bundle(&state.config, &r, now), how))
    };
    match body {
        Some(b) => fhir(StatusCode::OK, b),
        None => outcome(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            &["Lost the request.".into()],
        ),
    }
}

/// A Claim with the identifier of this client's pended request answers the pend: its
/// DocumentReferences are the requested information and no new request is made. The
/// request goes back to review; the answer carries its current state.
fn answer_pend(state: &Shared, client: &ApiClient, bundle: &Value, identifier: Option<&str>) -> Option<Response> {
    let identifier = identifier?;
    let mut inner = state.lock();
    let now = Utc::now() + inner.clock_offset;
    let reference = inner
        .store
        .by_claim_identifier(&client.client_id, identifier)
        .filter(|r| r.status == Status::Pended)?
        .reference
        .clone();
    let documents = document_attachments(bundle, now);
    inner.store.information_received(&reference, documents, now).ok()?;
    let how = inner.hazards.off_spec;
    let r = inner.store.by_reference(&reference)?;
    Some(fhir(
        StatusCode::OK,
        off_spec(response_bundle(&state.config, r, now), how),
    ))
}

/// The DocumentReferences of a Bundle, recorded as attachments.
fn document_attachments(bundle: &Value, now: DateTime<Utc>) -> Vec<Attachment> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "DocumentReference")
        .map(|r| {
            let a = &r["content"][0]["attachment"];
            let size = a["size"]
                .as_u64()
                .map(|n| n as usize)
                .unwrap_or_else(|| a["data"].as_str().map(|d| d.len() / 4 * 3).unwrap_or(0));
            Attachment {
                file_name: a["title"]
                    .as_str()
                    .or_else(|| r["id"].as_str())
                    .unwrap_or("document")
                    .to_string(),
                content_type: a["contentType"]
                    .as_str()
                    .unwrap_or("application/octet-stream")
                    .to_string(),
                size_bytes: size,
                uploaded_at: now,
            }
        })
        .collect()
}

pub async fn inquire(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let client = match authorize(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let bundle = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let claim = match claim_of(&bundle) {
        Ok(c) => c,
        Err(errors) => return outcome(StatusCode::BAD_REQUEST, "invalid", &errors),
    };
    let identifiers: Vec<&str> = claim
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("value").and_then(Value::as_str))
        .collect();
    let pre_auth = claim
        .pointer("/item/0/extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| str_at(e, &["url"]).is_some_and(|u| u.ends_with("extension-authorizationNumber")))
        .filter_map(|e| str_at(e, &["valueString"]))
        .collect::<Vec<_>>();
    let found = {
        let inner = state.lock();
        let now = Utc::now() + inner.clock_offset;
        identifiers
            .iter()
            .find_map(|i| {
                inner
                    .store
                    .by_claim_identifier(&client.client_id, i)
                    .or_else(|| inner.store.by_reference(i))
            })
            .or_else(|| pre_auth.iter().find_map(|i| inner.store.by_reference(i)))
            .filter(|r| r.provider_npi == client.provider_npi)
            .map(|r| off_spec(response_bundle(&state.config, r, now), inner.hazards.off_spec))
    };
    match found {
        Some(b) => fhir(StatusCode::OK, b),
        None => outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &["No prior authorization matches the Claim identifier.".into()],
        ),
    }
}

pub async fn metadata() -> Response {
    fhir(
        StatusCode::OK,
        json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "implementation": {"description": "precert sandbox payer (Da Vinci PAS)"},
            "rest": [{"mode": "server", "resource": [
                {"type": "Claim", "operation": [{"name": "submit"}, {"name": "inquire"}]},
                {"type": "Subscription", "interaction": [{"code": "create"}, {"code": "read"}, {"code": "delete"}]},
            ]}],
        }),
    )
}
