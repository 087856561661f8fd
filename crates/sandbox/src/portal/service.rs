//! Wizard step 2: service details, and the checks behind its field messages.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use chrono::NaiveDate;

use super::layout::{layout, Layout};
use super::wizard::{steps, with_draft};
use super::{active, esc, page, Ctx};
use crate::codes;
use crate::state::{ServiceForm, Shared};

/// How many service-line rows the form offers.
pub const LINE_ROWS: usize = 5;

pub(super) const REQUEST_TYPES: &[(&str, &str)] = &[
    ("procedure", "Procedure / Surgery"),
    ("imaging", "Advanced Imaging"),
    ("dme", "Durable Medical Equipment"),
    ("therapy", "Therapy Services"),
    ("inpatient-admission", "Inpatient Admission"),
];

pub(super) const SETTINGS: &[(&str, &str)] = &[
    ("outpatient", "Outpatient Hospital"),
    ("inpatient", "Inpatient Hospital"),
    ("office", "Office"),
    ("asc", "Ambulatory Surgical Center"),
    ("home", "Home"),
];

type Errors = Vec<(String, String)>;

fn err_for(errors: &Errors, field: &str) -> String {
    errors
        .iter()
        .find(|(f, _)| f == field)
        .map(|(f, m)| {
            format!(
                r#"<span class="field-error" id="{f}-error" role="alert">{}</span>"#,
                esc(m)
            )
        })
        .unwrap_or_default()
}

