//! Login, MFA, the post-login interstitials (contact details, CAPTCHA) and logout.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use rand::Rng;
use serde::Deserialize;

use super::{clear_cookie, esc, page, session_at, session_cookie, session_token};
use crate::state::{random_token, Session, Shared, Stage};
use crate::totp;

#[derive(Deserialize)]
pub struct LoginQuery {
    reason: Option<String>,
}

pub async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    let notice = match q.reason.as_deref() {
        Some("expired") => "Your session has expired due to inactivity. Please log in again.",
        Some("signed-out") => "You have been signed out. Please log in again.",
        Some("logged-out") => "You have logged out.",
        _ => "",
    };
    login_form("", notice, "").into_response()
}

fn login_form(username: &str, notice: &str, error: &str) -> axum::response::Html<String> {
    let notice = if notice.is_empty() {
        String::new()
    } else {
        format!(r#"<div id="login-notice" class="notice">{}</div>"#, esc(notice))
    };
    let error = if error.is_empty() {
        String::new()
    } else {
        format!(
            r#"<div id="login-error" class="alert" role="alert">{}</div>"#,
            esc(error)
        )
    };
    page(
        "Provider Login",
        None,
        &format!(
            r#"{notice}{error}
<form id="login-form" method="post" action="/portal/login">
<label for="username">User ID</label>
<input id="username" name="username" type="text" autocomplete="username" value="{}" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<div><button id="login-submit" type="submit">Log In</button></div>
</form>"#,
            esc(username)
        ),
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

pub async fn login(State(state): State<Shared>, Form(f): Form<LoginForm>) -> Response {
    let ok = state
        .config
        .account(f.username.trim())
        .is_some_and(|a| a.password == f.password);
    if !ok {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            login_form(&f.username, "", "Invalid User ID or password."),
        )
            .into_response();
    }
    let token = random_token();
    {
        let mut inner = state.lock();
        let now = chrono::Utc::now() + inner.clock_offset;
        inner.sessions.insert(
            token.clone(),
            Session {
                username: f.username.trim().to_string(),
                stage: Stage::NeedMfa,
                last_seen: now,
                captcha_answer: None,
                draft: Default::default(),
            },
        );
    }
    (
        [(header::SET_COOKIE, session_cookie(&token))],
        Redirect::to("/portal/mfa"),
    )
        .into_response()
}

fn mfa_form(error: &str) -> axum::response::Html<String> {
    let error = if error.is_empty() {
        String::new()
    } else {
        format!(r#"<div id="mfa-error" class="alert" role="alert">{}</div>"#, esc(error))
    };
    page(
        "Verify Your Identity",
        None,
        &format!(
            r#"{error}<p>Enter the 6-digit code from your authenticator app.</p>
<form id="mfa-form" method="post" action="/portal/mfa">
<label for="mfa-code">Verification code</label>
<input id="mfa-code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" maxlength="6" required>
<div><button id="mfa-submit" type="submit">Verify</button></div>
</form>"#
        ),
    )
}

pub async fn mfa_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match session_at(&state, &headers, Stage::NeedMfa) {
        Ok(_) => mfa_form("").into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    code: String,
}

/// Moves the session past `done` to the next login step the hazards require.
fn advance(state: &Shared, token: &str, done: Stage) -> Response {
    let mut inner = state.lock();
    let (contact, captcha) = (inner.hazards.contact_details_interstitial, inner.hazards.captcha);
    let Some(session) = inner.sessions.get_mut(token) else {
        return Redirect::to("/portal/login").into_response();
    };
    let next = match done {
        Stage::NeedMfa if contact => Stage::NeedContactDetails,
        Stage::NeedMfa | Stage::NeedContactDetails if captcha => Stage::NeedCaptcha,
        _ => Stage::Active,
    };
    session.stage = next;
    let to = match next {
        Stage::NeedContactDetails => "/portal/contact-details",
        Stage::NeedCaptcha => "/portal/captcha",
        _ => "/portal/home",
    };
    Redirect::to(to).into_response()
}

pub async fn mfa(State(state): State<Shared>, headers: HeaderMap, Form(f): Form<CodeForm>) -> Response {
    let ctx = match session_at(&state, &headers, Stage::NeedMfa) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let seed = state
        .config
        .account(&ctx.username)
        .map(|a| a.totp_seed.clone())
        .unwrap_or_default();
    if !totp::verify(&seed, &f.code, totp::now_unix()) {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            mfa_form("The verification code is incorrect or has expired."),
        )
            .into_response();
    }
    advance(&state, &ctx.token, Stage::NeedMfa)
}

pub async fn contact_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match session_at(&state, &headers, Stage::NeedContactDetails) {
        Ok(c) => c,
        Err(r) => return r,
    };
    page(
        "Confirm Your Contact Details",
        None,
        &format!(
            r#"<div class="notice" id="contact-notice">To keep your account secure, please confirm your contact details before continuing.</div>
<form id="contact-form" method="post" action="/portal/contact-details">
<label for="contact-name">Organization</label><input id="contact-name" name="organization" value="{}" readonly>
<label for="contact-email">E-mail</label><input id="contact-email" name="email" type="email" value="{}@example.org">
<label for="contact-phone">Phone</label><input id="contact-phone" name="phone" type="tel" value="555-0100">
<div><button id="contact-confirm" type="submit">Confirm and Continue</button></div>
</form>"#,
            esc(&ctx.provider_name),
            esc(&ctx.username)
        ),
    )
    .into_response()
}

pub async fn contact_confirm(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match session_at(&state, &headers, Stage::NeedContactDetails) {
        Ok(ctx) => advance(&state, &ctx.token, Stage::NeedContactDetails),
        Err(r) => r,
    }
}

/// Letters and digits a human reads without confusion (no 0/O, 1/I).
const CAPTCHA_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

fn new_captcha() -> String {
    let mut rng = rand::thread_rng();
    (0..6)
        .map(|_| char::from(CAPTCHA_ALPHABET[rng.gen_range(0..CAPTCHA_ALPHABET.len())]))
        .collect()
}

/// Draws the challenge as an SVG with jittered, rotated glyphs and noise lines.
fn captcha_svg(answer: &str) -> String {
    let mut rng = rand::thread_rng();
    let mut glyphs = String::new();
    for (i, c) in answer.chars().enumerate() {
        let x = 18 + i * 30;
        let y = 38 + rng.gen_range(0..10);
        let rot: i32 = rng.gen_range(-25..25);
        glyphs.push_str(&format!(
            r##"<text x="{x}" y="{y}" transform="rotate({rot} {x} {y})" font-size="30" font-family="serif" fill="#333">{c}</text>"##
        ));
    }
    let mut noise = String::new();
    for _ in 0..7 {
        let (x1, y1, x2, y2) = (
            rng.gen_range(0..200),
            rng.gen_range(0..60),
            rng.gen_range(0..200),
            rng.gen_range(0..60),
        );
        noise.push_str(&format!(
            r##"<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#777" stroke-width="2"/>"##
        ));
    }
    format!(
        r##"<svg id="captcha-image" role="img" aria-label="CAPTCHA image" width="200" height="60" xmlns="http://www.w3.org/2000/svg"><rect width="200" height="60" fill="#e9e4d8"/>{glyphs}{noise}</svg>"##
    )
}

fn captcha_form(answer: &str, error: &str) -> Response {
    let error = if error.is_empty() {
        String::new()
    } else {
        format!(
            r#"<div id="captcha-error" class="alert" role="alert">{}</div>"#,
            esc(error)
        )
    };
    page(
        "Security Check",
        None,
        &format!(
            r#"{error}<p>Please type the characters you see in the image.</p>
{}
<form id="captcha-form" method="post" action="/portal/captcha">
<label for="captcha-answer">Characters</label>
<input id="captcha-answer" name="answer" type="text" autocomplete="off" required>
<div><button id="captcha-submit" type="submit">Continue</button></div>
</form>"#,
            captcha_svg(answer)
        ),
    )
    .into_response()
}

pub async fn captcha_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match session_at(&state, &headers, Stage::NeedCaptcha) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let answer = {
        let mut inner = state.lock();
        let Some(s) = inner.sessions.get_mut(&ctx.token) else {
            return Redirect::to("/portal/login").into_response();
        };
        s.captcha_answer.get_or_insert_with(new_captcha).clone()
    };
    captcha_form(&answer, "")
}

#[derive(Deserialize)]
pub struct CaptchaForm {
    #[serde(default)]
    answer: String,
}

pub async fn captcha_answer(State(state): State<Shared>, headers: HeaderMap, Form(f): Form<CaptchaForm>) -> Response {
    let ctx = match session_at(&state, &headers, Stage::NeedCaptcha) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let fresh = {
        let mut inner = state.lock();
        let Some(s) = inner.sessions.get_mut(&ctx.token) else {
            return Redirect::to("/portal/login").into_response();
        };
        let right = s
            .captcha_answer
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case(f.answer.trim()));
        if right {
            None
        } else {
            // A wrong answer burns the challenge, as real CAPTCHAs do.
            let fresh = new_captcha();
            s.captcha_answer = Some(fresh.clone());
            Some(fresh)
        }
    };
    match fresh {
        None => advance(&state, &ctx.token, Stage::NeedCaptcha),
        Some(answer) => captcha_form(&answer, "The characters did not match. Please try again."),
    }
}

pub async fn logout(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(token) = session_token(&headers) {
        state.lock().sessions.remove(&token);
    }
    (
        [(header::SET_COOKIE, clear_cookie())],
        Redirect::to("/portal/login?reason=logged-out"),
    )
        .into_response()
}
