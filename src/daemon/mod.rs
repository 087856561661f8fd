//! `precert daemon`: schedules fill the durable job queue, workers lease
//! jobs and run playbook actions through the engine, an HTTP listener serves
//! health and metrics. The caller owns the stop and reload signals (as in
//! mini-redis): `run` takes a cancellation token and a reload channel.
//!
//! Promises across crashes and restarts come from the ledger: a slot fires
//! once (`cron_fires`), a leased job whose daemon died is re-queued when its
//! lease runs out, and a submission is exactly-once (the engine's intent and
//! `find_existing`).

mod http;
pub mod sd;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{mpsc, Notify, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use http::Metrics;

use crate::case::{CaseRecord, CaseStatus};
use crate::config::{self, Job, Secrets, Settings};
use crate::engine::{Engine, FailureKind};
use crate::escalate::Escalator;
use crate::limits::{Blocked, LimitSettings, PayerLimits, RunEnd};
use crate::mail::Mailer;
use crate::playbook::{self, Action, Playbook};
use crate::queue::{Failure, LeaseFilter, LeasedJob, Queue, Scheduler};
use crate::store::{Actor, CaseFilter, Ledger, StoreError};

/// How long a worker's lease lasts; it is renewed at a third of this.
const LEASE: Duration = Duration::from_secs(120);
/// How long running jobs may finish after SIGTERM before they are abandoned
/// (at an await point, between WebDriver commands) and released.
pub const GRACE: Duration = Duration::from_secs(30);
/// The longest the mail sender sleeps before looking at the outbox again:
/// mail queued by another process (`precert cases set-status`) wakes
/// nobody here. One indexed query each time.
const MAIL_POLL: Duration = Duration::from_secs(5);
/// The longest a worker waits for work before looking again (jobs whose
/// backoff ended wake nobody).
const IDLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Queue(String),
}

/// Configuration and playbooks, checked together, as `precert check` does.
pub fn load_all(path: &Path) -> Result<(Settings, Vec<Playbook>), String> {
    let settings = config::load(path, Secrets::Resolve).map_err(|e| e.to_string())?;
    let (playbooks, errors) = playbook::load_dir(&settings.playbooks_dir);
    let mut problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
    problems.extend(
        playbook::check_bindings(&settings, &playbooks)
            .iter()
            .map(ToString::to_string),
    );
    if problems.is_empty() {
        Ok((settings, playbooks))
    } else {
        Err(format!("{} problem(s):\n  {}", problems.len(), problems.join("\n  ")))
    }
}

/// Each payer's limits: the configured pacing, its playbook's session cap.
fn payer_limits(settings: &Settings, playbooks: &[Playbook]) -> PayerLimits {
    let mut limits = PayerLimits::new(settings.limits);
    for p in playbooks {
        limits.set(
            &p.id,
            LimitSettings {
                max_concurrent: p.max_sessions,
                ..settings.limits
            },
        );
    }
    limits
}

/// What a reload replaces as a whole.
struct Loaded {
    settings: Arc<Settings>,
    engine: Arc<Engine>,
    scheduler: Scheduler,
    payers: Vec<String>,
    escalator: Arc<Escalator>,
    mailer: Arc<Mailer>,
}

impl Loaded {
    /// Builds everything a configuration implies; the caller installs
    /// `escalator` as the ledger's hook once it is the running one.
    fn new(
        settings: Settings,
        playbooks: Vec<Playbook>,
        ledger: &Ledger,
        queue: &Queue,
        mail_wake: &Arc<Notify>,
    ) -> Result<Loaded, String> {
        let scheduler = Scheduler::new(queue.clone(), &settings.practices).map_err(|e| e.to_string())?;
        let payers = playbooks.iter().map(|p| p.id.clone()).collect();
        let mailer = Arc::new(Mailer::new(&settings.mail).map_err(|e| format!("mail: {e}"))?);
        let settings = Arc::new(settings);
        let escalator = Arc::new(Escalator::new(settings.clone(), &playbooks, mail_wake.clone()));
        let engine = Arc::new(Engine::new(settings.clone(), ledger.clone(), playbooks));
        Ok(Loaded {
            settings,
            engine,
            scheduler,
            payers,
            escalator,
            mailer,
        })
    }
}

