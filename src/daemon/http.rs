//! The daemon's HTTP listener (loopback by default): `/healthz` and
//! `/metrics` in the Prometheus text format, and the case page escalation
//! mail links to (`/cases/PRACTICE/CASE_REF`: no patient identifiers and
//! no payer free text, see `case_html`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use chrono_tz::Tz;

use crate::case::CaseRecord;
use crate::store::Escalation;

/// Counters the workers keep for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// (kind, payer, result) → count.
    pub jobs: Mutex<BTreeMap<(String, String, String), u64>>,
    /// (payer, action) → (runs, total seconds).
    pub runs: Mutex<BTreeMap<(String, String), (u64, f64)>>,
    /// Mail delivery attempts by result (sent, failed).
    pub mail: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn job(&self, kind: &str, payer: &str, result: &str) {
        let mut m = self.jobs.lock().expect("metrics lock");
        *m.entry((kind.to_owned(), payer.to_owned(), result.to_owned()))
            .or_default() += 1;
    }

    pub fn mail(&self, result: &str, n: usize) {
        *self
            .mail
            .lock()
            .expect("metrics lock")
            .entry(result.to_owned())
            .or_default() += n as u64;
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
        .route("/cases/{practice}/{case_ref}", get(case_page))
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
    let _ = writeln!(
        out,
        "# HELP precert_mail_total Mail delivery attempts, by result.\n# TYPE precert_mail_total counter"
    );
    for (result, n) in s.metrics.mail.lock().expect("metrics lock").iter() {
        let _ = writeln!(out, "precert_mail_total{{result=\"{result}\"}} {n}");
    }
    if let Ok(waiting) = s.ledger.outbox_counts().await {
        let _ = writeln!(
            out,
            "# HELP precert_outbox_mails Mail not yet delivered, by state.\n# TYPE precert_outbox_mails gauge"
        );
        for state in ["pending", "sending", "failed"] {
            let n = waiting.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "precert_outbox_mails{{state=\"{state}\"}} {n}");
        }
    }
    if let Ok(active) = s.ledger.active_escalation_count().await {
        let _ = writeln!(
            out,
            "# HELP precert_escalations_active Open or acknowledged escalations.\n# TYPE precert_escalations_active gauge\nprecert_escalations_active {active}"
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The page escalation mail links to: where a case stands, without any
/// patient identifier (the listener is loopback unless configured).
async fn case_page(State(s): State<HttpState>, Path((practice, case_ref)): Path<(String, String)>) -> Response {
    let case = match s.ctx.ledger.find(&practice, &case_ref).await {
        Ok(Some(c)) => c,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such case\n").into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("ledger unavailable: {e}\n")).into_response(),
    };
    let tz = s
        .ctx
        .loaded
        .read()
        .await
        .settings
        .practice(&practice)
        .map(|p| p.timezone);
    let escalations = match s.ctx.ledger.escalations(Some(&practice), true).await {
        Ok(list) => list.into_iter().filter(|e| e.case_id == Some(case.id)).collect(),
        Err(_) => Vec::new(),
    };
    let body = case_html(&case, &escalations, tz.unwrap_or(chrono_tz::UTC));
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// What the case page shows. Nobody logs in to see it, so it carries no
/// patient identifier and no text from the payer or the portal: no denial
/// wording, no pend request, no conditions, no failure message, no
/// escalation summary (a denied one quotes the payer's code, a paused
/// payer's its failure). Those may quote the patient in ways no scrubber
/// is sure to catch; they stay in the ledger, for `precert cases show`,
/// until a console with a login exists.
///
/// What it shows: the case key, the canonical status, the payer and plan
/// (configuration), the service codes and dates, whether an auth number is
/// on file (not the number: it is not PHI by itself, but it is the payer's
/// handle on the patient's request, and the page stays minimal), the
/// payer's reason *code* when it has a payer code's shape (`CLIN-06`), and
/// each escalation's reason, state and due time.
fn case_html(case: &CaseRecord, escalations: &[Escalation], tz: Tz) -> String {
    let esc = crate::escalate::render::escape;
    let on_file = "on file \u{2014} see the case in precert";
    let mut rows = vec![
        ("Case", case.key()),
        ("Status", case.status.as_str().to_owned()),
        (
            "Payer",
            format!("{} ({})", case.data.coverage.payer, case.data.coverage.plan),
        ),
        (
            "Service",
            case.data
                .service_lines
                .iter()
                .map(|l| format!("{} x{}", l.code.as_str(), l.units))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "Dates",
            format!("{} to {}", case.data.service_dates.start, case.data.service_dates.end),
        ),
    ];
    if let Some(d) = &case.decision {
        rows.push((
            "Auth number",
            if d.auth_number.is_some() {
                on_file.to_owned()
            } else {
                "-".to_owned()
            },
        ));
        if let Some(r) = &d.denial {
            let reason = match r.code.as_deref().and_then(crate::scrub::payer_code) {
                Some(code) => format!("{code} \u{2014} reason on file, see the case in precert"),
                None => "reason on file \u{2014} see the case in precert".to_owned(),
            };
            rows.push(("Reason", reason));
        }
    }
    let mut body = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>precert case</title></head><body><table>",
    );
    for (k, v) in rows {
        let _ = write!(body, "<tr><th align=\"left\">{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    body.push_str("</table><h3>Escalations</h3><ul>");
    for e in escalations {
        let due = e
            .due_at
            .map(|d| format!(", due {}", d.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z")))
            .unwrap_or_default();
        let _ = write!(
            body,
            "<li>#{} {} ({}){}</li>",
            e.id,
            esc(e.reason.title()),
            e.state.as_str(),
            esc(&due)
        );
    }
    body.push_str("</ul></body></html>\n");
    body
}
