//! The pages: sign-in and out, the worklist, the escalations inbox, and the
//! case page's routes (the page itself is built in `case_page`).

use std::convert::Infallible;
use std::net::IpAddr;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{self, Viewer};
use super::case_page::{self, Reveal};
use super::view::{self, Frame};
use super::App;
use crate::case::{CaseRecord, CaseStatus};
use crate::store::{AuditEntry, CaseQuery, Escalation};

/// Cases on one page of the worklist.
pub const PAGE_SIZE: u32 = 50;

/// The client's address, when the listener knows it (through trusted
/// proxies: `auth::remote`).
pub struct Remote(pub Option<IpAddr>);

impl FromRequestParts<App> for Remote {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Infallible> {
        Ok(Remote(auth::remote(parts, &app.settings.console.trusted_proxies)))
    }
}

/// A rendered page, or the answer that stands for it when rendering failed.
pub fn html(status: StatusCode, rendered: Result<String, String>) -> Response {
    match rendered {
        Ok(body) => (status, Html(body)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Console page not rendered.");
            (StatusCode::INTERNAL_SERVER_ERROR, "The page could not be shown.\n").into_response()
        }
    }
}

/// A short page with a heading and one paragraph (refusals, confirmations).
pub fn message(app: &App, viewer: Option<&Viewer>, status: StatusCode, title: &str, text: &str) -> Response {
    let frame = Frame::new(title, "", viewer);
    html(
        status,
        view::page(
            &app.templates,
            "message.html",
            &frame,
            json!({ "title": title, "text": text }),
        ),
    )
}

/// The page that opens `path` of this console again at once (a
/// `<meta http-equiv="refresh">`, as the CSP allows no script): the second
/// request comes from this console's own page, so the browser sends the
/// `SameSite=Strict` session cookie it held back from a link followed on
/// another site (`auth::Viewer`).
pub fn reopen(app: &App, path: &str) -> Response {
    let mut frame = Frame::new("Opening", "", None);
    frame.reopen = Some(path.to_owned());
    let text = "Opening the page you followed. If nothing happens, reload this page.";
    html(
        StatusCode::OK,
        view::page(
            &app.templates,
            "message.html",
            &frame,
            json!({ "title": "Opening…", "text": text }),
        ),
    )
}

/// The answer for a form whose CSRF token is not the session's.
pub fn bad_csrf(app: &App, viewer: Option<&Viewer>) -> Response {
    message(
        app,
        viewer,
        StatusCode::FORBIDDEN,
        "Form refused",
        "This form has expired or did not come from this console. Go back, reload the page and try again.",
    )
}

/// 404 for a case that does not exist and for one the viewer may not see
/// alike, so that guessing addresses confirms nothing.
pub fn no_such_case(app: &App, viewer: &Viewer) -> Response {
    message(
        app,
        Some(viewer),
        StatusCode::NOT_FOUND,
        "No such case",
        "There is no case at this address, or it is not one of your practices.",
    )
}

/// The case at `/cases/PRACTICE/CASE_REF`, if the viewer may see it.
pub async fn visible_case(app: &App, viewer: &Viewer, practice: &str, case_ref: &str) -> Result<CaseRecord, Response> {
    if !viewer.sees(practice) {
        return Err(no_such_case(app, viewer));
    }
    match app.ledger.find(practice, case_ref).await {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(no_such_case(app, viewer)),
        Err(e) => Err(super::unavailable(&e)),
    }
}

/// A path inside the console to go back to after an action (never an
/// address elsewhere).
pub fn local_path(next: &str) -> Option<&str> {
    let ok = next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') && !next.contains("://");
    ok.then_some(next)
}

/// Fixed confirmation texts, named in `?done=` after an action.
pub fn notice(done: Option<&str>) -> Option<String> {
    Some(
        match done? {
            "acknowledged" => "Acknowledged: reminders for it stop.",
            "status" => "Status changed.",
            "decision" => "Decision recorded.",
            "letter" => "Letter attached: it is kept with the case's letters and noted in the timeline.",
            "queued" => "Queued: the daemon submits the case when a worker is free and the payer's limits allow.",
            "poll" => "Queued: the daemon asks the payer when a worker is free and the payer's limits allow.",
            _ => return None,
        }
        .to_owned(),
    )
}

pub async fn home() -> Redirect {
    Redirect::to("/cases")
}

#[derive(Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
}

