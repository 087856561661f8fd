//! Rest-hook `Subscription`s: create, read, delete.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::state::{random_token, Shared, Subscription};

use super::bundle::str_at;
use super::oauth::authorize;
use super::{fhir, outcome, parse_json, PAS_TOPIC};
pub async fn subscribe(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let client = match authorize(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut resource = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut errors = Vec::new();
    if str_at(&resource, &["resourceType"]) != Some("Subscription") {
        errors.push("resourceType must be \"Subscription\".".to_string());
    }
    if str_at(&resource, &["criteria"]) != Some(PAS_TOPIC) {
        errors.push(format!("Subscription.criteria must be {PAS_TOPIC}."));
    }
    if str_at(&resource, &["channel", "type"]) != Some("rest-hook") {
        errors.push("Subscription.channel.type must be \"rest-hook\".".into());
    }
    let endpoint = str_at(&resource, &["channel", "endpoint"]).unwrap_or("").to_string();
    if !endpoint.starts_with("http://") {
        errors.push("Subscription.channel.endpoint must be an http:// URL (the sandbox sends no TLS).".into());
    }
    let filter = resource
        .pointer("/_criteria/extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| str_at(e, &["valueString"]))
        .find_map(|s| s.strip_prefix("org-identifier="))
        .map(str::to_string);
    let org_npi = filter.unwrap_or_else(|| client.provider_npi.clone());
    if org_npi != client.provider_npi {
        errors.push(format!(
            "Subscription filter org-identifier={org_npi} is not the client's organisation."
        ));
    }
    if !errors.is_empty() {
        return outcome(StatusCode::BAD_REQUEST, "invalid", &errors);
    }
    let header_lines: Vec<String> = resource
        .pointer("/channel/header")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let id = random_token();
    resource["id"] = json!(id);
    resource["status"] = json!("active");
    state.lock().subscriptions.push(Subscription {
        id: id.clone(),
        client_id: client.client_id,
        endpoint,
        headers: header_lines,
        org_npi,
        events: 0,
        resource: resource.clone(),
    });
    let mut r = fhir(StatusCode::CREATED, resource);
    if let Ok(v) = header::HeaderValue::from_str(&format!("/fhir/Subscription/{id}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

pub async fn get_subscription(State(state): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let client = match authorize(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let found = state
        .lock()
        .subscriptions
        .iter()
        .find(|s| s.id == id && s.client_id == client.client_id)
        .map(|s| s.resource.clone());
    match found {
        Some(res) => fhir(StatusCode::OK, res),
        None => outcome(StatusCode::NOT_FOUND, "not-found", &["No such Subscription.".into()]),
    }
}

pub async fn delete_subscription(State(state): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let client = match authorize(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut inner = state.lock();
    let before = inner.subscriptions.len();
    inner
        .subscriptions
        .retain(|s| !(s.id == id && s.client_id == client.client_id));
    if inner.subscriptions.len() < before {
        StatusCode::NO_CONTENT.into_response()
    } else {
        outcome(StatusCode::NOT_FOUND, "not-found", &["No such Subscription.".into()])
    }
}
