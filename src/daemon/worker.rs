//! One leased job, start to end: admitted by the payer's limits (keyed by
//! playbook), its runs, their [`Disposition`]s folded into exactly one queue
//! call (complete, fail with its wait, dead, or release unrun) and exactly
//! one `PayerLimits::finish`.
//!
//! Who decides what: the engine says what a run means (`Disposition`); this
//! module only folds and applies. A shutdown that cuts a job gives it back
//! unrun with no attempt used; a payer's `Retry-After` becomes the job's
//! earliest next try; setup failures (no browser, no driver) fail the job
//! and count for the breaker, which raises the operations escalation.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::sessions::{SessionSlots, BROWSER_SLOTS, SLOT_TTL};
use super::{action_of, escalation_job, Ctx, Loaded, LEASE};
use crate::case::{CaseRecord, CaseStatus};
use crate::engine::{Disposition, Engine, FailureKind};
use crate::ids::{PayerKey, PlaybookId};
use crate::limits::{AlertKind, Blocked, RunEnd};
use crate::playbook::Action;
use crate::queue::{FailOutcome, Failure, LeasedJob};
use crate::store::{Actor, SlotLease, StoreError, Work};

/// What a job's runs added up to.
struct Fold {
    runs: usize,
    disposition: Disposition,
    /// The portal changed under a run: for the breaker, though the job is
    /// done (the case went to a person).
    portal_changed: Option<String>,
}

impl Fold {
    fn new() -> Fold {
        Fold {
            runs: 0,
            disposition: Disposition::Done,
            portal_changed: None,
        }
    }

    fn add(&mut self, d: Disposition) {
        self.disposition = std::mem::replace(&mut self.disposition, Disposition::Done).and(d);
    }

    /// How the payer's limits hear of the job.
    fn run_end(&self) -> RunEnd {
        match &self.disposition {
            Disposition::Retry {
                reason,
                portal_fault: true,
                ..
            } => RunEnd::PortalFailure(reason.clone()),
            _ => match &self.portal_changed {
                Some(reason) => RunEnd::PortalFailure(reason.clone()),
                None if matches!(self.disposition, Disposition::Done) => RunEnd::Success,
                None => RunEnd::OtherFailure,
            },
        }
    }
}

/// Gives session slots back (one that cannot be frees itself when it runs
/// out).
async fn release_slots(ctx: &Ctx, slots: &[SlotLease]) {
    super::sessions::release(&ctx.ledger, slots).await;
}

/// The playbook a job's payer key is bound to in its practice.
fn playbook_of(loaded: &Loaded, job: &LeasedJob) -> Option<PlaybookId> {
    let payer = job.payer.as_deref()?;
    loaded
        .settings
        .practice(&job.practice)
        .and_then(|p| p.payers.get(payer))
        .map(|b| PlaybookId::from(b.playbook.as_str()))
}

/// How long a job of a disabled practice waits before it is looked at
/// again (a reload that fixes the practice finds it queued).
const DISABLED_WAIT: chrono::Duration = chrono::Duration::minutes(5);

