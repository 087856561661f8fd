//! The `precert` command line: parse arguments, load settings, call the
//! library, print. Errors become `anyhow` only here, printed with `{:#}`.
//!
//! Exit codes, as the README gives them: 0 success; 1 the input had
//! problems (invalid rows, a configuration that does not check, a refused
//! status change); 2 usage errors and failures to run at all (the
//! configuration file cannot be read, the database is unavailable).

mod api;
mod cases;
mod console;
mod crd;
mod daemon;
mod db;
mod escalations;
mod export;
mod pas;
mod report;
mod rules;
mod run;
mod schedule;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Secrets, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "precert",
    version,
    about = "Pre-certification automation: submit, track and escalate prior authorizations."
)]
pub struct Cli {
    /// The daemon-wide configuration file; practice files are read from
    /// `practices/` beside it.
    #[arg(
        long,
        short,
        global = true,
        env = "PRECERT_CONFIG",
        default_value = "config/precert.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration and every practice file; print every problem.
    Check,
    /// Import, list and inspect cases.
    #[command(subcommand)]
    Cases(cases::CasesCommand),
    /// Run the daemon in the foreground (for systemd): schedules, job queue,
    /// workers and the HTTP listener. SIGTERM stops it, SIGHUP reloads.
    Daemon,
    /// Run one playbook action for one case, printing each step: the tool
    /// for writing and debugging playbooks.
    Run(run::RunArgs),
    /// The Da Vinci PAS API channel: request Bundles and payer answers.
    #[command(subcommand)]
    Pas(pas::PasCommand),
    /// The Da Vinci CRD channel: does the payer want a pre-cert for a case?
    #[command(subcommand)]
    Crd(crd::CrdCommand),
    /// Show when each practice's jobs fire next, in its local time and UTC.
    Schedule(schedule::ScheduleArgs),
    /// Escalations waiting on a person: list, acknowledge, scan now.
    #[command(subcommand)]
    Escalations(escalations::EscalationsCommand),
    /// Escalation mail waiting or failing, and why.
    #[command(subcommand)]
    Outbox(escalations::OutboxCommand),
    /// The web console alone, for a machine that runs no daemon.
    Console,
    /// The people who may sign in to the console: add, list, disable,
    /// enable, reset-password.
    #[command(subcommand)]
    Users(console::UsersCommand),
    /// The ledger's schema: migrate, or show its status.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// How each payer and practice did over a period, beside what payers
    /// publish; with --late, the evidence of late decisions.
    Report(report::ReportArgs),
    /// The payers' requirement rules: explain a case's decision, apply them
    /// to `new` cases now.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// The intake API's tokens: create (shown once), list, revoke.
    #[command(subcommand)]
    ApiTokens(api::TokensCommand),
    /// The intake API's webhook deliveries: list (failures), retry.
    #[command(subcommand)]
    Webhooks(api::WebhooksCommand),
}

/// How a command ended, for the exit code.
pub enum Outcome {
    Ok,
    /// The command ran, and found problems in its input.
    Problems,
}

pub fn main() -> ExitCode {
    // Everything precert writes (ledger, letters, attachments, mail) may
    // hold PHI: readable by the service user alone.
    #[cfg(unix)]
    // SAFETY: umask only sets the process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    // A command that asks the ledger one thing after another runs on the
    // thread it started on: no worker threads to start for it.
    let quick = matches!(
        cli.command,
        Command::Cases(cases::CasesCommand::Show { .. } | cases::CasesCommand::List { .. })
    );
    let built = if quick {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Problems) => ExitCode::from(1),
        // A configuration that does not check is a problem with the input.
        Err(e) if e.downcast_ref::<config::ConfigErrors>().is_some() => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Check => check(&cli.config),
        Command::Cases(cmd) => {
            let settings = load(&cli.config, Secrets::Skip)?;
            cases::run(cmd, &settings).await
        }
        Command::Pas(cmd) => pas::run(cmd, &cli.config).await,
        Command::Crd(cmd) => crd::run(cmd, &cli.config).await,
        Command::Daemon => daemon::run(&cli.config).await,
        Command::Console => console::serve(&cli.config).await,
        Command::Users(cmd) => {
            let settings = load(&cli.config, Secrets::Skip)?;
            console::users(cmd, &settings).await
        }
        Command::Run(args) => {
            let settings = load(&cli.config, Secrets::Resolve)?;
            run::run(args, settings).await
        }
        Command::Schedule(args) => {
            let settings = load(&cli.config, Secrets::Skip)?;
            schedule::run(args, &settings)
        }
        Command::Escalations(cmd) => {
            let settings = load(&cli.config, Secrets::Skip)?;
            escalations::escalations(cmd, &settings).await
        }
        Command::Outbox(cmd) => {
            // Sending needs the SMTP password.
            let secrets = match cmd {
                escalations::OutboxCommand::Send | escalations::OutboxCommand::Test { .. } => Secrets::Resolve,
                _ => Secrets::Skip,
            };
            let settings = load(&cli.config, secrets)?;
            escalations::outbox(cmd, &settings).await
        }
        Command::Db(cmd) => {
            let settings = load(&cli.config, Secrets::Skip)?;
            db::run(cmd, &settings).await
        }
        Command::Report(args) => {
            let settings = load(&cli.config, Secrets::Skip)?;
            report::run(args, &settings, &cli.config).await
        }
        Command::Rules(cmd) => {
            let settings = load(&cli.config, Secrets::Skip)?;
            rules::run(cmd, &settings).await
        }
        Command::ApiTokens(cmd) => {
            let settings = load(&cli.config, Secrets::Skip)?;
            api::tokens(cmd, &settings).await
        }
        Command::Webhooks(cmd) => {
            let settings = load(&cli.config, Secrets::Skip)?;
            api::webhooks(cmd, &settings).await
        }
    }
}

