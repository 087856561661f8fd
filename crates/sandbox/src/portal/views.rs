//! Home, request details, status search (rendered client-side after an XHR), the
//! paginated worklist and decision letters.

use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::{active, esc, not_found, page};
use crate::state::{SearchFailure, Shared, SEARCH_UNAVAILABLE};
use crate::store::{AuthRequest, Status};

fn date_us(d: Option<NaiveDate>) -> String {
    d.map(|d| d.format("%m/%d/%Y").to_string()).unwrap_or_default()
}

pub async fn home(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    page(
        "Provider Home",
        Some(&ctx),
        &format!(
            r#"<p id="welcome">Welcome, {name} (NPI {npi}).</p>
<ul id="home-actions">
<li><a id="home-new-request" href="/portal/requests/new">Submit a new prior authorization request</a></li>
<li><a id="home-status" href="/portal/status">Check authorization status</a></li>
<li><a id="home-worklist" href="/portal/worklist">View your worklist</a></li>
</ul>"#,
            name = esc(&ctx.provider_name),
            npi = esc(&ctx.provider_npi)
        ),
    )
    .into_response()
}

pub async fn details(State(state): State<Shared>, headers: HeaderMap, Path(reference): Path<String>) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(r) = owned(&state, &reference, &ctx.provider_npi) else {
        return not_found(Some(&ctx));
    };
    let lines: String = r
        .lines
        .iter()
        .map(|l| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&l.code),
                l.units,
                l.approved_units.map(|u| u.to_string()).unwrap_or_default()
            )
        })
        .collect();
    let letter = if r.status.has_letter() {
        format!(
            r#"<p><a id="view-letter" href="/portal/letters/{}" target="_blank" rel="noopener">View letter</a></p>"#,
            esc(&r.reference)
        )
    } else {
        String::new()
    };
    let info = match (&r.information_requested, r.status) {
        (Some(what), Status::Pended) => format!(
            r#"<section id="information-request" class="alert"><h2>Additional information requested</h2>
<p id="information-requested">{}</p>
<form id="information-form" method="post" action="/portal/requests/{}/information" enctype="multipart/form-data">
<label for="information-note">Note to reviewer</label><textarea id="information-note" name="note" rows="3" cols="60"></textarea>
<label for="information-file">Document</label><input id="information-file" name="document" type="file">
<div><button id="information-submit" type="submit">Send Information</button></div>
</form></section>"#,
            esc(what),
            esc(&r.reference)
        ),
        _ => String::new(),
    };
    let history: String = r
        .history
        .iter()
        .map(|h| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                h.at.format("%m/%d/%Y %H:%M UTC"),
                h.status.label(),
                esc(&h.note)
            )
        })
        .collect();
    // The documents as the portal received them, under their uploaded names.
    let files: String = r
        .attachments
        .iter()
        .map(|a| format!("<li>{} ({} bytes)</li>", esc(&a.file_name), a.size_bytes))
        .collect();
    page(
        &format!("Request {}", r.reference),
        Some(&ctx),
        &format!(
            r#"<table id="request-details">
<tr><th>Reference</th><td id="detail-reference">{reference}</td></tr>
<tr><th>Status</th><td id="detail-status">{status}</td></tr>
<tr><th>Member</th><td id="detail-member">{member} (<span id="detail-member-id">{member_id}</span>)</td></tr>
<tr><th>Service dates</th><td id="detail-dates"><span id="detail-service-start">{start}</span> - <span id="detail-service-end">{end}</span></td></tr>
<tr><th>Authorization number</th><td id="detail-auth-number">{auth}</td></tr>
<tr><th>Valid</th><td id="detail-valid">{vf} - {vt}</td></tr>
<tr><th>Denial reason</th><td id="detail-denial-reason">{denial}</td></tr>
</table>
<dl class="summary"><dt>Authorization #</dt><dd>{auth}</dd><dt>Decision:</dt><dd>{status}</dd><dt>Decided</dt><dd>{decided}</dd></dl>
<table id="detail-lines"><tr><th>Procedure</th><th>Requested units</th><th>Approved units</th></tr>{lines}</table>
<h2>Documents</h2><ul id="detail-attachments">{files}</ul>
{letter}{info}
<h2>History</h2><table id="detail-history"><tr><th>When</th><th>Status</th><th>Note</th></tr>{history}</table>"#,
            reference = esc(&r.reference),
            status = r.status.label(),
            member = esc(&r.member_name),
            member_id = esc(&r.member_id),
            start = date_us(Some(r.service_start)),
            end = date_us(Some(r.service_end)),
            auth = esc(r.auth_number.as_deref().unwrap_or("")),
            decided = date_us(r.decided_at.map(|t| t.date_naive())),
            vf = date_us(r.valid_from),
            vt = date_us(r.valid_to),
            denial = esc(&r
                .denial
                .as_ref()
                .map(|d| format!("{} - {}", d.code, d.text))
                .unwrap_or_default()),
        ),
    )
    .into_response()
}

