//! Reports: how each payer and practice is doing, and the evidence a
//! practice needs against a late payer (issue 14; `docs/reports.md` defines
//! every figure).
//!
//! The ledger gives each request's history folded out of the event log
//! (`store::CaseFacts`); this module turns those rows into figures as they
//! stream by, per practice and payer (and plan type, CPT code, setting or
//! state when asked). Durations are kept as seconds in one vector per group
//! and figure, so memory grows with requests, 8 bytes each, never with
//! events. Decision windows are the escalation rules' (`escalate::rules`):
//! the deadline a stall escalation recorded when one was raised (the rules
//! in force then), otherwise the configuration's for the request.
//!
//! - `late`: the late-decision evidence list and the events that prove it.
//! - `published`: what payers publish (`reports/published/PAYER-YEAR.toml`).
//! - `render`: the terminal table, CSV, and the printable evidence page.
//! - `chart`: the console's charts, as SVG written here.

pub mod chart;
pub mod late;
pub mod published;
pub mod render;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::tz::Tz;
use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

use crate::case::{CaseStatus, Urgency, Usd};
use crate::config::{Practice, Settings};
use crate::escalate::rules::{self, EscalationConfig, RuleKey, RuleLayer};
use crate::store::{CaseFacts, Ledger, ReportScope, StoreError};

pub use late::{LateRequest, ProofEvent};
pub use published::{Published, PublishedError};

/// What a report may be grouped by, beyond practice and payer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dimension {
    PlanType,
    /// The first service line's CPT/HCPCS code.
    Cpt,
    Setting,
    State,
}

impl Dimension {
    pub const ALL: [Dimension; 4] = [
        Dimension::PlanType,
        Dimension::Cpt,
        Dimension::Setting,
        Dimension::State,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::PlanType => "plan-type",
            Dimension::Cpt => "cpt",
            Dimension::Setting => "setting",
            Dimension::State => "state",
        }
    }

    fn of(self, f: &CaseFacts) -> &str {
        let v = match self {
            Dimension::PlanType => &f.plan_type,
            Dimension::Cpt => &f.cpt,
            Dimension::Setting => &f.setting,
            Dimension::State => &f.state,
        };
        v.as_deref().unwrap_or("(none)")
    }
}

impl std::str::FromStr for Dimension {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Dimension::ALL
            .into_iter()
            .find(|d| d.as_str() == s.trim() || d.as_str().replace('-', "_") == s.trim())
            .ok_or_else(|| format!("`{s}` is not one of: plan-type, cpt, setting, state"))
    }
}

/// A report to make.
#[derive(Clone, Debug)]
pub struct ReportQuery {
    pub scope: ReportScope,
    pub by: Option<Dimension>,
    /// Build the late-decision evidence list too (it reads each late
    /// request's events).
    pub late: bool,
}

/// A report: one set of figures per practice, payer (and group).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub as_of: DateTime<Utc>,
    pub practice: Option<String>,
    pub payer: Option<String>,
    pub by: Option<Dimension>,
    pub groups: Vec<Figures>,
    /// Requests decided past their window, or undecided past it at `as_of`
    /// (empty unless asked for).
    pub late: Vec<LateRequest>,
}