fn login_page(app: &App, status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let csrf = auth::random_token();
    let frame = Frame::new("Sign in", "", None);
    let rendered = view::page(
        &app.templates,
        "login.html",
        &frame,
        json!({ "csrf": &csrf, "next": local_path(next).unwrap_or(""), "error": error }),
    );
    let mut res = html(status, rendered);
    res.headers_mut().append(
        header::SET_COOKIE,
        auth::set_cookie(auth::LOGIN_COOKIE, &csrf, "/login", app.secure_cookies, None),
    );
    res
}

pub async fn login_form(State(app): State<App>, Query(q): Query<LoginQuery>) -> Response {
    login_page(&app, StatusCode::OK, &q.next, None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
    /// The six-digit code, for a user who enrolled TOTP.
    #[serde(default)]
    code: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

const REFUSED: &str = "Wrong name, password or one-time code, or the account is locked after repeated failures. \
                       Try again later, or ask an admin.";

pub async fn login(
    State(app): State<App>,
    Remote(remote): Remote,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let cookie_token = auth::cookie(&headers, auth::LOGIN_COOKIE).unwrap_or("");
    if cookie_token.is_empty() || !auth::same_secret(cookie_token, &form.csrf) {
        return bad_csrf(&app, None);
    }
    let ledger = &app.ledger;
    let now = ledger.now();
    let ip = remote;
    let from = ip.map(|i| i.to_string());
    let name: String = form.name.trim().chars().take(64).collect();
    let audit = |action: &'static str, detail: serde_json::Value| AuditEntry {
        user: "",
        action,
        practice: None,
        case_id: None,
        remote: from.as_deref(),
        detail,
    };
    if ip.is_some_and(|ip| !app.throttle.allows(ip, now)) {
        let _ = app
            .audit(AuditEntry {
                user: &name,
                ..audit("login_throttled", json!({}))
            })
            .await;
        return login_page(&app, StatusCode::TOO_MANY_REQUESTS, &form.next, Some(REFUSED));
    }
    let user = match ledger.console_user(&name).await {
        Ok(u) => u,
        Err(e) => return super::unavailable(&e),
    };
    let refused = |why: &'static str| {
        let app = app.clone();
        let name = name.clone();
        let from = from.clone();
        let next = form.next.clone();
        async move {
            if let Some(ip) = ip {
                app.throttle.failed(ip, app.ledger.now());
            }
            let entry = AuditEntry {
                user: &name,
                action: "login_failed",
                practice: None,
                case_id: None,
                remote: from.as_deref(),
                detail: json!({ "why": why }),
            };
            if app.audit(entry).await.is_err() {
                return (StatusCode::SERVICE_UNAVAILABLE, "The ledger is unavailable.\n").into_response();
            }
            login_page(&app, StatusCode::UNAUTHORIZED, &next, Some(REFUSED))
        }
    };
    let Some(user) = user else {
        auth::verify_nobody(&form.password);
        return refused("unknown name").await;
    };
    let good = auth::verify_password(&user.password_hash, &form.password);
    if user.disabled {
        return refused("disabled").await;
    }
    if user.locked_until.is_some_and(|t| t > now) {
        return refused("locked").await;
    }
    // A user with TOTP needs a good code too, each code once; a wrong or
    // reused code counts as a failed sign-in, as a wrong password does.
    let second = if !good || !user.has_totp() {
        true
    } else {
        let stored = user.totp_secret.as_deref().unwrap_or_default();
        // A seed the console's key does not open is the console's fault,
        // not the user's: said as such, and not counted as a failure.
        let seed = match app.seed_key.open(&user.name, stored) {
            Ok(s) => s,
            Err(e) => return super::seeds::unusable(&app, None, &e),
        };
        match auth::totp_step(&seed, &form.code, now) {
            Some(step) => match ledger.use_console_totp_step(&user.name, step).await {
                Ok(fresh) => fresh,
                Err(e) => return super::unavailable(&e),
            },
            None => false,
        }
    };
    if !good || !second {
        let lockout = chrono::Duration::from_std(app.settings.console.lockout).unwrap_or_default();
        let threshold = app.settings.console.lockout_failures;
        return match ledger.console_login_failed(&user.name, threshold, now + lockout).await {
            Ok(n) if n >= threshold => {
                let _ = app
                    .audit(AuditEntry {
                        user: &name,
                        ..audit("account_locked", json!({ "failures": n }))
                    })
                    .await;
                refused("wrong password or code; account locked").await
            }
            Ok(_) if good => refused("wrong or reused one-time code").await,
            Ok(_) => refused("wrong password").await,
            Err(e) => super::unavailable(&e),
        };
    }
    let token = auth::random_token();
    let csrf = auth::random_token();
    let max = chrono::Duration::from_std(app.settings.console.session_max).unwrap_or_default();
    let idle = app.settings.console.session_idle;
    let _ = ledger
        .prune_console_sessions(now - chrono::Duration::from_std(idle).unwrap_or_default())
        .await;
    if let Err(e) = ledger
        .create_console_session(&auth::token_hash(&token), &user.name, &csrf, now + max, from.as_deref())
        .await
    {
        return super::unavailable(&e);
    }
    if let Err(e) = app
        .audit(AuditEntry {
            user: &user.name,
            ..audit("login", json!({ "role": user.role }))
        })
        .await
    {
        return super::unavailable(&e);
    }
    tracing::info!(user = %user.name, "Console sign-in.");
    let to = local_path(&form.next).unwrap_or("/cases");
    let mut res = Redirect::to(to).into_response();
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        auth::set_cookie(auth::SESSION_COOKIE, &token, "/", app.secure_cookies, None),
    );
    h.append(
        header::SET_COOKIE,
        auth::set_cookie(auth::LOGIN_COOKIE, "", "/login", app.secure_cookies, Some(0)),
    );
    res
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(State(app): State<App>, viewer: Viewer, Form(form): Form<CsrfForm>) -> Response {
    if !viewer.csrf_ok(&form.csrf) {
        return bad_csrf(&app, Some(&viewer));
    }
    if let Err(e) = app.ledger.end_console_session(&viewer.token_hash).await {
        return super::unavailable(&e);
    }
    let _ = app
        .audit(AuditEntry {
            user: viewer.name(),
            action: "logout",
            practice: None,
            case_id: None,
            remote: viewer.remote.as_deref(),
            detail: json!({}),
        })
        .await;
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        auth::set_cookie(auth::SESSION_COOKIE, "", "/", app.secure_cookies, Some(0)),
    );
    res
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    practice: String,
    #[serde(default)]
    payer: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    urgency: String,
    #[serde(default)]
    q: String,
    /// Older than this many days (since the case was imported).
    #[serde(default)]
    age: String,
    /// `overdue` (past the payer's decision deadline: the CMS window unless
    /// the rules say otherwise) or a number of hours: due within them.
    #[serde(default)]
    due: String,
    /// `oldest`: oldest first; else the newest change first (or, with a
    /// deadline filter, the soonest deadline first).
    #[serde(default)]
    sort: String,
    page: Option<u64>,
}

