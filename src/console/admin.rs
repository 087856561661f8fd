//! User management for an admin (`/users`): the same operations as
//! `precert users` — add, disable, enable, reset a password (every session
//! of the user ends), change the role and practices, remove a lost TOTP —
//! each a form with the session's CSRF token and a line in the audit.
//! Anyone but an admin gets 404 here, as for any page that is not theirs.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::Viewer;
use super::pages::{bad_csrf, html, message};
use super::users::{self, Role, UserError};
use super::view::{self, Frame};
use super::App;
use crate::store::AuditEntry;

fn not_admin(app: &App, viewer: &Viewer) -> Response {
    message(
        app,
        Some(viewer),
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no page at this address.",
    )
}

#[derive(Serialize)]
struct UserRow {
    name: String,
    role: String,
    practices: Vec<PracticeChoice>,
    sees: String,
    disabled: bool,
    locked: bool,
    totp: bool,
    last_login: String,
    created: String,
    action: String,
    me: bool,
}

#[derive(Serialize)]
struct PracticeChoice {
    id: String,
    name: String,
    checked: bool,
}

#[derive(Deserialize)]
pub struct UsersQuery {
    done: Option<String>,
}

fn done_text(done: Option<&str>) -> Option<String> {
    Some(
        match done? {
            "added" => "User added.",
            "disabled" => "User disabled: their sessions have ended.",
            "enabled" => "User enabled.",
            "reset" => "Password set: every session of the user has ended.",
            "access" => "Role and practices changed: the user signs in again to use them.",
            "totp_off" => {
                "Two-step sign-in removed: the user signs in with the password alone until they set it up again."
            }
            _ => return None,
        }
        .to_owned(),
    )
}

/// The users and the forms that manage them.
pub async fn list(State(app): State<App>, viewer: Viewer, Query(q): Query<UsersQuery>) -> Response {
    if viewer.role != Role::Admin {
        return not_admin(&app, &viewer);
    }
    render(&app, &viewer, StatusCode::OK, done_text(q.done.as_deref()), None).await
}

async fn render(
    app: &App,
    viewer: &Viewer,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let all = match app.ledger.console_users().await {
        Ok(u) => u,
        Err(e) => return super::unavailable(&e),
    };
    let now = app.ledger.now();
    let tz = crate::tz::UTC;
    let rows: Vec<UserRow> = all
        .iter()
        .map(|u| UserRow {
            name: u.name.clone(),
            role: u.role.clone(),
            practices: app
                .settings
                .practices
                .iter()
                .map(|p| PracticeChoice {
                    id: p.id.clone(),
                    name: p.name.clone(),
                    checked: u.practices.contains(&p.id),
                })
                .collect(),
            sees: if u.role == "admin" {
                "every practice".to_owned()
            } else {
                u.practices.join(", ")
            },
            disabled: u.disabled,
            locked: u.locked_until.is_some_and(|t| t > now),
            totp: u.has_totp(),
            last_login: u.last_login_at.map(|t| view::when(t, tz)).unwrap_or_default(),
            created: view::when(u.created_at, tz),
            action: format!("/users/{}", view::encode_component(&u.name)),
            me: u.name == viewer.name(),
        })
        .collect();
    let practices: Vec<PracticeChoice> = app
        .settings
        .practices
        .iter()
        .map(|p| PracticeChoice {
            id: p.id.clone(),
            name: p.name.clone(),
            checked: false,
        })
        .collect();
    let mut frame = Frame::new("Users", "users", Some(viewer));
    frame.notice = notice;
    let ctx = json!({
        "rows": rows,
        "practices": practices,
        "csrf": &viewer.csrf,
        "error": error,
        "min_password": users::MIN_PASSWORD,
    });
    html(status, view::page(&app.templates, "users.html", &frame, ctx))
}

fn field<'f>(form: &'f [(String, String)], k: &str) -> &'f str {
    form.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn practices_of(form: &[(String, String)]) -> Vec<String> {
    form.iter()
        .filter(|(k, _)| k == "practice")
        .map(|(_, v)| v.clone())
        .collect()
}

async fn audit(app: &App, viewer: &Viewer, action: &str, detail: serde_json::Value) -> Result<(), Response> {
    app.audit(AuditEntry {
        user: viewer.name(),
        action,
        practice: None,
        case_id: None,
        remote: viewer.remote.as_deref(),
        detail,
    })
    .await
    .map_err(|e| super::unavailable(&e))
}

