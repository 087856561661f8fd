//! Sign-in: password, a one-time code in six boxes, then the organisation picker.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::{clear_cookie, frame, session, session_cookie, with_cookie, Gate, SIGNED_OUT, V3_COOKIE};
use crate::portal::{cookie, esc};
use crate::state::{random_token, Shared, V3Session, V3Stage};
use crate::totp;

/// The sign-in form, with a notice (why it is shown) and an error (why the last
/// try failed); either may be empty.
pub(crate) fn sign_in_form(notice: &str, error: &str) -> Html<String> {
    let notice = if notice.is_empty() {
        String::new()
    } else {
        format!(r#"<p class="notice" role="status">{}</p>"#, esc(notice))
    };
    let error = if error.is_empty() {
        String::new()
    } else {
        format!(r#"<p class="problem" role="alert">{}</p>"#, esc(error))
    };
    frame(
        "Sign in",
        None,
        &format!(
            r#"<section>{notice}{error}
<form class="signin" method="post" action="/v3/signin">
<label>User name <input name="login" autocomplete="username" required></label>
<label>Password <input name="secret" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form></section>"#
        ),
    )
}

pub async fn sign_in_page() -> Response {
    sign_in_form("", "").into_response()
}

#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    login: String,
    #[serde(default)]
    secret: String,
}

pub async fn sign_in(State(state): State<Shared>, Form(f): Form<SignInForm>) -> Response {
    let login = f.login.trim();
    if state.config.account(login).is_none_or(|a| a.password != f.secret) {
        return (
            StatusCode::UNAUTHORIZED,
            sign_in_form("", "The user name or password is not right."),
        )
            .into_response();
    }
    let token = random_token();
    {
        let mut inner = state.lock();
        let now = chrono::Utc::now() + inner.clock_offset;
        inner.v3_sessions.insert(
            token.clone(),
            V3Session {
                username: login.to_string(),
                stage: V3Stage::NeedCode,
                organisation: None,
                last_seen: now,
                attachments: Vec::new(),
                form_token: None,
            },
        );
    }
    with_cookie(session_cookie(&token), Redirect::to("/v3/verify"))
}

/// Keeps the six boxes in step: a digit moves on to the next box, Backspace in an
/// empty box goes back, and the boxes are joined into `code` when sent.
const OTP_JS: &str = r#"
(function () {
  var boxes = Array.prototype.slice.call(document.querySelectorAll('fieldset.otp input'));
  boxes.forEach(function (box, i) {
    box.addEventListener('input', function () {
      box.value = box.value.replace(/[^0-9]/g, '').slice(-1);
      if (box.value && boxes[i + 1]) { boxes[i + 1].focus(); }
    });
    box.addEventListener('keydown', function (e) {
      if (e.key === 'Backspace' && !box.value && boxes[i - 1]) { boxes[i - 1].focus(); }
    });
  });
  document.querySelector('form.otp-form').addEventListener('submit', function () {
    document.querySelector('form.otp-form input[name=code]').value = boxes.map(function (b) { return b.value; }).join('');
  });
})();
"#;

fn code_form(error: &str) -> Html<String> {
    let error = if error.is_empty() {
        String::new()
    } else {
        format!(r#"<p class="problem" role="alert">{}</p>"#, esc(error))
    };
    let boxes: String = (1..=6)
        .map(|i| {
            format!(
                r#"<input aria-label="Digit {i}" inputmode="numeric" pattern="[0-9]" maxlength="1" autocomplete="{}">"#,
                if i == 1 { "one-time-code" } else { "off" }
            )
        })
        .collect();
    frame(
        "Two-step verification",
        None,
        &format!(
            r#"<section>{error}
<form class="otp-form" method="post" action="/v3/verify">
<fieldset class="otp"><legend>Enter the 6-digit code from your authenticator app</legend>{boxes}</fieldset>
<input type="hidden" name="code" value="">
<button type="submit">Verify</button>
</form></section>
<script>{OTP_JS}</script>"#
        ),
    )
}

pub async fn code_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match session(&state, &headers, |s| s == V3Stage::NeedCode) {
        Ok(_) => code_form("").into_response(),
        Err(g) => g.page(),
    }
}

#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    code: String,
}

pub async fn code(State(state): State<Shared>, headers: HeaderMap, Form(f): Form<CodeForm>) -> Response {
    let ctx = match session(&state, &headers, |s| s == V3Stage::NeedCode) {
        Ok(c) => c,
        Err(g) => return g.page(),
    };
    let seed = state
        .config
        .account(&ctx.username)
        .map(|a| a.totp_seed.clone())
        .unwrap_or_default();
    if f.code.len() != 6 || !totp::verify(&seed, &f.code, totp::now_unix()) {
        return (
            StatusCode::UNAUTHORIZED,
            code_form("That code did not work. Enter the code your app shows now."),
        )
            .into_response();
    }
    if let Some(s) = state.lock().v3_sessions.get_mut(&ctx.token) {
        s.stage = V3Stage::NeedOrganisation;
    }
    Redirect::to("/v3/organisations").into_response()
}

/// The organisation picker: after the code, and again from "Switch organisation".
pub async fn picker(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match session(&state, &headers, |s| s != V3Stage::NeedCode) {
        Ok(c) => c,
        Err(g) => return g.page(),
    };
    let Some(account) = state.config.account(&ctx.username) else {
        return Gate::SignIn(SIGNED_OUT).page();
    };
    let items: String = account
        .organisations()
        .iter()
        .map(|o| {
            format!(
                r#"<li><button type="submit" name="npi" value="{npi}" data-npi="{npi}"><strong>{name}</strong><span>NPI {npi}</span></button></li>"#,
                npi = esc(&o.npi),
                name = esc(&o.name),
            )
        })
        .collect();
    let shown = if ctx.npi.is_empty() { None } else { Some(&ctx) };
    frame(
        "Choose an organisation",
        shown,
        &format!(
            r#"<section><p>Your user name may act for these organisations. Choose the one you are working for now.</p>
<form class="organisations" method="post" action="/v3/organisations"><ul class="org-list">{items}</ul></form></section>"#
        ),
    )
    .into_response()
}

#[derive(Deserialize)]
pub struct PickForm {
    #[serde(default)]
    npi: String,
}

pub async fn pick(State(state): State<Shared>, headers: HeaderMap, Form(f): Form<PickForm>) -> Response {
    let ctx = match session(&state, &headers, |s| s != V3Stage::NeedCode) {
        Ok(c) => c,
        Err(g) => return g.page(),
    };
    let Some(org) = state
        .config
        .account(&ctx.username)
        .and_then(|a| a.organisations().into_iter().find(|o| o.npi == f.npi))
    else {
        return (
            StatusCode::FORBIDDEN,
            frame(
                "Choose an organisation",
                None,
                r#"<p class="problem" role="alert">You cannot act for that organisation.</p><p><a href="/v3/organisations">Choose again</a></p>"#,
            ),
        )
            .into_response();
    };
    if let Some(s) = state.lock().v3_sessions.get_mut(&ctx.token) {
        s.organisation = Some((org.npi, org.name));
        s.stage = V3Stage::Active;
        // A request form opened for another organisation is not sent for this one.
        s.attachments.clear();
        s.form_token = None;
    }
    Redirect::to("/v3/").into_response()
}

pub async fn sign_out(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, V3_COOKIE) {
        state.lock().v3_sessions.remove(&token);
    }
    with_cookie(clear_cookie(), sign_in_form("You have signed out.", ""))
}
