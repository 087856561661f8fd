//! The CDS Hooks request of a Da Vinci CRD call, built from the PAS
//! request's own resources (`pas::bundle::order_entries`): the draft
//! orders in `context.draftOrders`, the parties in `prefetch`.
//!
//! What changes from the PAS form: references become relative
//! (`Patient/ID`; the ids are the same case-derived UUIDs), orders are
//! `draft` (they are not signed yet), and the PAS profile claims are
//! dropped (a CRD service reads plain R4 resources; no profile is claimed
//! that precert does not check).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::case::CaseData;
use crate::pas::{self, resources::Resource};
use crate::playbook::CrdHook;

/// One draft order precert sent, as the answer must name it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OrderRef {
    /// `ServiceRequest` or `DeviceRequest`.
    pub resource_type: String,
    pub id: String,
    /// The service line's CPT/HCPCS code.
    pub code: String,
}

impl OrderRef {
    /// `ServiceRequest/ID`.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.resource_type, self.id)
    }
}

/// A built request and what its answer is tied to.
#[derive(Clone, Debug)]
pub struct CrdRequest {
    pub body: Value,
    pub hook_instance: String,
    pub orders: Vec<OrderRef>,
    /// `Coverage/ID`: the coverage the answer must be about.
    pub coverage: String,
}

/// A random (version 4) UUID for `hookInstance`.
fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the OS has randomness");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Rewrites every `reference` inside `v` through `map` (`urn:uuid:ID` →
/// `Type/ID`).
fn relative(v: &mut Value, map: &HashMap<String, String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                match child {
                    Value::String(s) if k == "reference" => {
                        if let Some(r) = map.get(s.as_str()) {
                            *s = r.clone();
                        }
                    }
                    _ => relative(child, map),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| relative(c, map)),
        _ => {}
    }
}

/// The CDS Hooks request for `hook` about a case's orders.
pub fn build(case: &CaseData, ctx: &pas::Context<'_>, hook: CrdHook) -> CrdRequest {
    let entries = pas::bundle::order_entries(case, ctx);
    let map: HashMap<String, String> = entries
        .iter()
        .map(|e| {
            let v = serde_json::to_value(&e.resource).expect("a resource serialises");
            let kind = v["resourceType"].as_str().unwrap_or_default().to_owned();
            let id = e.full_url.trim_start_matches("urn:uuid:").to_owned();
            (e.full_url.clone(), format!("{kind}/{id}"))
        })
        .collect();
    let mut orders = Vec::new();
    let mut draft = Vec::new();
    let mut prefetch = Map::new();
    let mut organizations = Vec::new();
    let mut coverage = String::new();
    let mut patient_id = String::new();
    let mut practitioner = None;
    for e in &entries {
        let mut v = serde_json::to_value(&e.resource).expect("a resource serialises");
        relative(&mut v, &map);
        if let Value::Object(o) = &mut v {
            o.remove("meta");
        }
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        match &e.resource {
            Resource::ServiceRequest(_) | Resource::DeviceRequest(_) => {
                v["status"] = json!("draft");
                let code = v
                    .pointer("/code/coding/0/code")
                    .or_else(|| v.pointer("/codeCodeableConcept/coding/0/code"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                orders.push(OrderRef {
                    resource_type: v["resourceType"].as_str().unwrap_or_default().to_owned(),
                    id,
                    code,
                });
                draft.push(json!({ "resource": v }));
            }
            Resource::Patient(_) => {
                patient_id = id;
                prefetch.insert("patient".into(), v);
            }
            Resource::Coverage(_) => {
                coverage = format!("Coverage/{id}");
                prefetch.insert(
                    "coverage".into(),
                    json!({ "resourceType": "Bundle", "type": "searchset", "total": 1,
                        "entry": [{ "resource": v }] }),
                );
            }
            // The requesting practitioner comes first; a servicing
            // practitioner would be the requester too (parties.rs).
            Resource::Practitioner(_) if practitioner.is_none() => {
                practitioner = Some(format!("Practitioner/{id}"));
                prefetch.insert("practitioner".into(), v);
            }
            Resource::Organization(_) => organizations.push(json!({ "resource": v })),
            _ => {}
        }
    }
    // The insurer, the requesting organization and a servicing one.
    prefetch.insert(
        "organizations".into(),
        json!({ "resourceType": "Bundle", "type": "searchset", "total": organizations.len(), "entry": organizations }),
    );
    let hook_instance = uuid_v4();
    let mut context = json!({
        "userId": practitioner.unwrap_or_default(),
        "patientId": patient_id,
        "draftOrders": { "resourceType": "Bundle", "type": "collection", "entry": draft },
    });
    if hook == CrdHook::OrderSelect {
        context["selections"] = json!(orders.iter().map(OrderRef::reference).collect::<Vec<_>>());
    }
    let body = json!({
        "hook": hook.as_str(),
        "hookInstance": hook_instance,
        "context": context,
        "prefetch": prefetch,
    });
    CrdRequest {
        body,
        hook_instance,
        orders,
        coverage,
    }
}