/// What a refused change says, on the users page again.
async fn refused(app: &App, viewer: &Viewer, e: UserError) -> Response {
    match e {
        UserError::Store(e) => super::unavailable(&e),
        e => {
            render(
                app,
                viewer,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(format!("Refused: {e}.")),
            )
            .await
        }
    }
}

/// Adds a user.
pub async fn add(State(app): State<App>, viewer: Viewer, Form(form): Form<Vec<(String, String)>>) -> Response {
    if viewer.role != Role::Admin {
        return not_admin(&app, &viewer);
    }
    if !viewer.csrf_ok(field(&form, "csrf")) {
        return bad_csrf(&app, Some(&viewer));
    }
    let name = field(&form, "name").trim();
    let role = match field(&form, "role").parse::<Role>() {
        Ok(r) => r,
        Err(e) => return refused(&app, &viewer, e).await,
    };
    let practices = if role == Role::Admin {
        Vec::new()
    } else {
        practices_of(&form)
    };
    let password = field(&form, "password");
    if password != field(&form, "password2") {
        return render(
            &app,
            &viewer,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            Some("Refused: the two passwords differ.".into()),
        )
        .await;
    }
    if let Err(e) = users::add(&app.ledger, &app.settings, name, role, &practices, password).await {
        return refused(&app, &viewer, e).await;
    }
    if let Err(r) = audit(
        &app,
        &viewer,
        "user_add",
        json!({ "name": name, "role": role.as_str(), "practices": practices }),
    )
    .await
    {
        return r;
    }
    tracing::info!(by = %viewer.name(), user = %name, role = %role, "Console user added.");
    Redirect::to("/users?done=added").into_response()
}

/// One change to one user: `do` is `disable`, `enable`, `reset`, `access`
/// or `totp_off`.
pub async fn change(
    State(app): State<App>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if viewer.role != Role::Admin {
        return not_admin(&app, &viewer);
    }
    if !viewer.csrf_ok(field(&form, "csrf")) {
        return bad_csrf(&app, Some(&viewer));
    }
    let what = field(&form, "do");
    let me = name == viewer.name();
    let result = match what {
        // An admin who disables or demotes themselves may leave nobody to
        // undo it: another admin does that.
        "disable" if me => {
            return render(
                &app,
                &viewer,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some("Refused: you cannot disable yourself; another admin can.".into()),
            )
            .await
        }
        "disable" => users::set_disabled(&app.ledger, &name, true).await,
        "enable" => users::set_disabled(&app.ledger, &name, false).await,
        "reset" => {
            let password = field(&form, "password");
            if password != field(&form, "password2") {
                return render(
                    &app,
                    &viewer,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    None,
                    Some("Refused: the two passwords differ.".into()),
                )
                .await;
            }
            users::reset_password(&app.ledger, &name, password).await
        }
        "access" => {
            let role = match field(&form, "role").parse::<Role>() {
                Ok(r) => r,
                Err(e) => return refused(&app, &viewer, e).await,
            };
            if me && role != Role::Admin {
                return render(
                    &app,
                    &viewer,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    None,
                    Some("Refused: you cannot take your own admin role; another admin can.".into()),
                )
                .await;
            }
            let practices = if role == Role::Admin {
                Vec::new()
            } else {
                practices_of(&form)
            };
            users::set_access(&app.ledger, &app.settings, &name, role, &practices).await
        }
        "totp_off" => users::clear_totp(&app.ledger, &name).await,
        _ => {
            return message(
                &app,
                Some(&viewer),
                StatusCode::BAD_REQUEST,
                "Nothing changed",
                "Unknown request.",
            )
        }
    };
    if let Err(e) = result {
        return refused(&app, &viewer, e).await;
    }
    let detail = match what {
        "access" => json!({ "name": name, "role": field(&form, "role"), "practices": practices_of(&form) }),
        _ => json!({ "name": name }),
    };
    let action = match what {
        "disable" => "user_disable",
        "enable" => "user_enable",
        "reset" => "user_reset_password",
        "access" => "user_access",
        _ => "user_totp_off",
    };
    if let Err(r) = audit(&app, &viewer, action, detail).await {
        return r;
    }
    tracing::info!(by = %viewer.name(), user = %name, change = what, "Console user changed.");
    if me && (what == "reset" || what == "access") {
        // Their own sessions ended with the change, this one too.
        return Redirect::to("/login").into_response();
    }
    let done = match what {
        "disable" => "disabled",
        "enable" => "enabled",
        other => other,
    };
    Redirect::to(&format!("/users?done={done}")).into_response()
}
