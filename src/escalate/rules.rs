//! The escalation rules: which cases need a person, by when. Pure
//! functions of a case, its rule set and the time, so they are tested
//! without a clock or a database.

use std::collections::BTreeMap;

use crate::tz::Tz;
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc, Weekday};
use serde::Deserialize;
use serde_json::{json, Value};

use super::Reason;
use crate::case::{CaseRecord, CaseStatus, Urgency};
use crate::store::CaseForRules;

/// One layer of rule settings as written in `[escalations.rules]`,
/// `[escalations.plan_types.TYPE]`, `[escalations.states.XX]` or
/// `[escalations.payers.ID]`; unset keys fall
/// through to the layer below.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleLayer {
    /// An urgent request is stalled this many hours after submission (72).
    pub urgent_hours: Option<u32>,
    /// A standard request is stalled this many calendar days after
    /// submission, in the practice's time zone (7).
    pub standard_days: Option<u32>,
    /// Warn when this share of the window has passed (75).
    pub warn_at_percent: Option<u32>,
    /// Days after a denial to file an appeal; shown as the deadline (unset:
    /// none shown).
    pub appeal_days: Option<u32>,
    /// Escalate when the service is this many business days away (or
    /// fewer) and not approved (3).
    pub service_date_business_days: Option<u32>,
    /// Escalate when an approval or denial has no letter after this many
    /// hours (48).
    pub letter_missing_hours: Option<u32>,
    /// Remind every this many hours while nobody acknowledges (24).
    pub reminder_hours: Option<u32>,
    /// Reminders at a level before the escalation moves to the next (2).
    pub reminders_before_next_level: Option<u32>,
    /// A resolved escalation keeps the same case and reason quiet this long
    /// (24).
    pub repeat_window_hours: Option<u32>,
}

impl RuleLayer {
    /// Each bad value with its key (relative to the layer).
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut bad = Vec::new();
        let positive = [
            ("urgent_hours", self.urgent_hours),
            ("standard_days", self.standard_days),
            ("appeal_days", self.appeal_days),
            ("letter_missing_hours", self.letter_missing_hours),
            ("reminder_hours", self.reminder_hours),
        ];
        for (k, v) in positive {
            if v == Some(0) {
                bad.push((k, "must be at least 1".to_owned()));
            }
        }
        if let Some(p) = self.warn_at_percent {
            if !(1..=99).contains(&p) {
                bad.push(("warn_at_percent", format!("{p} must be between 1 and 99")));
            }
        }
        bad
    }

    fn apply(&self, r: &mut RuleSet) {
        macro_rules! take {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { r.$f = v; } )* };
        }
        take!(
            urgent_hours,
            standard_days,
            warn_at_percent,
            service_date_business_days,
            letter_missing_hours,
            reminder_hours,
            reminders_before_next_level,
            repeat_window_hours
        );
        if self.appeal_days.is_some() {
            r.appeal_days = self.appeal_days;
        }
    }
}

/// How much of the patient an escalation mail shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PatientDetails {
    /// Initials and the member ID's last four (the default).
    #[default]
    Minimum,
    /// Nothing about the patient: the case reference only.
    None,
    /// The full name and member ID (a practice's own mail system).
    Full,
}

impl std::str::FromStr for PatientDetails {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "minimum" => Ok(PatientDetails::Minimum),
            "none" => Ok(PatientDetails::None),
            "full" => Ok(PatientDetails::Full),
            o => Err(format!("`{o}` is not one of minimum, none, full")),
        }
    }
}

/// `[escalations]` of `precert.toml` or of a practice, compiled.
#[derive(Clone, Debug, Default)]
pub struct EscalationConfig {
    pub rules: RuleLayer,
    pub plan_types: BTreeMap<String, RuleLayer>,
    pub states: BTreeMap<String, RuleLayer>,
    pub payers: BTreeMap<String, RuleLayer>,
    pub patient_details: Option<PatientDetails>,
    /// A link to the case, with `{practice}`, `{case_ref}` and `{case_id}`
    /// filled in.
    pub case_link: Option<String>,
}

/// The rules for one case, every value decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub urgent_hours: u32,
    pub standard_days: u32,
    pub warn_at_percent: u32,
    pub appeal_days: Option<u32>,
    pub service_date_business_days: u32,
    pub letter_missing_hours: u32,
    pub reminder_hours: u32,
    pub reminders_before_next_level: u32,
    pub repeat_window_hours: u32,
}

/// CMS-0057-F: 72 hours for expedited (urgent) requests, 7 calendar days
/// for standard ones.
pub const DEFAULTS: RuleSet = RuleSet {
    urgent_hours: 72,
    standard_days: 7,
    warn_at_percent: 75,
    appeal_days: None,
    service_date_business_days: 3,
    letter_missing_hours: 48,
    reminder_hours: 24,
    reminders_before_next_level: 2,
    repeat_window_hours: 24,
};

