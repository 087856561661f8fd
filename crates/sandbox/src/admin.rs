//! The admin API (`/admin/...`): decide requests, inspect and count submissions, move
//! the sandbox clock, switch hazards, end sessions, read the request log, reset.
//!
//! It has no authentication: it exists only on the sandbox, for tests and demos.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::state::{HazardsPatch, Shared};
use crate::store::{AuthRequest, Decision, Status, StoreError};

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/admin/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/admin/submissions", get(list))
        .route("/admin/submissions/count", get(count))
        .route("/admin/submissions/{reference}", get(one))
        .route("/admin/submissions/{reference}/decide", post(decide))
        .route("/admin/submissions/{reference}/information", post(information))
        .route("/admin/clock", get(clock))
        .route("/admin/clock/advance", post(advance))
        .route("/admin/scheduled/run-all", post(run_all))
        .route("/admin/hazards", get(hazards).put(set_hazards))
        .route("/admin/sessions", get(sessions))
        .route("/admin/sessions/kill-all", post(kill_sessions))
        .route("/admin/subscriptions", get(subscriptions))
        .route("/admin/log", get(log).delete(clear_log))
        .route("/admin/reset", post(reset))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        _ => error(StatusCode::CONFLICT, e.to_string()),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    member_id: Option<String>,
    status: Option<Status>,
    provider_npi: Option<String>,
    /// Only requests with a line of this CPT/HCPCS code.
    code: Option<String>,
    /// Only requests whose service starts on this date.
    service_date: Option<NaiveDate>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ListAnswer {
    total: usize,
    submissions: Vec<AuthRequest>,
}

async fn list(State(state): State<Shared>, Query(q): Query<ListQuery>) -> Response {
    let inner = state.lock();
    let store = &inner.store;
    let source: Box<dyn Iterator<Item = &AuthRequest>> = match (&q.member_id, &q.provider_npi) {
        (Some(m), _) => Box::new(store.by_member(m)),
        (None, Some(npi)) => Box::new(store.provider_ids(npi).iter().filter_map(|&i| store.get(i))),
        (None, None) => Box::new(store.all().iter()),
    };
    let matching: Vec<&AuthRequest> = source
        .filter(|r| q.status.is_none_or(|s| r.status == s))
        .filter(|r| q.provider_npi.as_ref().is_none_or(|n| &r.provider_npi == n))
        .filter(|r| q.code.as_ref().is_none_or(|c| r.lines.iter().any(|l| &l.code == c)))
        .filter(|r| q.service_date.is_none_or(|d| r.service_start == d))
        .collect();
    let total = matching.len();
    let submissions = matching
        .into_iter()
        .skip(q.offset)
        .take(q.limit.unwrap_or(1000))
        .cloned()
        .collect();
    Json(ListAnswer { total, submissions }).into_response()
}

async fn one(State(state): State<Shared>, Path(reference): Path<String>) -> Response {
    match state.lock().store.by_reference(&reference) {
        Some(r) => Json(r).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no request with reference {reference}")),
    }
}

#[derive(Deserialize)]
pub struct CountQuery {
    member_id: String,
    code: String,
    service_date: NaiveDate,
}

async fn count(State(state): State<Shared>, Query(q): Query<CountQuery>) -> Response {
    let n = state.lock().store.count(&q.member_id, &q.code, q.service_date);
    Json(json!({
        "member_id": q.member_id, "code": q.code, "service_date": q.service_date, "count": n,
    }))
    .into_response()
}

async fn decide(
    State(state): State<Shared>,
    Path(reference): Path<String>,
    Json(decision): Json<Decision>,
) -> Response {
    let result = {
        let mut inner = state.lock();
        let now = chrono::Utc::now() + inner.clock_offset;
        inner.store.decide(&reference, decision, now)
    };
    match result {
        Ok(t) => {
            state.notify(&t);
            one(State(state), Path(reference)).await
        }
        Err(e) => store_error(e),
    }
}