pub(super) async fn run_job(ctx: &Ctx, loaded: &Loaded, job: LeasedJob) {
    // Absent (not empty) in logs and metrics for practice-wide jobs.
    let payer: Option<&PayerKey> = job.payer.as_ref();
    let payer_field = payer.map(PayerKey::as_str);
    if ctx.disabled.lock().expect("disabled lock").contains(&job.practice) {
        // Its configuration does not check: the job waits, no attempt used.
        let now = Utc::now();
        if let Err(e) = ctx.queue.release(&job.lease, now + DISABLED_WAIT, now).await {
            tracing::warn!(job_id = job.id, error = %e, "Cannot give the job back.");
        }
        return;
    }
    let playbook = playbook_of(loaded, &job);
    if playbook.is_some() && !has_work(ctx, loaded, &job).await {
        // Nothing to do for this payer: no start of its limits is spent.
        let now = Utc::now();
        ctx.metrics
            .job(job.kind.as_str(), payer, metric_result(&Disposition::Done));
        if let Err(e) = ctx.queue.complete(&job.lease, now).await {
            tracing::warn!(job_id = job.id, error = %e, "Cannot record the job's end.");
        }
        return;
    }
    let started = match &playbook {
        None => None,
        Some(pb) => {
            let admitted = ctx.limits.lock().expect("limits lock").try_start(pb, Utc::now());
            match admitted {
                Ok(s) => Some(s),
                Err(blocked) => {
                    // Looked at again within half a minute at most: a reload
                    // may have changed the limits meanwhile.
                    let wait = match blocked {
                        Blocked::RateLimited { retry_in } => chrono::Duration::from_std(retry_in).unwrap_or_default(),
                        Blocked::BreakerOpen { until } => until - Utc::now(),
                        _ => chrono::Duration::seconds(5),
                    }
                    .min(chrono::Duration::seconds(30));
                    tracing::info!(job_id = job.id, payer = payer_field, playbook = %pb, blocked = %blocked, "Payer limit reached; job given back.");
                    let now = Utc::now();
                    if let Err(e) = ctx.queue.release(&job.lease, now + wait, now).await {
                        tracing::warn!(job_id = job.id, error = %e, "Cannot give the job back.");
                    }
                    return;
                }
            }
        }
    };
    // The cluster-wide half of the session cap: a slot in the ledger, so
    // daemons sharing a database never exceed the playbook's sessions (and,
    // for a browser playbook, the grid's `webdriver.cluster_sessions`).
    let browser_cap = playbook
        .as_ref()
        .filter(|pb| loaded.engine.playbook(pb).is_some_and(|p| p.api.is_none()))
        .and(loaded.settings.webdriver.cluster_sessions);
    let mut slots: Vec<SlotLease> = Vec::new();
    let mut browser_slot_held = false;
    if let (Some(_), Some(pb)) = (&started, &playbook) {
        let cap = ctx.limits.lock().expect("limits lock").settings(pb).max_concurrent;
        let wanted = std::iter::once((pb.as_str(), cap)).chain(browser_cap.map(|c| (BROWSER_SLOTS, c)));
        for (name, cap) in wanted {
            let now = Utc::now();
            match ctx.ledger.claim_payer_slot(name, cap, &ctx.owner, SLOT_TTL, now).await {
                Ok(Some(s)) => {
                    browser_slot_held |= name == BROWSER_SLOTS;
                    slots.push(s);
                }
                other => {
                    match (&other, name == BROWSER_SLOTS) {
                        (Err(e), _) => {
                            tracing::warn!(job_id = job.id, slots = name, error = %e, "Cannot claim a session slot.")
                        }
                        (Ok(_), false) => tracing::info!(job_id = job.id, payer = payer_field, playbook = %pb, cap,
                            "Every session slot of the payer is in use across the cluster; job given back."),
                        (Ok(_), true) => tracing::info!(
                            job_id = job.id,
                            payer = payer_field,
                            cap,
                            "Every browser session of the cluster is in use; job given back."
                        ),
                    }
                    release_slots(ctx, &slots).await;
                    if let Some(s) = started {
                        ctx.limits.lock().expect("limits lock").cancel(s, now);
                    }
                    if let Err(e) = ctx
                        .queue
                        .release(&job.lease, now + chrono::Duration::seconds(5), now)
                        .await
                    {
                        tracing::warn!(job_id = job.id, error = %e, "Cannot give the job back.");
                    }
                    return;
                }
            }
        }
    }
    // A per-case poll runs its cases over the payer's sessions at once
    // (the playbook's `max_sessions`): one more session for each that the
    // payer's limits and the cluster's slots have room for now (it never
    // waits for one; a busy payer polls with fewer).
    let mut widened = Vec::new();
    if let (Some(_), Some(pb), Some(Action::PollStatus)) = (&started, &playbook, action_of(job.kind)) {
        let max = loaded.engine.playbook(pb).map_or(1, |p| p.max_sessions);
        let cap = ctx.limits.lock().expect("limits lock").settings(pb).max_concurrent;
        {
            let mut limits = ctx.limits.lock().expect("limits lock");
            for _ in 1..max.min(cap) {
                match limits.try_widen(pb, Utc::now()) {
                    Some(w) => widened.push(w),
                    None => break,
                }
            }
        }
        let extra = SessionSlots::claim(
            &ctx.ledger,
            &ctx.owner,
            pb.as_str(),
            cap,
            browser_cap,
            widened.len() as u32,
        )
        .await;
        let mut limits = ctx.limits.lock().expect("limits lock");
        while widened.len() > extra.sessions() {
            limits.narrow(widened.pop().expect("more than claimed"));
        }
        slots.extend(extra.into_leases());
    }
    let sessions = 1 + widened.len();
    let lease = Arc::new(tokio::sync::Mutex::new(job.lease.clone()));
    let renewing = CancellationToken::new();
    let renewer = {
        let (queue, lease, renewing) = (ctx.queue.clone(), lease.clone(), renewing.clone());
        let (ledger, slots) = (ctx.ledger.clone(), slots.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = renewing.cancelled() => return,
                    () = tokio::time::sleep(LEASE / 3) => {}
                }
                super::sessions::renew(&ledger, &slots).await;
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
    let fold = tokio::select! {
        f = execute(ctx, loaded, &job, sessions) => f,
        () = ctx.abandon.cancelled() => {
            let mut f = Fold::new();
            f.add(Disposition::Release);
            f
        }
    };
    renewing.cancel();
    let _ = renewer.await;
    // A cluster-wide browser slot is given back with no session left open
    // on the grid; `webdriver.idle_close_secs = 0` keeps none between jobs.
    let close_sessions = browser_slot_held || loaded.settings.webdriver.idle_close.is_zero();
    if let (true, Some(pb)) = (close_sessions, &playbook) {
        loaded.engine.close_idle(pb, &job.practice).await;
    }
    release_slots(ctx, &slots).await;
    for w in widened {
        ctx.limits.lock().expect("limits lock").narrow(w);
    }
    let lease = lease.lock().await.clone();
    let now = Utc::now();
    let kind = job.kind.as_str();

    if let (Some(s), Some(pb)) = (started, &playbook) {
        let end = match fold.disposition {
            // A run cut by shutdown says nothing about the payer.
            Disposition::Release => RunEnd::OtherFailure,
            _ => fold.run_end(),
        };
        let alert = ctx.limits.lock().expect("limits lock").finish(s, &end, now);
        if let Some(alert) = alert {
            tracing::warn!(payer = payer_field, playbook = %pb, alert = %alert, "Automation alert.");
            let opened = match &alert.kind {
                AlertKind::Recovered => None,
                _ => Some(alert.to_string()),
            };
            if let Err(e) = loaded.escalator.payer_alert(&ctx.ledger, pb, opened.as_deref()).await {
                tracing::error!(playbook = %pb, error = %e, "Cannot record the automation alert as an escalation.");
            }
        }
    }

    ctx.metrics
        .job_finished(&job.practice, kind, payer, metric_result(&fold.disposition));
    let practice = job.practice.as_str();
    let done = match &fold.disposition {
        Disposition::Done => {
            tracing::info!(
                job_id = job.id,
                kind,
                payer = payer_field,
                practice,
                runs = fold.runs,
                "Job done."
            );
            ctx.queue.complete(&lease, now).await.map(|_| ())
        }
        Disposition::Release => {
            tracing::info!(
                job_id = job.id,
                kind,
                payer = payer_field,
                practice,
                "Job cut by shutdown; released unrun for the next start."
            );
            ctx.queue.release(&lease, now, now).await.map(|_| ())
        }
        Disposition::Retry { reason, not_before, .. } => {
            let failure = Failure::Retry {
                reason: reason.clone(),
                not_before: *not_before,
            };
            let outcome = ctx.queue.fail(&lease, &failure, now).await;
            match &outcome {
                Ok(FailOutcome::Retrying { attempt, run_at }) => tracing::warn!(
                    job_id = job.id,
                    kind,
                    payer = payer_field,
                    practice,
                    reason,
                    attempt,
                    next_try = %run_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "Job failed; it will be retried."
                ),
                Ok(FailOutcome::Dead { attempts, .. }) => tracing::error!(
                    job_id = job.id,
                    kind,
                    payer = payer_field,
                    practice,
                    reason,
                    attempts,
                    "Job failed on its last attempt; it will not be retried."
                ),
                Err(_) => {}
            }
            outcome.map(|_| ())
        }
        Disposition::Dead { reason } => {
            tracing::error!(
                job_id = job.id,
                kind,
                payer = payer_field,
                practice,
                reason,
                "Job failed for good; the configuration must change."
            );
            ctx.queue
                .fail(&lease, &Failure::fatal(reason.clone()), now)
                .await
                .map(|_| ())
        }
    };
    if let Err(e) = done {
        tracing::warn!(job_id = job.id, error = %e, "Cannot record the job's end.");
    }
}

/// The `result` label of `precert_jobs_total` (names kept from before the
/// contract, so dashboards keep working).
fn metric_result(d: &Disposition) -> &'static str {
    match d {
        Disposition::Done => "ok",
        Disposition::Release => "released",
        Disposition::Retry { .. } => "retry",
        Disposition::Dead { .. } => "failed",
    }
}