/// What selects a case's rule overrides.
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleKey<'a> {
    pub payer: &'a str,
    /// The plan's two-letter state.
    pub state: &'a str,
    /// `commercial`, `medicare_advantage`, … (`PlanType::as_str`).
    pub plan_type: &'a str,
}

/// Layers, least specific first: precert.toml's rules, its plan-type,
/// state and payer overrides, then the practice's rules and its plan-type,
/// state and payer overrides.
pub fn rules_for(daemon: &EscalationConfig, practice: &EscalationConfig, key: &RuleKey<'_>) -> RuleSet {
    let mut r = DEFAULTS;
    for c in [daemon, practice] {
        c.rules.apply(&mut r);
        for (layers, name) in [
            (&c.plan_types, key.plan_type),
            (&c.states, key.state),
            (&c.payers, key.payer),
        ] {
            if let Some(l) = layers.get(name) {
                l.apply(&mut r);
            }
        }
    }
    r
}

/// The instant a local date and time names; in a DST gap the first valid
/// instant after it, in a fold the first of the two.
fn local_instant(tz: Tz, naive: NaiveDateTime) -> DateTime<Utc> {
    let mut t = naive;
    for _ in 0..4 {
        if let Some(dt) = tz.from_local_datetime(&t).earliest() {
            return dt.with_timezone(&Utc);
        }
        t += Duration::minutes(30);
    }
    Utc.from_utc_datetime(&naive)
}

/// When the payer must have decided: urgent requests a fixed number of
/// hours after submission; standard ones the same wall-clock time a number
/// of calendar days later in the practice's time zone (so a window that
/// spans a DST change is 167 or 169 hours long).
pub fn decision_deadline(submitted: DateTime<Utc>, urgency: Urgency, rules: &RuleSet, tz: Tz) -> DateTime<Utc> {
    match urgency {
        Urgency::Urgent => submitted + Duration::hours(rules.urgent_hours.into()),
        Urgency::Standard => {
            let local = submitted.with_timezone(&tz).naive_local();
            local_instant(tz, local + Duration::days(rules.standard_days.into()))
        }
    }
}

/// The warning time: `percent` of the way from submission to deadline.
pub fn warning_at(submitted: DateTime<Utc>, deadline: DateTime<Utc>, percent: u32) -> DateTime<Utc> {
    let window = (deadline - submitted).num_seconds();
    submitted + Duration::seconds(window * i64::from(percent) / 100)
}

/// Business days (Monday to Friday) after `today` up to and including
/// `day`: 0 for today or a day already past. Holidays are not known.
pub fn business_days_until(today: NaiveDate, day: NaiveDate) -> u32 {
    let mut n = 0;
    let mut d = today;
    while d < day {
        d = d.succ_opt().expect("a date before the end of time");
        if !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) {
            n += 1;
        }
    }
    n
}

/// The last day to appeal, as the end of that day in the practice's zone.
pub fn appeal_deadline(decided: DateTime<Utc>, days: u32, tz: Tz) -> DateTime<Utc> {
    let day = decided.with_timezone(&tz).date_naive() + Duration::days(days.into());
    local_instant(tz, day.and_hms_opt(23, 59, 59).expect("a valid time"))
}

/// What a rule found.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub reason: Reason,
    pub due_at: Option<DateTime<Utc>>,
    /// One line, no PHI.
    pub summary: String,
    pub detail: Value,
}

fn local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
}

fn days(d: Duration) -> f64 {
    (d.num_minutes() as f64 / (24.0 * 60.0) * 10.0).round() / 10.0
}

/// What the case's status calls for at once: a denial, a pend, a partial
/// approval, or automation that gave up (with `note`, its reason).
pub fn on_status(
    case: &CaseRecord,
    submitted: Option<DateTime<Utc>>,
    note: Option<&str>,
    rules: &RuleSet,
    tz: Tz,
    now: DateTime<Utc>,
) -> Option<Finding> {
    let mut found = on_status_only(case, note, rules, tz, now)?;
    if let (Some(s), Value::Object(detail)) = (submitted, &mut found.detail) {
        if let Value::Object(clock) = deadline_detail(s, case.data.urgency, rules, tz, now) {
            detail.extend(clock);
        }
    }
    Some(found)
}

