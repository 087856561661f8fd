//! Evidence of late decisions: each request decided past its window, or
//! still undecided past it, with the events of its timeline that prove it —
//! what a practice attaches to a complaint or a contract discussion.
//!
//! The decision time is when precert recorded the decision (a poll read it,
//! an API answered, a person entered it), so it can be later than the
//! payer's own; what no payer can dispute is the last check that still saw
//! the request pending, listed as `last_seen_pending` with the hours it was
//! past the deadline then.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{ReportError, Window};
use crate::case::{CaseStatus, Urgency};
use crate::store::{CaseEvent, Ledger, ReportScope};

/// One late request and its proof.
#[derive(Clone, Debug, Serialize)]
pub struct LateRequest {
    pub practice: String,
    pub payer: String,
    pub case_ref: String,
    /// The payer's reference for the request, when it gave one.
    pub payer_ref: Option<String>,
    pub urgency: Urgency,
    pub submitted_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub window: String,
    pub window_source: String,
    /// When precert recorded the first decision; `None`: undecided at
    /// `as_of`.
    pub decided_at: Option<DateTime<Utc>>,
    pub decision: Option<CaseStatus>,
    /// The decision date the payer gave, when recorded.
    pub payer_decision_date: Option<DateTime<Utc>>,
    /// From the deadline to the decision (or to `as_of`), in hours.
    pub hours_late: f64,
    /// The last check (a poll or API inquiry) that saw it still pending.
    pub last_seen_pending: Option<DateTime<Utc>>,
    /// Hours past the deadline at that check: late beyond dispute by this
    /// much.
    pub proven_late_hours: Option<f64>,
    /// The timeline's events that prove it, oldest first.
    pub proof: Vec<ProofEvent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProofEvent {
    pub at: DateTime<Utc>,
    /// What it shows, in words (no payer text, no patient details).
    pub what: String,
    /// Who recorded it: `job:poll#42`, `user:ann`.
    pub actor: String,
}

fn hours(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_seconds() as f64 / 360.0).round() / 10.0
}

/// A check of the request's status at the payer: a poll run that ended
/// well, or a PAS answer.
fn is_check(e: &CaseEvent) -> bool {
    if e.kind != "run" {
        return false;
    }
    let s = |k: &str| e.detail.get(k).and_then(Value::as_str);
    let polled = s("action").is_some_and(|a| a.starts_with("poll")) && s("result").is_none_or(|r| r == "ok");
    let pas_answer = s("channel") == Some("pas") && s("status").is_some() && s("result").is_none();
    polled || pas_answer
}

/// The evidence for each of `late` (request ids and their windows), read
/// from their timelines up to the scope's `as_of`.
pub async fn evidence(
    ledger: &Ledger,
    scope: &ReportScope,
    late: Vec<(i64, Window)>,
) -> Result<Vec<LateRequest>, ReportError> {
    let mut out = Vec::with_capacity(late.len());
    for (id, window) in late {
        let case = ledger.get(id).await?;
        let events: Vec<CaseEvent> = ledger
            .events(id)
            .await?
            .into_iter()
            .filter(|e| e.at <= scope.as_of)
            .collect();
        out.push(one(&case, &events, window, scope.as_of));
    }
    out.sort_by(|a, b| {
        (&a.practice, &a.payer, a.submitted_at, &a.case_ref).cmp(&(&b.practice, &b.payer, b.submitted_at, &b.case_ref))
    });
    Ok(out)
}

fn one(case: &crate::case::CaseRecord, events: &[CaseEvent], window: Window, as_of: DateTime<Utc>) -> LateRequest {
    let payer_states = |s: Option<CaseStatus>| s.is_some_and(|s| s.is_payer_state());
    let decided = |s: Option<CaseStatus>| {
        matches!(
            s,
            Some(CaseStatus::Approved | CaseStatus::PartiallyApproved | CaseStatus::Denied)
        )
    };
    let submission = events
        .iter()
        .find(|e| e.from_status == Some(CaseStatus::Submitting) && payer_states(e.to_status));
    let submitted_at = submission.map_or(case.created_at, |e| e.at);
    let decision = events
        .iter()
        .find(|e| e.at >= submitted_at && e.from_status.is_some() && decided(e.to_status))
        .or_else(|| {
            // A decision recorded while the case already had that status
            // has no from/to; the status change before it carries it.
            events.iter().find(|e| e.at >= submitted_at && decided(e.to_status))
        });
    let end = decision.map_or(as_of, |e| e.at);
    let mut proof = Vec::new();
    let mut status: Option<CaseStatus> = None;
    let mut last_seen_pending = None;
    let mut submitted = false;
    for e in events {
        if let Some(to) = e.to_status {
            let moved = format!("{} → {}", e.from_status.map_or("?", |s| s.as_str()), to.as_str());
            if Some(e.id) == submission.map(|s| s.id) {
                submitted = true;
                proof.push(proof_event(
                    e,
                    format!("submitted: the payer has the request ({moved})"),
                ));
            } else if Some(e.id) == decision.map(|d| d.id) {
                proof.push(proof_event(e, format!("decision recorded ({moved})")));
            } else if submitted && e.at <= end && decision.is_none_or(|d| e.id < d.id) {
                proof.push(proof_event(e, format!("status {moved}")));
            }
            status = Some(to);
            continue;
        }
        if let Some(r) = e.detail.get("payer_reference").and_then(Value::as_str) {
            proof.push(proof_event(e, format!("payer's reference recorded: {r}")));
            continue;
        }
        let awaiting = status.is_some_and(|s| s.is_awaiting_payer());
        let before_decision = decision.is_none_or(|d| e.id < d.id);
        if submitted && before_decision && awaiting && is_check(e) {
            let seen = status.map_or("pending", |s| s.as_str());
            let past = if e.at > window.deadline {
                format!(", {} h past the deadline", hours(window.deadline, e.at))
            } else {
                String::new()
            };
            proof.push(proof_event(e, format!("checked with the payer: still {seen}{past}")));
            last_seen_pending = Some(e.at);
        }
    }
    LateRequest {
        practice: case.data.practice_id.clone(),
        payer: case.data.coverage.payer.clone(),
        case_ref: case.data.case_ref.clone(),
        payer_ref: case.payer_ref.clone(),
        urgency: case.data.urgency,
        submitted_at,
        deadline: window.deadline,
        window: window.rule,
        window_source: window.source,
        decided_at: decision.map(|e| e.at),
        decision: decision.and_then(|e| e.to_status),
        payer_decision_date: decision.and(case.decision.as_ref()).map(|d| d.decided_at),
        hours_late: hours(window.deadline, end),
        last_seen_pending,
        proven_late_hours: last_seen_pending
            .filter(|t| *t > window.deadline)
            .map(|t| hours(window.deadline, t)),
        proof,
    }
}

fn proof_event(e: &CaseEvent, what: String) -> ProofEvent {
    ProofEvent {
        at: e.at,
        what,
        actor: e.actor.clone(),
    }
}
