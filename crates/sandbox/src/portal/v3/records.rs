//! The dashboard, the requests list (drawn by JavaScript from JSON), a request's page
//! (`dt`/`dd` and header cells, no IDs) and its letter (a viewer in a new tab).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{active, date_us, frame, not_found};
use crate::portal::esc;
use crate::state::Shared;
use crate::store::{AuthRequest, Status};

pub async fn dashboard(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(g) => return g.page(),
    };
    frame(
        "Dashboard",
        Some(&ctx),
        &format!(
            r#"<section><p>Signed in as {user}, working for {org}.</p>
<ul class="tiles"><li><a href="/v3/request">Start a new request</a></li><li><a href="/v3/requests">Your requests</a></li></ul></section>"#,
            user = esc(&ctx.username),
            org = esc(&ctx.org_name),
        ),
    )
    .into_response()
}

/// Draws the requests table from `/v3/api/requests`, a page of rows at a time.
/// `data-state` on the table: `loading`, then `ready` (rows, or the `.empty`
/// message) or `error` (the `.error` message, never `.empty`).
const LIST_JS: &str = r#"
(function () {
  var table = document.querySelector('table.grid');
  var body = table.tBodies[0];
  var size = Number(table.dataset.pageSize) || 25;
  var COLS = [['Reference', 'reference'], ['Patient', 'member'], ['Member ID', 'member_id'], ['Procedures', 'procedures'],
              ['From', 'from'], ['Through', 'through'], ['Status', 'status'], ['Authorization', 'auth']];
  var items = [], page = 0, seq = 0;
  function clearMessages() {
    Array.prototype.forEach.call(document.querySelectorAll('p.empty, p.error'), function (p) { p.remove(); });
  }
  function message(cls, text) {
    var p = document.createElement('p');
    p.className = cls;
    p.setAttribute('role', cls === 'error' ? 'alert' : 'status');
    p.textContent = text;
    table.parentNode.insertBefore(p, table.nextSibling);
  }
  function draw() {
    body.innerHTML = '';
    items.slice(page * size, page * size + size).forEach(function (it) {
      var tr = body.insertRow();
      tr.dataset.ref = it.reference;
      COLS.forEach(function (c) {
        var td = tr.insertCell();
        td.dataset.label = c[0];
        if (c[1] === 'reference') {
          var a = document.createElement('a');
          a.href = '/v3/requests/' + encodeURIComponent(it.reference);
          a.textContent = it.reference;
          td.appendChild(a);
        } else {
          td.textContent = it[c[1]] || '';
        }
      });
    });
    var pager = document.querySelector('.pager');
    pager.innerHTML = '';
    var pages = Math.max(1, Math.ceil(items.length / size));
    var info = document.createElement('span');
    info.textContent = 'Page ' + (page + 1) + ' of ' + pages;
    pager.appendChild(info);
    if (page + 1 < pages) {
      var next = document.createElement('button');
      next.type = 'button';
      next.className = 'next-page';
      next.textContent = 'Next page';
      next.addEventListener('click', function () { page += 1; draw(); });
      pager.appendChild(next);
    }
    clearMessages();
    if (items.length === 0) { message('empty', 'No requests found.'); }
  }
  function load() {
    var mine = ++seq;
    table.dataset.state = 'loading';
    body.innerHTML = '';
    clearMessages();
    var member = document.querySelector('form.filter input[name=member]').value.trim();
    fetch('/v3/api/requests' + (member ? '?member=' + encodeURIComponent(member) : ''),
          {credentials: 'same-origin', headers: {'Accept': 'application/json'}})
      .then(function (r) { if (!r.ok) { throw new Error('HTTP ' + r.status); } return r.json(); })
      .then(function (d) {
        if (mine !== seq) { return; }
        if (!d || !Array.isArray(d.items)) { throw new Error('unreadable answer'); }
        items = d.items; page = 0; draw();
        table.dataset.state = 'ready';
      })
      .catch(function (e) {
        if (mine !== seq) { return; }
        clearMessages();
        message('error', 'The list could not be loaded: ' + e.message);
        table.dataset.state = 'error';
      });
  }
  document.querySelector('form.filter').addEventListener('submit', function (e) { e.preventDefault(); load(); });
  load();
})();
"#;

pub async fn list_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(g) => return g.page(),
    };
    frame(
        "Your requests",
        Some(&ctx),
        &format!(
            r#"<section><form class="filter"><label>Member ID <input name="member" autocomplete="off"></label><button type="submit">Filter</button></form>
<table class="grid" data-state="loading" data-page-size="{size}"><thead><tr><th>Reference</th><th>Patient</th><th>Member ID</th><th>Procedures</th><th>From</th><th>Through</th><th>Status</th><th>Authorization</th></tr></thead><tbody></tbody></table>
<div class="pager"></div></section>
<script>{LIST_JS}</script>"#,
            size = state.config.worklist_page_size,
        ),
    )
    .into_response()
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    member: String,
}