struct Ctx {
    ledger: Ledger,
    queue: Arc<Queue>,
    loaded: RwLock<Arc<Loaded>>,
    limits: Mutex<PayerLimits>,
    metrics: Arc<Metrics>,
    /// Signalled when the scheduler queued work.
    wake: Notify,
    /// Signalled when mail was queued in the outbox.
    mail_wake: Arc<Notify>,
    /// Stop taking jobs.
    stop: CancellationToken,
    /// The grace period is over: abandon running jobs.
    abandon: CancellationToken,
    owner: String,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "host".into())
}

/// Runs the daemon until `stop` is cancelled; each message on `reload`
/// re-reads the configuration and playbooks (a broken one is refused and the
/// running one kept).
pub async fn run(
    config_path: PathBuf,
    mut reload: mpsc::Receiver<()>,
    stop: CancellationToken,
) -> Result<(), DaemonError> {
    let (settings, playbooks) = load_all(&config_path).map_err(DaemonError::Config)?;
    crate::store::private_dir(&settings.data_dir)
        .map_err(|e| DaemonError::Config(format!("cannot create {}: {e}", settings.data_dir.display())))?;
    let ledger = Ledger::open(&settings.database_url).await?;
    let queue = Arc::new(Queue::new(ledger.clone()));
    let listen = settings.http_listen;
    let workers = settings.webdriver.max_sessions.max(1);
    let limits = payer_limits(&settings, &playbooks);
    let mail_wake = Arc::new(Notify::new());
    let loaded = Loaded::new(settings, playbooks, &ledger, &queue, &mail_wake).map_err(DaemonError::Config)?;
    ledger.set_escalation_hook(loaded.escalator.clone());
    let ctx = Arc::new(Ctx {
        ledger: ledger.clone(),
        queue: queue.clone(),
        loaded: RwLock::new(Arc::new(loaded)),
        limits: Mutex::new(limits),
        metrics: Arc::new(Metrics::default()),
        wake: Notify::new(),
        mail_wake,
        stop: stop.clone(),
        abandon: CancellationToken::new(),
        owner: format!("{}-{}", hostname(), std::process::id()),
    });

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DaemonError::Listen { addr: listen, source })?;
    let (receiver, subscriptions) = subscribe(&ctx).await;
    let app = http::router(http::HttpState { ctx: ctx.clone() }).merge(crate::pas::notify::router(Arc::new(receiver)));
    let tracker = TaskTracker::new();
    let http_stop = stop.clone();
    tracker.spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(http_stop.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP listener failed.");
        }
    });
    // Work a crashed daemon on this machine held is queued again at once;
    // elsewhere, as soon as its lease ends.
    match queue.requeue_dead_local(&format!("{}-", hostname()), Utc::now()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "Jobs of a daemon that died were queued again."),
        Err(e) => tracing::error!(error = %e, "Cannot re-queue the jobs of a dead daemon."),
    }
    requeue(&ctx).await;
    tracker.spawn(scheduler_loop(ctx.clone()));
    tracker.spawn(mail_sender(ctx.clone()));
    for i in 0..workers {
        tracker.spawn(worker(ctx.clone(), i));
    }
    sd::notify("READY=1");
    tracing::info!(%listen, workers, "Daemon started.");

    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            msg = reload.recv() => match msg {
                Some(()) => reload_config(&ctx, &config_path).await,
                None => break,
            },
        }
    }

    sd::notify("STOPPING=1");
    tracing::info!("Stopping: no new jobs; running ones may finish.");
    tracker.close();
    if tokio::time::timeout(GRACE, tracker.wait()).await.is_err() {
        tracing::warn!(
            grace_s = GRACE.as_secs(),
            "Grace period over: abandoning running jobs and releasing them."
        );
        ctx.abandon.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    }
    unsubscribe(subscriptions).await;
    let loaded = ctx.loaded.read().await.clone();
    loaded.engine.shutdown().await;
    ledger.close().await;
    tracing::info!("Daemon stopped.");
    Ok(())
}

