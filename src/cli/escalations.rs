//! `precert escalations …` and `precert outbox …`: what is waiting on a
//! person, and the mail that tells them.

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Subcommand;

use super::Outcome;
use crate::config::Settings;
use crate::escalate::{self, Escalator};
use crate::mail::Mailer;
use crate::store::{private_dir, Actor, Escalation, EscalationState, Ledger, OutboxEntry};

#[derive(Debug, Subcommand)]
pub enum EscalationsCommand {
    /// List open and acknowledged escalations, most urgent first.
    List {
        #[arg(long)]
        practice: Option<String>,
        /// Include resolved ones.
        #[arg(long)]
        all: bool,
    },
    /// Acknowledge an escalation: its reminders stop. It closes by itself
    /// when its cause ends (the case is decided, resubmitted, fixed).
    Ack {
        id: i64,
        /// What you are doing about it, for the audit trail.
        #[arg(long)]
        note: Option<String>,
    },
    /// Evaluate the rules now, as the `escalations` job does, and queue mail.
    Scan {
        #[arg(long)]
        practice: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List mail waiting or failing, and why.
    List {
        /// Include mail already sent.
        #[arg(long)]
        all: bool,
    },
    /// Put a failed mail back in line.
    Retry { id: i64 },
    /// Deliver what is due now (the daemon does this by itself).
    Send,
    /// Send a test message (no patient data) to ADDRESS through the
    /// configured transport, directly, to check the mail settings.
    Test { address: String },
}

/// Opens the ledger with the escalation rules attached, so status changes
/// made from the command line raise escalations as the daemon's do.
pub async fn open_ledger(settings: &Settings, playbooks: &[crate::playbook::Playbook]) -> anyhow::Result<Ledger> {
    Ok(open_with_rules(settings, playbooks).await?.0)
}

/// `open_ledger`, and the rules it attached.
async fn open_with_rules(
    settings: &Settings,
    playbooks: &[crate::playbook::Playbook],
) -> anyhow::Result<(Ledger, Arc<Escalator>)> {
    private_dir(&settings.data_dir)
        .with_context(|| format!("cannot create the data directory {}", settings.data_dir.display()))?;
    let ledger = Ledger::open(&settings.database_url).await?;
    let key = crate::console::links::LinkKey::of(&ledger).await?;
    let escalator = Arc::new(Escalator::new(Arc::new(settings.clone()), playbooks, Arc::default()).with_link_key(key));
    ledger.set_escalation_hook(escalator.clone());
    Ok((ledger, escalator))
}

pub async fn escalations(cmd: EscalationsCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    match cmd {
        EscalationsCommand::List { practice, all } => {
            let ledger = open_ledger(settings, &[]).await?;
            let list = ledger.escalations(practice.as_deref(), all).await?;
            print!("{}", render_escalations(&list, settings));
        }
        EscalationsCommand::Ack { id, note } => {
            let ledger = open_ledger(settings, &[]).await?;
            let e = ledger
                .acknowledge_escalation(id, &Actor::current_user(), note.as_deref())
                .await?;
            println!("Escalation #{} acknowledged: {}. Its reminders stop.", e.id, e.summary);
        }
        EscalationsCommand::Scan { practice } => {
            let (playbooks, _) = crate::playbook::load_dir(&settings.playbooks_dir);
            let (ledger, escalator) = open_with_rules(settings, &playbooks).await?;
            let mut opened = 0;
            for p in settings
                .practices
                .iter()
                .filter(|p| practice.as_ref().is_none_or(|x| *x == p.id))
            {
                opened += escalator.scan(&ledger, &p.id).await?;
            }
            let steps = escalator.advance(&ledger).await?;
            println!("{opened} escalation(s) opened, {steps} reminder(s) or next-level step(s) queued.");
        }
    }
    Ok(Outcome::Ok)
}

pub async fn outbox(cmd: OutboxCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    let ledger = open_ledger(settings, &[]).await?;
    match cmd {
        OutboxCommand::List { all } => {
            let list = ledger.outbox(all).await?;
            print!("{}", render_outbox(&list));
        }
        OutboxCommand::Retry { id } => {
            ledger.retry_mail(id).await?;
            println!("Mail {id} is queued again; the daemon's sender delivers it.");
        }
        OutboxCommand::Test { address } => {
            let mailer = Mailer::new(&settings.mail).map_err(|e| anyhow::anyhow!("{e}"))?;
            let now = chrono::Utc::now();
            let domain = settings.mail.domain();
            let mail = crate::mail::OutgoingMail {
                message_id: format!("test-{}@{domain}", now.format("%Y%m%dT%H%M%S%.6f")),
                in_reply_to: None,
                to: vec![address.clone()],
                cc: Vec::new(),
                subject: "[precert] Test message".into(),
                text: "precert can send mail with these settings. This message carries no patient data.\n".into(),
                html: "<p>precert can send mail with these settings. This message carries no patient data.</p>\n"
                    .into(),
            };
            match mailer.send(&mail, now).await {
                Ok(delivered) => println!("Sent to {address}: {delivered}"),
                Err(e) => {
                    eprintln!("error: not sent: {e}");
                    return Ok(Outcome::Problems);
                }
            }
        }
        OutboxCommand::Send => {
            let mailer = Mailer::new(&settings.mail).map_err(|e| anyhow::anyhow!("{e}"))?;
            let round = escalate::send_due(&ledger, &mailer).await?;
            println!("{} sent, {} failed.", round.sent, round.failed);
            if let Some(at) = round.retry_at {
                println!("The mail server did not take mail; the next try is at {at}.");
                return Ok(Outcome::Problems);
            }
        }
    }
    Ok(Outcome::Ok)
}

pub fn render_escalations(list: &[Escalation], settings: &Settings) -> String {
    if list.is_empty() {
        return "No open escalations.\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5}  {:<18} {:<14} {:<5} {:<17} SUMMARY",
        "ID", "REASON", "STATE", "LEVEL", "DUE"
    );
    for e in list {
        let tz = settings
            .practice(&e.practice_id)
            .map(|p| p.timezone)
            .unwrap_or(crate::tz::UTC);
        let due = e
            .due_at
            .map(|d| d.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_else(|| "-".into());
        let state = match e.state {
            EscalationState::Open => format!("open ({} sent)", e.sends),
            s => s.as_str().to_owned(),
        };
        let _ = writeln!(
            out,
            "{:>5}  {:<18} {:<14} {:<5} {:<17} {}",
            e.id,
            e.reason.as_str(),
            state,
            e.level,
            due,
            e.summary
        );
    }
    out
}

pub fn render_outbox(list: &[OutboxEntry]) -> String {
    if list.is_empty() {
        return "The outbox is empty: no mail waiting or failing.\n".into();
    }
    let mut out = String::new();
    for m in list {
        let _ = writeln!(
            out,
            "{:>5}  {:<8} {:<10} attempts {}  to {}\n       {}\n       next try {}{}",
            m.id,
            m.state.as_str(),
            m.kind,
            m.attempts,
            m.recipients.join(", "),
            m.subject,
            m.next_attempt_at.format("%Y-%m-%d %H:%M:%S UTC"),
            m.last_error
                .as_deref()
                .map(|e| format!("\n       last error: {e}"))
                .unwrap_or_default()
        );
    }
    out
}
