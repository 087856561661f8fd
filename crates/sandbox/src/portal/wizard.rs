//! The new-request wizard: member lookup → service details → attachments (in an iframe)
//! → review and submit (behind a JavaScript `confirm()`) → confirmation.

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use chrono::NaiveDate;
use serde::Deserialize;

use super::layout::{layout, Layout};
use super::service::validate;
use super::{active, esc, not_found, page, Ctx};
use crate::state::{Draft, Shared};
use crate::store::{Attachment, Channel, NewRequest};

pub(super) fn steps(current: usize) -> String {
    let names = ["Member", "Service", "Attachments", "Review"];
    let parts: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if i + 1 == current {
                format!("<strong>{}. {n}</strong>", i + 1)
            } else {
                format!("{}. {n}", i + 1)
            }
        })
        .collect();
    format!(
        r#"<div class="steps" id="wizard-steps">{}</div>"#,
        parts.join(" &rsaquo; ")
    )
}

pub(super) fn with_draft<T>(state: &Shared, token: &str, f: impl FnOnce(&mut Draft) -> T) -> Option<T> {
    let mut inner = state.lock();
    inner.sessions.get_mut(token).map(|s| f(&mut s.draft))
}

pub(super) fn date_us(d: NaiveDate) -> String {
    d.format("%m/%d/%Y").to_string()
}

// ---- Step 1: member lookup -------------------------------------------------------

fn member_form(ctx: &Ctx, member_id: &str, dob: &str, extra: &str) -> Html<String> {
    let l = layout(ctx.layout);
    page(
        "New Prior Authorization Request",
        Some(ctx),
        &format!(
            r#"{steps}
<form id="member-form" method="post" action="/portal/requests/new">
<label for="{mid}">{mid_l}</label>
<input id="{mid}" name="member_id" type="text" value="{member_id}" required>
<label for="{dob}">{dob_l}</label>
<input id="{dob}" name="birth_date" type="date" value="{dob_v}" required>
<div><button id="{lk}" type="submit">{lk_l}</button></div>
</form>
{extra}"#,
            steps = steps(1),
            mid = l.member_id.0,
            mid_l = l.member_id.1,
            dob = l.member_dob.0,
            dob_l = l.member_dob.1,
            lk = l.lookup.0,
            lk_l = l.lookup.1,
            member_id = esc(member_id),
            dob_v = esc(dob),
        ),
    )
}

pub async fn member_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    // Starting over discards any unfinished request.
    with_draft(&state, &ctx.token, |d| *d = Draft::default());
    member_form(&ctx, "", "", "").into_response()
}

#[derive(Deserialize)]
pub struct MemberForm {
    #[serde(default)]
    member_id: String,
    #[serde(default)]
    birth_date: String,
}

pub async fn member_lookup(State(state): State<Shared>, headers: HeaderMap, Form(f): Form<MemberForm>) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let l = layout(ctx.layout);
    let member_id = f.member_id.trim().to_uppercase();
    let error = |msg: &str| {
        member_form(
            &ctx,
            &f.member_id,
            &f.birth_date,
            &format!(
                r#"<div id="member-error" class="alert" role="alert">{}</div>"#,
                esc(msg)
            ),
        )
        .into_response()
    };
    let dob = NaiveDate::parse_from_str(f.birth_date.trim(), "%Y-%m-%d").ok();
    let Some(member) = state.config.member(&member_id).filter(|m| Some(m.birth_date) == dob) else {
        return error("No member was found with this Member ID and Date of Birth.");
    };
    let today = state.now().date_naive();
    if !member.is_active_on(today) {
        let ended = member
            .coverage_end
            .map(date_us)
            .unwrap_or_else(|| "a later date".into());
        with_draft(&state, &ctx.token, |d| d.member_id = None);
        return error(&format!(
            "Coverage for this member is not active (coverage terminated {ended}). A prior authorization request cannot be submitted."
        ));
    }
    with_draft(&state, &ctx.token, |d| {
        *d = Draft {
            member_id: Some(member.member_id.clone()),
            ..Draft::default()
        }
    });
    let panel = format!(
        r#"<section id="eligibility-result" class="notice">
<h2>Eligibility</h2>
<table><tr><th>Member</th><td id="eligibility-member-name">{name}</td></tr>
<tr><th>Member ID</th><td id="eligibility-member-id">{id}</td></tr>
<tr><th>Plan</th><td id="eligibility-plan">{plan}</td></tr>
<tr><th>Group</th><td id="eligibility-group">{group}</td></tr>
<tr><th>Coverage</th><td id="eligibility-status">Active</td></tr>
<tr><th>Effective</th><td id="eligibility-effective">{from}</td></tr></table>
<a class="button" id="{cont}" href="/portal/requests/new/service">{cont_l}</a>
</section>"#,
        name = esc(&member.full_name()),
        id = esc(&member.member_id),
        plan = esc(&member.plan),
        group = esc(&member.group_number),
        from = date_us(member.coverage_start),
        cont = l.continue_to_service.0,
        cont_l = l.continue_to_service.1,
    );
    member_form(&ctx, &member.member_id, &f.birth_date, &panel).into_response()
}

