//! Acknowledging from the mail: `/ack/TOKEN` (see `links`). The link opens
//! a confirmation page once the person has signed in (the sign-in page
//! brings them back here); the page's form, with the session's CSRF token,
//! acknowledges. A link that is altered, expired or used already is
//! refused with a page that says which, and the refusal is audited.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::json;

use super::auth::Viewer;
use super::links::{AckLink, LinkError};
use super::pages::{bad_csrf, html, message};
use super::view::{self, Frame};
use super::App;
use crate::store::{Actor, AuditEntry, Escalation, EscalationState, StoreError};

/// What a link leads to, or the page that refuses it.
async fn check(app: &App, viewer: &Viewer, token: &str) -> Result<(AckLink, Escalation), Response> {
    let now = app.ledger.now();
    let key = app.link_key().await.map_err(|e| super::unavailable(&e))?;
    let refuse = |status: StatusCode, why: &'static str, title: &str, text: String| {
        let app = app.clone();
        let viewer = viewer.clone();
        let title = title.to_owned();
        async move {
            let entry = AuditEntry {
                user: viewer.name(),
                action: "ack_link_refused",
                practice: None,
                case_id: None,
                remote: viewer.remote.as_deref(),
                detail: json!({ "why": why }),
            };
            if let Err(e) = app.audit(entry).await {
                return super::unavailable(&e);
            }
            message(&app, Some(&viewer), status, &title, &text)
        }
    };
    let link = match key.verify(token, now) {
        Ok(l) => l,
        Err(LinkError::Invalid) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid",
                "Link not valid",
                "This acknowledgement link is not one this console made, or it was cut short. \
                 Copy the whole link from the mail, or acknowledge in the Escalations inbox."
                    .into(),
            )
            .await)
        }
        Err(LinkError::Expired { at }) => {
            return Err(refuse(
                StatusCode::GONE,
                "expired",
                "Link expired",
                format!(
                    "This acknowledgement link ended at {}. Acknowledge in the Escalations inbox instead.",
                    view::when(at, crate::tz::UTC)
                ),
            )
            .await)
        }
    };
    let esc = match app.ledger.escalation(link.escalation_id).await {
        Ok(e) if viewer.sees(&e.practice_id) => e,
        // Another practice's escalation is as absent as a missing one.
        Ok(_) | Err(StoreError::NotFound(_)) => {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "not visible",
                "No such escalation",
                "There is no escalation for this link among your practices.".into(),
            )
            .await)
        }
        Err(e) => return Err(super::unavailable(&e)),
    };
    match app.ledger.console_link_use(&link.nonce).await {
        Ok(None) => {}
        Ok(Some((at, by))) => {
            let tz = app
                .settings
                .practice(&esc.practice_id)
                .map_or(crate::tz::UTC, |p| p.timezone);
            return Err(refuse(
                StatusCode::CONFLICT,
                "used",
                "Link used already",
                format!(
                    "This acknowledgement link was used at {} by {by}; each link works once.",
                    view::when(at, tz)
                ),
            )
            .await);
        }
        Err(e) => return Err(super::unavailable(&e)),
    }
    if esc.state != EscalationState::Open {
        let tz = app
            .settings
            .practice(&esc.practice_id)
            .map_or(crate::tz::UTC, |p| p.timezone);
        let text = match (esc.state, esc.acknowledged_at) {
            (EscalationState::Acknowledged, Some(at)) => format!(
                "Escalation #{} was acknowledged already, at {} by {}. Its reminders have stopped.",
                esc.id,
                view::when(at, tz),
                esc.acknowledged_by
                    .as_deref()
                    .unwrap_or("?")
                    .trim_start_matches("user:")
            ),
            _ => format!(
                "Escalation #{} has ended: its cause is over, so there is nothing to acknowledge.",
                esc.id
            ),
        };
        return Err(refuse(StatusCode::CONFLICT, "not open", "Nothing to acknowledge", text).await);
    }
    Ok((link, esc))
}

