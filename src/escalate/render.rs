//! Escalation and digest mail: subject, a plain-text part and an HTML part
//! carrying the same facts. Patient details are minimum-necessary unless
//! the practice says otherwise; a date of birth never appears. Text quoted
//! from a payer or a portal goes through `crate::scrub` first.

use crate::tz::Tz;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::rules::PatientDetails;
use super::Reason;
use crate::case::{CaseRecord, CaseStatus};
use crate::config::Practice;
use crate::files::safe_name;
use crate::mail::OutgoingMail;
use crate::scrub::{self, Reveal, Scrubber};
use crate::store::{Escalation, EscalationState, Step};

/// What a mail needs besides the escalation and case.
pub struct MailContext<'a> {
    pub practice: &'a Practice,
    pub patient_details: PatientDetails,
    /// The case link (template filled in), if any.
    pub link: Option<String>,
    /// Where people reach the console (`settings.console.public_url`).
    pub console: &'a str,
    /// The signed, single-use acknowledgement link and when it ends; none
    /// when the escalator has no link key.
    pub ack: Option<(String, DateTime<Utc>)>,
    /// The From address's domain, for Message-IDs.
    pub domain: &'a str,
    pub to: Vec<String>,
    pub cc: Vec<String>,
}

pub fn message_id(esc_id: i64, send: u32, practice: &str, domain: &str) -> String {
    format!("esc-{esc_id}-{send}.{}@{domain}", safe_name(practice))
}

/// Text for HTML: `&`, `<`, `>` and quotes escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Label/value rows rendered as aligned text and as an HTML table.
struct Facts(Vec<(&'static str, String)>);

impl Facts {
    fn push(&mut self, label: &'static str, value: impl Into<String>) {
        let v = value.into();
        if !v.is_empty() {
            self.0.push((label, v));
        }
    }

    fn text(&self) -> String {
        self.0
            .iter()
            .map(|(l, v)| format!("{:<15}{v}\n", format!("{l}:")))
            .collect()
    }

    fn html(&self) -> String {
        let rows: String = self
            .0
            .iter()
            .map(|(l, v)| {
                // The link is a link; every other value is text.
                let value = if *l == "Link" && (v.starts_with("https://") || v.starts_with("http://")) {
                    format!("<a href=\"{0}\">{0}</a>", escape(v))
                } else {
                    escape(v)
                };
                format!(
                    "<tr><th align=\"left\" valign=\"top\" style=\"padding:2px 12px 2px 0\">{}</th><td style=\"padding:2px 0\">{value}</td></tr>\n",
                    escape(l),
                )
            })
            .collect();
        format!("<table style=\"border-collapse:collapse\">\n{rows}</table>\n")
    }
}

fn patient_line(case: &CaseRecord, details: PatientDetails) -> String {
    let p = &case.data.patient;
    match details {
        PatientDetails::Minimum => format!("{}, member {}", p.name.initials(), p.member_id.masked()),
        PatientDetails::Full => format!("{}, member {}", p.name.expose_full(), p.member_id.expose()),
        PatientDetails::None => String::new(),
    }
}

fn service_line(case: &CaseRecord) -> String {
    let codes: Vec<String> = case
        .data
        .service_lines
        .iter()
        .map(|l| format!("{} x{}", l.code.as_str(), l.units))
        .collect();
    let d = case.data.service_dates;
    let dates = if d.start == d.end {
        d.start.to_string()
    } else {
        format!("{} to {}", d.start, d.end)
    };
    format!(
        "{} on {dates}, {}, {}",
        codes.join(", "),
        case.data.setting.as_str().replace('_', " "),
        case.data.urgency
    )
}

/// A number as people write it: 7, 1.5.
fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
        Some(f) => format!("{f}"),
        None => v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()),
    }
}

fn s<'a>(detail: &'a Value, key: &str) -> Option<&'a str> {
    detail.get(key).and_then(Value::as_str)
}