fn some(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

#[derive(Serialize)]
struct Choice {
    value: String,
    label: String,
    selected: bool,
}

#[derive(Serialize)]
struct Row {
    href: String,
    case_ref: String,
    practice: String,
    payer: String,
    status: &'static str,
    status_label: String,
    urgency: &'static str,
    patient: String,
    service: String,
    dates: String,
    updated: String,
    deadline: Option<String>,
    overdue: bool,
}

/// A deadline filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// Past the payer's decision deadline.
    Overdue,
    /// Due within this many hours (and not past).
    Within(u32),
}

/// Most cases a deadline filter or an export reads (the page says so when
/// more match).
const MATCH_MAX: u32 = 50_000;

/// The worklist's filters, read from the address.
struct Filters {
    query: CaseQuery,
    status: Option<CaseStatus>,
    due: Option<Due>,
    age_days: Option<u32>,
    oldest: bool,
    page: u64,
}

impl Filters {
    fn of(q: &ListQuery, viewer: &Viewer, now: chrono::DateTime<chrono::Utc>) -> Filters {
        let practice = some(&q.practice).filter(|p| viewer.sees(p));
        let status = some(&q.status).and_then(|s| s.parse::<CaseStatus>().ok());
        let age_days = q.age.trim().parse::<u32>().ok().filter(|d| (1..=3650).contains(d));
        let due = match q.due.trim() {
            "overdue" => Some(Due::Overdue),
            h => h
                .parse::<u32>()
                .ok()
                .filter(|h| (1..=24 * 60).contains(h))
                .map(Due::Within),
        };
        let oldest = q.sort == "oldest";
        Filters {
            query: CaseQuery {
                allowed: viewer.allowed(),
                practice,
                payer: some(&q.payer),
                status,
                urgency: some(&q.urgency).filter(|u| u == "urgent" || u == "standard"),
                search: some(&q.q),
                created_before: age_days.map(|d| now - chrono::Duration::days(d.into())),
                awaiting_only: false,
                deadline: None,
                oldest_first: oldest,
                limit: PAGE_SIZE,
                offset: 0,
            },
            status,
            due,
            age_days,
            oldest,
            page: q.page.unwrap_or(1).max(1),
        }
    }

