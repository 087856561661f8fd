//! Rules files as written (YAML through serde-saphyr, as playbooks are) and
//! their CSV code lists → `RuleFile`, every problem with file:line:col and
//! the field it is about, in the playbooks' error type.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::{shape, CodeEntry, Rule, RuleBook, RuleFile};
use crate::case::codes::quoted;
use crate::case::{PlanType, ProcedureCode, Setting, UsState};
use crate::playbook::{Loc, PlaybookError};

/// The suffix that makes a file in the playbooks directory a rules file.
const SUFFIXES: &[&str] = &[".requirements.yaml", ".requirements.yml"];

type S = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Option<S>,
    source: Option<S>,
    rules: Option<Spanned<Vec<Spanned<RawRule>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Option<S>,
    codes: Option<Vec<S>>,
    codes_file: Option<S>,
    plans: Option<Vec<S>>,
    plan_types: Option<Vec<S>>,
    states: Option<Vec<S>>,
    settings: Option<Vec<S>>,
    min_units: Option<Spanned<u32>>,
    max_units: Option<Spanned<u32>>,
    min_age: Option<Spanned<u32>>,
    max_age: Option<Spanned<u32>>,
    from: Option<S>,
    until: Option<S>,
    required: Option<Spanned<bool>>,
    note: Option<S>,
}

/// Whether a file of the playbooks directory is a rules file (and so not a
/// playbook): `PLAYBOOK_ID.requirements.yaml`.
pub fn is_rules_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| SUFFIXES.iter().any(|s| n.ends_with(s) && n.len() > s.len()))
}

pub(super) fn load_dir(dir: &Path) -> (RuleBook, Vec<PlaybookError>) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_rules_file(p))
            .collect(),
        // The playbooks' own loading reports an unreadable directory.
        Err(_) => return (RuleBook::default(), Vec::new()),
    };
    files.sort();
    let mut book = RuleBook::default();
    let mut errors = Vec::new();
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let playbook = SUFFIXES
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or_default()
            .to_owned();
        if book.files.contains_key(&playbook) {
            errors.push(PlaybookError {
                file: path.clone(),
                at: Loc::default(),
                message: format!("playbook {playbook} already has a rules file (.yaml and .yml?)"),
            });
            continue;
        }
        match load_file(&path, &playbook) {
            Ok(f) => {
                book.files.insert(playbook, f);
            }
            Err(e) => errors.extend(e),
        }
    }
    (book, errors)
}

/// One rules file, checked whole: every problem is reported, and a file
/// with any problem is not used at all.
pub(super) fn load_file(path: &Path, playbook: &str) -> Result<RuleFile, Vec<PlaybookError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![PlaybookError {
            file: path.to_owned(),
            at: Loc::default(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    compile(path, playbook, &text)
}

struct Checker<'a> {
    file: &'a Path,
    errors: Vec<PlaybookError>,
    /// Code lists already read, by path (several rules may share one).
    lists: HashMap<PathBuf, Option<Vec<CodeEntry>>>,
}

impl Checker<'_> {
    fn err(&mut self, at: &Location, field: &str, message: impl std::fmt::Display) {
        self.errors.push(PlaybookError {
            file: self.file.to_owned(),
            at: Loc::of(at),
            message: format!("{field}: {message}"),
        });
    }

    fn date(&mut self, s: &Option<S>, field: &str) -> Option<NaiveDate> {
        let s = s.as_ref()?;
        match parse_date(&s.value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(&s.referenced, field, e);
                None
            }
        }
    }

    fn list<T>(&mut self, items: &Option<Vec<S>>, field: &str, parse: impl Fn(&str) -> Result<T, String>) -> Vec<T> {
        let mut out = Vec::new();
        for (i, s) in items.iter().flatten().enumerate() {
            match parse(&s.value) {
                Ok(v) => out.push(v),
                Err(e) => self.err(&s.referenced, &format!("{field}[{i}]"), e),
            }
        }
        out
    }
}