pub async fn list_json(State(state): State<Shared>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(g) => return g.api(),
    };
    let member = q.member.trim().to_uppercase();
    let inner = state.lock();
    let items: Vec<_> = inner
        .store
        .provider_ids(&ctx.npi)
        .iter()
        .rev()
        .filter_map(|&id| inner.store.get(id))
        .filter(|r| member.is_empty() || r.member_id == member)
        .map(|r| {
            json!({
                "reference": r.reference,
                "member": r.member_name,
                "member_id": r.member_id,
                "procedures": r.codes().join(", "),
                "from": date_us(r.service_start),
                "through": date_us(r.service_end),
                "status": r.status.label(),
                "auth": r.auth_number.clone().unwrap_or_default(),
            })
        })
        .collect();
    Json(json!({ "items": items })).into_response()
}

fn owned(state: &Shared, reference: &str, npi: &str) -> Option<AuthRequest> {
    state
        .lock()
        .store
        .by_reference(reference)
        .filter(|r| r.provider_npi == npi)
        .cloned()
}

#[derive(Deserialize)]
pub struct DetailQuery {
    #[serde(default)]
    sent: Option<String>,
}

pub async fn detail(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(g) => return g.page(),
    };
    let Some(r) = owned(&state, &reference, &ctx.npi) else {
        return not_found(&ctx);
    };
    let day = |d: Option<chrono::NaiveDate>| d.map(date_us).unwrap_or_default();
    let banner = if q.sent.is_some() {
        r#"<p class="banner" role="status">Your request was received. Keep its reference for your records.</p>"#
    } else {
        ""
    };
    let facts = [
        ("Reference", r.reference.clone()),
        ("Status", r.status.label().to_string()),
        ("Patient", r.member_name.clone()),
        ("Member ID", r.member_id.clone()),
        ("Organisation", r.provider_name.clone()),
        ("Submitted", date_us(r.submitted_at.date_naive())),
        ("Service from", date_us(r.service_start)),
        ("Service through", date_us(r.service_end)),
        ("Authorization #", r.auth_number.clone().unwrap_or_default()),
        ("Valid from", day(r.valid_from)),
        ("Valid through", day(r.valid_to)),
        ("Decided on", day(r.decided_at.map(|t| t.date_naive()))),
        (
            "Reason",
            r.denial
                .as_ref()
                .map(|d| format!("{} - {}", d.code, d.text))
                .unwrap_or_default(),
        ),
        (
            "Information requested",
            r.information_requested
                .clone()
                .filter(|_| r.status == Status::Pended)
                .unwrap_or_default(),
        ),
    ];
    let facts: String = facts
        .iter()
        .map(|(k, v)| format!("<dt>{k}</dt><dd>{}</dd>", esc(v)))
        .collect();
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
    let files: String = if r.attachments.is_empty() {
        "<li>None</li>".into()
    } else {
        r.attachments
            .iter()
            .map(|a| format!("<li>{}</li>", esc(&a.file_name)))
            .collect()
    };
    let letter = if r.status.has_letter() {
        format!(
            r#"<p><a class="letter" href="/v3/requests/{}/letter" target="_blank" rel="noopener">Open decision letter</a></p>"#,
            esc(&r.reference)
        )
    } else {
        String::new()
    };
    frame(
        "Request",
        Some(&ctx),
        &format!(
            r#"{banner}<section><dl class="facts">{facts}</dl></section>
<section><h2>Procedures</h2><table class="lines"><tr><th>Procedure</th><th>Units requested</th><th>Units approved</th></tr>{lines}</table></section>
<section><h2>Documents</h2><ul class="documents">{files}</ul>{letter}</section>"#
        ),
    )
    .into_response()
}

/// The letter's own page, opened in a new tab from the request's page.
pub async fn letter_viewer(State(state): State<Shared>, headers: HeaderMap, Path(reference): Path<String>) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(g) => return g.page(),
    };
    let Some(r) = owned(&state, &reference, &ctx.npi).filter(|r| r.status.has_letter()) else {
        return not_found(&ctx);
    };
    frame(
        "Decision letter",
        Some(&ctx),
        &format!(
            r#"<section><p>The decision letter for request {re} ({status}).</p>
<p><a class="download" href="/v3/letters/{re}.pdf" download>Download the letter (PDF)</a></p></section>"#,
            re = esc(&r.reference),
            status = r.status.label(),
        ),
    )
    .into_response()
}

pub async fn letter_pdf(State(state): State<Shared>, headers: HeaderMap, Path(file): Path<String>) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(g) => return g.page(),
    };
    let reference = file.trim_end_matches(".pdf");
    let Some(r) = owned(&state, reference, &ctx.npi).filter(|r| r.status.has_letter()) else {
        return not_found(&ctx);
    };
    let pdf = crate::pdf::letter(&state.config.payer_name, &r);
    (
        [
            (header::CONTENT_TYPE, "application/pdf".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}-letter.pdf\"", r.reference),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        pdf,
    )
        .into_response()
}
