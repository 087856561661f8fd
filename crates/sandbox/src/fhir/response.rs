//! Writing ClaimResponse Bundles and rest-hook notification Bundles.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::config::SandboxConfig;
use crate::state::{random_token, OffSpec, Subscription};
use crate::store::{AuthRequest, ReviewAction};

use super::{FULL_URL_BASE, PAS, PAS_TOPIC};

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}]})
}

/// The ClaimResponse for a request in its current state.
pub fn claim_response(r: &AuthRequest, now: DateTime<Utc>) -> Value {
    let period = match (r.valid_from, r.valid_to) {
        (Some(s), Some(e)) => Some(json!({"start": s.to_string(), "end": e.to_string()})),
        _ => None,
    };
    let mut items = Vec::new();
    let mut add_items = Vec::new();
    for (i, l) in r.lines.iter().enumerate() {
        let seq = i + 1;
        let mut review = vec![json!({
            "url": format!("{PAS}/extension-reviewActionCode"),
            "valueCodeableConcept": coding("https://codesystem.x12.org/005010/306", l.action.code(), l.action.display()),
        })];
        if let Some(n) = &r.auth_number {
            if matches!(l.action, ReviewAction::A1 | ReviewAction::A2 | ReviewAction::A6) {
                review.insert(0, json!({"url": "number", "valueString": n}));
            }
        }
        if let (ReviewAction::A3, Some(d)) = (l.action, &r.denial) {
            review.push(json!({
                "url": "reasonCode",
                "valueCodeableConcept": {
                    "coding": [{"system": "https://sandbox-payer.invalid/denial-reason", "code": d.code, "display": d.text}],
                    "text": d.text,
                },
            }));
        }
        let adjudication = json!([{
            "extension": [{"url": format!("{PAS}/extension-reviewAction"), "extension": review}],
            "category": coding("http://terminology.hl7.org/CodeSystem/adjudication", "submitted", "Submitted Amount"),
        }]);
        let mut ext = vec![json!({
            "url": format!("{PAS}/extension-itemRequestedServiceDate"),
            "valuePeriod": {"start": r.service_start.to_string(), "end": r.service_end.to_string()},
        })];
        if let (Some(p), Some(d)) = (&period, r.decided_at) {
            ext.push(json!({"url": format!("{PAS}/extension-itemPreAuthIssueDate"), "valueDate": d.date_naive().to_string()}));
            ext.push(json!({"url": format!("{PAS}/extension-itemPreAuthPeriod"), "valuePeriod": p}));
        }
        if l.action == ReviewAction::A6 {
            add_items.push(json!({
                "itemSequence": [seq],
                "productOrService": {"coding": [{"system": code_system(&l.code), "code": l.code}]},
                "quantity": {"value": l.approved_units.unwrap_or(0)},
                "adjudication": [{
                    "extension": [{"url": format!("{PAS}/extension-reviewAction"), "extension": [
                        {"url": "number", "valueString": r.auth_number.clone().unwrap_or_default()},
                        {"url": format!("{PAS}/extension-reviewActionCode"), "valueCodeableConcept": coding("https://codesystem.x12.org/005010/306", "A6", "Modified")},
                    ]}],
                    "category": coding("http://terminology.hl7.org/CodeSystem/adjudication", "submitted", "Submitted Amount"),
                }],
            }));
        }
        items.push(json!({"extension": ext, "itemSequence": seq, "adjudication": adjudication}));
    }
    let mut identifier = vec![json!({"system": format!("{FULL_URL_BASE}/reference"), "value": r.reference})];
    if let Some(ci) = &r.claim_identifier {
        identifier
            .push(json!({"system": "https://prior-auth.davinci.hl7.org/PATIENT_EVENT_TRACE_NUMBER", "value": ci}));
    }
    let mut cr = json!({
        "resourceType": "ClaimResponse",
        "id": r.reference,
        "meta": {"profile": [format!("{PAS}/profile-claimresponse")]},
        "identifier": identifier,
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "use": "preauthorization",
        "patient": {"reference": format!("Patient/{}", r.member_id)},
        "created": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "insurer": {"reference": "Organization/sandbox-health-plan"},
        "requestor": {"reference": format!("Organization/{}", r.provider_npi)},
        "outcome": if r.status.is_open() { "queued" } else { "complete" },
        "disposition": r.status.label(),
        "item": items,
    });
    if let Some(n) = &r.auth_number {
        cr["preAuthRef"] = json!(n);
    }
    if let Some(p) = period {
        cr["preAuthPeriod"] = p;
    }
    if !add_items.is_empty() {
        cr["addItem"] = json!(add_items);
    }
    cr
}

fn code_system(code: &str) -> &'static str {
    if code.as_bytes().first().is_some_and(u8::is_ascii_alphabetic) {
        "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
    } else {
        "http://www.ama-assn.org/go/cpt"
    }
}