/// Free text from a payer or a failure (a reason, a pend request, a portal
/// error) may quote the patient in any form: it goes through the scrubber,
/// which shows the case's own patient as `details` says and masks birth
/// dates, other identifiers and the payer's spelling of names always.
fn scrub(text: &str, case: Option<&CaseRecord>, details: PatientDetails) -> String {
    match case {
        Some(c) => Scrubber::for_case(c, reveal(details)).scrub(text),
        None => Scrubber::new().scrub(text),
    }
}

fn reveal(details: PatientDetails) -> Reveal {
    match details {
        PatientDetails::Minimum => Reveal::Masked,
        PatientDetails::None => Reveal::Hidden,
        PatientDetails::Full => Reveal::Full,
    }
}

/// An escalation's one-line summary. precert writes it, but two kinds quote
/// the outside: a paused payer's quotes the failure that paused it (scrubbed
/// here again for escalations opened before `payer_alert` scrubbed it), and
/// a denial's the payer's reason code, which is scrubbed when it is not a
/// code's shape (a payer that put free text in its code field).
fn summary(esc: &Escalation) -> String {
    match esc.reason {
        Reason::PayerPaused => scrub::scrub(&esc.summary),
        Reason::Denied => match s(&esc.detail, "reason_code") {
            Some(code) if !scrub::code_shaped(code) => esc
                .summary
                .replace(&format!("({code})"), &format!("({})", scrub::scrub(code))),
            _ => esc.summary.clone(),
        },
        _ => esc.summary.clone(),
    }
}

/// The recommended next step for a reason.
pub fn next_step(reason: Reason, detail: &Value) -> String {
    match reason {
        Reason::Denied => match s(detail, "appeal_by") {
            Some(by) => format!(
                "Read the denial letter, then file an appeal by {by} or request a peer-to-peer review with the payer's medical reviewer."
            ),
            None => "Read the denial letter, then file an appeal or request a peer-to-peer review with the payer's medical reviewer.".into(),
        },
        Reason::PendedForInfo => {
            "Send the payer the information it asked for (clinical notes, imaging, therapy records) before its response deadline.".into()
        }
        Reason::PartiallyApproved => {
            "Check the units not approved; request a peer-to-peer review or resubmit the rest with more documentation.".into()
        }
        Reason::StallWarning => {
            "The payer has not decided yet: call its utilization management line to confirm the request is complete.".into()
        }
        Reason::Stalled => "The payer is past its decision deadline: call the payer, document the call, and escalate with the plan or the regulator if the delay goes on.".into(),
        Reason::ServiceDateNear => {
            "Call the payer to expedite the decision, or reschedule the service; do not perform it without approval.".into()
        }
        Reason::NeedsAttention => {
            "Open the case in the console (the link below): the portal's own message and a screenshot of the page are there. Fix what stopped automation, then submit the case again or set its status.".into()
        }
        Reason::LetterMissing => {
            "Download the letter from the payer's portal by hand, or check why the letters job did not fetch it.".into()
        }
        Reason::PayerPaused => {
            "Check the payer's portal (outage, changed layout, locked account); automation resumes by itself once a trial run succeeds.".into()
        }
        Reason::PracticeDisabled => "Fix the problems listed (`precert check` shows them with their lines), then reload the daemon (systemctl reload precert); the practice runs again and this escalation resolves.".into(),
    }
}