/// The figures of one practice and payer (and group).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    pub practice: String,
    pub payer: String,
    /// The `by` dimension's value, when grouped.
    pub group: Option<String>,
    /// Requests first submitted in the period.
    pub submitted: u64,
    /// Of those, decided by `as_of` (approved, partially approved, denied:
    /// the first decision counts).
    pub decided: u64,
    pub approved: u64,
    pub partially_approved: u64,
    pub denied: u64,
    /// Cancelled before any decision.
    pub cancelled: u64,
    /// Expired (the payer closed the request) before any decision.
    pub expired: u64,
    /// Neither decided, cancelled nor expired by `as_of`.
    pub open: u64,
    /// Of the open ones, pended for information at `as_of`.
    pub pended_now: u64,
    /// Of the open ones, waiting on a person (`needs_attention`) at `as_of`.
    pub attention_now: u64,
    /// Submitted more than once (before `as_of`).
    pub resubmitted: u64,
    /// Of the decided, those whose first decision was a denial or a partial
    /// approval and that the practice took back to the payer by `as_of`
    /// (a move from that decision to `ready`: an appeal, or a resubmission
    /// with what was missing).
    pub appealed: u64,
    /// Of the appealed, those a later decision granted more: a denial then
    /// approved in full or partly, a partial approval then approved in full.
    pub overturned: u64,
    /// `overturned / appealed`, percent.
    pub overturn_rate: Option<f64>,
    /// First decision an approval in full, with no pend before it and
    /// one submission.
    pub first_pass_approved: u64,
    /// `first_pass_approved / decided`, percent.
    pub first_pass_rate: Option<f64>,
    /// `(approved + partially_approved) / decided`, percent.
    pub approval_rate: Option<f64>,
    /// `denied / decided`, percent.
    pub denial_rate: Option<f64>,
    pub turnaround_urgent: Turnaround,
    pub turnaround_standard: Turnaround,
    pub window_urgent: WindowFigures,
    pub window_standard: WindowFigures,
    pub pends: PendFigures,
    /// Denials' reasons, most frequent first.
    pub denial_reasons: Vec<ReasonCount>,
    /// Decided requests with no decision letter kept by `as_of`.
    pub letters_missing: u64,
    /// Moves to `needs_attention` in the period, by reason (the kind of
    /// failure, without its message), most frequent first.
    pub needs_attention: Vec<ReasonCount>,
    /// The requests at risk at `as_of` and what they are expected to be
    /// worth.
    pub at_risk: AtRisk,
    /// Decided requests by days from submission to decision: bucket `i` is
    /// `[i, i+1)` days, the last is 8 days or more.
    pub turnaround_days: [u64; 9],
    /// Per calendar month of submission (practice's zone): decided and
    /// approved (in full or partly).
    pub months: Vec<MonthFigures>,
    /// What the payer published for the period's year, when a file has it.
    pub published: Option<Published>,
}

/// Submission to first decision, in seconds, for one urgency.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Turnaround {
    pub count: u64,
    /// The middle value (the mean of the two middle ones for an even count).
    pub median_seconds: Option<i64>,
    /// Nearest rank: the smallest value at least 90 % of them do not exceed.
    pub p90_seconds: Option<i64>,
    pub max_seconds: Option<i64>,
}

/// Decided inside the legal window, for one urgency.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WindowFigures {
    /// Requests whose window is over or that were decided: decided ones
    /// plus open ones past their deadline.
    pub due: u64,
    /// Decided at or before the deadline.
    pub within: u64,
    /// Decided after the deadline.
    pub late: u64,
    /// Still undecided at `as_of`, past the deadline.
    pub overdue_open: u64,
    /// `within / due`, percent.
    pub share_within: Option<f64>,
}

/// Pends for more information.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PendFigures {
    /// Requests pended at least once.
    pub requests: u64,
    pub episodes: u64,
    /// Episodes still open at `as_of`.
    pub open: u64,
    /// Closed episodes' length.
    pub median_seconds: Option<i64>,
    pub max_seconds: Option<i64>,
}

/// The value of services at risk: the requests, at `as_of`, whose first
/// decision was a denial that no later decision granted (in full or in
/// part), or that are undecided and pended for information or past their
/// decision window; and the sum of the expected amounts of those that carry
/// one (an optional intake field: a request without one is counted, never
/// taken as zero).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AtRisk {
    pub requests: u64,
    pub with_amount: u64,
    pub without_amount: u64,
    /// The sum over the `with_amount` requests, US dollars (`"5630.50"`);
    /// `None` (unknown, not zero) when none of them carries an amount.
    pub amount: Option<Usd>,
}