/// Whether a per-payer job has a case to work now (an error says yes: the
/// job then meets it and reports it): an indexed `EXISTS`, and for CRD the
/// practice's `new` cases of the payer, a page at a time.
async fn has_work(ctx: &Ctx, loaded: &Loaded, job: &LeasedJob) -> bool {
    let (Some(action), Some(payer)) = (action_of(job.kind), job.payer.clone()) else {
        return true;
    };
    let payer = payer.to_string();
    let Some(work) = work_of(action) else {
        return false;
    };
    if ctx.ledger.has_work(&job.practice, &payer, work).await.unwrap_or(true) {
        return true;
    }
    if action == Action::Submit && crd_enabled(loaded, job) {
        let mut after = 0;
        loop {
            let Ok(page) = ctx
                .ledger
                .work_page(&job.practice, &payer, Work::New, after, PAGE)
                .await
            else {
                return true;
            };
            for c in &page {
                if crate::crd::due(&ctx.ledger, c).await.unwrap_or(true) {
                    return true;
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = last.id,
                _ => return false,
            }
        }
    }
    false
}

/// Cases read from the ledger at a time when a job selects its work.
const PAGE: usize = 500;

/// The cases an action works on, as the ledger selects them in SQL (what
/// `applies` says of one case).
fn work_of(action: Action) -> Option<Work> {
    match action {
        Action::Submit => Some(Work::Submit),
        Action::PollStatus | Action::PollWorklist => Some(Work::Poll),
        Action::DownloadLetter => Some(Work::Letters),
        Action::Login | Action::FindExisting => None,
    }
}

/// Every case of the job's practice and payer that `work` selects, read a
/// page at a time: what the job will work, not the practice's ledger.
async fn work_cases(ctx: &Ctx, job: &LeasedJob, payer: &str, work: Work) -> Result<Vec<CaseRecord>, StoreError> {
    let mut cases = Vec::new();
    loop {
        let after = cases.last().map_or(0, |c: &CaseRecord| c.id);
        let page = ctx.ledger.work_page(&job.practice, payer, work, after, PAGE).await?;
        let full = page.len() == PAGE;
        cases.extend(page);
        if !full {
            return Ok(cases);
        }
    }
}

/// Whether a job's binding runs a playbook that declares a CRD service.
fn crd_enabled(loaded: &Loaded, job: &LeasedJob) -> bool {
    playbook_of(loaded, job)
        .and_then(|pb| loaded.engine.playbook(&pb).map(|p| p.crd.is_some()))
        .unwrap_or(false)
}

/// The CRD half of a submit job (docs/crd.md): the binding's `new` cases
/// that no requirement rule decided and CRD has not answered yet are asked,
/// one by one, each run's `Disposition` folded like any other; a case CRD
/// makes ready is submitted by the same job. A service that is down or
/// misconfigured ends the pass (the job is tried again later) rather than
/// being asked about every case.
async fn crd_pass(ctx: &Ctx, engine: &Engine, job: &LeasedJob, payer: &PayerKey, actor: &Actor, fold: &mut Fold) {
    let store_retry = |e: crate::store::StoreError| Disposition::Retry {
        reason: e.to_string(),
        not_before: None,
        portal_fault: false,
    };
    let cases = match work_cases(ctx, job, payer.as_ref(), Work::New).await {
        Ok(c) => c,
        Err(e) => return fold.add(store_retry(e)),
    };
    for c in cases {
        if ctx.stop.is_cancelled() {
            return fold.add(Disposition::Release);
        }
        match crate::crd::due(&ctx.ledger, &c).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => return fold.add(store_retry(e)),
        }
        let t0 = Instant::now();
        let asked = engine.ask_crd(c.id, actor).await;
        ctx.metrics.run(payer, "crd", t0.elapsed().as_secs_f64());
        fold.runs += 1;
        let d = match &asked {
            Ok(_) => Disposition::Done,
            Err(e) => {
                let d = Disposition::from(e);
                tracing::warn!(case_id = c.id, %payer, error = %e, disposition = d.as_str(), "CRD could not be asked.");
                d
            }
        };
        let stop = matches!(
            d,
            Disposition::Retry { portal_fault: true, .. } | Disposition::Dead { .. }
        );
        fold.add(d);
        if stop {
            return;
        }
    }
}

