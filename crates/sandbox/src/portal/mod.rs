//! The provider web portal: server-rendered HTML with a little JavaScript.
//!
//! Every control has a stable `id` and a `<label for>`; automation targets those. Layout
//! version 2 (a hazard) renders the wizard with different IDs and labels. Layout v3
//! (`/v3/`, module [`v3`]) is a second, differently built front end over the same payer.

mod auth;
mod layout;
mod service;
mod v3;
mod views;
mod wizard;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::state::{Shared, Stage};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "SBXSESSION";

/// Largest accepted upload: 10 MiB, like many payer portals.
const UPLOAD_LIMIT: usize = 10 * 1024 * 1024;

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/portal/login") }))
        .route("/portal", get(|| async { Redirect::to("/portal/home") }))
        .route("/portal/login", get(auth::login_page).post(auth::login))
        .route("/portal/mfa", get(auth::mfa_page).post(auth::mfa))
        .route(
            "/portal/contact-details",
            get(auth::contact_page).post(auth::contact_confirm),
        )
        .route("/portal/captcha", get(auth::captcha_page).post(auth::captcha_answer))
        .route("/portal/logout", get(auth::logout).post(auth::logout))
        .route("/portal/home", get(views::home))
        .route(
            "/portal/requests/new",
            get(wizard::member_page).post(wizard::member_lookup),
        )
        .route(
            "/portal/requests/new/service",
            get(service::service_page).post(service::service_submit),
        )
        .route("/portal/requests/new/attachments", get(wizard::attachments_page))
        .route(
            "/portal/requests/new/upload",
            get(wizard::upload_frame)
                .post(wizard::upload)
                .layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route("/portal/requests/new/review", get(wizard::review_page))
        .route("/portal/requests/new/submit", post(wizard::submit))
        .route("/portal/requests/{reference}/confirmation", get(wizard::confirmation))
        .route("/portal/requests/{reference}", get(views::details))
        .route(
            "/portal/requests/{reference}/information",
            post(views::information).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route("/portal/status", get(views::status_page))
        .route("/portal/api/status", get(views::status_json))
        .route("/portal/worklist", get(views::worklist))
        .route("/portal/letters/{reference}", get(views::letter))
        .merge(v3::router())
}

/// The logged-in provider behind a request.
pub(crate) struct Ctx {
    pub token: String,
    pub username: String,
    pub provider_npi: String,
    pub provider_name: String,
    pub layout: u8,
}

pub(crate) fn session_token(headers: &HeaderMap) -> Option<String> {
    cookie(headers, SESSION_COOKIE)
}

/// The value of the cookie `name` the browser sent.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Looks up the session; `Err` is the redirect to send instead (login, or the pending
/// login step). `want` is the stage the calling page belongs to.
pub(crate) fn session_at(state: &Shared, headers: &HeaderMap, want: Stage) -> Result<Ctx, Response> {
    let to_login = || Redirect::to("/portal/login").into_response();
    let token = session_token(headers).ok_or_else(to_login)?;
    let mut inner = state.lock();
    let now = chrono::Utc::now() + inner.clock_offset;
    let idle = inner.hazards.session_idle_timeout_seconds;
    let layout = inner.hazards.layout_version;
    let Some(session) = inner.sessions.get_mut(&token) else {
        return Err(Redirect::to("/portal/login?reason=signed-out").into_response());
    };
    if let Some(limit) = idle {
        if (now - session.last_seen).num_seconds() > i64::try_from(limit).unwrap_or(i64::MAX) {
            inner.sessions.remove(&token);
            return Err(Redirect::to("/portal/login?reason=expired").into_response());
        }
    }
    session.last_seen = now;
    if want == Stage::Active && session.stage == Stage::Active {
        match inner.hazards.sign_out_after_pages {
            Some(0) => {
                inner.hazards.sign_out_after_pages = None;
                inner.sessions.clear();
                return Err(Redirect::to("/portal/login?reason=signed-out").into_response());
            }
            Some(k) => inner.hazards.sign_out_after_pages = Some(k - 1),
            None => {}
        }
    }
    let Some(session) = inner.sessions.get_mut(&token) else {
        return Err(Redirect::to("/portal/login?reason=signed-out").into_response());
    };
    if session.stage != want {
        let to = match session.stage {
            Stage::NeedMfa => "/portal/mfa",
            Stage::NeedContactDetails => "/portal/contact-details",
            Stage::NeedCaptcha => "/portal/captcha",
            Stage::Active => "/portal/home",
        };
        return Err(Redirect::to(to).into_response());
    }
    let username = session.username.clone();
    drop(inner);
    let account = state.config.account(&username).ok_or_else(to_login)?;
    Ok(Ctx {
        token,
        username,
        provider_npi: account.provider_npi.clone(),
        provider_name: account.provider_name.clone(),
        layout,
    })
}

/// The session of a fully logged-in user.
pub(crate) fn active(state: &Shared, headers: &HeaderMap) -> Result<Ctx, Response> {
    session_at(state, headers, Stage::Active)
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = r#"
body{font-family:Arial,Helvetica,sans-serif;margin:0;background:#f3f5f8;color:#1d2733}
header{background:#0b4f8a;color:#fff;padding:10px 24px;display:flex;justify-content:space-between;align-items:center}
header a{color:#fff;margin-left:16px}
main{max-width:980px;margin:24px auto;background:#fff;padding:24px;border:1px solid #d4dbe3}
label{display:block;font-weight:bold;margin-top:12px}
input,select,textarea{padding:5px;margin-top:4px}
.field-error{color:#b3261e;font-size:0.9em;display:block}
.alert{background:#fdecea;border:1px solid #b3261e;padding:10px;margin-bottom:12px}
.notice{background:#e8f3fc;border:1px solid #0b4f8a;padding:10px;margin-bottom:12px}
table{border-collapse:collapse;width:100%;margin-top:12px}
th,td{border:1px solid #d4dbe3;padding:6px;text-align:left;font-size:0.92em}
th{background:#eef2f6}
.steps{color:#5b6b7c;margin-bottom:16px}
.spinner{width:28px;height:28px;border:4px solid #d4dbe3;border-top-color:#0b4f8a;border-radius:50%;animation:spin 1s linear infinite}
@keyframes spin{to{transform:rotate(360deg)}}
button,.button{background:#0b4f8a;color:#fff;border:0;padding:8px 16px;margin-top:16px;cursor:pointer;text-decoration:none;display:inline-block}
"#;

/// Wraps a body in the portal's page frame.
pub(crate) fn page(title: &str, ctx: Option<&Ctx>, body: &str) -> Html<String> {
    let nav = match ctx {
        Some(c) => format!(
            r#"<nav><span id="signed-in-as">{}</span>
<a id="nav-home" href="/portal/home">Home</a>
<a id="nav-new-request" href="/portal/requests/new">New Request</a>
<a id="nav-status" href="/portal/status">Status Search</a>
<a id="nav-worklist" href="/portal/worklist">Worklist</a>
<a id="nav-logout" href="/portal/logout">Log out</a></nav>"#,
            esc(&c.provider_name)
        ),
        None => String::new(),
    };
    Html(format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - Sandbox Health Plan Provider Portal</title>
<style>{CSS}</style></head>
<body><header><strong>Sandbox Health Plan &middot; Provider Portal</strong>{nav}</header>
<main><h1 id="page-title">{title}</h1>
{body}
</main></body></html>"#,
        title = esc(title),
    ))
}

/// A `Set-Cookie` value for the session token.
pub(crate) fn session_cookie(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax")).expect("tokens are hex")
}

pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("SBXSESSION=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// The maintenance page served while the `maintenance` hazard is on.
pub(crate) fn maintenance_page() -> Response {
    let body = page(
        "Scheduled Maintenance",
        None,
        r#"<div id="maintenance-notice" class="notice">The provider portal is unavailable due to scheduled maintenance. Please try again later.</div>"#,
    );
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "120")], body).into_response()
}

pub(crate) fn not_found(ctx: Option<&Ctx>) -> Response {
    (
        StatusCode::NOT_FOUND,
        page(
            "Not Found",
            ctx,
            r#"<div id="not-found" class="alert">The requested record was not found.</div>"#,
        ),
    )
        .into_response()
}
