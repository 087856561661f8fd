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
mod intake;
pub mod sd;
pub mod sessions;
mod worker;

use std::collections::HashMap;
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
use crate::engine::Engine;
use crate::escalate::Escalator;
use crate::ids::{PayerKey, PlaybookId};
use crate::limits::{LimitSettings, PayerLimits};
use crate::mail::Mailer;
use crate::playbook::{self, Action, Playbook};
use crate::queue::{LeaseFilter, LeasedJob, Queue, Scheduler};
use crate::store::{Ledger, StoreError};

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
/// How often the requirement rules look for `new` cases that arrived by
/// another route (another process's import, an API): only cases numbered
/// above the last pass's, on the status index.
const RULES_EVERY: Duration = Duration::from_secs(60);

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
/// A practice whose file, secrets or payer bindings do not check is left
/// out alone (returned with its problems) so that the others run; a problem
/// in `precert.toml` or a playbook refuses the whole configuration.
pub fn load_all(path: &Path) -> Result<(Settings, Vec<Playbook>, Vec<config::DisabledPractice>), String> {
    let (mut settings, mut disabled) = config::load_isolated(path, Secrets::Resolve).map_err(|e| e.to_string())?;
    let (playbooks, errors) = playbook::load_dir(&settings.playbooks_dir);
    if !errors.is_empty() {
        let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let n = problems.len();
        return Err(format!(
            "{n} problem{}:\n  {}",
            if n == 1 { "" } else { "s" },
            problems.join("\n  ")
        ));
    }
    for e in playbook::check_bindings(&settings, &playbooks) {
        let Some(i) = settings.practices.iter().position(|p| p.source == e.file) else {
            continue;
        };
        let practice = settings.practices.remove(i);
        disabled.push(config::DisabledPractice {
            id: practice.id.clone(),
            file: e.file.clone(),
            problems: vec![e],
            operations: practice.contacts.operations.clone(),
        });
    }
    if settings.practices.is_empty() {
        let why: Vec<String> = disabled
            .iter()
            .flat_map(|d| d.problems.iter().map(ToString::to_string))
            .collect();
        return Err(format!("no practice can run:\n  {}", why.join("\n  ")));
    }
    Ok((settings, playbooks, disabled))
}

/// Says which practices are left out and why (the log, `/metrics`).
fn report_disabled(ctx_disabled: &Mutex<Vec<String>>, disabled: &[config::DisabledPractice]) {
    for d in disabled {
        let problems: Vec<String> = d.problems.iter().map(ToString::to_string).collect();
        tracing::error!(
            practice = %d.id,
            file = %d.file.display(),
            problems = %problems.join("; "),
            "Practice disabled: its configuration does not check. The other practices run; fix it and reload."
        );
    }
    *ctx_disabled.lock().expect("disabled lock") = disabled.iter().map(|d| d.id.clone()).collect();
}

/// Tells operations of each disabled practice (one escalation each) and
/// resolves the escalation of each practice that runs again.
async fn escalate_disabled(ctx: &Ctx, disabled: &[config::DisabledPractice]) {
    let loaded = ctx.loaded.read().await.clone();
    for d in disabled {
        match loaded.escalator.practice_disabled(&ctx.ledger, d).await {
            Ok(Some(id)) => {
                tracing::info!(practice = %d.id, escalation = id, "Operations told of the disabled practice.")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(practice = %d.id, error = %e, "Cannot record the disabled practice as an escalation.")
            }
        }
    }
    for p in &loaded.settings.practices {
        match loaded.escalator.practice_enabled(&ctx.ledger, &p.id).await {
            Ok(true) => tracing::info!(practice = %p.id, "Practice enabled again: its configuration checks."),
            Ok(false) => {}
            Err(e) => tracing::error!(practice = %p.id, error = %e, "Cannot resolve the disabled-practice escalation."),
        }
    }
}