async fn information(State(state): State<Shared>, Path(reference): Path<String>) -> Response {
    let result = {
        let mut inner = state.lock();
        let now = chrono::Utc::now() + inner.clock_offset;
        inner.store.information_received(&reference, Vec::new(), now)
    };
    match result {
        Ok(t) => {
            state.notify(&t);
            one(State(state), Path(reference)).await
        }
        Err(e) => store_error(e),
    }
}

fn clock_json(state: &Shared) -> serde_json::Value {
    let inner = state.lock();
    let now = chrono::Utc::now() + inner.clock_offset;
    json!({
        "now": now,
        "offset_seconds": inner.clock_offset.num_seconds(),
        "next_decision_due": inner.store.next_due(),
    })
}

async fn clock(State(state): State<Shared>) -> Response {
    Json(clock_json(&state)).into_response()
}

#[derive(Deserialize)]
pub struct Advance {
    seconds: i64,
}

/// Moves the sandbox clock forward and runs what became due, so tests need not wait.
async fn advance(State(state): State<Shared>, Json(a): Json<Advance>) -> Response {
    if a.seconds < 0 {
        return error(StatusCode::BAD_REQUEST, "the clock only moves forward");
    }
    state.lock().clock_offset += chrono::Duration::seconds(a.seconds);
    let decided = decided_refs(&state, &state.run_due());
    let mut body = clock_json(&state);
    body["decided"] = json!(decided);
    Json(body).into_response()
}

async fn run_all(State(state): State<Shared>) -> Response {
    let transitions = {
        let mut inner = state.lock();
        let now = chrono::Utc::now() + inner.clock_offset;
        inner.store.run_all_scheduled(now)
    };
    state.notify(&transitions);
    Json(json!({"decided": decided_refs(&state, &transitions)})).into_response()
}

fn decided_refs(state: &Shared, transitions: &[crate::store::Transition]) -> Vec<String> {
    let inner = state.lock();
    transitions
        .iter()
        .filter_map(|t| inner.store.get(t.id).map(|r| r.reference.clone()))
        .collect()
}

async fn hazards(State(state): State<Shared>) -> Response {
    Json(state.lock().hazards.clone()).into_response()
}

async fn set_hazards(State(state): State<Shared>, Json(patch): Json<HazardsPatch>) -> Response {
    let mut inner = state.lock();
    match inner.apply_hazards(patch) {
        Ok(()) => Json(inner.hazards.clone()).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn sessions(State(state): State<Shared>) -> Response {
    let inner = state.lock();
    let list: Vec<_> = inner
        .sessions
        .values()
        .map(|s| {
            json!({
                "username": s.username,
                "stage": s.stage,
                "last_seen": s.last_seen,
                // The CAPTCHA answer is exposed so a test can play the human.
                "captcha_answer": s.captcha_answer,
            })
        })
        .collect();
    Json(json!({"sessions": list})).into_response()
}

async fn kill_sessions(State(state): State<Shared>) -> Response {
    let mut inner = state.lock();
    let n = inner.sessions.len();
    inner.sessions.clear();
    Json(json!({"ended": n})).into_response()
}

async fn subscriptions(State(state): State<Shared>) -> Response {
    Json(json!({"subscriptions": state.lock().subscriptions})).into_response()
}

#[derive(Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    offset: usize,
}

async fn log(State(state): State<Shared>, Query(q): Query<LogQuery>) -> Response {
    let inner = state.lock();
    let entries: Vec<_> = inner.log.iter().skip(q.offset).cloned().collect();
    Json(json!({"total": inner.log.len(), "entries": entries})).into_response()
}

async fn clear_log(State(state): State<Shared>) -> Response {
    state.lock().log.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(State(state): State<Shared>) -> Response {
    state.lock().reset();
    Json(json!({"reset": true})).into_response()
}
