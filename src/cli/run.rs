//! `precert run PLAYBOOK ACTION --case ID`: one action, once, with a
//! readable step-by-step trace on stderr.

use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;

use super::Outcome;
use crate::config::Settings;
use crate::engine::Engine;
use crate::playbook::{self, Action};
use crate::store::{private_dir, Actor, Ledger};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The playbook (payer id), e.g. `sandbox`.
    pub playbook: String,
    /// login, submit, poll_status, poll_worklist, download_letter or
    /// find_existing.
    pub action: String,
    /// The case: a number, PRACTICE/CASE_ID, or a case ID.
    #[arg(long)]
    pub case: String,
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
    let ledger = Ledger::open(&settings.database_url).await?;
    let case = super::cases::resolve(&ledger, &args.case).await?;
    let bound = settings
        .practice(&case.data.practice_id)
        .and_then(|p| p.payers.get(&case.data.coverage.payer))
        .map(|b| b.playbook.clone());
    if bound.as_deref() != Some(args.playbook.as_str()) {
        bail!(
            "case {} goes to payer {} whose playbook is {}, not {}",
            case.key(),
            case.data.coverage.payer,
            bound.unwrap_or_else(|| "not configured".into()),
            args.playbook
        );
    }
    let mut engine = Engine::new(Arc::new(settings), ledger.clone(), playbooks);
    engine.echo = true;
    eprintln!(
        "precert run {} {action} --case {} (case {})",
        args.playbook,
        case.key(),
        case.id
    );
    let report = engine.run(action, case.id, &Actor::current_user()).await;
    engine.shutdown().await;
    let report = report?;
    ledger.close().await;
    for o in &report.observations {
        println!(
            "portal: {} → {}{}",
            o.wording,
            o.status,
            o.reference
                .as_deref()
                .map(|r| format!(" (reference {r})"))
                .unwrap_or_default()
        );
    }
    if report.letters > 0 {
        println!("letters stored: {}", report.letters);
    }
    match &report.failure {
        None => {
            println!("{action} ok; case {} is {}", case.key(), report.status);
            Ok(Outcome::Ok)
        }
        Some(f) => {
            println!("{action} failed: {f}; case {} is {}", case.key(), report.status);
            if let Some(a) = &report.artifacts {
                println!("artifacts: {}", a.display());
            }
            Ok(Outcome::Problems)
        }
    }
}