fn options(list: &[(&str, &str)], selected: &str) -> String {
    let mut out = String::from(r#"<option value="">-- Select --</option>"#);
    for (v, label) in list {
        let sel = if *v == selected { " selected" } else { "" };
        out.push_str(&format!(r#"<option value="{v}"{sel}>{label}</option>"#));
    }
    out
}

fn service_form(ctx: &Ctx, f: &ServiceForm, errors: &Errors) -> Html<String> {
    let l = layout(ctx.layout);
    let mut rows = String::new();
    for i in 0..LINE_ROWS {
        let n = i + 1;
        let code_id = format!("{}{n}", l.code_prefix.0);
        let units_id = format!("{}{n}", l.units_prefix.0);
        rows.push_str(&format!(
            r#"<tr><td><label for="{code_id}">{cl} {n}</label><input id="{code_id}" name="code_{n}" value="{cv}" maxlength="5">{ce}</td>
<td><label for="{units_id}">{ul} {n}</label><input id="{units_id}" name="units_{n}" type="number" min="1" value="{uv}">{ue}</td></tr>"#,
            cl = l.code_prefix.1,
            ul = l.units_prefix.1,
            cv = esc(f.codes.get(i).map(String::as_str).unwrap_or("")),
            uv = esc(f.units.get(i).map(String::as_str).unwrap_or("")),
            ce = err_for(errors, &code_id),
            ue = err_for(errors, &units_id),
        ));
    }
    let summary = if errors.is_empty() {
        String::new()
    } else {
        r#"<div id="form-errors" class="alert" role="alert">Please correct the errors below.</div>"#.to_string()
    };
    let (urg_name, urg_std, urg_urg) = l.urgency;
    let checked = |v: &str| if f.urgency == v { " checked" } else { "" };
    page(
        "New Prior Authorization Request",
        Some(ctx),
        &format!(
            r#"{steps}{summary}
<form id="service-form" method="post" action="/portal/requests/new/service" novalidate>
<label for="{rt}">{rt_l}</label>
<select id="{rt}" name="request_type">{rt_opts}</select>{rt_e}
<fieldset id="{urg_name}-group"><legend>Urgency</legend>
<input type="radio" id="{urg_std}" name="urgency" value="standard"{c_std}><label for="{urg_std}" style="display:inline">Standard</label>
<input type="radio" id="{urg_urg}" name="urgency" value="urgent"{c_urg}><label for="{urg_urg}" style="display:inline">Urgent / Expedited</label>
{urg_e}</fieldset>
<label for="{st}">{st_l}</label>
<select id="{st}" name="setting">{st_opts}</select>{st_e}
<table id="service-lines"><tr><th>Procedure</th><th>Units</th></tr>{rows}</table>{lines_e}
<label for="{dx}">{dx_l}</label>
<input id="{dx}" name="diagnoses" value="{dx_v}" placeholder="M17.11, M25.561">{dx_e}
<label for="{sd}">{sd_l}</label>
<input id="{sd}" name="start_date" type="date" value="{sd_v}">{sd_e}
<label for="{ed}">{ed_l}</label>
<input id="{ed}" name="end_date" type="date" value="{ed_v}">{ed_e}
<label for="{npi}">{npi_l}</label>
<input id="{npi}" name="servicing_npi" value="{npi_v}" maxlength="10">{npi_e}
<div><input type="checkbox" id="{att}" name="attestation" value="yes"{att_c}><label for="{att}" style="display:inline">{att_l}</label>{att_e}</div>
<div><button id="{sub}" type="submit">{sub_l}</button></div>
</form>"#,
            steps = steps(2),
            rt = l.request_type.0,
            rt_l = l.request_type.1,
            rt_opts = options(REQUEST_TYPES, &f.request_type),
            rt_e = err_for(errors, l.request_type.0),
            c_std = checked("standard"),
            c_urg = checked("urgent"),
            urg_e = err_for(errors, urg_name),
            st = l.setting.0,
            st_l = l.setting.1,
            st_opts = options(SETTINGS, &f.setting),
            st_e = err_for(errors, l.setting.0),
            lines_e = err_for(errors, "service-lines"),
            dx = l.diagnoses.0,
            dx_l = l.diagnoses.1,
            dx_v = esc(&f.diagnoses),
            dx_e = err_for(errors, l.diagnoses.0),
            sd = l.start_date.0,
            sd_l = l.start_date.1,
            sd_v = esc(&f.start_date),
            sd_e = err_for(errors, l.start_date.0),
            ed = l.end_date.0,
            ed_l = l.end_date.1,
            ed_v = esc(&f.end_date),
            ed_e = err_for(errors, l.end_date.0),
            npi = l.servicing_npi.0,
            npi_l = l.servicing_npi.1,
            npi_v = esc(&f.servicing_npi),
            npi_e = err_for(errors, l.servicing_npi.0),
            att = l.attestation.0,
            att_l = l.attestation.1,
            att_c = if f.attestation { " checked" } else { "" },
            att_e = err_for(errors, l.attestation.0),
            sub = l.service_submit.0,
            sub_l = l.service_submit.1,
        ),
    )
}

/// Makes sure the member step is done; otherwise sends the user back to it.
fn draft_member(state: &Shared, ctx: &Ctx) -> Result<String, Response> {
    with_draft(state, &ctx.token, |d| d.member_id.clone())
        .flatten()
        .ok_or_else(|| Redirect::to("/portal/requests/new").into_response())
}

pub async fn service_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = draft_member(&state, &ctx) {
        return r;
    }
    let form = with_draft(&state, &ctx.token, |d| d.service.clone())
        .flatten()
        .unwrap_or_default();
    service_form(&ctx, &form, &Vec::new()).into_response()
}

/// The validated content of a service form.
pub struct ValidService {
    pub lines: Vec<(String, u32)>,
    pub diagnoses: Vec<String>,
    pub start: NaiveDate,
    pub end: NaiveDate,
}

/// Checks a service form; error keys are the element IDs of `layout`.
pub fn validate(f: &ServiceForm, l: &Layout) -> Result<ValidService, Errors> {
    let mut errors: Errors = Vec::new();
    if !REQUEST_TYPES.iter().any(|(v, _)| *v == f.request_type) {
        errors.push((l.request_type.0.into(), "Select a request type.".into()));
    }
    if f.urgency != "standard" && f.urgency != "urgent" {
        errors.push((l.urgency.0.into(), "Select an urgency.".into()));
    }
    if !SETTINGS.iter().any(|(v, _)| *v == f.setting) {
        errors.push((l.setting.0.into(), "Select a place of service.".into()));
    }
    let mut lines = Vec::new();
    for i in 0..LINE_ROWS {
        let n = i + 1;
        let code = f.codes.get(i).map(|c| c.trim()).unwrap_or("");
        let units = f.units.get(i).map(|u| u.trim()).unwrap_or("");
        let code_id = format!("{}{n}", l.code_prefix.0);
        let units_id = format!("{}{n}", l.units_prefix.0);
        if code.is_empty() {
            if !units.is_empty() {
                errors.push((code_id, "Enter a CPT/HCPCS code for these units.".into()));
            }
            continue;
        }
        if let Err(e) = codes::check_procedure(code) {
            errors.push((code_id, e));
        }
        match units.parse::<u32>() {
            Ok(u) if u >= 1 => lines.push((code.to_string(), u)),
            _ => errors.push((units_id, "Units must be a whole number of at least 1.".into())),
        }
    }
    if f.codes.iter().all(|c| c.trim().is_empty()) {
        errors.push((
            format!("{}1", l.code_prefix.0),
            "Enter at least one CPT/HCPCS code.".into(),
        ));
    }
    let diagnoses: Vec<String> = f
        .diagnoses
        .split([',', ' ', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if diagnoses.is_empty() {
        errors.push((l.diagnoses.0.into(), "Enter at least one ICD-10 diagnosis code.".into()));
    }
    let bad: Vec<String> = diagnoses.iter().filter_map(|d| codes::check_icd10(d).err()).collect();
    if !bad.is_empty() {
        errors.push((l.diagnoses.0.into(), bad.join(" ")));
    }
    let parse = |s: &str| NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok();
    let start = parse(&f.start_date);
    let end = parse(&f.end_date);
    if start.is_none() {
        errors.push((l.start_date.0.into(), "Enter a valid service start date.".into()));
    }
    if end.is_none() {
        errors.push((l.end_date.0.into(), "Enter a valid service end date.".into()));
    }
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            errors.push((
                l.end_date.0.into(),
                "The end date cannot be before the start date.".into(),
            ));
        }
    }
    if let Err(e) = codes::check_npi(f.servicing_npi.trim()) {
        errors.push((l.servicing_npi.0.into(), e));
    }
    if !f.attestation {
        errors.push((
            l.attestation.0.into(),
            "You must attest that the information is true and accurate.".into(),
        ));
    }
    match (errors.is_empty(), start, end) {
        (true, Some(start), Some(end)) => Ok(ValidService {
            lines,
            diagnoses,
            start,
            end,
        }),
        _ => Err(errors),
    }
}

pub(super) fn parse_service_form(pairs: Vec<(String, String)>) -> ServiceForm {
    let mut f = ServiceForm {
        codes: vec![String::new(); LINE_ROWS],
        units: vec![String::new(); LINE_ROWS],
        ..ServiceForm::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "request_type" => f.request_type = v,
            "urgency" => f.urgency = v,
            "setting" => f.setting = v,
            "diagnoses" => f.diagnoses = v.to_uppercase(),
            "start_date" => f.start_date = v,
            "end_date" => f.end_date = v,
            "servicing_npi" => f.servicing_npi = v,
            "attestation" => f.attestation = !v.is_empty(),
            k => {
                let row = |p: &str| {
                    k.strip_prefix(p)
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|n| (1..=LINE_ROWS).contains(n))
                };
                if let Some(n) = row("code_") {
                    f.codes[n - 1] = v.trim().to_uppercase();
                } else if let Some(n) = row("units_") {
                    f.units[n - 1] = v;
                }
            }
        }
    }
    f
}

pub async fn service_submit(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let ctx = match active(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = draft_member(&state, &ctx) {
        return r;
    }
    let form = parse_service_form(pairs);
    match validate(&form, layout(ctx.layout)) {
        Ok(_) => {
            with_draft(&state, &ctx.token, |d| d.service = Some(form));
            Redirect::to("/portal/requests/new/attachments").into_response()
        }
        Err(errors) => (StatusCode::UNPROCESSABLE_ENTITY, service_form(&ctx, &form, &errors)).into_response(),
    }
}
