//! Raw playbook → `Playbook`, reporting every problem with file:line:col.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use serde_saphyr::Spanned;

use super::raw::*;
use super::template;
use super::*;

/// The step keys, for messages.
const STEP_KEYS: &[&str] = &[
    "navigate",
    "fill",
    "select",
    "check",
    "upload",
    "click",
    "wait_for",
    "extract",
    "assert",
    "totp",
    "screenshot",
    "download",
    "if",
    "rows",
    "for_each",
    "frame",
    "dialog",
    "new_tab",
    "script",
    "set",
    "call",
    "fail",
    "outcome",
    "http",
    "fetch",
];

/// Methods an `http` step may use.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// Functions minijinja offers that `undeclared_variables` reports as names.
const TEMPLATE_GLOBALS: &[&str] = &["range", "dict", "namespace", "debug", "loop"];

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

struct Compiler<'a> {
    file: &'a Path,
    errors: Vec<PlaybookError>,
    env: minijinja::Environment<'static>,
    sample: Value,
    /// For checking selectors with template parts: undefined renders `x`.
    probe_env: minijinja::Environment<'static>,
    probe_ctx: Value,
    credentials: HashSet<String>,
    /// Variables each action sets, for `call`.
    sets: BTreeMap<String, HashSet<String>>,
    channel: Channel,
}

/// What a step may refer to at its place in an action.
#[derive(Clone, Default)]
struct Scope {
    vars: HashSet<String>,
    items: Vec<String>,
}

pub fn compile(file: &Path, text: &str) -> Result<Playbook, Vec<PlaybookError>> {
    // Every unknown key is an error, and reading goes on past it (a close
    // one read as the key it resembles), so one run shows them all.
    let found = std::cell::RefCell::new(Vec::new());
    let parsed: Result<RawPlaybook, _> = serde_saphyr::with_deserializer_from_str(text, |de| {
        crate::config::unknown::deserialize(de, crate::config::unknown::Keys::Spanned, &found)
    });
    let mut errors: Vec<PlaybookError> = found
        .into_inner()
        .into_iter()
        .map(|u| PlaybookError {
            file: file.to_owned(),
            at: u.at.as_ref().map(Loc::of).unwrap_or_default(),
            message: format!("unknown key `{}`; {}", u.key, u.hint()),
        })
        .collect();
    let raw = match parsed {
        Ok(raw) => raw,
        Err(e) => {
            errors.push(PlaybookError {
                file: file.to_owned(),
                at: e.location().map(|l| Loc::of(&l)).unwrap_or_default(),
                message: saphyr_message(&e),
            });
            errors.sort_by_key(|e| (e.at.line, e.at.col));
            return Err(errors);
        }
    };
    let mut c = Compiler {
        file,
        errors,
        env: template::environment(),
        sample: template::sample_context(),
        probe_env: probe_environment(),
        probe_ctx: {
            let mut ctx = template::sample_context();
            ctx["index"] = Value::from(1);
            ctx
        },
        credentials: raw.credentials.iter().map(|s| s.value.clone()).collect(),
        sets: raw
            .actions
            .value
            .iter()
            .map(|(name, steps)| (name.clone(), collect_sets(&steps.value)))
            .collect(),
        channel: Channel::Web,
    };
    let payer = &raw.payer.value;
    let channel = match payer.channel.value.as_str() {
        "web" => Channel::Web,
        "api" => Channel::Api,
        other => {
            c.err(
                &payer.channel.referenced,
                format!("channel `{other}` is not `web` or `api`"),
            );
            Channel::Web
        }
    };
    c.channel = channel;
    let api = match &payer.api {
        None => None,
        Some(a) if a.value == "pas" => {
            if channel != Channel::Api {
                c.err(&a.referenced, "`api: pas` needs `channel: api`");
            }
            Some(ApiKind::Pas)
        }
        Some(a) => {
            c.err(
                &a.referenced,
                format!(
                    "api `{}` is not one precert speaks itself; the one there is: pas",
                    a.value
                ),
            );
            None
        }
    };
    if channel == Channel::Api {
        let d = &raw.detect;
        if let Some(first) = d.logged_out.iter().chain(&d.needs_human).chain(&d.unavailable).next() {
            c.err(
                &first.referenced,
                "`detect` rules read portal pages; an api playbook has none (HTTP answers are classified by status)",
            );
        }
    }
    if let Err(e) = crate::config::check_id(&payer.id.value) {
        c.err(&payer.id.referenced, e);
    }
    let base_url = payer.base_url.value.trim_end_matches('/').to_owned();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        c.err(
            &payer.base_url.referenced,
            format!("base_url `{base_url}` is not an http(s) URL"),
        );
    }
    for cred in &raw.credentials {
        if crate::config::check_id(&cred.value.replace('_', "-")).is_err() {
            c.err(
                &cred.referenced,
                format!(
                    "credential name `{}` must be lower-case letters, digits and `_`",
                    cred.value
                ),
            );
        }
    }
    let detect = Detect {
        logged_out: raw
            .detect
            .logged_out
            .iter()
            .map(|x| c.condition(x, &Scope::default()))
            .collect(),
        needs_human: raw
            .detect
            .needs_human
            .iter()
            .map(|x| c.condition(x, &Scope::default()))
            .collect(),
        unavailable: raw
            .detect
            .unavailable
            .iter()
            .map(|x| c.condition(x, &Scope::default()))
            .collect(),
    };
    let outcomes = c.outcomes(&raw, api.is_some());
    let mut actions = BTreeMap::new();
    for (name, steps) in &raw.actions.value {
        let Some(action) = Action::parse(name) else {
            c.err(
                &steps.referenced,
                format!(
                    "unknown action `{name}`; actions are {}",
                    Action::ALL.map(Action::as_str).join(", ")
                ),
            );
            continue;
        };
        let compiled = c.steps(&steps.value, &mut Scope::default());
        c.check_checkpoints(&compiled, true);
        if action == Action::FindExisting {
            c.check_find_existing(&compiled);
        }
        if action == Action::Submit {
            let commits = count_commits(&compiled);
            if commits != 1 {
                c.err(
                    &steps.referenced,
                    format!(
                        "submit must mark exactly one step `commit: true` (the click that sends the request), found {commits}"
                    ),
                );
            }
        }
        actions.insert(action, compiled);
    }
    if api.is_some() && !actions.is_empty() {
        c.err(
            &raw.actions.referenced,
            "a playbook with `api: pas` has no actions (`actions: {}`): precert's PAS client does the exchange",
        );
    }
    let required: &[Action] = match (channel, api) {
        (Channel::Web, _) => &Action::REQUIRED,
        (Channel::Api, None) => &[Action::Submit, Action::PollStatus],
        (Channel::Api, Some(_)) => &[],
    };
    {
        let missing: Vec<&str> = required
            .iter()
            .filter(|a| !actions.contains_key(a))
            .map(|a| a.as_str())
            .collect();
        if !missing.is_empty() {
            c.err(
                &raw.actions.referenced,
                format!("missing action{}: {}", plural(missing.len()), missing.join(", ")),
            );
        }
    }
    for (action, steps) in &actions {
        c.check_calls(*action, steps, &actions);
    }
    let crd = raw.crd.as_ref().and_then(|r| c.crd(&r.value, &base_url));
    if c.errors.is_empty() {
        Ok(Playbook {
            file: file.to_owned(),
            id: payer.id.value.clone(),
            name: payer.name.value.clone(),
            channel,
            api,
            base_url,
            plans: payer.plans.iter().map(|s| s.value.clone()).collect(),
            states: payer.states.iter().map(|s| s.value.clone()).collect(),
            max_sessions: payer.max_sessions.unwrap_or(1).max(1),
            credentials: raw.credentials.iter().map(|s| s.value.clone()).collect(),
            detect,
            outcomes,
            actions,
            crd,
        })
    } else {
        c.errors.sort_by_key(|e| (e.at.line, e.at.col));
        Err(c.errors)
    }
}

