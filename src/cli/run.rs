//! `precert run PLAYBOOK ACTION --case ID`: one action, once, with a
//! readable step-by-step trace on stderr. `--dry-run` stops before the
//! commit step and records nothing; `login` needs no case and touches none.

use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use futures_util::StreamExt;

use super::Outcome;
use crate::case::{CaseRecord, CaseStatus};
use crate::config::Settings;
use crate::engine::Engine;
use crate::playbook::{self, Action};
use crate::store::{private_dir, Actor, CaseFilter};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The playbook (payer id), e.g. `sandbox`.
    pub playbook: String,
    /// login, submit, poll_status, poll_worklist, download_letter or
    /// find_existing.
    pub action: String,
    /// The case: a number, PRACTICE/CASE_ID, or a case ID. Repeat it for
    /// several cases (one browser session serves them all). `login` needs
    /// none (it signs in with each practice's account, or `--practice`'s).
    #[arg(long)]
    pub case: Vec<String>,
    /// Every case of this playbook's payer that the action applies to:
    /// submit → ready (and interrupted submissions), poll_status → pending
    /// or pended for information, download_letter → decided without a letter.
    #[arg(long, conflicts_with = "case")]
    pub all: bool,
    /// `login` only: the practice whose account signs in.
    #[arg(long, conflicts_with_all = ["case", "all"])]
    pub practice: Option<String>,
    /// Run the steps up to the commit step (a submission is never sent)
    /// and record nothing: no status change, no event, no letter, no mail.
    /// What the portal shows is printed.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(args: RunArgs, settings: Settings) -> anyhow::Result<Outcome> {
    let Some(action) = Action::parse(&args.action) else {
        bail!(
            "`{}` is not an action; actions are {}",
            args.action,
            Action::ALL.map(Action::as_str).join(", ")
        );
    };
    let (playbooks, errors) = playbook::load_dir(&settings.playbooks_dir);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        bail!("the playbooks have problems; `precert check` lists them");
    }
    if !playbooks.iter().any(|p| p.id == args.playbook) {
        bail!(
            "no playbook `{}` in {}",
            args.playbook,
            settings.playbooks_dir.display()
        );
    }
    if action == Action::Login && args.case.is_empty() {
        return login(&args, settings, playbooks).await;
    }
    if args.practice.is_some() {
        bail!("--practice goes with `login` only; other actions name their cases (--case, --all)");
    }
    if args.case.is_empty() && !args.all {
        bail!("{action} needs --case ID (repeatable) or --all");
    }
    private_dir(&settings.data_dir).with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
    let ledger = super::escalations::open_ledger(&settings, &playbooks).await?;
    let mut cases = Vec::new();
    for id in &args.case {
        cases.push(super::cases::resolve(&ledger, id).await?);
    }
    if args.all {
        cases = ledger.list(&CaseFilter::default()).await?;
        let mut keep = Vec::new();
        for c in cases {
            // Polls: what the help says, pending and pended only (the
            // daemon also re-reads decisions whose details are missing).
            let polls = matches!(action, Action::PollStatus | Action::PollWorklist);
            let open = matches!(c.status, CaseStatus::Pending | CaseStatus::PendedForInfo);
            if (!polls || open) && crate::daemon::applies(&ledger, action, &c).await? {
                keep.push(c);
            }
        }
        cases = keep;
    }
    let bound = |c: &CaseRecord| {
        settings
            .practice(&c.data.practice_id)
            .and_then(|p| p.payers.get(&c.data.coverage.payer))
            .map(|b| b.playbook.clone())
    };
    if args.all {
        cases.retain(|c| bound(c).as_deref() == Some(args.playbook.as_str()));
        if action == Action::PollWorklist {
            // One worklist per payer account covers all its cases.
            let mut seen = std::collections::HashSet::new();
            cases.retain(|c| seen.insert(c.data.practice_id.clone()));
        }
    }
    for c in &cases {
        if bound(c).as_deref() != Some(args.playbook.as_str()) {
            bail!(
                "case {} goes to payer {} whose playbook is {}, not {}",
                c.key(),
                c.data.coverage.payer,
                bound(c).unwrap_or_else(|| "not configured".into()),
                args.playbook
            );
        }
    }
    if cases.is_empty() {
        println!("no case to {action}");
        return Ok(Outcome::Ok);
    }
    // `poll_status --all` polls over the payer's sessions at once (its
    // playbook's `max_sessions`, within `webdriver.max_sessions`), each a
    // session slot of the cluster's (as the daemon's runs hold): as many as
    // are free now, and one without a slot when none is (as before).
    let cap = playbooks
        .iter()
        .find(|p| p.id == args.playbook)
        .map_or(1, |p| p.max_sessions);
    let max = cap.min(settings.webdriver.max_sessions);
    let slots = if args.all && action == Action::PollStatus && cases.len() > 1 && max > 1 {
        let holder = crate::daemon::sessions::holder();
        let grid = settings.webdriver.cluster_sessions;
        let mut slots =
            crate::daemon::sessions::SessionSlots::claim(&ledger, &holder, &args.playbook, cap, grid, max).await;
        slots.keep_renewed(&ledger);
        slots
    } else {
        crate::daemon::sessions::SessionSlots::default()
    };
    let sessions = slots.sessions().max(1);
    let mut engine = Engine::new(Arc::new(settings), ledger.clone(), playbooks);
    // Several runs at once would interleave their step traces.
    engine.echo = sessions == 1;
    engine.dry_run = args.dry_run;
    if sessions > 1 {
        eprintln!(
            "precert run {} {action}: {} cases, {sessions} sessions at once (step traces not shown)",
            args.playbook,
            cases.len()
        );
    }
    let actor = Actor::current_user();
    let mut runs = futures_util::stream::iter(&cases)
        .map(|case| {
            let (engine, actor, playbook) = (&engine, &actor, &args.playbook);
            async move {
                eprintln!(
                    "precert run {playbook} {action} --case {} (case {})",
                    case.key(),
                    case.id
                );
                (case, engine.run(action, case.id, actor).await)
            }
        })
        .buffer_unordered(sessions);
    let mut failed = 0;
    while let Some((case, ran)) = runs.next().await {
        let report = match ran {
            Ok(r) => r,
            Err(e) => {
                // A case that cannot run (not ready, no reference) does not
                // stop the others.
                println!("{}: {action} not run: {e}", case.key());
                failed += 1;
                continue;
            }
        };
        // A dry run's (and a login's) findings are printed, never recorded.
        let dry = report.dry_run.is_some();
        let unrecorded = if dry { " (not recorded)" } else { "" };
        if let Some(p) = &report.partial {
            println!("{}: {action} read only part: {p}", case.key());
        }
        for o in &report.observations {
            // A worklist's rows are other cases': each is named by its own.
            let key = match (action, &o.reference) {
                (Action::PollWorklist, Some(r)) => {
                    match ledger.find_by_payer_ref(&case.data.coverage.payer, r).await? {
                        Some(c) => c.key(),
                        None => "(no case of ours)".to_owned(),
                    }
                }
                _ => case.key(),
            };
            println!(
                "{key}: portal says {} → {}{}{unrecorded}",
                o.wording,
                o.status,
                o.reference
                    .as_deref()
                    .map(|r| format!(" (reference {r})"))
                    .unwrap_or_default()
            );
        }
        if report.letters > 0 {
            println!("{}: letters stored: {}", case.key(), report.letters);
        }
        if let Some(d) = &report.dry_run {
            if let Some(at) = d.stopped_before {
                println!(
                    "{}: dry run stopped before the commit step at line {}: nothing was sent",
                    case.key(),
                    at.line
                );
            }
            if d.downloads > 0 {
                println!("{}: dry run fetched {} file(s), not kept", case.key(), d.downloads);
            }
        }
        match &report.failure {
            None if dry => println!(
                "{}: {action} ok; nothing recorded, the case is still {}",
                case.key(),
                report.status
            ),
            None => println!("{}: {action} ok; now {}", case.key(), report.status),
            Some(f) => {
                failed += 1;
                println!(
                    "{}: {action} failed: {f}; {} {}",
                    case.key(),
                    if dry {
                        "nothing recorded, the case is still"
                    } else {
                        "now"
                    },
                    report.status
                );
                if let Some(a) = &report.artifacts {
                    println!("{}: artifacts: {}", case.key(), a.display());
                }
            }
        }
    }
    drop(runs);
    slots.release(&ledger).await;
    engine.shutdown().await;
    ledger.close().await;
    Ok(if failed == 0 { Outcome::Ok } else { Outcome::Problems })
}

