//! The rules applied to the ledger: `new` cases decided through
//! `Ledger::decide_requirement` (the one entry point every source uses),
//! citing the rules file, the rule, its line, the file's version and the
//! rule's effective dates.

use serde_json::{json, Value};

use super::{RuleBook, RuleFile, Verdict};
use crate::case::{CaseRecord, CaseStatus};
use crate::config::Settings;
use crate::store::{Actor, CaseFilter, Ledger, RequirementDecision, StoreError};

/// Who the rules' decisions are by, in the timeline.
pub const RULES_ACTOR: &str = "rules";

/// Cases read per page of a pass.
const PAGE: usize = 500;

/// What a pass over cases did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// `new` cases read.
    pub looked: usize,
    /// Moved to `ready` (required) or `not_required` by the rules.
    pub required: usize,
    pub not_required: usize,
    /// Left `new`: no rule covers them ("needs a decision").
    pub undecided: usize,
    /// The highest case number read, for a later pass to start after.
    pub last_id: Option<i64>,
}

impl PassReport {
    pub fn decided(&self) -> usize {
        self.required + self.not_required
    }

    fn add(&mut self, outcome: Option<bool>) {
        match outcome {
            Some(true) => self.required += 1,
            Some(false) => self.not_required += 1,
            None => self.undecided += 1,
        }
    }
}

/// Decides the `new` cases of practice `practice` whose number is above
/// `after` (None: all of them) by the rules, a page at a time on the status
/// index. A case no rule covers stays `new`. This is the one function any
/// route by which cases arrive (an import, an API, a drop folder, the
/// daemon's own pass) calls after storing them.
pub async fn decide_new_cases(
    ledger: &Ledger,
    settings: &Settings,
    book: &RuleBook,
    practice: &str,
    after: Option<i64>,
) -> Result<PassReport, StoreError> {
    let filter = CaseFilter {
        practice: Some(practice.to_owned()),
        payer: None,
        status: Some(CaseStatus::New),
    };
    let mut report = PassReport {
        last_id: after,
        ..PassReport::default()
    };
    loop {
        let page = ledger.list_page(&filter, report.last_id, PAGE).await?;
        for listed in &page {
            report.looked += 1;
            report.last_id = Some(listed.case.id);
            let outcome = decide_one(ledger, settings, book, &listed.case).await?;
            report.add(outcome);
        }
        if page.len() < PAGE {
            return Ok(report);
        }
    }
}

/// Decides the given cases (by number) that are still `new`.
pub async fn decide_cases(
    ledger: &Ledger,
    settings: &Settings,
    book: &RuleBook,
    ids: &[i64],
) -> Result<PassReport, StoreError> {
    let mut report = PassReport::default();
    for &id in ids {
        let case = ledger.get(id).await?;
        report.last_id = report.last_id.max(Some(id));
        if case.status != CaseStatus::New {
            continue;
        }
        report.looked += 1;
        let outcome = decide_one(ledger, settings, book, &case).await?;
        report.add(outcome);
    }
    Ok(report)
}

/// One `new` case: Some(required) when the rules decided it (or someone
/// else did in the meantime, which `decide_requirement` leaves alone), None
/// when it stays `new`.
async fn decide_one(
    ledger: &Ledger,
    settings: &Settings,
    book: &RuleBook,
    case: &CaseRecord,
) -> Result<Option<bool>, StoreError> {
    let Ok(file) = book.for_case(settings, &case.data) else {
        return Ok(None);
    };
    let verdict = file.evaluate(&case.data);
    let Some(required) = verdict.required else {
        return Ok(None);
    };
    let decision = RequirementDecision {
        required,
        source: "rules".into(),
        detail: detail(file, &verdict),
    };
    let moved = ledger
        .decide_requirement(case.id, &decision, &Actor::system(RULES_ACTOR))
        .await?;
    if let Some(to) = moved {
        tracing::info!(
            case_id = case.id,
            practice = %case.data.practice_id,
            case_ref = %case.data.case_ref,
            required,
            status = %to,
            rules = %file.path.display(),
            version = %file.version,
            "Requirement decided by the rules."
        );
    }
    Ok(moved.map(|_| required))
}

/// What the timeline cites: the file, its version, the deciding rule (its
/// id, line and effective dates, the code entry that matched and where it
/// was listed), and each line's rule.
pub(super) fn detail(file: &RuleFile, verdict: &Verdict) -> Value {
    let line_json = |l: &super::LineVerdict| {
        let rule = l.rule.map(|i| &file.rules[i]);
        json!({
            "code": l.code,
            "rule": rule.map(|r| r.id.clone()),
            "line": rule.map(|r| r.line),
            "required": l.required,
        })
    };
    let mut out = json!({
        "file": file.path.display().to_string(),
        "version": file.version,
        "lines": verdict.lines.iter().map(line_json).collect::<Vec<_>>(),
    });
    if let Some(l) = verdict.deciding_line() {
        if let Some(rule) = l.rule.map(|i| &file.rules[i]) {
            out["rule"] = json!(rule.id);
            out["line"] = json!(rule.line);
            out["code"] = json!(l.code);
            out["from"] = json!(rule.from.map(|d| d.to_string()));
            out["until"] = json!(rule.until.map(|d| d.to_string()));
            if let Some(e) = &l.entry {
                out["listed"] = json!(e.label());
                if let Some((path, line)) = &e.origin {
                    out["codes_file"] = json!(path.display().to_string());
                    out["codes_file_line"] = json!(line);
                }
                if e.from.is_some() || e.until.is_some() {
                    out["listed_from"] = json!(e.from.map(|d| d.to_string()));
                    out["listed_until"] = json!(e.until.map(|d| d.to_string()));
                }
            }
        }
    }
    if let Some(s) = &file.source {
        out["source_of_list"] = json!(s);
    }
    out
}
