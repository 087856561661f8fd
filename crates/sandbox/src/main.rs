//! `precert-sandbox`: serves the sandbox payer until Ctrl-C or SIGTERM.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use precert_sandbox::{Sandbox, SandboxConfig};

/// A local sandbox payer: prior-authorization portal, Da Vinci PAS API and admin API.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML). Default: the built-in demo configuration.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8700", value_name = "ADDR")]
    listen: String,
    /// Also append every handled HTTP request to FILE as JSON lines (overrides the
    /// configuration's `payer.request_log_path`).
    #[arg(long, value_name = "FILE")]
    request_log: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("precert-sandbox: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => SandboxConfig::from_toml_file(path).with_context(|| format!("loading {}", path.display()))?,
        None => SandboxConfig::default_demo(),
    };
    if let Some(path) = args.request_log {
        config.request_log_path = Some(path);
    }
    if args.check {
        println!("configuration is valid");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        // Signal handlers are installed before the address is announced, so a SIGTERM
        // that follows the announcement is always a graceful stop.
        let shutdown = shutdown_signal().context("installing signal handlers")?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        // One plain line on stdout tells scripts (and tests) where the sandbox listens.
        println!("precert-sandbox listening on http://{addr}");
        tracing::info!(%addr, "Sandbox payer listening: portal at http://{addr}/portal/login, PAS API at http://{addr}/fhir, admin at http://{addr}/admin.");
        Sandbox::run(config, listener, shutdown).await?;
        tracing::info!("Sandbox payer stopped.");
        Ok(())
    })
}

/// A future that completes on SIGINT or SIGTERM; the handlers are registered at once.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
