//! The one-page request form: sections revealed by JavaScript, eligibility and
//! procedure suggestions by `fetch`, documents in an upload iframe, a `confirm()`
//! before it is sent.

use axum::extract::{Multipart, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, Json};
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::json;

use super::{active, date_us, frame, V3Ctx};
use crate::portal::esc;
use crate::portal::layout::LAYOUT_V1;
use crate::portal::service::{parse_service_form, validate, LINE_ROWS, REQUEST_TYPES, SETTINGS};
use crate::portal::wizard::read_files;
use crate::state::{random_token, Shared};
use crate::store::{Attachment, Channel, NewRequest};

/// The procedures the code search knows, besides the codes of the scenario rules.
const PROCEDURES: &[(&str, &str)] = &[
    ("0042T", "CT perfusion, brain"),
    ("27447", "Total knee arthroplasty"),
    ("29881", "Knee arthroscopy with meniscectomy"),
    ("70553", "MRI brain without and with contrast"),
    ("72141", "MRI cervical spine without contrast"),
    ("72148", "MRI lumbar spine without contrast"),
    ("73221", "MRI upper extremity joint without contrast"),
    ("73560", "X-ray knee, one or two views"),
    ("73721", "MRI lower extremity joint without contrast"),
    ("74177", "CT abdomen and pelvis with contrast"),
    ("97110", "Therapeutic exercise, each 15 minutes"),
    ("97140", "Manual therapy techniques, each 15 minutes"),
    ("E0470", "Bi-level respiratory assist device"),
    ("E0601", "Continuous positive airway pressure (CPAP) device"),
    ("K0001", "Standard wheelchair"),
];

/// At most this many suggestions are shown.
const SUGGESTIONS: usize = 8;

/// The procedure-code search: codes starting with the query, or whose
/// description contains it.
fn search(state: &Shared, q: &str) -> Vec<(String, String)> {
    let q = q.trim();
    if q.len() < 2 {
        return Vec::new();
    }
    let upper = q.to_uppercase();
    let lower = q.to_lowercase();
    let mut all: Vec<(String, String)> = PROCEDURES.iter().map(|(c, d)| (c.to_string(), d.to_string())).collect();
    for s in &state.config.scenarios {
        if let Some(code) = &s.code {
            if !all.iter().any(|(c, _)| c == code) {
                all.push((code.clone(), s.description.clone()));
            }
        }
    }
    all.sort();
    all.into_iter()
        .filter(|(c, d)| c.starts_with(&upper) || d.to_lowercase().contains(&lower))
        .take(SUGGESTIONS)
        .collect()
}

#[derive(Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
}

pub async fn procedures(State(state): State<Shared>, headers: HeaderMap, Query(q): Query<SearchQuery>) -> Response {
    if let Err(g) = active(&state, &headers) {
        return g.api();
    }
    let found: Vec<_> = search(&state, &q.q)
        .into_iter()
        .map(|(code, description)| json!({ "code": code, "description": description }))
        .collect();
    Json(json!({ "procedures": found })).into_response()
}

#[derive(Deserialize)]
pub struct EligibilityForm {
    #[serde(default)]
    member_id: String,
    #[serde(default)]
    birth_date: String,
}

/// The member a request may be filed for, or the portal's words why not.
fn eligible_member(state: &Shared, member_id: &str, birth_date: &str) -> Result<crate::config::Member, String> {
    let dob = NaiveDate::parse_from_str(birth_date.trim(), "%Y-%m-%d").ok();
    let Some(m) = state
        .config
        .member(&member_id.trim().to_uppercase())
        .filter(|m| Some(m.birth_date) == dob)
    else {
        return Err("Member not found or date of birth does not match.".into());
    };
    if !m.is_active_on(state.now().date_naive()) {
        return Err(match m.coverage_end {
            Some(end) => format!("Coverage for this member ended on {}.", date_us(end)),
            None => "Coverage for this member is not active yet.".into(),
        });
    }
    Ok(m.clone())
}

pub async fn eligibility(State(state): State<Shared>, headers: HeaderMap, Form(f): Form<EligibilityForm>) -> Response {
    if let Err(g) = active(&state, &headers) {
        return g.api();
    }
    let answer = match eligible_member(&state, &f.member_id, &f.birth_date) {
        Ok(m) => json!({
            "eligible": true,
            "message": format!("Eligible: {}, {}, group {}.", m.full_name(), m.plan, m.group_number),
        }),
        Err(why) => json!({ "eligible": false, "message": why }),
    };
    Json(answer).into_response()
}

