//! The Reports page (issue 14): each practice's figures per payer over a
//! period, beside what the payer published, with two charts drawn as
//! inline SVG on the server (`report::chart`) and the figures as CSV.
//!
//! A user sees only their practices' figures: the report is scoped to them
//! in the query, and asking for another practice answers 404. The figures
//! hold no patient data; viewing and exporting are audited all the same.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::Viewer;
use super::pages::html;
use super::view::{self, Frame};
use super::App;
use crate::report::{self, chart, published, render, Dimension, Figures, ReportQuery};
use crate::store::{AuditEntry, ReportScope};

/// The page's form: days (`YYYY-MM-DD`, in the practice's zone when one is
/// chosen, else UTC), a practice, a payer, a grouping.
#[derive(Debug, Default, Deserialize)]
pub struct ReportsQuery {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub practice: String,
    #[serde(default)]
    pub payer: String,
    #[serde(default)]
    pub by: String,
    /// Read the ledger as it stood at the end of this day (a past report
    /// made again says the same); default: now.
    #[serde(default)]
    pub as_of: String,
}

fn some(s: &str) -> Option<String> {
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Why a request's report is not made.
enum Refused {
    /// Another practice's figures: "not found", as its cases are.
    NotFound,
    BadRequest(String),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::NotFound => (StatusCode::NOT_FOUND, "Not found\n").into_response(),
            Refused::BadRequest(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
        }
    }
}

/// What a request asks for, checked.
fn scope(app: &App, viewer: &Viewer, q: &ReportsQuery) -> Result<(ReportQuery, String, String), Refused> {
    let practice = some(&q.practice);
    if let Some(p) = &practice {
        if !viewer.sees(p) || app.settings.practice(p).is_none() {
            return Err(Refused::NotFound);
        }
    }
    let tz = practice
        .as_deref()
        .map_or(crate::tz::UTC, |p| report::practice_tz(&app.settings, p));
    let day = |field: &str, v: &str| -> Result<Option<NaiveDate>, Refused> {
        match some(v) {
            None => Ok(None),
            Some(v) => NaiveDate::parse_from_str(&v, "%Y-%m-%d")
                .map(Some)
                .map_err(|_| Refused::BadRequest(format!("{field}: `{v}` is not a day (YYYY-MM-DD)"))),
        }
    };
    let now = app.ledger.now();
    let now = match day("as_of", &q.as_of)? {
        Some(d) => report::start_of(d.succ_opt().unwrap_or(d), tz).min(now),
        None => now,
    };
    let to_day = day("to", &q.to)?.unwrap_or_else(|| now.with_timezone(&tz).date_naive());
    let from_day = day("from", &q.from)?
        .unwrap_or_else(|| NaiveDate::from_ymd_opt(to_day.year(), 1, 1).expect("the first of January"));
    let from = report::start_of(from_day, tz);
    let to: DateTime<Utc> = report::start_of(to_day.succ_opt().unwrap_or(to_day), tz).min(now);
    if from >= to {
        return Err(Refused::BadRequest("from must be before to".into()));
    }
    let by = match some(&q.by) {
        None => None,
        Some(b) => Some(
            b.parse::<Dimension>()
                .map_err(|e| Refused::BadRequest(format!("by: {e}")))?,
        ),
    };
    let query = ReportQuery {
        scope: ReportScope {
            from,
            to,
            as_of: now,
            practice,
            payer: some(&q.payer),
            allowed: viewer.allowed(),
        },
        by,
        late: false,
    };
    Ok((query, from_day.to_string(), to_day.to_string()))
}

async fn build(app: &App, query: &ReportQuery) -> Result<report::Report, Response> {
    let (figures, problems) = published::load_dir(&published::default_dir(&app.settings.source));
    for e in &problems {
        tracing::warn!(error = %e, "Published figures left out.");
    }
    report::build(&app.ledger, &app.settings, &figures, query)
        .await
        .map_err(|report::ReportError::Store(e)| super::unavailable(&e))
}