/// serde-saphyr's message without the location it also appends (we print
/// the location in front, as file:line:col).
pub(crate) fn saphyr_message(e: &serde_saphyr::Error) -> String {
    let msg = e.to_string();
    let mut msg = msg.lines().next().unwrap_or_default().trim();
    msg = msg.strip_prefix("error: ").unwrap_or(msg);
    // `line 20 column 7: unknown field …`
    if msg.starts_with("line ") {
        if let Some((_, rest)) = msg.split_once(": ") {
            msg = rest;
        }
    }
    // The YAML parser's hint is for Rust callers, not playbook authors.
    if let Some(i) = msg.find(", set DuplicateKeyPolicy") {
        msg = &msg[..i];
    }
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn count_commits(steps: &[Step]) -> usize {
    steps
        .iter()
        .map(|s| {
            usize::from(s.commit)
                + match &s.kind {
                    StepKind::If { then, otherwise, .. } => count_commits(then) + count_commits(otherwise),
                    StepKind::ForEach { steps, .. }
                    | StepKind::Frame { steps, .. }
                    | StepKind::NewTab { steps, .. }
                    | StepKind::Fetch { steps, .. } => count_commits(steps),
                    _ => 0,
                }
        })
        .sum()
}

/// Names a list of raw steps sets (`into`, `set`), at any depth.
fn collect_sets(steps: &[Spanned<RawStep>]) -> HashSet<String> {
    let mut out = HashSet::new();
    for s in steps {
        let s = &s.value;
        if let Some(x) = &s.extract {
            out.insert(x.value.into.value.clone());
        }
        if let Some(x) = &s.totp {
            out.insert(x.value.into.value.clone());
        }
        if let Some(x) = &s.rows {
            out.insert(x.value.into.value.clone());
        }
        if let Some(x) = s.script.as_ref().and_then(|x| x.value.into.as_ref()) {
            out.insert(x.value.clone());
        }
        if let Some(x) = &s.set {
            out.extend(x.value.keys().cloned());
        }
        if let Some(x) = s.http.as_ref().and_then(|h| h.value.extract.as_ref()) {
            out.extend(x.value.keys().cloned());
        }
        if let Some(x) = s.fetch.as_ref().and_then(|f| f.value.into.as_ref()) {
            out.insert(x.value.clone());
        }
        for nested in [s.then.as_deref(), s.else_.as_deref()].into_iter().flatten() {
            out.extend(collect_sets(nested));
        }
        for nested in [
            s.for_each.as_ref().map(|f| f.value.steps.as_slice()),
            s.frame.as_ref().map(|f| f.value.steps.as_slice()),
            s.new_tab.as_ref().map(|f| f.value.steps.as_slice()),
            s.fetch.as_ref().and_then(|f| f.value.steps.as_deref()),
        ]
        .into_iter()
        .flatten()
        {
            out.extend(collect_sets(nested));
        }
    }
    out
}

impl Compiler<'_> {
    /// `find_existing` must be specific and sure: each `outcome` says what
    /// identifies the payer's record (`match:` with our case reference, or
    /// member, codes and service start), and each `rows` step says what an
    /// empty result looks like, so a failed search is never "not found".
    fn check_find_existing(&mut self, steps: &[Step]) {
        for s in steps {
            match &s.kind {
                StepKind::Outcome(o) if !o.matches.as_ref().is_some_and(MatchFields::is_specific) => {
                    self.err_at(
                        s.at,
                        "an `outcome` in find_existing needs `match:` with `case_ref`, or with `member_id`, \
                         `codes` and `service_start` (and `service_end` where the payer shows it): \
                         a request for the same member and code on another date is not this case's",
                    );
                }
                StepKind::Rows { empty: None, .. } => self.err_at(
                    s.at,
                    "a `rows` step in find_existing needs `empty:` (what the page shows when the search \
                     found nothing), so that a failed search is not taken for \"not sent\"",
                ),
                StepKind::If { then, otherwise, .. } => {
                    self.check_find_existing(then);
                    self.check_find_existing(otherwise);
                }
                StepKind::ForEach { steps, .. }
                | StepKind::Frame { steps, .. }
                | StepKind::NewTab { steps, .. }
                | StepKind::Fetch { steps, .. } => self.check_find_existing(steps),
                _ => {}
            }
        }
    }

    /// Checkpoints are top-level steps of an action, before its commit step
    /// (after it, only `find_existing` may decide what happens).
    fn check_checkpoints(&mut self, steps: &[Step], top: bool) {
        let mut committed = false;
        for s in steps {
            if s.checkpoint && (!top || committed || s.commit) {
                self.err_at(
                    s.at,
                    "`checkpoint: true` belongs on a top-level step of an action before its commit step",
                );
            }
            committed |= s.commit || count_commits(std::slice::from_ref(s)) > 0;
            match &s.kind {
                StepKind::If { then, otherwise, .. } => {
                    self.check_checkpoints(then, false);
                    self.check_checkpoints(otherwise, false);
                }
                StepKind::ForEach { steps, .. }
                | StepKind::Frame { steps, .. }
                | StepKind::NewTab { steps, .. }
                | StepKind::Fetch { steps, .. } => self.check_checkpoints(steps, false),
                _ => {}
            }
        }
    }

    fn err_at(&mut self, at: Loc, message: impl Into<String>) {
        self.errors.push(PlaybookError {
            file: self.file.to_owned(),
            at,
            message: message.into(),
        });
    }

    fn err(&mut self, at: &serde_saphyr::Location, message: impl Into<String>) {
        self.errors.push(PlaybookError {
            file: self.file.to_owned(),
            at: Loc::of(at),
            message: message.into(),
        });
    }

    /// The `crd:` declaration: an http(s) URL or a path under `base_url`,
    /// a known hook and auth.
    fn crd(&mut self, raw: &RawCrd, base_url: &str) -> Option<CrdService> {
        // Every problem of the declaration is reported in one run.
        let errors = self.errors.len();
        let written = raw.url.value.trim();
        let u = written.trim_end_matches('/');
        let url = if u.starts_with("http://") || u.starts_with("https://") {
            u.to_owned()
        } else if written.starts_with('/') {
            format!("{base_url}{u}")
        } else {
            self.err(
                &raw.url.referenced,
                format!("crd url `{written}` is neither an http(s) URL nor a path under base_url (starting with /)"),
            );
            String::new()
        };
        let hook = match raw.hook.as_ref().map(|h| (h.value.as_str(), &h.referenced)) {
            None | Some(("order-sign", _)) => CrdHook::OrderSign,
            Some(("order-select", _)) => CrdHook::OrderSelect,
            Some((other, at)) => {
                self.err(at, format!("crd hook `{other}` is not `order-sign` or `order-select`"));
                CrdHook::OrderSign
            }
        };
        let oauth2 = match raw.auth.as_ref().map(|a| (a.value.as_str(), &a.referenced)) {
            None | Some(("oauth2", _)) => true,
            Some(("none", _)) => false,
            Some((other, at)) => {
                self.err(at, format!("crd auth `{other}` is not `oauth2` or `none`"));
                true
            }
        };
        let service = raw.service.as_ref().map(|s| s.value.trim().to_owned());
        if let (Some(s), Some(raw_s)) = (&service, &raw.service) {
            if s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                self.err(
                    &raw_s.referenced,
                    format!("crd service `{s}` must be letters, digits, `-`, `_` or `.`"),
                );
            }
        }
        (self.errors.len() == errors).then_some(CrdService {
            url,
            service,
            hook,
            oauth2,
        })
    }

    fn outcomes(&mut self, raw: &RawPlaybook, builtin_api: bool) -> BTreeMap<String, CaseStatus> {
        let mut out = BTreeMap::new();
        let Some(map) = &raw.outcomes else {
            if !builtin_api {
                self.err(
                    &raw.payer.referenced,
                    "an `outcomes:` map (portal wording → status) is required",
                );
            }
            return out;
        };
        for (wording, status) in &map.value {
            match status.value.parse::<CaseStatus>() {
                Ok(s) if OUTCOME_STATUSES.contains(&s) || s == CaseStatus::NeedsAttention => {
                    out.insert(normalize_wording(wording), s);
                }
                Ok(s) => self.err(&status.referenced, format!("`{s}` is not a status a payer reports")),
                Err(e) => self.err(&status.referenced, e.to_string()),
            }
        }
        // A status the portal never shows needs no entry: it is simply
        // never matched (wording not in the map is never guessed at).
        out
    }

    fn check_calls(&mut self, from: Action, steps: &[Step], actions: &BTreeMap<Action, Vec<Step>>) {
        for s in steps {
            match &s.kind {
                StepKind::Call(target) if *target == from => self.errors.push(PlaybookError {
                    file: self.file.to_owned(),
                    at: s.at,
                    message: format!("action `{from}` calls itself"),
                }),
                StepKind::Call(target) if !actions.contains_key(target) => self.errors.push(PlaybookError {
                    file: self.file.to_owned(),
                    at: s.at,
                    message: format!("calls action `{target}`, which this playbook does not define"),
                }),
                StepKind::If { then, otherwise, .. } => {
                    self.check_calls(from, then, actions);
                    self.check_calls(from, otherwise, actions);
                }
                StepKind::ForEach { steps, .. }
                | StepKind::Frame { steps, .. }
                | StepKind::NewTab { steps, .. }
                | StepKind::Fetch { steps, .. } => self.check_calls(from, steps, actions),
                _ => {}
            }
        }
    }

    fn steps(&mut self, raw: &[Spanned<RawStep>], scope: &mut Scope) -> Vec<Step> {
        raw.iter().filter_map(|s| self.step(s, scope)).collect()
    }

    fn step(&mut self, spanned: &Spanned<RawStep>, scope: &mut Scope) -> Option<Step> {
        let r = &spanned.value;
        let at = &spanned.referenced;
        let present: Vec<&str> = [
            r.navigate.is_some(),
            r.fill.is_some(),
            r.select.is_some(),
            r.check.is_some(),
            r.upload.is_some(),
            r.click.is_some(),
            r.wait_for.is_some(),
            r.extract.is_some(),
            r.assert_.is_some(),
            r.totp.is_some(),
            r.screenshot.is_some(),
            r.download.is_some(),
            r.if_.is_some(),
            r.rows.is_some(),
            r.for_each.is_some(),
            r.frame.is_some(),
            r.dialog.is_some(),
            r.new_tab.is_some(),
            r.script.is_some(),
            r.set.is_some(),
            r.call.is_some(),
            r.fail.is_some(),
            r.outcome.is_some(),
            r.http.is_some(),
            r.fetch.is_some(),
        ]
        .iter()
        .zip(STEP_KEYS)
        .filter(|(set, _)| **set)
        .map(|(_, k)| *k)
        .collect();
        match present.len() {
            0 => {
                self.err(at, format!("a step needs one step key: {}", STEP_KEYS.join(", ")));
                return None;
            }
            1 => {}
            _ => {
                self.err(
                    at,
                    format!("a step has one step key; this one has {}", present.join(" and ")),
                );
                return None;
            }
        }
        if r.if_.is_none() && (r.then.is_some() || r.else_.is_some()) {
            self.err(at, "`then`/`else` belong to an `if` step");
        }
        let timeout = match &r.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => match parse_duration(&t.value) {
                Ok(d) => d,
                Err(e) => {
                    self.err(&t.referenced, e);
                    DEFAULT_TIMEOUT
                }
            },
        };
        let kind = self.kind(r, scope)?;
        if self.channel == Channel::Api && kind.needs_browser() {
            self.err(
                at,
                format!(
                    "`{}` needs a browser page; an api playbook uses http, set, if/assert with expr, for_each, call, fail and outcome",
                    kind.keyword()
                ),
            );
        }
        let commit = r.commit.unwrap_or(false);
        if commit
            && !matches!(
                kind,
                StepKind::Click { .. } | StepKind::Dialog { .. } | StepKind::Script { .. } | StepKind::Http(_)
            )
        {
            self.err(
                at,
                "`commit: true` marks the click (or dialog/script/http request) that sends the request",
            );
        }
        Some(Step {
            at: Loc::of(at),
            name: r.name.as_ref().map(|n| n.value.clone()),
            timeout,
            retries: r.retries.unwrap_or(0),
            commit,
            checkpoint: r.checkpoint.unwrap_or(false),
            kind,
        })
    }

    fn kind(&mut self, r: &RawStep, scope: &mut Scope) -> Option<StepKind> {
        if let Some(u) = &r.navigate {
            return Some(StepKind::Navigate {
                url: self.tpl(u, scope),
            });
        }
        if let Some(f) = &r.fill {
            return Some(StepKind::Fill {
                selector: self.sel(&f.value.selector, scope),
                value: self.tpl(&f.value.value, scope),
            });
        }
        if let Some(s) = &r.select {
            let selector = self.sel(&s.value.selector, scope);
            let by = match (&s.value.value, &s.value.label) {
                (Some(v), None) => SelectBy::Value(self.tpl(v, scope)),
                (None, Some(l)) => SelectBy::Label(self.tpl(l, scope)),
                _ => {
                    self.err(&s.referenced, "select needs exactly one of `value` or `label`");
                    return None;
                }
            };
            return Some(StepKind::Select { selector, by });
        }
        if let Some(x) = &r.check {
            return Some(StepKind::Check {
                selector: self.sel(&x.value.selector, scope),
                checked: x.value.checked.unwrap_or(true),
            });
        }
        if let Some(x) = &r.upload {
            return Some(StepKind::Upload {
                selector: self.sel(&x.value.selector, scope),
                file: self.tpl(&x.value.file, scope),
            });
        }
        if let Some(x) = &r.click {
            return Some(StepKind::Click {
                selector: self.sel(x, scope),
            });
        }
        if let Some(x) = &r.wait_for {
            return Some(StepKind::WaitFor(self.condition(x, scope)));
        }
        if let Some(x) = &r.assert_ {
            return Some(StepKind::Assert(self.condition(x, scope)));
        }
        if let Some(spanned) = &r.extract {
            let x = &spanned.value;
            let into = self.var_name(&x.into, scope);
            let from = match (&x.selector, &x.label) {
                (Some(sel), None) => {
                    if let Some(w) = &x.within {
                        self.err(&w.referenced, "`within` goes with `label`, not `selector`");
                    }
                    ExtractOn::Selector(self.sel(sel, scope))
                }
                (None, Some(label)) => ExtractOn::Label {
                    label: self.tpl(label, scope),
                    within: x.within.as_ref().map(|w| self.sel(w, scope)),
                },
                _ => {
                    self.err(
                        &spanned.referenced,
                        "extract needs exactly one of `selector` (an element) or `label` (the value next to a label)",
                    );
                    return None;
                }
            };
            if let Some(re) = &x.regex {
                if let Err(e) = regex::Regex::new(&re.value) {
                    self.err(&re.referenced, format!("not a regular expression: {e}"));
                }
            }
            return Some(StepKind::Extract {
                from,
                attribute: x.attribute.as_ref().map(|a| a.value.clone()),
                regex: x.regex.as_ref().map(|a| a.value.clone()),
                into,
                optional: x.optional.unwrap_or(false),
            });
        }
        if let Some(x) = &r.totp {
            let secret = self.tpl(&x.value.secret, scope);
            return Some(StepKind::Totp {
                secret,
                into: self.var_name(&x.value.into, scope),
            });
        }
        if let Some(x) = &r.screenshot {
            return Some(StepKind::Screenshot { name: x.value.clone() });
        }
        if let Some(x) = &r.download {
            let from = match (&x.value.url, &x.value.selector) {
                (Some(u), None) => DownloadFrom::Url(self.tpl(u, scope)),
                (None, Some(s)) => DownloadFrom::Link(self.sel(s, scope)),
                _ => {
                    self.err(&x.referenced, "download needs exactly one of `url` or `selector`");
                    return None;
                }
            };
            if x.value.kind.value != "letter" {
                self.err(
                    &x.value.kind.referenced,
                    format!("download kind `{}` is not `letter`", x.value.kind.value),
                );
            }
            return Some(StepKind::Download {
                from,
                kind: x.value.kind.value.clone(),
            });
        }
        if let Some(x) = &r.if_ {
            let condition = self.condition(x, scope);
            let then = self.steps(r.then.as_deref().unwrap_or_default(), scope);
            let otherwise = self.steps(r.else_.as_deref().unwrap_or_default(), scope);
            if r.then.is_none() {
                self.err(&x.referenced, "an `if` step needs `then:` steps");
            }
            return Some(StepKind::If {
                condition,
                then,
                otherwise,
            });
        }
        if let Some(x) = &r.rows {
            let x = &x.value;
            let selector = self.sel(&x.selector, scope);
            let cells = x
                .cells
                .value
                .iter()
                .map(|(k, v)| (k.clone(), self.sel(v, scope)))
                .collect();
            let next_page = x.next_page.as_ref().map(|n| self.sel(n, scope));
            let into = self.var_name(&x.into, scope);
            let empty = x.empty.as_ref().map(|c| self.condition(c, scope));
            return Some(StepKind::Rows {
                selector,
                cells,
                next_page,
                max_pages: x.max_pages.unwrap_or(50),
                into,
                empty,
            });
        }
        if let Some(x) = &r.for_each {
            let x = &x.value;
            // The expression's variables are checked as a template's are.
            let expr = x.list.value.trim();
            let list = if expr.contains("{{") || expr.contains("{%") || expr.is_empty() {
                self.err(
                    &x.list.referenced,
                    format!("`{expr}` is not an expression (write `vars.rows` or `vars.codes | split(',')`, without braces)"),
                );
                Tpl {
                    source: String::new(),
                    at: Loc::of(&x.list.referenced),
                    secret: false,
                }
            } else {
                let wrapped = self.tpl(
                    &Spanned {
                        value: format!("{{{{ {expr} }}}}"),
                        referenced: x.list.referenced,
                        defined: x.list.defined,
                    },
                    scope,
                );
                Tpl {
                    source: expr.to_owned(),
                    ..wrapped
                }
            };
            let item = x.as_.as_ref().map(|a| a.value.clone()).unwrap_or_else(|| "item".into());
            let mut inner = scope.clone();
            inner.items.push(item.clone());
            inner.items.push("index".into());
            let steps = self.steps(&x.steps, &mut inner);
            scope.vars.extend(inner.vars);
            return Some(StepKind::ForEach { list, item, steps });
        }
        if let Some(x) = &r.frame {
            let selector = self.sel(&x.value.selector, scope);
            return Some(StepKind::Frame {
                selector,
                steps: self.steps(&x.value.steps, scope),
            });
        }
        if let Some(x) = &r.dialog {
            let accept = match x.value.action.value.as_str() {
                "accept" => true,
                "dismiss" => false,
                other => {
                    self.err(
                        &x.value.action.referenced,
                        format!("dialog action `{other}` is not `accept` or `dismiss`"),
                    );
                    true
                }
            };
            return Some(StepKind::Dialog {
                accept,
                expect: x.value.expect.as_ref().map(|e| self.tpl(e, scope)),
            });
        }
        if let Some(x) = &r.new_tab {
            let click = self.sel(&x.value.click, scope);
            return Some(StepKind::NewTab {
                click,
                steps: self.steps(&x.value.steps, scope),
            });
        }
        if let Some(x) = &r.script {
            let js = self.tpl(&x.value.js, scope);
            let into = x.value.into.as_ref().map(|i| self.var_name(i, scope));
            return Some(StepKind::Script { js, into });
        }
        if let Some(x) = &r.set {
            let pairs: Vec<(String, Tpl)> = x.value.iter().map(|(k, v)| (k.clone(), self.tpl(v, scope))).collect();
            scope.vars.extend(pairs.iter().map(|(k, _)| k.clone()));
            return Some(StepKind::Set(pairs));
        }
        if let Some(x) = &r.call {
            let Some(action) = Action::parse(&x.value) else {
                self.err(&x.referenced, format!("`{}` is not an action", x.value));
                return None;
            };
            if let Some(sets) = self.sets.get(action.as_str()) {
                scope.vars.extend(sets.iter().cloned());
            }
            return Some(StepKind::Call(action));
        }
        if let Some(x) = &r.fail {
            let kind = match x.value.kind.value.as_str() {
                "retryable" => FailKind::Retryable,
                "needs_human" => FailKind::NeedsHuman,
                "portal_changed" => FailKind::PortalChanged,
                "fatal" => FailKind::Fatal,
                other => {
                    self.err(
                        &x.value.kind.referenced,
                        format!("fail kind `{other}` is not one of retryable, needs_human, portal_changed, fatal"),
                    );
                    FailKind::Fatal
                }
            };
            return Some(StepKind::Fail {
                kind,
                message: self.tpl(&x.value.message, scope),
            });
        }
        if let Some(x) = &r.outcome {
            let o = &x.value;
            let matches = o.match_.as_ref().map(|m| {
                let m = &m.value;
                let mut opt = |t: &Option<S>| t.as_ref().map(|t| self.tpl(t, scope));
                MatchFields {
                    case_ref: opt(&m.case_ref),
                    member_id: opt(&m.member_id),
                    codes: opt(&m.codes),
                    service_start: opt(&m.service_start),
                    service_end: opt(&m.service_end),
                }
            });
            let mut opt = |t: &Option<S>| t.as_ref().map(|t| self.tpl(t, scope));
            let fields = OutcomeFields {
                status: Tpl {
                    source: String::new(),
                    at: Loc::default(),
                    secret: false,
                },
                reference: opt(&o.reference),
                auth_number: opt(&o.auth_number),
                valid_from: opt(&o.valid_from),
                valid_to: opt(&o.valid_to),
                approved_units: opt(&o.approved_units),
                decision_date: opt(&o.decision_date),
                denial_reason: opt(&o.denial_reason),
                request: opt(&o.request),
                reason: opt(&o.reason),
                matches,
            };
            let status = self.tpl(&o.status, scope);
            return Some(StepKind::Outcome(Box::new(OutcomeFields { status, ..fields })));
        }
        if let Some(x) = &r.http {
            return self.http(x, scope).map(|h| StepKind::Http(Box::new(h)));
        }
        if let Some(x) = &r.fetch {
            let f = &x.value;
            let url = self.tpl(&f.url, scope);
            let literal = url.source.trim_start();
            if !(literal.starts_with("{{")
                || literal.starts_with('/')
                || literal.starts_with("http://")
                || literal.starts_with("https://"))
            {
                self.err(
                    &f.url.referenced,
                    format!(
                        "url `{}` is not an http(s) URL, a path on the payer's base URL (`/…`) or a template giving one",
                        url.source
                    ),
                );
            }
            let into = f.into.as_ref().map(|i| self.var_name(i, scope));
            let steps = self.steps(f.steps.as_deref().unwrap_or_default(), scope);
            if into.is_none() && f.steps.is_none() {
                self.err(
                    &x.referenced,
                    "fetch needs `into` (a JSON answer into a variable) or `steps` (reads of the fetched page), or both",
                );
            }
            self.check_fetched_reads(&steps);
            return Some(StepKind::Fetch { url, into, steps });
        }
        None
    }

    /// Steps inside `fetch` read the fetched page: each must be a read (or
    /// a step that needs no page), never a browser action.
    fn check_fetched_reads(&mut self, steps: &[Step]) {
        for s in steps {
            if !s.kind.reads_fetched_page() {
                self.errors.push(PlaybookError {
                    file: self.file.to_owned(),
                    at: s.at,
                    message: format!(
                        "`{}` is not a read: inside `fetch` the steps read the fetched page without a browser \
                         (extract, rows, assert, wait_for, if, set, for_each, outcome, fail)",
                        s.kind.keyword()
                    ),
                });
                continue;
            }
            match &s.kind {
                StepKind::If { then, otherwise, .. } => {
                    self.check_fetched_reads(then);
                    self.check_fetched_reads(otherwise);
                }
                StepKind::ForEach { steps, .. } => self.check_fetched_reads(steps),
                _ => {}
            }
        }
    }

    fn http(&mut self, x: &Spanned<RawHttp>, scope: &mut Scope) -> Option<HttpStep> {
        let h = &x.value;
        let method = h.method.value.trim().to_owned();
        if !METHODS.contains(&method.as_str()) {
            self.err(
                &h.method.referenced,
                format!("method `{method}` is not one of {}", METHODS.join(", ")),
            );
        }
        let url = self.tpl(&h.url, scope);
        let literal = url.source.trim_start();
        if !(literal.starts_with("{{") || literal.starts_with("http://") || literal.starts_with("https://")) {
            self.err(
                &h.url.referenced,
                format!("url `{}` is not an http(s) URL (or a template giving one)", url.source),
            );
        }
        let mut headers: Vec<(String, Tpl)> = Vec::new();
        if let Some(map) = &h.headers {
            for (name, value) in &map.value {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
                {
                    self.err(&value.referenced, format!("`{name}` is not an HTTP header name"));
                }
                // Header names are case-insensitive: two spellings of one
                // name would send the header twice.
                if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                    self.err(&value.referenced, format!("header `{name}` is given twice"));
                }
                headers.push((name.clone(), self.tpl(value, scope)));
            }
        }
        let auth = h.auth.as_ref().and_then(|a| self.auth(a, scope));
        if auth.is_some() && headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("authorization")) {
            self.err(
                &x.referenced,
                "give either `auth:` or an `Authorization` header, not both",
            );
        }
        let body = match (&h.json, &h.body) {
            (Some(j), None) => Some(HttpBody::Json(self.json_tpl(&j.value, &j.referenced, scope))),
            (None, Some(b)) => Some(HttpBody::Text(self.tpl(b, scope))),
            (None, None) => None,
            (Some(_), Some(b)) => {
                self.err(&b.referenced, "an http step has `json:` or `body:`, not both");
                None
            }
        };
        if body.is_some() && matches!(method.as_str(), "GET" | "HEAD" | "DELETE") {
            self.err(&x.referenced, format!("a {method} request has no body"));
        }
        let content_type = match &h.content_type {
            Some(ct) if !ct.value.contains('/') => {
                self.err(&ct.referenced, format!("`{}` is not a media type", ct.value));
                ct.value.clone()
            }
            Some(ct) => ct.value.clone(),
            None => "application/json".to_owned(),
        };
        let expect = match &h.expect {
            None => Vec::new(),
            Some(codes) => {
                for c in &codes.value {
                    if !(100..=599).contains(c) {
                        self.err(&codes.referenced, format!("`{c}` is not an HTTP status code"));
                    }
                }
                codes.value.clone()
            }
        };
        let mut extract = Vec::new();
        if let Some(map) = &h.extract {
            for (var, source) in &map.value {
                let name = self.var_name(
                    &Spanned {
                        value: var.clone(),
                        referenced: source.referenced,
                        defined: source.defined,
                    },
                    scope,
                );
                let src = source.value.trim();
                let from = if src == "status" {
                    ExtractFrom::Status
                } else if let Some(header) = src.strip_prefix("header:") {
                    let header = header.trim();
                    if header.is_empty()
                        || !header
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        self.err(&source.referenced, format!("`{header}` is not an HTTP header name"));
                    }
                    ExtractFrom::Header(header.to_owned())
                } else if src.starts_with('/') {
                    if let Some(bad) = bad_pointer(src) {
                        self.err(&source.referenced, format!("`{src}` is not a JSON pointer: {bad}"));
                    }
                    ExtractFrom::Pointer(src.to_owned())
                } else {
                    self.err(
                        &source.referenced,
                        format!("extract `{var}`: `{src}` is not a JSON pointer (`/a/0/b`), `status` or `header:NAME`"),
                    );
                    ExtractFrom::Status
                };
                extract.push((name, from));
            }
        }
        let mut optional = Vec::new();
        for o in h.optional.iter().flatten() {
            if !extract.iter().any(|(n, _)| *n == o.value) {
                self.err(
                    &o.referenced,
                    format!("`{}` is not a variable this step extracts", o.value),
                );
            }
            optional.push(o.value.clone());
        }
        Some(HttpStep {
            method,
            url,
            headers,
            auth,
            body,
            content_type,
            expect,
            extract,
            optional,
        })
    }

    fn auth(&mut self, a: &Spanned<RawAuth>, scope: &Scope) -> Option<HttpAuth> {
        let r = &a.value;
        let n = [r.oauth2.is_some(), r.bearer.is_some(), r.basic.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if n != 1 {
            self.err(&a.referenced, "auth has exactly one of `oauth2`, `bearer`, `basic`");
            return None;
        }
        if let Some(o) = &r.oauth2 {
            let o = &o.value;
            let token_url = self.tpl(&o.token_url, scope);
            let client_id = self.tpl(&o.client_id, scope);
            let client_secret = self.tpl(&o.client_secret, scope);
            let scope_tpl = o.scope.as_ref().map(|s| self.tpl(s, scope));
            return Some(HttpAuth::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope: scope_tpl,
            });
        }
        if let Some(b) = &r.bearer {
            let mut t = self.tpl(b, scope);
            // A bearer token is a credential whatever it is rendered from.
            t.secret = true;
            return Some(HttpAuth::Bearer(t));
        }
        let b = &r.basic.as_ref().expect("one key is set").value;
        let username = self.tpl(&b.username, scope);
        let mut password = self.tpl(&b.password, scope);
        password.secret = true;
        Some(HttpAuth::Basic { username, password })
    }

    /// A `json:` body: every string leaf is a template, checked here.
    fn json_tpl(&mut self, v: &Value, at: &serde_saphyr::Location, scope: &Scope) -> JsonTpl {
        match v {
            Value::String(text) => {
                let spanned = Spanned {
                    value: text.clone(),
                    referenced: *at,
                    defined: *at,
                };
                let t = self.tpl(&spanned, scope);
                if single_expression(text).is_some() {
                    JsonTpl::Expr(t)
                } else {
                    JsonTpl::Text(t)
                }
            }
            Value::Array(items) => JsonTpl::Array(items.iter().map(|i| self.json_tpl(i, at, scope)).collect()),
            Value::Object(m) => JsonTpl::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), self.json_tpl(v, at, scope)))
                    .collect(),
            ),
            other => JsonTpl::Literal(other.clone()),
        }
    }

    fn var_name(&mut self, s: &S, scope: &mut Scope) -> String {
        let name = s.value.trim().trim_start_matches("vars.").to_owned();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.err(
                &s.referenced,
                format!("`{}` is not a variable name (letters, digits, `_`)", s.value),
            );
        }
        scope.vars.insert(name.clone());
        name
    }

    /// Whether a dotted path names something in the context.
    fn known(&self, path: &str, scope: &Scope) -> bool {
        let head = path.split('.').next().unwrap_or_default();
        match head {
            "case" | "practice" | "payer" => template::path_exists(&self.sample, path),
            "account" | "secrets" => path.split('.').nth(1).is_some_and(|n| self.credentials.contains(n)),
            "vars" => path.split('.').nth(1).is_some_and(|n| scope.vars.contains(n)),
            _ => scope.items.iter().any(|i| i == head) || TEMPLATE_GLOBALS.contains(&head),
        }
    }

    fn tpl(&mut self, s: &S, scope: &Scope) -> Tpl {
        let source = s.value.clone();
        let mut secret = false;
        match template::variables(&self.env, &source) {
            Err(e) => self.err(&s.referenced, format!("template does not parse: {e}")),
            Ok(vars) => {
                let mut vars: Vec<String> = vars.into_iter().collect();
                vars.sort();
                for v in vars {
                    secret |= v.starts_with("secrets.") || v == "secrets";
                    if !self.known(&v, scope) {
                        let hint = match v.split('.').next().unwrap_or_default() {
                            "account" | "secrets" => " (list the name under `credentials:`)".to_owned(),
                            "vars" => " (no earlier step sets it)".to_owned(),
                            "case" | "practice" | "payer" => String::new(),
                            _ => " (variables are case, practice, payer, account, secrets, vars and loop items)"
                                .to_owned(),
                        };
                        self.err(&s.referenced, format!("undefined variable `{v}`{hint}"));
                    }
                }
            }
        }
        Tpl {
            source,
            at: Loc::of(&s.referenced),
            secret,
        }
    }

    fn sel(&mut self, s: &S, scope: &Scope) -> Sel {
        let css = self.tpl(s, scope);
        // A selector with template parts is checked as it renders against
        // the sample context (a loop's `index` as 1; what only a run knows,
        // such as `vars.…` or a loop item, as the word `x`).
        let probe = if css.source.contains("{{") || css.source.contains("{%") {
            match template::render(&self.probe_env, &css.source, &self.probe_ctx) {
                Ok(p) => p,
                // The template's own problem is reported by `tpl`.
                Err(_) => return Sel { css },
            }
        } else {
            css.source.clone()
        };
        if let Err(e) = scraper::Selector::parse(&probe) {
            let rendered = if probe == css.source {
                String::new()
            } else {
                format!(" (with sample values: `{probe}`)")
            };
            self.err(
                &s.referenced,
                format!("`{}` is not a CSS selector{rendered}: {}", css.source, css_problem(&e)),
            );
        }
        Sel { css }
    }

    fn condition(&mut self, c: &Spanned<RawCondition>, scope: &Scope) -> Condition {
        let r = &c.value;
        let n = [
            r.present.is_some(),
            r.absent.is_some(),
            r.text.is_some(),
            r.url.is_some(),
            r.expr.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if n != 1 {
            self.err(
                &c.referenced,
                "a condition has exactly one of `present`, `absent`, `text`, `url`, `expr`",
            );
        }
        if let Some(x) = &r.present {
            Condition::Present(self.sel(x, scope))
        } else if let Some(x) = &r.absent {
            Condition::Absent(self.sel(x, scope))
        } else if let Some(x) = &r.text {
            Condition::Text(self.tpl(x, scope))
        } else if let Some(x) = &r.url {
            Condition::Url(self.tpl(x, scope))
        } else if let Some(x) = &r.expr {
            let wrapped = Spanned {
                value: format!("{{% if {} %}}true{{% else %}}false{{% endif %}}", x.value),
                referenced: x.referenced,
                defined: x.defined,
            };
            Condition::Expr(self.tpl(&wrapped, scope))
        } else {
            Condition::Text(Tpl {
                source: String::new(),
                at: Loc::of(&c.referenced),
                secret: false,
            })
        }
    }
}

