//! `precert crd …`: the Da Vinci CRD channel by hand — the CDS Hooks
//! request a case would become, and asking the payer's service about one
//! case (what the daemon's submit job does for every `new` case).

use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Subcommand;

use super::Outcome;
use crate::config::{Secrets, Settings};
use crate::crd::{self, Verdict};
use crate::engine::Engine;
use crate::playbook::{self, CrdHook, Playbook};
use crate::store::{private_dir, Actor, Ledger};

#[derive(Debug, Subcommand)]
pub enum CrdCommand {
    /// Ask the payer's CRD service whether a `new` case needs a pre-cert,
    /// keep the answer as evidence and record what it means.
    Ask {
        /// The number from `cases list`, `PRACTICE/CASE_ID`, or a case ID.
        case: String,
    },
    /// Print the CDS Hooks request (JSON) a CRD call would send for a case.
    /// It holds the patient's PHI (name, birth date, member ID).
    Request {
        /// The number from `cases list`, `PRACTICE/CASE_ID`, or a case ID.
        case: String,
    },
}

pub async fn run(cmd: CrdCommand, config: &std::path::Path) -> anyhow::Result<Outcome> {
    match cmd {
        CrdCommand::Ask { case } => ask(super::load(config, Secrets::Resolve)?, &case).await,
        CrdCommand::Request { case } => request(&super::load(config, Secrets::Skip)?, &case).await,
    }
}

fn playbooks(settings: &Settings) -> anyhow::Result<Vec<Playbook>> {
    let (playbooks, errors) = playbook::load_dir(&settings.playbooks_dir);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        bail!("the playbooks have problems; `precert check` lists them");
    }
    Ok(playbooks)
}

async fn request(settings: &Settings, id: &str) -> anyhow::Result<Outcome> {
    let playbooks = playbooks(settings)?;
    let ledger = Ledger::open(&settings.database_url).await?;
    let case = super::cases::resolve(&ledger, id).await;
    ledger.close().await;
    let case = case?;
    let practice = settings.practice(&case.data.practice_id).with_context(|| {
        format!(
            "case {}: practice {} is not configured",
            case.key(),
            case.data.practice_id
        )
    })?;
    let binding = practice.payers.get(&case.data.coverage.payer).with_context(|| {
        format!(
            "case {}: practice {} has no payer {}",
            case.key(),
            practice.id,
            case.data.coverage.payer
        )
    })?;
    let hook = playbooks
        .iter()
        .find(|p| p.id == binding.playbook)
        .and_then(|p| p.crd.as_ref())
        .map(|c| c.hook)
        .unwrap_or(CrdHook::OrderSign);
    let ctx = crate::pas::Context {
        practice,
        data_dir: &settings.data_dir,
        insurer_name: binding.account.get("payer_name").map(String::as_str),
        now: chrono::Utc::now(),
    };
    let req = crd::build(&case.data, &ctx, hook);
    println!("{}", serde_json::to_string_pretty(&req.body)?);
    Ok(Outcome::Ok)
}

async fn ask(settings: Settings, id: &str) -> anyhow::Result<Outcome> {
    let playbooks = playbooks(&settings)?;
    private_dir(&settings.data_dir).with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
    let ledger = super::escalations::open_ledger(&settings, &playbooks).await?;
    let case = super::cases::resolve(&ledger, id).await?;
    let engine = Engine::new(Arc::new(settings), ledger.clone(), playbooks);
    let asked = engine.ask_crd(case.id, &Actor::current_user()).await;
    engine.shutdown().await;
    ledger.close().await;
    let asked = asked.with_context(|| format!("case {}: the CRD service could not be asked", case.key()))?;
    for p in &asked.answer.problems {
        eprintln!("warning: {}: the payer's answer is off-spec: {p}", case.key());
    }
    let why = match &asked.verdict {
        Verdict::Undecided(w) | Verdict::Attention(w) => format!(" ({w})"),
        _ => String::new(),
    };
    println!(
        "{}: CRD says {}{why} → {}",
        case.key(),
        asked.verdict.as_str(),
        asked.status
    );
    for c in &asked.answer.coverage {
        println!(
            "  {} {}: covered {}, pa-needed {}, assertion {}",
            c.order,
            c.code,
            c.covered.as_deref().unwrap_or("?"),
            c.pa_needed.as_deref().unwrap_or("?"),
            c.coverage_assertion_id.as_deref().unwrap_or("?")
        );
    }
    if let (Some(p), Some(h)) = (&asked.evidence, &asked.sha256) {
        println!("  evidence: {} (sha256 {h})", p.display());
    }
    Ok(match asked.verdict {
        Verdict::Attention(_) => Outcome::Problems,
        _ => Outcome::Ok,
    })
}
