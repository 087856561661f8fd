//! "Is a pre-cert required?": each payer's requirement rules
//! (`docs/requirements.md`).
//!
//! A playbook's rules sit beside it as `PLAYBOOK_ID.requirements.yaml`,
//! optionally with CSV code lists (`codes_file:`), because payers publish
//! their lists as spreadsheets. `load` reads and checks them (file:line
//! errors through the playbooks' machinery); this module matches a case
//! against them; `decide` applies the answer to `new` cases through
//! `Ledger::decide_requirement`, the one way a requirement is decided.
//!
//! **Precedence is first match**: the rules of a file are read top to bottom
//! for each service line, and the first rule whose every condition holds
//! decides that line. A case needs a pre-cert when any of its lines does; it
//! needs none when every line is decided `required: false`; otherwise (a
//! line no rule covers, and none required) it stays `new`: a person decides.

mod decide;
mod explain;
mod load;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

pub use decide::{decide_cases, decide_new_cases, PassReport, RULES_ACTOR};
pub use explain::explain;
pub use load::is_rules_file;

use crate::case::{CaseData, PlanType, ServiceLine, Setting, UsState};
use crate::config::Settings;

/// Every playbook's rules, by playbook id.
#[derive(Clone, Debug, Default)]
pub struct RuleBook {
    files: BTreeMap<String, RuleFile>,
}

/// One `PLAYBOOK_ID.requirements.yaml`, checked.
#[derive(Clone, Debug)]
pub struct RuleFile {
    pub path: PathBuf,
    pub playbook: String,
    /// The file's version, cited in every decision it makes.
    pub version: String,
    /// Where the payer published the list (a URL, a bulletin), if given.
    pub source: Option<String>,
    pub rules: Vec<Rule>,
}

/// One rule. Every condition given must hold; a condition left out holds
/// for any case.
#[derive(Clone, Debug)]
pub struct Rule {
    pub id: String,
    /// The line of the rule's first key in its file.
    pub line: u64,
    /// The codes and code ranges it covers (inline and from `codes_file`);
    /// None: any code.
    pub codes: Option<Vec<CodeEntry>>,
    /// Plan names, compared without regard to case.
    pub plans: Vec<String>,
    pub plan_types: Vec<PlanType>,
    pub states: Vec<UsState>,
    pub settings: Vec<Setting>,
    pub min_units: Option<u32>,
    pub max_units: Option<u32>,
    /// The patient's age in whole years on the service start date.
    pub min_age: Option<u32>,
    pub max_age: Option<u32>,
    /// First day the rule applies (by the case's service start), inclusive.
    pub from: Option<NaiveDate>,
    /// Last day the rule applies, inclusive.
    pub until: Option<NaiveDate>,
    pub required: bool,
    pub note: Option<String>,
}

/// A code or an inclusive range of codes of one shape, with the dates it is
/// on the list.
#[derive(Clone, Debug)]
pub struct CodeEntry {
    pub low: String,
    pub high: String,
    pub from: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
    /// None: written in the YAML; else the code list's file and line.
    pub origin: Option<(PathBuf, u64)>,
}

impl CodeEntry {
    /// The code or range as written (`73721`, `70010-76499`).
    pub fn label(&self) -> String {
        if self.low == self.high {
            self.low.clone()
        } else {
            format!("{}-{}", self.low, self.high)
        }
    }

    /// Whether `code` is this code or inside this range: codes compare as
    /// text within one shape (digits as `9`: `99999` CPT Category I,
    /// `9999T` Category III, `J9999` HCPCS J codes), so `70010-76499`
    /// never holds `7001F` or `J7010`.
    pub fn covers(&self, code: &str) -> bool {
        shape(code) == shape(&self.low) && self.low.as_str() <= code && code <= self.high.as_str()
    }
}

/// A code's shape: every digit as `9`, letters kept.
pub(crate) fn shape(code: &str) -> String {
    code.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect()
}

/// What one rule says of one service line.
#[derive(Clone, Debug)]
pub enum RuleCheck {
    /// Every condition holds; the code entry that matched, if the rule
    /// lists codes.
    Matches(Option<CodeEntry>),
    /// Why not: one sentence per condition that fails.
    Misses(Vec<String>),
}

