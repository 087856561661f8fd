//! Reading a payer's answer: a `ClaimResponse`, a PAS response Bundle (the
//! ClaimResponse first), a rest-hook notification Bundle carrying one, or an
//! `OperationOutcome`. What it means is decided in `outcome`.

use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::Value;

use super::fhir::*;
use super::outcome::{item_status, overall, seq, Dates, ItemDecision, Modification, Outcome, Reason, ReviewAction};
use super::resources::{ClaimResponse, OperationOutcome, ResponseItem};
use crate::case::CaseStatus;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a PAS response: {0}")]
    NotAResponse(String),
    #[error("the ClaimResponse is malformed: {0}")]
    Malformed(String),
}

fn date(s: &Option<String>) -> Option<NaiveDate> {
    let s = s.as_deref()?;
    NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok()
}

fn dates(p: &Period) -> Dates {
    Dates {
        start: date(&p.start),
        end: date(&p.end),
    }
}

/// Decodes any supported answer from its JSON text.
pub fn decode_str(text: &str) -> Result<Outcome, DecodeError> {
    decode(&serde_json::from_str(text)?)
}

pub fn decode(v: &Value) -> Result<Outcome, DecodeError> {
    match v.get("resourceType").and_then(Value::as_str) {
        Some("ClaimResponse") => claim_response(v, &[]),
        Some("OperationOutcome") => Ok(operation_outcome(v)),
        Some("Bundle") => bundle(v),
        Some(other) => Err(DecodeError::NotAResponse(format!(
            "a {other} is not an answer to a prior-authorization request"
        ))),
        None => Err(DecodeError::NotAResponse("no resourceType".into())),
    }
}

fn resource_type(v: &Value) -> Option<&str> {
    v.get("resourceType").and_then(Value::as_str)
}

/// A resource without `resourceType` that is a ClaimResponse by its
/// content: `use` preauthorization and an `outcome` (which a Claim does
/// not have).
fn claim_response_shaped(r: &Value) -> bool {
    resource_type(r).is_none()
        && r.get("use").and_then(Value::as_str) == Some("preauthorization")
        && r.get("outcome").and_then(Value::as_str).is_some()
}

/// How a response Bundle departs from PAS: a missing timestamp, entries
/// without `fullUrl` or `resourceType`, and references of the answer (its
/// patient, insurer, requestor) that do not resolve within the Bundle.
fn conformance(v: &Value, answer: Option<&Value>) -> Vec<String> {
    let mut found = Vec::new();
    if v.get("timestamp").and_then(Value::as_str).is_none() {
        found.push("Bundle.timestamp is missing".into());
    }
    let entries: &[Value] = v
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, e) in entries.iter().enumerate() {
        if e.get("fullUrl").and_then(Value::as_str).is_none() {
            found.push(format!("entry[{i}].fullUrl is missing"));
        }
        match e.get("resource") {
            None => found.push(format!("entry[{i}].resource is missing")),
            Some(r) if resource_type(r).is_none() => {
                let read = if claim_response_shaped(r) {
                    " (read as a ClaimResponse: it has `use` preauthorization and an `outcome`)"
                } else {
                    ""
                };
                found.push(format!("entry[{i}].resource.resourceType is missing{read}"));
            }
            Some(_) => {}
        }
    }
    let Some(answer) = answer else { return found };
    // `r` names an entry by its fullUrl, the end of it, or TYPE/ID.
    let resolves = |r: &str| {
        entries.iter().any(|e| {
            let url = e.get("fullUrl").and_then(Value::as_str).unwrap_or("");
            let typed = e.get("resource").zip(r.split_once('/')).is_some_and(|(x, (kind, id))| {
                resource_type(x) == Some(kind) && x.get("id").and_then(Value::as_str) == Some(id)
            });
            url == r || typed || url.strip_suffix(r).is_some_and(|head| head.ends_with('/'))
        })
    };
    for field in ["patient", "insurer", "requestor"] {
        if let Some(r) = answer
            .get(field)
            .and_then(|f| f.get("reference"))
            .and_then(Value::as_str)
        {
            // Contained (`#x`) and absolute references need no entry.
            if !r.starts_with('#') && !r.contains("://") && !resolves(r) {
                // The reference's type only: a payer may use the member ID
                // as the Patient's id.
                let kind = r.split('/').next().unwrap_or("resource");
                found.push(format!(
                    "ClaimResponse.{field}: the {kind} it references is not in the Bundle"
                ));
            }
        }
    }
    found
}