/// The mail for a practice left out because its configuration does not
/// check. Its recipients were fixed when it opened (the practice's own
/// operations contacts, or the daemon's `[mail] operations`); it carries
/// the file and the problems, which name keys and lines, never values.
pub fn practice_disabled_mail(esc: &Escalation, step: Step, domain: &str, now: DateTime<Utc>) -> Option<OutgoingMail> {
    let d = &esc.detail;
    let to: Vec<String> = d
        .get("recipients")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    if to.is_empty() {
        return None;
    }
    let prefix = match step {
        Step::First => String::new(),
        Step::Reminder(n) => format!("Reminder {n}: "),
        Step::NextLevel(_) => "Escalated (not acknowledged): ".to_owned(),
    };
    let subject = format!("{prefix}[precert] {}: {}", esc.reason.title(), esc.practice_id);
    let problems: Vec<&str> = d
        .get("problems")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut facts = Facts(Vec::new());
    facts.push("Practice", esc.practice_id.clone());
    if let Some(f) = s(d, "file") {
        facts.push("File", f.to_owned());
    }
    facts.push("Problems", problems.join("; "));
    facts.push("Next step", next_step(esc.reason, d));
    let opened = esc.opened_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let text = format!(
        "{}\n\n{}\nEscalation #{} ({}), opened {opened}. The other practices run.\n\n-- \nprecert. Sent {}.\n",
        esc.summary,
        facts.text(),
        esc.id,
        esc.reason.as_str(),
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body style=\"font-family:sans-serif\">\n<p><strong>{h}</strong></p>\n{table}<p>Escalation #{id} ({r}), opened {opened}. The other practices run.</p>\n</body></html>\n",
        t = escape(&subject),
        h = escape(&esc.summary),
        table = facts.html(),
        id = esc.id,
        r = escape(esc.reason.as_str()),
    );
    let send = esc.sends;
    Some(OutgoingMail {
        message_id: message_id(esc.id, send, &esc.practice_id, domain),
        in_reply_to: (send > 0).then(|| message_id(esc.id, 0, &esc.practice_id, domain)),
        to,
        cc: Vec::new(),
        subject,
        text,
        html,
    })
}