fn owned(state: &Shared, reference: &str, npi: &str) -> Option<AuthRequest> {
    state
        .lock()
        .store
        .by_reference(reference)
        .filter(|r| r.provider_npi == npi)
        .cloned()
}

pub async fn information(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    multipart: Multipart,
) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if owned(&state, &reference, &ctx.provider_npi).is_none() {
        return not_found(Some(&ctx));
    }
    let files = match super::wizard::read_files(multipart, state.now()).await {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let result = {
        let mut inner = state.lock();
        let now = chrono::Utc::now() + inner.clock_offset;
        inner.store.information_received(&reference, files, now)
    };
    match result {
        Ok(t) => {
            state.notify(&t);
            Redirect::to(&format!("/portal/requests/{reference}")).into_response()
        }
        Err(_) => Redirect::to(&format!("/portal/requests/{reference}")).into_response(),
    }
}

#[derive(Deserialize, Default)]
pub struct StatusQuery {
    #[serde(default)]
    reference: String,
    #[serde(default)]
    member_id: String,
    #[serde(default)]
    birth_date: String,
}

/// Builds the results after the XHR. `data-loaded` on the container: `false` while
/// loading, `true` once the search answered (rows, or `status-no-results`), `error` when
/// it failed (`status-error`; never `status-no-results`).
const STATUS_JS: &str = r#"
(function () {
  var box = document.getElementById('status-results-container');
  if (!box || !box.dataset.query) { return; }
  var COLS = ['reference','member','member_id','codes','service_start','service_end','status','decision_date','auth_number','approved_units','valid_from','valid_to','denial_reason','information_requested'];
  var HEADS = ['Reference','Member','Member ID','Codes','Service Start','Service End','Status','Decision Date','Auth Number','Approved Units','Valid From','Valid To','Denial Reason','Information Requested'];
  fetch('/portal/api/status?' + box.dataset.query, {credentials: 'same-origin', headers: {'Accept': 'application/json'}})
    .then(function (r) { if (!r.ok) { throw new Error('HTTP ' + r.status); } return r.json(); })
    .then(function (data) {
      if (!data || typeof data !== 'object') { throw new Error('unreadable answer'); }
      if (data.error) { fail(data.error); return; }
      if (!Array.isArray(data.results)) { throw new Error('unreadable answer'); }
      stopLoading();
      if (data.results.length === 0) {
        showMessage('status-no-results', 'No authorization requests match your search.');
        done('true', 0);
        return;
      }
      var table = document.createElement('table');
      table.id = 'status-results';
      var head = table.insertRow();
      HEADS.forEach(function (h) {
        var th = document.createElement('th'); th.textContent = h; head.appendChild(th);
      });
      data.results.forEach(function (row) {
        var tr = table.insertRow();
        tr.dataset.reference = row.reference;
        COLS.forEach(function (c) {
          var td = tr.insertCell(); td.className = 'col-' + c.replace(/_/g, '-');
          td.textContent = (row[c] === null || row[c] === undefined) ? '' : row[c];
        });
      });
      box.appendChild(table);
      done('true', data.results.length);
    })
    .catch(function (e) { fail('Search failed: ' + e.message); });
  function stopLoading() { var l = document.getElementById('status-loading'); if (l) { l.remove(); } }
  function fail(text) {
    stopLoading();
    ['status-results', 'status-no-results'].forEach(function (id) { var x = document.getElementById(id); if (x) { x.remove(); } });
    showMessage('status-error', text, 'alert');
    done('error', null);
  }
  function showMessage(id, text, cls) {
    var p = document.createElement('div'); p.id = id; p.className = cls || 'notice'; p.setAttribute('role', 'status'); p.textContent = text; box.appendChild(p);
  }
  function done(state, count) {
    if (count === null) { delete box.dataset.count; } else { box.dataset.count = String(count); }
    box.dataset.loaded = state;
  }
})();
"#;