/// Reveals the sections as they are completed, checks eligibility, offers
/// procedure codes a moment after typing stops, and asks before sending.
const FORM_JS: &str = r#"
(function () {
  var form = document.querySelector('form.request');
  function reveal(sel) { form.querySelector(sel).hidden = false; }
  var result = form.querySelector('.eligibility');
  form.querySelector('button.verify').addEventListener('click', function () {
    result.textContent = 'Checking eligibility...';
    delete result.dataset.result;
    var body = new URLSearchParams();
    body.set('member_id', form.elements.member_id.value);
    body.set('birth_date', form.elements.birth_date.value);
    fetch('/v3/api/eligibility', {method: 'POST', credentials: 'same-origin', body: body})
      .then(function (r) { if (!r.ok) { throw new Error('HTTP ' + r.status); } return r.json(); })
      .then(function (d) {
        result.textContent = d.message;
        result.dataset.result = d.eligible ? 'eligible' : 'ineligible';
        if (d.eligible) { reveal('section.service'); }
      })
      .catch(function (e) { result.textContent = 'The eligibility check failed: ' + e.message; result.dataset.result = 'error'; });
  });
  Array.prototype.forEach.call(form.querySelectorAll('.line'), function (line) {
    var search = line.querySelector('input.code-search');
    var code = line.querySelector('input.code');
    var list = line.querySelector('ul.suggestions');
    var timer = null;
    search.addEventListener('input', function () {
      code.value = '';
      list.innerHTML = '';
      clearTimeout(timer);
      var q = search.value.trim();
      if (q.length < 2) { return; }
      timer = setTimeout(function () {
        fetch('/v3/api/procedures?q=' + encodeURIComponent(q), {credentials: 'same-origin'})
          .then(function (r) { return r.json(); })
          .then(function (d) {
            if (search.value.trim() !== q) { return; }
            list.innerHTML = '';
            (d.procedures || []).forEach(function (p) {
              var li = document.createElement('li');
              li.setAttribute('role', 'option');
              li.dataset.code = p.code;
              li.textContent = p.code + ' \u2013 ' + p.description;
              li.addEventListener('click', function () {
                code.value = p.code;
                search.value = li.textContent;
                list.innerHTML = '';
                reveal('section.documents');
                reveal('section.sign');
              });
              list.appendChild(li);
            });
          });
      }, 400);
    });
  });
  form.querySelector('button.add-line').addEventListener('click', function () {
    var next = form.querySelector('.line[hidden]');
    if (next) { next.hidden = false; }
  });
  form.querySelector('button.send').addEventListener('click', function () {
    if (window.confirm('Send this request to Sandbox Health Plan? It cannot be changed once sent.')) { form.submit(); }
  });
})();
"#;