// ---- Step 3: attachments (iframe) --------------------------------------------------

pub async fn attachments_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let has_service = with_draft(&state, &ctx.token, |d| d.service.is_some()).unwrap_or(false);
    if !has_service {
        return Redirect::to("/portal/requests/new/service").into_response();
    }
    let l = layout(ctx.layout);
    page(
        "New Prior Authorization Request",
        Some(&ctx),
        &format!(
            r#"{steps}
<p>Attach clinical documentation (PDF, images or text, up to 10 MB each).</p>
<iframe id="{frame}" name="{frame}" title="Document upload" src="/portal/requests/new/upload" width="100%" height="260" style="border:1px solid #d4dbe3"></iframe>
<div><a class="button" id="{cont}" href="/portal/requests/new/review">{cont_l}</a></div>"#,
            steps = steps(3),
            frame = l.frame,
            cont = l.attachments_continue.0,
            cont_l = l.attachments_continue.1,
        ),
    )
    .into_response()
}

fn upload_frame_html(l: &Layout, attachments: &[Attachment], error: &str) -> Html<String> {
    let items: String = attachments
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                r#"<li id="attachment-{}">{} ({} bytes)</li>"#,
                i + 1,
                esc(&a.file_name),
                a.size_bytes
            )
        })
        .collect();
    let error = if error.is_empty() {
        String::new()
    } else {
        format!(
            r#"<div id="upload-error" class="alert" role="alert">{}</div>"#,
            esc(error)
        )
    };
    Html(format!(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Upload</title>
<style>body{{font-family:Arial,sans-serif;font-size:14px}} .alert{{color:#b3261e}}</style></head><body>
{error}<form id="upload-form" method="post" action="/portal/requests/new/upload" enctype="multipart/form-data">
<label for="{file}">{file_l}</label>
<input id="{file}" name="attachment" type="file">
<button id="{up}" type="submit">{up_l}</button>
</form>
<h3>Uploaded documents</h3>
<ul id="attachment-list" data-count="{count}">{items}</ul>
</body></html>"#,
        file = l.file.0,
        file_l = l.file.1,
        up = l.upload.0,
        up_l = l.upload.1,
        count = attachments.len(),
    ))
}

pub async fn upload_frame(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let list = with_draft(&state, &ctx.token, |d| d.attachments.clone()).unwrap_or_default();
    upload_frame_html(layout(ctx.layout), &list, "").into_response()
}

pub async fn upload(State(state): State<Shared>, headers: HeaderMap, multipart: Multipart) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let l = layout(ctx.layout);
    let now = state.now();
    let files = match read_files(multipart, now).await {
        Ok(f) => f,
        Err(e) => {
            let list = with_draft(&state, &ctx.token, |d| d.attachments.clone()).unwrap_or_default();
            return (StatusCode::BAD_REQUEST, upload_frame_html(l, &list, &e)).into_response();
        }
    };
    let error = if files.is_empty() {
        "Choose a file to upload."
    } else {
        ""
    };
    let list = with_draft(&state, &ctx.token, |d| {
        // A file uploaded again under the same name replaces the earlier
        // one, as many portals do.
        d.attachments
            .retain(|a| !files.iter().any(|f: &Attachment| f.file_name == a.file_name));
        d.attachments.extend(files);
        d.attachments.clone()
    })
    .unwrap_or_default();
    upload_frame_html(l, &list, error).into_response()
}

/// Reads every non-empty file part of a multipart body.
pub(crate) async fn read_files(
    mut multipart: Multipart,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Attachment>, String> {
    let mut out = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| format!("The upload could not be read: {e}"))?
    {
        let Some(name) = field.file_name().map(str::to_string) else {
            continue;
        };
        let content_type = field.content_type().unwrap_or("application/octet-stream").to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| format!("The upload could not be read: {e}"))?;
        if name.is_empty() || bytes.is_empty() {
            continue;
        }
        out.push(Attachment {
            file_name: name,
            content_type,
            size_bytes: bytes.len(),
            uploaded_at: now,
        });
    }
    Ok(out)
}

// ---- Step 4: review and submit -----------------------------------------------------

