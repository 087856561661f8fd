//! Layout v3: a second provider portal over the same payer, built the way many
//! newer portals are — and unlike the classic one (`/portal/`).
//!
//! Few element IDs: controls are found by their name, class or label. After the
//! password, a one-time code typed into six boxes (one digit each), then an
//! organisation picker. One request page whose sections JavaScript reveals as they
//! are completed (eligibility checked by `fetch`, procedure codes chosen from
//! suggestions that appear a few hundred milliseconds after typing stops, documents
//! uploaded in an iframe, a `confirm()` before sending). The requests list is drawn
//! by JavaScript from a JSON endpoint, with client-side pages. A request's page is a
//! `dl` of `dt`/`dd` pairs and a table with header cells, none with an ID. Letters
//! open in a new tab. A session idle longer than `portal_v3.idle_timeout_seconds`
//! (sandbox clock) ends, and whatever page is asked for next shows the sign-in form.
//!
//! Requests, decisions, scenarios and letters are the classic portal's: the store,
//! its validation and its PDF letters are shared.

mod auth;
mod records;
mod request;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{cookie, esc, UPLOAD_LIMIT};
use crate::state::{Shared, V3Stage};

/// The v3 portal's session cookie (its own, scoped to `/v3`).
pub const V3_COOKIE: &str = "V3SID";

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/v3", get(|| async { Redirect::to("/v3/") }))
        .route("/v3/", get(records::dashboard))
        .route("/v3/signin", get(auth::sign_in_page).post(auth::sign_in))
        .route("/v3/verify", get(auth::code_page).post(auth::code))
        .route("/v3/organisations", get(auth::picker).post(auth::pick))
        .route("/v3/signout", get(auth::sign_out).post(auth::sign_out))
        .route("/v3/request", get(request::form).post(request::send))
        .route(
            "/v3/upload",
            get(request::upload_frame)
                .post(request::upload)
                .layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route("/v3/api/eligibility", post(request::eligibility))
        .route("/v3/api/procedures", get(request::procedures))
        .route("/v3/requests", get(records::list_page))
        .route("/v3/api/requests", get(records::list_json))
        .route("/v3/requests/{reference}", get(records::detail))
        .route("/v3/requests/{reference}/letter", get(records::letter_viewer))
        .route("/v3/letters/{file}", get(records::letter_pdf))
}

/// The signed-in user behind a v3 request.
pub(crate) struct V3Ctx {
    pub token: String,
    pub username: String,
    /// The organisation picked: NPI and name (empty before the picker).
    pub npi: String,
    pub org_name: String,
}

/// Why a page cannot be served to this browser as asked.
pub(crate) enum Gate {
    /// No session (or an ended one): the sign-in form, with this notice.
    SignIn(&'static str),
    /// A sign-in step is still to do: go there.
    Step(&'static str),
}

impl Gate {
    /// The answer for a page: the sign-in form in place (HTTP 200, at the URL
    /// asked for, as single-page portals do) or a redirect to the pending step.
    pub fn page(self) -> Response {
        match self {
            Gate::SignIn(notice) => auth::sign_in_form(notice, "").into_response(),
            Gate::Step(to) => Redirect::to(to).into_response(),
        }
    }

    /// The answer for a JSON endpoint: HTTP 401.
    pub fn api(self) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": "Your session has ended. Sign in again." })),
        )
            .into_response()
    }
}

const SIGNED_OUT: &str = "You have been signed out. Sign in again to continue.";
const TIMED_OUT: &str = "Your session ended because it was not used for a while. Sign in again to continue.";

/// The session, if it is at a stage `allowed` accepts. Touches it (idle expiry
/// counts from the last page served).
pub(crate) fn session(state: &Shared, headers: &HeaderMap, allowed: impl Fn(V3Stage) -> bool) -> Result<V3Ctx, Gate> {
    let token = cookie(headers, V3_COOKIE).ok_or(Gate::SignIn(""))?;
    let mut inner = state.lock();
    let now = chrono::Utc::now() + inner.clock_offset;
    // The shorter of the configured timeout and the classic portal's hazard.
    let idle = inner
        .hazards
        .session_idle_timeout_seconds
        .map_or(state.config.v3_idle_timeout_seconds, |h| {
            h.min(state.config.v3_idle_timeout_seconds)
        });
    let Some(s) = inner.v3_sessions.get_mut(&token) else {
        return Err(Gate::SignIn(SIGNED_OUT));
    };
    if (now - s.last_seen).num_seconds() > i64::try_from(idle).unwrap_or(i64::MAX) {
        inner.v3_sessions.remove(&token);
        return Err(Gate::SignIn(TIMED_OUT));
    }
    s.last_seen = now;
    if !allowed(s.stage) {
        return Err(match s.stage {
            V3Stage::NeedCode => Gate::Step("/v3/verify"),
            V3Stage::NeedOrganisation => Gate::Step("/v3/organisations"),
            V3Stage::Active => Gate::Step("/v3/"),
        });
    }
    let (npi, org_name) = s.organisation.clone().unwrap_or_default();
    Ok(V3Ctx {
        token,
        username: s.username.clone(),
        npi,
        org_name,
    })
}