/// The rules' answer for one service line.
#[derive(Clone, Debug)]
pub struct LineVerdict {
    pub code: String,
    pub units: u32,
    /// Index in `RuleFile::rules` of the rule that decided it (first match).
    pub rule: Option<usize>,
    pub entry: Option<CodeEntry>,
    /// What the deciding rule says (`required:`), None when no rule decided.
    pub required: Option<bool>,
    /// Each rule read before the deciding one (all of them when none
    /// decided), with why it did not match.
    pub misses: Vec<(usize, Vec<String>)>,
}

/// The rules' answer for a case.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub lines: Vec<LineVerdict>,
    /// Some(true): required (some line's rule says so); Some(false): no line
    /// needs one; None: a line no rule covers, none required.
    pub required: Option<bool>,
}

impl Verdict {
    /// The line whose rule decided the case: the first required line, or
    /// the first line when none is required.
    pub fn deciding_line(&self) -> Option<&LineVerdict> {
        match self.required {
            Some(true) => self.lines.iter().find(|l| l.required == Some(true)),
            Some(false) => self.lines.first(),
            None => None,
        }
    }
}

/// Why a case has no rules to be read against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoRules {
    Practice(String),
    Binding { practice: String, payer: String },
    File { playbook: String },
}

impl std::fmt::Display for NoRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoRules::Practice(p) => write!(f, "practice {p} is not in the configuration"),
            NoRules::Binding { practice, payer } => {
                write!(f, "practice {practice} has no payer binding `{payer}`")
            }
            NoRules::File { playbook } => write!(
                f,
                "playbook {playbook} has no requirement rules ({playbook}.requirements.yaml)"
            ),
        }
    }
}

impl RuleBook {
    /// Every `*.requirements.yaml` in the playbooks directory, checked, with
    /// every problem found (the playbooks' error type: file:line:col).
    pub fn load_dir(dir: &Path) -> (RuleBook, Vec<crate::playbook::PlaybookError>) {
        load::load_dir(dir)
    }

    pub fn get(&self, playbook: &str) -> Option<&RuleFile> {
        self.files.get(playbook)
    }

    pub fn files(&self) -> impl Iterator<Item = &RuleFile> {
        self.files.values()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The rules a case is read against: its practice's binding for its
    /// payer names the playbook, whose rules file this is.
    pub fn for_case<'a>(&'a self, settings: &Settings, data: &CaseData) -> Result<&'a RuleFile, NoRules> {
        let practice = settings
            .practice(&data.practice_id)
            .ok_or_else(|| NoRules::Practice(data.practice_id.clone()))?;
        let binding = practice
            .payers
            .get(&data.coverage.payer)
            .ok_or_else(|| NoRules::Binding {
                practice: practice.id.clone(),
                payer: data.coverage.payer.clone(),
            })?;
        self.get(&binding.playbook).ok_or_else(|| NoRules::File {
            playbook: binding.playbook.clone(),
        })
    }
}

impl RuleFile {
    /// Reads every service line of the case against the rules, first match
    /// deciding each line.
    pub fn evaluate(&self, data: &CaseData) -> Verdict {
        let lines: Vec<LineVerdict> = data
            .service_lines
            .iter()
            .map(|line| {
                let mut misses = Vec::new();
                for (i, rule) in self.rules.iter().enumerate() {
                    match rule.check(data, line) {
                        RuleCheck::Matches(entry) => {
                            return LineVerdict {
                                code: line.code.as_str().to_owned(),
                                units: line.units,
                                rule: Some(i),
                                entry,
                                misses,
                                required: Some(rule.required),
                            }
                        }
                        RuleCheck::Misses(why) => misses.push((i, why)),
                    }
                }
                LineVerdict {
                    code: line.code.as_str().to_owned(),
                    units: line.units,
                    rule: None,
                    entry: None,
                    misses,
                    required: None,
                }
            })
            .collect();
        let required = if lines.iter().any(|l| l.required == Some(true)) {
            Some(true)
        } else if !lines.is_empty() && lines.iter().all(|l| l.required == Some(false)) {
            Some(false)
        } else {
            None
        };
        Verdict { lines, required }
    }
}

