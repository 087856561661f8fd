//! The daemon's HTTP listener (loopback by default): `/healthz` (alive:
//! the ledger answers, the scheduler and the workers turn), `/readyz`
//! (able to work: also, when a web payer is enabled, a browser starts),
//! `/metrics` in the Prometheus text format, and the case page escalation
//! mail links to (`/cases/PRACTICE/CASE_REF`: no patient identifiers and
//! no payer free text, see `case_html`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::tz::Tz;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;

use crate::case::{CaseRecord, CaseStatus};
use crate::ids::{PayerKey, PlaybookId};
use crate::limits::BreakerState;
use crate::store::Escalation;

// The daemon's loops report to it; it lives beside them (see its docs).
#[path = "health.rs"]
pub mod health;

use health::{Check, Health, WorkerState};

/// Upper bounds of `precert_run_seconds` buckets: a status poll takes under
/// a second, a portal submission a few, a stuck page its full timeouts.
const RUN_BUCKETS: [f64; 10] = [0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// A histogram of run times: counts per bucket of `RUN_BUCKETS` (not
/// cumulative; `+Inf` is `count`), sum and count.
#[derive(Clone, Debug, Default)]
pub struct RunTimes {
    buckets: [u64; RUN_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl RunTimes {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = RUN_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// (kind, payer key if per payer, result).
type JobKey = (String, Option<PayerKey>, String);

/// Counters the workers keep for `/metrics`, and what the loops report
/// about themselves (`health`).
#[derive(Default)]
pub struct Metrics {
    /// (kind, payer key if the job is per payer, result) → count.
    pub jobs: Mutex<BTreeMap<JobKey, u64>>,
    /// (payer key, action) → run times.
    pub runs: Mutex<BTreeMap<(PayerKey, String), RunTimes>>,
    /// Mail delivery attempts by result (sent, failed).
    pub mail: Mutex<BTreeMap<String, u64>>,
    pub health: Health,
}

impl Metrics {
    pub fn job(&self, kind: &str, payer: Option<&PayerKey>, result: &str) {
        let mut m = self.jobs.lock().expect("metrics lock");
        *m.entry((kind.to_owned(), payer.cloned(), result.to_owned()))
            .or_default() += 1;
    }

    /// A job ended with `result`; `done` (or `ok`) also records the
    /// practice's last success for this job kind and payer.
    pub fn job_finished(&self, practice: &str, kind: &str, payer: Option<&PayerKey>, result: &str) {
        self.job(kind, payer, result);
        if matches!(result, "done" | "ok") {
            self.health.job_succeeded(practice, kind, payer, Utc::now());
        }
    }

    pub fn mail(&self, result: &str, n: usize) {
        *self
            .mail
            .lock()
            .expect("metrics lock")
            .entry(result.to_owned())
            .or_default() += n as u64;
    }

    pub fn run(&self, payer: &PayerKey, action: &str, seconds: f64) {
        let mut m = self.runs.lock().expect("metrics lock");
        m.entry((payer.clone(), action.to_owned()))
            .or_default()
            .observe(seconds);
    }

    /// What the daemon counted and its loops reported, in the text format.
    fn render(&self, out: &mut String) {
        family(
            out,
            "precert_jobs_total",
            "counter",
            "Jobs run, by kind, payer (absent for practice-wide jobs) and result.",
        );
        for ((kind, payer, result), n) in self.jobs.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "precert_jobs_total{{kind=\"{}\"{},result=\"{}\"}} {n}",
                label(kind),
                payer_label(payer.as_ref()),
                label(result)
            );
        }
        family(
            out,
            "precert_job_last_success_timestamp_seconds",
            "gauge",
            "When a practice's job (per payer; no payer label for practice-wide jobs) last succeeded, in Unix seconds, since this daemon started.",
        );
        for ((practice, kind, payer), at) in self.health.last_success() {
            let _ = writeln!(
                out,
                "precert_job_last_success_timestamp_seconds{{practice=\"{}\",kind=\"{}\"{}}} {:.3}",
                label(&practice),
                label(&kind),
                payer_label(payer.as_ref()),
                at.timestamp_millis() as f64 / 1000.0
            );
        }

        family(
            out,
            "precert_run_seconds",
            "histogram",
            "Playbook action run time, by payer and action.",
        );
        for ((payer, action), h) in self.runs.lock().expect("metrics lock").iter() {
            let (payer, action) = (label(payer.as_str()), label(action));
            let mut cumulative = 0;
            for (le, n) in RUN_BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "precert_run_seconds_bucket{{payer=\"{payer}\",action=\"{action}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "precert_run_seconds_bucket{{payer=\"{payer}\",action=\"{action}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "precert_run_seconds_sum{{payer=\"{payer}\",action=\"{action}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "precert_run_seconds_count{{payer=\"{payer}\",action=\"{action}\"}} {}",
                h.count
            );
        }

        let workers = self.health.workers();
        family(out, "precert_workers", "gauge", "Workers, by what they are doing.");
        for state in ["idle", "busy"] {
            let n = workers
                .values()
                .filter(|w| {
                    matches!(
                        (state, w),
                        ("idle", WorkerState::Idle { .. }) | ("busy", WorkerState::Busy { .. })
                    )
                })
                .count();
            let _ = writeln!(out, "precert_workers{{state=\"{state}\"}} {n}");
        }
        // A job held far longer than any run takes: a browser session
        // stuck on a page no timeout covers, or a payer that never answers.
        let now = Instant::now();
        let longest = workers
            .values()
            .filter_map(|w| match w {
                WorkerState::Busy { since, .. } => Some(now.saturating_duration_since(*since).as_secs_f64()),
                WorkerState::Idle { .. } => None,
            })
            .fold(0.0, f64::max);
        family(
            out,
            "precert_worker_longest_busy_seconds",
            "gauge",
            "How long the longest-running job has been running (0 when every worker is idle).",
        );
        let _ = writeln!(out, "precert_worker_longest_busy_seconds {longest:.3}");
        family(
            out,
            "precert_start_time_seconds",
            "gauge",
            "When this daemon started, in Unix seconds (last-success times count from here).",
        );
        let started = Utc::now() - chrono::Duration::from_std(self.health.uptime(now)).unwrap_or_default();
        let _ = writeln!(
            out,
            "precert_start_time_seconds {:.3}",
            started.timestamp_millis() as f64 / 1000.0
        );

        family(
            out,
            "precert_mail_total",
            "counter",
            "Mail delivery attempts, by result.",
        );
        let mail = self.mail.lock().expect("metrics lock").clone();
        for result in ["sent", "failed"] {
            let n = mail.get(result).copied().unwrap_or(0);
            let _ = writeln!(out, "precert_mail_total{{result=\"{result}\"}} {n}");
        }
    }
}

#[derive(Clone)]
pub struct HttpState {
    pub ctx: Arc<super::Ctx>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/cases/{practice}/{case_ref}", get(case_page))
        .with_state(state)
}

async fn ledger_check(ctx: &super::Ctx) -> Check {
    match ctx.ledger.count_by_status().await {
        Ok(_) => Check {
            name: "ledger",
            ok: true,
            detail: "answers".into(),
        },
        Err(e) => Check {
            name: "ledger",
            ok: false,
            detail: e.to_string(),
        },
    }
}

/// 200 when every check passes, else 503; one line per check.
fn checks_response(checks: &[Check]) -> Response {
    let mut body = String::new();
    for c in checks {
        let _ = writeln!(body, "{} {}: {}", c.name, if c.ok { "ok" } else { "FAIL" }, c.detail);
    }
    let status = if checks.iter().all(|c| c.ok) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// Alive: the ledger answers, the scheduler ticks, no idle worker went
/// silent. What a supervisor (or the watchdog's operator) restarts on.
async fn healthz(State(s): State<HttpState>) -> Response {
    let mut checks = vec![ledger_check(&s.ctx).await];
    checks.extend(s.ctx.metrics.health.liveness(Instant::now()));
    checks_response(&checks)
}

/// Ready to work: alive, a configuration loaded with at least one enabled
/// practice, and (when a practice uses a web playbook) the last browser
/// start worked.
async fn readyz(State(s): State<HttpState>) -> Response {
    let now = Instant::now();
    let health = &s.ctx.metrics.health;
    let mut checks = vec![ledger_check(&s.ctx).await];
    checks.extend(health.liveness(now));
    let loaded = s.ctx.loaded.read().await.clone();
    let enabled = loaded.settings.practices.iter().filter(|p| p.enabled).count();
    checks.push(Check {
        name: "configuration",
        ok: enabled > 0,
        detail: format!("{enabled} practice(s) enabled"),
    });
    let web = loaded.settings.practices.iter().filter(|p| p.enabled).any(|p| {
        p.payers.values().any(|b| {
            loaded
                .engine
                .playbook(&b.playbook)
                .is_some_and(|pb| pb.channel == crate::playbook::Channel::Web)
        })
    });
    if web {
        checks.push(health.browser(now));
    }
    checks_response(&checks)
}

/// Label values escaped as the text format wants.
/// `,payer="KEY"` for a per-payer series; nothing for a practice-wide one
/// (an absent label, never an empty or placeholder value).
fn payer_label(payer: Option<&PayerKey>) -> String {
    payer.map_or_else(String::new, |p| format!(",payer=\"{}\"", label(p.as_str())))
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let s = &s.ctx;
    let mut out = String::new();
    let now = Utc::now();
    let loaded = s.loaded.read().await.clone();
    let practices: Vec<&str> = loaded.settings.practices.iter().map(|p| p.id.as_str()).collect();

    family(
        &mut out,
        "precert_build_info",
        "gauge",
        "The running precert's version (always 1).",
    );
    let _ = writeln!(
        out,
        "precert_build_info{{version=\"{}\"}} 1",
        label(env!("CARGO_PKG_VERSION"))
    );

    // A practice whose configuration does not check runs nothing: alert on
    // it (the log says why).
    let disabled = s.disabled.lock().expect("disabled lock").clone();
    family(
        &mut out,
        "precert_practices_disabled",
        "gauge",
        "Practices left out because their configuration does not check.",
    );
    let _ = writeln!(out, "precert_practices_disabled {}", disabled.len());
    family(
        &mut out,
        "precert_practice_disabled",
        "gauge",
        "1 for each practice left out because its configuration does not check.",
    );
    for practice in &disabled {
        let _ = writeln!(out, "precert_practice_disabled{{practice=\"{}\"}} 1", label(practice));
    }

    // Every status appears, 0 when no case has it, so a rule over a status
    // never sees the series vanish.
    let cases = s.ledger.count_by_status().await.unwrap_or_default();
    family(&mut out, "precert_cases", "gauge", "Cases by status.");
    for status in CaseStatus::ALL {
        let n = cases.iter().find(|(st, _)| *st == status).map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "precert_cases{{status=\"{status}\"}} {n}");
    }
    if let Ok(counts) = s.ledger.count_by_practice_status().await {
        let by: BTreeMap<(&str, CaseStatus), i64> = counts.iter().map(|(p, st, n)| ((p.as_str(), *st), *n)).collect();
        let known: BTreeSet<&str> = practices.iter().copied().chain(by.keys().map(|(p, _)| *p)).collect();
        family(
            &mut out,
            "precert_practice_cases",
            "gauge",
            "Cases by practice and status.",
        );
        for practice in known {
            for status in CaseStatus::ALL {
                let n = by.get(&(practice, status)).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "precert_practice_cases{{practice=\"{}\",status=\"{status}\"}} {n}",
                    label(practice)
                );
            }
        }
    }
    if let Ok(oldest) = s.ledger.oldest_pending().await {
        family(
            &mut out,
            "precert_pending_oldest_age_seconds",
            "gauge",
            "Age of the oldest request a payer has not decided (pending or pended), by practice, payer key and urgency; compare with the legal window (72 h urgent, 7 days standard).",
        );
        for o in &oldest {
            let _ = writeln!(
                out,
                "precert_pending_oldest_age_seconds{{practice=\"{}\",payer=\"{}\",urgency=\"{}\"}} {}",
                label(&o.practice_id),
                label(&o.payer),
                label(&o.urgency),
                (now - o.since).num_seconds().max(0)
            );
        }
        family(
            &mut out,
            "precert_pending_requests",
            "gauge",
            "Requests the payer has not decided (pending or pended), by practice, payer key and urgency.",
        );
        for o in &oldest {
            let _ = writeln!(
                out,
                "precert_pending_requests{{practice=\"{}\",payer=\"{}\",urgency=\"{}\"}} {}",
                label(&o.practice_id),
                label(&o.payer),
                label(&o.urgency),
                o.open
            );
        }
    }

    if let Ok(q) = s.queue.stats(now).await {
        family(&mut out, "precert_queue_jobs", "gauge", "Jobs by state.");
        for (state, n) in [("queued", q.queued), ("leased", q.leased), ("dead", q.dead)] {
            let _ = writeln!(out, "precert_queue_jobs{{state=\"{state}\"}} {n}");
        }
        family(
            &mut out,
            "precert_queue_oldest_due_seconds",
            "gauge",
            "How long the oldest due job has waited.",
        );
        let _ = writeln!(out, "precert_queue_oldest_due_seconds {}", q.oldest_due_seconds);
    }

    s.metrics.render(&mut out);

    // The circuit breakers, one per playbook a practice uses: 1 on the
    // state it is in, 0 on the others.
    let playbooks: BTreeSet<&str> = loaded
        .settings
        .practices
        .iter()
        .flat_map(|p| p.payers.values().map(|b| b.playbook.as_str()))
        .collect();
    family(
        &mut out,
        "precert_breaker_state",
        "gauge",
        "Each playbook's circuit breaker: 1 on its current state (closed, open, half_open).",
    );
    {
        let mut limits = s.limits.lock().expect("limits lock");
        for pb in playbooks {
            let current = match limits.breaker_state(&PlaybookId::from(pb), now) {
                BreakerState::Closed { .. } => "closed",
                BreakerState::Open { .. } => "open",
                BreakerState::HalfOpen { .. } => "half_open",
            };
            for state in ["closed", "open", "half_open"] {
                let _ = writeln!(
                    out,
                    "precert_breaker_state{{playbook=\"{}\",state=\"{state}\"}} {}",
                    label(pb),
                    u8::from(state == current)
                );
            }
        }
    }

    family(
        &mut out,
        "precert_browser_sessions_open",
        "gauge",
        "Browser sessions open (in use and idle), at most webdriver.max_sessions.",
    );
    let _ = writeln!(
        out,
        "precert_browser_sessions_open {}",
        loaded.engine.sessions_open().await
    );
    if let Ok(waiting) = s.ledger.outbox_counts().await {
        family(
            &mut out,
            "precert_outbox_mails",
            "gauge",
            "Mail not yet delivered, by state.",
        );
        for state in ["pending", "sending", "failed"] {
            let n = waiting.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "precert_outbox_mails{{state=\"{state}\"}} {n}");
        }
    }
    if let Ok(active) = s.ledger.active_escalation_count().await {
        family(
            &mut out,
            "precert_escalations_active",
            "gauge",
            "Open or acknowledged escalations.",
        );
        let _ = writeln!(out, "precert_escalations_active {active}");
    }
    if let Ok(active) = s.ledger.count_active_escalations().await {
        let mut by: BTreeMap<&str, i64> = practices.iter().map(|p| (*p, 0)).collect();
        for (practice, _, n) in &active {
            *by.entry(practice.as_str()).or_default() += n;
        }
        family(
            &mut out,
            "precert_practice_escalations_active",
            "gauge",
            "Open or acknowledged escalations, by practice.",
        );
        for (practice, n) in by {
            let _ = writeln!(
                out,
                "precert_practice_escalations_active{{practice=\"{}\"}} {n}",
                label(practice)
            );
        }
        // Every reason appears for every practice, 0 when none is open, so
        // an alert on `stalled` (a request past its legal window) never
        // sees its series vanish.
        family(
            &mut out,
            "precert_escalations_active_by_reason",
            "gauge",
            "Open or acknowledged escalations, by practice and reason (stalled: a request past its legal decision window).",
        );
        let known: BTreeSet<&str> = practices
            .iter()
            .copied()
            .chain(active.iter().map(|(p, _, _)| p.as_str()))
            .collect();
        for practice in known {
            for reason in crate::escalate::Reason::ALL.iter().copied() {
                let n: i64 = active
                    .iter()
                    .filter(|(p, r, _)| p == practice && r == reason.as_str())
                    .map(|(_, _, n)| n)
                    .sum();
                let _ = writeln!(
                    out,
                    "precert_escalations_active_by_reason{{practice=\"{}\",reason=\"{}\"}} {n}",
                    label(practice),
                    reason.as_str()
                );
            }
        }
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
    let body = case_html(&case, &escalations, tz.unwrap_or(crate::tz::UTC));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the workers count renders as Prometheus's own parser wants it
    /// (`promtool check metrics`, from Debian's prometheus package).
    #[test]
    fn counted_metrics_pass_promtool_with_last_success_and_histogram() {
        let m = Metrics::default();
        let sandbox = PayerKey::new("sandbox");
        m.job_finished("lakeside-ortho", "poll", Some(&sandbox), "done");
        m.job_finished("lakeside-ortho", "escalations", None, "done");
        m.job_finished("valley-imaging", "submit", Some(&sandbox), "retry");
        m.run(&sandbox, "poll_status", 0.4);
        m.run(&sandbox, "poll_status", 3.0);
        m.run(&sandbox, "submit", 400.0);
        m.mail("sent", 2);
        m.health.worker_idle(0);
        m.health.worker_busy(1, "submit#3");
        let mut out = String::new();
        m.render(&mut out);

        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool runs (scripts/test installs Debian's prometheus package)");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), out.as_bytes()).unwrap();
        let checked = child.wait_with_output().unwrap();
        assert!(
            checked.status.success(),
            "{}{}\n{out}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );

        let line = |prefix: &str| out.lines().find(|l| l.starts_with(prefix)).map(str::to_owned);
        let poll = line(
            "precert_job_last_success_timestamp_seconds{practice=\"lakeside-ortho\",kind=\"poll\",payer=\"sandbox\"} ",
        )
        .unwrap_or_else(|| panic!("{out}"));
        let at: f64 = poll.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((Utc::now().timestamp() as f64 - at).abs() < 60.0, "{poll}");
        assert!(
            line("precert_job_last_success_timestamp_seconds{practice=\"lakeside-ortho\",kind=\"escalations\"} ")
                .is_some()
        );
        assert!(
            line("precert_job_last_success_timestamp_seconds{practice=\"valley-imaging\"").is_none(),
            "a retry is no success"
        );
        // Cumulative buckets: 0.4 s in le=0.5 and up, 3 s from le=5, 400 s only in +Inf.
        for (le, n) in [("0.25", 0), ("0.5", 1), ("2.5", 1), ("5", 2), ("300", 2), ("+Inf", 2)] {
            assert_eq!(
                line(&format!(
                    "precert_run_seconds_bucket{{payer=\"sandbox\",action=\"poll_status\",le=\"{le}\"}} "
                )),
                Some(format!(
                    "precert_run_seconds_bucket{{payer=\"sandbox\",action=\"poll_status\",le=\"{le}\"}} {n}"
                )),
                "{out}"
            );
        }
        assert!(out.contains("precert_run_seconds_bucket{payer=\"sandbox\",action=\"submit\",le=\"300\"} 0\n"));
        assert!(
            out.contains("precert_workers{state=\"busy\"} 1\n") && out.contains("precert_workers{state=\"idle\"} 1\n")
        );
        assert!(out.contains("precert_mail_total{result=\"failed\"} 0\n"), "{out}");
    }
}