/// Runs a job's action on each case it applies to; a per-case poll with
/// `sessions` runs at once (each its own browser session, see `run_job`).
async fn execute(ctx: &Ctx, loaded: &Loaded, job: &LeasedJob, sessions: usize) -> Fold {
    let mut fold = Fold::new();
    let Some(action) = action_of(job.kind) else {
        match escalation_job(ctx, loaded, job).await {
            Ok(()) => {}
            Err(reason) => fold.add(Disposition::Retry {
                reason,
                not_before: None,
                portal_fault: false,
            }),
        }
        return fold;
    };
    let Some(payer) = job.payer.clone() else {
        fold.add(Disposition::Dead {
            reason: "a per-payer job without a payer".into(),
        });
        return fold;
    };
    let Some(playbook_id) = playbook_of(loaded, job) else {
        fold.add(Disposition::Dead {
            reason: format!("practice {} has no payer {payer} (any more)", job.practice),
        });
        return fold;
    };
    let store_retry = |e: crate::store::StoreError| Disposition::Retry {
        reason: e.to_string(),
        not_before: None,
        portal_fault: false,
    };
    let actor = Actor::job(job.kind.as_str(), job.id);
    if action == Action::Submit && crd_enabled(loaded, job) {
        crd_pass(ctx, &loaded.engine, job, &payer, &actor, &mut fold).await;
        if matches!(fold.disposition, Disposition::Release) {
            return fold;
        }
    }
    let Some(work) = work_of(action) else {
        return fold;
    };
    // A payer whose playbook has no letters (an API such as PAS sends none)
    // has nothing to fetch.
    if action == Action::DownloadLetter
        && loaded
            .engine
            .playbook(&playbook_id)
            .is_some_and(|p| !p.actions.contains_key(&Action::DownloadLetter))
    {
        return fold;
    }
    let engine = &loaded.engine;
    // Each case is its own run (its own ledger writes, its own fencing);
    // a poll's runs go `sessions` at a time, each on a session of its own.
    let at_once = if action == Action::PollStatus { sessions } else { 1 };
    let worklist = action == Action::PollStatus
        && engine
            .playbook(&playbook_id)
            .is_some_and(|p| p.actions.contains_key(&Action::PollWorklist));
    if worklist {
        let cases = match work_cases(ctx, job, payer.as_ref(), work).await {
            Ok(c) => c,
            Err(e) => {
                fold.add(store_retry(e));
                return fold;
            }
        };
        let cases = if cases.len() > 1 {
            match after_worklist(ctx, engine, job, &cases, &payer, &actor, &mut fold).await {
                Ok(c) => c,
                Err(e) => {
                    fold.add(store_retry(e));
                    return fold;
                }
            }
        } else {
            cases
        };
        run_cases(ctx, engine, action, cases, at_once, &payer, &actor, &mut fold).await;
        flush_stamps(engine, &mut fold).await;
        return fold;
    }
    // A page of cases at a time, each run starting from the page's record
    // (`Engine::run_read`): memory is a page's, whatever the practice's size.
    let mut after = 0;
    loop {
        let page = match ctx
            .ledger
            .work_page(&job.practice, payer.as_ref(), work, after, PAGE)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                fold.add(store_retry(e));
                return fold;
            }
        };
        let full = page.len() == PAGE;
        after = page.last().map_or(after, |c| c.id);
        run_cases(ctx, engine, action, page, at_once, &payer, &actor, &mut fold).await;
        flush_stamps(engine, &mut fold).await;
        if !full || ctx.stop.is_cancelled() {
            return fold;
        }
    }
}

