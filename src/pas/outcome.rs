//! What a payer's answer means: decisions per item, the canonical status
//! of the case, and the `Decision` the ledger keeps.
//!
//! ## X12 306 review action codes → `CaseStatus`
//!
//! | code | meaning | item status |
//! |---|---|---|
//! | A1 | certified in total | approved |
//! | A2 | certified, partial | partially_approved |
//! | A3 | not certified | denied |
//! | A4 | pended | pending (pended_for_info when the answer carries a `communicationRequest`) |
//! | A6 | modified (what was granted is in `addItem`) | partially_approved |
//! | C  | cancelled | cancelled |
//! | CT | contact the payer | needs_attention |
//! | NA | no action required | not_required |
//! | anything else | — | pending when `ClaimResponse.outcome` is `queued` (the payer says it is still working), needs_attention otherwise |
//!
//! ## Several items → one case status, first rule that applies
//!
//! 1. Any error (`ClaimResponse.error`, the X12 AAA reject; an
//!    `OperationOutcome` issue of severity error or fatal) → needs_attention
//!    with the payer's reasons. *Rejected as unprocessable is not denied*: the
//!    payer has not looked at the request.
//! 2. No item carries a decision → pending if the outcome is `queued`, else
//!    needs_attention.
//! 3. Any item needs a person (CT, an unknown code) → needs_attention.
//! 4. Any item pended → pending (or pended_for_info): the case is not decided
//!    until every line is.
//! 5. Every item NA → not_required; every item C → cancelled; every item A1
//!    or NA → approved; every item A3 or C → denied; otherwise some lines were
//!    granted and some not, or granted in part → partially_approved.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::case::{CaseData, CaseStatus, DateRange, Decision, DenialReason, LineDecision};

/// An X12 306 review action code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReviewAction {
    A1,
    A2,
    A3,
    A4,
    A6,
    C,
    CT,
    NA,
    Other(String),
}

impl ReviewAction {
    pub fn parse(code: &str) -> ReviewAction {
        match code.trim() {
            "A1" => Self::A1,
            "A2" => Self::A2,
            "A3" => Self::A3,
            "A4" => Self::A4,
            "A6" => Self::A6,
            "C" => Self::C,
            "CT" => Self::CT,
            "NA" => Self::NA,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn code(&self) -> &str {
        match self {
            Self::A1 => "A1",
            Self::A2 => "A2",
            Self::A3 => "A3",
            Self::A4 => "A4",
            Self::A6 => "A6",
            Self::C => "C",
            Self::CT => "CT",
            Self::NA => "NA",
            Self::Other(c) => c,
        }
    }
}

impl Serialize for ReviewAction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

/// A reason the payer gave (denial, pend, modification).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub code: Option<String>,
    pub text: Option<String>,
}

/// What was granted instead, for a modified (A6) item.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Modification {
    pub service: Option<String>,
    pub quantity: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Dates {
    pub start: Option<NaiveDate>,
    pub end: Option<NaiveDate>,
}

/// The payer's decision on one Claim item.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ItemDecision {
    /// The Claim item's sequence (1-based), as the case's service lines.
    pub sequence: Option<u32>,
    pub code: Option<ReviewAction>,
    pub display: Option<String>,
    pub status: CaseStatus,
    pub auth_number: Option<String>,
    pub period: Option<Dates>,
    pub quantity: Option<f64>,
    pub modified: Option<Modification>,
    pub reasons: Vec<Reason>,
}

/// A payer's answer, read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    pub status: CaseStatus,
    /// The practice's case ID, when the payer echoed precert's identifier.
    pub case_ref: Option<String>,
    /// Every identifier value of the ClaimResponse (payers echo the Claim's
    /// under their own systems, e.g. a patient event trace number).
    pub identifiers: Vec<String>,
    pub claim_response: Option<String>,
    /// `ClaimResponse.outcome`: queued, complete, error, partial.
    pub outcome: Option<String>,
    pub disposition: Option<String>,
    pub auth_number: Option<String>,
    pub period: Option<Dates>,
    pub items: Vec<ItemDecision>,
    /// Why a person must look: the payer's errors or what precert could not
    /// read. Empty unless `status` is needs_attention.
    pub attention: Vec<String>,
    /// How the answer departs from the PAS specification (a missing Bundle
    /// timestamp, an entry without `fullUrl` or `resourceType`, a reference
    /// that does not resolve in the Bundle). The decision was still read;
    /// `pas::apply` records these as a `payer_nonconformant` event and
    /// applies the decision only if the answer names the request.
    pub warnings: Vec<String>,
}

impl Outcome {
    /// Whether the answer names this request: it echoes the case ID, or
    /// the payer's own reference for it.
    pub fn names(&self, case_ref: &str, payer_ref: Option<&str>) -> bool {
        let ours = |v: &str| v == case_ref || payer_ref.is_some_and(|p| p == v);
        self.case_ref.as_deref().is_some_and(ours)
            || self.identifiers.iter().any(|i| ours(i))
            || self.claim_response.as_deref().is_some_and(|c| payer_ref == Some(c))
    }
}