/// Each payer's limits: the configured pacing, its playbook's session cap.
fn payer_limits(settings: &Settings, playbooks: &[Playbook]) -> PayerLimits {
    let mut limits = PayerLimits::new(settings.limits);
    for p in playbooks {
        limits.set(
            &PlaybookId::from(p.id.as_str()),
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
    payers: Vec<PlaybookId>,
    escalator: Arc<Escalator>,
    mailer: Arc<Mailer>,
    /// The payers' requirement rules, read with the playbooks.
    rules: Arc<crate::requirements::RuleBook>,
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
        link_key: &crate::console::links::LinkKey,
    ) -> Result<Loaded, String> {
        let scheduler = Scheduler::new(queue.clone(), &settings.practices).map_err(|e| e.to_string())?;
        // A rules file that does not check refuses the configuration, as a
        // playbook does: deciding by half a payer's list would be wrong.
        let (rules, errors) = crate::requirements::RuleBook::load_dir(&settings.playbooks_dir);
        if !errors.is_empty() {
            let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(format!("requirement rules: {}", problems.join("\n  ")));
        }
        let payers = playbooks.iter().map(|p| PlaybookId::from(p.id.as_str())).collect();
        let mailer = Arc::new(Mailer::new(&settings.mail).map_err(|e| format!("mail: {e}"))?);
        let settings = Arc::new(settings);
        let escalator =
            Arc::new(Escalator::new(settings.clone(), &playbooks, mail_wake.clone()).with_link_key(link_key.clone()));
        let engine = Arc::new(Engine::new(settings.clone(), ledger.clone(), playbooks));
        Ok(Loaded {
            settings,
            engine,
            scheduler,
            payers,
            escalator,
            mailer,
            rules: Arc::new(rules),
        })
    }
}

struct Ctx {
    ledger: Ledger,
    queue: Arc<Queue>,
    loaded: RwLock<Arc<Loaded>>,
    /// Shared with the console, whose payers page shows the breakers.
    limits: Arc<Mutex<PayerLimits>>,
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
    /// Workers wanted now (`webdriver.max_sessions`; a reload may change
    /// it): a worker whose number is not below it stops.
    workers: std::sync::atomic::AtomicU32,
    /// Runs the workers, so a reload can add some.
    tracker: TaskTracker,
    /// Practices left out because their configuration does not check.
    pub(crate) disabled: Mutex<Vec<String>>,
    /// Serves the payers' PAS notifications.
    notify: Arc<crate::pas::notify::Receiver>,
    /// The PAS bindings of this daemon's configuration, by notification
    /// route (the subscriptions themselves are the ledger's).
    subscriptions: tokio::sync::Mutex<HashMap<String, Subscription>>,
    /// Signs acknowledgement links in mail (the ledger's key).
    link_key: crate::console::links::LinkKey,
    /// A reload happened: the requirement rules read every `new` case again.
    rules_reloaded: Notify,
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
    let (settings, playbooks, disabled) = load_all(&config_path).map_err(DaemonError::Config)?;
    crate::store::private_dir(&settings.data_dir)
        .map_err(|e| DaemonError::Config(format!("cannot create {}: {e}", settings.data_dir.display())))?;
    let ledger = Ledger::open(&settings.database_url).await?;
    let queue = Arc::new(Queue::new(ledger.clone()));
    let listen = settings.http_listen;
    let workers = settings.webdriver.max_sessions.max(1);
    let limits = payer_limits(&settings, &playbooks);
    let mail_wake = Arc::new(Notify::new());
    // Signs the acknowledgement links in escalation mail.
    let link_key = crate::console::links::LinkKey::of(&ledger).await?;
    let loaded =
        Loaded::new(settings, playbooks, &ledger, &queue, &mail_wake, &link_key).map_err(DaemonError::Config)?;
    ledger.set_escalation_hook(loaded.escalator.clone());
    let ctx = Arc::new(Ctx {
        ledger: ledger.clone(),
        queue: queue.clone(),
        loaded: RwLock::new(Arc::new(loaded)),
        limits: Arc::new(Mutex::new(limits)),
        metrics: Arc::new(Metrics::default()),
        wake: Notify::new(),
        mail_wake,
        stop: stop.clone(),
        abandon: CancellationToken::new(),
        owner: format!("{}-{}", hostname(), std::process::id()),
        workers: std::sync::atomic::AtomicU32::new(workers),
        tracker: TaskTracker::new(),
        disabled: Mutex::new(Vec::new()),
        notify: Arc::new(crate::pas::notify::Receiver::new(ledger.clone())),
        subscriptions: tokio::sync::Mutex::new(HashMap::new()),
        link_key,
        rules_reloaded: Notify::new(),
    });
    report_disabled(&ctx.disabled, &disabled);
    escalate_disabled(&ctx, &disabled).await;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DaemonError::Listen { addr: listen, source })?;
    sync_subscriptions(&ctx, SyncPass::Configured).await;
    let app = http::router(http::HttpState { ctx: ctx.clone() }).merge(crate::pas::notify::router(ctx.notify.clone()));
    let tracker = ctx.tracker.clone();
    let http_stop = stop.clone();
    tracker.spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(http_stop.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP listener failed.");
        }
    });
    // The console, on its own listener. It keeps the settings it started
    // with (a reload does not reach it).
    let console_settings = ctx.loaded.read().await.settings.clone();
    let console = crate::console::serve_with(console_settings, ledger.clone(), stop.clone(), Some(ctx.limits.clone()))
        .await
        .map_err(|e| match e {
            crate::console::ConsoleError::Listen { addr, source } => DaemonError::Listen { addr, source },
            other => DaemonError::Config(other.to_string()),
        })?;
    tracing::info!(console = %console.addr, "Console listening.");
    tracker.spawn(async move {
        let _ = console.task.await;
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
    tracker.spawn(subscription_keeper(ctx.clone()));
    tracker.spawn(requirement_rules(ctx.clone()));
    intake::sync_webhook_targets(&ctx).await;
    tracker.spawn(intake::webhook_sender(ctx.clone()));
    tracker.spawn(intake::drop_folders(ctx.clone()));
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
    // The PAS subscriptions are the cluster's: they stay registered for the
    // other daemons, or for this one when it starts again.
    let loaded = ctx.loaded.read().await.clone();
    loaded.engine.shutdown().await;
    ledger.close().await;
    tracing::info!("Daemon stopped.");
    Ok(())
}

/// A PAS binding this daemon's configuration has: its client (to delete the
/// subscription should the binding go away) and what its subscription is
/// registered from.
struct Subscription {
    client: Arc<crate::pas::PasClient>,
    fingerprint: String,
}

/// How long a daemon may take to replace one subscription before another
/// may take the route over.
const SUBSCRIPTION_CLAIM: chrono::Duration = chrono::Duration::seconds(60);

/// How often the registrations that are missing (a payer refused, a daemon
/// died mid-registration) are tried again.
const SUBSCRIPTION_RETRY: Duration = Duration::from_secs(300);

/// The notification route of a practice's PAS binding.
fn notify_route(practice: &str, key: &str) -> String {
    format!("{practice}/{key}")
}

/// Why the subscriptions are brought in line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncPass {
    /// At start or after a reload: this daemon's configuration is the new
    /// one; a subscription registered from another is replaced.
    Configured,
    /// The periodic retry: only registrations that are missing are done (a
    /// daemon whose reload is still to come does not undo another's).
    Retry,
}