/// The page's "asked, nothing new" stamps, written together; a failure
/// to write them is the job's to retry.
async fn flush_stamps(engine: &Engine, fold: &mut Fold) {
    if let Err(e) = engine.flush_stamps().await {
        fold.add(Disposition::Retry {
            reason: e.to_string(),
            not_before: None,
            portal_fault: false,
        });
    }
}

/// After one pass over the worklist, which read every case's status: the
/// cases still to be read one by one — the decided ones, for their details
/// (dates, reason), and every pending one the worklist did not show (a
/// worklist cut short at its page cap, a request the list leaves out), so
/// that every case is polled.
async fn after_worklist(
    ctx: &Ctx,
    engine: &Engine,
    job: &LeasedJob,
    cases: &[CaseRecord],
    payer: &PayerKey,
    actor: &Actor,
    fold: &mut Fold,
) -> Result<Vec<CaseRecord>, crate::store::StoreError> {
    let report = run_one(ctx, engine, Action::PollWorklist, cases[0].id, payer, actor, fold).await;
    let seen: Option<std::collections::HashSet<String>> = report
        .as_ref()
        .filter(|r| r.failure.is_none())
        .map(|r| r.observations.iter().filter_map(|o| o.reference.clone()).collect());
    if let Some(why) = report.as_ref().and_then(|r| r.partial.as_deref()) {
        tracing::warn!(job_id = job.id, %payer, partial = why, "The worklist was cut short: the cases it did not show are polled one by one.");
    }
    let mut next = Vec::new();
    for c in cases {
        let now = ctx.ledger.get(c.id).await?;
        if matches!(
            now.status,
            CaseStatus::Approved | CaseStatus::PartiallyApproved | CaseStatus::Denied
        ) {
            next.push(now);
            continue;
        }
        let unseen = seen
            .as_ref()
            .is_some_and(|s| now.payer_ref.as_ref().is_some_and(|r| !s.contains(r)));
        if unseen && matches!(now.status, CaseStatus::Pending | CaseStatus::PendedForInfo) {
            next.push(now);
        }
    }
    Ok(next)
}

