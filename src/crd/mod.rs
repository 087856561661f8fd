//! The Da Vinci CRD channel (Coverage Requirements Discovery over CDS
//! Hooks): "does this payer want a pre-cert for this order?" asked of the
//! payer's own service, for cases still `new` (no requirement rule decided
//! them) whose payer's playbook declares `crd:`.
//!
//! `request` builds the CDS Hooks request from the PAS resource builders,
//! `client` calls the service, `decode` reads the coverage-information
//! extension of the answer, and [`ask`] keeps the answer as evidence (0600,
//! its SHA-256 in the timeline) and records what it means through
//! `Ledger::decide_requirement` (source `crd`), the one path that decides a
//! case's requirement. See `docs/crd.md` for how each answer is treated.
//!
//! Invariant: this module changes a case only while it is `new`, only
//! through the ledger, and never logs or sends a member ID outside the
//! request body itself.

pub mod client;
pub mod decode;
pub mod request;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{json, Value};

pub use client::{Answered, CrdClient};
pub use decode::{read, CoverageInfo, CrdAnswer, CrdDecodeError, COVERAGE_INFORMATION};
pub use request::{build, CrdRequest, OrderRef};

use crate::case::{CaseRecord, CaseStatus};
use crate::files::{safe_name, sha256_hex, write_private};
use crate::pas::{self, ClientError};
use crate::store::{Actor, EventKind, Ledger, RequirementDecision, StoreError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrdError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("case {case} is {status}; only a new case is asked")]
    NotNew { case: String, status: CaseStatus },
    #[error("cannot keep the CRD answer as evidence in {}: {source}", path.display())]
    Evidence { path: PathBuf, source: std::io::Error },
}

/// What a CRD answer means for the case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "why", rename_all = "snake_case")]
pub enum Verdict {
    /// Some order needs a prior authorization (`auth-needed`).
    Required,
    /// Every order is `no-auth`, or `satisfied` by an authorization the
    /// payer already holds.
    NotRequired,
    /// The answer does not decide it (`conditional`, `performpa`, no
    /// coverage information, answers that disagree): the case stays `new`,
    /// "needs a decision".
    Undecided(String),
    /// A person must look: the service is not covered, or the answer
    /// cannot be tied to this request.
    Attention(String),
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Required => "required",
            Verdict::NotRequired => "not_required",
            Verdict::Undecided(_) => "undecided",
            Verdict::Attention(_) => "needs_attention",
        }
    }
}

/// Judges an answer about `orders`; the rules are in `docs/crd.md`.
pub fn verdict(answer: &CrdAnswer, orders: &[OrderRef]) -> Verdict {
    if answer.coverage.is_empty() {
        return if answer.untied.is_empty() {
            Verdict::Undecided("the CRD service gave no coverage information for the orders".into())
        } else {
            Verdict::Attention(format!(
                "the CRD answer cannot be tied to this request: {}",
                answer.untied.join("; ")
            ))
        };
    }
    let mut open = Vec::new();
    let mut auth_needed = false;
    for o in orders {
        let infos: Vec<&CoverageInfo> = answer.coverage.iter().filter(|c| c.order == o.reference()).collect();
        if let Some(c) = infos.iter().find(|c| c.covered.as_deref() == Some("not-covered")) {
            let why = c.reasons.first().map(|r| format!(": {r}")).unwrap_or_default();
            return Verdict::Attention(format!("the payer says {} is not covered{why}", o.code));
        }
        let pa: BTreeSet<&str> = infos.iter().filter_map(|c| c.pa_needed.as_deref()).collect();
        match pa.len() {
            0 if infos.is_empty() => open.push(format!("{}: no coverage information", o.code)),
            0 => open.push(format!("{}: coverage information without pa-needed", o.code)),
            1 => match *pa.iter().next().expect("one") {
                "auth-needed" => auth_needed = true,
                "no-auth" | "satisfied" => {}
                other => open.push(format!("{}: pa-needed `{other}`{}", o.code, reasons(&infos))),
            },
            _ => open.push(format!(
                "{}: the payer's answers disagree ({})",
                o.code,
                pa.into_iter().collect::<Vec<_>>().join(", ")
            )),
        }
    }
    if auth_needed {
        Verdict::Required
    } else if !open.is_empty() {
        Verdict::Undecided(open.join("; "))
    } else {
        Verdict::NotRequired
    }
}

