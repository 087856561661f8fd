//! The signed-in user's own account (`/account`): optional two-step sign-in
//! with a TOTP app (RFC 6238, the codes `crate::totp` computes).
//!
//! Enrolment: the page shows a new seed (as text to type and as an
//! `otpauth://` address to paste; no script and no image are needed), the
//! user enters the code their app shows, and only a good code stores the
//! seed. From then on sign-in asks for a code, each code once. Turning it
//! off takes a current code; an admin can remove it for a lost phone.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::json;

use super::auth::{self, Viewer};
use super::pages::{bad_csrf, html};
use super::seeds;
use super::view::{self, Frame};
use super::App;
use crate::store::AuditEntry;

#[derive(Deserialize)]
pub struct AccountQuery {
    done: Option<String>,
}

/// The account page.
pub async fn show(
    State(app): State<App>,
    viewer: Viewer,
    axum::extract::Query(q): axum::extract::Query<AccountQuery>,
) -> Response {
    let notice = match q.done.as_deref() {
        Some("totp_on") => Some("Two-step sign-in is on: sign-in now asks for a code from your app.".to_owned()),
        Some("totp_off") => Some("Two-step sign-in is off.".to_owned()),
        _ => None,
    };
    page(&app, &viewer, StatusCode::OK, notice, None, None)
}

/// The account page, with a seed being enrolled and a problem, if any.
fn page(
    app: &App,
    viewer: &Viewer,
    status: StatusCode,
    notice: Option<String>,
    enrolling: Option<&str>,
    error: Option<&str>,
) -> Response {
    let mut frame = Frame::new("Your account", "account", Some(viewer));
    frame.notice = notice;
    let enrol = enrolling.map(|seed| {
        let grouped: Vec<String> = seed
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        json!({
            "seed": seed,
            "grouped": grouped.join(" "),
            "uri": format!(
                "otpauth://totp/precert:{name}?secret={seed}&issuer=precert&algorithm=SHA1&digits=6&period=30",
                name = view::encode_component(viewer.name())
            ),
        })
    });
    let ctx = json!({
        "name": viewer.name(),
        "role": viewer.role.as_str(),
        "practices": viewer.user.practices,
        "totp": viewer.user.has_totp(),
        "enrol": enrol,
        "error": error,
        "csrf": &viewer.csrf,
    });
    html(status, view::page(&app.templates, "account.html", &frame, ctx))
}

#[derive(Deserialize)]
pub struct TotpForm {
    #[serde(default)]
    csrf: String,
    #[serde(rename = "do")]
    what: String,
    #[serde(default)]
    seed: String,
    #[serde(default)]
    code: String,
}

/// `do=start` shows a new seed; `do=confirm` stores it when the code is
/// good; `do=off` removes it when the code is good.
pub async fn totp(State(app): State<App>, viewer: Viewer, Form(form): Form<TotpForm>) -> Response {
    if !viewer.csrf_ok(&form.csrf) {
        return bad_csrf(&app, Some(&viewer));
    }
    let now = app.ledger.now();
    let audit = |action: &'static str| AuditEntry {
        user: viewer.name(),
        action,
        practice: None,
        case_id: None,
        remote: viewer.remote.as_deref(),
        detail: json!({}),
    };
    match form.what.as_str() {
        "start" if !viewer.user.has_totp() => {
            page(&app, &viewer, StatusCode::OK, None, Some(&auth::new_totp_seed()), None)
        }
        "confirm" if !viewer.user.has_totp() => {
            let seed = form.seed.trim();
            let good = seed.len() == 32 && auth::totp_step(seed, &form.code, now).is_some();
            if !good {
                return page(
                    &app,
                    &viewer,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    None,
                    Some(seed),
                    Some("That code is not the one your app shows now: check the key and try the next code."),
                );
            }
            let sealed = app.seed_key.seal(viewer.name(), seed);
            if let Err(e) = app.ledger.set_console_totp(viewer.name(), Some(&sealed)).await {
                return super::unavailable(&e);
            }
            if let Some(step) = auth::totp_step(seed, &form.code, now) {
                // The code just used does not sign in again.
                if let Err(e) = app.ledger.use_console_totp_step(viewer.name(), step).await {
                    return super::unavailable(&e);
                }
            }
            if let Err(e) = app.audit(audit("totp_enrol")).await {
                return super::unavailable(&e);
            }
            Redirect::to("/account?done=totp_on").into_response()
        }
        "off" if viewer.user.has_totp() => {
            let stored = viewer.user.totp_secret.as_deref().unwrap_or_default();
            let seed = match app.seed_key.open(viewer.name(), stored) {
                Ok(s) => s,
                Err(e) => return seeds::unusable(&app, Some(&viewer), &e),
            };
            if auth::totp_step(&seed, &form.code, now).is_none() {
                return page(
                    &app,
                    &viewer,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    None,
                    None,
                    Some("To turn two-step sign-in off, enter the code your app shows now."),
                );
            }
            if let Err(e) = app.ledger.set_console_totp(viewer.name(), None).await {
                return super::unavailable(&e);
            }
            if let Err(e) = app.audit(audit("totp_off")).await {
                return super::unavailable(&e);
            }
            Redirect::to("/account?done=totp_off").into_response()
        }
        _ => Redirect::to("/account").into_response(),
    }
}
