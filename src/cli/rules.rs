//! `precert rules …`: the payers' requirement rules ("is a pre-cert
//! required?"): explain a case, or apply the rules to `new` cases now.

use anyhow::Context as _;
use clap::Subcommand;

use super::Outcome;
use crate::config::Settings;
use crate::requirements::{self, RuleBook};
use crate::store::private_dir;

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Which rule decided a case (or would), and why each rule read before
    /// it did not match. CASE is the number from `cases list`,
    /// `PRACTICE/CASE_ID`, or the practice's case ID.
    Explain {
        #[arg(value_name = "CASE")]
        id: String,
    },
    /// Decide every `new` case by the rules now (what the daemon does at
    /// start, on reload and every minute). Cases no rule covers stay `new`.
    Apply {
        /// Only this practice's cases.
        #[arg(long)]
        practice: Option<String>,
    },
}

/// The rules of the playbooks directory; a file with problems is left out,
/// its problems printed (as `precert check` prints them).
pub(crate) fn load_rules(settings: &Settings) -> RuleBook {
    let (book, errors) = RuleBook::load_dir(&settings.playbooks_dir);
    for e in &errors {
        eprintln!("warning: {e}");
    }
    if !errors.is_empty() {
        eprintln!("warning: a requirement rules file with problems is not used (see `precert check`)");
    }
    book
}

pub async fn run(cmd: RulesCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    private_dir(&settings.data_dir)
        .with_context(|| format!("cannot create the data directory {}", settings.data_dir.display()))?;
    let book = load_rules(settings);
    let ledger = super::escalations::open_ledger(settings, &[]).await?;
    let outcome = match cmd {
        RulesCommand::Explain { id } => {
            let case = super::cases::resolve(&ledger, &id).await?;
            let events = ledger.events(case.id).await?;
            print!("{}", requirements::explain(settings, &book, &case, &events));
            Ok(Outcome::Ok)
        }
        RulesCommand::Apply { practice } => {
            let practices: Vec<String> = match practice {
                Some(p) if settings.practice(&p).is_none() => {
                    anyhow::bail!(
                        "--practice {p}: no such practice in {}",
                        settings.practices_dir.display()
                    )
                }
                Some(p) => vec![p],
                None => settings.practices.iter().map(|p| p.id.clone()).collect(),
            };
            for p in practices {
                let r = requirements::decide_new_cases(&ledger, settings, &book, &p, None).await?;
                println!(
                    "{p}: {} new case(s): {} required, {} not required, {} need a decision",
                    r.looked, r.required, r.not_required, r.undecided
                );
            }
            Ok(Outcome::Ok)
        }
    };
    ledger.close().await;
    outcome
}
