//! The playbook engine: runs one action of a payer's playbook for a case on
//! a WebDriver session (`channel: web`), or without a browser for an API
//! payer (`channel: api`: `http` steps, or the PAS client for `api: pas`,
//! see `api`), and turns what it saw into ledger changes.
//!
//! Sessions are reused: one logged-in session per payer account, capped per
//! payer and globally (in use, and open including idle ones: `sessions`);
//! idle ones are closed after `webdriver.idle_close_secs`; a logout is
//! detected and answered by logging in again. A submission is exactly-once: the intent is recorded right before
//! the click that sends it, and a case found `submitting` with a recorded
//! intent runs `find_existing` before it may submit again.

mod api;
mod crd;
mod disposition;
mod exec;
pub(crate) mod fault;
mod http;
mod page;
mod sessions;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use serde_json::{json, Value};
use tokio::sync::{Mutex, Semaphore};

pub use disposition::Disposition;

use crate::browser::{BrowserError, Driver};
use crate::case::{CaseRecord, CaseStatus, DateRange, Decision, DenialReason, LineDecision};
use crate::config::{PayerBinding, Practice, Settings};
use crate::files::{safe_name, sha256_hex, write_private};
use crate::pas::{PasClient, RetryPolicy};
use crate::playbook::{template, Action, ApiKind, Channel, Loc, Playbook, Step};
use crate::store::{Actor, EventKind, Ledger, Letter, StoreError, SubmitLease, SUBMIT_LEASE_RENEW};

/// Extra attempts of a whole action after a retryable failure (before the
/// commit step only). Longer outages are the job queue's to retry later.
pub const ACTION_RETRIES: u32 = 2;

/// What a failed step means for the case, decided from the error and the
/// page (the playbook's `detect` rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// A timeout, an HTTP 5xx page, a stale element: try again later.
    Retryable,
    /// The portal logged us out: log in again and resume.
    SessionLost,
    /// A CAPTCHA or another page the playbook marks: a person must act.
    NeedsHuman,
    /// An assertion failed or an element is missing: the portal is not what
    /// the playbook expects. Never guess: a person must look.
    PortalChanged,
    Fatal,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retryable => "retryable",
            FailureKind::SessionLost => "session_lost",
            FailureKind::NeedsHuman => "needs_human",
            FailureKind::PortalChanged => "portal_changed",
            FailureKind::Fatal => "fatal",
        }
    }
}

#[derive(Clone, Debug)]
pub struct StepFailure {
    pub kind: FailureKind,
    pub at: Loc,
    pub keyword: &'static str,
    pub message: String,
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at line {} ({}): {}",
            self.kind.as_str(),
            self.at.line,
            self.keyword,
            self.message
        )
    }
}

/// The step-by-step record of a run. Values typed into the portal are never
/// in it, only which element got one.
#[derive(Default)]
pub struct Trace {
    pub lines: Vec<String>,
    pub screenshots: Vec<(String, Vec<u8>)>,
    /// Print each line as it happens (`precert run`).
    pub echo: bool,
    /// The run read less than there was (see `RunReport::partial`).
    pub partial: Option<String>,
    /// A dry run stopped before this commit step.
    pub stopped_before: Option<Loc>,
}

impl Trace {
    fn record(&mut self, step: &Step, attempt: u32, took: Duration, failure: Option<&StepFailure>) {
        let what = match &step.name {
            Some(n) => format!("{} ({n})", step.kind.keyword()),
            None => step.kind.keyword().to_owned(),
        };
        let retry = if attempt > 0 {
            format!(" [retry {attempt}]")
        } else {
            String::new()
        };
        let result = match failure {
            None => "ok".to_owned(),
            Some(f) => format!("FAILED {}: {}", f.kind.as_str(), f.message),
        };
        let line = format!(
            "{:>4}:{:<3} {what:<28} {result} ({} ms){retry}",
            step.at.line,
            step.at.col,
            took.as_millis()
        );
        if self.echo {
            eprintln!("{line}");
        }
        self.lines.push(line);
    }

    fn note(&mut self, text: String) {
        if self.echo {
            eprintln!("{text}");
        }
        self.lines.push(text);
    }
}

/// What a `find_existing` outcome read about one of the payer's requests
/// (its `match:` fields, rendered), for the engine to compare with the case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Candidate {
    pub case_ref: Option<String>,
    pub member_id: Option<String>,
    pub codes: Option<String>,
    pub service_start: Option<String>,
    pub service_end: Option<String>,
}

/// What an `outcome` step read from the portal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub status: CaseStatus,
    pub wording: String,
    /// `find_existing` only: what identifies the payer's record.
    pub candidate: Option<Candidate>,
    pub reference: Option<String>,
    pub auth_number: Option<String>,
    pub valid_from: Option<String>,
    pub valid_to: Option<String>,
    pub approved_units: Option<String>,
    pub decision_date: Option<String>,
    pub denial_reason: Option<String>,
    /// What the payer asks for (a pend).
    pub request: Option<String>,
    /// The payer's reason in words.
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Browser(#[from] BrowserError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration, a binding or a playbook cannot do this.
    #[error("{0}")]
    Setup(String),
    /// The case is not one this action applies to now (not ready, not yet
    /// submitted): nothing to do.
    #[error("{0}")]
    NotApplicable(String),
}

/// How a run ended.
#[derive(Debug)]
pub struct RunReport {
    pub action: Action,
    pub case_id: i64,
    pub status: CaseStatus,
    pub failure: Option<StepFailure>,
    pub artifacts: Option<PathBuf>,
    pub observations: Vec<Observation>,
    pub letters: usize,
    /// The payer asked for this wait before the next request (a 429's
    /// `Retry-After`).
    pub not_before: Option<Duration>,
    /// The run read less than the portal had: a `rows` step stopped at its
    /// `max_pages` with another page offered. Cases on the pages not read
    /// were not seen (the daemon polls them one by one).
    pub partial: Option<String>,
    /// Set for a dry run (`Engine::dry_run`): nothing of it was recorded.
    pub dry_run: Option<DryRun>,
}

/// What a dry run did instead of recording.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DryRun {
    /// It stopped before this `commit: true` step: nothing was sent.
    pub stopped_before: Option<Loc>,
    /// Files a `download` step fetched (not kept).
    pub downloads: usize,
}

/// How a login tried on its own went (`Engine::login_only`).
#[derive(Debug)]
pub struct LoginReport {
    pub practice: String,
    pub failure: Option<StepFailure>,
    pub artifacts: Option<PathBuf>,
}

impl RunReport {
    /// What the run means for its job (see `Disposition`).
    pub fn disposition(&self) -> Disposition {
        Disposition::from(self)
    }
}

/// A session taken for one run, with its place among the open sessions
/// (and the caps' permits) until the run ends.
struct CheckedOut {
    key: sessions::Account,
    session: PortalSession,
    slot: sessions::Slot,
}

