//! `precert console`: the web console alone, for a machine that runs no
//! daemon (the daemon serves it too); and `precert users`: the people who
//! may sign in to it, kept in the ledger.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::escalations::open_ledger;
use super::Outcome;
use crate::config::{Secrets, Settings};
use crate::console::{self, Role};

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user. The password is asked for on the terminal, or read from
    /// standard input's first line with --password-stdin.
    Add {
        name: String,
        /// admin (every practice, users), supervisor or operator.
        #[arg(long)]
        role: String,
        /// A practice the user sees (supervisor and operator; repeat for
        /// several).
        #[arg(long = "practice", value_name = "ID")]
        practices: Vec<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the users, their roles, practices and state.
    List,
    /// Stop a user from signing in; their sessions end at once.
    Disable { name: String },
    /// Let a disabled user sign in again.
    Enable { name: String },
    /// Set a new password; every session of the user ends and a lockout is
    /// lifted.
    ResetPassword {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user's two-step sign-in (a lost phone): they sign in with
    /// the password alone until they set it up again at /account.
    RemoveTotp { name: String },
}

/// `precert console`: serves until SIGTERM or SIGINT.
pub async fn serve(config: &Path) -> anyhow::Result<Outcome> {
    let settings = super::load(config, Secrets::Skip)?;
    let (playbooks, _) = crate::playbook::load_dir(&settings.playbooks_dir);
    let ledger = open_ledger(&settings, &playbooks).await?;
    let stop = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received."),
                _ = int.recv() => tracing::info!("SIGINT received."),
            }
            stop.cancel();
        });
    }
    let running = console::serve(Arc::new(settings), ledger.clone(), stop).await?;
    eprintln!("Console at http://{} (stop with Ctrl-C)", running.addr);
    running.task.await.context("the console's task failed")?;
    ledger.close().await;
    Ok(Outcome::Ok)
}

/// A password: asked for on the terminal without echo, or the first line
/// of standard input.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let line = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line
    } else {
        let first = prompt("Password: ")?;
        let again = prompt("Again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ; nothing was changed");
        first
    };
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Reads one line from the terminal with echo off.
fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}");
    std::io::stderr().flush()?;
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is standard input, checked to be a terminal by the caller.
    let have = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: as above; restores below whatever happens to the read.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if have {
        // SAFETY: puts back the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub async fn users(cmd: UsersCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    let ledger = open_ledger(settings, &[]).await?;
    let problem = |e: console::UserError| -> anyhow::Result<Outcome> {
        match e {
            console::UserError::Store(e) => Err(e.into()),
            other => {
                eprintln!("error: {other}");
                Ok(Outcome::Problems)
            }
        }
    };
    match cmd {
        UsersCommand::Add {
            name,
            role,
            practices,
            password_stdin,
        } => {
            let role: Role = match role.parse() {
                Ok(r) => r,
                Err(e) => return problem(e),
            };
            let password = read_password(password_stdin)?;
            if let Err(e) = console::users::add(&ledger, settings, &name, role, &practices, &password).await {
                return problem(e);
            }
            println!("User {name} added ({role}).");
        }
        UsersCommand::List => {
            for u in console::users::list(&ledger).await.map_err(anyhow::Error::from)? {
                let practices = if u.role == "admin" {
                    "every practice".to_owned()
                } else {
                    u.practices.join(", ")
                };
                let state = if u.disabled {
                    "disabled".to_owned()
                } else if u.locked_until.is_some_and(|t| t > ledger.now()) {
                    "locked".to_owned()
                } else {
                    "active".to_owned()
                };
                let last = u
                    .last_login_at
                    .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or_else(|| "never".into());
                let two_step = if u.has_totp() { "totp" } else { "password" };
                println!(
                    "{:<20} {:<10} {:<8} {two_step:<8} last sign-in {last}  {practices}",
                    u.name, u.role, state
                );
            }
        }
        UsersCommand::RemoveTotp { name } => {
            if let Err(e) = console::users::clear_totp(&ledger, &name).await {
                return problem(e);
            }
            println!("User {name} signs in with the password alone until they set up two-step sign-in again.");
        }
        UsersCommand::Disable { name } => {
            if let Err(e) = console::users::set_disabled(&ledger, &name, true).await {
                return problem(e);
            }
            println!("User {name} disabled; their sessions ended.");
        }
        UsersCommand::Enable { name } => {
            if let Err(e) = console::users::set_disabled(&ledger, &name, false).await {
                return problem(e);
            }
            println!("User {name} may sign in again.");
        }
        UsersCommand::ResetPassword { name, password_stdin } => {
            let password = read_password(password_stdin)?;
            if let Err(e) = console::users::reset_password(&ledger, &name, &password).await {
                return problem(e);
            }
            println!("Password of {name} set; every session of theirs ended.");
        }
    }
    Ok(Outcome::Ok)
}
