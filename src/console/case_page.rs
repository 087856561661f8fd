//! The case page: the case's data (patient identifiers masked until asked
//! for), the decision, letters, escalations, the evidence of failed runs,
//! the actions a person may take now, and the whole timeline.
//!
//! Text precert did not write (the payer's reasons and conditions, portal
//! errors, notes quoting them) goes through the case's scrubber unless the
//! viewer asked for the payer's own words, which the caller recorded.

use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use serde_json::{json, Value};

use super::auth::Viewer;
use super::pages::html;
use super::view::{self, Frame};
use super::App;
use crate::case::{CaseRecord, CaseStatus};
use crate::scrub::Scrubber;
use crate::store::AuditEntry;

/// What the viewer asked to see unmasked on this one rendering.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reveal {
    pub patient: bool,
    pub payer_text: bool,
}

#[derive(Serialize)]
struct Pair {
    key: String,
    value: String,
}

#[derive(Serialize)]
struct EventRow {
    at: String,
    actor: String,
    kind: String,
    change: Option<String>,
    detail: Vec<Pair>,
}

#[derive(Serialize)]
struct RunRow {
    at: String,
    action: String,
    result: String,
    step: String,
    message: String,
    screenshot: Option<String>,
    files: Vec<Pair>,
}

/// Artifact files a failed run may leave, with how the console serves them.
pub const ARTIFACT_FILES: &[&str] = &["screenshot.png", "page.html", "trace.txt"];

/// Everything a failed run left, as files the console may serve: the known
/// names, and the step screenshots (`*.png`) beside them.
pub fn artifact_files(dir: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let safe = !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if safe && (ARTIFACT_FILES.contains(&name.as_str()) || name.ends_with(".png")) {
            out.push(name);
        }
    }
    out.sort_by_key(|n| (ARTIFACT_FILES.iter().position(|k| k == n).unwrap_or(9), n.clone()));
    out
}

fn detail_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        other => other.to_string(),
    }
}