fn reasons(infos: &[&CoverageInfo]) -> String {
    let r: Vec<&str> = infos
        .iter()
        .flat_map(|c| c.reasons.iter().map(String::as_str))
        .collect();
    if r.is_empty() {
        String::new()
    } else {
        format!(" ({})", r.join("; "))
    }
}

/// What asking did.
#[derive(Clone, Debug, Serialize)]
pub struct Asked {
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The case's status afterwards.
    pub status: CaseStatus,
    /// Where the answer is kept, under the data directory.
    pub evidence: Option<PathBuf>,
    pub sha256: Option<String>,
    pub answer: CrdAnswer,
}

/// Whether an event is a CRD answer already recorded on the case.
fn is_crd_answer(kind: &str, detail: &Value) -> bool {
    detail.get("channel").and_then(Value::as_str) == Some("crd")
        && (kind == EventKind::Note.as_str()
            || kind == EventKind::RequirementDecided.as_str()
            || kind == EventKind::PayerNonconformant.as_str())
}

/// Whether the daemon should ask the CRD service about a case: it is `new`
/// and no CRD answer was recorded since its data last changed (an answer
/// that did not decide is not asked again and again; `precert crd ask`
/// asks on request).
pub async fn due(ledger: &Ledger, case: &CaseRecord) -> Result<bool, StoreError> {
    if case.status != CaseStatus::New {
        return Ok(false);
    }
    let events = ledger.events(case.id).await?;
    let since = events
        .iter()
        .rposition(|e| e.kind == EventKind::Imported.as_str() || e.kind == EventKind::Updated.as_str())
        .unwrap_or(0);
    Ok(!events[since..].iter().any(|e| is_crd_answer(&e.kind, &e.detail)))
}

/// Asks the payer's CRD service about a `new` case and records the answer.
/// A failed call (throttled, down, refused by 5xx) writes nothing and is
/// returned, for the job to try again; a refusal (4xx) is noted on the case
/// (it stays `new`).
pub async fn ask(
    ledger: &Ledger,
    client: &CrdClient,
    ctx: &pas::Context<'_>,
    case: &CaseRecord,
    actor: &Actor,
) -> Result<Asked, CrdError> {
    if case.status != CaseStatus::New {
        return Err(CrdError::NotNew {
            case: case.key(),
            status: case.status,
        });
    }
    let req = build(&case.data, ctx, client.hook());
    let base = json!({ "channel": "crd", "hook": client.hook().as_str(), "hook_instance": req.hook_instance });
    let answered = match client.call(&req.body).await {
        Ok(a) => a,
        Err(e @ ClientError::Rejected { .. }) => {
            let mut detail = base.clone();
            detail["result"] = json!("refused");
            detail["note"] = json!(format!("the CRD service refused the request: {e}"));
            ledger.append_event(case.id, EventKind::Note, actor, &detail).await?;
            return Err(e.into());
        }
        Err(ClientError::InvalidResponse { url, message }) => {
            // An answer that is not JSON at all: nothing ties it to the
            // request.
            let problems = vec![format!("the answer is not JSON ({message})")];
            let mut detail = base.clone();
            detail["problems"] = json!(problems);
            ledger
                .append_event(case.id, EventKind::PayerNonconformant, actor, &detail)
                .await?;
            let why = format!("the CRD service's answer from {url} cannot be read: {message}");
            attention(ledger, case, actor, &why).await?;
            return Ok(Asked {
                verdict: Verdict::Attention(why),
                status: ledger.get(case.id).await?.status,
                evidence: None,
                sha256: None,
                answer: CrdAnswer {
                    problems,
                    ..CrdAnswer::default()
                },
            });
        }
        Err(e) => return Err(e.into()),
    };
    let (rel, sha256) = keep(ctx, case, &answered.bytes)?;
    let mut base = base;
    base["service"] = json!(answered.service);
    base["evidence"] = json!({ "path": rel.display().to_string(), "sha256": sha256 });
    let answer = match read(&answered.json, &req.orders, &req.coverage) {
        Ok(a) => a,
        Err(e) => CrdAnswer {
            untied: vec![e.to_string()],
            problems: vec![e.to_string()],
            ..CrdAnswer::default()
        },
    };
    if !answer.problems.is_empty() {
        let mut detail = base.clone();
        detail["problems"] = json!(answer.problems);
        ledger
            .append_event(case.id, EventKind::PayerNonconformant, actor, &detail)
            .await?;
    }
    let verdict = verdict(&answer, &req.orders);
    let mut detail = base;
    summarise(&mut detail, &answer);
    detail["result"] = json!(verdict.as_str());
    let status = match &verdict {
        Verdict::Required | Verdict::NotRequired => {
            let decision = RequirementDecision {
                required: verdict == Verdict::Required,
                source: "crd".into(),
                detail: detail.clone(),
            };
            match ledger.decide_requirement(case.id, &decision, actor).await? {
                Some(s) => s,
                // Somebody decided first; nothing was written.
                None => ledger.get(case.id).await?.status,
            }
        }
        Verdict::Undecided(why) => {
            detail["note"] = json!(format!("CRD did not decide: {why}; the case needs a decision"));
            ledger.append_event(case.id, EventKind::Note, actor, &detail).await?;
            CaseStatus::New
        }
        Verdict::Attention(why) => {
            detail["note"] = json!(why);
            ledger.append_event(case.id, EventKind::Note, actor, &detail).await?;
            attention(ledger, case, actor, why).await?;
            ledger.get(case.id).await?.status
        }
    };
    tracing::info!(case = %case.key(), result = verdict.as_str(), %status, "CRD answered.");
    Ok(Asked {
        verdict,
        status,
        evidence: Some(rel),
        sha256: Some(sha256),
        answer,
    })
}

