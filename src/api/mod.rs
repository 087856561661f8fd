//! The intake API (`docs/intake.md`): a practice's own system posts cases
//! and reads back where they stand, on the console's listener under
//! `/api/v1` (HTTPS comes from the proxy in front, as for the console).
//!
//! - `POST /api/v1/cases`: one case, an array, or `{"cases": [...]}`,
//!   read and checked by `intake::import_json_body` — the JSON file
//!   import's reader and `validate`, nothing of its own — idempotent by
//!   practice + case ID.
//! - `GET /api/v1/cases/{practice}/{case_id}`: status, decision, payer
//!   reference, letters (hashes, not files).
//! - `GET /api/v1/cases?updated_since=…`: the cases changed since then, a
//!   page at a time, for a system that syncs.
//!
//! Every request carries a practice's bearer token (`tokens`); reads of
//! case data are audited in the console's audit, as console views are.
//! `webhook` signs and delivers the outbox's deliveries (the daemon runs it).

pub mod tokens;
pub mod webhook;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::case::CaseRecord;
use crate::console::App;
use crate::intake::{self, AttachmentRule, BodyError, Limits, RecordOutcome};
use crate::store::{decision_json, Actor, ApiToken, AuditEntry, StoreError, SyncCursor, TokenScope};

/// The API's routes, nested by the console's router under `/api/v1`.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/cases", get(list_cases).post(post_cases))
        .route("/cases/{practice}/{case_id}", get(get_case))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such API route; see docs/intake.md") })
}

/// The most cases a sync page holds (`limit`), and its default.
const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

/// A JSON error answer: `{"error": "..."}`.
fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn unavailable(e: &StoreError) -> Response {
    tracing::error!(error = %e, "API: ledger unavailable.");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the ledger is unavailable; try again in a moment",
    )
}

/// The caller: a live token, and where the request came from.
struct Caller {
    token: ApiToken,
    remote: Option<String>,
}

impl Caller {
    fn actor(&self) -> Actor {
        Actor::api(&self.token.practice_id, &self.token.name)
    }

    fn user(&self) -> String {
        format!("api:{}/{}", self.token.practice_id, self.token.name)
    }
}

/// The listener's peer (the proxy's address behind one).
fn peer(req: &Request) -> Option<SocketAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

/// 401 with the challenge a client expects.
fn unauthorized(message: &str) -> Response {
    let mut res = problem(StatusCode::UNAUTHORIZED, message);
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"precert\""),
    );
    res
}

/// The request's token, checked: missing, malformed, unknown or revoked
/// are all 401 (the message says which, never echoing the token); a token
/// whose practice is no longer configured is 403.
async fn authenticate(app: &App, headers: &HeaderMap, peer: Option<SocketAddr>) -> Result<Caller, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "an API token is required: Authorization: Bearer pct_… (precert api-tokens create)",
        ));
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some((key_id, secret)) = presented.and_then(tokens::split) else {
        return Err(unauthorized("the Authorization header is not `Bearer pct_…`"));
    };
    let token = match app.ledger.api_token_by_key(key_id).await {
        Ok(t) => t,
        Err(e) => return Err(unavailable(&e)),
    };
    // The secret is compared in constant time whether or not the key was
    // found, so timing does not tell a known key from an unknown one.
    let stored = token.as_ref().map_or("", |t| t.secret_hash.as_str());
    let matches = crate::console::auth::same_secret(&tokens::secret_hash(secret), stored);
    let token = match token {
        Some(t) if matches && t.revoked_at.is_none() => t,
        Some(t) if matches => {
            tracing::info!(practice = %t.practice_id, token = %t.name, "API: a revoked token was refused.");
            return Err(unauthorized("this token was revoked"));
        }
        _ => return Err(unauthorized("unknown token")),
    };
    if app.settings.practice(&token.practice_id).is_none() {
        return Err(problem(
            StatusCode::FORBIDDEN,
            format!("this token's practice {} is not configured", token.practice_id),
        ));
    }
    if let Err(e) = app.ledger.touch_api_token(token.id).await {
        tracing::warn!(error = %e, "API: cannot record the token's last use.");
    }
    let remote = peer
        .map(|p| crate::console::auth::client_ip(p.ip(), headers, &app.settings.console.trusted_proxies).to_string());
    Ok(Caller { token, remote })
}