/// Loads settings and starts logging; the error lists every problem (a
/// `ConfigErrors`, exit 1), or says the file cannot be read (exit 2).
pub fn load(path: &std::path::Path, secrets: Secrets) -> anyhow::Result<Settings> {
    readable(path)?;
    let settings = config::load(path, secrets)?;
    crate::logging::init(&settings.log);
    // Secrets print as [REDACTED]; this line is what proves it in tests.
    tracing::debug!(?settings, "Configuration loaded.");
    // Every command that opens the ledger (the daemon too) first ends the
    // browsers a dead precert left and removes their profiles.
    crate::browser::reap_orphans(&settings.data_dir);
    Ok(settings)
}

/// The configuration file named on the command line can be read: without
/// it nothing can be checked or run, which is a failure to run (exit 2), not
/// a problem in the configuration.
fn readable(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::read(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(anyhow::anyhow!(
            "{}: configuration file not found (pass --config FILE or set PRECERT_CONFIG)",
            path.display()
        )),
        Err(e) => Err(anyhow::anyhow!(
            "{}: cannot read the configuration file: {e}",
            path.display()
        )),
    }
}

/// `precert check`: every problem of the configuration, the practice files
/// and the playbooks, each on its own line, then one count.
fn check(path: &std::path::Path) -> anyhow::Result<Outcome> {
    readable(path)?;
    let loaded = config::load(path, Secrets::Resolve);
    let mut problems = 0;
    let playbooks_dir = match &loaded {
        Ok(settings) => settings.playbooks_dir.clone(),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            problems += errors.0.len();
            config::default_playbooks_dir(path)
        }
    };
    let (playbooks, playbook_errors) = crate::playbook::load_dir(&playbooks_dir);
    for e in &playbook_errors {
        eprintln!("{e}");
    }
    problems += playbook_errors.len();
    let (_, published_errors) = crate::report::published::load_dir(&crate::report::published::default_dir(path));
    for e in &published_errors {
        eprintln!("{e}");
    }
    problems += published_errors.len();
    // Requirement rules beside the playbooks, by the playbooks' machinery.
    let (rules, mut rule_errors) = crate::requirements::RuleBook::load_dir(&playbooks_dir);
    for f in rules.files() {
        if !playbooks.iter().any(|p| p.id == f.playbook) {
            rule_errors.push(crate::playbook::PlaybookError {
                file: f.path.clone(),
                at: crate::playbook::Loc::default(),
                message: format!(
                    "no playbook `{}` for these rules (the file is named PLAYBOOK_ID.requirements.yaml)",
                    f.playbook
                ),
            });
        }
    }
    for e in &rule_errors {
        eprintln!("{e}");
    }
    problems += rule_errors.len();
    if let Ok(settings) = &loaded {
        crate::logging::init(&settings.log);
        tracing::debug!(?settings, "Configuration checked.");
        let binding_errors = crate::playbook::check_bindings(settings, &playbooks);
        for e in &binding_errors {
            eprintln!("{e}");
        }
        problems += binding_errors.len();
        println!(
            "{}: {}",
            settings.source.display(),
            if problems == 0 { "ok" } else { "has problems" }
        );
        println!("  data directory  {}", settings.data_dir.display());
        println!("  database        {}", settings.database_url);
        for p in &settings.practices {
            let payers: Vec<&str> = p.payers.keys().map(String::as_str).collect();
            println!(
                "  practice {:<20} {} ({}; payers: {}){}",
                p.id,
                p.name,
                p.timezone,
                payers.join(", "),
                if p.enabled { "" } else { " [disabled]" }
            );
        }
        for pb in &playbooks {
            let actions: Vec<&str> = pb.actions.keys().map(|a| a.as_str()).collect();
            let how = match (pb.api, actions.is_empty()) {
                (Some(crate::playbook::ApiKind::Pas), true) => "Da Vinci PAS, built in".to_owned(),
                _ => format!("actions: {}", actions.join(", ")),
            };
            let channel = match pb.channel {
                crate::playbook::Channel::Web => "web",
                crate::playbook::Channel::Api => "api",
            };
            let crd = pb
                .crd
                .as_ref()
                .map(|c| format!("; CRD {} at {}", c.hook.as_str(), c.url))
                .unwrap_or_default();
            println!("  playbook {:<20} {} ({channel}; {how}{crd})", pb.id, pb.name);
        }
        for f in rules.files() {
            println!(
                "  rules    {:<20} version {} ({} rule{}, {})",
                f.playbook,
                f.version,
                f.rules.len(),
                if f.rules.len() == 1 { "" } else { "s" },
                f.path.display()
            );
        }
    }
    if problems == 0 {
        println!(
            "configuration ok: {} practice(s), {} playbook(s)",
            loaded.as_ref().map(|s| s.practices.len()).unwrap_or(0),
            playbooks.len()
        );
        Ok(Outcome::Ok)
    } else {
        eprintln!("{problems} problem{} found", if problems == 1 { "" } else { "s" });
        Ok(Outcome::Problems)
    }
}