struct PortalSession {
    client: fantoccini::Client,
    logged_in: bool,
    /// The session's cookies as `fetch` steps send them (read from the
    /// browser once after a login).
    cookies: Option<Vec<(String, String)>>,
}

pub struct Engine {
    settings: Arc<Settings>,
    ledger: Ledger,
    playbooks: BTreeMap<String, Playbook>,
    driver: Mutex<Option<Driver>>,
    /// Browser sessions open, idle ones by payer account (playbook,
    /// practice), within `webdriver.max_sessions`.
    sessions: Arc<sessions::Pool>,
    /// Sessions in use, within `webdriver.max_sessions`.
    global: Arc<Semaphore>,
    per_payer: HashMap<String, Arc<Semaphore>>,
    http: reqwest::Client,
    /// For `http` steps: follows no redirects.
    api_http: reqwest::Client,
    /// OAuth2 tokens of `http` steps, per payer account, across runs.
    tokens: Arc<http::TokenCaches>,
    /// PAS clients (and so their tokens) per binding (practice, payer key).
    pas_clients: Mutex<HashMap<(String, String), Arc<PasClient>>>,
    /// PAS inquiries that found nothing new, stamped together
    /// (`flush_stamps`) rather than one write each.
    stamps: crate::store::PollStamps,
    /// CRD clients (and their tokens, their discovered service) per binding.
    crd_clients: Mutex<HashMap<(String, String), Arc<crate::crd::CrdClient>>>,
    pub echo: bool,
    /// `precert run --dry-run`: a run stops before its commit step and
    /// writes nothing to the ledger — no lease, no status change, no event,
    /// no letter, no mail (the trace and, on failure, the artifacts are
    /// files). What the portal showed is in the report only.
    pub dry_run: bool,
    /// How patient API calls are (`http` steps and PAS): 429 and 5xx
    /// handling. Tests shrink the delays.
    pub api_policy: RetryPolicy,
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(s, "%m/%d/%Y"))
        .ok()
}

