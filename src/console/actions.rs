//! What a person does to a case from the console. Each action is a form
//! with the session's CSRF token; each is an event in the case's timeline
//! carrying the user's name and note, and each goes through the ledger, so
//! the status graph and the submission lease hold: a case that is being
//! submitted is refused (`StoreError::Owned`), and the page says who holds
//! it and until when.
//!
//! "Submit again" and "poll now" queue a job for the daemon; the console
//! never talks to a payer itself.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::json;

use super::auth::Viewer;
use super::case_page::{self, Reveal};
use super::pages::{bad_csrf, local_path, message, visible_case};
use super::view;
use super::App;
use crate::case::{CaseRecord, CaseStatus, DateRange, Decision, DenialReason, LineDecision};
use crate::config::Job;
use crate::queue::NewJob;
use crate::store::{Actor, AuditEntry, EventKind, StoreError};

/// What a refused change says to the person who tried it.
fn refusal(e: &StoreError) -> Option<String> {
    Some(match e {
        StoreError::Owned { holder, since, until, .. } => format!(
            "Refused: this case is being submitted right now by {holder} (since {since}; its lease runs to {until}). \
             Nothing was changed. Wait for the submission to end, then look again."
        ),
        StoreError::IllegalTransition { from, to, allowed, .. } => format!(
            "Refused: a case that is {} cannot move to {} (from {} it may move to: {}).",
            view::status_label(*from),
            view::status_label(*to),
            view::status_label(*from),
            allowed.replace('_', " ")
        ),
        StoreError::Conflict { now, .. } => format!(
            "Refused: someone else changed this case meanwhile (it is now {}). Nothing was written; look again and retry.",
            view::status_label(*now)
        ),
        StoreError::StaleLease { .. } => "Refused: the case changed hands meanwhile. Nothing was written.".to_owned(),
        _ => return None,
    })
}

/// The case page again, with a refusal or a problem in the form.
pub(super) async fn again(
    app: &App,
    viewer: &Viewer,
    case: &CaseRecord,
    status: StatusCode,
    error: String,
) -> Response {
    // Read the case afresh: the refusal may be about what changed.
    let fresh = app.ledger.get(case.id).await.unwrap_or_else(|_| case.clone());
    case_page::show(app, viewer, &fresh, Reveal::default(), None, Some(error), status).await
}

/// The answer to a ledger error from an action.
async fn failed(app: &App, viewer: &Viewer, case: &CaseRecord, e: &StoreError) -> Response {
    match refusal(e) {
        Some(text) => again(app, viewer, case, StatusCode::CONFLICT, text).await,
        None => super::unavailable(e),
    }
}

pub(super) fn done(case: &CaseRecord, what: &str) -> Response {
    Redirect::to(&format!(
        "{}?done={what}",
        view::case_path(&case.data.practice_id, &case.data.case_ref)
    ))
    .into_response()
}

pub(super) async fn audit_action(
    app: &App,
    viewer: &Viewer,
    case: &CaseRecord,
    action: &str,
    detail: serde_json::Value,
) {
    let _ = app
        .audit(AuditEntry {
            user: viewer.name(),
            action,
            practice: Some(&case.data.practice_id),
            case_id: Some(case.id),
            remote: viewer.remote.as_deref(),
            detail,
        })
        .await;
}

/// Checks the token and finds the case: the first steps of every action.
async fn prepare(
    app: &App,
    viewer: &Viewer,
    csrf: &str,
    practice: &str,
    case_ref: &str,
) -> Result<CaseRecord, Response> {
    if !viewer.csrf_ok(csrf) {
        return Err(bad_csrf(app, Some(viewer)));
    }
    visible_case(app, viewer, practice, case_ref).await
}

#[derive(Deserialize)]
pub struct StatusForm {
    #[serde(default)]
    csrf: String,
    to: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    confirm: String,
}

/// Moves a case along the status graph (a person resolving what automation
/// could not: `needs_attention → ready`, a cancellation, …).
pub async fn set_status(
    State(app): State<App>,
    viewer: Viewer,
    Path((practice, case_ref)): Path<(String, String)>,
    Form(form): Form<StatusForm>,
) -> Response {
    let case = match prepare(&app, &viewer, &form.csrf, &practice, &case_ref).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(to) = form.to.parse::<CaseStatus>() else {
        return again(
            &app,
            &viewer,
            &case,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Choose a status.".into(),
        )
        .await;
    };
    let note = form.note.trim();
    if note.is_empty() {
        return again(
            &app,
            &viewer,
            &case,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Say why in the note: it goes into the case's timeline.".into(),
        )
        .await;
    }
    if to == CaseStatus::Cancelled && form.confirm != "yes" {
        return again(
            &app,
            &viewer,
            &case,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Cancelling is final: tick \u{201c}Yes, cancel this case\u{201d} to confirm.".into(),
        )
        .await;
    }
    if to == CaseStatus::Submitting {
        return again(
            &app,
            &viewer,
            &case,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Only a submission sets a case to submitting: use \u{201c}Submit again\u{201d}.".into(),
        )
        .await;
    }
    let actor = Actor::user(viewer.name());
    if let Err(e) = app.ledger.transition(case.id, to, &actor, Some(note)).await {
        return failed(&app, &viewer, &case, &e).await;
    }
    audit_action(
        &app,
        &viewer,
        &case,
        "set_status",
        json!({ "from": case.status.as_str(), "to": to.as_str() }),
    )
    .await;
    done(&case, "status")
}

