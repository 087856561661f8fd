//! The step interpreter: one playbook action on one WebDriver session.
//!
//! Waits are explicit and bounded by each step's timeout; nothing sleeps a
//! fixed time. A failed step is classified (see `FailureKind`) by looking at
//! the page through the playbook's `detect` rules before anything else.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::{json, Map, Value};

use super::{FailureKind, Observation, StepFailure, Trace};
use crate::playbook::{
    template, Action, Condition, DownloadFrom, ExtractOn, FailKind, Playbook, Sel, SelectBy, Step, StepKind, Tpl,
};

/// How failures recognised by the playbook's `detect` rules begin.
const DETECTED: &str = "the portal ";

/// How often explicit waits look again.
const POLL: Duration = Duration::from_millis(100);

/// An `assert` is decided once the page has loaded and not changed for
/// this long (see `PRESENCE_JS`).
const SETTLED: Duration = Duration::from_millis(1000);

/// Called right before a `commit: true` step: the engine records the intent
/// durably before the click that sends the request.
pub type CommitHook<'a> =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> + Send + Sync + 'a>;

/// A file fetched by a `download` step.
pub struct Fetched {
    pub kind: String,
    pub bytes: Vec<u8>,
    pub media_type: String,
}

pub struct Interp<'a> {
    /// The browser session; `None` for an `api` playbook, whose steps never
    /// need one (the compiler refuses browser steps there).
    pub client: Option<&'a Client>,
    pub playbook: &'a Playbook,
    pub env: minijinja::Environment<'static>,
    /// case, practice, payer, account, secrets, vars, loop items.
    pub ctx: Value,
    pub trace: Trace,
    pub observations: Vec<Observation>,
    pub downloads: Vec<Fetched>,
    pub committed: bool,
    pub on_commit: Option<CommitHook<'a>>,
    pub http: reqwest::Client,
    /// What `http` steps need: their client, retry policy and token caches.
    pub api: super::http::ApiContext,
    /// Secret values (the account's secrets, rendered credentials, access
    /// tokens): scrubbed from every failure message and trace line.
    pub redact: Vec<String>,
    /// Running `login`: the login page is where we are meant to be, so the
    /// `logged_out` rules do not apply.
    pub in_login: bool,
    /// The payer's `Retry-After` when an `http` step was throttled.
    pub throttled: Option<std::time::Duration>,
    /// Counting the finished steps of `submit` (for fault injection).
    pub count_steps: bool,
    pub steps_done: u32,
    /// Set when the run read less than there was (a `rows` step stopped
    /// at its page cap): what it left out, for the run report.
    pub partial: Option<String>,
    /// Where uploads are staged under the practice's own file names
    /// (`DATA/run/uploads`); the run's folder is made on first use and
    /// removed with the interpreter.
    pub upload_root: std::path::PathBuf,
    pub uploads: Option<tempfile::TempDir>,
    /// A dry run: stop before the first `commit: true` step.
    pub dry_run: bool,
    /// Where a dry run stopped.
    pub stopped_before: Option<crate::playbook::Loc>,
    /// Inside a `fetch` step's `steps`: the fetched page, which reads and
    /// conditions look at instead of the browser's.
    pub page: Option<super::page::FetchedPage>,
    /// The browser session's cookies as a `Cookie` header (name, value),
    /// read once from the browser and kept with the session until the next
    /// login; a fetched answer's `Set-Cookie` updates them.
    pub cookies: Option<Vec<(String, String)>>,
    /// The `extract` steps right after the running one in its step list,
    /// which it reads with its own in one page script (`read_in_page`).
    pub following: Vec<Step>,
    /// What that script read for the steps after it: a step's place and
    /// its value, or why there is none.
    pub prefetched: Vec<(crate::playbook::Loc, Result<String, String>)>,
}

type StepResult = Result<(), StepFailure>;

/// An answer of a session-sharing request (`fetch`, `download`) that is not
/// a success: a server error passes, anything else the step did not expect
/// means the portal changed. (401/403 are a lost session, decided before.)
fn http_refusal(step: &Step, what: &str, status: reqwest::StatusCode) -> Option<StepFailure> {
    if status.is_success() {
        return None;
    }
    let kind = if status.is_server_error() {
        FailureKind::Retryable
    } else {
        FailureKind::PortalChanged
    };
    Some(fail(step, kind, format!("{what} answered HTTP {status}")))
}

pub(super) fn fail(step: &Step, kind: FailureKind, message: impl Into<String>) -> StepFailure {
    StepFailure {
        kind,
        at: step.at,
        keyword: step.kind.keyword(),
        message: message.into(),
    }
}