/// One escalation step's mail.
pub fn escalation_mail(
    esc: &Escalation,
    case: Option<&CaseRecord>,
    step: Step,
    ctx: &MailContext<'_>,
    now: DateTime<Utc>,
) -> OutgoingMail {
    let tz: Tz = ctx.practice.timezone;
    let d = &esc.detail;
    let what = match case {
        Some(c) => format!("case {}", c.data.case_ref),
        None => format!("payer {}", esc.payer.as_deref().unwrap_or("?")),
    };
    let mut subject = format!("[precert] {}: {} {what}", esc.reason.title(), ctx.practice.name);
    if let Some(p) = d.get("days_pending") {
        if matches!(esc.reason, Reason::Stalled | Reason::StallWarning) {
            subject.push_str(&format!(", pending {} of {} days", num(p), num(&d["window_days"])));
        }
    }
    if let Some(by) = s(d, "appeal_by") {
        subject.push_str(&format!(", appeal by {by}"));
    }
    let prefix = match step {
        Step::First => String::new(),
        Step::Reminder(n) => format!("Reminder {n}: "),
        Step::NextLevel(_) => "Escalated (not acknowledged): ".to_owned(),
    };
    let subject = format!("{prefix}{subject}");

    let mut facts = Facts(Vec::new());
    facts.push("Practice", ctx.practice.name.clone());
    if let Some(c) = case {
        facts.push("Case", format!("{} (precert #{})", c.key(), c.id));
        facts.push(
            "Payer",
            format!(
                "{} ({}, {})",
                c.data.coverage.payer,
                c.data.coverage.plan,
                c.data.coverage.state.as_str()
            ),
        );
        facts.push("Patient", patient_line(c, ctx.patient_details));
        facts.push("Service", service_line(c));
        facts.push("Status", c.status.as_str().replace('_', " "));
        if let Some(r) = &c.payer_ref {
            facts.push("Payer ref.", r.clone());
        }
        if let Some(auth) = c.decision.as_ref().and_then(|d| d.auth_number.clone()) {
            facts.push("Auth number", auth);
        }
    } else if let Some(p) = &esc.payer {
        facts.push("Payer", p.clone());
    }
    if let (Some(sub), Some(deadline)) = (s(d, "submitted_at"), s(d, "deadline")) {
        facts.push("Submitted", sub.to_owned());
        // Urgent windows are counted in hours, standard ones in days.
        let so_far = if s(d, "urgency") == Some("urgent") {
            num(&d["hours_pending"])
        } else {
            num(&d["days_pending"])
        };
        let label = match case.map(|c| c.status) {
            Some(CaseStatus::Pending | CaseStatus::PendedForInfo) | None => "Pending",
            Some(_) => "Decided after",
        };
        facts.push(
            label,
            format!(
                "{so_far} of {}; deadline {deadline}",
                s(d, "window").unwrap_or("the payer's window")
            ),
        );
    }
    if let Some(r) = s(d, "payer_reason") {
        facts.push("Reason", scrub(r, case, ctx.patient_details));
    }
    if let Some(lines) = d.get("short_lines").and_then(Value::as_array) {
        let l: Vec<&str> = lines.iter().filter_map(Value::as_str).collect();
        facts.push("Not approved", l.join("; "));
    }
    if let Some(w) = s(d, "why") {
        facts.push("Why", scrub(w, case, ctx.patient_details));
    }
    if let Some(by) = s(d, "appeal_by") {
        facts.push("Appeal by", by.to_owned());
    }
    if let Some(sd) = s(d, "service_date") {
        facts.push("Service date", sd.to_owned());
    }
    facts.push("Next step", next_step(esc.reason, d));
    if let Some(link) = &ctx.link {
        facts.push("Link", link.clone());
    }
    let opened = esc.opened_at.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z");
    let inbox = format!("{}/escalations", ctx.console);
    // How to acknowledge: the signed link (one click and a confirmation
    // after signing in), or the console's inbox.
    let (ack_text, ack_html) = match &ctx.ack {
        Some((url, until)) => {
            let until = until.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z");
            (
                format!(
                    "Acknowledge it to stop reminders (sign in, then confirm; the link works once, until {until}):\n    {url}\nor in the console's inbox: {inbox}"
                ),
                format!(
                    "<a href=\"{u}\">Acknowledge it</a> to stop reminders (sign in, then confirm; the link works once, until {until}), or in the console's <a href=\"{i}\">inbox</a>.",
                    u = escape(url),
                    i = escape(&inbox),
                    until = escape(&until.to_string()),
                ),
            )
        }
        None => (
            format!("Acknowledge it in the console's inbox to stop reminders:\n    {inbox}"),
            format!(
                "Acknowledge it in the console's <a href=\"{i}\">inbox</a> to stop reminders.",
                i = escape(&inbox)
            ),
        ),
    };
    let level_note = match step {
        Step::NextLevel(_) => {
            format!("Nobody acknowledged this escalation since {opened}; it now comes to you as the next level.\n")
        }
        Step::Reminder(n) => format!("Reminder {n}: this escalation, opened {opened}, is not acknowledged yet.\n"),
        Step::First => String::new(),
    };
    let head = summary(esc);
    let text = format!(
        "{head}\n\n{level_note}{}\nEscalation #{} ({}), opened {opened}. {ack_text}\n\n-- \nprecert, for {}. Sent {}.\n",
        facts.text(),
        esc.id,
        esc.reason.as_str(),
        ctx.practice.name,
        now.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z"),
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body style=\"font-family:sans-serif\">\n<p><strong>{h}</strong></p>\n{l}{table}<p>Escalation #{id} ({r}), opened {opened}. {ack_html}</p>\n<p style=\"color:#666\">precert, for {p}.</p>\n</body></html>\n",
        t = escape(&subject),
        h = escape(&head),
        l = if level_note.is_empty() {
            String::new()
        } else {
            format!("<p>{}</p>\n", escape(level_note.trim()))
        },
        table = facts.html(),
        id = esc.id,
        r = escape(esc.reason.as_str()),
        p = escape(&ctx.practice.name),
    );
    let send = esc.sends;
    OutgoingMail {
        message_id: message_id(esc.id, send, &esc.practice_id, ctx.domain),
        in_reply_to: (send > 0).then(|| message_id(esc.id, 0, &esc.practice_id, ctx.domain)),
        to: ctx.to.clone(),
        cc: ctx.cc.clone(),
        subject,
        text,
        html,
    }
}