#[derive(Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    csrf: String,
    outcome: String,
    #[serde(default)]
    auth_number: String,
    #[serde(default)]
    valid_from: String,
    #[serde(default)]
    valid_to: String,
    #[serde(default)]
    denial_code: String,
    #[serde(default)]
    denial_text: String,
    #[serde(default)]
    conditions: String,
    #[serde(default)]
    note: String,
    /// Approved units per line, in the case's order: `units_0`, `units_1`, …
    #[serde(flatten)]
    rest: std::collections::HashMap<String, String>,
}

fn date(s: &str, what: &str) -> Result<Option<NaiveDate>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("{what}: `{s}` is not a date (YYYY-MM-DD)."))
}

/// The decision a form describes, or what is wrong with it.
fn decision_from(
    form: &DecisionForm,
    case: &CaseRecord,
    user: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(Decision, CaseStatus), String> {
    let to = match form.outcome.parse::<CaseStatus>() {
        Ok(s @ (CaseStatus::Approved | CaseStatus::PartiallyApproved | CaseStatus::Denied)) => s,
        _ => return Err("Choose the payer's decision: approved, partially approved or denied.".into()),
    };
    let some = |s: &str| {
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_owned())
    };
    let auth_number = some(&form.auth_number);
    if to != CaseStatus::Denied && auth_number.is_none() {
        return Err("An approval needs the authorization number the payer gave.".into());
    }
    let valid = match (date(&form.valid_from, "Valid from")?, date(&form.valid_to, "Valid to")?) {
        (Some(start), Some(end)) if start <= end => Some(DateRange { start, end }),
        (Some(_), Some(_)) => return Err("The authorized dates end before they start.".into()),
        (None, None) => None,
        _ => return Err("Give both authorized dates, or neither.".into()),
    };
    let mut lines = Vec::new();
    for (i, l) in case.data.service_lines.iter().enumerate() {
        let given = form.rest.get(&format!("units_{i}")).map(|s| s.trim()).unwrap_or("");
        let approved = if given.is_empty() {
            if to == CaseStatus::Denied {
                0
            } else {
                l.units
            }
        } else {
            given
                .parse::<u32>()
                .map_err(|_| format!("Units for {}: `{given}` is not a number.", l.code.as_str()))?
        };
        if approved > l.units {
            return Err(format!(
                "Units for {}: {approved} is more than the {} requested.",
                l.code.as_str(),
                l.units
            ));
        }
        lines.push(LineDecision {
            code: l.code.clone(),
            requested_units: l.units,
            approved_units: approved,
        });
    }
    let denial = match to {
        CaseStatus::Denied => {
            let text = some(&form.denial_text).ok_or("A denial needs the payer's reason.")?;
            Some(DenialReason {
                code: some(&form.denial_code),
                text,
            })
        }
        _ => None,
    };
    let decision = Decision {
        auth_number,
        valid,
        lines,
        conditions: some(&form.conditions),
        denial,
        decided_at: now,
        source: format!("manual:{user}"),
    };
    Ok((decision, to))
}

/// Records a decision given outside automation (by phone, by fax, an
/// appeal's result).
pub async fn record_decision(
    State(app): State<App>,
    viewer: Viewer,
    Path((practice, case_ref)): Path<(String, String)>,
    Form(form): Form<DecisionForm>,
) -> Response {
    let case = match prepare(&app, &viewer, &form.csrf, &practice, &case_ref).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let note = form.note.trim().to_owned();
    if note.is_empty() {
        return again(
            &app,
            &viewer,
            &case,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Say where the decision came from in the note (who at the payer, by phone or fax).".into(),
        )
        .await;
    }
    let (decision, to) = match decision_from(&form, &case, viewer.name(), app.ledger.now()) {
        Ok(d) => d,
        Err(problem) => return again(&app, &viewer, &case, StatusCode::UNPROCESSABLE_ENTITY, problem).await,
    };
    let actor = Actor::user(viewer.name());
    if let Err(e) = app.ledger.record_decision(case.id, &decision, to, &actor).await {
        return failed(&app, &viewer, &case, &e).await;
    }
    let event = json!({ "note": note, "console": "decision recorded by hand" });
    if let Err(e) = app.ledger.append_event(case.id, EventKind::Note, &actor, &event).await {
        return super::unavailable(&e);
    }
    audit_action(&app, &viewer, &case, "record_decision", json!({ "to": to.as_str() })).await;
    done(&case, "decision")
}

#[derive(Deserialize)]
pub struct NoteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    note: String,
}

