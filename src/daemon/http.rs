//! The daemon's HTTP listener (loopback by default): `/healthz` and
//! `/metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;

/// Counters the workers keep for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// (kind, payer, result) → count.
    pub jobs: Mutex<BTreeMap<(String, String, String), u64>>,
    /// (payer, action) → (runs, total seconds).
    pub runs: Mutex<BTreeMap<(String, String), (u64, f64)>>,
}

impl Metrics {
    pub fn job(&self, kind: &str, payer: &str, result: &str) {
        let mut m = self.jobs.lock().expect("metrics lock");
        *m.entry((kind.to_owned(), payer.to_owned(), result.to_owned()))
            .or_default() += 1;
    }

    pub fn run(&self, payer: &str, action: &str, seconds: f64) {
        let mut m = self.runs.lock().expect("metrics lock");
        let e = m.entry((payer.to_owned(), action.to_owned())).or_default();
        e.0 += 1;
        e.1 += seconds;
    }
}

#[derive(Clone)]
pub struct HttpState {
    pub ctx: Arc<super::Ctx>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(s): State<HttpState>) -> Response {
    // Healthy means the ledger answers.
    match s.ctx.ledger.count_by_status().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("ledger unavailable: {e}\n")).into_response(),
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let s = &s.ctx;
    let mut out = String::new();
    let cases = s.ledger.count_by_status().await.unwrap_or_default();
    let _ = writeln!(out, "# HELP precert_cases Cases by status.\n# TYPE precert_cases gauge");
    for (status, n) in cases {
        let _ = writeln!(out, "precert_cases{{status=\"{status}\"}} {n}");
    }
    if let Ok(q) = s.queue.stats(Utc::now()).await {
        let _ = writeln!(
            out,
            "# HELP precert_queue_jobs Jobs by state.\n# TYPE precert_queue_jobs gauge"
        );
        for (state, n) in [("queued", q.queued), ("leased", q.leased), ("dead", q.dead)] {
            let _ = writeln!(out, "precert_queue_jobs{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP precert_queue_oldest_due_seconds How long the oldest due job has waited.\n# TYPE precert_queue_oldest_due_seconds gauge\nprecert_queue_oldest_due_seconds {}",
            q.oldest_due_seconds
        );
    }
    let _ = writeln!(
        out,
        "# HELP precert_jobs_total Jobs run, by kind, payer and result.\n# TYPE precert_jobs_total counter"
    );
    for ((kind, payer, result), n) in s.metrics.jobs.lock().expect("metrics lock").iter() {
        let _ = writeln!(
            out,
            "precert_jobs_total{{kind=\"{kind}\",payer=\"{payer}\",result=\"{result}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP precert_run_seconds Playbook action run time.\n# TYPE precert_run_seconds summary"
    );
    for ((payer, action), (count, sum)) in s.metrics.runs.lock().expect("metrics lock").iter() {
        let _ = writeln!(
            out,
            "precert_run_seconds_sum{{payer=\"{payer}\",action=\"{action}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "precert_run_seconds_count{{payer=\"{payer}\",action=\"{action}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP precert_browser_sessions_open Browser sessions in use.\n# TYPE precert_browser_sessions_open gauge\nprecert_browser_sessions_open {}",
        {
            let loaded = s.loaded.read().await.clone();
            loaded.engine.sessions_open().await
        }
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
