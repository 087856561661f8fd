//! `precert db migrate|status|rebuild-facts`: the ledger's schema, on SQLite
//! or PostgreSQL. Every process that opens the ledger migrates it anyway
//! (under a lock); `migrate` does it on its own, before an upgrade's daemons
//! start, and `status` shows where a database stands without changing it.
//! `rebuild-facts` rewrites the reports' per-request facts from the event
//! log, the source of truth.

use clap::Subcommand;

use super::Outcome;
use crate::config::Settings;
use crate::store::{self, redact_url};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the migrations this precert has and the database lacks (under
    /// the migration lock, so daemons starting meanwhile wait).
    Migrate,
    /// Show each migration, applied or pending; exit code 1 while anything
    /// is pending, changed, or unknown to this precert.
    Status,
    /// Rewrite every request's report facts (`case_facts`) from the event
    /// log, in one transaction. Not needed in operation (they are written
    /// with every status change): for events written by other means, or
    /// facts in doubt.
    RebuildFacts,
}

pub async fn run(cmd: DbCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    let url = &settings.database_url;
    match cmd {
        DbCommand::Migrate => {
            let applied = store::migrate(url).await?;
            if applied.is_empty() {
                println!("{}: the schema was already up to date.", redact_url(url));
            } else {
                for (version, description) in &applied {
                    println!("applied {version:>4}  {description}");
                }
                println!(
                    "{}: {} migration(s) applied; the schema is up to date.",
                    redact_url(url),
                    applied.len()
                );
            }
            Ok(Outcome::Ok)
        }
        DbCommand::RebuildFacts => {
            let ledger = store::Ledger::open(url).await?;
            let n = ledger.rebuild_facts().await;
            ledger.close().await;
            println!(
                "{}: the facts of {} request(s) rebuilt from the event log.",
                redact_url(url),
                n?
            );
            Ok(Outcome::Ok)
        }
        DbCommand::Status => {
            let status = store::schema_status(url).await?;
            println!("database  {} ({})", redact_url(url), status.backend.name());
            if !status.exists {
                println!(
                    "          does not exist yet: `precert db migrate` or the first command that opens it creates it"
                );
            }
            for (version, description, applied) in &status.migrations {
                let state = match applied {
                    Some(a) if a.checksum_matches => format!("applied {}", a.installed_on),
                    Some(a) => format!(
                        "applied {}, but its SQL differs from this precert's (edited after it was applied?)",
                        a.installed_on
                    ),
                    None => "pending".to_owned(),
                };
                println!("{version:>4}  {description:<24}  {state}");
            }
            for a in &status.unknown {
                println!(
                    "{:>4}  {:<24}  applied {}, unknown to this precert (a newer version migrated this database)",
                    a.version, a.description, a.installed_on
                );
            }
            let pending = status.pending().count();
            if status.up_to_date() {
                println!("Up to date.");
                Ok(Outcome::Ok)
            } else {
                if pending > 0 {
                    println!("{pending} migration(s) pending: `precert db migrate` applies them (so does the daemon at start).");
                }
                Ok(Outcome::Problems)
            }
        }
    }
}