/// Queues a submit job for the case, after moving it back to `ready` when
/// a person has resolved why it stopped.
pub async fn resubmit(
    State(app): State<App>,
    viewer: Viewer,
    Path((practice, case_ref)): Path<(String, String)>,
    Form(form): Form<NoteForm>,
) -> Response {
    let case = match prepare(&app, &viewer, &form.csrf, &practice, &case_ref).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let note = form.note.trim();
    let actor = Actor::user(viewer.name());
    match case.status {
        CaseStatus::Ready => {}
        CaseStatus::NeedsAttention | CaseStatus::Denied | CaseStatus::PartiallyApproved => {
            if note.is_empty() {
                return again(
                    &app,
                    &viewer,
                    &case,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Say what was fixed in the note before submitting again.".into(),
                )
                .await;
            }
            if let Err(e) = app.ledger.transition(case.id, CaseStatus::Ready, &actor, Some(note)).await {
                return failed(&app, &viewer, &case, &e).await;
            }
        }
        other => {
            return again(
                &app,
                &viewer,
                &case,
                StatusCode::CONFLICT,
                format!(
                    "A case that is {} cannot be submitted again; only one that is ready, needs attention, denied or partially approved.",
                    view::status_label(other)
                ),
            )
            .await
        }
    }
    queue(&app, &viewer, &case, Job::Submit, "queued").await
}

/// Queues a poll of the payer for a case awaiting its decision.
pub async fn poll(
    State(app): State<App>,
    viewer: Viewer,
    Path((practice, case_ref)): Path<(String, String)>,
    Form(form): Form<NoteForm>,
) -> Response {
    let case = match prepare(&app, &viewer, &form.csrf, &practice, &case_ref).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if case.payer_ref.is_none() || !case.status.is_awaiting_payer() {
        return again(
            &app,
            &viewer,
            &case,
            StatusCode::CONFLICT,
            "Only a case the payer has and has not decided can be polled.".into(),
        )
        .await;
    }
    queue(&app, &viewer, &case, Job::Poll, "poll").await
}

async fn queue(app: &App, viewer: &Viewer, case: &CaseRecord, kind: Job, done_as: &str) -> Response {
    let now = app.ledger.now();
    let job = NewJob::new(kind, &case.data.practice_id, now)
        .payer(&case.data.coverage.payer)
        .case(case.id);
    let id = match app.queue.enqueue(&job, now).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "Console: job not queued.");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "The job queue is unavailable; try again.\n",
            )
                .into_response();
        }
    };
    let actor = Actor::user(viewer.name());
    let event = json!({ "console": format!("{} queued", kind.as_str()), "job": id });
    if let Err(e) = app.ledger.append_event(case.id, EventKind::Note, &actor, &event).await {
        return super::unavailable(&e);
    }
    audit_action(
        app,
        viewer,
        case,
        "queue_job",
        json!({ "job": id, "kind": kind.as_str() }),
    )
    .await;
    done(case, done_as)
}

/// Acknowledges one or more escalations with one note: their reminders
/// stop. An escalation of a practice the viewer does not see is skipped as
/// if it did not exist.
pub async fn acknowledge(State(app): State<App>, viewer: Viewer, Form(form): Form<Vec<(String, String)>>) -> Response {
    let field = |k: &str| form.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    if !viewer.csrf_ok(field("csrf").unwrap_or("")) {
        return bad_csrf(&app, Some(&viewer));
    }
    let back = local_path(field("back").unwrap_or(""))
        .unwrap_or("/escalations")
        .to_owned();
    let note = field("note").map(str::trim).filter(|n| !n.is_empty());
    let ids: Vec<i64> = form
        .iter()
        .filter(|(k, _)| k == "id")
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    if ids.is_empty() {
        return message(
            &app,
            Some(&viewer),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Nothing acknowledged",
            "Tick the escalations to acknowledge, then press Acknowledge.",
        );
    }
    let actor = Actor::user(viewer.name());
    let mut problems = Vec::new();
    for id in ids {
        let esc = match app.ledger.escalation(id).await {
            Ok(e) if viewer.sees(&e.practice_id) => e,
            Ok(_) | Err(StoreError::NotFound(_)) => {
                problems.push(format!("#{id}: no such escalation"));
                continue;
            }
            Err(e) => return super::unavailable(&e),
        };
        match app.ledger.acknowledge_escalation(id, &actor, note).await {
            Ok(_) => {
                let _ = app
                    .audit(AuditEntry {
                        user: viewer.name(),
                        action: "acknowledge",
                        practice: Some(&esc.practice_id),
                        case_id: esc.case_id,
                        remote: viewer.remote.as_deref(),
                        detail: json!({ "escalation": id }),
                    })
                    .await;
            }
            Err(StoreError::NotFound(_)) => problems.push(format!("#{id}: already acknowledged or resolved")),
            Err(e) => return super::unavailable(&e),
        }
    }
    if !problems.is_empty() {
        return message(
            &app,
            Some(&viewer),
            StatusCode::CONFLICT,
            "Some escalations were not acknowledged",
            &format!("{}. The others were acknowledged.", problems.join("; ")),
        );
    }
    let sep = if back.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{back}{sep}done=acknowledged")).into_response()
}