fn options(list: &[(&str, &str)]) -> String {
    let mut out = String::from(r#"<option value="">Choose…</option>"#);
    for (v, label) in list {
        out.push_str(&format!(r#"<option value="{v}">{label}</option>"#));
    }
    out
}

pub async fn form(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(g) => return g.page(),
    };
    // A new form: documents attached to an earlier, unsent one are dropped.
    let token = random_token();
    if let Some(s) = state.lock().v3_sessions.get_mut(&ctx.token) {
        s.attachments.clear();
        s.form_token = Some(token.clone());
    }
    let lines: String = (1..=LINE_ROWS)
        .map(|n| {
            format!(
                r#"<div class="line" data-line="{n}"{hidden}>
<label>Procedure {n} <input class="code-search" type="search" autocomplete="off" placeholder="Code or description"></label>
<input class="code" type="hidden" name="code_{n}" value="">
<ul class="suggestions" role="listbox"></ul>
<label>Units <input name="units_{n}" type="number" min="1"></label>
</div>"#,
                hidden = if n == 1 { "" } else { " hidden" },
            )
        })
        .collect();
    frame(
        "New request",
        Some(&ctx),
        &format!(
            r#"<form class="request" method="post" action="/v3/request">
<input type="hidden" name="form_token" value="{token}">
<section class="patient"><h2>Patient</h2>
<label>Member ID <input name="member_id" autocomplete="off"></label>
<label>Date of birth <input name="birth_date" type="date"></label>
<button type="button" class="verify">Check eligibility</button>
<p class="eligibility" role="status"></p>
</section>
<section class="service" hidden><h2>Service</h2>
<label>Type of request <select name="request_type">{types}</select></label>
<label>Urgency <select name="urgency"><option value="standard">Standard</option><option value="urgent">Urgent</option></select></label>
<label>Place of service <select name="setting">{settings}</select></label>
<div class="lines">{lines}</div>
<button type="button" class="add-line">Add another procedure</button>
<label>Diagnosis codes (ICD-10) <input name="diagnoses" placeholder="M17.11, M25.561"></label>
<label>Service from <input name="start_date" type="date"></label>
<label>Service through <input name="end_date" type="date"></label>
<label>Servicing provider NPI <input name="servicing_npi" maxlength="10"></label>
</section>
<section class="documents" hidden><h2>Documents</h2>
<iframe title="Upload documents" src="/v3/upload" width="100%" height="220" style="border:0"></iframe>
</section>
<section class="sign" hidden><h2>Send</h2>
<label><input type="checkbox" name="attestation" value="yes"> The information in this request is complete and supported by the medical record.</label>
<button type="button" class="send">Send request</button>
</section>
</form>
<script>{FORM_JS}</script>"#,
            types = options(REQUEST_TYPES),
            settings = options(SETTINGS),
        ),
    )
    .into_response()
}

/// The page of a request that was not sent, listing why.
fn not_sent(ctx: &V3Ctx, status: StatusCode, problems: &[String]) -> Response {
    let items: String = problems.iter().map(|p| format!("<li>{}</li>", esc(p))).collect();
    (
        status,
        frame(
            "Request not sent",
            Some(ctx),
            &format!(
                r#"<section><p class="problem" role="alert">The request was not sent.</p><ul class="problems">{items}</ul>
<p><a href="/v3/request">Start a new request</a></p></section>"#
            ),
        ),
    )
        .into_response()
}

pub async fn send(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(g) => return g.page(),
    };
    let value = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (member_id, birth_date, form_token) = (value("member_id"), value("birth_date"), value("form_token"));
    let service = parse_service_form(pairs);
    let mut problems = Vec::new();
    let member = eligible_member(&state, &member_id, &birth_date)
        .map_err(|e| problems.push(e))
        .ok();
    let valid = validate(&service, &LAYOUT_V1)
        .map_err(|errors| problems.extend(errors.into_iter().map(|(_, m)| m)))
        .ok();
    let (Some(member), Some(valid)) = (member, valid) else {
        return not_sent(&ctx, StatusCode::UNPROCESSABLE_ENTITY, &problems);
    };
    // The form's one-time token makes a second POST of it (a reload, a double
    // click) send nothing, and is taken in the same lock as the request is filed.
    let reference = {
        let mut inner = state.lock();
        let attachments: Vec<Attachment> = match inner.v3_sessions.get_mut(&ctx.token) {
            Some(s) if !form_token.is_empty() && s.form_token.as_deref() == Some(form_token.as_str()) => {
                s.form_token = None;
                std::mem::take(&mut s.attachments)
            }
            _ => {
                drop(inner);
                return not_sent(
                    &ctx,
                    StatusCode::CONFLICT,
                    &["This form was already sent, or it is out of date. Open New request to start again.".into()],
                );
            }
        };
        let now = chrono::Utc::now() + inner.clock_offset;
        let new = NewRequest {
            channel: Channel::Portal,
            submitted_by: ctx.username.clone(),
            provider_npi: ctx.npi.clone(),
            provider_name: ctx.org_name.clone(),
            member_name: member.full_name(),
            member_id: member.member_id,
            request_type: service.request_type,
            urgency: service.urgency,
            setting: service.setting,
            lines: valid.lines,
            diagnoses: valid.diagnoses,
            service_start: valid.start,
            service_end: valid.end,
            servicing_npi: service.servicing_npi.trim().to_string(),
            attachments,
            claim_identifier: None,
        };
        let (id, _) = inner.store.submit(new, now, &state.scenarios);
        inner.store.get(id).map(|r| r.reference.clone())
    };
    match reference {
        Some(r) => Redirect::to(&format!("/v3/requests/{r}?sent=1")).into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn upload_html(files: &[Attachment], error: &str) -> Html<String> {
    let items: String = files
        .iter()
        .map(|a| format!("<li>{} <small>({} bytes)</small></li>", esc(&a.file_name), a.size_bytes))
        .collect();
    let error = if error.is_empty() {
        String::new()
    } else {
        format!(r#"<p class="problem" role="alert">{}</p>"#, esc(error))
    };
    Html(format!(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Documents</title>
<style>body{{font-family:"Segoe UI",Roboto,sans-serif;font-size:14px;margin:0}} .problem{{color:#a33}}</style></head><body>
{error}<form class="upload" method="post" action="/v3/upload" enctype="multipart/form-data">
<label>Add a document <input type="file" name="file"></label>
<button type="submit">Attach</button>
</form>
<ul class="files" data-count="{count}">{items}</ul>
</body></html>"#,
        count = files.len(),
    ))
}

fn attachments(state: &Shared, ctx: &V3Ctx) -> Vec<Attachment> {
    state
        .lock()
        .v3_sessions
        .get(&ctx.token)
        .map(|s| s.attachments.clone())
        .unwrap_or_default()
}

pub async fn upload_frame(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match active(&state, &headers) {
        Ok(ctx) => upload_html(&attachments(&state, &ctx), "").into_response(),
        Err(g) => g.page(),
    }
}

pub async fn upload(State(state): State<Shared>, headers: HeaderMap, multipart: Multipart) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(g) => return g.page(),
    };
    let files = match read_files(multipart, state.now()).await {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, upload_html(&attachments(&state, &ctx), &e)).into_response(),
    };
    let error = if files.is_empty() { "Choose a file first." } else { "" };
    let list = {
        let mut inner = state.lock();
        match inner.v3_sessions.get_mut(&ctx.token) {
            Some(s) => {
                // A file attached again under the same name replaces the earlier one.
                s.attachments
                    .retain(|a| !files.iter().any(|f| f.file_name == a.file_name));
                s.attachments.extend(files);
                s.attachments.clone()
            }
            None => Vec::new(),
        }
    };
    upload_html(&list, error).into_response()
}