pub async fn review_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(draft) = with_draft(&state, &ctx.token, |d| d.clone()) else {
        return Redirect::to("/portal/login").into_response();
    };
    let (Some(member_id), Some(service)) = (draft.member_id, draft.service) else {
        return Redirect::to("/portal/requests/new").into_response();
    };
    let l = layout(ctx.layout);
    let Ok(valid) = validate(&service, l) else {
        return Redirect::to("/portal/requests/new/service").into_response();
    };
    let member = state.config.member(&member_id);
    let lines: String = valid
        .lines
        .iter()
        .map(|(c, u)| format!("<tr><td>{}</td><td>{u}</td></tr>", esc(c)))
        .collect();
    let files: String = if draft.attachments.is_empty() {
        "<li>None</li>".into()
    } else {
        draft
            .attachments
            .iter()
            .map(|a| format!("<li>{}</li>", esc(&a.file_name)))
            .collect()
    };
    page(
        "Review and Submit",
        Some(&ctx),
        &format!(
            r#"{steps}
<table id="review-summary">
<tr><th>Member</th><td id="review-member">{mname} ({mid})</td></tr>
<tr><th>Request type</th><td id="review-request-type">{rt}</td></tr>
<tr><th>Urgency</th><td id="review-urgency">{urg}</td></tr>
<tr><th>Place of service</th><td id="review-setting">{st}</td></tr>
<tr><th>Diagnoses</th><td id="review-diagnoses">{dx}</td></tr>
<tr><th>Service dates</th><td id="review-dates">{from} - {to}</td></tr>
<tr><th>Servicing NPI</th><td id="review-npi">{npi}</td></tr>
</table>
<table id="review-lines"><tr><th>Procedure</th><th>Units</th></tr>{lines}</table>
<h3>Attachments</h3><ul id="review-attachments">{files}</ul>
<form id="submit-form" method="post" action="/portal/requests/new/submit"
 onsubmit="return confirm('Submit this prior authorization request to Sandbox Health Plan? It cannot be changed after submission.');">
<button id="{sub}" type="submit">{sub_l}</button>
</form>"#,
            steps = steps(4),
            mname = esc(&member.map(|m| m.full_name()).unwrap_or_default()),
            mid = esc(&member_id),
            rt = esc(&service.request_type),
            urg = esc(&service.urgency),
            st = esc(&service.setting),
            dx = esc(&valid.diagnoses.join(", ")),
            from = date_us(valid.start),
            to = date_us(valid.end),
            npi = esc(&service.servicing_npi),
            sub = l.submit.0,
            sub_l = l.submit.1,
        ),
    )
    .into_response()
}

pub async fn submit(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    // Taking the draft makes a repeated POST (reload, double click) submit nothing twice.
    let Some(draft) = with_draft(&state, &ctx.token, std::mem::take) else {
        return Redirect::to("/portal/login").into_response();
    };
    let (Some(member_id), Some(service)) = (draft.member_id, draft.service) else {
        return Redirect::to("/portal/requests/new").into_response();
    };
    let Ok(valid) = validate(&service, layout(ctx.layout)) else {
        return Redirect::to("/portal/requests/new").into_response();
    };
    let member_name = state
        .config
        .member(&member_id)
        .map(|m| m.full_name())
        .unwrap_or_default();
    let new = NewRequest {
        channel: Channel::Portal,
        submitted_by: ctx.username.clone(),
        provider_npi: ctx.provider_npi.clone(),
        provider_name: ctx.provider_name.clone(),
        member_id,
        member_name,
        request_type: service.request_type,
        urgency: service.urgency,
        setting: service.setting,
        lines: valid.lines,
        diagnoses: valid.diagnoses,
        service_start: valid.start,
        service_end: valid.end,
        servicing_npi: service.servicing_npi.trim().to_string(),
        attachments: draft.attachments,
        claim_identifier: None,
    };
    // Decisions made while submitting show on the confirmation page; subscribers hear of
    // changes after submission only.
    let reference = {
        let mut inner = state.lock();
        let now = chrono::Utc::now() + inner.clock_offset;
        let (id, _) = inner.store.submit(new, now, &state.scenarios);
        inner.store.get(id).map(|r| r.reference.clone())
    };
    match reference {
        Some(r) => Redirect::to(&format!("/portal/requests/{r}/confirmation")).into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

pub async fn confirmation(State(state): State<Shared>, headers: HeaderMap, Path(reference): Path<String>) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let found = {
        let inner = state.lock();
        inner
            .store
            .by_reference(&reference)
            .filter(|r| r.provider_npi == ctx.provider_npi)
            .map(|r| (r.reference.clone(), r.status.label()))
    };
    let Some((reference, status)) = found else {
        return not_found(Some(&ctx));
    };
    page(
        "Request Submitted",
        Some(&ctx),
        &format!(
            r#"<div class="notice" id="confirmation-message">Your request has been received.</div>
<p>Reference number: <strong id="reference-number">{r}</strong></p>
<p>Current status: <span id="confirmation-status">{status}</span></p>
<p><a id="request-details-link" href="/portal/requests/{r}" target="_blank" rel="noopener">Request details</a></p>
<p><a id="new-request-link" href="/portal/requests/new">Submit another request</a></p>"#,
            r = esc(&reference),
        ),
    )
    .into_response()
}
