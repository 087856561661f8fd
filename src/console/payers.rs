//! The payers page (`/payers`): per payer of each of the viewer's
//! practices, whether automation is paused, the cases open and waiting on
//! the payer, the oldest undecided submission, the jobs waiting and
//! running, the failures of the last 24 hours and each job's last success,
//! so an operator sees a portal is down before the mail says so.
//!
//! "Paused" is the ledger's word for it: the daemon's circuit breaker opens
//! a `payer_paused` escalation when it stops automation against a payer and
//! resolves it when a trial run succeeds, so the page shows the same thing
//! from `precert console` alone and from any daemon on the ledger.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use serde_json::json;

use super::auth::Viewer;
use super::pages::html;
use super::view::{self, Frame};
use super::App;
use crate::case::CaseStatus;
use crate::limits::BreakerState;
use crate::store::{AuditEntry, PayerActivity};

#[derive(Serialize)]
struct Row {
    practice: String,
    payer: String,
    playbook: Option<String>,
    paused: Option<String>,
    paused_since: Option<String>,
    /// The daemon's circuit breaker now, when the daemon serves the page.
    breaker: Option<String>,
    running_now: Option<u32>,
    open: i64,
    awaiting: i64,
    needs_attention: i64,
    oldest_pending: Option<String>,
    queued: i64,
    running: i64,
    failed: i64,
    last_success: Vec<(String, String)>,
    cases_href: String,
    attention_href: String,
}

/// How long ago, as people say it: `3 d 4 h`, `5 h 10 min`, `12 min`.
fn age(d: chrono::Duration) -> String {
    let mins = d.num_minutes().max(0);
    let (days, hours, m) = (mins / 1440, mins / 60 % 24, mins % 60);
    match (days, hours) {
        (0, 0) => format!("{m} min"),
        (0, h) => format!("{h} h {m} min"),
        (d, h) => format!("{d} d {h} h"),
    }
}

pub async fn page(State(app): State<App>, viewer: Viewer) -> Response {
    let now = app.ledger.now();
    let allowed = viewer.allowed();
    let activity = match app
        .ledger
        .payer_activity(allowed.as_deref(), now - chrono::Duration::hours(24))
        .await
    {
        Ok(a) => a,
        Err(e) => return super::unavailable(&e),
    };
    if let Err(e) = app
        .audit(AuditEntry {
            user: viewer.name(),
            action: "payers",
            practice: None,
            case_id: None,
            remote: viewer.remote.as_deref(),
            detail: json!({}),
        })
        .await
    {
        return super::unavailable(&e);
    }
    // Every payer the configuration binds, and any the ledger still has
    // work for (a payer removed from a practice's file).
    let mut keys: Vec<(String, String)> = app
        .settings
        .practices
        .iter()
        .filter(|p| viewer.sees(&p.id))
        .flat_map(|p| p.payers.keys().map(|k| (p.id.clone(), k.clone())))
        .collect();
    for a in &activity {
        let k = (a.practice_id.clone(), a.payer.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort();
    // The breakers' live state (keyed by playbook), read under one lock.
    let live: std::collections::BTreeMap<String, (BreakerState, u32)> = match &app.live {
        Some(limits) => {
            let mut limits = limits.lock().expect("limits lock");
            let wall = chrono::Utc::now();
            let mut playbooks: Vec<&str> = keys
                .iter()
                .filter_map(|(p, k)| app.settings.practice(p)?.payers.get(k).map(|b| b.playbook.as_str()))
                .collect();
            playbooks.sort();
            playbooks.dedup();
            playbooks
                .into_iter()
                .map(|pb| {
                    let id = crate::ids::PlaybookId::from(pb);
                    (pb.to_owned(), (limits.breaker_state(&id, wall), limits.running(&id)))
                })
                .collect()
        }
        None => Default::default(),
    };
    let empty = PayerActivity::default();
    let rows: Vec<Row> = keys
        .into_iter()
        .map(|(practice, payer)| {
            let a = activity
                .iter()
                .find(|a| a.practice_id == practice && a.payer == payer)
                .unwrap_or(&empty);
            let tz = app.settings.practice(&practice).map_or(crate::tz::UTC, |p| p.timezone);
            let count = |pred: &dyn Fn(CaseStatus) -> bool| -> i64 {
                a.statuses.iter().filter(|(s, _)| pred(*s)).map(|(_, n)| n).sum()
            };
            let mut last_success: Vec<(String, String)> = a
                .last_success
                .iter()
                .map(|(kind, at)| {
                    (
                        kind.clone(),
                        format!("{} ({} ago)", view::when(*at, tz), age(now - *at)),
                    )
                })
                .collect();
            last_success.sort();
            let filter = format!(
                "practice={}&payer={}",
                view::encode_component(&practice),
                view::encode_component(&payer)
            );
            let playbook = app
                .settings
                .practice(&practice)
                .and_then(|p| p.payers.get(&payer))
                .map(|b| b.playbook.clone());
            let now_live = playbook.as_ref().and_then(|pb| live.get(pb));
            let breaker = now_live.map(|(state, _)| match state {
                BreakerState::Closed { failures: 0 } => "closed".to_owned(),
                BreakerState::Closed { failures } => format!("closed ({failures} failures in a row)"),
                BreakerState::Open { until } => format!("open until {}", view::when(*until, tz)),
                BreakerState::HalfOpen { trial_running: true } => "half-open: a trial run is deciding".to_owned(),
                BreakerState::HalfOpen { trial_running: false } => "half-open: the next run is a trial".to_owned(),
            });
            let open_now = now_live.is_some_and(|(s, _)| matches!(s, BreakerState::Open { .. }));
            Row {
                playbook,
                paused: match &a.paused {
                    Some((_, why)) => Some(crate::scrub::scrub(why)),
                    None if open_now => Some("the circuit breaker is open".to_owned()),
                    None => None,
                },
                paused_since: a.paused.as_ref().map(|(at, _)| view::when(*at, tz)),
                breaker,
                running_now: now_live.map(|(_, n)| *n),
                open: count(&|s| {
                    use CaseStatus::*;
                    matches!(
                        s,
                        New | Required | Ready | Submitting | Pending | PendedForInfo | NeedsAttention
                    )
                }),
                awaiting: count(&CaseStatus::is_awaiting_payer),
                needs_attention: count(&|s| s == CaseStatus::NeedsAttention),
                oldest_pending: a.oldest_pending_since.map(|t| age(now - t)),
                queued: a.jobs_queued,
                running: a.jobs_running,
                failed: a.jobs_failed,
                last_success,
                cases_href: format!("/cases?{filter}"),
                attention_href: format!("/cases?{filter}&status=needs_attention"),
                practice,
                payer,
            }
        })
        .collect();
    let frame = Frame::new("Payers", "payers", Some(&viewer));
    html(
        StatusCode::OK,
        view::page(&app.templates, "payers.html", &frame, json!({ "rows": rows })),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_read_as_people_say_them() {
        let m = chrono::Duration::minutes;
        assert_eq!(super::age(m(12)), "12 min");
        assert_eq!(super::age(m(5 * 60 + 10)), "5 h 10 min");
        assert_eq!(super::age(m(3 * 1440 + 4 * 60 + 59)), "3 d 4 h");
        assert_eq!(super::age(m(-5)), "0 min");
    }
}
