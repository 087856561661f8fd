//! Templates in playbooks: minijinja with strict undefined, so a typo in a
//! variable is an error, never an empty string typed into a portal.
//!
//! The context a step sees: `case`, `practice`, `payer`, `account`,
//! `secrets`, `vars` (set by earlier steps) and loop items. `case` holds
//! real PHI (the portal must receive it); it never goes to logs.

use std::collections::HashSet;
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{json, Map, Value};

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
///
/// Only the parts of the context the template reads are handed to
/// minijinja (see `scope`): a step inside a loop over a 1 000-row worklist
/// costs what its own row costs, not the whole worklist again.
pub fn render(env: &Environment<'_>, source: &str, ctx: &Value) -> Result<String, String> {
    if !source.contains("{{") && !source.contains("{%") {
        return Ok(source.to_owned());
    }
    let t = env.template_from_str(source).map_err(|e| describe(&e))?;
    let scope = scope(ctx, &t.undeclared_variables(true));
    t.render(minijinja::Value::from(minijinja::value::Serde(&scope)))
        .map_err(|e| describe(&e))
}

/// Evaluates one expression (`vars.items | length`) against `ctx`, reading
/// only what it names, as `render` does.
pub fn eval(env: &Environment<'_>, expr: &str, ctx: &Value) -> Result<minijinja::Value, String> {
    let x = env.compile_expression(expr).map_err(|e| describe(&e))?;
    let scope = scope(ctx, &x.undeclared_variables(true));
    x.eval(minijinja::Value::from(minijinja::value::Serde(&scope)))
        .map_err(|e| describe(&e))
}

fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.kind().to_string();
    if let Some(detail) = e.detail() {
        msg.push_str(": ");
        msg.push_str(detail);
    }
    msg
}

/// The part of `ctx` that a template reading `paths` (dotted, as
/// `undeclared_variables(true)` gives them: `row.status`, `case.patient`)
/// can see: each path's deepest existing node, copied. A path that is not
/// in the context is left out, so strict undefined still reports it.
pub fn scope(ctx: &Value, paths: &HashSet<String>) -> Value {
    let mut out = Map::new();
    for path in paths {
        let mut src = ctx;
        let mut dst = &mut out;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let Some(next) = src.as_object().and_then(|m| m.get(*part)) else {
                break;
            };
            if i + 1 == parts.len() || !next.is_object() {
                dst.insert((*part).to_owned(), next.clone());
                break;
            }
            let slot = dst
                .entry((*part).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            match slot {
                Value::Object(m) => dst = m,
                // Cannot happen (the source is an object here); nothing to add.
                _ => break,
            }
            src = next;
        }
    }
    Value::Object(out)
}

/// How many JSON values (objects, arrays and leaves) a context holds: the
/// work of handing it to a template.
pub fn size(v: &Value) -> usize {
    1 + match v {
        Value::Object(m) => m.values().map(size).sum(),
        Value::Array(a) => a.iter().map(size).sum(),
        _ => 0,
    }
}

/// The variables a template reads, as dotted paths (`case.patient.member_id`),
/// or why it does not parse.
pub fn variables(env: &Environment<'_>, source: &str) -> Result<HashSet<String>, String> {
    let t = env.template_from_str(source).map_err(|e| describe(&e))?;
    Ok(t.undeclared_variables(true))
}

/// A file name as a payer's upload form takes it: no folders, ASCII
/// letters, digits, spaces and `.-_()+,` (anything else becomes `_`),
/// no leading dot or dash, at most 120 characters with the extension
/// kept; `attachment` when nothing is left.
pub fn upload_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out = String::new();
    for c in base.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '(' | ')' | '+' | ',') {
            c
        } else if c.is_whitespace() {
            ' '
        } else {
            '_'
        };
        // Runs of spaces or underscores are one.
        if (c == ' ' || c == '_') && out.ends_with(c) {
            continue;
        }
        out.push(c);
    }
    let out = out.trim_start_matches(['.', '-', ' ']).trim_end();
    let (stem, ext) = match out.rfind('.') {
        Some(i) if i > 0 && out.len() - i <= 10 => (&out[..i], &out[i..]),
        _ => (out, ""),
    };
    let keep = 120usize.saturating_sub(ext.len());
    let stem: String = stem.chars().take(keep).collect();
    let stem = stem.trim_end();
    if stem.is_empty() || stem.chars().all(|c| c == '_') {
        return format!("attachment{ext}");
    }
    format!("{stem}{ext}")
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
            // The name the payer receives (the engine uploads under it).
            "upload_name": upload_name(&a.file_name),
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
            expected_amount: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn worklist_ctx(rows: usize) -> Value {
        let worklist: Vec<Value> = (0..rows)
            .map(|i| json!({ "reference": format!("SBX-{i}"), "status": "In Review", "auth_number": "" }))
            .collect();
        let mut ctx = sample_context();
        ctx["vars"] = json!({ "worklist": worklist, "portal_status": "Approved" });
        ctx["row"] = json!({ "reference": "SBX-7", "status": "Approved", "auth_number": "A1" });
        ctx["index"] = json!(8);
        ctx
    }

    /// What a step inside the worklist's loop hands the template does not
    /// grow with the worklist: rendering every row is linear in rows.
    #[test]
    fn a_step_in_a_row_loop_sees_only_its_row_whatever_the_worklist_size() {
        let env = environment();
        let t = env
            .template_from_str("{{ row.status }} {{ row.reference }} {{ index }}")
            .unwrap();
        let paths = t.undeclared_variables(true);
        let small = scope(&worklist_ctx(10), &paths);
        let big = scope(&worklist_ctx(1000), &paths);
        assert_eq!(size(&small), size(&big));
        assert!(size(&big) <= 6, "{big}");
        assert!(size(&worklist_ctx(1000)) > 4000);
        assert_eq!(
            render(
                &env,
                "{{ row.status }} {{ row.reference }} {{ index }}",
                &worklist_ctx(1000)
            )
            .unwrap(),
            "Approved SBX-7 8"
        );
    }

    #[test]
    fn narrowing_keeps_what_templates_read_and_strictness() {
        let env = environment();
        let ctx = worklist_ctx(3);
        // A whole subtree, a list's length, a loop over it, `set` locals.
        assert_eq!(render(&env, "{{ vars.worklist | length }}", &ctx).unwrap(), "3");
        assert_eq!(
            render(&env, "{% for r in vars.worklist %}{{ r.reference }};{% endfor %}", &ctx).unwrap(),
            "SBX-0;SBX-1;SBX-2;"
        );
        assert_eq!(
            render(
                &env,
                "{% set c = case.patient %}{{ c.first_name }}/{{ case.patient.last_name }}",
                &ctx
            )
            .unwrap(),
            "x/x"
        );
        assert_eq!(render(&env, "{{ case['id'] }}", &ctx).unwrap(), "0");
        assert_eq!(eval(&env, "vars.worklist | length", &ctx).unwrap().to_string(), "3");
        // A typo is still an error, never an empty string.
        assert!(render(&env, "{{ row.statuss }}", &ctx).is_err());
        assert!(render(&env, "{{ vars.nothing }}", &ctx).is_err());
        assert!(render(&env, "{{ nothing }}", &ctx).is_err());
        // Globals and filters are not context.
        assert_eq!(render(&env, "{{ range(3) | join(',') }}", &ctx).unwrap(), "0,1,2");
    }
}
