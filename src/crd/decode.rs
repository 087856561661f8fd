//! Reading a CRD service's CDS Hooks answer: the coverage-information
//! extension on the orders in `systemActions` and in card suggestions'
//! actions, tied to the orders precert sent by their ids, and every way the
//! answer departs from CDS Hooks and the CRD guide listed as a conformance
//! problem.

use serde::Serialize;
use serde_json::Value;

use super::request::OrderRef;

pub const COVERAGE_INFORMATION: &str =
    "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrdDecodeError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a CDS Hooks answer: {0}")]
    NotAnAnswer(String),
}

/// One coverage-information extension, tied to an order precert sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CoverageInfo {
    /// `ServiceRequest/ID` of the order it is about.
    pub order: String,
    /// The order's CPT/HCPCS code.
    pub code: String,
    /// covered | not-covered | conditional.
    pub covered: Option<String>,
    /// auth-needed | no-auth | satisfied | performpa | conditional.
    pub pa_needed: Option<String>,
    pub doc_needed: Vec<String>,
    pub info_needed: Vec<String>,
    pub coverage_assertion_id: Option<String>,
    pub satisfied_pa_id: Option<String>,
    pub date: Option<String>,
    pub expiry_date: Option<String>,
    /// The payer's reasons, in its words.
    pub reasons: Vec<String>,
    /// Where in the answer it was found (`systemActions[0]`).
    pub at: String,
}

/// A CRD answer, read.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CrdAnswer {
    /// Coverage information about the orders precert sent.
    pub coverage: Vec<CoverageInfo>,
    /// Coverage information that names no order or coverage of this
    /// request: it cannot be applied to the case.
    pub untied: Vec<String>,
    /// How the answer departs from CDS Hooks or the CRD guide.
    pub problems: Vec<String>,
    /// The cards' summaries (what a person would have seen).
    pub summaries: Vec<String>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Reads a CDS Hooks answer to a request about `orders` (on `coverage`,
/// `Coverage/ID`).
pub fn read(v: &Value, orders: &[OrderRef], coverage: &str) -> Result<CrdAnswer, CrdDecodeError> {
    let Some(obj) = v.as_object() else {
        return Err(CrdDecodeError::NotAnAnswer("the body is not a JSON object".into()));
    };
    if obj.contains_key("resourceType") {
        return Err(CrdDecodeError::NotAnAnswer(format!(
            "a FHIR {} is not a CDS Hooks answer",
            v["resourceType"].as_str().unwrap_or("resource")
        )));
    }
    let mut a = CrdAnswer::default();
    let cards = match v.get("cards") {
        Some(Value::Array(c)) => c.as_slice(),
        Some(_) => {
            a.problems.push("`cards` is not an array".into());
            &[]
        }
        None => {
            a.problems
                .push("`cards` is missing (CDS Hooks requires it, empty when there is nothing to say)".into());
            &[]
        }
    };
    for (i, card) in cards.iter().enumerate() {
        let at = format!("cards[{i}]");
        for key in ["summary", "indicator"] {
            if text(card, key).is_none() {
                a.problems.push(format!("{at}.{key} is missing"));
            }
        }
        if card.pointer("/source/label").and_then(Value::as_str).is_none() {
            a.problems.push(format!("{at}.source.label is missing"));
        }
        if let Some(s) = text(card, "summary") {
            a.summaries.push(s);
        }
        for (j, s) in card
            .get("suggestions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            for (k, action) in s
                .get("actions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                read_action(
                    &mut a,
                    action,
                    &format!("{at}.suggestions[{j}].actions[{k}]"),
                    orders,
                    coverage,
                );
            }
        }
    }
    for (i, action) in v
        .get("systemActions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        read_action(&mut a, action, &format!("systemActions[{i}]"), orders, coverage);
    }
    Ok(a)
}

fn read_action(a: &mut CrdAnswer, action: &Value, at: &str, orders: &[OrderRef], coverage: &str) {
    if text(action, "type").is_none() {
        a.problems.push(format!("{at}.type is missing"));
    }
    let Some(resource) = action.get("resource") else {
        return;
    };
    let infos: Vec<&Value> = resource
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(COVERAGE_INFORMATION))
        .collect();
    if infos.is_empty() {
        return;
    }
    if text(action, "type").as_deref().is_some_and(|t| t != "update") {
        a.problems.push(format!(
            "{at}: coverage information comes in a `{}` action (CRD wants `update` of the order)",
            text(action, "type").unwrap_or_default()
        ));
    }
    let kind = text(resource, "resourceType");
    if kind.is_none() {
        a.problems.push(format!("{at}.resource.resourceType is missing"));
    }
    let id = text(resource, "id");
    // Tied by the order's id (a UUID precert made from the case), and by
    // its type when the payer gave one.
    let order = id.as_deref().and_then(|id| {
        orders
            .iter()
            .find(|o| o.id == id && kind.as_deref().is_none_or(|k| k == o.resource_type))
    });
    let Some(order) = order else {
        a.untied.push(format!(
            "{at}: coverage information on {}/{}, which is not an order of this request",
            kind.as_deref().unwrap_or("a resource without a type"),
            id.as_deref().unwrap_or("(no id)")
        ));
        return;
    };
    for (n, ext) in infos.into_iter().enumerate() {
        let at = format!("{at}.resource.extension[coverage-information {n}]");
        let subs: Vec<&Value> = ext
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        let sub = |url: &'static str| {
            subs.iter()
                .copied()
                .filter(move |e| e.get("url").and_then(Value::as_str) == Some(url))
        };
        let code = |url: &'static str| sub(url).find_map(|e| text(e, "valueCode"));
        let string = |url: &'static str| sub(url).find_map(|e| text(e, "valueString"));
        let cov = sub("coverage").find_map(|e| e.pointer("/valueReference/reference").and_then(Value::as_str));
        match cov {
            None => a.problems.push(format!("{at}: `coverage` is missing")),
            Some(r) if r != coverage && !r.ends_with(&format!("/{coverage}")) => {
                a.untied.push(format!("{at}: about {r}, not the case's coverage"));
                continue;
            }
            Some(_) => {}
        }
        let info = CoverageInfo {
            order: order.reference(),
            code: order.code.clone(),
            covered: code("covered"),
            pa_needed: code("pa-needed"),
            doc_needed: sub("doc-needed").filter_map(|e| text(e, "valueCode")).collect(),
            info_needed: sub("info-needed").filter_map(|e| text(e, "valueCode")).collect(),
            coverage_assertion_id: string("coverage-assertion-id"),
            satisfied_pa_id: string("satisfied-pa-id"),
            date: sub("date").find_map(|e| text(e, "valueDate")),
            expiry_date: sub("expiry-date").find_map(|e| text(e, "valueDate")),
            reasons: sub("reason")
                .filter_map(|e| {
                    let c = e.get("valueCodeableConcept")?;
                    text(c, "text").or_else(|| {
                        c.pointer("/coding/0/display")
                            .or_else(|| c.pointer("/coding/0/code"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                })
                .collect(),
            at: at.clone(),
        };
        for (field, present) in [
            ("covered", info.covered.is_some()),
            ("date", info.date.is_some()),
            ("coverage-assertion-id", info.coverage_assertion_id.is_some()),
        ] {
            if !present {
                a.problems.push(format!("{at}: `{field}` is missing"));
            }
        }
        if info.pa_needed.as_deref() == Some("satisfied") && info.satisfied_pa_id.is_none() {
            a.problems
                .push(format!("{at}: pa-needed `satisfied` without `satisfied-pa-id`"));
        }
        a.coverage.push(info);
    }
}
