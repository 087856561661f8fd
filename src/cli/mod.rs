//! The `precert` command line: parse arguments, load settings, call the
//! library, print. Errors become `anyhow` only here, printed with `{:#}`.
//!
//! Exit codes: 0 success; 1 the input had problems (invalid rows, a
//! configuration that does not check, a refused status change); 2 usage
//! errors and failures to run at all.

mod cases;

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
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Problems) => ExitCode::from(1),
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
    }
}

/// Loads settings and starts logging; the error lists every problem.
pub fn load(path: &std::path::Path, secrets: Secrets) -> anyhow::Result<Settings> {
    let settings = config::load(path, secrets).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::logging::init(&settings.log);
    // Secrets print as [REDACTED]; this line is what proves it in tests.
    tracing::debug!(?settings, "Configuration loaded.");
    Ok(settings)
}

fn check(path: &std::path::Path) -> anyhow::Result<Outcome> {
    match config::load(path, Secrets::Resolve) {
        Ok(settings) => {
            crate::logging::init(&settings.log);
            tracing::debug!(?settings, "Configuration checked.");
            println!("{}: ok", settings.source.display());
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
            println!("configuration ok: {} practice(s)", settings.practices.len());
            Ok(Outcome::Ok)
        }
        Err(errors) => {
            eprint!("{errors}");
            Ok(Outcome::Problems)
        }
    }
}