/// Registers a PAS subscription with every payer bound to a PAS playbook,
/// so decisions on pended requests arrive by notification on this listener
/// (`$inquire` on the poll schedule stays as reconciliation). A payer that
/// refuses is logged; its cases are still polled.
async fn subscribe(ctx: &Ctx) -> (crate::pas::notify::Receiver, Vec<Subscription>) {
    let mut receiver = crate::pas::notify::Receiver::new(ctx.ledger.clone());
    let mut subscriptions = Vec::new();
    let loaded = ctx.loaded.read().await.clone();
    let settings = &loaded.settings;
    for practice in settings.practices.iter().filter(|p| p.enabled) {
        for (key, binding) in &practice.payers {
            let Some(pb) = loaded.engine.playbook(&binding.playbook) else {
                continue;
            };
            if pb.api != Some(crate::playbook::ApiKind::Pas) {
                continue;
            }
            let client = match loaded.engine.pas_client(practice, binding, pb, key).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(practice = %practice.id, payer = %key, error = %e, "No PAS client; no subscription.");
                    continue;
                }
            };
            let endpoint = format!("{}/pas/notify/{}", settings.http_public_url, practice.id);
            let insurer = binding.account.get("payer_name").cloned();
            match crate::pas::notify::register(
                client.clone(),
                practice.clone(),
                &endpoint,
                settings.data_dir.clone(),
                insurer,
            )
            .await
            {
                Ok((id, hook)) => {
                    receiver.add(hook);
                    subscriptions.push(Subscription { client, id });
                }
                Err(e) => tracing::warn!(
                    practice = %practice.id, payer = %key, error = %e,
                    "The payer refused the PAS subscription; its cases are polled instead."
                ),
            }
        }
    }
    (receiver, subscriptions)
}

/// A payer subscription this daemon registered, deleted when it stops.
struct Subscription {
    client: Arc<crate::pas::PasClient>,
    id: String,
}

async fn unsubscribe(subscriptions: Vec<Subscription>) {
    for s in subscriptions {
        match s.client.unsubscribe(&s.id).await {
            Ok(()) => tracing::info!(subscription = %s.id, "PAS subscription deleted."),
            Err(e) => tracing::warn!(subscription = %s.id, error = %e, "Cannot delete the PAS subscription."),
        }
    }
}

async fn reload_config(ctx: &Ctx, path: &Path) {
    sd::notify("RELOADING=1");
    let result = load_all(path).and_then(|(s, p)| Loaded::new(s, p, &ctx.ledger, &ctx.queue, &ctx.mail_wake));
    match result {
        Ok(new) => {
            ctx.ledger.set_escalation_hook(new.escalator.clone());
            let old = std::mem::replace(&mut *ctx.loaded.write().await, Arc::new(new));
            tracing::info!("Configuration reloaded.");
            // The old engine's browsers close once its last job is done.
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
                while Arc::strong_count(&old) > 1 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                old.engine.shutdown().await;
            });
        }
        Err(e) => tracing::error!(error = %e, "Reload refused; the running configuration stays."),
    }
    sd::notify("READY=1");
}

async fn requeue(ctx: &Ctx) {
    match ctx.queue.requeue_expired(Utc::now()).await {
        Ok(expired) if !expired.is_empty() => {
            tracing::info!(jobs = expired.len(), "Jobs whose lease ran out were queued again.");
            ctx.wake.notify_waiters();
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "Cannot re-queue expired jobs."),
    }
}

async fn scheduler_loop(ctx: Arc<Ctx>) {
    let watchdog = sd::watchdog_interval();
    let mut last_ping = Instant::now();
    loop {
        let loaded = ctx.loaded.read().await.clone();
        let now = Utc::now();
        match loaded.scheduler.tick(now).await {
            Ok(reports) => {
                if !reports.is_empty() {
                    ctx.wake.notify_waiters();
                }
            }
            Err(e) => tracing::error!(error = %e, "Scheduler tick failed."),
        }
        requeue(&ctx).await;
        if let Some(every) = watchdog {
            if last_ping.elapsed() >= every {
                sd::notify("WATCHDOG=1");
                last_ping = Instant::now();
            }
        }
        let until_next = loaded
            .scheduler
            .next_wake(now)
            .and_then(|t| (t - Utc::now()).to_std().ok())
            .unwrap_or(IDLE)
            .min(IDLE);
        drop(loaded);
        tokio::select! {
            () = ctx.stop.cancelled() => return,
            () = tokio::time::sleep(until_next) => {}
        }
    }
}

