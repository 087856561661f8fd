//! `precert rules explain`: which rule decided a case (or would), and why
//! each rule read before it did not match. Shows the case's codes, plan,
//! setting and dates, never the patient.

use std::fmt::Write as _;

use super::RuleBook;
use crate::case::{CaseRecord, CaseStatus};
use crate::config::Settings;
use crate::store::CaseEvent;

/// The explanation, as text for the terminal. `events` is the case's
/// timeline: a requirement already recorded is shown beside what the rules
/// say now.
pub fn explain(settings: &Settings, book: &RuleBook, case: &CaseRecord, events: &[CaseEvent]) -> String {
    let d = &case.data;
    let mut out = String::new();
    let _ = writeln!(out, "Case {}  {}  ({})", case.id, case.key(), case.status);
    let _ = writeln!(
        out,
        "  payer {} · plan `{}` ({}, {}) · {} · service start {}",
        d.coverage.payer, d.coverage.plan, d.coverage.plan_type, d.coverage.state, d.setting, d.service_dates.start
    );
    let recorded: Vec<&CaseEvent> = events.iter().filter(|e| e.kind == "requirement_decided").collect();
    for e in &recorded {
        let by = e.detail.get("source").and_then(|v| v.as_str()).unwrap_or("?");
        let req = match e.detail.get("required").and_then(|v| v.as_bool()) {
            Some(true) => "required",
            Some(false) => "not required",
            None => "?",
        };
        let rule = e
            .detail
            .get("rule")
            .and_then(|v| v.as_str())
            .map(|r| {
                let version = e.detail.get("version").and_then(|v| v.as_str()).unwrap_or("?");
                format!(": rule {r}, version {version}")
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  recorded     {req}, decided by {by}{rule} on {} ({})",
            e.at.format("%Y-%m-%d %H:%M UTC"),
            e.actor
        );
    }
    if recorded.is_empty() && case.status != CaseStatus::New {
        let _ = writeln!(
            out,
            "  recorded     no requirement decision in the timeline (the import or a person set the status)"
        );
    }
    let file = match book.for_case(settings, d) {
        Ok(f) => f,
        Err(why) => {
            let _ = writeln!(out, "  rules        none: {why}");
            let _ = writeln!(out, "  verdict      needs a decision (no rule covers it)");
            return out;
        }
    };
    let _ = writeln!(
        out,
        "  rules        {} (version {}, {} rule{}, first match decides each line)",
        file.path.display(),
        file.version,
        file.rules.len(),
        if file.rules.len() == 1 { "" } else { "s" }
    );
    let verdict = file.evaluate(d);
    for (n, l) in verdict.lines.iter().enumerate() {
        let _ = writeln!(out, "  line {}       {} ×{}", n + 1, l.code, l.units);
        for (i, why) in &l.misses {
            let r = &file.rules[*i];
            let _ = writeln!(out, "    rule {} (line {}): no match: {}", r.id, r.line, why.join("; "));
        }
        match l.rule {
            Some(i) => {
                let r = &file.rules[i];
                let listed = l
                    .entry
                    .as_ref()
                    .map(|e| {
                        let at = e
                            .origin
                            .as_ref()
                            .map(|(p, line)| format!(" at {}:{line}", p.display()))
                            .unwrap_or_default();
                        format!(", code listed as {}{at}", e.label())
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    rule {} (line {}): MATCHES → {} ({}{listed})",
                    r.id,
                    r.line,
                    if r.required { "required" } else { "not required" },
                    r.dates()
                );
                let rest = file.rules.len() - i - 1;
                if rest > 0 {
                    let _ = writeln!(
                        out,
                        "    {rest} later rule{} not read: the first match decides",
                        if rest == 1 { "" } else { "s" }
                    );
                }
            }
            None => {
                let _ = writeln!(out, "    no rule matches this line");
            }
        }
    }
    let verdict_text = match (verdict.required, verdict.deciding_line()) {
        (Some(req), Some(l)) => {
            let r = l.rule.map(|i| &file.rules[i]);
            format!(
                "{} by rule {} ({}:{}, version {}, {}) for {}",
                if req { "required" } else { "not required" },
                r.map(|r| r.id.as_str()).unwrap_or("?"),
                file.path.display(),
                r.map(|r| r.line).unwrap_or(0),
                file.version,
                r.map(|r| r.dates()).unwrap_or_default(),
                l.code
            )
        }
        _ => "needs a decision: a line no rule covers, and no line required".to_owned(),
    };
    let _ = writeln!(out, "  verdict      {verdict_text}");
    if case.status != CaseStatus::New && verdict.required.is_some() {
        let _ = writeln!(
            out,
            "               (the case is no longer new: the rules would not change it now)"
        );
    }
    out
}