/// `precert run PAYER login` without a case: signs in with the account of
/// `--practice`, or of each practice bound to the playbook, touching no
/// case (the engine needs the ledger open; nothing is written to it).
async fn login(args: &RunArgs, settings: Settings, playbooks: Vec<playbook::Playbook>) -> anyhow::Result<Outcome> {
    let practices: Vec<String> = settings
        .practices
        .iter()
        .filter(|p| args.practice.as_deref().is_none_or(|want| p.id == want))
        .filter(|p| p.payers.values().any(|b| b.playbook == args.playbook))
        .map(|p| p.id.clone())
        .collect();
    if practices.is_empty() {
        match &args.practice {
            Some(p) if settings.practice(p).is_none() => bail!("no practice `{p}` is configured"),
            Some(p) => bail!("practice {p} binds no payer to playbook {}", args.playbook),
            None => bail!("no practice binds a payer to playbook {}", args.playbook),
        }
    }
    private_dir(&settings.data_dir).with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
    let ledger = super::escalations::open_ledger(&settings, &playbooks).await?;
    let mut engine = Engine::new(Arc::new(settings), ledger.clone(), playbooks);
    engine.echo = true;
    let mut failed = 0;
    for practice in &practices {
        eprintln!("precert run {} login --practice {practice}", args.playbook);
        let report = match engine.login_only(&args.playbook, practice).await {
            Ok(r) => r,
            Err(e) => {
                println!("{practice}: login not run: {e}");
                failed += 1;
                continue;
            }
        };
        match &report.failure {
            None => println!("{practice}: login ok (no case touched)"),
            Some(f) => {
                failed += 1;
                println!("{practice}: login failed: {f} (no case touched)");
                if let Some(a) = &report.artifacts {
                    println!("{practice}: artifacts: {}", a.display());
                }
            }
        }
    }
    engine.shutdown().await;
    ledger.close().await;
    Ok(if failed == 0 { Outcome::Ok } else { Outcome::Problems })
}
