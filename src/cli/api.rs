//! `precert api-tokens …` and `precert webhooks …`: the intake API's
//! tokens, and its webhook deliveries (`docs/intake.md`).

use anyhow::Context as _;
use clap::Subcommand;

use super::Outcome;
use crate::config::Settings;
use crate::store::{private_dir, Actor, Ledger, TokenScope};

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token for a practice's system; it is printed once, here,
    /// and stored only as a hash.
    Create {
        practice: String,
        /// A name for the token (the system that holds it), unique among
        /// the practice's live tokens.
        #[arg(long)]
        name: String,
        /// `read` (GET only) or `write` (GET and POST).
        #[arg(long, value_parser = parse_scope)]
        scope: TokenScope,
    },
    /// List tokens (never their secrets): scope, created, last used, revoked.
    List {
        #[arg(long)]
        practice: Option<String>,
    },
    /// Revoke a practice's token by name: it is refused (401) from now on.
    Revoke {
        practice: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Deliveries, newest first: state, attempts, last error.
    List {
        #[arg(long)]
        practice: Option<String>,
        /// Only deliveries that failed (for good, or are being retried).
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Put a delivery that failed for good back in line, due now.
    Retry { id: i64 },
}

fn parse_scope(s: &str) -> Result<TokenScope, String> {
    s.parse()
}

async fn open(settings: &Settings) -> anyhow::Result<Ledger> {
    private_dir(&settings.data_dir)
        .with_context(|| format!("cannot create the data directory {}", settings.data_dir.display()))?;
    Ok(Ledger::open(&settings.database_url).await?)
}

fn known_practice(settings: &Settings, practice: &str) -> anyhow::Result<()> {
    if settings.practice(practice).is_none() {
        let known: Vec<&str> = settings.practices.iter().map(|p| p.id.as_str()).collect();
        anyhow::bail!(
            "`{practice}` is not a configured practice (known: {})",
            known.join(", ")
        );
    }
    Ok(())
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
}

pub async fn tokens(cmd: TokensCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    let ledger = open(settings).await?;
    match cmd {
        TokensCommand::Create { practice, name, scope } => {
            known_practice(settings, &practice)?;
            let name = name.trim();
            if name.is_empty() || name.chars().count() > 64 || name.chars().any(|c| c.is_control() || c == '/') {
                anyhow::bail!("--name: give 1 to 64 characters, no `/` or control characters");
            }
            let live = ledger.api_tokens(Some(&practice)).await?;
            if live.iter().any(|t| t.name == name && t.revoked_at.is_none()) {
                anyhow::bail!(
                    "practice {practice} already has a live token named `{name}`; revoke it first or choose another name"
                );
            }
            let by = Actor::current_user();
            let new = crate::api::tokens::create(&ledger, &practice, name, scope, by.as_str()).await?;
            eprintln!(
                "Token `{name}` created for practice {practice} ({} scope). It is shown once; store it in the \
                 practice system's secret store now:",
                scope.as_str()
            );
            println!("{}", new.token);
        }
        TokensCommand::List { practice } => {
            let tokens = ledger.api_tokens(practice.as_deref()).await?;
            if tokens.is_empty() {
                println!("No API tokens.");
            }
            for t in tokens {
                println!(
                    "{:<14} {:<24} {:<5} key {}  created {} by {}  last used {}  {}",
                    t.practice_id,
                    t.name,
                    t.scope.as_str(),
                    t.key_id,
                    when(Some(t.created_at)),
                    t.created_by,
                    when(t.last_used_at),
                    t.revoked_at
                        .map_or_else(|| "live".into(), |r| format!("revoked {}", when(Some(r)))),
                );
            }
        }
        TokensCommand::Revoke { practice, name } => {
            if !ledger.revoke_api_token(&practice, &name).await? {
                anyhow::bail!("practice {practice} has no live token named `{name}`");
            }
            println!("Token `{name}` of practice {practice} revoked.");
        }
    }
    ledger.close().await;
    Ok(Outcome::Ok)
}

pub async fn webhooks(cmd: WebhooksCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    let ledger = open(settings).await?;
    let outcome = match cmd {
        WebhooksCommand::List {
            practice,
            failed,
            limit,
        } => {
            let rows = ledger.webhook_deliveries(practice.as_deref(), failed, limit).await?;
            if rows.is_empty() {
                println!("No webhook deliveries{}.", if failed { " failing" } else { "" });
            }
            for d in &rows {
                println!(
                    "#{:<6} {:<14} case {:<8} event {:<8} {:<9} {:<9} attempts {:<2} queued {}  next {}  delivered {}{}",
                    d.id,
                    d.practice_id,
                    d.case_id,
                    d.event_id,
                    d.kind,
                    d.state,
                    d.attempts,
                    when(Some(d.created_at)),
                    when(Some(d.next_attempt_at)),
                    when(d.delivered_at),
                    d.last_error.as_deref().map(|e| format!("\n        last error: {e}")).unwrap_or_default(),
                );
            }
            if failed && !rows.is_empty() {
                Outcome::Problems
            } else {
                Outcome::Ok
            }
        }
        WebhooksCommand::Retry { id } => {
            if !ledger.retry_webhook(id).await? {
                anyhow::bail!("delivery #{id} is not a failed delivery");
            }
            println!("Delivery #{id} is due again; the daemon sends it.");
            Outcome::Ok
        }
    };
    ledger.close().await;
    Ok(outcome)
}