fn bundle(v: &Value) -> Result<Outcome, DecodeError> {
    let entries: Vec<&Value> = v
        .get("entry")
        .and_then(Value::as_array)
        .map(|e| e.iter().filter_map(|e| e.get("resource")).collect())
        .unwrap_or_default();
    let Some(first) = entries.first() else {
        return Err(DecodeError::NotAResponse("the Bundle has no entries".into()));
    };
    // An answer whose ClaimResponse lost its resourceType is still read when
    // its content says what it is; the omission is a warning.
    let answer = if claim_response_shaped(first) {
        Some(*first)
    } else {
        entries
            .iter()
            .copied()
            .find(|r| resource_type(r) == Some("ClaimResponse"))
    };
    let warnings = conformance(v, answer);
    if claim_response_shaped(first) {
        let mut outcome = claim_response(first, &[])?;
        outcome.warnings = warnings;
        return Ok(outcome);
    }
    let mut outcome = bundle_answer(v, &entries, first)?;
    outcome.warnings = warnings;
    Ok(outcome)
}

fn bundle_answer(v: &Value, entries: &[&Value], first: &Value) -> Result<Outcome, DecodeError> {
    // Issues sent beside the ClaimResponse count as errors of the answer.
    let issues: Vec<String> = entries
        .iter()
        .filter(|r| resource_type(r) == Some("OperationOutcome"))
        .flat_map(|r| error_issues(r))
        .collect();
    match resource_type(first) {
        Some("ClaimResponse") => claim_response(first, &issues),
        Some("OperationOutcome") => Ok(operation_outcome(first)),
        // A rest-hook notification: a status Parameters first, then the
        // ClaimResponse (full-resource payload).
        Some("Parameters") if v.get("type").and_then(Value::as_str) == Some("history") => {
            match entries.iter().find(|r| resource_type(r) == Some("ClaimResponse")) {
                Some(cr) => claim_response(cr, &issues),
                None => Err(DecodeError::NotAResponse(
                    "the notification carries no ClaimResponse (id-only payload); ask with $inquire".into(),
                )),
            }
        }
        Some("Claim") => Err(DecodeError::NotAResponse(
            "the first entry is a Claim: this is a request Bundle, not a response".into(),
        )),
        other => Err(DecodeError::NotAResponse(format!(
            "the first entry is a {}, not a ClaimResponse",
            other.unwrap_or("resource without a type")
        ))),
    }
}

fn error_issues(v: &Value) -> Vec<String> {
    let oo: OperationOutcome = serde_json::from_value(v.clone()).unwrap_or_default();
    oo.issue
        .iter()
        .filter(|i| matches!(i.severity.as_deref(), Some("error" | "fatal") | None))
        .map(|i| i.message())
        .collect()
}

fn operation_outcome(v: &Value) -> Outcome {
    let mut attention = error_issues(v);
    if attention.is_empty() {
        attention.push("the payer answered with an OperationOutcome and no decision".into());
    }
    Outcome {
        status: CaseStatus::NeedsAttention,
        case_ref: None,
        identifiers: Vec::new(),
        claim_response: None,
        outcome: None,
        disposition: None,
        auth_number: None,
        period: None,
        items: Vec::new(),
        attention,
        warnings: Vec::new(),
    }
}

fn claim_response(v: &Value, issues: &[String]) -> Result<Outcome, DecodeError> {
    // Read from the parsed answer in place, not from a copy of it.
    let cr = ClaimResponse::deserialize(v).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let queued = matches!(cr.outcome.as_deref(), Some("queued" | "partial"));
    let info_requested = !cr.communication_request.is_empty();
    let mut attention: Vec<String> = issues.to_vec();
    for err in &cr.error {
        attention.push(reject_reason(err));
    }
    if cr.outcome.as_deref() == Some("error") && attention.is_empty() {
        attention.push("the payer reports an error and gives no reason".into());
    }
    let items: Vec<ItemDecision> = cr.item.iter().map(|i| item(&cr, i, queued, info_requested)).collect();
    let status = overall(&items, &attention, queued, info_requested);
    if status == CaseStatus::NeedsAttention && attention.is_empty() {
        for i in &items {
            match &i.code {
                Some(ReviewAction::CT) => attention.push(format!("item {}: the payer asks to be contacted", seq(i))),
                Some(ReviewAction::Other(c)) => {
                    attention.push(format!("item {}: unknown review action code `{c}`", seq(i)))
                }
                None => attention.push(format!("item {}: no review action", seq(i))),
                _ => {}
            }
        }
        if items.is_empty() {
            attention.push("the ClaimResponse decides no item".into());
        }
    }
    let case_ref = cr
        .identifier
        .iter()
        .find(|i| i.system.as_deref() == Some(super::bundle::CASE_ID_SYSTEM))
        .and_then(|i| i.value.clone());
    let auth_number = cr
        .pre_auth_ref
        .clone()
        .or_else(|| items.iter().find_map(|i| i.auth_number.clone()));
    let period = cr
        .pre_auth_period
        .as_ref()
        .map(dates)
        .or_else(|| items.iter().find_map(|i| i.period));
    Ok(Outcome {
        status,
        case_ref,
        identifiers: cr.identifier.iter().filter_map(|i| i.value.clone()).collect(),
        claim_response: cr.id.clone(),
        outcome: cr.outcome.clone(),
        disposition: cr.disposition.clone(),
        auth_number,
        period,
        items,
        attention,
        warnings: Vec::new(),
    })
}

