//! The Da Vinci PAS API channel: a case becomes a request Bundle
//! (`bundle`), goes to the payer (`client`), and the answer — at once, by
//! `$inquire`, or by rest-hook notification (`notify`) — is read (`decode`),
//! judged item by item (`outcome`) and recorded in the ledger (`apply`).
//! `fhir` and `resources` are the FHIR R4 types it writes and reads.
//!
//! Invariant: this module changes cases only through `store::Ledger`, and
//! only to what the payer's answer says; anything it cannot read, or a
//! status the graph forbids, lands in needs_attention with the reason.

#[macro_use]
pub mod fhir;
pub mod bundle;
pub mod client;
pub mod decode;
pub mod notify;
pub mod outcome;
mod parties;
pub mod resources;
pub mod retry;

use serde_json::json;

pub use bundle::{inquiry_bundle, request_bundle, BundleError, Context};
pub use client::{ClientError, Endpoint, PasClient};
pub use decode::{decode, decode_str, DecodeError};
pub use outcome::{ItemDecision, Outcome, ReviewAction};
pub use retry::RetryPolicy;

use crate::case::{CaseRecord, CaseStatus};
use crate::store::{Actor, EventKind, Ledger, PollStamps, StoreError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("case {case} is {status}; only a ready case is submitted")]
    NotReady { case: String, status: CaseStatus },
}

/// What an exchange with the payer did to a case.
#[derive(Clone, Debug)]
pub struct Applied {
    pub from: CaseStatus,
    pub to: CaseStatus,
    pub outcome: Outcome,
    /// A decision was written to the ledger.
    pub recorded: bool,
}

/// Where decisions read through this channel come from: `api:PAYER`.
pub fn source(payer: &str) -> String {
    format!("api:{payer}")
}

/// Submits a ready case: takes its submission lease (`ready → submitting`),
/// then [`submit_owned`]; the lease is given back at the end.
pub async fn submit_case(
    ledger: &Ledger,
    client: &PasClient,
    ctx: &Context<'_>,
    case: &CaseRecord,
    actor: &Actor,
) -> Result<Applied, PasError> {
    if case.status != CaseStatus::Ready {
        return Err(PasError::NotReady {
            case: case.key(),
            status: case.status,
        });
    }
    let lease = ledger.claim_submission(case.id, actor).await?;
    let owned = ledger.get(case.id).await?;
    let result = submit_owned(&ledger.fenced(&lease), &lease, client, ctx, &owned, actor).await;
    let _ = ledger.release_submission(&lease).await;
    result
}