    /// The address of this list with another status and page.
    fn link(&self, path: &str, status: Option<CaseStatus>, page: u64) -> String {
        let q = &self.query;
        let mut parts = Vec::new();
        for (k, v) in [
            ("practice", q.practice.clone()),
            ("payer", q.payer.clone()),
            ("status", status.map(|s| s.as_str().to_owned())),
            ("urgency", q.urgency.clone()),
            ("q", q.search.clone()),
            ("age", self.age_days.map(|d| d.to_string())),
            (
                "due",
                self.due.map(|d| match d {
                    Due::Overdue => "overdue".to_owned(),
                    Due::Within(h) => h.to_string(),
                }),
            ),
            ("sort", self.oldest.then(|| "oldest".to_owned())),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", view::encode_component(&v)));
            }
        }
        if page > 1 {
            parts.push(format!("page={page}"));
        }
        if parts.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", parts.join("&"))
        }
    }

    fn audit_detail(&self, shown: usize) -> serde_json::Value {
        json!({
            "status": self.status.map(|s| s.as_str()),
            "payer": self.query.payer,
            "urgency": self.query.urgency,
            "age_days": self.age_days,
            "due": self.due.map(|d| match d { Due::Overdue => "overdue".to_owned(), Due::Within(h) => format!("{h}h") }),
            "page": self.page,
            "shown": shown,
        })
    }
}

/// When the payer must decide a case it has and has not decided: the
/// escalation rules' deadline (CMS-0057-F's 72 hours / 7 days unless the
/// configuration says otherwise).
pub fn deadline(
    settings: &crate::config::Settings,
    case: &CaseRecord,
    submitted: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    if !case.status.is_awaiting_payer() {
        return None;
    }
    let cov = &case.data.coverage;
    deadline_of(
        settings,
        &case.data.practice_id,
        &crate::escalate::rules::RuleKey {
            payer: &cov.payer,
            state: cov.state.as_str(),
            plan_type: cov.plan_type.as_str(),
        },
        case.data.urgency,
        submitted?,
    )
}

/// [`deadline`] from its inputs alone (what the worklist's deadline
/// filters read for every undecided case).
fn deadline_of(
    settings: &crate::config::Settings,
    practice_id: &str,
    key: &crate::escalate::rules::RuleKey<'_>,
    urgency: crate::case::Urgency,
    submitted: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    use crate::escalate::rules;
    let practice = settings.practice(practice_id)?;
    let set = rules::rules_for(&settings.escalations, &practice.escalations, key);
    Some(rules::decision_deadline(submitted, urgency, &set, practice.timezone))
}