async fn worker(ctx: Arc<Ctx>, n: u32) {
    let owner = format!("{}-w{n}", ctx.owner);
    while !ctx.stop.is_cancelled() {
        let loaded = ctx.loaded.read().await.clone();
        let now = Utc::now();
        let skip_payers = ctx
            .limits
            .lock()
            .expect("limits lock")
            .blocked(loaded.payers.iter().map(String::as_str), now);
        let leased = ctx.queue.lease(&owner, LEASE, &LeaseFilter { skip_payers }, now).await;
        match leased {
            Ok(Some(job)) => run_job(&ctx, &loaded, job).await,
            Ok(None) => {
                drop(loaded);
                tokio::select! {
                    () = ctx.stop.cancelled() => return,
                    () = ctx.wake.notified() => {}
                    () = tokio::time::sleep(IDLE) => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot lease a job.");
                tokio::select! {
                    () = ctx.stop.cancelled() => return,
                    () = tokio::time::sleep(IDLE) => {}
                }
            }
        }
    }
}

/// What a job's runs added up to.
#[derive(Default)]
struct JobResult {
    runs: usize,
    /// A failure worth retrying the job for (portal down, timeout).
    retry: Option<String>,
    /// A failure that says the portal misbehaves (for the circuit breaker).
    portal_failure: Option<String>,
    /// Shutdown came before every case ran: give the job back unrun.
    interrupted: bool,
}

async fn run_job(ctx: &Ctx, loaded: &Loaded, job: LeasedJob) {
    let payer = job.payer.clone().unwrap_or_default();
    let started = if payer.is_empty() {
        None
    } else {
        let admitted = ctx.limits.lock().expect("limits lock").try_start(&payer, Utc::now());
        match admitted {
            Ok(s) => Some(s),
            Err(blocked) => {
                let wait = match blocked {
                    Blocked::RateLimited { retry_in } => chrono::Duration::from_std(retry_in).unwrap_or_default(),
                    Blocked::BreakerOpen { until } => until - Utc::now(),
                    _ => chrono::Duration::seconds(5),
                };
                tracing::info!(job_id = job.id, payer, ?blocked, "Payer limit reached; job given back.");
                let now = Utc::now();
                if let Err(e) = ctx.queue.release(&job.lease, now + wait, now).await {
                    tracing::warn!(job_id = job.id, error = %e, "Cannot give the job back.");
                }
                return;
            }
        }
    };
    let lease = Arc::new(tokio::sync::Mutex::new(job.lease.clone()));
    let renewing = CancellationToken::new();
    let renewer = {
        let (queue, lease, renewing) = (ctx.queue.clone(), lease.clone(), renewing.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = renewing.cancelled() => return,
                    () = tokio::time::sleep(LEASE / 3) => {}
                }
                let current = lease.lock().await.clone();
                match queue.renew(&current, LEASE, Utc::now()).await {
                    Ok(new) => *lease.lock().await = new,
                    Err(e) => {
                        tracing::warn!(job_id = current.job_id, error = %e, "Lease renewal failed.");
                        return;
                    }
                }
            }
        })
    };
    let outcome = tokio::select! {
        r = execute(ctx, loaded, &job) => Some(r),
        () = ctx.abandon.cancelled() => None,
    };
    renewing.cancel();
    let _ = renewer.await;
    let lease = lease.lock().await.clone();
    let now = Utc::now();
    let kind = job.kind.as_str();
    match outcome {
        None => {
            tracing::warn!(
                job_id = job.id,
                kind,
                "Job abandoned at shutdown; released for the next start."
            );
            let _ = ctx.queue.release(&lease, now, now).await;
        }
        Some(Ok(result)) => {
            let end = match &result.portal_failure {
                Some(reason) => RunEnd::PortalFailure(reason.clone()),
                None => RunEnd::Success,
            };
            if let Some(s) = started {
                let alert = ctx.limits.lock().expect("limits lock").finish(s, &end, now);
                if let Some(alert) = alert {
                    tracing::warn!(payer, ?alert, "Automation alert.");
                    let opened = match &alert.kind {
                        crate::limits::AlertKind::Recovered => None,
                        _ => Some(alert.to_string()),
                    };
                    if let Err(e) = loaded
                        .escalator
                        .payer_alert(&ctx.ledger, &payer, opened.as_deref())
                        .await
                    {
                        tracing::error!(payer, error = %e, "Cannot record the automation alert as an escalation.");
                    }
                }
            }
            if result.interrupted {
                tracing::info!(
                    job_id = job.id,
                    kind,
                    "Job interrupted by shutdown; released for the next start."
                );
                if let Err(e) = ctx.queue.release(&lease, now, now).await {
                    tracing::warn!(job_id = job.id, error = %e, "Cannot give the job back.");
                }
                return;
            }
            match result.retry {
                None => {
                    ctx.metrics.job(kind, &payer, "ok");
                    if let Err(e) = ctx.queue.complete(&lease, now).await {
                        tracing::warn!(job_id = job.id, error = %e, "Cannot complete the job.");
                    }
                    tracing::info!(job_id = job.id, kind, payer, practice = %job.practice, runs = result.runs, "Job done.");
                }
                Some(reason) => {
                    ctx.metrics.job(kind, &payer, "retry");
                    match ctx.queue.fail(&lease, &Failure::retry(reason.clone()), now).await {
                        Ok(o) => {
                            tracing::warn!(job_id = job.id, kind, payer, reason, outcome = ?o, "Job failed; it will be retried.")
                        }
                        Err(e) => tracing::warn!(job_id = job.id, error = %e, "Cannot record the job's failure."),
                    }
                }
            }
        }
        Some(Err(reason)) => {
            if let Some(s) = started {
                ctx.limits
                    .lock()
                    .expect("limits lock")
                    .finish(s, &RunEnd::OtherFailure, now);
            }
            ctx.metrics.job(kind, &payer, "failed");
            tracing::error!(job_id = job.id, kind, payer, reason, "Job failed.");
            let _ = ctx.queue.fail(&lease, &Failure::fatal(reason), now).await;
        }
    }
}

