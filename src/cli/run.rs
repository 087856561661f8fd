//! `precert run PLAYBOOK ACTION --case ID`: one action, once, with a
//! readable step-by-step trace on stderr.

use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;

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
    /// several cases (one browser session serves them all).
    #[arg(long, required_unless_present = "all")]
    pub case: Vec<String>,
    /// Every case of this playbook's payer that the action applies to:
    /// submit → ready (and interrupted submissions), poll_status → pending
    /// or pended for information, download_letter → decided without a letter.
    #[arg(long, conflicts_with = "case")]
    pub all: bool,
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
    let mut engine = Engine::new(Arc::new(settings), ledger.clone(), playbooks);
    engine.echo = true;
    let mut failed = 0;
    for case in &cases {
        eprintln!(
            "precert run {} {action} --case {} (case {})",
            args.playbook,
            case.key(),
            case.id
        );
        let report = match engine.run(action, case.id, &Actor::current_user()).await {
            Ok(r) => r,
            Err(e) => {
                // A case that cannot run (not ready, no reference) does not
                // stop the others.
                println!("{}: {action} not run: {e}", case.key());
                failed += 1;
                continue;
            }
        };
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
                "{key}: portal says {} → {}{}",
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
        match &report.failure {
            None => println!("{}: {action} ok; now {}", case.key(), report.status),
            Some(f) => {
                failed += 1;
                println!("{}: {action} failed: {f}; now {}", case.key(), report.status);
                if let Some(a) = &report.artifacts {
                    println!("{}: artifacts: {}", case.key(), a.display());
                }
            }
        }
    }
    engine.shutdown().await;
    ledger.close().await;
    Ok(if failed == 0 { Outcome::Ok } else { Outcome::Problems })
}