impl AtRisk {
    /// `$5,630.50 at risk (3 of 4 requests with an amount)`.
    pub fn summary(&self) -> String {
        match (self.requests, self.amount) {
            (0, _) => "nothing at risk".into(),
            (n, None) => format!("{n} request{} at risk, none with an amount", plural(n)),
            (n, Some(amount)) => format!(
                "{} at risk ({} of {n} request{} with an amount)",
                amount.dollars(),
                self.with_amount,
                plural(n)
            ),
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    pub code: Option<String>,
    pub text: String,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MonthFigures {
    /// `YYYY-MM`.
    pub month: String,
    pub submitted: u64,
    pub decided: u64,
    pub approved: u64,
}

/// A request's decision window as it applies to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    pub deadline: DateTime<Utc>,
    /// `72 hours (urgent)`, `7 calendar days (standard)`.
    pub rule: String,
    /// Where it comes from: the escalation that recorded it, or the
    /// configuration layer that set it.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The first instant of `day` in `tz` (a day that starts in a DST gap
/// starts at the gap's end).
pub fn start_of(day: chrono::NaiveDate, tz: Tz) -> DateTime<Utc> {
    use chrono::TimeZone;
    let mut t = day.and_time(chrono::NaiveTime::MIN);
    for _ in 0..4 {
        if let Some(dt) = tz.from_local_datetime(&t).earliest() {
            return dt.with_timezone(&Utc);
        }
        t += chrono::Duration::minutes(30);
    }
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// The practice's zone (UTC for a practice no longer configured).
pub fn practice_tz(settings: &Settings, practice: &str) -> Tz {
    settings.practice(practice).map_or(crate::tz::UTC, |p| p.timezone)
}

/// The window that applies to a request: the deadline a stall escalation
/// recorded for it (the rules in force when it was raised), else the
/// configured rules' (federal defaults, overridden by plan type, state and
/// payer in `precert.toml` and the practice's file).
pub fn window_for(settings: &Settings, f: &CaseFacts) -> Window {
    let practice = settings.practice(&f.practice_id);
    let tz = practice.map_or(crate::tz::UTC, |p| p.timezone);
    let empty = EscalationConfig::default();
    let key = RuleKey {
        payer: &f.payer,
        state: f.state.as_deref().unwrap_or_default(),
        plan_type: f.plan_type.as_deref().unwrap_or_default(),
    };
    let set = rules::rules_for(&settings.escalations, practice.map_or(&empty, |p| &p.escalations), &key);
    let rule = match f.urgency {
        Urgency::Urgent => format!("{} hours (urgent)", set.urgent_hours),
        Urgency::Standard => format!("{} calendar days (standard)", set.standard_days),
    };
    if let Some((deadline, wording)) = &f.recorded_deadline {
        return Window {
            deadline: *deadline,
            rule: wording.clone().unwrap_or(rule),
            source: "recorded by the request's stall escalation".into(),
        };
    }
    Window {
        deadline: rules::decision_deadline(f.submitted_at, f.urgency, &set, tz),
        rule,
        source: rule_source(settings, practice, &key, f.urgency),
    }
}

/// Which configuration layer set the window's length.
fn rule_source(settings: &Settings, practice: Option<&Practice>, key: &RuleKey<'_>, urgency: Urgency) -> String {
    let sets = |l: &RuleLayer| match urgency {
        Urgency::Urgent => l.urgent_hours.is_some(),
        Urgency::Standard => l.standard_days.is_some(),
    };
    let mut source = "federal default (CMS-0057-F)".to_owned();
    let mut files = vec![(settings.source.clone(), &settings.escalations)];
    if let Some(p) = practice {
        files.push((p.source.clone(), &p.escalations));
    }
    for (file, c) in files {
        let file = file.file_name().map(PathBuf::from).unwrap_or(file);
        if sets(&c.rules) {
            source = format!("{}: [escalations.rules]", file.display());
        }
        for (name, layers, value) in [
            ("plan_types", &c.plan_types, key.plan_type),
            ("states", &c.states, key.state),
            ("payers", &c.payers, key.payer),
        ] {
            if layers.get(value).is_some_and(sets) {
                source = format!("{}: [escalations.{name}.{value}]", file.display());
            }
        }
    }
    source
}

/// Practice, payer, state, plan type.
/// Values kept by a few of a row's text fields, found as rows stream by
/// without building an owned key a row (100 000 rows, a handful of
/// distinct keys): by the fields' hash, then compared.
struct ByFields<V> {
    hasher: std::hash::RandomState,
    slots: HashMap<u64, Vec<usize>>,
    entries: Vec<(Vec<Option<String>>, V)>,
}

impl<V> ByFields<V> {
    fn new() -> Self {
        ByFields {
            hasher: std::hash::RandomState::new(),
            slots: HashMap::new(),
            entries: Vec::new(),
        }
    }

    /// The entry's index for `fields`, made by `make` the first time.
    fn index(&mut self, fields: &[Option<&str>], make: impl FnOnce() -> V) -> usize {
        use std::hash::BuildHasher as _;
        let hash = self.hasher.hash_one(fields);
        let slot = self.slots.entry(hash).or_default();
        let same = |k: &Vec<Option<String>>| k.iter().map(Option::as_deref).eq(fields.iter().copied());
        if let Some(&i) = slot.iter().find(|&&i| same(&self.entries[i].0)) {
            return i;
        }
        slot.push(self.entries.len());
        let key = fields.iter().map(|f| f.map(str::to_owned)).collect();
        self.entries.push((key, make()));
        self.entries.len() - 1
    }

    fn get_mut(&mut self, i: usize) -> &mut V {
        &mut self.entries[i].1
    }
}

/// Decision deadlines while rows stream by: the rules that apply to a
/// practice, payer, state and plan type are worked out once (not once a
/// request), and the window's wording and source only for late requests.
struct Deadlines<'a> {
    settings: &'a Settings,
    /// By practice, payer, state and plan type.
    rules: ByFields<(rules::RuleSet, Tz)>,
}

impl<'a> Deadlines<'a> {
    fn new(settings: &'a Settings) -> Self {
        Deadlines {
            settings,
            rules: ByFields::new(),
        }
    }

    /// `window_for(…).deadline`, the same instant.
    fn deadline(&mut self, f: &CaseFacts) -> DateTime<Utc> {
        if let Some((deadline, _)) = &f.recorded_deadline {
            return *deadline;
        }
        let key = [
            Some(f.practice_id.as_str()),
            Some(f.payer.as_str()),
            f.state.as_deref(),
            f.plan_type.as_deref(),
        ];
        let settings = self.settings;
        let i = self.rules.index(&key, || {
            let practice = settings.practice(&f.practice_id);
            let empty = EscalationConfig::default();
            let key = RuleKey {
                payer: &f.payer,
                state: f.state.as_deref().unwrap_or_default(),
                plan_type: f.plan_type.as_deref().unwrap_or_default(),
            };
            let set = rules::rules_for(&settings.escalations, practice.map_or(&empty, |p| &p.escalations), &key);
            (set, practice.map_or(crate::tz::UTC, |p| p.timezone))
        });
        let (set, tz) = self.rules.get_mut(i);
        rules::decision_deadline(f.submitted_at, f.urgency, set, *tz)
    }
}

/// A group's figures while rows stream by.
#[derive(Default)]
struct Acc {
    f: Figures,
    urgent: Vec<i64>,
    standard: Vec<i64>,
    pends: Vec<i64>,
    /// By code (or text, for a reason without one): the code, a text, the
    /// count.
    reasons: HashMap<String, (Option<String>, Option<String>, u64)>,
    attention: HashMap<String, u64>,
    /// By (year, month) of submission in the practice's zone.
    months: BTreeMap<(i32, u32), MonthFigures>,
}

/// Makes the report: figures from the ledger's history, windows from
/// `settings`, published figures beside them.
pub async fn build(
    ledger: &Ledger,
    settings: &Settings,
    published: &[Published],
    q: &ReportQuery,
) -> Result<Report, ReportError> {
    let scope = &q.scope;
    // By practice, payer and group (`q.by`'s value).
    let mut groups: ByFields<Acc> = ByFields::new();
    // Requests pended at least once: their group, to place pend episodes.
    let mut pended: HashMap<i64, usize> = HashMap::new();
    let mut late_ids: Vec<(i64, Window)> = Vec::new();
    let mut case_groups: HashMap<i64, usize> = HashMap::new();
    // The case's details are read when grouping by one, or when a rule
    // layer is keyed by plan type or state (the window depends on them).
    let keyed = |c: &EscalationConfig| !c.plan_types.is_empty() || !c.states.is_empty();
    let details =
        q.by.is_some() || keyed(&settings.escalations) || settings.practices.iter().any(|p| keyed(&p.escalations));
    let mut deadlines = Deadlines::new(settings);
    let mut zones: HashMap<String, Tz> = HashMap::new();
    ledger
        .report_cases(scope, details, |f| {
            let group = groups.index(
                &[Some(&f.practice_id), Some(&f.payer), q.by.map(|d| d.of(&f))],
                Acc::default,
            );
            let deadline = deadlines.deadline(&f);
            let tz = match zones.get(f.practice_id.as_str()) {
                Some(tz) => *tz,
                None => *zones
                    .entry(f.practice_id.clone())
                    .or_insert_with(|| practice_tz(settings, &f.practice_id)),
            };
            if f.pends > 0 {
                pended.insert(f.id, group);
            }
            // Grouped, a needs-attention move is placed by its request's
            // group; ungrouped, by its practice and payer alone.
            if q.by.is_some() {
                case_groups.insert(f.id, group);
            }
            if add(groups.get_mut(group), &f, deadline, scope.as_of, tz) && q.late {
                late_ids.push((f.id, window_for(settings, &f)));
            }
        })
        .await?;
    // (Read after the requests, not beside them: three SQLite readers at
    // once on two cores took longer than one after another, bench-report.)
    for p in ledger.report_pends(scope).await? {
        let Some(&group) = pended.get(&p.case_id) else { continue };
        let acc = groups.get_mut(group);
        acc.f.pends.episodes += 1;
        match p.end {
            Some(end) => acc.pends.push((end - p.start).num_seconds()),
            None => acc.f.pends.open += 1,
        }
    }
    for a in ledger.report_attention(scope).await? {
        let group = match (q.by, case_groups.get(&a.case_id)) {
            (Some(_), Some(&group)) => group,
            (None, _) => groups.index(&[Some(&a.practice_id), Some(&a.payer), None], Acc::default),
            // Grouped: a move of a request not submitted in the period has
            // no group of its own; it is counted under "(not in period)".
            (Some(_), None) => groups.index(
                &[Some(&a.practice_id), Some(&a.payer), Some("(not in period)")],
                Acc::default,
            ),
        };
        let acc = groups.get_mut(group);
        *acc.attention.entry(attention_reason(a.note.as_deref())).or_default() += 1;
    }
    let year = scope.from.year();
    // In (practice, payer, group) order.
    let mut groups = groups.entries;
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(groups.len());
    for (key, acc) in groups {
        let [practice, payer, group]: [Option<String>; 3] = key.try_into().expect("three fields a group");
        let mut f = finish(acc);
        f.practice = practice.expect("a practice");
        f.payer = payer.expect("a payer");
        f.group = group;
        f.published = published::for_payer(published, &f.payer, year).cloned();
        out.push(f);
    }
    let late = if q.late {
        late::evidence(ledger, scope, late_ids).await?
    } else {
        Vec::new()
    };
    Ok(Report {
        from: scope.from,
        to: scope.to,
        as_of: scope.as_of,
        practice: scope.practice.clone(),
        payer: scope.payer.clone(),
        by: q.by,
        groups: out,
        late,
    })
}

/// Counts one request; true when it was decided late or is undecided past
/// its deadline.
fn add(acc: &mut Acc, f: &CaseFacts, deadline: DateTime<Utc>, as_of: DateTime<Utc>, tz: Tz) -> bool {
    let g = &mut acc.f;
    g.submitted += 1;
    let local = f.submitted_at.with_timezone(&tz);
    let m = acc
        .months
        .entry((local.year(), local.month()))
        .or_insert_with(|| MonthFigures {
            month: local.format("%Y-%m").to_string(),
            submitted: 0,
            decided: 0,
            approved: 0,
        });
    m.submitted += 1;
    if f.submissions > 1 {
        g.resubmitted += 1;
    }
    if f.pends > 0 {
        g.pends.requests += 1;
    }
    let (durations, win) = match f.urgency {
        Urgency::Urgent => (&mut acc.urgent, &mut g.window_urgent),
        Urgency::Standard => (&mut acc.standard, &mut g.window_standard),
    };
    // A decision recorded before the first submission (a person recorded
    // an answer given by phone, then precert submitted) is not the payer's
    // answer to this submission.
    let decision = f.first_decision.filter(|(_, at)| *at >= f.submitted_at);
    let mut late = false;
    let mut at_risk = false;
    match decision {
        Some((status, at)) => {
            g.decided += 1;
            m.decided += 1;
            match status {
                CaseStatus::Approved => g.approved += 1,
                CaseStatus::PartiallyApproved => g.partially_approved += 1,
                _ => g.denied += 1,
            }
            if status != CaseStatus::Denied {
                m.approved += 1;
            }
            // An appeal: the first decision refused something and the
            // practice took it back to the payer; overturned when a later
            // decision granted more.
            if status != CaseStatus::Approved {
                if let Some(appealed) = f.appealed_at.filter(|t| *t >= at) {
                    g.appealed += 1;
                    let granted = |t: Option<DateTime<Utc>>| t.is_some_and(|t| t > at && t >= appealed);
                    let overturned = match status {
                        CaseStatus::Denied => granted(f.approved_at) || granted(f.partially_approved_at),
                        _ => granted(f.approved_at),
                    };
                    if overturned {
                        g.overturned += 1;
                    }
                }
            }
            let pended_before = f.first_pend_at.is_some_and(|p| p < at);
            if status == CaseStatus::Approved && !pended_before && f.submissions <= 1 {
                g.first_pass_approved += 1;
            }
            if status == CaseStatus::Denied {
                // At risk until a later decision grants it (an overturn).
                let granted = |t: Option<DateTime<Utc>>| t.is_some_and(|t| t > at);
                at_risk = !granted(f.approved_at) && !granted(f.partially_approved_at);
                let code = f.denial_code.clone().filter(|c| !c.trim().is_empty());
                let text = f.denial_text.clone().filter(|t| !t.trim().is_empty());
                let key = match (&code, &text) {
                    (Some(c), _) => format!("code:{c}"),
                    (None, Some(t)) => format!("text:{t}"),
                    (None, None) => String::new(),
                };
                let entry = acc.reasons.entry(key).or_insert((code, None, 0));
                entry.1 = entry.1.take().or(text);
                entry.2 += 1;
            }
            if !f.has_letter {
                g.letters_missing += 1;
            }
            let secs = (at - f.submitted_at).num_seconds();
            durations.push(secs);
            let day = usize::try_from(secs / 86_400).unwrap_or(0).min(8);
            g.turnaround_days[day] += 1;
            win.due += 1;
            if at <= deadline {
                win.within += 1;
            } else {
                win.late += 1;
                late = true;
            }
        }
        None if f.cancelled_at.is_some() => g.cancelled += 1,
        None if f.status == CaseStatus::Expired => g.expired += 1,
        None => {
            g.open += 1;
            match f.status {
                CaseStatus::PendedForInfo => {
                    g.pended_now += 1;
                    at_risk = true;
                }
                CaseStatus::NeedsAttention => g.attention_now += 1,
                _ => {}
            }
            if as_of > deadline {
                win.due += 1;
                win.overdue_open += 1;
                late = true;
                at_risk = true;
            }
        }
    }
    if at_risk {
        let r = &mut g.at_risk;
        r.requests += 1;
        match f.expected_amount {
            Some(a) => {
                r.with_amount += 1;
                r.amount = Some(r.amount.unwrap_or(Usd::ZERO).saturating_add(a));
            }
            None => r.without_amount += 1,
        }
    }
    late
}

fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| (part as f64 * 1000.0 / whole as f64).round() / 10.0)
}

/// Median, nearest-rank p90 and max of `v` (sorted here).
fn stats(mut v: Vec<i64>) -> Turnaround {
    v.sort_unstable();
    let n = v.len();
    if n == 0 {
        return Turnaround::default();
    }
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    };
    // Nearest rank: ceil(0.9 n), 1-based.
    let rank = (n * 9).div_ceil(10).max(1);
    Turnaround {
        count: n as u64,
        median_seconds: Some(median),
        p90_seconds: Some(v[rank - 1]),
        max_seconds: v.last().copied(),
    }
}