fn compile(file: &Path, playbook: &str, text: &str) -> Result<RuleFile, Vec<PlaybookError>> {
    let found = RefCell::new(Vec::new());
    let parsed: Result<RawFile, _> = serde_saphyr::with_deserializer_from_str(text, |de| {
        crate::config::unknown::deserialize(de, crate::config::unknown::Keys::Spanned, &found)
    });
    let mut c = Checker {
        file,
        errors: found
            .into_inner()
            .into_iter()
            .map(|u| PlaybookError {
                file: file.to_owned(),
                at: u.at.as_ref().map(Loc::of).unwrap_or_default(),
                message: format!("unknown key `{}`; {}", u.key, u.hint()),
            })
            .collect(),
        lists: HashMap::new(),
    };
    let raw = match parsed {
        Ok(raw) => raw,
        Err(e) => {
            c.errors.push(PlaybookError {
                file: file.to_owned(),
                at: e.location().map(|l| Loc::of(&l)).unwrap_or_default(),
                message: crate::playbook::saphyr_message(&e),
            });
            c.errors.sort_by_key(|e| (e.at.line, e.at.col));
            return Err(c.errors);
        }
    };
    let top = Loc { line: 1, col: 1 };
    let version = match &raw.version {
        Some(v) if !v.value.trim().is_empty() => v.value.trim().to_owned(),
        Some(v) => {
            c.err(
                &v.referenced,
                "version",
                "is empty; give the list's version (e.g. 2026-Q4)",
            );
            String::new()
        }
        None => {
            c.errors.push(PlaybookError {
                file: file.to_owned(),
                at: top,
                message: "version: is required (the list's version, cited in every decision, e.g. 2026-Q4)".into(),
            });
            String::new()
        }
    };
    let mut rules = Vec::new();
    match &raw.rules {
        None => c.errors.push(PlaybookError {
            file: file.to_owned(),
            at: top,
            message: "rules: is required (a list of rules; see docs/requirements.md)".into(),
        }),
        Some(list) => {
            let mut ids: HashSet<String> = HashSet::new();
            for (i, r) in list.value.iter().enumerate() {
                if let Some(rule) = compile_rule(&mut c, i, r, &mut ids) {
                    rules.push(rule);
                }
            }
        }
    }
    if c.errors.is_empty() {
        Ok(RuleFile {
            path: file.to_owned(),
            playbook: playbook.to_owned(),
            version,
            source: raw.source.map(|s| s.value),
            rules,
        })
    } else {
        c.errors.sort_by_key(|e| (e.file.clone(), e.at.line, e.at.col));
        Err(c.errors)
    }
}

