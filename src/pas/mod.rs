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
use crate::store::{Actor, EventKind, Ledger, StoreError};

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

/// Submits a ready case: `ready → submitting`, `Claim/$submit`, then what
/// the payer answered. A refused (4xx) or unreadable answer puts the case in
/// needs_attention with the reason; an outage or throttling puts it back to
/// ready for the next run, and the error is returned.
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
        .transition(case.id, CaseStatus::Submitting, actor, Some("PAS Claim/$submit"))
        .await?;
    let answer = client.submit(&bundle.to_json()).await;
    let from = CaseStatus::Submitting;
    let outcome = match answer {
        Ok(v) => decode(&v),
        Err(e) => {
            let to = match &e {
                ClientError::Throttled { .. } | ClientError::Server { .. } => CaseStatus::Ready,
                ClientError::Transport { source, .. } if source.is_connect() => CaseStatus::Ready,
                // A timeout may hide a request that arrived; a person
                // checks (or `$inquire` does) before anyone submits again.
                _ => CaseStatus::NeedsAttention,
            };
            ledger.transition(case.id, to, actor, Some(&e.to_string())).await?;
            return Err(e.into());
        }
    };
    match outcome {
        Ok(outcome) => apply(ledger, case, from, outcome, actor).await,
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
pub async fn inquire_case(
    ledger: &Ledger,
    client: &PasClient,
    ctx: &Context<'_>,
    case: &CaseRecord,
    actor: &Actor,
) -> Result<Applied, PasError> {
    let answer = client.inquire(&inquiry_bundle(&case.data, ctx).to_json()).await?;
    let outcome = decode(&answer)?;
    apply(ledger, case, case.status, outcome, actor).await
}

/// Records an answer on a case that is now in `from`: the decision when
/// there is one, the status the answer implies, or needs_attention (with
/// why) when that status cannot follow `from`.
pub async fn apply(
    ledger: &Ledger,
    case: &CaseRecord,
    from: CaseStatus,
    outcome: Outcome,
    actor: &Actor,
) -> Result<Applied, PasError> {
    let to = outcome.status;
    let source = source(&case.data.coverage.payer);
    let done = |to, recorded, outcome| Applied {
        from,
        to,
        outcome,
        recorded,
    };
    if let Some(decision) = outcome.decision(&case.data, ledger.now(), &source) {
        if from == to || from.can_move_to(to) {
            ledger.record_decision(case.id, &decision, to, actor).await?;
            tracing::info!(case = %case.key(), %from, %to, "PAS decision recorded.");
            return Ok(done(to, true, outcome));
        }
    }
    let note = note(&outcome);
    if from == to {
        // Nothing new (still pending): the exchange goes in the timeline.
        let detail = json!({ "channel": "pas", "status": to.as_str(), "note": note });
        ledger.append_event(case.id, EventKind::Run, actor, &detail).await?;
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