/// Brings the PAS subscriptions in line with the running configuration: one
/// per enabled practice's binding to a PAS playbook, **one for the cluster**
/// (the ledger's `pas_subscriptions` row names it and the daemon that
/// registers it), so decisions on pended requests arrive by notification
/// (`$inquire` on the poll schedule stays as reconciliation). Every daemon
/// serves every route and checks the payer's token against the row, so a
/// notification is accepted by whichever daemon receives it. Subscriptions
/// whose practice or binding changed are replaced, those of bindings that
/// went away are deleted at the payer; a payer that refuses is logged (its
/// cases are still polled) and asked again every [`SUBSCRIPTION_RETRY`].
/// Stopping a daemon leaves the cluster's subscriptions in place (another
/// daemon, or this one restarted, receives their notifications).
async fn sync_subscriptions(ctx: &Ctx, pass: SyncPass) {
    let loaded = ctx.loaded.read().await.clone();
    let settings = &loaded.settings;
    let mut wanted = std::collections::BTreeMap::new();
    for practice in settings.practices.iter().filter(|p| p.enabled) {
        for (key, binding) in &practice.payers {
            let Some(pb) = loaded.engine.playbook(&binding.playbook) else {
                continue;
            };
            if pb.api != Some(crate::playbook::ApiKind::Pas) {
                continue;
            }
            let route = notify_route(&practice.id, key);
            let endpoint = format!("{}/pas/notify/{route}", settings.http_public_url);
            // What the payer-side subscription depends on; secrets print
            // redacted, so a rotated secret alone keeps the subscription (the
            // client is rebuilt by the new engine).
            let fingerprint = crate::files::sha256_hex(
                format!(
                    "{}|{}|{binding:?}|{}|{endpoint}",
                    practice.id,
                    practice.npi.as_str(),
                    pb.base_url
                )
                .as_bytes(),
            );
            wanted.insert(route, (fingerprint, practice, key, binding, pb, endpoint));
        }
    }
    let mut known = ctx.subscriptions.lock().await;
    let now = Utc::now;
    // Bindings that went away: stop serving them, and delete their
    // subscription at the payer while it is still theirs. (One that changed
    // is replaced below: its claim finds the other fingerprint.)
    let gone: Vec<String> = known.keys().filter(|r| !wanted.contains_key(*r)).cloned().collect();
    for route in gone {
        let Some(old) = known.remove(&route) else { continue };
        ctx.notify.remove(&route);
        match ctx
            .ledger
            .claim_subscription_removal(&route, &old.fingerprint, &ctx.owner, SUBSCRIPTION_CLAIM, now())
            .await
        {
            Ok(crate::store::SubscriptionClaim::Taken { old: id }) => {
                if let Some(id) = id {
                    delete_subscription(&old.client, &id).await;
                }
                if let Err(e) = ctx.ledger.forget_subscription(&route, &ctx.owner).await {
                    tracing::error!(route = %route, error = %e, "Cannot forget the PAS subscription.");
                }
                tracing::info!(route = %route, "The payer binding went away: its PAS subscription is deleted.");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(route = %route, error = %e, "Cannot claim the PAS subscription to delete it."),
        }
    }
    for (route, (fingerprint, practice, key, binding, pb, endpoint)) in wanted {
        let client = match loaded.engine.pas_client(practice, binding, pb, key).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(practice = %practice.id, payer = %key, error = %e, "No PAS client; no subscription.");
                continue;
            }
        };
        // Every daemon serves the route (the token is checked against the
        // ledger's row, whoever registered it).
        ctx.notify.add(
            &route,
            crate::pas::notify::Hook {
                practice: practice.clone(),
                client: client.clone(),
                token: None,
                data_dir: settings.data_dir.clone(),
                insurer_name: binding.account.get("payer_name").cloned(),
            },
        );
        let previous = known.insert(
            route.clone(),
            Subscription {
                client: client.clone(),
                fingerprint: fingerprint.clone(),
            },
        );
        let claim = ctx
            .ledger
            .claim_subscription(
                &route,
                &fingerprint,
                pass == SyncPass::Configured,
                &ctx.owner,
                SUBSCRIPTION_CLAIM,
                now(),
            )
            .await;
        let old = match claim {
            Ok(crate::store::SubscriptionClaim::Taken { old }) => old,
            Ok(crate::store::SubscriptionClaim::Busy { holder }) => {
                tracing::debug!(route = %route, %holder, "Another daemon is registering this PAS subscription.");
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::error!(route = %route, error = %e, "Cannot claim the PAS subscription.");
                continue;
            }
        };
        if let Some(id) = old {
            tracing::info!(route = %route, "The practice or its payer binding changed: its PAS subscription is replaced.");
            let with = previous.as_ref().map_or(&client, |p| &p.client);
            delete_subscription(with, &id).await;
        }
        match crate::pas::notify::subscribe(&client, &endpoint, practice.npi.as_str()).await {
            Ok((id, token)) => {
                use secrecy::ExposeSecret;
                let sha = crate::files::sha256_hex(token.expose_secret().as_bytes());
                match ctx
                    .ledger
                    .complete_subscription(&route, &ctx.owner, &fingerprint, &id, &sha, now())
                    .await
                {
                    Ok(true) => {
                        tracing::info!(practice = %practice.id, payer = %key, subscription = %id, "PAS subscription registered.")
                    }
                    Ok(false) => {
                        tracing::warn!(route = %route, "Another daemon took this PAS subscription over meanwhile; the one just registered is deleted.");
                        delete_subscription(&client, &id).await;
                    }
                    Err(e) => {
                        tracing::error!(route = %route, error = %e, "Cannot record the PAS subscription; it is deleted at the payer.");
                        delete_subscription(&client, &id).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    practice = %practice.id, payer = %key, error = %e,
                    "The payer refused the PAS subscription; its cases are polled instead."
                );
                if let Err(e) = ctx.ledger.release_subscription(&route, &ctx.owner, now()).await {
                    tracing::error!(route = %route, error = %e, "Cannot release the PAS subscription claim.");
                }
            }
        }
    }
}