/// The timeline's summary of the coverage information: per order, and the
/// values across orders.
fn summarise(detail: &mut Value, a: &CrdAnswer) {
    let uniq = |f: &dyn Fn(&CoverageInfo) -> Vec<String>| -> Vec<String> {
        let s: BTreeSet<String> = a.coverage.iter().flat_map(f).collect();
        s.into_iter().collect()
    };
    detail["pa_needed"] = json!(uniq(&|c| c.pa_needed.iter().cloned().collect()));
    detail["covered"] = json!(uniq(&|c| c.covered.iter().cloned().collect()));
    detail["doc_needed"] = json!(uniq(&|c| c.doc_needed.clone()));
    detail["info_needed"] = json!(uniq(&|c| c.info_needed.clone()));
    detail["coverage_assertion_ids"] = json!(uniq(&|c| c.coverage_assertion_id.iter().cloned().collect()));
    detail["orders"] = json!(a.coverage);
    if !a.untied.is_empty() {
        detail["untied"] = json!(a.untied);
    }
}

/// Keeps the answer's exact bytes, 0600, under
/// `DATA/crd/PRACTICE/CASE/TIME-SHA12.json`; returns the path under the
/// data directory and the SHA-256.
fn keep(ctx: &pas::Context<'_>, case: &CaseRecord, bytes: &[u8]) -> Result<(PathBuf, String), CrdError> {
    let sha256 = sha256_hex(bytes);
    let rel = PathBuf::from("crd")
        .join(safe_name(&case.data.practice_id))
        .join(safe_name(&case.data.case_ref))
        .join(format!("{}-{}.json", ctx.now.format("%Y%m%dT%H%M%SZ"), &sha256[..12]));
    let path = ctx.data_dir.join(&rel);
    write_private(&path, bytes).map_err(|source| CrdError::Evidence { path, source })?;
    Ok((rel, sha256))
}