/// Renders the case page (and records the view in the audit first: no
/// patient data leaves without its line in the ledger).
pub async fn show(
    app: &App,
    viewer: &Viewer,
    case: &CaseRecord,
    reveal: Reveal,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let ledger = &app.ledger;
    let d = &case.data;
    let practice = app.settings.practice(&d.practice_id);
    let tz = practice.map_or(crate::tz::UTC, |p| p.timezone);
    let loaded = async {
        Ok::<_, crate::store::StoreError>((
            ledger.events(case.id).await?,
            ledger.letters(case.id).await?,
            // Active ones only: a practice's resolved escalations grow without
            // bound; the timeline keeps their history.
            ledger.escalations(Some(&d.practice_id), false).await?,
            ledger.submission_owner(case.id).await?,
        ))
    };
    let (events, letters, escalations, owner) = match loaded.await {
        Ok(v) => v,
        Err(e) => return super::unavailable(&e),
    };
    if let Err(e) = app
        .audit(AuditEntry {
            user: viewer.name(),
            action: "case_view",
            practice: Some(&d.practice_id),
            case_id: Some(case.id),
            remote: viewer.remote.as_deref(),
            detail: json!({ "patient_shown": reveal.patient, "payer_text_shown": reveal.payer_text }),
        })
        .await
    {
        return super::unavailable(&e);
    }
    let now = ledger.now();
    let base = view::case_path(&d.practice_id, &d.case_ref);
    let scrubber = Scrubber::for_case(
        case,
        if reveal.patient {
            crate::scrub::Reveal::Full
        } else {
            crate::scrub::Reveal::Masked
        },
    );
    let text = |t: &str| {
        if reveal.payer_text {
            t.to_owned()
        } else {
            scrubber.scrub(t)
        }
    };
    let p = &d.patient;
    let patient = if reveal.patient {
        json!({
            "name": p.name.expose_full(),
            "birth": p.birth_date.to_string(),
            "member_id": p.member_id.expose(),
            "group": p.group_number.clone().unwrap_or_else(|| "—".into()),
        })
    } else {
        json!({
            "name": p.name.initials(),
            "birth": format!("{} (year only)", chrono::Datelike::year(&p.birth_date)),
            "member_id": p.member_id.masked(),
            "group": if p.group_number.is_some() { "on file" } else { "—" },
        })
    };
    let location = practice
        .and_then(|pr| pr.location(&d.servicing_provider.location))
        .map_or_else(|| d.servicing_provider.location.clone(), |l| l.name.clone());
    let request = json!({
        "lines": d.service_lines.iter().map(|l| json!({
            "code": l.code.as_str(),
            "units": l.units,
            "modifiers": l.modifiers.iter().map(|m| m.as_str().to_owned()).collect::<Vec<_>>().join(", "),
        })).collect::<Vec<_>>(),
        "diagnoses": d.diagnoses.iter().map(|c| c.as_str().to_owned()).collect::<Vec<_>>().join(", "),
        "dates": format!("{} – {}", d.service_dates.start, d.service_dates.end),
        "setting": d.setting.as_str().replace('_', " "),
        "urgency": d.urgency.as_str(),
        "requesting": format!("{} (NPI {})", d.requesting_provider.name, d.requesting_provider.npi.as_str()),
        "servicing": format!("{} (NPI {})", d.servicing_provider.name, d.servicing_provider.npi.as_str()),
        "location": location,
        "plan": format!("{} · {}", d.coverage.plan, d.coverage.plan_type.as_str().replace('_', " ")),
        "state": d.coverage.state.as_str(),
        "payer_ref": case.payer_ref,
        "attachments": d.attachments.len(),
    });
    let decision = case.decision.as_ref().map(|dec| {
        json!({
            "auth_number": dec.auth_number,
            "valid": dec.valid.map(|v| format!("{} – {}", v.start, v.end)),
            "lines": dec.lines.iter().map(|l| json!({
                "code": l.code.as_str(), "requested": l.requested_units, "approved": l.approved_units,
            })).collect::<Vec<_>>(),
            "conditions": dec.conditions.as_deref().map(&text),
            "denial_code": dec.denial.as_ref().and_then(|r| r.code.as_deref()).map(|c| {
                crate::scrub::payer_code(c).map_or_else(|| text(c), str::to_owned)
            }),
            "denial_text": dec.denial.as_ref().map(|r| text(&r.text)),
            "decided": view::when(dec.decided_at, tz),
            "source": dec.source,
        })
    });
    let letters: Vec<Value> = letters
        .iter()
        .enumerate()
        .map(|(i, l)| {
            json!({
                "href": format!("{base}/letters/{}", i + 1),
                "kind": l.kind,
                "fetched": l.fetched_at.map(|t| view::when(t, tz)),
                "size": view::size(l.bytes),
                "media_type": l.media_type,
                "sha256": l.sha256.chars().take(12).collect::<String>(),
            })
        })
        .collect();
    let escalations: Vec<Value> = escalations
        .iter()
        .filter(|e| e.case_id == Some(case.id))
        .map(|e| {
            json!({
                "id": e.id,
                "reason": e.reason.title(),
                "state": e.state.as_str(),
                "open": e.state == crate::store::EscalationState::Open,
                "opened": view::when(e.opened_at, tz),
                "due": e.due_at.map(|t| view::when(t, tz)),
                "summary": text(&e.summary),
                "acknowledged": e.acknowledged_at.map(|t| format!(
                    "{} by {}",
                    view::when(t, tz),
                    e.acknowledged_by.as_deref().unwrap_or("?").trim_start_matches("user:")
                )),
                "note": e.note.as_deref().map(&text),
            })
        })
        .collect();
    let mut runs = Vec::new();
    for e in events.iter().rev() {
        let Some(dir) = e.detail.get("artifacts").and_then(Value::as_str) else {
            continue;
        };
        let files = artifact_files(std::path::Path::new(dir));
        let href = |f: &str| format!("{base}/runs/{}/{f}", e.id);
        runs.push(RunRow {
            at: view::when(e.at, tz),
            action: e.detail.get("action").map(detail_text).unwrap_or_default(),
            result: e
                .detail
                .get("result")
                .map(detail_text)
                .unwrap_or_default()
                .replace('_', " "),
            step: e.detail.get("step").map(detail_text).unwrap_or_default(),
            message: text(&e.detail.get("message").map(detail_text).unwrap_or_default()),
            screenshot: files
                .iter()
                .any(|f| f == "screenshot.png")
                .then(|| href("screenshot.png")),
            files: files
                .iter()
                .map(|f| Pair {
                    key: f.clone(),
                    value: href(f),
                })
                .collect(),
        });
    }
    let timeline: Vec<EventRow> = events
        .iter()
        .map(|e| EventRow {
            at: view::when(e.at, tz),
            actor: e.actor.clone(),
            kind: e.kind.replace('_', " "),
            change: match (e.from_status, e.to_status) {
                (Some(f), Some(t)) => Some(format!("{} → {}", view::status_label(f), view::status_label(t))),
                (None, Some(t)) => Some(format!("→ {}", view::status_label(t))),
                _ => None,
            },
            detail: e
                .detail
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, v)| k.as_str() != "artifacts" && !v.is_null())
                        .map(|(k, v)| Pair {
                            key: k.replace('_', " "),
                            value: text(&detail_text(v)),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let lease = owner.filter(|o| o.until > now).map(|o| {
        json!({
            "holder": o.holder,
            "since": view::when(o.since, tz),
            "until": view::when(o.until, tz),
        })
    });
    let next: Vec<Value> = case
        .status
        .next()
        .iter()
        .filter(|s| **s != CaseStatus::Submitting)
        .map(|s| json!({ "value": s.as_str(), "label": view::status_label(*s) }))
        .collect();
    let decided = [CaseStatus::Approved, CaseStatus::PartiallyApproved, CaseStatus::Denied];
    let outcomes: Vec<Value> = decided
        .iter()
        .filter(|s| case.status == **s || case.status.can_move_to(**s))
        .map(|s| json!({ "value": s.as_str(), "label": view::status_label(*s) }))
        .collect();
    let resubmit = matches!(
        case.status,
        CaseStatus::Ready | CaseStatus::NeedsAttention | CaseStatus::Denied | CaseStatus::PartiallyApproved
    );
    let poll = case.payer_ref.is_some() && case.status.is_awaiting_payer();
    let mut frame = Frame::new(&d.case_ref, "cases", Some(viewer));
    frame.notice = notice;
    let lines: Vec<Value> = d
        .service_lines
        .iter()
        .enumerate()
        .map(|(i, l)| json!({ "i": i, "code": l.code.as_str(), "units": l.units }))
        .collect();
    let ctx = json!({
        "base": base, "error": error, "lease": lease, "patient": patient, "request": request,
        "decision": decision, "letters": letters, "escalations": escalations, "runs": runs,
        "timeline": timeline, "next": next, "outcomes": outcomes, "resubmit": resubmit, "poll": poll,
        "lines": lines,
        "case_ref": d.case_ref,
        "practice": practice.map_or(d.practice_id.as_str(), |p| p.name.as_str()),
        "payer": d.coverage.payer,
        "status": case.status.as_str(),
        "status_label": view::status_label(case.status),
        "created": view::when(case.created_at, tz),
        "updated": view::when(case.updated_at, tz),
        "patient_shown": reveal.patient,
        "payer_text_shown": reveal.payer_text,
        "csrf": viewer.csrf,
    });
    html(status, view::page(&app.templates, "case.html", &frame, ctx))
}