impl Rule {
    /// Whether the rule matches this line of this case, and if not, every
    /// reason why.
    pub fn check(&self, data: &CaseData, line: &ServiceLine) -> RuleCheck {
        let start = data.service_dates.start;
        let mut why = Vec::new();
        if let Some(from) = self.from {
            if start < from {
                why.push(format!("the service start {start} is before the rule's from {from}"));
            }
        }
        if let Some(until) = self.until {
            if start > until {
                why.push(format!("the service start {start} is after the rule's until {until}"));
            }
        }
        let code = line.code.as_str();
        let mut matched = None;
        if let Some(entries) = &self.codes {
            let listed: Vec<&CodeEntry> = entries.iter().filter(|e| e.covers(code)).collect();
            if listed.is_empty() {
                why.push(format!("code {code} is not among its codes"));
            } else {
                matched = listed
                    .iter()
                    .find(|e| in_dates(e.from, e.until, start))
                    .map(|e| (*e).clone());
                if matched.is_none() {
                    let e = listed[0];
                    let at = e
                        .origin
                        .as_ref()
                        .map(|(p, l)| format!(" ({}:{l})", p.display()))
                        .unwrap_or_default();
                    why.push(format!(
                        "code {code} is on its list{at} {}, not on the service start {start}",
                        dates_phrase(e.from, e.until)
                    ));
                }
            }
        }
        if !self.plans.is_empty() && !self.plans.iter().any(|p| p.eq_ignore_ascii_case(&data.coverage.plan)) {
            why.push(format!(
                "plan `{}` is not one of {}",
                data.coverage.plan,
                self.plans.join(", ")
            ));
        }
        if !self.plan_types.is_empty() && !self.plan_types.contains(&data.coverage.plan_type) {
            why.push(format!(
                "plan type {} is not one of {}",
                data.coverage.plan_type,
                join(&self.plan_types)
            ));
        }
        if !self.states.is_empty() && !self.states.contains(&data.coverage.state) {
            why.push(format!(
                "state {} is not one of {}",
                data.coverage.state,
                join(&self.states)
            ));
        }
        if !self.settings.is_empty() && !self.settings.contains(&data.setting) {
            why.push(format!(
                "setting {} is not one of {}",
                data.setting,
                join(&self.settings)
            ));
        }
        if let Some(min) = self.min_units {
            if line.units < min {
                why.push(format!("{} unit(s) is fewer than min_units {min}", line.units));
            }
        }
        if let Some(max) = self.max_units {
            if line.units > max {
                why.push(format!("{} unit(s) is more than max_units {max}", line.units));
            }
        }
        if self.min_age.is_some() || self.max_age.is_some() {
            let age = start.years_since(data.patient.birth_date).unwrap_or(0);
            if self.min_age.is_some_and(|min| age < min) {
                why.push(format!(
                    "the patient's age is below min_age {}",
                    self.min_age.unwrap_or(0)
                ));
            }
            if self.max_age.is_some_and(|max| age > max) {
                why.push(format!(
                    "the patient's age is above max_age {}",
                    self.max_age.unwrap_or(0)
                ));
            }
        }
        if why.is_empty() {
            RuleCheck::Matches(matched)
        } else {
            RuleCheck::Misses(why)
        }
    }

    /// `from 2026-01-01 until 2026-12-31`, or what of it is set.
    pub fn dates(&self) -> String {
        dates_phrase(self.from, self.until)
    }
}

fn in_dates(from: Option<NaiveDate>, until: Option<NaiveDate>, day: NaiveDate) -> bool {
    from.is_none_or(|f| day >= f) && until.is_none_or(|u| day <= u)
}

fn dates_phrase(from: Option<NaiveDate>, until: Option<NaiveDate>) -> String {
    match (from, until) {
        (None, None) => "no effective dates".into(),
        (Some(f), None) => format!("from {f}"),
        (None, Some(u)) => format!("until {u}"),
        (Some(f), Some(u)) => format!("from {f} until {u}"),
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(low: &str, high: &str) -> CodeEntry {
        CodeEntry {
            low: low.into(),
            high: high.into(),
            from: None,
            until: None,
            origin: None,
        }
    }

    #[test]
    fn a_range_holds_only_codes_of_its_own_shape() {
        let radiology = range("70010", "76499");
        assert!(radiology.covers("70010") && radiology.covers("73721") && radiology.covers("76499"));
        assert!(!radiology.covers("76500") && !radiology.covers("70009"));
        // Category II/III codes and HCPCS codes sort among them as text but
        // are other code sets.
        assert!(!radiology.covers("7001F") && !radiology.covers("7350T"));
        let j = range("J0120", "J8499");
        assert!(j.covers("J1745") && !j.covers("K1745") && !j.covers("01745"));
        let t = range("0001T", "0999T");
        assert!(t.covers("0042T") && !t.covers("0042F") && !t.covers("00420"));
        assert_eq!(range("97110", "97110").label(), "97110");
        assert_eq!(radiology.label(), "70010-76499");
    }
}