/// A deadline as the worklist says it: `in 5 h 10 min`, `overdue by 2 d 3 h`.
fn due_text(deadline: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> String {
    let d = deadline - now;
    let span = |d: chrono::Duration| {
        let mins = d.num_minutes().abs();
        let (days, hours, m) = (mins / 1440, mins / 60 % 24, mins % 60);
        match (days, hours) {
            (0, 0) => format!("{m} min"),
            (0, h) => format!("{h} h {m} min"),
            (d, h) => format!("{d} d {h} h"),
        }
    };
    if d < chrono::Duration::zero() {
        format!("overdue by {}", span(d))
    } else {
        format!("in {}", span(d))
    }
}

/// What a list shows: its cases (with their deadlines), the count of all
/// matching, and the counts per status.
struct Listed {
    cases: Vec<(CaseRecord, Option<chrono::DateTime<chrono::Utc>>)>,
    total: i64,
    counts: Vec<(CaseStatus, i64)>,
    /// More cases matched than an export reads.
    cut: bool,
}

/// A digest of everything a decision deadline depends on besides the case:
/// the escalation rules of the daemon and of every practice, and each
/// practice's time zone. Stored deadlines name it; when a reload changes
/// it, they are computed again.
pub fn deadline_rules_digest(settings: &crate::config::Settings) -> String {
    let mut text = format!("deadlines 1|{:?}", settings.escalations);
    for p in &settings.practices {
        text.push_str(&format!("|{}:{:?}:{}", p.id, p.escalations, p.timezone));
    }
    crate::files::sha256_hex(text.as_bytes())
}

/// Cases a look for outdated deadlines reads at a time.
const DEADLINE_BATCH: u32 = 2_000;

/// Computes and stores the decision deadline of every undecided case that
/// has none under the rules in force (new submissions, cases changed since,
/// every case after a change of the rules), a batch at a time. Returns the
/// rules' digest the stored deadlines now name.
pub async fn refresh_deadlines(
    ledger: &crate::store::Ledger,
    settings: &crate::config::Settings,
) -> Result<String, crate::store::StoreError> {
    let rules = deadline_rules_digest(settings);
    let forgotten = ledger.forget_deadlines_of_other_rules(&rules).await?;
    if forgotten > 0 {
        tracing::info!(
            cases = forgotten,
            "The escalation rules changed: the undecided cases' decision deadlines are computed again."
        );
    }
    loop {
        let stale = ledger.stale_deadlines(DEADLINE_BATCH).await?;
        let computed: Vec<_> = stale
            .iter()
            .map(|c| {
                let key = crate::escalate::rules::RuleKey {
                    payer: &c.payer,
                    state: &c.state,
                    plan_type: &c.plan_type,
                };
                let d = deadline_of(settings, &c.practice_id, &key, c.urgency, c.submitted_at);
                (c.id, c.version, d)
            })
            .collect();
        let stored = ledger.store_deadlines(&rules, &computed).await?;
        // A short batch was the last; a batch that stored nothing changed
        // under our feet and is left for the next look.
        if stale.len() < DEADLINE_BATCH as usize || stored == 0 {
            return Ok(rules);
        }
    }
}

/// The cases a filter selects: one page (`all` false) or every one (for
/// the export, at most `MATCH_MAX`). A deadline filter reads the deadlines
/// stored under the rules in force, computing the missing ones first.
async fn select(app: &App, f: &Filters, all: bool) -> Result<Listed, crate::store::StoreError> {
    let now = app.ledger.now();
    let settings = &app.settings;
    let mut q = f.query.clone();
    if let Some(due) = f.due {
        let rules = refresh_deadlines(&app.ledger, settings).await?;
        q.deadline = Some(match due {
            Due::Overdue => crate::store::DeadlineRange {
                rules,
                after: None,
                until: now,
            },
            Due::Within(h) => crate::store::DeadlineRange {
                rules,
                after: Some(now),
                until: now + chrono::Duration::hours(h.into()),
            },
        });
    }
    if all {
        q.status = f.status;
        let found = app.ledger.cases_matching(&q, MATCH_MAX + 1).await?;
        let cut = found.len() > MATCH_MAX as usize;
        let cases: Vec<_> = found
            .into_iter()
            .take(MATCH_MAX as usize)
            .map(|(c, s)| {
                let d = deadline(settings, &c, s);
                (c, d)
            })
            .collect();
        return Ok(Listed {
            total: cases.len() as i64,
            cases,
            counts: Vec::new(),
            cut,
        });
    }
    q.offset = (f.page - 1) * u64::from(PAGE_SIZE);
    let page = app.ledger.case_page(&q).await?;
    let cases = page
        .cases
        .into_iter()
        .zip(page.submitted_at)
        .map(|(c, s)| {
            let d = deadline(settings, &c, s);
            (c, d)
        })
        .collect();
    Ok(Listed {
        cases,
        total: page.total,
        counts: page.counts,
        cut: false,
    })
}

/// The worklist: a page of the viewer's cases, filtered, newest change
/// first (or as sorted), with counts per status.
pub async fn cases(State(app): State<App>, viewer: Viewer, Query(q): Query<ListQuery>) -> Response {
    let settings = &app.settings;
    let now = app.ledger.now();
    let f = Filters::of(&q, &viewer, now);
    let (status, page) = (f.status, f.page);
    let result = match select(&app, &f, false).await {
        Ok(r) => r,
        Err(e) => return super::unavailable(&e),
    };
    if let Err(e) = app
        .audit(AuditEntry {
            user: viewer.name(),
            action: "case_list",
            practice: f.query.practice.as_deref(),
            case_id: None,
            remote: viewer.remote.as_deref(),
            detail: f.audit_detail(result.cases.len()),
        })
        .await
    {
        return super::unavailable(&e);
    }
    let visible: Vec<_> = settings.practices.iter().filter(|p| viewer.sees(&p.id)).collect();
    let practices: Vec<Choice> = visible
        .iter()
        .map(|p| Choice {
            value: p.id.clone(),
            label: p.name.clone(),
            selected: f.query.practice.as_deref() == Some(&p.id),
        })
        .collect();
    let mut payer_ids: Vec<&String> = visible.iter().flat_map(|p| p.payers.keys()).collect();
    payer_ids.sort();
    payer_ids.dedup();
    let payers: Vec<Choice> = payer_ids
        .into_iter()
        .map(|p| Choice {
            value: p.clone(),
            label: p.clone(),
            selected: f.query.payer.as_deref() == Some(p),
        })
        .collect();
    let all: i64 = result.counts.iter().map(|(_, n)| n).sum();
    let mut counts = vec![
        json!({ "label": "all", "n": all, "href": f.link("/cases", None, 1), "selected": status.is_none(), "status": "all" }),
    ];
    for (s, n) in &result.counts {
        counts.push(json!({ "label": view::worklist_status_label(*s), "n": n, "href": f.link("/cases", Some(*s), 1), "selected": status == Some(*s), "status": s.as_str() }));
    }
    let statuses: Vec<Choice> = CaseStatus::ALL
        .iter()
        .map(|s| Choice {
            value: s.as_str().to_owned(),
            label: view::worklist_status_label(*s),
            selected: status == Some(*s),
        })
        .collect();
    let due_value = match f.due {
        Some(Due::Overdue) => "overdue".to_owned(),
        Some(Due::Within(h)) => h.to_string(),
        None => String::new(),
    };
    let mut dues: Vec<Choice> = [
        ("overdue", "past the deadline"),
        ("24", "due within 24 h"),
        ("48", "due within 48 h"),
        ("72", "due within 72 h"),
    ]
    .iter()
    .map(|(v, l)| Choice {
        value: (*v).to_owned(),
        label: (*l).to_owned(),
        selected: due_value == *v,
    })
    .collect();
    if !due_value.is_empty() && !dues.iter().any(|d| d.selected) {
        dues.push(Choice {
            label: format!("due within {due_value} h"),
            value: due_value.clone(),
            selected: true,
        });
    }
    let rows: Vec<Row> = result
        .cases
        .iter()
        .map(|(c, d)| {
            let tz = settings
                .practice(&c.data.practice_id)
                .map_or(crate::tz::UTC, |p| p.timezone);
            Row {
                href: view::case_path(&c.data.practice_id, &c.data.case_ref),
                case_ref: c.data.case_ref.clone(),
                practice: c.data.practice_id.clone(),
                payer: c.data.coverage.payer.clone(),
                status: c.status.as_str(),
                status_label: view::worklist_status_label(c.status),
                urgency: c.data.urgency.as_str(),
                patient: c.data.patient.name.initials(),
                service: c
                    .data
                    .service_lines
                    .iter()
                    .map(|l| l.code.as_str().to_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
                dates: format!("{} – {}", c.data.service_dates.start, c.data.service_dates.end),
                updated: view::when(c.updated_at, tz),
                deadline: d.map(|d| due_text(d, now)),
                overdue: d.is_some_and(|d| d <= now),
            }
        })
        .collect();
    let shown = rows.len() as u64;
    let first = if shown == 0 {
        0
    } else {
        (page - 1) * u64::from(PAGE_SIZE) + 1
    };
    let last = if shown == 0 { 0 } else { first + shown - 1 };
    let more = (last as i64) < result.total;
    let frame = Frame::new("Cases", "cases", Some(&viewer));
    let ctx = json!({
        "practices": practices,
        "payers": payers,
        "statuses": statuses,
        "dues": dues,
        "counts": counts,
        "rows": rows,
        "q": f.query.search.clone().unwrap_or_default(),
        "urgency": f.query.urgency.clone().unwrap_or_default(),
        "age": f.age_days.map(|d| d.to_string()).unwrap_or_default(),
        "oldest": f.oldest,
        "total": result.total,
        "first": first,
        "last": last,
        "prev": (page > 1).then(|| f.link("/cases", status, page - 1)),
        "next": more.then(|| f.link("/cases", status, page + 1)),
        "export": f.link("/cases.csv", status, 1),
    });
    html(StatusCode::OK, view::page(&app.templates, "cases.html", &frame, ctx))
}

/// A CSV cell that a spreadsheet will not run as a formula.
fn cell(s: &str) -> String {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_owned(),
    }
}

/// The worklist's filters as CSV: every matching case (at most
/// `MATCH_MAX`), the patient as initials and the member ID masked to its
/// last four, nothing more. Each export is a line in the audit.
pub async fn cases_csv(State(app): State<App>, viewer: Viewer, Query(q): Query<ListQuery>) -> Response {
    let now = app.ledger.now();
    let f = Filters::of(&q, &viewer, now);
    let result = match select(&app, &f, true).await {
        Ok(r) => r,
        Err(e) => return super::unavailable(&e),
    };
    if result.cut {
        return message(
            &app,
            Some(&viewer),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Too many cases to export",
            &format!("More than {MATCH_MAX} cases match these filters. Narrow them (a practice, a payer, a status) and export again."),
        );
    }
    if let Err(e) = app
        .audit(AuditEntry {
            user: viewer.name(),
            action: "case_export",
            practice: f.query.practice.as_deref(),
            case_id: None,
            remote: viewer.remote.as_deref(),
            detail: f.audit_detail(result.cases.len()),
        })
        .await
    {
        return super::unavailable(&e);
    }
    let mut out = csv::Writer::from_writer(Vec::new());
    let header = [
        "practice",
        "case_id",
        "payer",
        "payer_ref",
        "status",
        "urgency",
        "patient_initials",
        "member_id_masked",
        "procedure_codes",
        "service_start",
        "service_end",
        "created_at",
        "updated_at",
        "decision_deadline",
        "auth_number",
    ];
    let mut rows = vec![header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
    for (c, d) in &result.cases {
        rows.push(
            [
                c.data.practice_id.clone(),
                c.data.case_ref.clone(),
                c.data.coverage.payer.clone(),
                c.payer_ref.clone().unwrap_or_default(),
                c.status.as_str().to_owned(),
                c.data.urgency.as_str().to_owned(),
                c.data.patient.name.initials(),
                c.data.patient.member_id.masked(),
                c.data
                    .service_lines
                    .iter()
                    .map(|l| l.code.as_str().to_owned())
                    .collect::<Vec<_>>()
                    .join(" "),
                c.data.service_dates.start.to_string(),
                c.data.service_dates.end.to_string(),
                c.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                c.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                d.map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default(),
                c.decision
                    .as_ref()
                    .and_then(|d| d.auth_number.clone())
                    .unwrap_or_default(),
            ]
            .iter()
            .map(|v| cell(v))
            .collect(),
        );
    }
    for r in rows {
        if let Err(e) = out.write_record(&r) {
            tracing::error!(error = %e, "Console: CSV not written.");
            return (StatusCode::INTERNAL_SERVER_ERROR, "The export could not be written.\n").into_response();
        }
    }
    let body = match out.into_inner() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "Console: CSV not written.");
            return (StatusCode::INTERNAL_SERVER_ERROR, "The export could not be written.\n").into_response();
        }
    };
    let name = format!("precert-cases-{}.csv", now.format("%Y%m%d-%H%M"));
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
}