fn compile_rule(c: &mut Checker<'_>, i: usize, r: &Spanned<RawRule>, ids: &mut HashSet<String>) -> Option<Rule> {
    let at = &r.referenced;
    let raw = &r.value;
    let errors_before = c.errors.len();
    let field = |name: &str| format!("rules[{i}].{name}");
    let id = match &raw.id {
        Some(s) if !s.value.trim().is_empty() => {
            let id = s.value.trim().to_owned();
            if !ids.insert(id.clone()) {
                c.err(
                    &s.referenced,
                    &field("id"),
                    format!("{} is used by an earlier rule", quoted(&id)),
                );
            }
            id
        }
        Some(s) => {
            c.err(&s.referenced, &field("id"), "is empty");
            String::new()
        }
        None => {
            c.err(
                at,
                &field("id"),
                "is required (a name cited in every decision it makes)",
            );
            String::new()
        }
    };
    let required = match &raw.required {
        Some(b) => b.value,
        None => {
            c.err(
                at,
                &field("required"),
                "is required: true (a pre-cert is needed) or false",
            );
            false
        }
    };
    let mut codes: Option<Vec<CodeEntry>> = None;
    if let Some(list) = &raw.codes {
        let mut entries = Vec::new();
        for (j, s) in list.iter().enumerate() {
            match parse_entry(&s.value) {
                Ok((low, high)) => entries.push(CodeEntry {
                    low,
                    high,
                    from: None,
                    until: None,
                    origin: None,
                }),
                Err(e) => c.err(&s.referenced, &field(&format!("codes[{j}]")), e),
            }
        }
        if entries.is_empty() && list.is_empty() {
            c.err(at, &field("codes"), "is an empty list; leave it out to match any code");
        }
        codes = Some(entries);
    }
    if let Some(f) = &raw.codes_file {
        let path = c.file.parent().unwrap_or(Path::new(".")).join(f.value.trim());
        let list = match c.lists.get(&path) {
            Some(l) => l.clone(),
            None => {
                let read = read_code_list(&path);
                let list = match read {
                    Ok(Ok(l)) => Some(l),
                    Ok(Err(errors)) => {
                        c.errors.extend(errors);
                        None
                    }
                    Err(e) => {
                        c.err(
                            &f.referenced,
                            &field("codes_file"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                };
                c.lists.insert(path.clone(), list.clone());
                list
            }
        };
        codes.get_or_insert_with(Vec::new).extend(list.unwrap_or_default());
    }
    let plans: Vec<String> = c.list(&raw.plans, &field("plans"), |s| {
        let s = s.trim();
        if s.is_empty() {
            Err("is empty".into())
        } else {
            Ok(s.to_owned())
        }
    });
    let plan_types: Vec<PlanType> = c.list(&raw.plan_types, &field("plan_types"), |s| s.parse());
    let states: Vec<UsState> = c.list(&raw.states, &field("states"), UsState::parse);
    let settings: Vec<Setting> = c.list(&raw.settings, &field("settings"), |s| s.parse());
    let from = c.date(&raw.from, &field("from"));
    let until = c.date(&raw.until, &field("until"));
    if let (Some(f), Some(u), Some(s)) = (from, until, &raw.until) {
        if u < f {
            c.err(&s.referenced, &field("until"), format!("{u} is before from {f}"));
        }
    }
    for (lo, hi, name) in [
        (&raw.min_units, &raw.max_units, "units"),
        (&raw.min_age, &raw.max_age, "age"),
    ] {
        if let (Some(lo), Some(hi)) = (lo, hi) {
            if hi.value < lo.value {
                c.err(
                    &hi.referenced,
                    &field(&format!("max_{name}")),
                    format!("{} is below min_{name} {}", hi.value, lo.value),
                );
            }
        }
    }
    if c.errors.len() > errors_before {
        return None;
    }
    Some(Rule {
        id,
        line: at.line(),
        codes,
        plans,
        plan_types,
        states,
        settings,
        min_units: raw.min_units.as_ref().map(|s| s.value),
        max_units: raw.max_units.as_ref().map(|s| s.value),
        min_age: raw.min_age.as_ref().map(|s| s.value),
        max_age: raw.max_age.as_ref().map(|s| s.value),
        from,
        until,
        required,
        note: raw.note.as_ref().map(|s| s.value.clone()),
    })
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("{} is not a date (YYYY-MM-DD)", quoted(s.trim())))
}

/// `73721` or `70010-76499`: each end a CPT/HCPCS code, both of one shape,
/// the low end first.
fn parse_entry(s: &str) -> Result<(String, String), String> {
    let s = s.trim();
    let (low, high) = match s.split_once('-') {
        Some((l, h)) => (l.trim(), h.trim()),
        None => (s, s),
    };
    let low = ProcedureCode::parse(low)?.as_str().to_owned();
    let high = ProcedureCode::parse(high)?.as_str().to_owned();
    if shape(&low) != shape(&high) {
        return Err(format!(
            "{}: the range's ends are codes of different kinds ({} and {})",
            quoted(s),
            shape(&low),
            shape(&high)
        ));
    }
    if high < low {
        return Err(format!("{}: the range ends before it starts", quoted(s)));
    }
    Ok((low, high))
}

/// A payer's code list as CSV: a header row with a `code` column (a code or
/// a range) and optionally `from` and `until` (the days the code is on the
/// list, inclusive); other columns (descriptions, categories) are ignored.
fn read_code_list(path: &Path) -> std::io::Result<Result<Vec<CodeEntry>, Vec<PlaybookError>>> {
    let bytes = std::fs::read(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_bytes());
    let err = |line: u64, message: String| PlaybookError {
        file: path.to_owned(),
        at: Loc { line, col: 1 },
        message,
    };
    let headers: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|h| h.to_ascii_lowercase()).collect(),
        Err(e) => return Ok(Err(vec![err(1, format!("cannot read the header row: {e}"))])),
    };
    let col = |name: &str| headers.iter().position(|h| h == name);
    let Some(code_col) = col("code") else {
        return Ok(Err(vec![err(
            1,
            format!("code: the header has no `code` column (it has: {})", headers.join(", ")),
        )]));
    };
    let (from_col, until_col) = (col("from"), col("until"));
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                errors.push(err(line, format!("row: {e}")));
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.iter().all(str::is_empty) {
            continue;
        }
        let get = |i: Option<usize>| i.and_then(|i| record.get(i)).filter(|v| !v.is_empty());
        let Some(code) = get(Some(code_col)) else {
            errors.push(err(line, "code: is empty".into()));
            continue;
        };
        let (low, high) = match parse_entry(code) {
            Ok(r) => r,
            Err(e) => {
                errors.push(err(line, format!("code: {e}")));
                continue;
            }
        };
        let mut date = |i: Option<usize>, name: &str| match get(i).map(parse_date) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                errors.push(err(line, format!("{name}: {e}")));
                None
            }
            None => None,
        };
        let from = date(from_col, "from");
        let until = date(until_col, "until");
        if let (Some(f), Some(u)) = (from, until) {
            if u < f {
                errors.push(err(line, format!("until: {u} is before from {f}")));
            }
        }
        let key = format!("{low}-{high}|{from:?}|{until:?}");
        if let Some(first) = seen.get(&key) {
            errors.push(err(
                line,
                format!("code: {} repeats line {first} with the same dates", quoted(code)),
            ));
            continue;
        }
        seen.insert(key, line);
        entries.push(CodeEntry {
            low,
            high,
            from,
            until,
            origin: Some((path.to_owned(), line)),
        });
    }
    Ok(if errors.is_empty() { Ok(entries) } else { Err(errors) })
}