pub(super) fn seq(i: &ItemDecision) -> String {
    i.sequence.map(|s| s.to_string()).unwrap_or_else(|| "?".into())
}
pub(super) fn item_status(code: &ReviewAction, queued: bool, info_requested: bool) -> CaseStatus {
    use ReviewAction::*;
    match code {
        A1 => CaseStatus::Approved,
        A2 | A6 => CaseStatus::PartiallyApproved,
        A3 => CaseStatus::Denied,
        A4 if info_requested => CaseStatus::PendedForInfo,
        A4 => CaseStatus::Pending,
        C => CaseStatus::Cancelled,
        CT => CaseStatus::NeedsAttention,
        NA => CaseStatus::NotRequired,
        Other(_) if queued => CaseStatus::Pending,
        Other(_) => CaseStatus::NeedsAttention,
    }
}

pub(super) fn overall(items: &[ItemDecision], attention: &[String], queued: bool, info_requested: bool) -> CaseStatus {
    use CaseStatus::*;
    if !attention.is_empty() {
        return NeedsAttention;
    }
    if items.is_empty() {
        return if queued { Pending } else { NeedsAttention };
    }
    let all = |f: &dyn Fn(CaseStatus) -> bool| items.iter().all(|i| f(i.status));
    let any = |s: CaseStatus| items.iter().any(|i| i.status == s);
    if any(NeedsAttention) {
        NeedsAttention
    } else if any(PendedForInfo) || (any(Pending) && info_requested) {
        PendedForInfo
    } else if any(Pending) {
        Pending
    } else if all(&|s| s == NotRequired) {
        NotRequired
    } else if all(&|s| s == Cancelled) {
        Cancelled
    } else if all(&|s| matches!(s, Approved | NotRequired)) {
        Approved
    } else if all(&|s| matches!(s, Denied | Cancelled)) {
        Denied
    } else {
        PartiallyApproved
    }
}

impl Outcome {
    /// The payer decided (approved in full or part, or denied): there is a
    /// decision to record.
    pub fn is_decided(&self) -> bool {
        matches!(
            self.status,
            CaseStatus::Approved | CaseStatus::PartiallyApproved | CaseStatus::Denied
        )
    }

    /// The decision for the ledger, with approved units per case line (the
    /// Claim's items are the case's service lines in order). `None` while
    /// the payer has not decided.
    pub fn decision(&self, case: &CaseData, decided_at: DateTime<Utc>, source: &str) -> Option<Decision> {
        if !self.is_decided() {
            return None;
        }
        let lines = case
            .service_lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let item = self
                    .items
                    .iter()
                    .find(|d| d.sequence == Some(i as u32 + 1))
                    .or_else(|| (self.items.len() == case.service_lines.len()).then(|| &self.items[i]));
                let granted = |q: Option<f64>| q.map(|q| q.max(0.0).round() as u32).unwrap_or(line.units);
                let approved_units = match item.map(|d| d.status) {
                    Some(CaseStatus::Approved | CaseStatus::NotRequired) => granted(item.and_then(|d| d.quantity)),
                    Some(CaseStatus::PartiallyApproved) => granted(item.and_then(|d| d.quantity)),
                    _ => 0,
                };
                LineDecision {
                    code: line.code.clone(),
                    requested_units: line.units,
                    approved_units: approved_units.min(line.units),
                }
            })
            .collect();
        let modified: Vec<String> = self
            .items
            .iter()
            .filter(|d| d.status == CaseStatus::PartiallyApproved)
            .map(|d| {
                let line = d
                    .sequence
                    .and_then(|s| (s as usize).checked_sub(1))
                    .and_then(|i| case.service_lines.get(i));
                let what = line
                    .map(|l| l.code.as_str().to_owned())
                    .unwrap_or_else(|| format!("item {}", seq(d)));
                match (d.quantity, line) {
                    (Some(q), Some(l)) => format!("{what}: {q} of {} units ({})", l.units, code_str(d)),
                    _ => format!("{what}: granted in part ({})", code_str(d)),
                }
            })
            .collect();
        let conditions = (!modified.is_empty()).then(|| modified.join("; "));
        let denial = (self.status == CaseStatus::Denied).then(|| {
            self.items
                .iter()
                .flat_map(|d| d.reasons.iter())
                .find(|r| r.code.is_some() || r.text.is_some())
                .map(|r| DenialReason {
                    code: r.code.clone(),
                    text: r.text.clone().or_else(|| r.code.clone()).unwrap_or_default(),
                })
                // CMS-0057-F requires a specific reason; its absence is
                // itself worth recording.
                .unwrap_or_else(|| DenialReason {
                    code: None,
                    text: self
                        .disposition
                        .clone()
                        .unwrap_or_else(|| "the payer gave no reason".into()),
                })
        });
        let valid = self.period.and_then(|p| match (p.start, p.end) {
            (Some(start), Some(end)) if start <= end => Some(DateRange { start, end }),
            _ => None,
        });
        Some(Decision {
            auth_number: self.auth_number.clone(),
            valid,
            lines,
            conditions,
            denial,
            decided_at,
            source: source.to_owned(),
        })
    }
}

fn code_str(d: &ItemDecision) -> &str {
    d.code.as_ref().map(ReviewAction::code).unwrap_or("?")
}