fn finish(acc: Acc) -> Figures {
    let mut f = acc.f;
    f.first_pass_rate = percent(f.first_pass_approved, f.decided);
    f.approval_rate = percent(f.approved + f.partially_approved, f.decided);
    f.denial_rate = percent(f.denied, f.decided);
    f.overturn_rate = percent(f.overturned, f.appealed);
    f.turnaround_urgent = stats(acc.urgent);
    f.turnaround_standard = stats(acc.standard);
    for w in [&mut f.window_urgent, &mut f.window_standard] {
        w.share_within = percent(w.within, w.due);
    }
    let pends = stats(acc.pends);
    f.pends.median_seconds = pends.median_seconds;
    f.pends.max_seconds = pends.max_seconds;
    f.denial_reasons = ranked(acc.reasons.into_values().map(|(code, text, n)| {
        let text = text.unwrap_or_else(|| match code {
            Some(_) => "(the reason's text is no longer on record: the case was decided again)".into(),
            None => "(no reason on record)".into(),
        });
        (code, text, n)
    }));
    f.needs_attention = ranked(acc.attention.into_iter().map(|(text, n)| (None, text, n)));
    f.months = acc.months.into_values().collect();
    f
}

/// Most frequent first; ties by code, then text.
fn ranked(items: impl Iterator<Item = (Option<String>, String, u64)>) -> Vec<ReasonCount> {
    let mut v: Vec<ReasonCount> = items
        .map(|(code, text, count)| ReasonCount { code, text, count })
        .collect();
    v.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.code.cmp(&b.code))
            .then(a.text.cmp(&b.text))
    });
    v
}