/// The Patient, insurer and requestor that a ClaimResponse references.
fn context_entries(config: &SandboxConfig, r: &AuthRequest) -> Vec<(String, Value)> {
    let member = config.member(&r.member_id);
    let (given, family) = match member {
        Some(m) => (m.first_name.clone(), m.last_name.clone()),
        None => {
            let mut parts = r.member_name.rsplitn(2, ' ');
            let family = parts.next().unwrap_or("").to_string();
            (parts.next().unwrap_or("").to_string(), family)
        }
    };
    let mut patient = json!({
        "resourceType": "Patient",
        "id": r.member_id,
        "meta": {"profile": [format!("{PAS}/profile-subscriber")]},
        "identifier": [{"system": format!("{FULL_URL_BASE}/member-id"), "value": r.member_id}],
        "name": [{"family": family, "given": [given]}],
    });
    if let Some(m) = member {
        patient["birthDate"] = json!(m.birth_date.to_string());
    }
    vec![
        (format!("{FULL_URL_BASE}/Patient/{}", r.member_id), patient),
        (
            format!("{FULL_URL_BASE}/Organization/sandbox-health-plan"),
            json!({
                "resourceType": "Organization", "id": "sandbox-health-plan",
                "meta": {"profile": [format!("{PAS}/profile-insurer")]},
                "active": true,
                "type": [{"coding": [{"system": "https://codesystem.x12.org/005010/98", "code": "PR"}]}],
                "name": config.payer_name,
            }),
        ),
        (
            format!("{FULL_URL_BASE}/Organization/{}", r.provider_npi),
            json!({
                "resourceType": "Organization", "id": r.provider_npi,
                "meta": {"profile": [format!("{PAS}/profile-requestor")]},
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": r.provider_npi}],
                "active": true,
                "type": [{"coding": [{"system": "https://codesystem.x12.org/005010/98", "code": "X3"}]}],
                "name": r.provider_name,
            }),
        ),
    ]
}

/// A PAS response Bundle: the ClaimResponse first, then what it references.
pub fn response_bundle(config: &SandboxConfig, r: &AuthRequest, now: DateTime<Utc>) -> Value {
    let mut entries = vec![json!({
        "fullUrl": format!("{FULL_URL_BASE}/ClaimResponse/{}", r.reference),
        "resource": claim_response(r, now),
    })];
    for (url, res) in context_entries(config, r) {
        entries.push(json!({"fullUrl": url, "resource": res}));
    }
    json!({
        "resourceType": "Bundle",
        "id": random_token(),
        "meta": {"profile": [format!("{PAS}/profile-pas-response-bundle")]},
        "type": "collection",
        "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "entry": entries,
    })
}

/// A response Bundle as the `off_spec` hazard breaks it (see [`OffSpec`]).
pub fn off_spec(mut b: Value, how: OffSpec) -> Value {
    if how == OffSpec::Off {
        return b;
    }
    if let Some(o) = b.as_object_mut() {
        o.remove("timestamp");
    }
    if let Some(entries) = b.get_mut("entry").and_then(Value::as_array_mut) {
        entries.retain(|e| e["resource"]["resourceType"] != "Patient");
        if let Some(first) = entries.first_mut().and_then(Value::as_object_mut) {
            first.remove("fullUrl");
            if let Some(cr) = first.get_mut("resource").and_then(Value::as_object_mut) {
                cr.remove("resourceType");
                if how == OffSpec::Untied {
                    cr.remove("id");
                    cr.remove("identifier");
                }
            }
        }
    }
    b
}

/// A rest-hook notification (full-resource payload) about `r`.
pub fn notification_bundle(config: &SandboxConfig, sub: &Subscription, r: &AuthRequest, now: DateTime<Utc>) -> Value {
    let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let cr_url = format!("{FULL_URL_BASE}/ClaimResponse/{}", r.reference);
    let context = context_entries(config, r);
    let mut event_parts = vec![
        json!({"name": "event-number", "valueString": sub.events.to_string()}),
        json!({"name": "timestamp", "valueInstant": stamp}),
        json!({"name": "focus", "valueReference": {"reference": cr_url}}),
    ];
    for (url, _) in &context {
        event_parts.push(json!({"name": "additional-context", "valueReference": {"reference": url}}));
    }
    let status = json!({
        "resourceType": "Parameters",
        "id": random_token(),
        "meta": {"profile": ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"]},
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": format!("{FULL_URL_BASE}/Subscription/{}", sub.id)}},
            {"name": "topic", "valueCanonical": PAS_TOPIC},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": "event-notification"},
            {"name": "events-since-subscription-start", "valueString": sub.events.to_string()},
            {"name": "notification-event", "part": event_parts},
        ],
    });
    let mut entries = vec![
        json!({
            "fullUrl": format!("urn:uuid:{}", uuid_like()),
            "resource": status,
            "request": {"method": "GET", "url": format!("{FULL_URL_BASE}/Subscription/{}/$status", sub.id)},
            "response": {"status": "200"},
        }),
        json!({
            "fullUrl": cr_url,
            "resource": claim_response(r, now),
            "request": {"method": "POST", "url": "ClaimResponse"},
            "response": {"status": "201"},
        }),
    ];
    for (url, res) in context {
        entries.push(json!({"fullUrl": url, "resource": res, "request": {"method": "POST", "url": res["resourceType"]}, "response": {"status": "201"}}));
    }
    json!({
        "resourceType": "Bundle",
        "id": random_token(),
        "meta": {"profile": ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4"]},
        "type": "history",
        "timestamp": stamp,
        "entry": entries,
    })
}

fn uuid_like() -> String {
    let t = random_token();
    format!(
        "{}-{}-4{}-a{}-{}",
        &t[0..8],
        &t[8..12],
        &t[13..16],
        &t[17..20],
        &t[20..32]
    )
}