/// Runs `action` on each of `cases`, `at_once` at a time; a shutdown starts
/// no more of them (the rest wait for the next start, no attempt used).
#[allow(clippy::too_many_arguments)]
async fn run_cases(
    ctx: &Ctx,
    engine: &Engine,
    action: Action,
    cases: Vec<CaseRecord>,
    at_once: usize,
    payer: &PayerKey,
    actor: &Actor,
    fold: &mut Fold,
) {
    let mut runs = futures_util::stream::iter(cases)
        .map(|c| async move {
            if ctx.stop.is_cancelled() {
                return None;
            }
            let id = c.id;
            Some((
                id,
                timed(ctx, engine, payer, action, engine.run_read(action, c, actor)).await,
            ))
        })
        .buffer_unordered(at_once);
    while let Some(ran) = runs.next().await {
        match ran {
            Some((case_id, report)) => fold_in(fold, action, case_id, &report),
            None => fold.add(Disposition::Release),
        }
    }
}

async fn run_one(
    ctx: &Ctx,
    engine: &Engine,
    action: Action,
    case_id: i64,
    payer: &PayerKey,
    actor: &Actor,
    fold: &mut Fold,
) -> Option<crate::engine::RunReport> {
    let report = run_case(ctx, engine, action, case_id, payer, actor).await;
    fold_in(fold, action, case_id, &report);
    report.ok()
}

/// One run of the engine on one case, timed.
async fn run_case(
    ctx: &Ctx,
    engine: &Engine,
    action: Action,
    case_id: i64,
    payer: &PayerKey,
    actor: &Actor,
) -> Result<crate::engine::RunReport, crate::engine::EngineError> {
    timed(ctx, engine, payer, action, engine.run(action, case_id, actor)).await
}

/// A run, timed into the metrics, and what it says of the browser's health.
async fn timed(
    ctx: &Ctx,
    engine: &Engine,
    payer: &PayerKey,
    action: Action,
    run: impl std::future::Future<Output = Result<crate::engine::RunReport, crate::engine::EngineError>>,
) -> Result<crate::engine::RunReport, crate::engine::EngineError> {
    let t0 = Instant::now();
    let report = run.await;
    ctx.metrics.run(payer, action.as_str(), t0.elapsed().as_secs_f64());
    match &report {
        Err(crate::engine::EngineError::Browser(e)) => ctx.metrics.health.browser_started(Err(e.to_string())),
        Ok(_) if engine.driver_process_group().await.is_some() => ctx.metrics.health.browser_started(Ok(())),
        _ => {}
    }
    report
}

/// What a run means for its job.
fn fold_in(
    fold: &mut Fold,
    action: Action,
    case_id: i64,
    report: &Result<crate::engine::RunReport, crate::engine::EngineError>,
) {
    fold.runs += 1;
    let d = match report {
        Err(e) => {
            let d = Disposition::from(e);
            if d != Disposition::Done {
                tracing::warn!(case_id, action = action.as_str(), error = %e, "Action could not run.");
            }
            d
        }
        Ok(r) => {
            if let Some(f) = &r.failure {
                if f.kind == FailureKind::PortalChanged {
                    fold.portal_changed
                        .get_or_insert_with(|| format!("case {case_id}: {f}"));
                }
            }
            r.disposition()
        }
    };
    fold.add(d);
}