pub async fn status_page(State(state): State<Shared>, headers: HeaderMap, Query(q): Query<StatusQuery>) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let searched = !q.reference.is_empty() || !q.member_id.is_empty();
    let results = if searched {
        let query = format!(
            "reference={}&member_id={}&birth_date={}",
            urlencode(&q.reference),
            urlencode(&q.member_id),
            urlencode(&q.birth_date)
        );
        format!(
            r#"<div id="status-results-container" data-query="{}" data-loaded="false">
<div id="status-loading" class="spinner" role="status" aria-label="Loading results"></div></div>
<script>{STATUS_JS}</script>"#,
            esc(&query)
        )
    } else {
        String::new()
    };
    page(
        "Authorization Status",
        Some(&ctx),
        &format!(
            r#"<form id="status-form" method="get" action="/portal/status">
<fieldset><legend>Search by reference number</legend>
<label for="search-reference">Reference Number</label>
<input id="search-reference" name="reference" value="{r}" placeholder="SBX-00000000">
</fieldset>
<fieldset><legend>or by member</legend>
<label for="search-member-id">Member ID</label><input id="search-member-id" name="member_id" value="{m}">
<label for="search-birth-date">Date of Birth</label><input id="search-birth-date" name="birth_date" type="date" value="{b}">
</fieldset>
<div><button id="status-search-submit" type="submit">Search</button></div>
</form>
{results}"#,
            r = esc(&q.reference),
            m = esc(&q.member_id),
            b = esc(&q.birth_date),
        ),
    )
    .into_response()
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One row of the status search, as the page's JavaScript receives it.
#[derive(Serialize)]
pub struct StatusRow {
    reference: String,
    member: String,
    member_id: String,
    codes: String,
    service_start: String,
    service_end: String,
    status: &'static str,
    decision_date: Option<String>,
    auth_number: Option<String>,
    approved_units: Option<u32>,
    valid_from: Option<String>,
    valid_to: Option<String>,
    denial_reason: Option<String>,
    /// What a pended request waits for.
    information_requested: Option<String>,
}

#[derive(Serialize)]
pub struct StatusResults {
    results: Vec<StatusRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn row(r: &AuthRequest) -> StatusRow {
    StatusRow {
        reference: r.reference.clone(),
        member: format!("{} ({})", r.member_name, r.member_id),
        member_id: r.member_id.clone(),
        codes: r.codes().join(", "),
        service_start: date_us(Some(r.service_start)),
        service_end: date_us(Some(r.service_end)),
        status: r.status.label(),
        decision_date: r.decided_at.map(|d| d.format("%m/%d/%Y").to_string()),
        auth_number: r.auth_number.clone(),
        approved_units: r.approved_units_total(),
        valid_from: r.valid_from.map(|d| d.format("%m/%d/%Y").to_string()),
        valid_to: r.valid_to.map(|d| d.format("%m/%d/%Y").to_string()),
        denial_reason: r.denial.as_ref().map(|d| format!("{} - {}", d.code, d.text)),
        information_requested: r.information_requested.clone().filter(|_| r.status == Status::Pended),
    }
}

pub async fn status_json(State(state): State<Shared>, headers: HeaderMap, Query(q): Query<StatusQuery>) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(_) => {
            return (
                StatusCode::UNAUTHORIZED,
                Json(StatusResults {
                    results: vec![],
                    error: Some("Your session has ended. Please log in again.".into()),
                }),
            )
                .into_response()
        }
    };
    let failure = state.lock().take_search_failure();
    if let Some((how, delay_ms)) = failure {
        return failed_search(&state, how, delay_ms).await;
    }
    let inner = state.lock();
    let mine = |r: &&AuthRequest| r.provider_npi == ctx.provider_npi;
    let (results, error) = if !q.reference.trim().is_empty() {
        (
            inner
                .store
                .by_reference(&q.reference)
                .filter(mine)
                .map(row)
                .into_iter()
                .collect(),
            None,
        )
    } else {
        let member_id = q.member_id.trim().to_uppercase();
        let dob = NaiveDate::parse_from_str(q.birth_date.trim(), "%Y-%m-%d").ok();
        match state.config.member(&member_id) {
            Some(m) if Some(m.birth_date) == dob => {
                (inner.store.by_member(&member_id).filter(mine).map(row).collect(), None)
            }
            _ => (
                Vec::new(),
                Some("Enter a reference number, or a Member ID with the member's date of birth.".into()),
            ),
        }
    };
    Json(StatusResults { results, error }).into_response()
}