/// The daily digest for one supervisor: open escalations grouped by
/// reason, the most urgent group first, and most urgent first within it.
pub fn digest_mail(
    practice: &Practice,
    escalations: &[Escalation],
    to: &str,
    slot: &str,
    now: DateTime<Utc>,
    domain: &str,
    console: &str,
) -> Option<OutgoingMail> {
    // Acknowledged ones have an owner: counted, not listed again each day.
    let acknowledged = escalations
        .iter()
        .filter(|e| e.state == EscalationState::Acknowledged)
        .count();
    let escalations: Vec<&Escalation> = escalations
        .iter()
        .filter(|e| e.state == EscalationState::Open)
        .collect();
    if escalations.is_empty() {
        return None;
    }
    let tz = practice.timezone;
    let mut sorted = escalations.clone();
    sorted.sort_by(|a, b| {
        b.reason
            .severity()
            .cmp(&a.reason.severity())
            .then(a.reason.cmp(&b.reason))
            .then(a.due_at.cmp(&b.due_at))
            .then(b.severity.cmp(&a.severity))
            .then(a.id.cmp(&b.id))
    });
    let mut groups: Vec<(Reason, Vec<&Escalation>)> = Vec::new();
    for e in sorted {
        match groups.last_mut() {
            Some((r, list)) if *r == e.reason => list.push(e),
            _ => groups.push((e.reason, vec![e])),
        }
    }
    let day = now.with_timezone(&tz).format("%Y-%m-%d");
    let subject = format!(
        "[precert] Daily digest for {}, {day}: {} open escalation(s)",
        practice.name,
        escalations.len()
    );
    let mut text = format!("{subject}\n\nMost urgent first.\n");
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body style=\"font-family:sans-serif\">\n<p><strong>{}</strong></p>\n<p>Most urgent first.</p>\n",
        escape(&subject),
        escape(&subject)
    );
    for (reason, list) in &groups {
        text.push_str(&format!("\n{} ({})\n", reason.title(), list.len()));
        html.push_str(&format!("<h3>{} ({})</h3>\n<ul>\n", escape(reason.title()), list.len()));
        for e in list {
            let due = e
                .due_at
                .map(|d| format!(" (due {})", d.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z")))
                .unwrap_or_default();
            let ack = if e.level > 0 { " [with the managers]" } else { "" };
            let summary = summary(e);
            text.push_str(&format!("  #{} {summary}{due}{ack}\n", e.id));
            html.push_str(&format!(
                "<li>#{} {}{}{}</li>\n",
                e.id,
                escape(&summary),
                escape(&due),
                escape(ack)
            ));
        }
        html.push_str("</ul>\n");
    }
    if acknowledged > 0 {
        let line = format!("{acknowledged} acknowledged escalation(s) are still open; the console's inbox shows them.");
        text.push_str(&format!("\n{line}\n"));
        html.push_str(&format!("<p>{}</p>\n", escape(&line)));
    }
    let inbox = format!("{console}/escalations");
    text.push_str(&format!("\nAcknowledge them in the console's inbox: {inbox}\n"));
    html.push_str(&format!(
        "<p>Acknowledge them in the console's <a href=\"{0}\">inbox</a>: {0}</p>\n</body></html>\n",
        escape(&inbox)
    ));
    Some(OutgoingMail {
        message_id: format!(
            "digest-{}-{}-{}@{domain}",
            safe_name(&practice.id),
            safe_name(slot),
            safe_name(to)
        ),
        in_reply_to: None,
        to: vec![to.to_owned()],
        cc: Vec::new(),
        subject,
        text,
        html,
    })
}