/// The session of a signed-in user who picked an organisation.
pub(crate) fn active(state: &Shared, headers: &HeaderMap) -> Result<V3Ctx, Gate> {
    session(state, headers, |s| s == V3Stage::Active)
}

pub(crate) fn session_cookie(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{V3_COOKIE}={token}; Path=/v3; HttpOnly; SameSite=Lax")).expect("tokens are hex")
}

pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("V3SID=; Path=/v3; HttpOnly; SameSite=Lax; Max-Age=0")
}

pub(crate) fn date_us(d: chrono::NaiveDate) -> String {
    d.format("%m/%d/%Y").to_string()
}

const CSS: &str = r#"
*{box-sizing:border-box}
body{font-family:"Segoe UI",Roboto,Helvetica,sans-serif;margin:0;background:#fafaf7;color:#222}
.topbar{background:#234b3a;color:#fff;padding:12px 28px;display:flex;gap:24px;align-items:center;flex-wrap:wrap}
.topbar .brand{font-weight:600;font-size:1.1em}
.topbar nav{display:flex;gap:16px;align-items:center;margin-left:auto}
.topbar a{color:#e7f3ec}
main{max-width:900px;margin:28px auto;padding:0 20px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:16px 20px;margin-bottom:16px}
label{display:block;margin:10px 0 2px;font-size:.92em;color:#444}
label input,label select{display:block;margin-top:4px}
input,select{padding:7px;border:1px solid #b9c2bd;border-radius:4px;font-size:1em}
button{background:#2f6f52;color:#fff;border:0;border-radius:4px;padding:8px 18px;cursor:pointer;margin-top:12px}
.otp{border:0;display:flex;gap:8px;padding:0}
.otp legend{margin-bottom:8px}
.otp input{width:2.4em;text-align:center;font-size:1.4em}
.org-list{list-style:none;padding:0}
.org-list button{display:block;width:100%;text-align:left;background:#fff;color:#222;border:1px solid #b9c2bd}
.org-list span{display:block;color:#666;font-size:.85em}
.suggestions{list-style:none;margin:0;padding:0;border:1px solid #b9c2bd;max-width:480px;background:#fff}
.suggestions:empty{display:none}
.suggestions li{padding:6px 8px;cursor:pointer}
.suggestions li:hover{background:#e7f3ec}
.problem{background:#fbeaea;border-left:4px solid #a33;padding:8px 12px}
.notice,.banner{background:#e7f3ec;border-left:4px solid #2f6f52;padding:8px 12px}
table{border-collapse:collapse;width:100%}
th,td{padding:6px 8px;border-bottom:1px solid #e1e5e2;text-align:left;font-size:.92em}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:6px 18px}
dt{color:#666}
"#;

/// Wraps a body in the v3 page frame.
pub(crate) fn frame(title: &str, ctx: Option<&V3Ctx>, body: &str) -> Html<String> {
    let nav = match ctx {
        Some(c) if !c.npi.is_empty() => format!(
            r#"<nav class="account" aria-label="Account"><span class="org">{org} &middot; NPI {npi}</span>
<a href="/v3/">Dashboard</a><a href="/v3/request">New request</a><a href="/v3/requests">Requests</a>
<a href="/v3/organisations">Switch organisation</a><a href="/v3/signout">Sign out</a></nav>"#,
            org = esc(&c.org_name),
            npi = esc(&c.npi),
        ),
        _ => String::new(),
    };
    Html(format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title} | Provider Connect</title>
<style>{CSS}</style></head>
<body class="v3"><div class="topbar"><span class="brand">Sandbox Health Plan &middot; Provider Connect</span>{nav}</div>
<main><h1>{title}</h1>
{body}
</main></body></html>"#,
        title = esc(title),
    ))
}

/// A page saying the record is not this organisation's or does not exist.
pub(crate) fn not_found(ctx: &V3Ctx) -> Response {
    (
        StatusCode::NOT_FOUND,
        frame(
            "Not found",
            Some(ctx),
            r#"<p class="problem" role="alert">We could not find that request for this organisation.</p>"#,
        ),
    )
        .into_response()
}

/// Sets the v3 session cookie on a response.
pub(crate) fn with_cookie(value: HeaderValue, r: impl IntoResponse) -> Response {
    ([(header::SET_COOKIE, value)], r).into_response()
}