async fn audit(app: &App, viewer: &Viewer, action: &'static str, query: &ReportQuery) -> Result<(), Response> {
    app.audit(AuditEntry {
        user: viewer.name(),
        action,
        practice: query.scope.practice.as_deref(),
        case_id: None,
        remote: viewer.remote.as_deref(),
        detail: json!({
            "from": query.scope.from.to_rfc3339(),
            "to": query.scope.to.to_rfc3339(),
            "payer": query.scope.payer,
        }),
    })
    .await
    .map_err(|e| super::unavailable(&e))
}

#[derive(Serialize)]
struct Row {
    practice: String,
    payer: String,
    group: Option<String>,
    submitted: u64,
    decided: u64,
    approved: u64,
    partially_approved: u64,
    denied: u64,
    cancelled: u64,
    open: u64,
    first_pass: String,
    approval: String,
    denial: String,
    urgent: [String; 4],
    standard: [String; 4],
    window_urgent: String,
    window_standard: String,
    pended: u64,
    pend_median: String,
    letters_missing: u64,
    needs_attention: u64,
    appealed: u64,
    overturned: u64,
    reasons: Vec<String>,
    /// `$5,630.50 (3 of 4 with an amount)`, `2, none with an amount`, `–`.
    at_risk: String,
    published: Option<Published>,
}

#[derive(Serialize)]
struct Published {
    year: i32,
    source: Option<String>,
    approval: String,
    denial: String,
    standard_median: String,
    urgent_median: String,
}

fn row(f: &Figures) -> Row {
    let t = |t: &report::Turnaround| {
        [
            t.count.to_string(),
            render::duration(t.median_seconds),
            render::duration(t.p90_seconds),
            render::duration(t.max_seconds),
        ]
    };
    let w = |w: &report::WindowFigures| {
        if w.due == 0 {
            "–".to_owned()
        } else {
            format!("{} ({} of {})", render::pct(w.share_within), w.within, w.due)
        }
    };
    let hours = |h: Option<f64>| {
        h.map_or("–".to_owned(), |h| {
            render::duration(Some((h * 3600.0).round() as i64))
        })
    };
    Row {
        practice: f.practice.clone(),
        payer: f.payer.clone(),
        group: f.group.clone(),
        submitted: f.submitted,
        decided: f.decided,
        approved: f.approved,
        partially_approved: f.partially_approved,
        denied: f.denied,
        cancelled: f.cancelled,
        open: f.open,
        first_pass: render::pct(f.first_pass_rate),
        approval: render::pct(f.approval_rate),
        denial: render::pct(f.denial_rate),
        urgent: t(&f.turnaround_urgent),
        standard: t(&f.turnaround_standard),
        window_urgent: w(&f.window_urgent),
        window_standard: w(&f.window_standard),
        pended: f.pends.requests,
        pend_median: render::duration(f.pends.median_seconds),
        letters_missing: f.letters_missing,
        needs_attention: f.needs_attention.iter().map(|n| n.count).sum(),
        appealed: f.appealed,
        overturned: f.overturned,
        reasons: f
            .denial_reasons
            .iter()
            .map(|d| match &d.code {
                Some(c) => format!("{} × {c} {}", d.count, d.text),
                None => format!("{} × {}", d.count, d.text),
            })
            .collect(),
        at_risk: match (f.at_risk.requests, f.at_risk.amount) {
            (0, _) => "–".into(),
            (n, None) => format!("{n}, none with an amount"),
            (n, Some(a)) => format!("{} ({} of {n} with an amount)", a.dollars(), f.at_risk.with_amount),
        },
        published: f.published.as_ref().map(|p| Published {
            year: p.year,
            source: p.source.clone(),
            approval: render::pct(p.approval_rate),
            denial: render::pct(p.denial_rate),
            standard_median: hours(p.median_decision_hours_standard),
            urgent_median: hours(p.median_decision_hours_urgent),
        }),
    }
}