/// Puts a case that is still `new` in needs_attention with why.
async fn attention(ledger: &Ledger, case: &CaseRecord, actor: &Actor, why: &str) -> Result<(), StoreError> {
    if ledger.get(case.id).await?.status == CaseStatus::New {
        ledger
            .transition(case.id, CaseStatus::NeedsAttention, actor, Some(why))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> Vec<OrderRef> {
        ["a", "b"]
            .iter()
            .zip(["73721", "E0601"])
            .map(|(id, code)| OrderRef {
                resource_type: "ServiceRequest".into(),
                id: (*id).into(),
                code: code.into(),
            })
            .collect()
    }

    /// A CDS Hooks answer with one `update` system action per `(id,
    /// covered, pa-needed)`, in a card suggestion when `in_card`.
    fn answer(actions: &[(&str, &str, Option<&str>)], in_card: bool) -> Value {
        let actions: Vec<Value> = actions
            .iter()
            .map(|(id, covered, pa)| {
                let mut ext = vec![
                    json!({"url": "coverage", "valueReference": {"reference": "Coverage/c"}}),
                    json!({"url": "covered", "valueCode": covered}),
                    json!({"url": "date", "valueDate": "2026-12-02"}),
                    json!({"url": "coverage-assertion-id", "valueString": format!("A-{id}")}),
                ];
                if let Some(pa) = pa {
                    ext.push(json!({"url": "pa-needed", "valueCode": pa}));
                }
                json!({"type": "update", "resource": {"resourceType": "ServiceRequest", "id": id,
                    "extension": [{"url": COVERAGE_INFORMATION, "extension": ext}]}})
            })
            .collect();
        if in_card {
            json!({"cards": [{"summary": "s", "indicator": "info", "source": {"label": "P"},
                "suggestions": [{"label": "x", "actions": actions}]}]})
        } else {
            json!({"cards": [], "systemActions": actions})
        }
    }

    fn judge(v: &Value) -> Verdict {
        let a = read(v, &orders(), "Coverage/c").unwrap();
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        verdict(&a, &orders())
    }

    #[test]
    fn one_line_needing_authorization_makes_the_case_required() {
        let v = answer(
            &[
                ("a", "covered", Some("auth-needed")),
                ("b", "conditional", Some("conditional")),
            ],
            false,
        );
        assert_eq!(judge(&v), Verdict::Required);
        // Card suggestions are read as system actions are.
        let v = answer(
            &[("a", "covered", Some("auth-needed")), ("b", "covered", Some("no-auth"))],
            true,
        );
        assert_eq!(judge(&v), Verdict::Required);
    }

    #[test]
    fn every_line_no_auth_or_satisfied_is_not_required() {
        let v = answer(
            &[("a", "covered", Some("no-auth")), ("b", "covered", Some("satisfied"))],
            false,
        );
        let a = read(&v, &orders(), "Coverage/c").unwrap();
        assert_eq!(verdict(&a, &orders()), Verdict::NotRequired);
        assert!(
            a.problems.iter().any(|p| p.contains("satisfied-pa-id")),
            "{:?}",
            a.problems
        );
    }

    #[test]
    fn conditional_missing_and_disagreeing_lines_stay_undecided() {
        let v = answer(
            &[("a", "covered", Some("no-auth")), ("b", "covered", Some("performpa"))],
            false,
        );
        assert!(matches!(judge(&v), Verdict::Undecided(w) if w.contains("E0601: pa-needed `performpa`")));
        let v = answer(&[("a", "covered", Some("no-auth"))], false);
        assert!(matches!(judge(&v), Verdict::Undecided(w) if w.contains("E0601: no coverage information")));
        let v = answer(
            &[
                ("a", "covered", Some("no-auth")),
                ("a", "covered", Some("auth-needed")),
                ("b", "covered", Some("no-auth")),
            ],
            false,
        );
        // One order, two answers that disagree: auth-needed is not taken on
        // half the payer's word.
        assert!(matches!(judge(&v), Verdict::Undecided(w) if w.contains("disagree")));
        assert!(matches!(judge(&json!({"cards": []})), Verdict::Undecided(_)));
    }

    #[test]
    fn not_covered_or_untied_answers_need_a_person() {
        let v = answer(&[("a", "not-covered", None), ("b", "covered", Some("no-auth"))], false);
        assert!(matches!(judge(&v), Verdict::Attention(w) if w.contains("73721 is not covered")));
        let v = answer(&[("zz", "covered", Some("no-auth"))], false);
        let a = read(&v, &orders(), "Coverage/c").unwrap();
        assert!(matches!(verdict(&a, &orders()), Verdict::Attention(w) if w.contains("cannot be tied")));
        // About another coverage of the patient: not this request's.
        let a = read(&v, &orders(), "Coverage/other").unwrap();
        assert!(a.coverage.is_empty());
    }

    #[test]
    fn a_fhir_resource_is_not_a_cds_hooks_answer() {
        assert!(read(&json!({"resourceType": "Bundle"}), &orders(), "Coverage/c").is_err());
        let a = read(&json!({"systemActions": []}), &orders(), "Coverage/c").unwrap();
        assert!(a.problems[0].contains("`cards` is missing"), "{:?}", a.problems);
    }
}