pub async fn case(
    State(app): State<App>,
    viewer: Viewer,
    Path((practice, case_ref)): Path<(String, String)>,
    Query(q): Query<DoneQuery>,
) -> Response {
    let case = match visible_case(&app, &viewer, &practice, &case_ref).await {
        Ok(c) => c,
        Err(res) => return res,
    };
    case_page::show(
        &app,
        &viewer,
        &case,
        Reveal::default(),
        notice(q.done.as_deref()),
        None,
        StatusCode::OK,
    )
    .await
}

#[derive(Deserialize)]
pub struct RevealForm {
    #[serde(default)]
    csrf: String,
    what: String,
}

/// Shows the patient's identifiers or the payer's own words, once, and
/// records that in the case's timeline.
pub async fn reveal(
    State(app): State<App>,
    viewer: Viewer,
    Path((practice, case_ref)): Path<(String, String)>,
    Form(form): Form<RevealForm>,
) -> Response {
    if !viewer.csrf_ok(&form.csrf) {
        return bad_csrf(&app, Some(&viewer));
    }
    let case = match visible_case(&app, &viewer, &practice, &case_ref).await {
        Ok(c) => c,
        Err(res) => return res,
    };
    let (reveal, what) = match form.what.as_str() {
        "patient" => (
            Reveal {
                patient: true,
                payer_text: false,
            },
            "patient identifiers",
        ),
        "payer_text" => (
            Reveal {
                patient: false,
                payer_text: true,
            },
            "the payer's own words",
        ),
        _ => {
            return message(
                &app,
                Some(&viewer),
                StatusCode::BAD_REQUEST,
                "Nothing to show",
                "Unknown request.",
            )
        }
    };
    let event = json!({ "console": "shown", "what": what, "from": viewer.remote });
    if let Err(e) = app
        .ledger
        .append_event(
            case.id,
            crate::store::EventKind::Note,
            &crate::store::Actor::user(viewer.name()),
            &event,
        )
        .await
    {
        return super::unavailable(&e);
    }
    if let Err(e) = app
        .audit(AuditEntry {
            user: viewer.name(),
            action: "reveal",
            practice: Some(&case.data.practice_id),
            case_id: Some(case.id),
            remote: viewer.remote.as_deref(),
            detail: json!({ "what": form.what }),
        })
        .await
    {
        return super::unavailable(&e);
    }
    case_page::show(&app, &viewer, &case, reveal, None, None, StatusCode::OK).await
}