/// Sends a case whose submission lease the caller holds (`ledger` fenced by
/// it): the intent, `Claim/$submit` once, then what the payer answered. A
/// refused (4xx) or unreadable answer puts the case in needs_attention with
/// the reason; throttling or a refused connection (the payer has nothing)
/// puts it back to ready. A 5xx or a timeout may hide a request that
/// arrived: the payer is asked (`$inquire`, by the Claim's identifier)
/// before it is sent again, within the client's attempts; if the payer
/// cannot say, the case stays `submitting` for the next run to ask.
pub async fn submit_owned(
    ledger: &Ledger,
    lease: &crate::store::SubmitLease,
    client: &PasClient,
    ctx: &Context<'_>,
    case: &CaseRecord,
    actor: &Actor,
) -> Result<Applied, PasError> {
    let bundle = match request_bundle(&case.data, ctx) {
        Ok(b) => b,
        Err(e) => {
            ledger
                .transition(case.id, CaseStatus::NeedsAttention, actor, Some(&e.to_string()))
                .await?;
            return Err(e.into());
        }
    };
    ledger
        .record_intent(lease, actor, &json!({ "action": "submit", "channel": "pas" }))
        .await?;
    crate::engine::fault::at_intent();
    let body = bundle.fhir();
    let max = client.policy().max_attempts.max(1);
    let mut attempt = 1;
    let answer = loop {
        let sent = client.submit(&body).await;
        let unsure = match &sent {
            Err(ClientError::Server { .. }) => true,
            Err(ClientError::Transport { source, .. }) => !source.is_connect(),
            _ => false,
        };
        if !unsure {
            break sent;
        }
        // Did it arrive? Ask before sending again.
        match client.inquire(&inquiry_bundle(&case.data, ctx).fhir()).await {
            Ok(v) => break Ok(v),
            Err(ClientError::Rejected { status: 404, .. }) if attempt < max => {
                tracing::warn!(
                    case_id = case.id,
                    attempt,
                    "The payer failed $submit and has no such request; sending again."
                );
                tokio::time::sleep(retry::backoff(client.policy(), attempt)).await;
                attempt += 1;
            }
            Err(ClientError::Rejected { status: 404, .. }) => break sent,
            Err(_) => {
                // The payer cannot say whether it has the request: the case
                // stays `submitting`, and the next run asks first.
                let note = format!(
                    "{}; the payer could not say whether it arrived",
                    sent.as_ref().err().map(ToString::to_string).unwrap_or_default()
                );
                ledger
                    .append_event(case.id, EventKind::Note, actor, &json!({ "note": note }))
                    .await?;
                return Err(sent.expect_err("unsure is an error").into());
            }
        }
    };
    if answer.is_ok() {
        crate::engine::fault::after_response();
    }
    let from = CaseStatus::Submitting;
    let outcome = match answer {
        Ok(v) => decode(&v),
        Err(e) => {
            let to = match &e {
                // The payer refused to take it, or never saw it.
                ClientError::Throttled { .. } => Some(CaseStatus::Ready),
                ClientError::Transport { source, .. } if source.is_connect() => Some(CaseStatus::Ready),
                // It failed every time and the payer has none: ready for
                // the next run.
                ClientError::Server { .. } => Some(CaseStatus::Ready),
                ClientError::Transport { .. } => None,
                _ => Some(CaseStatus::NeedsAttention),
            };
            if let Some(to) = to {
                ledger.transition(case.id, to, actor, Some(&e.to_string())).await?;
            }
            return Err(e.into());
        }
    };
    match outcome {
        Ok(outcome) => apply(ledger, case, from, outcome, actor, None).await,
        Err(e) => {
            let note = format!("the payer's answer to $submit: {e}");
            ledger
                .transition(case.id, CaseStatus::NeedsAttention, actor, Some(&note))
                .await?;
            Err(e.into())
        }
    }
}

/// Asks the payer for the current answer (`Claim/$inquire`) and records it.
/// The PAS guide wants this for occasional reconciliation, not as a poll
/// loop: pended requests are followed by notification.
///
/// With `stamps`, an answer that says nothing new is stamped there, for
/// its caller to write with others; without, at once.
pub async fn inquire_case(
    ledger: &Ledger,
    client: &PasClient,
    ctx: &Context<'_>,
    case: &CaseRecord,
    actor: &Actor,
    stamps: Option<&PollStamps>,
) -> Result<Applied, PasError> {
    let answer = client.inquire(&inquiry_bundle(&case.data, ctx).fhir()).await?;
    let outcome = decode(&answer)?;
    apply(ledger, case, case.status, outcome, actor, stamps).await
}

