//! The Da Vinci CRD service (Coverage Requirements Discovery over CDS
//! Hooks): discovery at `GET /cds-services`, the `order-sign` and
//! `order-select` services at `POST /cds-services/{id}`.
//!
//! What it says about each draft order comes from the scenario rules' `crd`
//! answers (by member, else by the order's code): a `systemActions` update
//! of the order carrying the coverage-information extension, and a card for
//! a person. An order no rule answers gets no coverage information. The
//! `off_spec` hazard breaks the answer (see `OffSpec`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::oauth::authorize;
use crate::config::CrdAnswer;
use crate::state::{random_token, OffSpec, Shared};

const COVERAGE_INFORMATION: &str = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information";
const SERVICES: [(&str, &str); 2] = [
    ("order-sign", "sandbox-crd-order-sign"),
    ("order-select", "sandbox-crd-order-select"),
];

fn answer(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    answer(status, json!({ "error": message }))
}

pub async fn discovery() -> Response {
    let services: Vec<Value> = SERVICES
        .iter()
        .map(|(hook, id)| {
            json!({
                "hook": hook,
                "id": id,
                "title": "Sandbox Health Plan coverage requirements",
                "description": "Da Vinci CRD: whether prior authorization is needed for the draft orders.",
                "prefetch": {
                    "patient": "Patient/{{context.patientId}}",
                    "coverage": "Coverage?patient={{context.patientId}}&status=active",
                    "practitioner": "{{context.userId}}",
                    "organizations": "Organization?_id={{context.draftOrders.ServiceRequest.requester.resolve().organization.id}}",
                },
            })
        })
        .collect();
    answer(StatusCode::OK, json!({ "services": services }))
}

fn order_code(order: &Value) -> Option<&str> {
    order
        .pointer("/code/coding/0/code")
        .or_else(|| order.pointer("/codeCodeableConcept/coding/0/code"))
        .and_then(Value::as_str)
}

pub async fn service(State(state): State<Shared>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let Some((hook, _)) = SERVICES.iter().find(|(_, s)| *s == id) else {
        return error(StatusCode::NOT_FOUND, &format!("No CDS service `{id}`."));
    };
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("The body is not valid JSON: {e}")),
    };
    if req.get("hook").and_then(Value::as_str) != Some(hook) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("Service `{id}` answers the `{hook}` hook."),
        );
    }
    if req.get("hookInstance").and_then(Value::as_str).is_none() {
        return error(StatusCode::BAD_REQUEST, "hookInstance is required.");
    }
    let Some(orders) = req.pointer("/context/draftOrders/entry").and_then(Value::as_array) else {
        return error(
            StatusCode::BAD_REQUEST,
            "context.draftOrders must be a Bundle with entries.",
        );
    };
    let coverage = req.pointer("/prefetch/coverage/entry/0/resource");
    let Some(member) = coverage.and_then(|c| c.get("subscriberId")).and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "prefetch.coverage must hold the patient's Coverage with its subscriberId.",
        );
    };
    let coverage_ref = format!(
        "Coverage/{}",
        coverage
            .and_then(|c| c.get("id"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    );
    let (how, today) = {
        let inner = state.lock();
        (
            inner.hazards.off_spec,
            (chrono::Utc::now() + inner.clock_offset).date_naive(),
        )
    };
    let mut cards = Vec::new();
    let mut actions = Vec::new();
    for entry in orders {
        let order = &entry["resource"];
        let Some(code) = order_code(order) else { continue };
        let Some(rule) = state.scenarios.crd_for(member, code) else {
            continue;
        };
        let crd = rule.crd.expect("crd_for finds rules with a crd answer");
        let (covered, pa, summary) = match crd {
            CrdAnswer::AuthNeeded => (
                "covered",
                Some("auth-needed"),
                format!("Prior authorization required for {code}"),
            ),
            CrdAnswer::NoAuth => (
                "covered",
                Some("no-auth"),
                format!("No prior authorization needed for {code}"),
            ),
            CrdAnswer::Conditional => (
                "conditional",
                Some("conditional"),
                format!("Prior authorization for {code} depends on more information"),
            ),
            CrdAnswer::Satisfied => (
                "covered",
                Some("satisfied"),
                format!("Prior authorization for {code} is already satisfied"),
            ),
            CrdAnswer::NotCovered => ("not-covered", None, format!("{code} is not covered")),
        };
        let mut ext = vec![
            json!({ "url": "coverage", "valueReference": { "reference": coverage_ref } }),
            json!({ "url": "covered", "valueCode": covered }),
        ];
        if let Some(pa) = pa {
            ext.push(json!({ "url": "pa-needed", "valueCode": pa }));
        }
        if crd == CrdAnswer::AuthNeeded {
            ext.push(json!({ "url": "doc-needed", "valueCode": "clinical" }));
        }
        if crd == CrdAnswer::Satisfied {
            ext.push(json!({ "url": "satisfied-pa-id", "valueString": format!("SHP{}", &random_token()[..8]) }));
        }
        if !rule.description.is_empty() {
            ext.push(json!({ "url": "reason", "valueCodeableConcept": { "text": rule.description } }));
        }
        if how == OffSpec::Off {
            ext.push(json!({ "url": "date", "valueDate": today.to_string() }));
            ext.push(
                json!({ "url": "coverage-assertion-id", "valueString": format!("CRD-{}", &random_token()[..12]) }),
            );
        }
        let mut resource = order.clone();
        if how == OffSpec::Untied {
            resource["id"] = json!(random_token());
        }
        let list = resource
            .as_object_mut()
            .map(|o| o.entry("extension").or_insert_with(|| json!([])));
        if let Some(Value::Array(list)) = list {
            list.push(json!({ "url": COVERAGE_INFORMATION, "extension": ext }));
        }
        actions.push(json!({
            "type": "update",
            "description": format!("Coverage information for {code}"),
            "resource": resource,
        }));
        let mut card = json!({
            "uuid": random_token(),
            "summary": summary,
            "detail": rule.description,
        });
        if how == OffSpec::Off {
            card["indicator"] = json!("info");
            card["source"] = json!({ "label": state.config.payer_name });
        }
        cards.push(card);
    }
    answer(StatusCode::OK, json!({ "cards": cards, "systemActions": actions }))
}