impl<'a> Interp<'a> {
    fn browser(&self, step: &Step) -> Result<&'a Client, StepFailure> {
        self.client.ok_or_else(|| {
            fail(
                step,
                FailureKind::Fatal,
                "this step needs a browser page, and an api playbook has none",
            )
        })
    }

    /// `text` with every known secret value replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.redact {
            // Short values would blank out ordinary words.
            if s.len() >= 4 {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }

    pub fn render(&self, step: &Step, t: &Tpl) -> Result<String, StepFailure> {
        template::render(&self.env, &t.source, &self.ctx)
            .map_err(|e| fail(step, FailureKind::Fatal, format!("template at line {}: {e}", t.at.line)))
    }

    fn css(&self, step: &Step, s: &Sel) -> Result<String, StepFailure> {
        self.render(step, &s.css)
    }

    pub(super) fn set_var(&mut self, name: &str, value: Value) {
        if let Some(Value::Object(vars)) = self.ctx.get_mut("vars") {
            vars.insert(name.to_owned(), value);
        }
    }

    /// Runs an action's steps in order.
    pub fn run_steps<'s>(&'s mut self, steps: &'s [Step]) -> Pin<Box<dyn Future<Output = StepResult> + Send + 's>>
    where
        'a: 's,
    {
        Box::pin(async move {
            for (i, step) in steps.iter().enumerate() {
                self.following = following_extracts(step, &steps[i + 1..]);
                self.run_step(step).await?;
            }
            Ok(())
        })
    }

    pub(super) async fn run_step(&mut self, step: &Step) -> StepResult {
        if self.dry_run && step.commit {
            // Everything up to the step that sends; the run ends here.
            self.stopped_before = Some(step.at);
            self.trace.note(format!(
                "{:>4}:{:<3} {:<28} dry run: stopped before the commit step; nothing was sent",
                step.at.line,
                step.at.col,
                step.kind.keyword()
            ));
            return Err(fail(
                step,
                FailureKind::Fatal,
                "dry run: stopped before the commit step",
            ));
        }
        let mut attempt = 0;
        loop {
            let started = std::time::Instant::now();
            let result = self.exec(step).await;
            let result = match result {
                Err(f) => {
                    // What a failed step's page script read for the steps
                    // after it is not theirs on another attempt.
                    self.prefetched.clear();
                    let f = self.classify(step, f).await;
                    Err(StepFailure {
                        message: self.scrub(&f.message),
                        ..f
                    })
                }
                ok => ok,
            };
            self.trace
                .record(step, attempt, started.elapsed(), result.as_ref().err());
            if result.is_ok() && self.count_steps {
                self.steps_done += 1;
                super::fault::after_step(self.steps_done);
            }
            match result {
                Err(f) if f.kind == FailureKind::Retryable && attempt < step.retries => attempt += 1,
                other => return other,
            }
        }
    }

    /// A failure seen through the playbook's `detect` rules: the page may
    /// say we were logged out, need a human, or the portal is down.
    async fn classify(&self, step: &Step, f: StepFailure) -> StepFailure {
        // The playbook's own verdicts, and pages already recognised while
        // waiting, stand as they are.
        if f.message.starts_with("playbook:") || f.message.starts_with(DETECTED) {
            return f;
        }
        match self.page_says_stop(step).await {
            Err(d) => StepFailure {
                message: format!("{} (while: {})", d.message, f.message),
                ..d
            },
            Ok(()) => f,
        }
    }

    /// The first element matching a selector: at once when it is there,
    /// else after a wait in the page (`wait_in_page`, no polling) until it
    /// is, a `detect` page shows, or the step's timeout.
    async fn find(&self, step: &Step, sel: &Sel) -> Result<fantoccini::elements::Element, StepFailure> {
        let css = self.css(step, sel)?;
        let deadline = tokio::time::Instant::now() + step.timeout;
        loop {
            let found = self
                .browser(step)?
                .find_all(Locator::Css(&css))
                .await
                .map_err(|e| webdriver_failure(step, e))?;
            if let Some(el) = found.into_iter().next() {
                return Ok(el);
            }
            if tokio::time::Instant::now() >= deadline
                || !self.wait_in_page(step, json!({ "present": css }), deadline).await?
            {
                return Err(fail(
                    step,
                    FailureKind::PortalChanged,
                    format!("no element matches `{css}` after {:?}", step.timeout),
                ));
            }
        }
    }

    /// Waits in the page, one script call (`PRESENCE_JS` without its quiet
    /// period: a `MutationObserver`, no polling), until a condition (as
    /// `js_condition` gives it) holds — `true` — or `deadline` passes —
    /// `false`. A page the `detect` rules know ends the wait, classified.
    async fn wait_in_page(
        &self,
        step: &Step,
        cond: Value,
        deadline: tokio::time::Instant,
    ) -> Result<bool, StepFailure> {
        let stops = Value::Array(self.js_stops(step)?);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Under WebDriver's script limit (30 s); longer waits loop.
            let wait_ms = left.min(Duration::from_secs(20)).as_millis() as u64;
            let args = vec![cond.clone(), stops.clone(), Value::Null, json!(wait_ms)];
            // `None`: the page went away under the script; look at the new one.
            let answer = self.page_script(step, PRESENCE_JS, args).await?;
            let said = |k: &str| answer.as_ref().and_then(|v| v.get(k)).and_then(Value::as_bool) == Some(true);
            if said("holds") {
                return Ok(true);
            }
            if let Some(e) = answer.as_ref().and_then(|v| v.get("error")).and_then(Value::as_str) {
                return Err(fail(
                    step,
                    FailureKind::Fatal,
                    format!("the page cannot check {cond}: {e}"),
                ));
            }
            if said("stop") {
                self.page_says_stop(step).await?;
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// While waiting: a page the playbook's `detect` rules recognise (an
    /// error page, a logout, a CAPTCHA) ends the wait at once, classified.
    async fn page_says_stop(&self, step: &Step) -> StepResult {
        if self.client.is_none() && self.page.is_none() {
            return Ok(());
        }
        let d = &self.playbook.detect;
        let no_conditions = Vec::new();
        for (conds, kind, what) in [
            (
                &d.needs_human,
                FailureKind::NeedsHuman,
                "shows a page only a person can pass",
            ),
            (
                if self.in_login { &no_conditions } else { &d.logged_out },
                FailureKind::SessionLost,
                "logged us out",
            ),
            (&d.unavailable, FailureKind::Retryable, "is unavailable"),
        ] {
            for c in conds {
                if self.holds(step, c).await.unwrap_or(false) {
                    return Err(fail(
                        step,
                        kind,
                        format!("{DETECTED}{what} ({})", describe_in(self, step, c)),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Evaluates a condition once, without waiting.
    async fn holds(&self, step: &Step, c: &Condition) -> Result<bool, StepFailure> {
        if let Some(page) = &self.page {
            let bad = |e: String| fail(step, FailureKind::Fatal, e);
            return Ok(match c {
                Condition::Present(s) => page.present(&self.css(step, s)?).map_err(bad)?,
                Condition::Absent(s) => !page.present(&self.css(step, s)?).map_err(bad)?,
                Condition::Text(t) => page.text().contains(&self.render(step, t)?),
                Condition::Url(t) => page.url.contains(&self.render(step, t)?),
                Condition::Expr(t) => self.render(step, t)? == "true",
            });
        }
        Ok(match c {
            Condition::Present(s) => {
                let css = self.css(step, s)?;
                !self
                    .browser(step)?
                    .find_all(Locator::Css(&css))
                    .await
                    .map_err(|e| webdriver_failure(step, e))?
                    .is_empty()
            }
            Condition::Absent(s) => {
                let css = self.css(step, s)?;
                self.browser(step)?
                    .find_all(Locator::Css(&css))
                    .await
                    .map_err(|e| webdriver_failure(step, e))?
                    .is_empty()
            }
            Condition::Text(t) => {
                let want = self.render(step, t)?;
                let text = self
                    .browser(step)?
                    .execute("return document.body ? document.body.innerText : '';", vec![])
                    .await
                    .map_err(|e| webdriver_failure(step, e))?;
                text.as_str().unwrap_or_default().contains(&want)
            }
            Condition::Url(t) => {
                let want = self.render(step, t)?;
                self.browser(step)?
                    .current_url()
                    .await
                    .map_err(|e| webdriver_failure(step, e))?
                    .as_str()
                    .contains(&want)
            }
            Condition::Expr(t) => self.render(step, t)? == "true",
        })
    }

    async fn wait_until(&self, step: &Step, c: &Condition) -> StepResult {
        let deadline = tokio::time::Instant::now() + step.timeout;
        if self.client.is_some() && self.page.is_none() && !matches!(c, Condition::Expr(_)) {
            // In the browser: one script call that waits for it.
            if self.wait_in_page(step, self.js_condition(step, c)?, deadline).await? {
                return Ok(());
            }
            return Err(fail(
                step,
                FailureKind::Retryable,
                format!(
                    "still not true after {:?}: {}",
                    step.timeout,
                    describe_in(self, step, c)
                ),
            ));
        }
        loop {
            if self.holds(step, c).await? {
                return Ok(());
            }
            self.page_says_stop(step).await?;
            // Without a page nothing changes while we wait: an `api`
            // playbook's expression, or a fetched page, is decided at once.
            if self.client.is_none() || self.page.is_some() {
                return Err(fail(
                    step,
                    FailureKind::Retryable,
                    format!("not true: {}", describe_in(self, step, c)),
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(fail(
                    step,
                    FailureKind::Retryable,
                    format!(
                        "still not true after {:?}: {}",
                        step.timeout,
                        describe_in(self, step, c)
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until a condition holds, or the page has loaded and then not
    /// changed for `SETTLED` without it holding (one script call that
    /// watches the page: `readystatechange` and a `MutationObserver`, no
    /// polling) — not the step's whole timeout. A page the `detect` rules
    /// know ends the wait as in `wait_until`. The failure's message says
    /// how it ended (`on the settled page` / `after TIMEOUT`).
    async fn settled(&self, step: &Step, c: &Condition) -> StepResult {
        if self.client.is_none() || self.page.is_some() || matches!(c, Condition::Expr(_)) {
            return self.wait_until(step, c).await.map_err(|f| {
                if f.kind == FailureKind::Retryable && !f.message.starts_with(DETECTED) {
                    // Said by the assertion's own message.
                    StepFailure {
                        message: String::new(),
                        ..f
                    }
                } else {
                    f
                }
            });
        }
        let cond = self.js_condition(step, c)?;
        let stops = self.js_stops(step)?;
        let deadline = tokio::time::Instant::now() + step.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait_ms = left.min(Duration::from_secs(20)).as_millis() as u64;
            let args = vec![
                cond.clone(),
                Value::Array(stops.clone()),
                json!(SETTLED.as_millis() as u64),
                json!(wait_ms),
            ];
            // `None`: the page went away under the script; look at the new one.
            let answer = self.page_script(step, PRESENCE_JS, args).await?;
            let said = |k: &str| answer.as_ref().and_then(|v| v.get(k)).and_then(Value::as_bool) == Some(true);
            if said("holds") {
                return Ok(());
            }
            if let Some(e) = answer.as_ref().and_then(|v| v.get("error")).and_then(Value::as_str) {
                return Err(fail(
                    step,
                    FailureKind::Fatal,
                    format!("the page cannot check {cond}: {e}"),
                ));
            }
            if said("stop") {
                self.page_says_stop(step).await?;
            }
            if said("settled") {
                return Err(fail(
                    step,
                    FailureKind::Retryable,
                    format!(" (on the settled page: loaded, then unchanged for {SETTLED:?})"),
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(fail(
                    step,
                    FailureKind::Retryable,
                    format!(" (after {:?}, the page still changing)", step.timeout),
                ));
            }
        }
    }

    async fn exec(&mut self, step: &Step) -> StepResult {
        let wd = |e| webdriver_failure(step, e);
        match &step.kind {
            StepKind::Navigate { url } => {
                let url = self.render(step, url)?;
                self.goto(step, &url).await?;
            }
            StepKind::Fill { selector, value } => {
                let value = self.render(step, value)?;
                let el = self.find(step, selector).await?;
                el.clear().await.map_err(wd)?;
                el.send_keys(&value).await.map_err(wd)?;
            }
            StepKind::Select { selector, by } => {
                let el = self.find(step, selector).await?;
                match by {
                    SelectBy::Value(v) => el.select_by_value(&self.render(step, v)?).await,
                    SelectBy::Label(l) => el.select_by_label(&self.render(step, l)?).await,
                }
                .map_err(|e| {
                    if e.is_no_such_element() {
                        fail(step, FailureKind::PortalChanged, "the option is not in the list")
                    } else {
                        wd(e)
                    }
                })?;
            }
            StepKind::Check { selector, checked } => {
                let el = self.find(step, selector).await?;
                if el.is_selected().await.map_err(wd)? != *checked {
                    el.click().await.map_err(wd)?;
                }
            }
            StepKind::Upload { selector, file } => {
                let path = self.render(step, file)?;
                if !std::path::Path::new(&path).is_file() {
                    return Err(fail(
                        step,
                        FailureKind::Fatal,
                        "the file to upload is missing from the data directory",
                    ));
                }
                // A case's attachment reaches the payer under the name the
                // practice gave it, not precert's stored name.
                let path = match self.attachment_name(&path) {
                    Some(name) => self.stage_upload(step, &path, &name)?,
                    None => path,
                };
                self.find(step, selector).await?.send_keys(&path).await.map_err(wd)?;
            }
            StepKind::Click { selector } => {
                let el = self.find(step, selector).await?;
                self.record_intent(step).await?;
                el.click().await.map_err(wd)?;
                if step.commit {
                    super::fault::after_commit();
                }
            }
            StepKind::WaitFor(c) => self.wait_until(step, c).await?,
            StepKind::Assert(c) => {
                // An assertion waits for the page to load and settle, no
                // longer: failing it means the portal is not what the
                // playbook expects.
                if let Err(f) = self.settled(step, c).await {
                    // A page the `detect` rules know keeps its own verdict
                    // (an error page is retried, not a changed portal).
                    if f.kind == FailureKind::Retryable && !f.message.starts_with(DETECTED) {
                        // Signing in, a sign-in page where the signed-in page
                        // should be means the portal ended the session
                        // under us (a forced logout, an expired MFA step):
                        // the login is tried again, the portal has not
                        // changed. (While signing in the `logged_out` rules
                        // are not checked as the steps wait: the sign-in
                        // page is where they are.)
                        if self.in_login {
                            for lo in &self.playbook.detect.logged_out {
                                if self.holds(step, lo).await.unwrap_or(false) {
                                    return Err(fail(
                                        step,
                                        FailureKind::SessionLost,
                                        format!(
                                            "{DETECTED}sent us back to its sign-in page ({}) instead of: {}",
                                            describe_in(self, step, lo),
                                            describe_in(self, step, c)
                                        ),
                                    ));
                                }
                            }
                        }
                        return Err(fail(
                            step,
                            FailureKind::PortalChanged,
                            format!(
                                "assertion failed: {}{}",
                                describe_in(self, step, c),
                                match f.message.as_str() {
                                    "" => String::new(),
                                    how if how.starts_with(" (") => how.to_owned(),
                                    other => format!(" (while: {other})"),
                                }
                            ),
                        ));
                    }
                    return Err(f);
                }
            }
            StepKind::Extract {
                from,
                attribute,
                regex,
                into,
                optional,
            } => {
                let following = std::mem::take(&mut self.following);
                let on_page = match (&self.page, from) {
                    (None, _) => None,
                    (Some(page), ExtractOn::Selector(selector)) => {
                        let css = self.css(step, selector)?;
                        let read = page
                            .read(&css, attribute.as_deref())
                            .map_err(|e| fail(step, FailureKind::Fatal, e))?;
                        Some(read.ok_or_else(|| {
                            fail(
                                step,
                                FailureKind::PortalChanged,
                                format!("no element matches `{css}` in the fetched page"),
                            )
                        }))
                    }
                    (Some(page), ExtractOn::Label { label, within }) => {
                        let text = self.render(step, label)?;
                        let within = within.as_ref().map(|w| self.css(step, w)).transpose()?;
                        let read = page
                            .label(&text, within.as_deref(), attribute.as_deref())
                            .map_err(|e| fail(step, FailureKind::Fatal, e))?;
                        Some(read.ok_or_else(|| {
                            fail(
                                step,
                                FailureKind::PortalChanged,
                                format!("no value next to a label `{text}` in the fetched page"),
                            )
                        }))
                    }
                };
                let value = match (on_page, from) {
                    (Some(Ok(v)), _) => v,
                    (Some(Err(f)), _) if *optional && f.kind == FailureKind::PortalChanged => String::new(),
                    (Some(Err(f)), _) => return Err(f),
                    (None, _) => match self.read_in_page(step, following).await {
                        Err(f) if *optional && f.kind == FailureKind::PortalChanged => String::new(),
                        other => other?,
                    },
                };
                let value = match regex {
                    None => value.trim().to_owned(),
                    Some(re) => {
                        let re = regex::Regex::new(re).map_err(|e| fail(step, FailureKind::Fatal, e.to_string()))?;
                        match re.captures(&value) {
                            Some(c) => c
                                .get(1)
                                .or_else(|| c.get(0))
                                .map(|m| m.as_str().trim().to_owned())
                                .unwrap_or_default(),
                            None if *optional => String::new(),
                            None => {
                                return Err(fail(
                                    step,
                                    FailureKind::PortalChanged,
                                    format!("the text does not match /{re}/"),
                                ))
                            }
                        }
                    }
                };
                self.set_var(into, Value::String(value));
            }
            StepKind::Totp { secret, into } => {
                let seed = self.render(step, secret)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let code = crate::totp::code(&seed, now).map_err(|e| fail(step, FailureKind::Fatal, e))?;
                self.set_var(into, Value::String(code));
            }
            StepKind::Screenshot { name } => {
                let png = self.browser(step)?.screenshot().await.map_err(wd)?;
                self.trace.screenshots.push((name.clone(), png));
            }
            StepKind::Download { from, kind } => {
                let href = match from {
                    DownloadFrom::Url(u) => self.render(step, u)?,
                    DownloadFrom::Link(s) => self
                        .find(step, s)
                        .await?
                        .attr("href")
                        .await
                        .map_err(wd)?
                        .unwrap_or_default(),
                };
                let fetched = self.fetch(step, &href, kind).await?;
                self.downloads.push(fetched);
            }
            StepKind::If {
                condition,
                then,
                otherwise,
            } => {
                let branch = if self.holds(step, condition).await? {
                    then
                } else {
                    otherwise
                };
                self.run_steps(branch).await?;
            }
            StepKind::Rows {
                selector,
                cells,
                next_page,
                max_pages,
                into,
                empty,
            } => {
                let rows = if self.page.is_some() {
                    self.fetched_rows(step, selector, cells, next_page.as_ref(), *max_pages, empty.as_ref())
                        .await?
                } else {
                    self.read_rows(step, selector, cells, next_page.as_ref(), *max_pages, empty.as_ref())
                        .await?
                };
                self.set_var(into, Value::Array(rows));
            }
            StepKind::ForEach { list, item, steps } => {
                let items = self.list_items(step, list)?;
                for (i, v) in items.into_iter().enumerate() {
                    if let Value::Object(m) = &mut self.ctx {
                        m.insert(item.clone(), v);
                        m.insert("index".into(), json!(i + 1));
                    }
                    self.run_steps(steps).await?;
                }
                if let Value::Object(m) = &mut self.ctx {
                    m.remove(item);
                    m.remove("index");
                }
            }
            StepKind::Frame { selector, steps } => {
                let el = self.find(step, selector).await?;
                el.enter_frame().await.map_err(wd)?;
                let result = self.run_steps(steps).await;
                self.browser(step)?.enter_parent_frame().await.map_err(wd)?;
                result?;
            }
            StepKind::Dialog { accept, expect } => {
                let text = self.wait_for_alert(step).await?;
                if let Some(e) = expect {
                    let want = self.render(step, e)?;
                    if !text.contains(&want) {
                        return Err(fail(
                            step,
                            FailureKind::PortalChanged,
                            format!("the dialog says `{text}`, not `{want}`"),
                        ));
                    }
                }
                self.record_intent(step).await?;
                if *accept {
                    self.browser(step)?.accept_alert().await
                } else {
                    self.browser(step)?.dismiss_alert().await
                }
                .map_err(wd)?;
                if step.commit {
                    super::fault::after_commit();
                }
            }
            StepKind::NewTab { click, steps } => {
                let before = self.browser(step)?.windows().await.map_err(wd)?;
                let original = self.browser(step)?.window().await.map_err(wd)?;
                self.find(step, click).await?.click().await.map_err(wd)?;
                let deadline = tokio::time::Instant::now() + step.timeout;
                let tab = loop {
                    let now = self.browser(step)?.windows().await.map_err(wd)?;
                    if let Some(h) = now.into_iter().find(|h| !before.contains(h)) {
                        break h;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(fail(step, FailureKind::PortalChanged, "no new tab opened"));
                    }
                    tokio::time::sleep(POLL).await;
                };
                self.browser(step)?.switch_to_window(tab).await.map_err(wd)?;
                let result = self.run_steps(steps).await;
                let _ = self.browser(step)?.close_window().await;
                self.browser(step)?.switch_to_window(original).await.map_err(wd)?;
                result?;
            }
            StepKind::Script { js, into } => {
                let js = self.render(step, js)?;
                self.record_intent(step).await?;
                let v = self.browser(step)?.execute(&js, vec![]).await.map_err(wd)?;
                if step.commit {
                    super::fault::after_commit();
                }
                if let Some(into) = into {
                    self.set_var(into, v);
                }
            }
            StepKind::Set(pairs) => {
                for (k, t) in pairs {
                    let v = self.render(step, t)?;
                    self.set_var(k, Value::String(v));
                }
            }
            StepKind::Call(action) => self.call(step, *action).await?,
            StepKind::Http(h) => self.http_step(step, h).await?,
            StepKind::Fetch { url, into, steps } => {
                let url = self.render(step, url)?;
                match self.fetch_page(step, &url).await? {
                    Fetch::Json(v) => {
                        if !steps.is_empty() {
                            return Err(fail(
                                step,
                                FailureKind::PortalChanged,
                                "the portal answered JSON, and the steps read an HTML page (read JSON with `into`)",
                            ));
                        }
                        if let Some(into) = into {
                            self.set_var(into, v);
                        }
                    }
                    Fetch::Html(page) => {
                        if let Some(into) = into {
                            self.set_var(into, Value::String(page.text()));
                        }
                        let outer = self.page.replace(page);
                        let result = self.run_steps(steps).await;
                        self.page = outer;
                        result?;
                    }
                }
            }
            StepKind::Fail { kind, message } => {
                let kind = match kind {
                    FailKind::Retryable => FailureKind::Retryable,
                    FailKind::NeedsHuman => FailureKind::NeedsHuman,
                    FailKind::PortalChanged => FailureKind::PortalChanged,
                    FailKind::Fatal => FailureKind::Fatal,
                };
                let message = self.render(step, message)?;
                return Err(fail(step, kind, format!("playbook: {message}")));
            }
            StepKind::Outcome(o) => {
                let wording = self.render(step, &o.status)?;
                let Some(status) = self.playbook.outcome(&wording) else {
                    return Err(fail(
                        step,
                        FailureKind::PortalChanged,
                        format!("the portal's status `{wording}` is not in the playbook's outcome map"),
                    ));
                };
                let field = |t: &Option<Tpl>| -> Result<Option<String>, StepFailure> {
                    match t {
                        None => Ok(None),
                        Some(t) => Ok(Some(self.render(step, t)?).filter(|s: &String| !s.trim().is_empty())),
                    }
                };
                let candidate = match &o.matches {
                    None => None,
                    Some(m) => Some(super::Candidate {
                        case_ref: field(&m.case_ref)?,
                        member_id: field(&m.member_id)?,
                        codes: field(&m.codes)?,
                        service_start: field(&m.service_start)?,
                        service_end: field(&m.service_end)?,
                    }),
                };
                let obs = Observation {
                    status,
                    wording,
                    candidate,
                    reference: field(&o.reference)?,
                    auth_number: field(&o.auth_number)?,
                    valid_from: field(&o.valid_from)?,
                    valid_to: field(&o.valid_to)?,
                    approved_units: field(&o.approved_units)?,
                    decision_date: field(&o.decision_date)?,
                    denial_reason: field(&o.denial_reason)?,
                    request: field(&o.request)?,
                    reason: field(&o.reason)?,
                };
                self.observations.push(obs);
            }
        }
        Ok(())
    }

    /// The `Cookie` header for `url`: the browser session's cookies whose
    /// domain is the URL's host (read from the browser once a session).
    async fn cookie_header(&mut self, step: &Step, url: &reqwest::Url) -> Result<String, StepFailure> {
        if self.cookies.is_none() {
            let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
            let all = self
                .browser(step)?
                .get_all_cookies()
                .await
                .map_err(|e| webdriver_failure(step, e))?;
            let mine = all
                .iter()
                .filter(|c| {
                    c.domain().is_none_or(|d| {
                        let d = d.trim_start_matches('.').to_ascii_lowercase();
                        host == d || host.ends_with(&format!(".{d}"))
                    })
                })
                .map(|c| (c.name().to_owned(), c.value().to_owned()))
                .collect();
            self.cookies = Some(mine);
        }
        Ok(self
            .cookies
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; "))
    }

    /// A `Set-Cookie` answer updates the kept cookies (a cookie the portal
    /// ends is dropped).
    fn take_cookies(&mut self, headers: &reqwest::header::HeaderMap) {
        let Some(kept) = self.cookies.as_mut() else {
            return;
        };
        for v in headers.get_all(reqwest::header::SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let mut parts = v.split(';');
            let Some((name, value)) = parts.next().and_then(|kv| kv.trim().split_once('=')) else {
                continue;
            };
            let ended = value.is_empty()
                || parts.any(|p| {
                    let p = p.trim().to_ascii_lowercase();
                    p == "max-age=0" || p.starts_with("max-age=-")
                });
            kept.retain(|(k, _)| k != name);
            if !ended {
                kept.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    /// One GET with the browser session's cookies, no rendering. The
    /// answer is judged as a page would be: the `detect` rules look at an
    /// HTML answer (a sign-in page is a lost session, an error page is
    /// retried); 401/403 is a lost session, 5xx is retried, another error
    /// status is a changed portal. A path is on the payer's base URL.
    async fn fetch_page(&mut self, step: &Step, url: &str) -> Result<Fetch, StepFailure> {
        let base = self
            .ctx
            .pointer("/payer/base_url")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let target = if url.starts_with('/') {
            format!("{base}{url}")
        } else {
            url.to_owned()
        };
        let target = reqwest::Url::parse(&target)
            .map_err(|e| fail(step, FailureKind::Fatal, format!("fetch: bad URL `{target}`: {e}")))?;
        let cookie = self.cookie_header(step, &target).await?;
        let resp = self
            .http
            .get(target.clone())
            .header(reqwest::header::COOKIE, cookie)
            .header(reqwest::header::ACCEPT, "text/html, application/json;q=0.9, */*;q=0.5")
            .timeout(step.timeout)
            .send()
            .await
            .map_err(|e| fail(step, FailureKind::Retryable, format!("fetch failed: {e}")))?;
        let status = resp.status();
        let final_url = resp.url().to_string();
        self.take_cookies(resp.headers());
        let json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.contains("json"));
        let body = resp
            .text()
            .await
            .map_err(|e| fail(step, FailureKind::Retryable, format!("fetch failed: {e}")))?;
        let lost = |me: &mut Self, why: String| {
            // The next fetch reads the new session's cookies.
            me.cookies = None;
            fail(step, FailureKind::SessionLost, why)
        };
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(lost(
                self,
                format!("{DETECTED}answered HTTP {status}: the session has ended"),
            ));
        }
        if !json {
            // The `detect` rules over the answer, as over a page.
            let page = super::page::FetchedPage { url: final_url, body };
            let outer = self.page.replace(page);
            let verdict = self.page_says_stop(step).await;
            let page = std::mem::replace(&mut self.page, outer).expect("set above");
            if let Err(f) = verdict {
                if f.kind == FailureKind::SessionLost {
                    return Err(lost(self, f.message));
                }
                return Err(f);
            }
            return match http_refusal(step, "fetch", status) {
                None => Ok(Fetch::Html(page)),
                Some(f) => Err(f),
            };
        }
        if let Some(f) = http_refusal(step, "fetch", status) {
            return Err(f);
        }
        serde_json::from_str(&body).map(Fetch::Json).map_err(|e| {
            fail(
                step,
                FailureKind::PortalChanged,
                format!("the answer is not the JSON it says it is: {e}"),
            )
        })
    }

    /// `rows` over a fetched page, following next-page links by fetching
    /// them (see `read_rows` for the browser).
    async fn fetched_rows(
        &mut self,
        step: &Step,
        selector: &Sel,
        cells: &[(String, Sel)],
        next: Option<&Sel>,
        max_pages: u32,
        empty: Option<&Condition>,
    ) -> Result<Vec<Value>, StepFailure> {
        let row_css = self.css(step, selector)?;
        let mut cell_css = Vec::new();
        for (_, s) in cells {
            cell_css.push(self.css(step, s)?);
        }
        let next_css = next.map(|n| self.css(step, n)).transpose()?;
        let mut page = self.page.clone().expect("called inside fetch");
        let mut out = Vec::new();
        let mut seen = 0;
        loop {
            let (rows, next_href) = page
                .rows(&row_css, &cell_css, next_css.as_deref())
                .map_err(|e| fail(step, FailureKind::PortalChanged, e))?;
            if rows.is_empty() && seen == 0 {
                if let Some(c) = empty {
                    if !self.holds(step, c).await? {
                        return Err(fail(
                            step,
                            FailureKind::Retryable,
                            format!(
                                "no rows match `{row_css}` and the page does not show an empty result ({})",
                                describe_in(self, step, c)
                            ),
                        ));
                    }
                }
            }
            for row in rows {
                let mut m = Map::new();
                for ((name, _), text) in cells.iter().zip(row) {
                    m.insert(name.clone(), Value::String(text));
                }
                out.push(Value::Object(m));
            }
            seen += 1;
            let Some(href) = next_href else { break };
            if seen >= max_pages {
                let note = format!(
                    "`rows` stopped at max_pages ({max_pages}, {} rows) while the portal offers another page: \
                     the rows after it were not read",
                    out.len()
                );
                self.trace.note(format!("   {note}"));
                self.partial.get_or_insert(note);
                break;
            }
            let url = reqwest::Url::parse(&page.url)
                .and_then(|b| b.join(&href))
                .map_err(|e| {
                    fail(
                        step,
                        FailureKind::PortalChanged,
                        format!("bad next-page link `{href}`: {e}"),
                    )
                })?;
            if url.as_str() == page.url {
                return Err(fail(
                    step,
                    FailureKind::PortalChanged,
                    format!("page {seen} links to itself as the next page"),
                ));
            }
            page = match self.fetch_page(step, url.as_str()).await? {
                Fetch::Html(p) => p,
                Fetch::Json(_) => {
                    return Err(fail(step, FailureKind::PortalChanged, "the next page answered JSON"));
                }
            };
        }
        Ok(out)
    }

    /// The practice's file name of a case attachment stored at `path`.
    fn attachment_name(&self, path: &str) -> Option<String> {
        self.ctx
            .pointer("/case/attachments")?
            .as_array()?
            .iter()
            .find(|a| a.get("path").and_then(Value::as_str) == Some(path))?
            .get("file_name")?
            .as_str()
            .map(str::to_owned)
    }

    /// A link (or copy) of `path` named `name`, sanitised, in a folder of
    /// its own in this run's upload folder: the browser sends a file under
    /// the name it has on disk.
    fn stage_upload(&mut self, step: &Step, path: &str, name: &str) -> Result<String, StepFailure> {
        let failed = |e: std::io::Error| {
            fail(
                step,
                FailureKind::Fatal,
                format!("cannot stage the upload under its own name: {e}"),
            )
        };
        if self.uploads.is_none() {
            crate::store::private_dir(&self.upload_root).map_err(failed)?;
            let dir = tempfile::Builder::new()
                .prefix("run-")
                .tempdir_in(&self.upload_root)
                .map_err(failed)?;
            self.uploads = Some(dir);
        }
        let root = self.uploads.as_ref().expect("made above").path();
        let n = std::fs::read_dir(root).map_err(failed)?.count();
        let dir = root.join(n.to_string());
        std::fs::create_dir(&dir).map_err(failed)?;
        let staged = dir.join(template::upload_name(name));
        if std::fs::hard_link(path, &staged).is_err() {
            std::fs::copy(path, &staged).map_err(failed)?;
        }
        Ok(staged.display().to_string())
    }

    /// What a `for_each` loops over: a list's items, or a string's
    /// characters (a code typed into one box each). Anything else, or a
    /// name that is not there, is an error, never zero rounds.
    fn list_items(&self, step: &Step, list: &Tpl) -> Result<Vec<Value>, StepFailure> {
        let bad = |e: String| {
            fail(
                step,
                FailureKind::Fatal,
                format!("for_each list at line {}: {e}", list.at.line),
            )
        };
        let v = template::eval(&self.env, &list.source, &self.ctx).map_err(bad)?;
        if v.is_undefined() {
            return Err(bad(format!("`{}` is undefined", list.source)));
        }
        if let Some(s) = v.as_str() {
            return Ok(s.chars().map(|c| Value::String(c.to_string())).collect());
        }
        match serde_json::to_value(&v).map_err(|e| bad(e.to_string()))? {
            Value::Array(items) => Ok(items),
            other => Err(bad(format!(
                "`{}` is {}, not a list or a string",
                list.source,
                match other {
                    Value::Null => "none",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    _ => "a map",
                }
            ))),
        }
    }

    fn call<'s>(&'s mut self, step: &'s Step, action: Action) -> Pin<Box<dyn Future<Output = StepResult> + Send + 's>>
    where
        'a: 's,
    {
        Box::pin(async move {
            let Some(steps) = self.playbook.actions.get(&action) else {
                return Err(fail(
                    step,
                    FailureKind::Fatal,
                    format!("the playbook has no action {action}"),
                ));
            };
            self.run_steps(steps).await
        })
    }

    /// Before a `commit: true` step (once per run): the intent goes into the
    /// ledger first, so a crash after the request never leads to a second one.
    pub(super) async fn record_intent(&mut self, step: &Step) -> StepResult {
        if step.commit && !self.committed {
            if let Some(hook) = self.on_commit.as_mut() {
                hook()
                    .await
                    .map_err(|e| fail(step, FailureKind::Fatal, format!("nothing was sent: {e}")))?;
            }
            self.committed = true;
            super::fault::at_intent();
        }
        Ok(())
    }

    async fn wait_for_alert(&self, step: &Step) -> Result<String, StepFailure> {
        let deadline = tokio::time::Instant::now() + step.timeout;
        loop {
            match self.browser(step)?.get_alert_text().await {
                Ok(t) => return Ok(t),
                Err(e) if e.is_no_such_alert() => {}
                Err(e) => return Err(webdriver_failure(step, e)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(fail(step, FailureKind::PortalChanged, "no dialog appeared"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What an `extract` step reads, as `READS_JS` takes it, and what
    /// its failure says when the page never shows it.
    fn read_item(&self, step: &Step) -> Result<(Value, String), StepFailure> {
        let StepKind::Extract { from, attribute, .. } = &step.kind else {
            return Err(fail(step, FailureKind::Fatal, "not an extract step"));
        };
        let attribute = attribute.as_ref().map_or(Value::Null, |a| Value::String(a.clone()));
        Ok(match from {
            ExtractOn::Selector(s) => {
                let css = self.css(step, s)?;
                let absent = format!("no element matches `{css}` after {:?}", step.timeout);
                (json!({ "css": css, "attribute": attribute }), absent)
            }
            ExtractOn::Label { label, within } => {
                let text = self.render(step, label)?;
                let within = within.as_ref().map(|w| self.css(step, w)).transpose()?;
                let absent = format!("no value next to a label `{text}` after {:?}", step.timeout);
                (
                    json!({ "label": text, "within": within, "attribute": attribute }),
                    absent,
                )
            }
        })
    }

    /// An `extract` in the browser: its value, and those of the `extract`
    /// steps right after it (`following`), read by one script call that
    /// waits in the page (no polling) until every one is there, a `detect`
    /// page shows, or the step's timeout. The later steps then take what
    /// was read (`prefetched`) without a WebDriver call; one still absent
    /// when the wait ended fails at once as it would have after its own.
    async fn read_in_page(&mut self, step: &Step, following: Vec<Step>) -> Result<String, StepFailure> {
        if let Some(i) = self.prefetched.iter().position(|(at, _)| *at == step.at) {
            let (_, read) = self.prefetched.remove(i);
            return read.map_err(|absent| fail(step, FailureKind::PortalChanged, absent));
        }
        self.prefetched.clear();
        let (first, absent) = self.read_item(step)?;
        let mut items = vec![first];
        let mut rest = Vec::new();
        for s in &following {
            // A step whose templates do not render reads (and fails) alone.
            let Ok((item, absent)) = self.read_item(s) else { break };
            items.push(item);
            rest.push((s.at, absent));
        }
        let stops = Value::Array(self.js_stops(step)?);
        let items = Value::Array(items);
        let deadline = tokio::time::Instant::now() + step.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait_ms = left.min(Duration::from_secs(20)).as_millis() as u64;
            let args = vec![items.clone(), stops.clone(), json!(wait_ms)];
            let v = self.page_script(step, READS_JS, args).await?.unwrap_or_default();
            let ended = tokio::time::Instant::now() >= deadline;
            let waiting = v.get("waiting").and_then(Value::as_bool) == Some(true);
            if let (Some(values), false) = (v.get("values").and_then(Value::as_array), waiting && !ended) {
                let value = |i: usize| values.get(i).and_then(Value::as_str).map(str::to_owned);
                let first = value(0).ok_or_else(|| fail(step, FailureKind::PortalChanged, absent))?;
                for (i, (at, absent)) in rest.into_iter().enumerate() {
                    self.prefetched.push((at, value(i + 1).ok_or(absent)));
                }
                return Ok(first);
            }
            if v.get("stop").and_then(Value::as_bool) == Some(true) {
                self.page_says_stop(step).await?;
            }
            if ended {
                return Err(fail(step, FailureKind::PortalChanged, absent));
            }
        }
    }

    /// Goes to a page: an absolute address by one WebDriver command
    /// (`NavigateTo`), a relative one resolved against the current page.
    async fn goto(&self, step: &Step, url: &str) -> StepResult {
        let client = self.browser(step)?;
        let done = if reqwest::Url::parse(url).is_ok() {
            client.issue_cmd(NavigateTo(url.to_owned())).await.map(|_| ())
        } else {
            client.goto(url).await
        };
        done.map_err(|e| webdriver_failure(step, e))
    }

    /// Runs one of the waiting page scripts. `None` when the page went away
    /// under it (a navigation ends the script without an answer): the
    /// caller looks again on the new page.
    async fn page_script(&self, step: &Step, js: &str, args: Vec<Value>) -> Result<Option<Value>, StepFailure> {
        match self.browser(step)?.execute_async(js, args).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_javascript_error() || e.is_script_timeout() => Ok(None),
            Err(e) => Err(webdriver_failure(step, e)),
        }
    }

    /// A condition as the page script checks it while it waits (see
    /// `ROWS_JS`): templates rendered here; an `expr` is decided now.
    fn js_condition(&self, step: &Step, c: &Condition) -> Result<Value, StepFailure> {
        Ok(match c {
            Condition::Present(s) => json!({ "present": self.css(step, s)? }),
            Condition::Absent(s) => json!({ "absent": self.css(step, s)? }),
            Condition::Text(t) => json!({ "text": self.render(step, t)? }),
            Condition::Url(t) => json!({ "url": self.render(step, t)? }),
            Condition::Expr(t) => json!({ "always": self.render(step, t)? == "true" }),
        })
    }

    /// The `detect` rules that end a wait at once, for the page script.
    fn js_stops(&self, step: &Step) -> Result<Vec<Value>, StepFailure> {
        let d = &self.playbook.detect;
        let logged_out: &[Condition] = if self.in_login { &[] } else { &d.logged_out };
        d.needs_human
            .iter()
            .chain(logged_out)
            .chain(&d.unavailable)
            .map(|c| self.js_condition(step, c))
            .collect()
    }

    /// Reads table rows, following "next page" links: one script call a
    /// page that waits in the page (a `MutationObserver`, no polling) until
    /// the rows are there, the page's "nothing found" shows or a `detect`
    /// page appears, and returns every cell's text as compact JSON; then
    /// one navigation to the next page's address. A "next" control that is
    /// not a link is clicked, and the next read waits until the rows change.
    ///
    /// Stopping at `max_pages` while the portal offers a next page is said
    /// (a warning, the trace and the run report's `partial`), never silent.
    async fn read_rows(
        &mut self,
        step: &Step,
        selector: &Sel,
        cells: &[(String, Sel)],
        next: Option<&Sel>,
        max_pages: u32,
        empty: Option<&Condition>,
    ) -> Result<Vec<Value>, StepFailure> {
        let wd = |e| webdriver_failure(step, e);
        let row_css = self.css(step, selector)?;
        let mut cell_css = Vec::new();
        for (_, s) in cells {
            cell_css.push(Value::String(self.css(step, s)?));
        }
        let next_css = match next {
            Some(n) => Value::String(self.css(step, n)?),
            None => Value::Null,
        };
        let empties: Vec<Value> = match empty {
            Some(c) => vec![self.js_condition(step, c)?],
            None => Vec::new(),
        };
        let stops = self.js_stops(step)?;
        let mut out = Vec::new();
        // The first row of the page before an in-page "next" click.
        let mut previous: Option<String> = None;
        let mut last_href: Option<String> = None;
        let mut page = 0;
        loop {
            let deadline = tokio::time::Instant::now() + step.timeout;
            let read = loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                // Under WebDriver's script limit (30 s); longer waits loop.
                let wait_ms = left.min(Duration::from_secs(20)).as_millis() as u64;
                let args = vec![
                    Value::String(row_css.clone()),
                    Value::Array(cell_css.clone()),
                    Value::Array(stops.clone()),
                    Value::Array(empties.clone()),
                    previous.clone().map_or(Value::Null, Value::String),
                    json!(wait_ms),
                    next_css.clone(),
                    json!(max_pages.saturating_sub(page + 1)),
                ];
                let Some(v) = self.page_script(step, ROWS_JS, args).await? else {
                    if tokio::time::Instant::now() >= deadline {
                        break PageRows::default();
                    }
                    continue;
                };
                let read: PageRows = serde_json::from_value(v)
                    .map_err(|e| fail(step, FailureKind::Fatal, format!("the page script answered oddly: {e}")))?;
                if read.stop {
                    // A `detect` page: classified (and named) as usual.
                    self.page_says_stop(step).await?;
                }
                if !read.waiting || tokio::time::Instant::now() >= deadline {
                    break read;
                }
            };
            if read.rows.is_empty() && page == 0 && !read.empty {
                if let Some(c) = empty {
                    // Neither rows nor the page's "nothing found": a failed
                    // or half-loaded search, never "there is none".
                    return Err(fail(
                        step,
                        FailureKind::Retryable,
                        format!(
                            "no rows match `{row_css}` and the page does not show an empty result ({})",
                            describe_in(self, step, c)
                        ),
                    ));
                }
            }
            for row in read.rows {
                let mut m = Map::new();
                for ((name, _), text) in cells.iter().zip(row) {
                    m.insert(name.clone(), Value::String(text));
                }
                out.push(Value::Object(m));
            }
            page += read.pages.max(1);
            let Some(link) = read.next else { break };
            if page >= max_pages {
                let note = format!(
                    "`rows` stopped at max_pages ({max_pages}, {} rows) while the portal offers another page: \
                     the rows after it were not read",
                    out.len()
                );
                tracing::warn!(
                    playbook = %self.playbook.id,
                    line = step.at.line,
                    max_pages,
                    rows = out.len(),
                    "A `rows` step stopped at its page cap before the last page."
                );
                self.trace.note(format!("   {note}"));
                self.partial.get_or_insert(note);
                break;
            }
            match link.href {
                Some(href) => {
                    if last_href.as_deref() == Some(href.as_str()) {
                        return Err(fail(
                            step,
                            FailureKind::PortalChanged,
                            format!("page {} links to itself as the next page", page + 1),
                        ));
                    }
                    self.goto(step, &href).await?;
                    last_href = Some(href);
                    previous = None;
                }
                None => {
                    let css = next_css.as_str().unwrap_or_default();
                    let el = self.browser(step)?.find(Locator::Css(css)).await.map_err(wd)?;
                    el.click().await.map_err(wd)?;
                    previous = Some(read.first);
                }
            }
        }
        Ok(out)
    }

    /// Fetches a file with the browser session's cookies (copied into
    /// reqwest; the page itself is not navigated away).
    async fn fetch(&self, step: &Step, href: &str, kind: &str) -> Result<Fetched, StepFailure> {
        let wd = |e| webdriver_failure(step, e);
        let base = self.browser(step)?.current_url().await.map_err(wd)?;
        let url = base
            .join(href)
            .map_err(|e| fail(step, FailureKind::PortalChanged, format!("bad link `{href}`: {e}")))?;
        let cookies = self.browser(step)?.get_all_cookies().await.map_err(wd)?;
        let header: Vec<String> = cookies.iter().map(|c| format!("{}={}", c.name(), c.value())).collect();
        let resp = self
            .http
            .get(url.as_str())
            .header(reqwest::header::COOKIE, header.join("; "))
            .timeout(step.timeout)
            .send()
            .await
            .map_err(|e| fail(step, FailureKind::Retryable, format!("download failed: {e}")))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(fail(
                step,
                FailureKind::SessionLost,
                format!("download answered HTTP {status}"),
            ));
        }
        if let Some(f) = http_refusal(step, "download", status) {
            return Err(f);
        }
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| fail(step, FailureKind::Retryable, format!("download failed: {e}")))?;
        if !bytes.starts_with(b"%PDF-") {
            return Err(fail(
                step,
                FailureKind::PortalChanged,
                format!(
                    "the download is not a PDF (content type `{media_type}`, {} bytes)",
                    bytes.len()
                ),
            ));
        }
        if bytes.len() < 64 || bytes.len() > 50 * 1024 * 1024 {
            return Err(fail(
                step,
                FailureKind::PortalChanged,
                format!("implausible letter size: {} bytes", bytes.len()),
            ));
        }
        Ok(Fetched {
            kind: kind.to_owned(),
            bytes: bytes.to_vec(),
            media_type: "application/pdf".into(),
        })
    }
}

/// WebDriver's "Navigate To" an absolute address, one command (fantoccini's
/// `goto` first asks for the current URL to resolve a relative one: a
/// second round trip for every page).
#[derive(Debug)]
struct NavigateTo(String);

impl fantoccini::wd::WebDriverCompatibleCommand for NavigateTo {
    fn endpoint(
        &self,
        base: &reqwest::Url,
        session: Option<&str>,
    ) -> Result<reqwest::Url, <reqwest::Url as std::str::FromStr>::Err> {
        base.join(&format!("session/{}/url", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(json!({ "url": self.0 }).to_string()))
    }
}

/// What a `fetch` step got.
enum Fetch {
    Json(Value),
    Html(super::page::FetchedPage),
}

/// What the page script of `read_rows` answers.
#[derive(Default, serde::Deserialize)]
struct PageRows {
    /// Each row's cell texts, in the order of the step's `cells`.
    #[serde(default)]
    rows: Vec<Vec<String>>,
    /// The first row's text (to tell a re-rendered table from the old one).
    #[serde(default)]
    first: String,
    /// The page shows the step's `empty` condition.
    #[serde(default)]
    empty: bool,
    /// A page the `detect` rules know.
    #[serde(default)]
    stop: bool,
    /// Nothing yet when the script's wait ended.
    #[serde(default)]
    waiting: bool,
    next: Option<NextPage>,
    /// Pages whose rows are in `rows`: this one and those read ahead.
    #[serde(default)]
    pages: u32,
}

#[derive(serde::Deserialize)]
struct NextPage {
    /// The link's absolute address; `None` for a button or a `#` link.
    href: Option<String>,
}

/// The end of the in-page reads that wait (`READS_JS`, `ROWS_JS`): answer
/// `read()` at once when it has something, else as soon as a change of the
/// page makes it so, else `waited()` after `waitMs`. The script before it
/// defines `read`, `waited`, `done` and `waitMs`.
macro_rules! answer_when_read_js {
    () => {
        r#"
const now = read();
if (now !== null) {
  done(now);
} else {
  let timer = null;
  const observer = new MutationObserver(() => {
    const r = read();
    if (r !== null) {
      observer.disconnect();
      clearTimeout(timer);
      done(r);
    }
  });
  observer.observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
  timer = setTimeout(() => {
    observer.disconnect();
    done(read() || waited());
  }, waitMs);
}
"#
    };
}

/// Reads the values of `extract` steps in the page (see
/// `Interp::read_in_page`): each an element's text or attribute (`css`),
/// or the value next to a label (`label`, in `within` or the page).
/// Arguments: the items, stop conditions, the wait in ms; then WebDriver's
/// callback. Answers `{values}` (one a step, `null` for one not there)
/// once every one is there or when the wait ends (`waiting` then), or
/// `{stop}` for a page the `detect` rules know.
const READS_JS: &str = concat!(
    r#"
const [items, stops, waitMs, done] = arguments;
const norm = (s) => s.replace(/\s+/g, ' ').trim().replace(/\s*:$/, '').toLowerCase();
const text = (el) => el.textContent.replace(/\s+/g, ' ').trim();
const holds = (c) => {
  if ('present' in c) return document.querySelector(c.present) !== null;
  if ('absent' in c) return document.querySelector(c.absent) === null;
  if ('text' in c) return (document.body ? document.body.innerText : '').includes(c.text);
  if ('url' in c) return location.href.includes(c.url);
  return c.always === true;
};
// An element's text or attribute as WebDriver's "Get Element Text" and
// "Get Element Attribute" give them: the rendered text (none when not
// shown); properties for value, href, src, checked and selected.
const shown = (el) => (el.checkVisibility && !el.checkVisibility() ? '' : el.innerText);
const attr = (el, a) => {
  if (['value', 'href', 'src'].includes(a) && typeof el[a] === 'string') return el[a];
  if (['checked', 'selected'].includes(a)) return el[a] ? 'true' : '';
  return el.getAttribute(a) || '';
};
// The value a label stands for, read as a field's value or the text.
const valueOf = (el, attribute) => {
  if (attribute !== null) return el.getAttribute(attribute) || '';
  if ('value' in el && ['INPUT', 'SELECT', 'TEXTAREA'].includes(el.tagName)) return el.value;
  return text(el);
};
const nextElement = (el, tags) => {
  for (let n = el.nextElementSibling; n !== null; n = n.nextElementSibling) {
    if (tags === null || tags.includes(n.tagName)) return n;
  }
  return null;
};
// The element a label stands for, or null.
const beside = (el) => {
  switch (el.tagName) {
    case 'DT':
      return nextElement(el, ['DD']);
    case 'TH': {
      const row = el.parentElement;
      const cell = nextElement(el, ['TD']);
      if (cell !== null) return cell;
      // A column header: the cell below it in the first row with data.
      const table = el.closest('table');
      if (table === null || row === null) return null;
      const col = Array.from(row.children).indexOf(el);
      for (const r of table.rows) {
        if (r === row || r.querySelector('td') === null) continue;
        return r.children[col] || null;
      }
      return null;
    }
    case 'LABEL': {
      const id = el.getAttribute('for');
      if (id) return document.getElementById(id);
      return el.querySelector('input, select, textarea') || nextElement(el, null);
    }
    default:
      return nextElement(el, null);
  }
};
const byLabel = (it) => {
  const root = it.within === null ? document : document.querySelector(it.within);
  if (root === null) return null;
  const want = norm(it.label);
  // Labels first, then any element whose own text is the label.
  const all = Array.from(root.querySelectorAll('dt, th, label'))
    .concat(Array.from(root.querySelectorAll('body *')).filter((e) => e.children.length === 0));
  for (const el of all) {
    if (norm(el.textContent) !== want) continue;
    const v = beside(el);
    if (v !== null) return valueOf(v, it.attribute);
  }
  return null;
};
const bySelector = (it) => {
  const el = document.querySelector(it.css);
  if (el === null) return null;
  return it.attribute === null ? shown(el) : attr(el, it.attribute);
};
const values = () => items.map((it) => ('css' in it ? bySelector(it) : byLabel(it)));
const read = () => {
  const v = values();
  if (v.every((x) => x !== null)) return { values: v };
  return stops.some(holds) ? { stop: true } : null;
};
const waited = () => ({ waiting: true, values: values() });
"#,
    answer_when_read_js!()
);

/// Answers as soon as a condition holds, or once the page has loaded
/// (`document.readyState` is `complete`) and then not changed for a quiet
/// period without it holding (see `Interp::settled`; without a quiet
/// period, `null`, it waits for the condition only: `Interp::wait_in_page`).
/// Arguments: the condition, stop conditions, the quiet period and the
/// wait in ms; then WebDriver's callback. Answers `{holds}`, `{stop}`,
/// `{settled}`, `{waiting}` (the wait ended first) or `{error}` (a
/// selector the page cannot parse).
const PRESENCE_JS: &str = r#"
const [cond, stops, quietMs, waitMs, done] = arguments;
const holds = (c) => {
  if ('present' in c) return document.querySelector(c.present) !== null;
  if ('absent' in c) return document.querySelector(c.absent) === null;
  if ('text' in c) return (document.body ? document.body.innerText : '').includes(c.text);
  if ('url' in c) return location.href.includes(c.url);
  return c.always === true;
};
const check = () => (holds(cond) ? { holds: true } : stops.some(holds) ? { stop: true } : null);
let now = null;
try {
  now = check();
} catch (e) {
  now = { error: String(e.message || e) };
}
if (now !== null) {
  done(now);
} else {
  let quiet = null;
  let timer = null;
  let observer = null;
  const finish = (r) => {
    observer.disconnect();
    clearTimeout(quiet);
    clearTimeout(timer);
    document.removeEventListener('readystatechange', arm);
    done(r);
  };
  // (Re)starts the quiet period, once the page has loaded.
  function arm() {
    clearTimeout(quiet);
    if (quietMs !== null && document.readyState === 'complete') {
      quiet = setTimeout(() => finish(check() || { settled: true }), quietMs);
    }
  }
  observer = new MutationObserver(() => {
    const r = check();
    if (r !== null) finish(r);
    else arm();
  });
  observer.observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
  document.addEventListener('readystatechange', arm);
  arm();
  timer = setTimeout(() => finish(check() || { waiting: true }), waitMs);
}
"#;

/// Reads a table in the page and waits for it without polling (see
/// `Interp::read_rows`). Arguments: row selector, cell selectors, stop
/// conditions, empty conditions, the previous first row (or null), the
/// wait in ms, the next-page selector (or null), how many more pages it may
/// read ahead; the last is WebDriver's callback. Answers the rows of this
/// page and of the pages it read ahead (`pages` of them), and the next
/// page still to open.
const ROWS_JS: &str = concat!(
    r#"
const [rowCss, cellCss, stops, empties, previous, waitMs, nextCss, ahead, answer] = arguments;
const started = Date.now();
const text = (el) => (el ? el.textContent.replace(/\s+/g, ' ').trim() : '');
const holdsIn = (doc, url, c) => {
  if ('present' in c) return doc.querySelector(c.present) !== null;
  if ('absent' in c) return doc.querySelector(c.absent) === null;
  if ('text' in c) {
    const body = doc.body ? (doc === document ? doc.body.innerText : doc.body.textContent) : '';
    return body.includes(c.text);
  }
  if ('url' in c) return url.includes(c.url);
  return c.always === true;
};
const holds = (c) => holdsIn(document, location.href, c);
const nextIn = (doc, base) => {
  if (nextCss === null) return null;
  const n = doc.querySelector(nextCss);
  if (n === null) return null;
  const raw = n.getAttribute('href');
  const link = raw && !raw.startsWith('#') && !raw.toLowerCase().startsWith('javascript:');
  return { href: link ? new URL(raw, base).href : null };
};
const nextOf = () => nextIn(document, location.href);
const cellsOf = (r) => cellCss.map((c) => text(r.querySelector(c)));
const read = () => {
  const rows = Array.from(document.querySelectorAll(rowCss));
  if (rows.length > 0 && (previous === null || text(rows[0]) !== previous)) {
    return { rows: rows.map(cellsOf), first: text(rows[0]), next: nextOf(), pages: 1 };
  }
  if (empties.some(holds)) return { empty: true, next: nextOf() };
  if (stops.some(holds)) return { stop: true };
  return null;
};
const waited = () => ({ waiting: true });
// Reading ahead: while the next page is a plain link of this site, it is
// fetched and parsed here (the same GET the browser would send, without
// rendering it). Anything else ends it, and precert opens that page as
// usual: a failed, redirected or non-HTML answer, a page the `detect`
// rules know, a page with no rows (a table built by script), a link seen
// before, the page cap (`ahead` more pages) or half the wait used.
const readAhead = async (r) => {
  const seen = new Set([location.href]);
  while (r.next && r.next.href && r.pages <= ahead && Date.now() - started < waitMs / 2) {
    const href = r.next.href;
    if (seen.has(href) || new URL(href).origin !== location.origin) break;
    let res;
    try {
      res = await fetch(href, { credentials: 'same-origin' });
    } catch (e) {
      break;
    }
    if (!res.ok || res.redirected || !(res.headers.get('content-type') || '').includes('text/html')) break;
    const doc = new DOMParser().parseFromString(await res.text(), 'text/html');
    if (stops.some((c) => holdsIn(doc, res.url, c))) break;
    const rows = Array.from(doc.querySelectorAll(rowCss));
    if (rows.length === 0) break;
    for (const row of rows) r.rows.push(cellsOf(row));
    r.pages += 1;
    seen.add(href);
    r.next = nextIn(doc, res.url);
  }
  return r;
};
const done = (r) => {
  if (r.rows && r.next && r.next.href && ahead > 0) {
    readAhead(r).then(answer, () => answer(r));
  } else {
    answer(r);
  }
};
"#,
    answer_when_read_js!()
);

/// A condition in words, its templates rendered as the step saw them (a
/// selector with `{{ index }}` names the element it looked for) — except a
/// template that reads a secret, which is shown as written.
fn describe_in(interp: &Interp<'_>, step: &Step, c: &Condition) -> String {
    let shown = |t: &Tpl| {
        if t.source.contains("secrets") {
            return t.source.clone();
        }
        interp.render(step, t).unwrap_or_else(|_| t.source.clone())
    };
    match c {
        Condition::Present(s) => format!("an element matches `{}`", shown(&s.css)),
        Condition::Absent(s) => format!("no element matches `{}`", shown(&s.css)),
        Condition::Text(t) => format!("the page says `{}`", shown(t)),
        Condition::Url(t) => format!("the URL contains `{}`", shown(t)),
        Condition::Expr(t) => format!("`{}` holds", t.source),
    }
}

/// WebDriver errors: stale elements and timeouts are worth retrying; a lost
/// browser session is fatal for this run.
fn webdriver_failure(step: &Step, e: fantoccini::error::CmdError) -> StepFailure {
    let kind = if e.is_stale_element_reference() || e.is_timeout() || e.is_element_not_interactable() {
        FailureKind::Retryable
    } else if e.is_no_such_element() || e.is_unexpected_alert_open() {
        FailureKind::PortalChanged
    } else {
        FailureKind::Fatal
    };
    fail(step, kind, format!("webdriver: {e}"))
}

/// The variables part of a fresh context.
pub fn empty_vars() -> Value {
    json!({})
}

/// The `extract` steps right after `step` (itself one) that its page
/// script can read with it: consecutive, with its timeout, and reading no
/// variable that one of them sets.
fn following_extracts(step: &Step, rest: &[Step]) -> Vec<Step> {
    let StepKind::Extract { into, .. } = &step.kind else {
        return Vec::new();
    };
    let mut set = vec![into.as_str()];
    let mut out = Vec::new();
    for s in rest {
        let StepKind::Extract { from, into, .. } = &s.kind else {
            break;
        };
        let sources = match from {
            ExtractOn::Selector(sel) => vec![&sel.css.source],
            ExtractOn::Label { label, within } => std::iter::once(&label.source)
                .chain(within.as_ref().map(|w| &w.css.source))
                .collect(),
        };
        if s.timeout != step.timeout || sources.iter().any(|t| set.iter().any(|v| t.contains(v))) {
            break;
        }
        set.push(into.as_str());
        out.push(s.clone());
    }
    out
}