/// The playbook action a job runs on each case.
fn action_of(job: Job) -> Option<Action> {
    match job {
        Job::Submit => Some(Action::Submit),
        Job::Poll => Some(Action::PollStatus),
        Job::Letters => Some(Action::DownloadLetter),
        Job::Escalations | Job::Digest => None,
    }
}

/// Whether an action applies to a case now.
pub async fn applies(ledger: &Ledger, action: Action, c: &CaseRecord) -> Result<bool, StoreError> {
    Ok(match action {
        Action::Submit => matches!(c.status, CaseStatus::Ready | CaseStatus::Submitting),
        Action::PollStatus | Action::PollWorklist => {
            c.payer_ref.is_some()
                && (matches!(c.status, CaseStatus::Pending | CaseStatus::PendedForInfo) || decision_incomplete(c))
        }
        Action::DownloadLetter => {
            c.payer_ref.is_some()
                && matches!(
                    c.status,
                    CaseStatus::Approved | CaseStatus::PartiallyApproved | CaseStatus::Denied
                )
                && ledger.letters(c.id).await?.is_empty()
        }
        Action::Login | Action::FindExisting => false,
    })
}

/// A decision read from a page that showed only the status (a
/// confirmation page, a worklist row): its details are still to be read.
fn decision_incomplete(c: &CaseRecord) -> bool {
    match (c.status, &c.decision) {
        (CaseStatus::Approved | CaseStatus::PartiallyApproved, Some(d)) => d.auth_number.is_none() || d.valid.is_none(),
        (CaseStatus::Denied, Some(d)) => d.denial.is_none(),
        (CaseStatus::Approved | CaseStatus::PartiallyApproved | CaseStatus::Denied, None) => true,
        _ => false,
    }
}

async fn execute(ctx: &Ctx, loaded: &Loaded, job: &LeasedJob) -> Result<JobResult, String> {
    let Some(action) = action_of(job.kind) else {
        return escalation_job(ctx, loaded, job).await;
    };
    let payer = job.payer.clone().ok_or("a per-payer job without a payer")?;
    let filter = CaseFilter {
        practice: Some(job.practice.clone()),
        payer: Some(payer.clone()),
        status: None,
    };
    let mut cases = Vec::new();
    for c in ctx.ledger.list(&filter).await.map_err(|e| e.to_string())? {
        if applies(&ctx.ledger, action, &c).await.map_err(|e| e.to_string())? {
            cases.push(c);
        }
    }
    let actor = Actor::job(job.kind.as_str(), job.id);
    let mut result = JobResult::default();
    let engine = &loaded.engine;
    let playbook_id = loaded
        .settings
        .practice(&job.practice)
        .and_then(|p| p.payers.get(&payer))
        .map(|b| b.playbook.clone())
        .unwrap_or_default();
    // A payer whose playbook has no letters (an API such as PAS sends none)
    // has nothing to fetch.
    if action == Action::DownloadLetter
        && engine
            .playbook(&playbook_id)
            .is_some_and(|p| !p.actions.contains_key(&Action::DownloadLetter))
    {
        return Ok(result);
    }
    let worklist = action == Action::PollStatus
        && cases.len() > 1
        && engine
            .playbook(&playbook_id)
            .is_some_and(|p| p.actions.contains_key(&Action::PollWorklist));
    if worklist {
        // One pass over the worklist reads every case's status; decided
        // cases are then read one by one for their details (dates, reason).
        run_one(
            ctx,
            engine,
            Action::PollWorklist,
            cases[0].id,
            &payer,
            &actor,
            &mut result,
        )
        .await;
        let mut decided = Vec::new();
        for c in &cases {
            let now = ctx.ledger.get(c.id).await.map_err(|e| e.to_string())?;
            if matches!(
                now.status,
                CaseStatus::Approved | CaseStatus::PartiallyApproved | CaseStatus::Denied
            ) {
                decided.push(now);
            }
        }
        cases = decided;
    }
    for c in cases {
        if ctx.stop.is_cancelled() && action == Action::Submit {
            // Shutting down: do not start new submissions.
            result
                .retry
                .get_or_insert_with(|| "stopped before all cases ran".into());
            break;
        }
        run_one(ctx, engine, action, c.id, &payer, &actor, &mut result).await;
    }
    Ok(result)
}