async fn delete_subscription(client: &crate::pas::PasClient, id: &str) {
    match client.unsubscribe(id).await {
        Ok(()) => tracing::info!(subscription = %id, "PAS subscription deleted."),
        Err(e) => tracing::warn!(subscription = %id, error = %e, "Cannot delete the PAS subscription."),
    }
}

/// Tries the missing PAS registrations again, every [`SUBSCRIPTION_RETRY`].
async fn subscription_keeper(ctx: Arc<Ctx>) {
    loop {
        tokio::select! {
            () = ctx.stop.cancelled() => return,
            () = tokio::time::sleep(SUBSCRIPTION_RETRY) => sync_subscriptions(&ctx, SyncPass::Retry).await,
        }
    }
}

async fn reload_config(ctx: &Arc<Ctx>, path: &Path) {
    sd::notify("RELOADING=1");
    let result = load_all(path).and_then(|(s, p, disabled)| {
        let limits = payer_limits(&s, &p);
        let workers = s.webdriver.max_sessions.max(1);
        Loaded::new(s, p, &ctx.ledger, &ctx.queue, &ctx.mail_wake, &ctx.link_key)
            .map(|l| (l, limits, workers, disabled))
    });
    match result {
        Ok((new, limits, workers, disabled)) => {
            report_disabled(&ctx.disabled, &disabled);
            // New pacing and caps apply to the next start; what runs now
            // keeps its slot and each breaker its state.
            ctx.limits.lock().expect("limits lock").reconfigure(limits);
            let before = ctx.workers.swap(workers, std::sync::atomic::Ordering::SeqCst);
            for n in before..workers {
                ctx.tracker.spawn(worker(ctx.clone(), n));
            }
            if workers != before {
                tracing::info!(before, workers, "Worker count changed.");
            }
            ctx.ledger.set_escalation_hook(new.escalator.clone());
            let old = std::mem::replace(&mut *ctx.loaded.write().await, Arc::new(new));
            sync_subscriptions(ctx, SyncPass::Configured).await;
            intake::sync_webhook_targets(ctx).await;
            escalate_disabled(ctx, &disabled).await;
            // The rules may have changed: every `new` case is read again.
            ctx.rules_reloaded.notify_one();
            tracing::info!("Configuration reloaded.");
            // The old engine's idle sessions close now (the new engine opens
            // its own, within webdriver.max_sessions), the rest of its
            // browsers once its last job is done.
            old.engine.close_all_idle().await;
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

/// Decides `new` cases by the requirement rules: every one at start and
/// after each reload (the rules may have changed), and every `RULES_EVERY`
/// those numbered above the last pass's (cases that arrived since, by any
/// route). Every `RULES_FULL_EVERY`th pass reads them all again: on
/// PostgreSQL a case numbered below the last one read can commit after it.
/// A case no rule covers stays `new`.
async fn requirement_rules(ctx: Arc<Ctx>) {
    const RULES_FULL_EVERY: u32 = 10;
    let mut seen: HashMap<String, i64> = HashMap::new();
    let mut full = true;
    let mut passes = 0u32;
    loop {
        passes += 1;
        if passes % RULES_FULL_EVERY == 0 {
            full = true;
        }
        let loaded = ctx.loaded.read().await.clone();
        if full {
            seen.clear();
        }
        for p in loaded.settings.practices.iter().filter(|p| p.enabled) {
            let after = seen.get(&p.id).copied();
            match crate::requirements::decide_new_cases(&ctx.ledger, &loaded.settings, &loaded.rules, &p.id, after)
                .await
            {
                Ok(r) => {
                    if let Some(last) = r.last_id {
                        seen.insert(p.id.clone(), last);
                    }
                    if r.decided() > 0 || (full && r.undecided > 0) {
                        tracing::info!(
                            practice = %p.id,
                            required = r.required,
                            not_required = r.not_required,
                            needs_decision = r.undecided,
                            "Requirement rules applied to new cases."
                        );
                    }
                }
                Err(e) => tracing::error!(practice = %p.id, error = %e, "Cannot apply the requirement rules."),
            }
        }
        drop(loaded);
        tokio::select! {
            () = ctx.stop.cancelled() => return,
            () = ctx.rules_reloaded.notified() => full = true,
            () = tokio::time::sleep(RULES_EVERY) => full = false,
        }
    }
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
                ctx.metrics.health.scheduler_ticked();
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
    worker_loop(ctx.clone(), n).await;
    ctx.metrics.health.worker_gone(n);
}

async fn worker_loop(ctx: Arc<Ctx>, n: u32) {
    let owner = format!("{}-w{n}", ctx.owner);
    while !ctx.stop.is_cancelled() {
        if n >= ctx.workers.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::info!(worker = n, "Worker stopped: fewer are configured now.");
            return;
        }
        ctx.metrics.health.worker_idle(n);
        let loaded = ctx.loaded.read().await.clone();
        let now = Utc::now();
        // Limits are the playbook's; jobs name a practice's binding (its
        // payer key), which the queue skips in that practice only.
        let blocked = ctx.limits.lock().expect("limits lock").blocked(&loaded.payers, now);
        let skip: Vec<(String, PayerKey)> = loaded
            .settings
            .practices
            .iter()
            .flat_map(|p| p.payers.iter().map(move |(key, b)| (p, key, b)))
            .filter(|(_, _, b)| blocked.iter().any(|pb| pb.as_str() == b.playbook))
            .map(|(p, key, _)| (p.id.clone(), PayerKey::from(key.as_str())))
            .collect();
        let leased = ctx.queue.lease(&owner, LEASE, &LeaseFilter { skip }, now).await;
        match leased {
            Ok(Some(job)) => {
                ctx.metrics
                    .health
                    .worker_busy(n, &format!("{}#{}", job.kind.as_str(), job.id));
                worker::run_job(&ctx, &loaded, job).await
            }
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

/// The practice-wide jobs: the escalation rules' scan with due reminders,
/// and the supervisors' digest.
async fn escalation_job(ctx: &Ctx, loaded: &Loaded, job: &LeasedJob) -> Result<(), String> {
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
    Ok(())
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