fn first_number(s: &str) -> Option<u32> {
    let digits: String = s
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

impl Engine {
    pub fn new(settings: Arc<Settings>, ledger: Ledger, playbooks: Vec<Playbook>) -> Engine {
        let per_payer = playbooks
            .iter()
            .map(|p| (p.id.clone(), Arc::new(Semaphore::new(p.max_sessions as usize))))
            .collect();
        let global = Arc::new(Semaphore::new(settings.webdriver.max_sessions as usize));
        let sessions = sessions::Pool::new(settings.webdriver.max_sessions, settings.webdriver.idle_close);
        prune_artifacts(&settings);
        Engine {
            playbooks: playbooks.into_iter().map(|p| (p.id.clone(), p)).collect(),
            settings,
            ledger,
            driver: Mutex::new(None),
            sessions,
            global,
            per_payer,
            http: reqwest::Client::new(),
            api_http: reqwest::Client::builder()
                .user_agent(concat!("precert/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            tokens: Arc::default(),
            pas_clients: Mutex::new(HashMap::new()),
            stamps: crate::store::PollStamps::default(),
            crd_clients: Mutex::new(HashMap::new()),
            echo: false,
            dry_run: false,
            api_policy: RetryPolicy::default(),
        }
    }

    /// Browser sessions open now: in use plus idle, logged in. Never more
    /// than `webdriver.max_sessions`.
    pub async fn sessions_open(&self) -> usize {
        self.sessions.open()
    }

    /// The number of browser sessions open, as it changes (to wait for a
    /// count without polling).
    pub fn watch_sessions_open(&self) -> tokio::sync::watch::Receiver<usize> {
        self.sessions.watch_open()
    }

    /// chromedriver's process group, while it runs (tests prove that no
    /// browser outlives `shutdown`).
    pub async fn driver_process_group(&self) -> Option<i32> {
        self.driver.lock().await.as_ref().and_then(Driver::process_group)
    }

    pub fn playbook(&self, id: &str) -> Option<&Playbook> {
        self.playbooks.get(id)
    }

    /// Closes the idle sessions of a practice's account at a payer. With a
    /// cluster-wide cap on browser sessions (`webdriver.cluster_sessions`)
    /// a job does this before it gives its slot back, so that no session
    /// stays open on the grid without a slot.
    /// `webdriver.idle_close_secs = 0` has the daemon do the same after
    /// every job.
    pub async fn close_idle(&self, playbook: &str, practice: &str) {
        let account = (playbook.to_owned(), practice.to_owned());
        for s in self.sessions.take_idle(Some(&account)) {
            let _ = s.client.close().await;
        }
    }

    /// Closes every idle session (a reload does this to the engine it
    /// replaces, whose sessions would otherwise stay beside the new one's
    /// until its last job ends).
    pub async fn close_all_idle(&self) {
        for s in self.sessions.take_idle(None) {
            let _ = s.client.close().await;
        }
    }

    /// Closes every session and ends chromedriver and its browsers.
    pub async fn shutdown(&self) {
        self.close_all_idle().await;
        if let Some(driver) = self.driver.lock().await.take() {
            driver.shutdown().await;
        }
    }

    /// A session on the practice's account at the payer, within the
    /// payer's and the global caps: an idle, logged-in one when there is
    /// one, else a new browser session — after closing the least recently
    /// used idle sessions of other accounts that would put the sessions
    /// open above `webdriver.max_sessions`.
    async fn check_out(&self, playbook: &Playbook, practice: &Practice) -> Result<CheckedOut, EngineError> {
        let key = (playbook.id.clone(), practice.id.clone());
        let payer_permit = self
            .per_payer
            .get(&playbook.id)
            .cloned()
            .expect("a semaphore per playbook");
        let payer = payer_permit.acquire_owned().await.expect("semaphores are never closed");
        let global = self
            .global
            .clone()
            .acquire_owned()
            .await
            .expect("semaphores are never closed");
        let taken = self.sessions.take(&key, (payer, global));
        for s in taken.evicted {
            tracing::debug!(
                max_sessions = self.settings.webdriver.max_sessions,
                "Idle browser session of another account closed to make room."
            );
            let _ = s.client.close().await;
        }
        let session = match taken.reused {
            Some(s) => s,
            None => PortalSession {
                client: self.new_client().await?,
                logged_in: false,
                cookies: None,
            },
        };
        Ok(CheckedOut {
            key,
            session,
            slot: taken.slot,
        })
    }

    async fn new_client(&self) -> Result<fantoccini::Client, EngineError> {
        let mut guard = self.driver.lock().await;
        if guard.is_none() {
            *guard = Some(Driver::start(&self.settings.webdriver, &self.settings.data_dir).await?);
        }
        Ok(guard.as_ref().expect("started above").session().await?)
    }

    fn binding<'s>(&'s self, case: &CaseRecord) -> Result<(&'s Practice, &'s PayerBinding, &'s Playbook), EngineError> {
        let practice = self
            .settings
            .practice(&case.data.practice_id)
            .ok_or_else(|| EngineError::Setup(format!("practice {} is not configured", case.data.practice_id)))?;
        let binding = practice.payers.get(&case.data.coverage.payer).ok_or_else(|| {
            EngineError::Setup(format!(
                "practice {} has no payer {}",
                practice.id, case.data.coverage.payer
            ))
        })?;
        let playbook = self.playbooks.get(&binding.playbook).ok_or_else(|| {
            EngineError::Setup(format!(
                "no playbook `{}` in {}",
                binding.playbook,
                self.settings.playbooks_dir.display()
            ))
        })?;
        Ok((practice, binding, playbook))
    }

    fn context(
        &self,
        case: Option<&CaseRecord>,
        practice: &Practice,
        binding: &PayerBinding,
        playbook: &Playbook,
    ) -> Result<Value, EngineError> {
        use secrecy::ExposeSecret;
        let mut secrets = serde_json::Map::new();
        for (k, s) in &binding.secrets {
            let v = s.value().map_err(EngineError::Setup)?;
            secrets.insert(k.clone(), Value::String(v.expose_secret().to_owned()));
        }
        let base_url = binding.base_url.clone().unwrap_or_else(|| playbook.base_url.clone());
        let mut ctx = json!({
            "practice": template::practice_context(practice),
            "payer": { "id": playbook.id, "name": playbook.name, "base_url": base_url.trim_end_matches('/') },
            "account": binding.account,
            "secrets": secrets,
            "vars": exec::empty_vars(),
        });
        // A login on its own has no case: a step that reads one fails
        // plainly (strict undefined), never with another case's values.
        if let (Some(case), Value::Object(m)) = (case, &mut ctx) {
            m.insert(
                "case".into(),
                template::case_context(case, &self.settings.data_dir, case.payer_ref.as_deref()),
            );
        }
        Ok(ctx)
    }

    /// Runs `action` for a case, end to end: session, login, steps, ledger.
    pub async fn run(&self, action: Action, case_id: i64, actor: &Actor) -> Result<RunReport, EngineError> {
        let case = self.ledger.get(case_id).await?;
        let report = self.run_read(action, case, actor).await;
        self.flush_stamps().await?;
        report
    }

    /// Writes the "asked, nothing new" stamps of runs since the last flush
    /// ([`Engine::run_read`] leaves them to its caller; [`Engine::run`]
    /// writes them before it returns).
    pub async fn flush_stamps(&self) -> Result<u64, EngineError> {
        Ok(self.stamps.flush(&self.ledger).await?)
    }

    /// [`Engine::run`] on a case its caller has just read (a job's page of
    /// cases): an API run starts from that record, one read fewer per
    /// call; a browser run reads the case again first, because a page of
    /// browser runs takes minutes and the case may have moved meanwhile.
    /// Either way every write checks the status it moves from in its own
    /// transaction. A PAS inquiry that finds nothing new is stamped on the
    /// case at the next [`Engine::flush_stamps`].
    pub async fn run_read(&self, action: Action, case: CaseRecord, actor: &Actor) -> Result<RunReport, EngineError> {
        let (_, _, playbook) = self.binding(&case)?;
        let case = if playbook.channel == Channel::Web {
            self.ledger.get(case.id).await?
        } else {
            case
        };
        let (practice, binding, playbook) = self.binding(&case)?;
        if action == Action::Login && playbook.channel == Channel::Web {
            // A login touches no case: the case only names the account.
            let login = self.login_only(&playbook.id, &practice.id).await?;
            return Ok(RunReport {
                action,
                case_id: case.id,
                status: case.status,
                failure: login.failure,
                artifacts: login.artifacts,
                observations: Vec::new(),
                letters: 0,
                not_before: None,
                partial: None,
                dry_run: Some(DryRun::default()),
            });
        }
        if self.dry_run && playbook.api == Some(ApiKind::Pas) {
            return Err(EngineError::Setup(format!(
                "playbook {} speaks Da Vinci PAS: precert's PAS client sends at once, so it has no dry run",
                playbook.id
            )));
        }
        if playbook.api == Some(ApiKind::Pas) {
            return self.run_pas(action, &case, practice, binding, playbook, actor).await;
        }
        if !playbook.actions.contains_key(&action) {
            return Err(EngineError::Setup(format!(
                "playbook {} has no action {action}",
                playbook.id
            )));
        }
        match action {
            Action::Submit if !matches!(case.status, CaseStatus::Ready | CaseStatus::Submitting) => {
                return Err(EngineError::NotApplicable(format!(
                    "case {} is {}, not ready to submit",
                    case.key(),
                    case.status
                )))
            }
            Action::PollStatus | Action::DownloadLetter if case.payer_ref.is_none() => {
                return Err(EngineError::NotApplicable(format!(
                    "case {} has no payer reference yet (submit it first)",
                    case.key()
                )))
            }
            _ => {}
        }
        let Owned {
            lease,
            ledger,
            case,
            _renewing,
        } = self.own(action, case, actor).await?;
        let report = if playbook.channel == Channel::Api {
            self.run_api(
                action,
                &case,
                practice,
                binding,
                playbook,
                actor,
                lease.as_ref(),
                &ledger,
            )
            .await
        } else {
            self.run_web(
                action,
                &case,
                practice,
                binding,
                playbook,
                actor,
                lease.as_ref(),
                &ledger,
            )
            .await
        };
        if let Some(l) = &lease {
            // A case still `submitting` (the request may be out) waits for
            // the next claimant, who reconciles first; nobody need wait for
            // this lease to run out.
            let _ = self.ledger.release_submission(l).await;
        }
        report
    }

    /// Whoever submits owns the case until the submission ends: the lease
    /// comes with `ready → submitting` (or takes over a stopped one), is
    /// renewed while the run goes on, and every write of the run goes
    /// through the ledger it fences. Other actions own nothing.
    async fn own(&self, action: Action, case: CaseRecord, actor: &Actor) -> Result<Owned, EngineError> {
        // A dry run never sends, so it claims nothing.
        if action != Action::Submit || self.dry_run {
            return Ok(Owned {
                lease: None,
                ledger: self.ledger.clone(),
                case,
                _renewing: None,
            });
        }
        let lease = self.ledger.claim_submission(case.id, actor).await?;
        Ok(Owned {
            ledger: self.ledger.fenced(&lease),
            case: self.ledger.get(case.id).await?,
            _renewing: Some(self.keep_renewing(&lease)),
            lease: Some(lease),
        })
    }

    /// Renews a submission lease in the background while its run goes on;
    /// stops when dropped.
    fn keep_renewing(&self, lease: &SubmitLease) -> AbortOnDrop {
        let ledger = self.ledger.clone();
        let lease = lease.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(SUBMIT_LEASE_RENEW).await;
                if let Err(e) = ledger.renew_submission(&lease).await {
                    if e.is_stale_lease() {
                        tracing::warn!(
                            case_id = lease.case_id,
                            "Submission lease lost; this run's results will not be recorded."
                        );
                        return;
                    }
                }
            }
        }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_web(
        &self,
        action: Action,
        case: &CaseRecord,
        practice: &Practice,
        binding: &PayerBinding,
        playbook: &Playbook,
        actor: &Actor,
        lease: Option<&SubmitLease>,
        ledger: &Ledger,
    ) -> Result<RunReport, EngineError> {
        let CheckedOut { key, mut session, slot } = self.check_out(playbook, practice).await?;
        let ctx = self.context(Some(case), practice, binding, playbook)?;
        let mut trace = Trace {
            echo: self.echo,
            ..Trace::default()
        };
        let result = self
            .drive(
                &mut session,
                playbook,
                action,
                case,
                ctx,
                &mut trace,
                actor,
                lease,
                ledger,
            )
            .await;
        let artifacts = match &result {
            Err(failure) => {
                self.save_artifacts(
                    Some(&session.client),
                    &case.data.practice_id,
                    &case.data.case_ref,
                    action,
                    failure,
                    &trace,
                )
                .await
            }
            Ok(_) => None,
        };
        if result.as_ref().is_err_and(|f| f.kind == FailureKind::Fatal) {
            session.logged_in = false;
        }
        let mut report = if self.dry_run {
            dry_report(action, case, result, artifacts, &mut trace)
        } else {
            self.conclude(action, case, playbook, result, artifacts, actor, ledger)
                .await?
        };
        report.partial = trace.partial.take();
        if report.failure.as_ref().is_some_and(|f| f.kind == FailureKind::Fatal) {
            let _ = session.client.close().await;
        } else {
            self.sessions.give_back(slot, key, session);
        }
        Ok(report)
    }

    /// Records how a run ended: letters, the payer's answer and the case's
    /// status, or the failure and what it means for the case. A run whose
    /// submission lease was superseded meanwhile changes nothing: what it
    /// saw becomes an event of the case.
    #[allow(clippy::too_many_arguments)]
    async fn conclude(
        &self,
        action: Action,
        case: &CaseRecord,
        playbook: &Playbook,
        result: Result<(Vec<Observation>, Vec<exec::Fetched>), StepFailure>,
        artifacts: Option<PathBuf>,
        actor: &Actor,
        ledger: &Ledger,
    ) -> Result<RunReport, EngineError> {
        let seen: Vec<Value> = match &result {
            Ok((obs, _)) => obs
                .iter()
                .map(|o| json!({ "status": o.status.as_str(), "reference": o.reference }))
                .collect(),
            Err(f) => vec![json!({ "failure": f.kind.as_str(), "message": f.message })],
        };
        match self
            .conclude_fenced(action, case, playbook, result, artifacts, actor, ledger)
            .await
        {
            Err(EngineError::Store(e)) if e.is_stale_lease() => {
                self.stale(
                    action,
                    case,
                    actor,
                    &e,
                    json!({ "action": action.as_str(), "result": "stale", "message": e.to_string(), "seen": seen }),
                )
                .await
            }
            other => other,
        }
    }

    /// A run whose submission lease was superseded: what it saw becomes
    /// an event of the case (`detail`) and changes nothing else.
    async fn stale(
        &self,
        action: Action,
        case: &CaseRecord,
        actor: &Actor,
        e: &StoreError,
        detail: Value,
    ) -> Result<RunReport, EngineError> {
        self.ledger
            .append_event(case.id, EventKind::Run, actor, &detail)
            .await?;
        tracing::warn!(
            case_id = case.id,
            action = action.as_str(),
            "A superseded submission's result was recorded as an event only."
        );
        Ok(RunReport {
            action,
            case_id: case.id,
            status: self.ledger.get(case.id).await?.status,
            failure: Some(StepFailure {
                kind: FailureKind::Fatal,
                at: Loc::default(),
                keyword: "lease",
                message: e.to_string(),
            }),
            artifacts: None,
            observations: Vec::new(),
            letters: 0,
            not_before: None,
            partial: None,
            dry_run: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn conclude_fenced(
        &self,
        action: Action,
        case: &CaseRecord,
        playbook: &Playbook,
        result: Result<(Vec<Observation>, Vec<exec::Fetched>), StepFailure>,
        artifacts: Option<PathBuf>,
        actor: &Actor,
        ledger: &Ledger,
    ) -> Result<RunReport, EngineError> {
        Ok(match result {
            Ok((observations, downloads)) => {
                let letters = self.keep_letters(case, downloads, actor, ledger).await?;
                let status = self.apply(action, case, playbook, &observations, actor, ledger).await?;
                ledger
                    .append_event(
                        case.id,
                        EventKind::Run,
                        actor,
                        &json!({ "action": action.as_str(), "result": "ok", "letters": letters }),
                    )
                    .await?;
                RunReport {
                    action,
                    case_id: case.id,
                    status,
                    failure: None,
                    artifacts: None,
                    observations,
                    letters,
                    not_before: None,
                    partial: None,
                    dry_run: None,
                }
            }
            Err(failure) => {
                let status = self
                    .after_failure(action, case, &failure, artifacts.as_ref(), actor, ledger)
                    .await?;
                RunReport {
                    action,
                    case_id: case.id,
                    status,
                    failure: Some(failure),
                    artifacts,
                    observations: Vec::new(),
                    letters: 0,
                    not_before: None,
                    partial: None,
                    dry_run: None,
                }
            }
        })
    }

    /// The commit hook of a submission: the intent goes into the ledger,
    /// fenced by the lease, right before the request is sent. A lost lease
    /// refuses it, and then nothing is sent.
    fn arm_commit(&self, interp: &mut exec::Interp<'_>, lease: Option<&SubmitLease>, case: &CaseRecord, actor: &Actor) {
        let ledger = self.ledger.clone();
        let (lease, id, actor) = (lease.cloned(), case.id, actor.clone());
        interp.on_commit = Some(Box::new(move || {
            let ledger = ledger.clone();
            let actor = actor.clone();
            let lease = lease.clone();
            Box::pin(async move {
                let detail = json!({ "action": "submit" });
                match &lease {
                    Some(l) => ledger.record_intent(l, &actor, &detail).await,
                    None => ledger
                        .append_event(
                            id,
                            EventKind::Run,
                            &actor,
                            &json!({ "action": "submit", "intent": "commit" }),
                        )
                        .await
                        .map(|_| ()),
                }
                .map_err(|e| e.to_string())
            })
        }));
    }

    /// After `find_existing` ran: which of the payer's requests is this
    /// case's. Exactly one candidate that matches the case (see
    /// `candidate_matches`) and whose reference no other case holds is
    /// adopted (it stays in `interp.observations` alone); none leaves
    /// nothing; several are for a person to tell apart.
    async fn choose_existing(&self, interp: &mut exec::Interp<'_>, case: &CaseRecord) -> Result<bool, StepFailure> {
        let mut chosen: Vec<Observation> = Vec::new();
        for obs in std::mem::take(&mut interp.observations) {
            let Some(reference) = obs.reference.clone() else {
                continue;
            };
            if obs.status == CaseStatus::Cancelled {
                interp
                    .trace
                    .note(format!("   {reference}: cancelled at the payer, not adopted"));
                continue;
            }
            if let Some(c) = &obs.candidate {
                if let Err(why) = candidate_matches(c, case) {
                    interp.trace.note(format!("   {reference}: not this case's ({why})"));
                    continue;
                }
            }
            match self
                .ledger
                .find_by_payer_ref(&case.data.coverage.payer, &reference)
                .await
                .map_err(|e| store_failure(&e))?
            {
                Some(other) if other.id != case.id => {
                    interp
                        .trace
                        .note(format!("   {reference}: already case {}'s, not adopted", other.key()));
                    continue;
                }
                _ => {}
            }
            if !chosen
                .iter()
                .any(|c| c.reference.as_deref() == Some(reference.as_str()))
            {
                chosen.push(obs);
            }
        }
        match chosen.len() {
            0 => Ok(false),
            1 => {
                interp.trace.note(format!(
                    "   adopting {} (the earlier submission of this case)",
                    chosen[0].reference.as_deref().unwrap_or_default()
                ));
                interp.observations = chosen;
                Ok(true)
            }
            n => Err(StepFailure {
                kind: FailureKind::NeedsHuman,
                at: Loc::default(),
                keyword: "find_existing",
                message: format!(
                    "{n} requests at the payer match this case ({}): a person must tell which is this case's before anyone submits again",
                    chosen
                        .iter()
                        .filter_map(|o| o.reference.as_deref())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// Before a submission taken over from a holder that stopped: does the
    /// payer already have the request? True when it was found and adopted.
    /// Without a `find_existing` action, a case whose intent was recorded
    /// needs a person.
    async fn reconcile(
        &self,
        interp: &mut exec::Interp<'_>,
        playbook: &Playbook,
        case: &CaseRecord,
    ) -> Result<bool, StepFailure> {
        let Some(find) = playbook.actions.get(&Action::FindExisting) else {
            if self.intent_recorded(case).await {
                return Err(StepFailure {
                    kind: FailureKind::NeedsHuman,
                    at: Loc::default(),
                    keyword: "submit",
                    message: "an earlier submission may have reached the payer, and the playbook has no \
                              find_existing action to look: a person must check before anyone submits again"
                        .into(),
                });
            }
            return Ok(false);
        };
        interp
            .trace
            .note("-- find_existing (an earlier submission may have gone through)".into());
        interp.observations.clear();
        interp.run_steps(find).await?;
        self.choose_existing(interp, case).await
    }

    /// `login` on its own, for one practice's account (`precert run PAYER
    /// login`): it touches no case and writes nothing to the ledger. A
    /// session that signed in stays for the runs after it. Artifacts of a
    /// failure go under `DATA/artifacts/PRACTICE/_login/`.
    pub async fn login_only(&self, playbook_id: &str, practice_id: &str) -> Result<LoginReport, EngineError> {
        let practice = self
            .settings
            .practice(practice_id)
            .ok_or_else(|| EngineError::Setup(format!("practice {practice_id} is not configured")))?;
        let binding = practice
            .payers
            .values()
            .find(|b| b.playbook == playbook_id)
            .ok_or_else(|| {
                EngineError::Setup(format!(
                    "practice {practice_id} binds no payer to playbook {playbook_id}"
                ))
            })?;
        let playbook = self
            .playbooks
            .get(playbook_id)
            .ok_or_else(|| EngineError::Setup(format!("no playbook `{playbook_id}`")))?;
        if playbook.channel != Channel::Web {
            return Err(EngineError::Setup(format!(
                "playbook {playbook_id} is an api playbook: its login runs before each action"
            )));
        }
        let CheckedOut { key, mut session, slot } = self.check_out(playbook, practice).await?;
        let ctx = self.context(None, practice, binding, playbook)?;
        let trace = Trace {
            echo: self.echo,
            ..Trace::default()
        };
        let mut interp = self.interp(Some(&session.client), playbook, &practice.id, ctx, trace);
        let result = self.login(&mut interp, playbook).await;
        let trace = std::mem::take(&mut interp.trace);
        drop(interp);
        let artifacts = match &result {
            Err(f) => {
                self.save_artifacts(Some(&session.client), &practice.id, "_login", Action::Login, f, &trace)
                    .await
            }
            Ok(()) => None,
        };
        session.logged_in = result.is_ok();
        if result.as_ref().is_err_and(|f| f.kind == FailureKind::Fatal) {
            let _ = session.client.close().await;
        } else {
            self.sessions.give_back(slot, key, session);
        }
        Ok(LoginReport {
            practice: practice.id.clone(),
            failure: result.err(),
            artifacts,
        })
    }

    /// Logs in, retrying a login that failed for a passing reason: an error
    /// page, or a page that looked wrong (a logout or an error answered in
    /// the middle of the login looks like a changed portal to its asserts).
    async fn login(&self, interp: &mut exec::Interp<'_>, playbook: &Playbook) -> Result<(), StepFailure> {
        let mut attempt = 0;
        loop {
            interp.trace.note("-- login".into());
            // A new session has new cookies.
            interp.cookies = None;
            interp.in_login = true;
            let login = interp.run_steps(&playbook.actions[&Action::Login]).await;
            interp.in_login = false;
            match login {
                Err(f)
                    if attempt < ACTION_RETRIES
                        && (f.kind == FailureKind::Retryable
                            || f.kind == FailureKind::PortalChanged && !f.message.starts_with("playbook:")) =>
                {
                    attempt += 1;
                    interp.trace.note(format!(
                        "-- login failed ({}), attempt {} of {}",
                        f.message,
                        attempt + 1,
                        ACTION_RETRIES + 1
                    ));
                }
                other => return other,
            }
        }
    }

    /// Login when needed, the action, and the answers to passing trouble:
    /// a lost session is logged in again and the action resumed; a failing
    /// page (HTTP 5xx, a timeout, an error box the `detect` rules know) and,
    /// once, an unexpected page are tried again from the action's start, as
    /// long as nothing was sent. Only what persists is "portal changed".
    /// After the commit, a lost page is answered by `find_existing`, never
    /// by sending again.
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        session: &mut PortalSession,
        playbook: &Playbook,
        action: Action,
        case: &CaseRecord,
        ctx: Value,
        trace: &mut Trace,
        actor: &Actor,
        lease: Option<&SubmitLease>,
        _ledger: &Ledger,
    ) -> Result<(Vec<Observation>, Vec<exec::Fetched>), StepFailure> {
        let mut interp = self.interp(
            Some(&session.client),
            playbook,
            &case.data.practice_id,
            ctx,
            std::mem::take(trace),
        );
        interp.cookies = session.cookies.take();
        let result = async {
            if !session.logged_in {
                self.login(&mut interp, playbook).await?;
                session.logged_in = true;
            }
            let submitting = action == Action::Submit;
            if submitting {
                self.arm_commit(&mut interp, lease, case, actor);
            }
            // A submission taken over from a holder that stopped looks
            // for its request first.
            let mut reconciling = submitting && lease.is_some_and(|l| l.took_over.is_some());
            let (mut relogins, mut retries, mut portal_retried) = (0, 0, false);
            // The last checkpoint passed (index, page URL): a passing failure
            // after it resumes there, not at the first step.
            let mut resume: Option<(usize, String)> = None;
            let mut failed_at: Option<usize> = None;
            loop {
                let current = if reconciling { Action::FindExisting } else { action };
                let result = if reconciling {
                    self.reconcile(&mut interp, playbook, case).await
                } else {
                    let steps = &playbook.actions[&current];
                    let start = match &resume {
                        Some((i, url)) => {
                            interp.trace.note(format!("-- {current}, resumed at line {}", steps[*i].at.line));
                            let _ = session.client.goto(url).await;
                            *i
                        }
                        None => {
                            interp.trace.note(format!("-- {current}"));
                            interp.steps_done = 0;
                            0
                        }
                    };
                    interp.count_steps = submitting;
                    let mut r = Ok(false);
                    for (i, step) in steps.iter().enumerate().skip(start) {
                        if let Err(f) = interp.run_step(step).await {
                            r = Err(f);
                            break;
                        }
                        if step.checkpoint && !interp.committed {
                            if let Ok(url) = session.client.current_url().await {
                                resume = Some((i, url.to_string()));
                            }
                        }
                    }
                    interp.count_steps = false;
                    r
                };
                // Progress since the last failure earns the retries back.
                if result.is_err() && !reconciling {
                    let at = resume.as_ref().map(|(i, _)| *i);
                    if at.is_some() && at > failed_at {
                        retries = 0;
                        portal_retried = false;
                    }
                    failed_at = at;
                }
                match result {
                    Ok(true) => return Ok(()),
                    Ok(false) if reconciling => {
                        if interp.committed {
                            // Sent in this run, and the payer does not show
                            // it yet: never send it twice. The next run
                            // looks again.
                            return Err(StepFailure {
                                kind: FailureKind::Retryable,
                                at: Loc::default(),
                                keyword: "find_existing",
                                message: "the request was sent, and the payer does not list it yet; it is looked for again before anything is resent".into(),
                            });
                        }
                        interp.trace.note("-- the payer has no earlier request: submitting".into());
                        reconciling = false;
                    }
                    Ok(false) => return Ok(()),
                    Err(f)
                        if !interp.committed
                            && retries < ACTION_RETRIES
                            && (f.kind == FailureKind::Retryable
                                || f.kind == FailureKind::PortalChanged
                                    && !portal_retried
                                    && !f.message.starts_with("playbook:")) =>
                    {
                        retries += 1;
                        portal_retried |= f.kind == FailureKind::PortalChanged;
                        interp.trace.note(format!(
                            "-- {} failure, attempt {} of {}",
                            f.kind.as_str(),
                            retries + 1,
                            ACTION_RETRIES + 1
                        ));
                        interp.observations.clear();
                        interp.downloads.clear();
                    }
                    Err(f) if f.kind == FailureKind::Retryable && interp.committed && reconciling && retries < ACTION_RETRIES => {
                        // The search after a lost page failed: search again.
                        retries += 1;
                        interp.trace.note(format!("-- find_existing failed ({}), searching again", f.message));
                    }
                    Err(f) if f.kind == FailureKind::SessionLost && relogins <= ACTION_RETRIES => {
                        relogins += 1;
                        // A new session may not have the old one's form
                        // state: start the action over.
                        resume = None;
                        failed_at = None;
                        interp.trace.note("-- session lost: login again".into());
                        self.login(&mut interp, playbook).await?;
                        if interp.committed {
                            // The request may have been sent: adopt it
                            // instead of sending it twice.
                            reconciling = true;
                        }
                        interp.observations.clear();
                    }
                    Err(f) => return Err(f),
                }
            }
        }
        .await;
        // A dry run that reached the commit step ended as planned.
        let result = match result {
            Err(_) if interp.stopped_before.is_some() => {
                // The step before it may have opened the confirm dialog
                // the commit step would accept: it is dismissed.
                let _ = session.client.dismiss_alert().await;
                Ok(())
            }
            other => other,
        };
        *trace = std::mem::take(&mut interp.trace);
        trace.partial = interp.partial.take();
        trace.stopped_before = interp.stopped_before;
        session.cookies = interp.cookies.take();
        if let Err(f) = &result {
            if f.kind == FailureKind::SessionLost {
                session.logged_in = false;
            }
        }
        result.map(|()| (interp.observations, interp.downloads))
    }

    /// An interpreter for one run of `playbook` for `case`.
    fn interp<'a>(
        &self,
        client: Option<&'a fantoccini::Client>,
        playbook: &'a Playbook,
        practice_id: &str,
        ctx: Value,
        trace: Trace,
    ) -> exec::Interp<'a> {
        // Every secret of the account, as rendered into requests: never
        // printed in a failure or a trace line.
        let redact = ctx
            .get("secrets")
            .and_then(Value::as_object)
            .map(|m| m.values().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        exec::Interp {
            client,
            playbook,
            env: template::environment(),
            ctx,
            trace,
            observations: Vec::new(),
            downloads: Vec::new(),
            committed: false,
            on_commit: None,
            http: self.http.clone(),
            api: http::ApiContext {
                http: self.api_http.clone(),
                policy: self.api_policy.clone(),
                tokens: self.tokens.clone(),
                account: (playbook.id.clone(), practice_id.to_owned()),
            },
            redact,
            in_login: false,
            throttled: None,
            count_steps: false,
            steps_done: 0,
            partial: None,
            upload_root: self.settings.data_dir.join("run").join("uploads"),
            uploads: None,
            dry_run: self.dry_run,
            stopped_before: None,
            page: None,
            cookies: None,
            following: Vec::new(),
            prefetched: Vec::new(),
        }
    }

    /// Whether the intent to send was recorded since the case last moved to
    /// `submitting` (the request may then be at the payer).
    async fn intent_recorded(&self, case: &CaseRecord) -> bool {
        let Ok(events) = self.ledger.events(case.id).await else {
            return true;
        };
        let since = events
            .iter()
            .rposition(|e| e.to_status == Some(CaseStatus::Submitting))
            .unwrap_or(0);
        events[since..]
            .iter()
            .any(|e| e.kind == EventKind::Run.as_str() && e.detail.get("intent").is_some())
    }

    async fn keep_letters(
        &self,
        case: &CaseRecord,
        downloads: Vec<exec::Fetched>,
        actor: &Actor,
        ledger: &Ledger,
    ) -> Result<usize, EngineError> {
        let mut kept = 0;
        for f in downloads {
            let sha256 = sha256_hex(&f.bytes);
            let rel = PathBuf::from("letters")
                .join(&case.data.practice_id)
                .join(safe_name(&case.data.case_ref))
                .join(format!("{}-{}.pdf", &sha256[..12], f.kind));
            let path = self.settings.data_dir.join(&rel);
            write_private(&path, &f.bytes).map_err(|e| EngineError::Setup(format!("cannot store the letter: {e}")))?;
            let letter = Letter {
                kind: f.kind,
                stored_path: rel,
                sha256,
                bytes: f.bytes.len() as u64,
                media_type: f.media_type,
                fetched_at: None,
            };
            if ledger.add_letter(case.id, &letter, actor).await? {
                kept += 1;
            }
        }
        Ok(kept)
    }

    /// Records what the portal said. Returns the case's status after.
    async fn apply(
        &self,
        action: Action,
        case: &CaseRecord,
        playbook: &Playbook,
        observations: &[Observation],
        actor: &Actor,
        ledger: &Ledger,
    ) -> Result<CaseStatus, EngineError> {
        match action {
            Action::Submit | Action::FindExisting => {
                if let Some(obs) = observations.iter().find(|o| o.reference.is_some()) {
                    let reference = obs.reference.as_deref().expect("found above");
                    if case.payer_ref.as_deref() != Some(reference) {
                        ledger.set_payer_ref(case.id, reference, actor).await?;
                    }
                    let fresh = ledger.get(case.id).await?;
                    self.apply_observation(&fresh, playbook, obs, actor, ledger).await?;
                } else if action == Action::Submit {
                    return Err(EngineError::Setup(
                        "the submit action finished without an `outcome` step giving the portal's reference".into(),
                    ));
                }
            }
            Action::PollStatus => {
                if let Some(obs) = observations.last() {
                    self.apply_observation(case, playbook, obs, actor, ledger).await?;
                }
            }
            Action::PollWorklist => {
                for obs in observations {
                    let Some(r) = &obs.reference else { continue };
                    if let Some(c) = ledger.find_by_payer_ref(&case.data.coverage.payer, r).await? {
                        self.apply_observation(&c, playbook, obs, actor, ledger).await?;
                    }
                }
            }
            Action::Login | Action::DownloadLetter => {}
        }
        Ok(ledger.get(case.id).await?.status)
    }

    async fn apply_observation(
        &self,
        case: &CaseRecord,
        playbook: &Playbook,
        obs: &Observation,
        actor: &Actor,
        ledger: &Ledger,
    ) -> Result<(), EngineError> {
        let to = obs.status;
        let decided = matches!(
            to,
            CaseStatus::Approved | CaseStatus::PartiallyApproved | CaseStatus::Denied
        );
        if decided {
            // Units are recorded only as read: a denial approves none and an
            // approval all that was asked (what the words mean); a partial
            // approval's units are the portal's number, on the one line it
            // can be for — never guessed. Not read: no lines, "not known".
            let approved = obs.approved_units.as_deref().and_then(first_number);
            let one_line = case.data.service_lines.len() == 1;
            let lines = case
                .data
                .service_lines
                .iter()
                .map(|l| {
                    let units = match (to, approved) {
                        (CaseStatus::Denied, _) => Some(0),
                        (_, Some(n)) if one_line => Some(n),
                        (CaseStatus::Approved, _) => Some(l.units),
                        _ => None,
                    };
                    units.map(|approved_units| LineDecision {
                        code: l.code.clone(),
                        requested_units: l.units,
                        approved_units,
                    })
                })
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default();
            let valid = match (
                obs.valid_from.as_deref().and_then(parse_date),
                obs.valid_to.as_deref().and_then(parse_date),
            ) {
                (Some(start), Some(end)) if start <= end => Some(DateRange { start, end }),
                _ => None,
            };
            let denial = obs
                .denial_reason
                .as_ref()
                .or(obs.reason.as_ref().filter(|_| to == CaseStatus::Denied))
                .map(|r| match r.split_once(" - ").or_else(|| r.split_once(": ")) {
                    Some((code, text)) if !code.contains(' ') => DenialReason {
                        code: Some(code.trim().into()),
                        text: text.trim().into(),
                    },
                    _ => DenialReason {
                        code: None,
                        text: r.trim().into(),
                    },
                });
            let decided_at = obs
                .decision_date
                .as_deref()
                .and_then(parse_date)
                .and_then(|d| d.and_hms_opt(12, 0, 0))
                .map(|d| d.and_utc())
                .unwrap_or_else(Utc::now);
            let mut decision = Decision {
                auth_number: obs.auth_number.clone(),
                valid,
                lines,
                conditions: obs.reason.clone().filter(|_| to != CaseStatus::Denied),
                denial,
                decided_at,
                source: match playbook.channel {
                    Channel::Web => format!("portal:{}", playbook.id),
                    Channel::Api => format!("api:{}", playbook.id),
                },
            };
            // The same decision read again from a page that shows less (a
            // worklist row has no dates or reason) keeps what is on record;
            // it is written again only when the portal now shows more.
            let mut same = false;
            if let (Some(old), true) = (&case.decision, case.status == to) {
                decision.auth_number = decision.auth_number.or_else(|| old.auth_number.clone());
                decision.valid = decision.valid.or(old.valid);
                decision.denial = decision.denial.or_else(|| old.denial.clone());
                decision.conditions = decision.conditions.or_else(|| old.conditions.clone());
                if obs.approved_units.is_none() {
                    decision.lines = old.lines.clone();
                }
                decision.decided_at = old.decided_at;
                same = decision
                    == Decision {
                        source: decision.source.clone(),
                        ..old.clone()
                    };
            }
            if !same {
                ledger.record_decision(case.id, &decision, to, actor).await?;
            }
        } else if case.status != to {
            if case.status.can_move_to(to) {
                // The payer's own request (a pend's "please send …") is the
                // note the timeline and the supervisors' mail quote.
                let note = match obs.request.as_deref().or(obs.reason.as_deref()) {
                    Some(asks) => format!("{asks} (portal says \"{}\")", obs.wording),
                    None => format!("portal says \"{}\"", obs.wording),
                };
                ledger.transition(case.id, to, actor, Some(&note)).await?;
            } else {
                self.ledger
                    .append_event(
                        case.id,
                        EventKind::Note,
                        actor,
                        &json!({ "portal_status": obs.wording, "ignored": format!("cannot move from {} to {to}", case.status) }),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn after_failure(
        &self,
        action: Action,
        case: &CaseRecord,
        failure: &StepFailure,
        artifacts: Option<&PathBuf>,
        actor: &Actor,
        ledger: &Ledger,
    ) -> Result<CaseStatus, EngineError> {
        let detail = json!({
            "action": action.as_str(),
            "result": failure.kind.as_str(),
            "step": format!("{}:{}", failure.at.line, failure.at.col),
            "message": failure.message,
            "artifacts": artifacts.map(|p| p.display().to_string()),
        });
        self.ledger
            .append_event(case.id, EventKind::Run, actor, &detail)
            .await?;
        let now = self.ledger.get(case.id).await?;
        let committed = now.status == CaseStatus::Submitting && self.intent_recorded(&now).await;
        let target = match failure.kind {
            FailureKind::NeedsHuman | FailureKind::PortalChanged => Some(CaseStatus::NeedsAttention),
            // Nothing was sent: the case is ready again for the next try.
            _ if now.status == CaseStatus::Submitting && !committed => Some(CaseStatus::Ready),
            _ => None,
        };
        if let Some(to) = target {
            if now.status != to && now.status.can_move_to(to) {
                let note = format!("{} {}: {}", action, failure.kind.as_str(), failure.message);
                ledger.transition(case.id, to, actor, Some(&note)).await?;
            }
        }
        tracing::warn!(
            case_id = case.id,
            action = action.as_str(),
            kind = failure.kind.as_str(),
            "Playbook run failed."
        );
        Ok(self.ledger.get(case.id).await?.status)
    }

    /// Screenshot, page HTML and the step trace, 0600, under
    /// `DATA/artifacts/PRACTICE/CASE/TIME-ACTION/`.
    async fn save_artifacts(
        &self,
        client: Option<&fantoccini::Client>,
        practice_id: &str,
        case_ref: &str,
        action: Action,
        failure: &StepFailure,
        trace: &Trace,
    ) -> Option<PathBuf> {
        let dir = self
            .settings
            .data_dir
            .join("artifacts")
            .join(practice_id)
            .join(safe_name(case_ref))
            .join(format!("{}-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ"), action));
        let mut text = String::new();
        for l in &trace.lines {
            let _ = writeln!(text, "{l}");
        }
        let _ = writeln!(text, "\nfailure: {failure}");
        let mut ok = write_private(&dir.join("trace.txt"), text.as_bytes()).is_ok();
        if let Some(client) = client {
            if let Ok(png) = client.screenshot().await {
                ok &= write_private(&dir.join("screenshot.png"), &png).is_ok();
            }
            if let Ok(html) = client.source().await {
                ok &= write_private(&dir.join("page.html"), html.as_bytes()).is_ok();
            }
        }
        for (name, png) in &trace.screenshots {
            let _ = write_private(&dir.join(format!("{}.png", safe_name(name))), png);
        }
        ok.then_some(dir)
    }
}

/// A dry run's report: what the portal showed, nothing recorded; the case
/// as it was.
fn dry_report(
    action: Action,
    case: &CaseRecord,
    result: Result<(Vec<Observation>, Vec<exec::Fetched>), StepFailure>,
    artifacts: Option<PathBuf>,
    trace: &mut Trace,
) -> RunReport {
    let (observations, downloads, failure) = match result {
        Ok((o, d)) => (o, d.len(), None),
        Err(f) => (Vec::new(), 0, Some(f)),
    };
    RunReport {
        action,
        case_id: case.id,
        status: case.status,
        failure,
        artifacts,
        observations,
        letters: 0,
        not_before: None,
        partial: trace.partial.take(),
        dry_run: Some(DryRun {
            stopped_before: trace.stopped_before.take(),
            downloads,
        }),
    }
}

/// A run's hold on its case (see `Engine::own`).
struct Owned {
    lease: Option<SubmitLease>,
    /// Fenced by the lease, when there is one.
    ledger: Ledger,
    /// As it is once owned (`submitting` for a submission).
    case: CaseRecord,
    _renewing: Option<AbortOnDrop>,
}

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a `find_existing` candidate is the case's own request: every
/// field the playbook read must equal the case's. `Err` says which differs.
fn candidate_matches(c: &Candidate, case: &CaseRecord) -> Result<(), String> {
    let d = &case.data;
    if let Some(r) = &c.case_ref {
        if r.trim() != d.case_ref {
            return Err("another case reference".into());
        }
    }
    if let Some(m) = &c.member_id {
        let norm = |s: &str| -> String {
            s.chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_uppercase()
        };
        if norm(m) != norm(d.patient.member_id.expose()) {
            return Err("another member".into());
        }
    }
    if let Some(codes) = &c.codes {
        let mut theirs: Vec<String> = codes
            .split(|ch: char| ch == ',' || ch == ';' || ch.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_ascii_uppercase)
            .collect();
        let mut ours: Vec<String> = d
            .service_lines
            .iter()
            .map(|l| l.code.as_str().to_ascii_uppercase())
            .collect();
        theirs.sort();
        ours.sort();
        if theirs != ours {
            return Err(format!("codes {}", theirs.join(", ")));
        }
    }
    for (what, given, ours) in [
        ("service start", &c.service_start, d.service_dates.start),
        ("service end", &c.service_end, d.service_dates.end),
    ] {
        if let Some(s) = given {
            match parse_date(s) {
                Some(day) if day == ours => {}
                Some(day) => return Err(format!("{what} {day}")),
                None => return Err(format!("{what} `{s}` is not a date")),
            }
        }
    }
    if c.case_ref.is_none() && (c.member_id.is_none() || c.codes.is_none() || c.service_start.is_none()) {
        return Err("the playbook read too little to tell requests apart".into());
    }
    Ok(())
}

fn store_failure(e: &StoreError) -> StepFailure {
    StepFailure {
        kind: FailureKind::Fatal,
        at: Loc::default(),
        keyword: "ledger",
        message: e.to_string(),
    }
}

/// Deletes failure artifacts older than the retention, and upload folders
/// a crashed run left behind (a run removes its own when it ends).
fn prune_artifacts(settings: &Settings) {
    let day = std::time::SystemTime::now() - Duration::from_secs(86_400);
    if let Ok(runs) = std::fs::read_dir(settings.data_dir.join("run").join("uploads")) {
        for r in runs.filter_map(Result::ok) {
            if r.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < day) {
                let _ = std::fs::remove_dir_all(r.path());
            }
        }
    }
    let root = settings.data_dir.join("artifacts");
    let limit =
        std::time::SystemTime::now() - Duration::from_secs(u64::from(settings.artifacts_retention_days) * 86_400);
    let Ok(practices) = std::fs::read_dir(&root) else {
        return;
    };
    for p in practices.filter_map(Result::ok) {
        let Ok(cases) = std::fs::read_dir(p.path()) else {
            continue;
        };
        for c in cases.filter_map(Result::ok) {
            let Ok(runs) = std::fs::read_dir(c.path()) else {
                continue;
            };
            for r in runs.filter_map(Result::ok) {
                if r.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < limit) {
                    let _ = std::fs::remove_dir_all(r.path());
                }
            }
        }
    }
}