/// The answer of a status search failed by the `status_search_fail_next` hazard.
async fn failed_search(state: &Shared, how: SearchFailure, delay_ms: u64) -> Response {
    match how {
        SearchFailure::Http500 => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response(),
        SearchFailure::ErrorMessage => Json(StatusResults {
            results: vec![],
            error: Some(SEARCH_UNAVAILABLE.into()),
        })
        .into_response(),
        SearchFailure::Timeout => {
            // A hung search; it ends early only when the sandbox shuts down.
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(delay_ms)) => {}
                () = state.stopping.cancelled() => {}
            }
            (StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout").into_response()
        }
    }
}

#[derive(Deserialize)]
pub struct PageQuery {
    page: Option<usize>,
}

pub async fn worklist(State(state): State<Shared>, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let size = state.config.worklist_page_size;
    let (rows, total, page_no, pages) = {
        let inner = state.lock();
        let ids = inner.store.provider_ids(&ctx.provider_npi);
        let total = ids.len();
        let pages = total.div_ceil(size).max(1);
        let page_no = q.page.unwrap_or(1).clamp(1, pages);
        // Newest first: page 1 holds the last `size` ids.
        let end = total.saturating_sub((page_no - 1) * size);
        let start = end.saturating_sub(size);
        let rows: String = ids[start..end]
            .iter()
            .rev()
            .filter_map(|&id| inner.store.get(id))
            .map(|r| {
                format!(
                    r#"<tr data-reference="{re}"><td class="col-reference"><a href="/portal/requests/{re}" target="_blank" rel="noopener">{re}</a></td><td class="col-member">{m}</td><td class="col-member-id">{mi}</td><td class="col-codes">{c}</td><td class="col-service-start">{ss}</td><td class="col-service-end">{se}</td><td class="col-submitted">{s}</td><td class="col-status">{st}</td><td class="col-auth-number">{a}</td></tr>"#,
                    re = esc(&r.reference),
                    m = esc(&format!("{} ({})", r.member_name, r.member_id)),
                    mi = esc(&r.member_id),
                    c = esc(&r.codes().join(", ")),
                    ss = date_us(Some(r.service_start)),
                    se = date_us(Some(r.service_end)),
                    s = r.submitted_at.format("%m/%d/%Y"),
                    st = r.status.label(),
                    a = esc(r.auth_number.as_deref().unwrap_or("")),
                )
            })
            .collect();
        (rows, total, page_no, pages)
    };
    let prev = if page_no > 1 {
        format!(
            r#"<a id="worklist-prev" href="/portal/worklist?page={}">&laquo; Previous</a>"#,
            page_no - 1
        )
    } else {
        String::new()
    };
    let next = if page_no < pages {
        format!(
            r#"<a id="worklist-next" href="/portal/worklist?page={}">Next &raquo;</a>"#,
            page_no + 1
        )
    } else {
        String::new()
    };
    page(
        "Worklist",
        Some(&ctx),
        &format!(
            r#"<p id="worklist-count">{total} requests</p>
<table id="worklist-table"><tr><th>Reference</th><th>Member</th><th>Member ID</th><th>Codes</th><th>Service Start</th><th>Service End</th><th>Submitted</th><th>Status</th><th>Auth Number</th></tr>{rows}</table>
<div id="worklist-pager">{prev} <span id="worklist-page-info">Page {page_no} of {pages}</span> {next}</div>"#
        ),
    )
    .into_response()
}

pub async fn letter(State(state): State<Shared>, headers: HeaderMap, Path(reference): Path<String>) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let reference = reference.trim_end_matches(".pdf");
    let Some(r) = owned(&state, reference, &ctx.provider_npi).filter(|r| r.status.has_letter()) else {
        return not_found(Some(&ctx));
    };
    let pdf = crate::pdf::letter(&state.config.payer_name, &r);
    (
        [
            (header::CONTENT_TYPE, "application/pdf".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{}-letter.pdf\"", r.reference),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        pdf,
    )
        .into_response()
}
