//! Templates in playbooks: minijinja with strict undefined, so a typo in a
//! variable is an error, never an empty string typed into a portal.
//!
//! The context a step sees: `case`, `practice`, `payer`, `account`,
//! `secrets`, `vars` (set by earlier steps) and loop items. `case` holds
//! real PHI (the portal must receive it); it never goes to logs.

use std::collections::HashSet;
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{json, Value};

use crate::case::CaseRecord;

pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Values are typed into forms, not HTML: no escaping.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    // For `http` bodies written as one template: a value as JSON, quoted
    // and escaped (`"name": {{ case.patient.last_name | tojson }}`).
    env.add_filter("tojson", |v: minijinja::Value| {
        serde_json::to_string(&v)
            .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
    });
    env
}

/// Renders `source` against `ctx`. The error names the problem, not values.
pub fn render(env: &Environment<'_>, source: &str, ctx: &Value) -> Result<String, String> {
    if !source.contains("{{") && !source.contains("{%") {
        return Ok(source.to_owned());
    }
    env.render_str(source, minijinja::Value::from(minijinja::value::Serde(ctx)))
        .map_err(|e| {
            let mut msg = e.kind().to_string();
            if let Some(detail) = e.detail() {
                msg.push_str(": ");
                msg.push_str(detail);
            }
            msg
        })
}

/// The variables a template reads, as dotted paths (`case.patient.member_id`),
/// or why it does not parse.
pub fn variables(env: &Environment<'_>, source: &str) -> Result<HashSet<String>, String> {
    let t = env.template_from_str(source).map_err(|e| {
        let mut msg = e.kind().to_string();
        if let Some(detail) = e.detail() {
            msg.push_str(": ");
            msg.push_str(detail);
        }
        msg
    })?;
    Ok(t.undeclared_variables(true))
}

fn us_date(d: chrono::NaiveDate) -> String {
    d.format("%m/%d/%Y").to_string()
}

/// The `case` part of the context.
pub fn case_context(case: &CaseRecord, data_dir: &Path, payer_reference: Option<&str>) -> Value {
    let d = &case.data;
    let p = &d.patient;
    let provider = |pr: &crate::case::Provider| json!({ "name": pr.name, "npi": pr.npi.as_str(), "tax_id": pr.tax_id.as_str(), "location": pr.location });
    json!({
        "id": case.id,
        "ref": d.case_ref,
        "practice_id": d.practice_id,
        "patient": {
            "first_name": p.name.expose_given(),
            "last_name": p.name.expose_family(),
            "birth_date": p.birth_date.to_string(),
            "birth_date_us": us_date(p.birth_date),
            "member_id": p.member_id.expose(),
            "group_number": p.group_number.clone().unwrap_or_default(),
        },
        "coverage": {
            "payer": d.coverage.payer,
            "plan": d.coverage.plan,
            "plan_type": d.coverage.plan_type.as_str(),
            "state": d.coverage.state.as_str(),
        },
        "requesting_provider": provider(&d.requesting_provider),
        "servicing_provider": provider(&d.servicing_provider),
        "service_lines": d.service_lines.iter().map(|l| json!({
            "code": l.code.as_str(),
            "units": l.units,
            "modifiers": l.modifiers.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "diagnoses": d.diagnoses.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
        "service_start": d.service_dates.start.to_string(),
        "service_end": d.service_dates.end.to_string(),
        "service_start_us": us_date(d.service_dates.start),
        "service_end_us": us_date(d.service_dates.end),
        "setting": d.setting.as_str(),
        "urgency": d.urgency.as_str(),
        "attachments": d.attachments.iter().map(|a| json!({
            "file_name": a.file_name,
            "path": data_dir.join(&a.stored_path).display().to_string(),
            "media_type": a.media_type,
        })).collect::<Vec<_>>(),
        "payer_reference": payer_reference.unwrap_or_default(),
    })
}

/// A context with every key a real one has (placeholder values), for
/// checking the variables playbooks use.
pub fn sample_context() -> Value {
    use crate::case::*;
    use crate::phi::{MemberId, PersonName};
    let date = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date");
    let provider = Provider {
        name: "x".into(),
        npi: Npi::parse("1234567893").expect("valid"),
        tax_id: TaxId::parse("000000000").expect("valid"),
        location: "x".into(),
    };
    let case = CaseRecord {
        id: 0,
        status: CaseStatus::Ready,
        data: CaseData {
            practice_id: "x".into(),
            case_ref: "x".into(),
            patient: Patient {
                name: PersonName::parse("x", "x").expect("valid"),
                birth_date: date,
                member_id: MemberId::parse("x").expect("valid"),
                group_number: None,
            },
            coverage: Coverage {
                payer: "x".into(),
                plan: "x".into(),
                plan_type: PlanType::Other,
                state: UsState::parse("IL").expect("valid"),
            },
            requesting_provider: provider.clone(),
            servicing_provider: provider,
            service_lines: Vec::new(),
            diagnoses: Vec::new(),
            service_dates: DateRange { start: date, end: date },
            setting: Setting::Outpatient,
            urgency: Urgency::Standard,
            attachments: Vec::new(),
        },
        decision: None,
        payer_ref: None,
        created_at: chrono::DateTime::UNIX_EPOCH,
        updated_at: chrono::DateTime::UNIX_EPOCH,
    };
    json!({
        "case": case_context(&case, Path::new("/"), None),
        "practice": practice_context_sample(),
        "payer": { "id": "x", "name": "x", "base_url": "http://localhost" },
    })
}

fn practice_context_sample() -> Value {
    json!({ "id": "x", "name": "x", "npi": "x", "tax_id": "x", "timezone": "x" })
}

/// The `practice` part of the context.
pub fn practice_context(p: &crate::config::Practice) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "npi": p.npi.as_str(),
        "tax_id": p.tax_id.as_str(),
        "timezone": p.timezone.name(),
    })
}

/// Whether a dotted path exists in a context tree. List entries are not
/// looked into (an index is a runtime matter).
pub fn path_exists(ctx: &Value, path: &str) -> bool {
    let mut node = ctx;
    for part in path.split('.') {
        match node {
            Value::Object(m) => match m.get(part) {
                Some(next) => node = next,
                None => return false,
            },
            Value::Array(_) => return true,
            _ => return false,
        }
    }
    true
}