#[derive(Deserialize, Default)]
pub struct EscalationsQuery {
    #[serde(default)]
    practice: String,
    done: Option<String>,
}

#[derive(Serialize)]
struct EscalationRow {
    id: i64,
    reason: &'static str,
    severity: i64,
    practice: String,
    case_ref: Option<String>,
    case_href: Option<String>,
    payer: Option<String>,
    summary: String,
    state: &'static str,
    opened: String,
    due: Option<String>,
    overdue: bool,
    sends: u32,
    acknowledged: Option<String>,
    note: Option<String>,
}

/// The escalations inbox: what waits on a person, most urgent first.
pub async fn escalations(State(app): State<App>, viewer: Viewer, Query(q): Query<EscalationsQuery>) -> Response {
    let settings = &app.settings;
    let wanted = some(&q.practice).filter(|p| viewer.sees(p));
    let mut list: Vec<Escalation> = Vec::new();
    let scopes: Vec<Option<String>> = match (&wanted, viewer.allowed()) {
        (Some(p), _) => vec![Some(p.clone())],
        (None, None) => vec![None],
        (None, Some(ps)) => ps.into_iter().map(Some).collect(),
    };
    for scope in scopes {
        match app.ledger.escalations(scope.as_deref(), false).await {
            Ok(mut l) => list.append(&mut l),
            Err(e) => return super::unavailable(&e),
        }
    }
    list.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(
                a.due_at
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
                    .cmp(&b.due_at.unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)),
            )
            .then(a.id.cmp(&b.id))
    });
    if let Err(e) = app
        .audit(AuditEntry {
            user: viewer.name(),
            action: "escalation_list",
            practice: wanted.as_deref(),
            case_id: None,
            remote: viewer.remote.as_deref(),
            detail: json!({ "shown": list.len() }),
        })
        .await
    {
        return super::unavailable(&e);
    }
    let now = app.ledger.now();
    let mut rows = Vec::new();
    for e in &list {
        let tz = settings.practice(&e.practice_id).map_or(crate::tz::UTC, |p| p.timezone);
        let case = match e.case_id {
            Some(id) => app.ledger.get(id).await.ok(),
            None => None,
        };
        let scrub = |text: &str| match &case {
            Some(c) => crate::scrub::Scrubber::for_case(c, crate::scrub::Reveal::Masked).scrub(text),
            None => crate::scrub::scrub(text),
        };
        rows.push(EscalationRow {
            id: e.id,
            reason: e.reason.title(),
            severity: e.severity,
            practice: e.practice_id.clone(),
            case_ref: case.as_ref().map(|c| c.data.case_ref.clone()),
            case_href: case
                .as_ref()
                .map(|c| view::case_path(&c.data.practice_id, &c.data.case_ref)),
            payer: e.payer.clone(),
            summary: scrub(&e.summary),
            state: e.state.as_str(),
            opened: view::when(e.opened_at, tz),
            due: e.due_at.map(|d| view::when(d, tz)),
            overdue: e.due_at.is_some_and(|d| d < now),
            sends: e.sends,
            acknowledged: e.acknowledged_at.map(|t| {
                format!(
                    "{} by {}",
                    view::when(t, tz),
                    e.acknowledged_by.as_deref().unwrap_or("?").trim_start_matches("user:")
                )
            }),
            note: e.note.as_deref().map(scrub),
        });
    }
    let practices: Vec<Choice> = settings
        .practices
        .iter()
        .filter(|p| viewer.sees(&p.id))
        .map(|p| Choice {
            value: p.id.clone(),
            label: p.name.clone(),
            selected: wanted.as_deref() == Some(&p.id),
        })
        .collect();
    let mut frame = Frame::new("Escalations", "escalations", Some(&viewer));
    frame.notice = notice(q.done.as_deref());
    let back = match &wanted {
        Some(p) => format!("/escalations?practice={}", view::encode_component(p)),
        None => "/escalations".to_owned(),
    };
    let ctx = json!({ "rows": rows, "practices": practices, "back": back, "csrf": &viewer.csrf });
    html(
        StatusCode::OK,
        view::page(&app.templates, "escalations.html", &frame, ctx),
    )
}