/// Renders what a run would know as the word `x`, for checking the shape
/// of a selector before any run.
fn probe_environment() -> minijinja::Environment<'static> {
    let mut env = template::environment();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    env.set_formatter(|out, state, value| {
        if value.is_undefined() {
            out.write_str("x")
                .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string()))
        } else {
            minijinja::escape_formatter(out, state, value)
        }
    });
    env
}

/// What is wrong with a selector, in words (the CSS parser's own names for
/// its errors mean nothing to a playbook author).
fn css_problem(e: &scraper::error::SelectorErrorKind) -> String {
    use scraper::error::SelectorErrorKind as K;
    match e {
        K::EndOfLine => "it ends where more was expected (an unclosed `[`, `(` or quote?)".into(),
        K::UnexpectedToken => "unexpected text at this point".into(),
        K::UnexpectedSelectorParseError(kind) => {
            // The selectors crate's error names, by their Debug form.
            let debug = format!("{kind:?}");
            let name = debug.split(['(', ' ', '{']).next().unwrap_or_default();
            match name {
                "BadValueInAttr" => "an attribute value must be one word or quoted (`[value='two words']`)".into(),
                "EmptySelector" => "it is empty".into(),
                "DanglingCombinator" => "it ends with a combinator (`>`, `+`, `~`)".into(),
                "UnsupportedPseudoClassOrElement" | "UnexpectedIdent" => {
                    "a pseudo-class it does not know, or one without its argument".into()
                }
                "ExpectedBarInAttr" | "InvalidQualNameInAttr" | "NoQualifiedNameInAttributeSelector" => {
                    "an attribute selector is malformed (`[name]`, `[name='value']`)".into()
                }
                other => other.chars().fold(String::new(), |mut acc, c| {
                    if c.is_uppercase() && !acc.is_empty() {
                        acc.push(' ');
                    }
                    acc.push(c.to_ascii_lowercase());
                    acc
                }),
            }
        }
        other => other.to_string().to_lowercase(),
    }
}

/// `500ms`, `10s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 500ms, 10s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{s}` is not a duration such as 500ms, 10s or 2m")),
    }
}

/// What is wrong with a JSON pointer (RFC 6901), if anything: `~` must be
/// `~0` or `~1`.
fn bad_pointer(p: &str) -> Option<String> {
    let mut chars = p.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.peek(), Some('0') | Some('1')) {
            return Some("`~` must be followed by 0 or 1 (`~0` is `~`, `~1` is `/`)".into());
        }
    }
    if p.contains("//") {
        return Some("an empty segment (`//`)".into());
    }
    None
}

/// The expression of a template that is exactly one `{{ expression }}`.
pub fn single_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%")).then_some(inner.trim())
}