/// Why automation gave up, without the message that may quote the payer:
/// the engine's notes read `ACTION KIND: message` (`submit portal_changed:
/// …`); the part before the colon is the reason. Anything else is a
/// person's or the payer's words and is counted as "other".
pub fn attention_reason(note: Option<&str>) -> String {
    let Some(note) = note.map(str::trim).filter(|n| !n.is_empty()) else {
        return "(no reason recorded)".into();
    };
    let head = note.split(':').next().unwrap_or_default().trim();
    let words: Vec<&str> = head.split(' ').collect();
    let plain = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if note.contains(':') && (1..=2).contains(&words.len()) && words.iter().all(|w| plain(w)) {
        head.to_owned()
    } else {
        "other".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_p90_and_max_by_their_definitions() {
        let t = stats(vec![5, 1, 3, 2, 4, 6, 7, 8, 9, 10]);
        assert_eq!(t.count, 10);
        assert_eq!(t.median_seconds, Some(5));
        assert_eq!(t.p90_seconds, Some(9));
        assert_eq!(t.max_seconds, Some(10));
        let t = stats(vec![7]);
        assert_eq!(
            (t.median_seconds, t.p90_seconds, t.max_seconds),
            (Some(7), Some(7), Some(7))
        );
        assert_eq!(stats(vec![]), Turnaround::default());
        assert_eq!(stats(vec![1, 2, 3]).p90_seconds, Some(3));
    }

    #[test]
    fn attention_reasons_keep_the_kind_and_drop_the_message() {
        assert_eq!(
            attention_reason(Some("submit portal_changed: no element #x")),
            "submit portal_changed"
        );
        assert_eq!(attention_reason(Some("Patient J. Doe called: wrong plan")), "other");
        assert_eq!(attention_reason(None), "(no reason recorded)");
    }
}