/// Where the case stands against the payer's decision deadline.
pub fn deadline_detail(
    submitted: DateTime<Utc>,
    urgency: Urgency,
    rules: &RuleSet,
    tz: Tz,
    now: DateTime<Utc>,
) -> Value {
    let deadline = decision_deadline(submitted, urgency, rules, tz);
    let window = match urgency {
        Urgency::Urgent => format!("{} hours (urgent)", rules.urgent_hours),
        Urgency::Standard => format!("{} calendar days (standard)", rules.standard_days),
    };
    json!({
        "submitted_at": local(submitted, tz),
        "deadline": local(deadline, tz),
        "days_pending": days(now - submitted),
        "hours_pending": (now - submitted).num_hours(),
        "window": window,
        "window_days": days(deadline - submitted),
        "urgency": urgency.as_str(),
    })
}

fn on_status_only(
    case: &CaseRecord,
    note: Option<&str>,
    rules: &RuleSet,
    tz: Tz,
    now: DateTime<Utc>,
) -> Option<Finding> {
    let d = case.decision.as_ref();
    let reason_code = d.and_then(|d| d.denial.as_ref()).and_then(|r| r.code.clone());
    let reason_text = d
        .and_then(|d| {
            d.denial
                .as_ref()
                .map(|r| r.text.clone())
                .or_else(|| d.conditions.clone())
        })
        .or_else(|| note.map(str::to_owned));
    let payer_says = match (&reason_code, &reason_text) {
        (Some(c), Some(t)) => format!("{c}: {t}"),
        (None, Some(t)) => t.clone(),
        (Some(c), None) => c.clone(),
        (None, None) => "not recorded yet: see the payer's letter or portal".into(),
    };
    let key = case.key();
    match case.status {
        CaseStatus::Denied => {
            let decided = d.map(|d| d.decided_at);
            // A denial read from a status line has no reason yet: the next
            // poll reads it, and the mail should carry it. Escalate without
            // it only if it does not come within the hour.
            let reasonless = d.is_none_or(|d| d.denial.is_none());
            if reasonless && decided.is_none_or(|t| now - t < Duration::hours(1)) {
                return None;
            }
            let appeal = match (decided, rules.appeal_days) {
                (Some(at), Some(n)) => Some(appeal_deadline(at, n, tz)),
                _ => None,
            };
            let mut summary = format!("{key} denied ({})", reason_code.as_deref().unwrap_or("no code"));
            if let Some(a) = appeal {
                summary.push_str(&format!("; appeal by {}", a.with_timezone(&tz).format("%Y-%m-%d")));
            }
            Some(Finding {
                reason: Reason::Denied,
                due_at: appeal,
                summary,
                detail: json!({
                    "payer_reason": payer_says,
                    "reason_code": reason_code,
                    "decided_at": decided.map(|t| local(t, tz)),
                    "appeal_by": appeal.map(|a| a.with_timezone(&tz).format("%Y-%m-%d").to_string()),
                }),
            })
        }
        CaseStatus::PendedForInfo => Some(Finding {
            reason: Reason::PendedForInfo,
            due_at: None,
            summary: format!("{key}: the payer asked for more information"),
            detail: json!({ "payer_reason": payer_says }),
        }),
        CaseStatus::PartiallyApproved => {
            let short: Vec<String> = d
                .map(|d| {
                    d.lines
                        .iter()
                        .filter(|l| l.approved_units < l.requested_units)
                        .map(|l| {
                            format!(
                                "{}: {} of {} units",
                                l.code.as_str(),
                                l.approved_units,
                                l.requested_units
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(Finding {
                reason: Reason::PartiallyApproved,
                due_at: None,
                summary: format!("{key} partially approved"),
                detail: json!({ "payer_reason": payer_says, "short_lines": short }),
            })
        }
        CaseStatus::NeedsAttention => Some(Finding {
            reason: Reason::NeedsAttention,
            due_at: None,
            summary: format!("{key}: automation stopped; a person must look"),
            detail: json!({ "why": note.unwrap_or("see the case's events") }),
        }),
        _ => None,
    }
}

/// What time calls for: a decision deadline near or past, a service date
/// near without approval, a decision without its letter.
pub fn by_time(c: &CaseForRules, rules: &RuleSet, tz: Tz, letters_expected: bool, now: DateTime<Utc>) -> Vec<Finding> {
    let case = &c.case;
    let key = case.key();
    let mut found = Vec::new();
    if case.status == CaseStatus::Pending {
        if let Some(submitted) = c.submitted_at {
            let urgency = case.data.urgency;
            let deadline = decision_deadline(submitted, urgency, rules, tz);
            let warn = warning_at(submitted, deadline, rules.warn_at_percent);
            let detail = deadline_detail(submitted, urgency, rules, tz, now);
            let window = detail["window"].as_str().unwrap_or_default().to_owned();
            let pending = days(now - submitted);
            if now >= deadline {
                found.push(Finding {
                    reason: Reason::Stalled,
                    due_at: Some(deadline),
                    summary: format!("{key} pending {pending} days, past the payer's {window} deadline"),
                    detail,
                });
            } else if now >= warn {
                found.push(Finding {
                    reason: Reason::StallWarning,
                    due_at: Some(deadline),
                    summary: format!(
                        "{key} pending {pending} days of {window}; deadline {}",
                        local(deadline, tz)
                    ),
                    detail,
                });
            }
        }
    }
    let undecided = matches!(
        case.status,
        CaseStatus::New
            | CaseStatus::Required
            | CaseStatus::Ready
            | CaseStatus::Submitting
            | CaseStatus::Pending
            | CaseStatus::PendedForInfo
            | CaseStatus::NeedsAttention
    );
    if undecided {
        let today = now.with_timezone(&tz).date_naive();
        let service = case.data.service_dates.start;
        let left = business_days_until(today, service);
        if left <= rules.service_date_business_days {
            let when = if service < today {
                format!("was on {service}")
            } else if left == 0 {
                "is today".to_owned()
            } else {
                format!("is in {left} business day(s), on {service}")
            };
            found.push(Finding {
                reason: Reason::ServiceDateNear,
                due_at: Some(local_instant(tz, service.and_hms_opt(0, 0, 0).expect("midnight"))),
                summary: format!("{key}: the service {when}, not approved (case is {})", case.status),
                detail: json!({
                    "service_date": service.to_string(),
                    "business_days_left": left,
                    "status": case.status.as_str(),
                }),
            });
        }
    }
    let decided = matches!(
        case.status,
        CaseStatus::Approved | CaseStatus::PartiallyApproved | CaseStatus::Denied
    );
    if decided && letters_expected && !c.has_letter {
        if let Some(d) = &case.decision {
            let due = d.decided_at + Duration::hours(rules.letter_missing_hours.into());
            if now >= due {
                found.push(Finding {
                    reason: Reason::LetterMissing,
                    due_at: None,
                    summary: format!(
                        "{key} {}: no letter {} hours after the decision",
                        case.status, rules.letter_missing_hours
                    ),
                    detail: json!({ "decided_at": local(d.decided_at, tz), "hours": rules.letter_missing_hours }),
                });
            }
        }
    }
    found
}

/// The first local day from which the service date is `limit` business
/// days away or fewer (`business_days_until(day, service) <= limit`).
pub fn service_near_from(service: NaiveDate, limit: u32) -> NaiveDate {
    let (mut day, mut n) = (service, 0);
    loop {
        // Stepping back over `day` adds it to the days still to go.
        let add = u32::from(!matches!(day.weekday(), Weekday::Sat | Weekday::Sun));
        if n + add > limit {
            return day;
        }
        n += add;
        match day.pred_opt() {
            Some(d) => day = d,
            None => return day,
        }
    }
}

/// The next instant after `now` at which `by_time` or `on_status` could
/// find something they do not find now, for a case that does not change
/// meanwhile (a change schedules its own look). None: nothing can come due
/// until the case changes. The scan reads a case again only then.
pub fn next_check(
    c: &CaseForRules,
    rules: &RuleSet,
    tz: Tz,
    letters_expected: bool,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let case = &c.case;
    let mut times: Vec<DateTime<Utc>> = Vec::new();
    if case.status == CaseStatus::Pending {
        if let Some(submitted) = c.submitted_at {
            let deadline = decision_deadline(submitted, case.data.urgency, rules, tz);
            times.push(warning_at(submitted, deadline, rules.warn_at_percent));
            times.push(deadline);
        }
    }
    let undecided = matches!(
        case.status,
        CaseStatus::New
            | CaseStatus::Required
            | CaseStatus::Ready
            | CaseStatus::Submitting
            | CaseStatus::Pending
            | CaseStatus::PendedForInfo
            | CaseStatus::NeedsAttention
    );
    if undecided {
        let from = service_near_from(case.data.service_dates.start, rules.service_date_business_days);
        times.push(local_instant(tz, from.and_hms_opt(0, 0, 0).expect("midnight")));
    }
    let decided = matches!(
        case.status,
        CaseStatus::Approved | CaseStatus::PartiallyApproved | CaseStatus::Denied
    );
    if let (true, Some(d)) = (decided, &case.decision) {
        if letters_expected && !c.has_letter {
            times.push(d.decided_at + Duration::hours(rules.letter_missing_hours.into()));
        }
        // A denial without its reason waits an hour for it (`on_status`).
        if case.status == CaseStatus::Denied && d.denial.is_none() {
            times.push(d.decided_at + Duration::hours(1));
        }
    }
    times.into_iter().filter(|t| *t > now).min()
}