async fn run_one(
    ctx: &Ctx,
    engine: &Engine,
    action: Action,
    case_id: i64,
    payer: &str,
    actor: &Actor,
    result: &mut JobResult,
) {
    let t0 = Instant::now();
    let report = engine.run(action, case_id, actor).await;
    ctx.metrics.run(payer, action.as_str(), t0.elapsed().as_secs_f64());
    result.runs += 1;
    match report {
        Err(e) => {
            tracing::warn!(case_id, action = action.as_str(), error = %e, "Action not run.");
        }
        Ok(r) => match r.failure {
            None => {}
            Some(f) => {
                let reason = format!("case {case_id}: {f}");
                match f.kind {
                    FailureKind::Retryable | FailureKind::SessionLost | FailureKind::Fatal => {
                        result.portal_failure.get_or_insert(reason.clone());
                        result.retry.get_or_insert(reason);
                    }
                    // The case went to a person; the job itself is done.
                    FailureKind::PortalChanged => {
                        result.portal_failure.get_or_insert(reason);
                    }
                    FailureKind::NeedsHuman => {}
                }
            }
        },
    }
}

/// The practice-wide jobs: the escalation rules' scan with due reminders,
/// and the supervisors' digest.
async fn escalation_job(ctx: &Ctx, loaded: &Loaded, job: &LeasedJob) -> Result<JobResult, String> {
    let escalator = &loaded.escalator;
    match job.kind {
        Job::Escalations => {
            let opened = escalator
                .scan(&ctx.ledger, &job.practice)
                .await
                .map_err(|e| e.to_string())?;
            let steps = escalator.advance(&ctx.ledger).await.map_err(|e| e.to_string())?;
            // Sent mail's bodies are kept as long as failure artifacts.
            let keep = chrono::Duration::days(loaded.settings.artifacts_retention_days.into());
            let pruned = ctx
                .ledger
                .prune_sent_mail(ctx.ledger.now() - keep)
                .await
                .map_err(|e| e.to_string())?;
            if pruned > 0 {
                tracing::info!(mails = pruned, "Bodies of old sent mail pruned.");
            }
            tracing::info!(job_id = job.id, practice = %job.practice, opened, steps, "Escalation rules evaluated.");
        }
        Job::Digest => {
            let queued = escalator
                .digest(&ctx.ledger, &job.practice, &format!("job{}", job.id))
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(job_id = job.id, practice = %job.practice, mails = queued, "Digest queued.");
        }
        other => return Err(format!("{other} is not a practice-wide job")),
    }
    Ok(JobResult::default())
}

/// Delivers the outbox: whatever is due, then waits for new mail or the
/// next retry. Mail still waiting at shutdown goes at the next start.
async fn mail_sender(ctx: Arc<Ctx>) {
    loop {
        let mailer = ctx.loaded.read().await.mailer.clone();
        let next = match crate::escalate::send_due(&ctx.ledger, &mailer).await {
            Ok(round) => {
                if round.sent > 0 {
                    ctx.metrics.mail("sent", round.sent);
                }
                if round.failed > 0 {
                    ctx.metrics.mail("failed", round.failed);
                }
                match round.retry_at {
                    Some(t) => Some(t),
                    None => ctx.ledger.next_mail_due().await.ok().flatten(),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "The mail sender cannot read the outbox.");
                None
            }
        };
        let wait = next
            .map(|t| (t - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(MAIL_POLL)
            .clamp(Duration::from_millis(100), MAIL_POLL);
        tokio::select! {
            () = ctx.stop.cancelled() => return,
            () = ctx.mail_wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