/// The refusal of a practice's data, if any: 404 for a practice that is
/// not configured (naming it), 403 for another practice's.
fn practice_refused(app: &App, caller: &Caller, practice: &str) -> Option<Response> {
    if app.settings.practice(practice).is_none() {
        return Some(problem(
            StatusCode::NOT_FOUND,
            format!("practice {} is not configured", crate::case::codes::quoted(practice)),
        ));
    }
    if practice != caller.token.practice_id {
        return Some(problem(
            StatusCode::FORBIDDEN,
            format!(
                "this token is practice {}'s; it cannot read practice {practice}'s cases",
                caller.token.practice_id
            ),
        ));
    }
    None
}

/// Records an API read or write in the console's audit; the request
/// fails if it cannot be recorded (as a console view does).
async fn audit(app: &App, caller: &Caller, action: &str, case_id: Option<i64>, detail: Value) -> Result<(), Response> {
    let user = caller.user();
    app.audit(AuditEntry {
        user: &user,
        action,
        practice: Some(&caller.token.practice_id),
        case_id,
        remote: caller.remote.as_deref(),
        detail,
    })
    .await
    .map_err(|e| unavailable(&e))
}

/// Whether a Content-Type is JSON (`application/json`, any parameters).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Reads a body of at most `limit` bytes: a declared length over it is
/// refused before anything is read, a longer stream as soon as it passes
/// the limit. Nothing beyond the limit is kept in memory.
async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, Response> {
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes (console.api_max_request_mb); send fewer cases per request"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| problem(StatusCode::BAD_REQUEST, format!("the body could not be read: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// `POST /api/v1/cases`.
async fn post_cases(State(app): State<App>, req: Request) -> Response {
    let peer = peer(&req);
    let (parts, body) = req.into_parts();
    let caller = match authenticate(&app, &parts.headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if caller.token.scope != TokenScope::Write {
        return problem(
            StatusCode::FORBIDDEN,
            "this token is read-only; posting cases needs a token created with --scope write",
        );
    }
    if !is_json(&parts.headers) {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the cases as Content-Type: application/json",
        );
    }
    let bytes = match read_limited(&parts.headers, body, app.settings.console.api_max_request_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let practice = caller.token.practice_id.clone();
    let ctx = intake::Context {
        settings: &app.settings,
        default_practice: Some(&practice),
        base_dir: &app.settings.data_dir,
        today: Utc::now().date_naive(),
    };
    let limits = Limits {
        practice: Some(&practice),
        attachments: AttachmentRule::Refused,
    };
    let actor = caller.actor();
    let imported = match intake::import_json_body(&bytes, &ctx, &limits, &app.ledger, &actor).await {
        Ok(i) => i,
        Err(BodyError::Malformed(m)) => return problem(StatusCode::BAD_REQUEST, m),
        Err(BodyError::Shape(m)) => return problem(StatusCode::UNPROCESSABLE_ENTITY, m),
        Err(BodyError::Store(e)) => return unavailable(&e),
    };
    let r = &imported.report;
    let summary = json!({
        "records": r.records,
        "created": r.created,
        "updated": r.updated,
        "unchanged": r.unchanged,
        "invalid": r.invalid.len(),
    });
    if let Err(res) = audit(&app, &caller, "api_post_cases", None, summary.clone()).await {
        return res;
    }
    let results: Vec<Value> = imported
        .results
        .iter()
        .map(|res| {
            let mut v = json!({
                "index": res.index,
                "line": res.line,
                "practice_id": res.practice_id,
                "case_id": res.case_ref,
            });
            let (result, errors) = match &res.outcome {
                RecordOutcome::Created { .. } => ("created", None),
                RecordOutcome::Updated { .. } => ("updated", None),
                RecordOutcome::Unchanged { .. } => ("unchanged", None),
                RecordOutcome::Invalid { errors } => ("invalid", Some(errors)),
            };
            v["result"] = json!(result);
            if let Some(errors) = errors {
                let at = if imported.single {
                    "$".to_owned()
                } else {
                    format!("$[{}]", res.index)
                };
                v["errors"] = errors
                    .iter()
                    .map(|e| {
                        json!({
                            "field": e.field,
                            "path": format!("{at}.{}", e.field),
                            "reason": e.reason,
                        })
                    })
                    .collect();
            }
            v
        })
        .collect();
    let status = if !r.invalid.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else if r.created > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut body = summary;
    body["results"] = Value::Array(results);
    if !r.invalid.is_empty() {
        body["error"] = json!(format!(
            "{} of {} case(s) not stored; each result says why (the others were stored)",
            r.invalid.len(),
            r.records
        ));
    }
    (status, axum::Json(body)).into_response()
}

/// A case as the API shows it: where it stands, never the patient.
async fn case_json(app: &App, c: &CaseRecord) -> Result<Value, StoreError> {
    let letters = app.ledger.letters(c.id).await?;
    Ok(json!({
        "practice_id": c.data.practice_id,
        "case_id": c.data.case_ref,
        "payer": c.data.coverage.payer,
        "status": c.status.as_str(),
        "payer_ref": c.payer_ref,
        "decision": c.decision.as_ref().map(|d| decision_json(d, true)),
        "letters": letters.iter().map(|l| json!({
            "name": l.stored_path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "kind": l.kind,
            "media_type": l.media_type,
            "sha256": l.sha256,
            "bytes": l.bytes,
        })).collect::<Vec<_>>(),
        "created_at": crate::store::ts(c.created_at),
        "updated_at": crate::store::ts(c.updated_at),
    }))
}

/// `GET /api/v1/cases/{practice}/{case_id}`.
async fn get_case(
    State(app): State<App>,
    Path((practice, case_ref)): Path<(String, String)>,
    req: Request,
) -> Response {
    let caller = match authenticate(&app, req.headers(), peer(&req)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Some(r) = practice_refused(&app, &caller, &practice) {
        return r;
    }
    let case = match app.ledger.find(&practice, &case_ref).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return problem(
                StatusCode::NOT_FOUND,
                format!(
                    "practice {practice} has no case {}",
                    crate::case::codes::quoted(&case_ref)
                ),
            )
        }
        Err(e) => return unavailable(&e),
    };
    if let Err(r) = audit(&app, &caller, "api_view_case", Some(case.id), json!({})).await {
        return r;
    }
    match case_json(&app, &case).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => unavailable(&e),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    updated_since: Option<String>,
    practice: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// `GET /api/v1/cases?updated_since=RFC3339[&practice=P][&limit=N][&cursor=C]`.
async fn list_cases(
    State(app): State<App>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Response {
    let caller = match authenticate(&app, req.headers(), peer(&req)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let practice = q.practice.unwrap_or_else(|| caller.token.practice_id.clone());
    if let Some(r) = practice_refused(&app, &caller, &practice) {
        return r;
    }
    let since = match q.updated_since.as_deref().map(str::trim) {
        None | Some("") => DateTime::<Utc>::UNIX_EPOCH,
        Some(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "updated_since: {} is not an RFC 3339 time such as 2026-12-01T15:00:00Z \
                         (write a + offset as %2B in a URL)",
                        crate::case::codes::quoted(s)
                    ),
                )
            }
        },
    };
    let limit = match q.limit.as_deref().map(str::parse::<u32>) {
        None => DEFAULT_PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("limit: give a number from 1 to {MAX_PAGE}"),
            )
        }
    };
    let cursor = match q.cursor.as_deref().map(tokens::decode_cursor) {
        None => None,
        Some(Some(c)) => Some(c),
        Some(None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "cursor: not a cursor this API gave (pass next_cursor back as it came)",
            )
        }
    };
    // One more than asked, to know whether another page follows.
    let rows = match app
        .ledger
        .cases_updated_since(&practice, since, cursor.as_ref(), limit + 1)
        .await
    {
        Ok(r) => r,
        Err(e) => return unavailable(&e),
    };
    let more = rows.len() > limit as usize;
    let page = &rows[..rows.len().min(limit as usize)];
    let mut cases = Vec::with_capacity(page.len());
    for c in page {
        match case_json(&app, c).await {
            Ok(v) => cases.push(v),
            Err(e) => return unavailable(&e),
        }
    }
    let next = page.last().map(|c| {
        tokens::encode_cursor(&SyncCursor {
            updated_at: crate::store::ts(c.updated_at),
            id: c.id,
        })
    });
    let detail = json!({ "count": page.len(), "updated_since": crate::store::ts(since) });
    if let Err(r) = audit(&app, &caller, "api_list_cases", None, detail).await {
        return r;
    }
    axum::Json(json!({
        "cases": cases,
        "has_more": more,
        // Resume here (also when has_more is false: the next sync starts
        // where this one ended).
        "next_cursor": next.or(q.cursor),
    }))
    .into_response()
}