/// `GET /reports`.
pub async fn page(State(app): State<App>, viewer: Viewer, Query(q): Query<ReportsQuery>) -> Response {
    let (query, from, to) = match scope(&app, &viewer, &q) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let report = match build(&app, &query).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = audit(&app, &viewer, "report_view", &query).await {
        return r;
    }
    let practices: Vec<_> = app
        .settings
        .practices
        .iter()
        .filter(|p| viewer.sees(&p.id))
        .map(|p| json!({ "value": p.id, "label": p.name, "selected": query.scope.practice.as_deref() == Some(&p.id) }))
        .collect();
    let mut csv = format!(
        "/reports.csv?from={}&to={}",
        view::encode_component(&from),
        view::encode_component(&to)
    );
    for (k, v) in [
        ("practice", &q.practice),
        ("payer", &q.payer),
        ("by", &q.by),
        ("as_of", &q.as_of),
    ] {
        if let Some(v) = some(v) {
            csv.push_str(&format!("&{k}={}", view::encode_component(&v)));
        }
    }
    let ctx = json!({
        "from": from,
        "to": to,
        "payer": some(&q.payer),
        "by": query.by.map(|d| d.as_str()),
        "practices": practices,
        "rows": report.groups.iter().map(row).collect::<Vec<_>>(),
        "turnaround_svg": chart::turnaround_svg(&report.groups),
        "approval_svg": chart::approval_svg(&report.groups),
        "late": csv.replacen("/reports.csv", "/reports/late", 1),
        "csv": csv,
        "as_of": render::local(report.as_of, crate::tz::UTC),
        "as_of_day": some(&q.as_of),
    });
    let frame = Frame::new("Reports", "reports", Some(&viewer));
    html(StatusCode::OK, view::page(&ENV, "reports.html", &frame, ctx))
}

/// `GET /reports.csv`: the page's figures, one row per practice and payer.
pub async fn csv(State(app): State<App>, viewer: Viewer, Query(q): Query<ReportsQuery>) -> Response {
    let (query, from, to) = match scope(&app, &viewer, &q) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let report = match build(&app, &query).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = audit(&app, &viewer, "report_export", &query).await {
        return r;
    }
    let name = format!("precert-report-{from}-{to}.csv");
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        render::figures_csv(&report),
    )
        .into_response()
}

/// `GET /reports/late`: the evidence of late decisions for the form's
/// period, practice and payer, as the printable page `precert report
/// --format html` writes. It names requests (the case and payer
/// references, no patient details), so it is audited as a view of them:
/// the cases it listed are in the audit entry.
pub async fn late(State(app): State<App>, viewer: Viewer, Query(q): Query<ReportsQuery>) -> Response {
    let (mut query, _, _) = match scope(&app, &viewer, &q) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    query.late = true;
    let report = match build(&app, &query).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let listed: Vec<String> = report
        .late
        .iter()
        .map(|l| format!("{}/{}", l.practice, l.case_ref))
        .collect();
    if let Err(e) = app
        .audit(AuditEntry {
            user: viewer.name(),
            action: "report_late_view",
            practice: query.scope.practice.as_deref(),
            case_id: None,
            remote: viewer.remote.as_deref(),
            detail: json!({
                "from": query.scope.from.to_rfc3339(),
                "to": query.scope.to.to_rfc3339(),
                "payer": query.scope.payer,
                "requests": listed.len(),
                "cases": listed,
            }),
        })
        .await
    {
        return super::unavailable(&e);
    }
    let mut back = String::from("/reports?");
    for (k, v) in [
        ("from", &q.from),
        ("to", &q.to),
        ("practice", &q.practice),
        ("payer", &q.payer),
        ("as_of", &q.as_of),
    ] {
        if let Some(v) = some(v) {
            back.push_str(&format!("{k}={}&", view::encode_component(&v)));
        }
    }
    let back = back.trim_end_matches(['&', '?']);
    let page = render::late_html(
        &report,
        |p| report::practice_tz(&app.settings, p),
        render::Style::Linked {
            css: "/reports/late.css",
            back,
        },
    );
    html(StatusCode::OK, Ok(page))
}

/// `GET /reports/late.css`: the evidence page's style (the console allows
/// no inline style).
pub async fn late_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], render::LATE_CSS).into_response()
}

/// The page's template and the layout, compiled once (kept apart from the
/// other pages' environment).
static ENV: std::sync::LazyLock<minijinja::Environment<'static>> = std::sync::LazyLock::new(|| {
    let mut env = minijinja::Environment::new();
    for (name, text) in [
        ("layout.html", include_str!("templates/layout.html")),
        ("reports.html", include_str!("templates/reports.html")),
    ] {
        env.add_template(name, text).expect("the reports templates parse");
    }
    env
});