/// Records an answer on a case that is now in `from`: the payer's
/// reference when the answer names one the case lacks, the decision when
/// there is one, the status the answer implies, or needs_attention (with
/// why) when that status cannot follow `from`. Nothing new is stamped on
/// the case (`last_polled_at`), through `stamps` when given.
pub async fn apply(
    ledger: &Ledger,
    case: &CaseRecord,
    from: CaseStatus,
    outcome: Outcome,
    actor: &Actor,
    stamps: Option<&PollStamps>,
) -> Result<Applied, PasError> {
    let done = |to, recorded, outcome| Applied {
        from,
        to,
        outcome,
        recorded,
    };
    if !outcome.warnings.is_empty() {
        // Evidence of the payer's API obligations, whatever happens next;
        // a poll that meets the same problems again adds nothing (the
        // timeline records changes).
        let detail = json!({ "channel": "pas", "problems": outcome.warnings });
        let last = ledger
            .events(case.id)
            .await?
            .into_iter()
            .rfind(|e| e.kind == EventKind::PayerNonconformant.as_str() && e.detail["channel"] == "pas");
        let repeated = from == outcome.status && last.is_some_and(|e| e.detail["problems"] == detail["problems"]);
        if !repeated {
            ledger
                .append_event(case.id, EventKind::PayerNonconformant, actor, &detail)
                .await?;
        }
        tracing::warn!(case = %case.key(), problems = outcome.warnings.len(), "The payer's PAS answer is off-spec.");
        // An off-spec answer is believed only when it names the request.
        if !outcome.names(&case.data.case_ref, case.payer_ref.as_deref()) {
            let why = format!(
                "the payer's answer is off-spec ({}) and names neither the case ID nor the payer's reference: it cannot be tied to this request",
                outcome.warnings.join("; ")
            );
            if from.can_move_to(CaseStatus::NeedsAttention) {
                ledger
                    .transition(case.id, CaseStatus::NeedsAttention, actor, Some(&why))
                    .await?;
                return Ok(done(CaseStatus::NeedsAttention, false, outcome));
            }
            let detail = json!({ "channel": "pas", "note": why });
            ledger.append_event(case.id, EventKind::Note, actor, &detail).await?;
            return Ok(done(from, false, outcome));
        }
    }
    // The payer's reference first, whichever path read the answer (the
    // submission, a poll, a notification, a reconciling takeover): a case
    // whose submitter died after the payer took the request learns it here.
    if let Some(reference) = outcome.claim_response.as_deref() {
        if case.payer_ref.as_deref() != Some(reference) {
            ledger.set_payer_ref(case.id, reference, actor).await?;
        }
    }
    let to = outcome.status;
    let source = source(&case.data.coverage.payer);
    if let Some(decision) = outcome.decision(&case.data, ledger.now(), &source) {
        if from == to || from.can_move_to(to) {
            ledger.record_decision(case.id, &decision, to, actor).await?;
            tracing::info!(case = %case.key(), %from, %to, "PAS decision recorded.");
            return Ok(done(to, true, outcome));
        }
    }
    let note = note(&outcome);
    if from == to {
        // Nothing new (still pending): a timestamp on the case, no event
        // (the timeline records changes).
        match stamps {
            Some(s) => s.push(case.id, to, ledger.now()),
            None => {
                ledger.mark_polled(case.id, to).await?;
            }
        }
        return Ok(done(to, false, outcome));
    }
    if from.can_move_to(to) {
        ledger.transition(case.id, to, actor, Some(&note)).await?;
        return Ok(done(to, false, outcome));
    }
    let why = format!("the payer's answer means {to}, which cannot follow {from}: {note}");
    if from.can_move_to(CaseStatus::NeedsAttention) {
        ledger
            .transition(case.id, CaseStatus::NeedsAttention, actor, Some(&why))
            .await?;
        return Ok(done(CaseStatus::NeedsAttention, false, outcome));
    }
    let detail = json!({ "channel": "pas", "note": why });
    ledger.append_event(case.id, EventKind::Note, actor, &detail).await?;
    Ok(done(from, false, outcome))
}

/// One line for the timeline: the payer's reasons, or its disposition.
fn note(o: &Outcome) -> String {
    let mut parts = Vec::new();
    if !o.attention.is_empty() {
        parts.push(o.attention.join("; "));
    }
    if let Some(d) = &o.disposition {
        parts.push(d.clone());
    }
    let codes: Vec<&str> = o
        .items
        .iter()
        .filter_map(|i| i.code.as_ref().map(ReviewAction::code))
        .collect();
    if !codes.is_empty() {
        parts.push(format!("review action {}", codes.join(",")));
    }
    if parts.is_empty() {
        format!("PAS answer: {}", o.status)
    } else {
        format!("PAS answer: {}", parts.join("; "))
    }
}