/// The confirmation page a mail's link opens.
pub async fn confirm(State(app): State<App>, viewer: Viewer, Path(token): Path<String>) -> Response {
    let (_, esc) = match check(&app, &viewer, &token).await {
        Ok(found) => found,
        Err(res) => return res,
    };
    let case = match esc.case_id {
        Some(id) => match app.ledger.get(id).await {
            Ok(c) => Some(c),
            Err(e) => return super::unavailable(&e),
        },
        None => None,
    };
    let summary = match &case {
        Some(c) => crate::scrub::Scrubber::for_case(c, crate::scrub::Reveal::Masked).scrub(&esc.summary),
        None => crate::scrub::scrub(&esc.summary),
    };
    let tz = app
        .settings
        .practice(&esc.practice_id)
        .map_or(crate::tz::UTC, |p| p.timezone);
    let frame = Frame::new("Acknowledge", "escalations", Some(&viewer));
    let ctx = json!({
        "id": esc.id,
        "reason": esc.reason.title(),
        "practice": esc.practice_id,
        "case_ref": case.as_ref().map(|c| c.data.case_ref.clone()),
        "case_href": case.as_ref().map(|c| view::case_path(&c.data.practice_id, &c.data.case_ref)),
        "payer": esc.payer,
        "summary": summary,
        "opened": view::when(esc.opened_at, tz),
        "action": format!("/ack/{token}"),
        "csrf": &viewer.csrf,
    });
    html(StatusCode::OK, view::page(&app.templates, "ack.html", &frame, ctx))
}

#[derive(Deserialize)]
pub struct AckForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    note: String,
}

/// Acknowledges the link's escalation, once.
pub async fn acknowledge(
    State(app): State<App>,
    viewer: Viewer,
    Path(token): Path<String>,
    Form(form): Form<AckForm>,
) -> Response {
    if !viewer.csrf_ok(&form.csrf) {
        return bad_csrf(&app, Some(&viewer));
    }
    let (link, esc) = match check(&app, &viewer, &token).await {
        Ok(found) => found,
        Err(res) => return res,
    };
    // The link is spent first: two tabs confirming at once acknowledge
    // once, and the second is told the link was used.
    match app.ledger.use_console_link(&link.nonce, esc.id, viewer.name()).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return message(
                &app,
                Some(&viewer),
                StatusCode::CONFLICT,
                "Link used already",
                "This acknowledgement link was used a moment ago; each link works once.",
            )
        }
        Err(e) => return super::unavailable(&e),
    }
    let note = form.note.trim();
    let note = (!note.is_empty()).then_some(note);
    match app
        .ledger
        .acknowledge_escalation(esc.id, &Actor::user(viewer.name()), note)
        .await
    {
        Ok(_) => {}
        Err(StoreError::NotFound(_)) => {
            return message(
                &app,
                Some(&viewer),
                StatusCode::CONFLICT,
                "Nothing to acknowledge",
                &format!("Escalation #{} was acknowledged or ended meanwhile.", esc.id),
            )
        }
        Err(e) => return super::unavailable(&e),
    }
    if let Err(e) = app
        .audit(AuditEntry {
            user: viewer.name(),
            action: "acknowledge",
            practice: Some(&esc.practice_id),
            case_id: esc.case_id,
            remote: viewer.remote.as_deref(),
            detail: json!({ "escalation": esc.id, "via": "mail link" }),
        })
        .await
    {
        return super::unavailable(&e);
    }
    let to = match esc.case_id {
        Some(id) => match app.ledger.get(id).await {
            Ok(c) => format!(
                "{}?done=acknowledged",
                view::case_path(&c.data.practice_id, &c.data.case_ref)
            ),
            Err(_) => "/escalations?done=acknowledged".to_owned(),
        },
        None => "/escalations?done=acknowledged".to_owned(),
    };
    Redirect::to(&to).into_response()
}
