//! The answer to "does the payer want a pre-cert for this case?", from
//! whoever gave it: the payer's requirement rules, the payer's CRD service,
//! or a person. One entry point so that every source moves a case the same
//! way and cites itself the same way in the timeline.

use serde_json::{json, Value};

use super::{current, insert_event, set_status, ts, EventKind, Ledger, StoreError};
use crate::case::CaseStatus;
use crate::store::Actor;

/// A requirement decision and what it rests on.
#[derive(Clone, Debug)]
pub struct RequirementDecision {
    /// True: the payer requires a pre-cert (the case goes `required` →
    /// `ready`). False: none is needed (`not_required`).
    pub required: bool,
    /// Who decided: `rules`, `crd` or `person`.
    pub source: String,
    /// What decided, cited in the timeline: the rule's file, line, id and
    /// version, or the CRD coverage assertion and where its response is kept.
    /// Never PHI beyond the case's own codes.
    pub detail: Value,
}

impl Ledger {
    /// Records a requirement decision on a case that is still `new`: one
    /// `requirement_decided` event carrying the source and its detail, then
    /// the status moves (`new → required → ready`, or `new → not_required`),
    /// all in one transaction. Returns the status the case ends in, or None
    /// when the case is no longer `new` (somebody decided first; nothing is
    /// written).
    pub async fn decide_requirement(
        &self,
        id: i64,
        decision: &RequirementDecision,
        actor: &Actor,
    ) -> Result<Option<CaseStatus>, StoreError> {
        let now = ts(self.now());
        let mut tx = self.begin_write().await?;
        let (case_key, from, version) = current(&mut tx, id).await?;
        if from != CaseStatus::New {
            return Ok(None);
        }
        let mut detail = decision.detail.clone();
        if let Value::Object(map) = &mut detail {
            map.insert("source".into(), json!(decision.source));
            map.insert("required".into(), json!(decision.required));
        } else {
            detail = json!({ "source": decision.source, "required": decision.required, "detail": detail });
        }
        insert_event(
            &mut tx,
            id,
            &now,
            EventKind::RequirementDecided,
            None,
            None,
            actor,
            &detail,
        )
        .await?;
        let path: &[CaseStatus] = if decision.required {
            &[CaseStatus::Required, CaseStatus::Ready]
        } else {
            &[CaseStatus::NotRequired]
        };
        let note = json!({ "note": format!("requirement decided by {}", decision.source) });
        let (mut at, mut version) = (from, version);
        for &to in path {
            set_status(&mut tx, id, &case_key, at, version, to, &now, actor, &note).await?;
            at = to;
            version += 1;
        }
        tx.commit().await?;
        Ok(Some(at))
    }
}