/// An X12 AAA reject (or any ClaimResponse.error) in words.
fn reject_reason(err: &super::resources::ResponseError) -> String {
    let code = err.code.as_ref();
    let what = match (code.and_then(|c| c.code_in(None)), code.and_then(|c| c.words())) {
        (Some(c), Some(w)) => format!("{c} ({w})"),
        (Some(c), None) => c.to_owned(),
        (None, Some(w)) => w.to_owned(),
        (None, None) => "no reason code".into(),
    };
    let at = err.item_sequence.map(|s| format!(" on item {s}")).unwrap_or_default();
    let followup = find_ext(&err.extension, "extension-errorFollowupAction")
        .and_then(|e| e.value_codeable_concept.as_ref())
        .and_then(|c| c.words().or_else(|| c.code_in(None)))
        .map(|f| format!("; follow-up: {f}"))
        .unwrap_or_default();
    format!("rejected as unprocessable{at}: {what}{followup}")
}

fn item(cr: &ClaimResponse, it: &ResponseItem, queued: bool, info_requested: bool) -> ItemDecision {
    let review = it
        .adjudication
        .iter()
        .find_map(|a| find_ext(&a.extension, "extension-reviewAction"));
    let concept = review
        .and_then(|r| r.sub("extension-reviewActionCode"))
        .and_then(|e| e.value_codeable_concept.as_ref());
    let code = concept
        .and_then(|c| c.code_in(Some(X12_306)).or_else(|| c.code_in(None)))
        .map(ReviewAction::parse);
    let mut reasons: Vec<Reason> = review
        .map(|r| r.extension.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|e| e.url.as_deref() == Some("reasonCode"))
        .filter_map(|e| e.value_codeable_concept.as_ref())
        .map(|c| Reason {
            code: c.code_in(None).map(str::to_owned),
            text: c.words().map(str::to_owned),
        })
        .collect();
    reasons.extend(
        it.adjudication
            .iter()
            .filter_map(|a| a.reason.as_ref())
            .map(|c| Reason {
                code: c.code_in(None).map(str::to_owned),
                text: c.words().map(str::to_owned),
            }),
    );
    let added = cr
        .add_item
        .iter()
        .find(|a| it.item_sequence.is_some_and(|s| a.item_sequence.contains(&s)));
    let authorized = find_ext(&it.extension, "extension-itemAuthorizedDetail")
        .and_then(|d| d.sub("quantity"))
        .and_then(|q| q.value_quantity.as_ref())
        .and_then(|q| q.value);
    let modified = added.map(|a| Modification {
        service: a
            .product_or_service
            .as_ref()
            .and_then(|c| c.code_in(None))
            .map(str::to_owned),
        quantity: a.quantity.as_ref().and_then(|q| q.value),
    });
    let status = match &code {
        Some(c) => item_status(c, queued, info_requested),
        None if queued => CaseStatus::Pending,
        None => CaseStatus::NeedsAttention,
    };
    ItemDecision {
        sequence: it.item_sequence,
        display: concept.and_then(|c| c.words()).map(str::to_owned),
        status,
        auth_number: review
            .and_then(|r| r.sub("number"))
            .and_then(|n| n.value_string.clone())
            .or_else(|| cr.pre_auth_ref.clone()),
        period: find_ext(&it.extension, "extension-itemPreAuthPeriod")
            .and_then(|e| e.value_period.as_ref())
            .or(cr.pre_auth_period.as_ref())
            .map(dates),
        quantity: modified.as_ref().and_then(|m| m.quantity).or(authorized),
        modified,
        reasons,
        code,
    }
}
