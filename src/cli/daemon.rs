//! `precert daemon`: the long-running service (foreground, for systemd).
//! SIGTERM/SIGINT stop it gracefully; SIGHUP reloads the configuration.

use std::path::Path;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::Outcome;

pub async fn run(config: &Path) -> anyhow::Result<Outcome> {
    // Logging first, from the configuration as it is now. A practice whose
    // file does not check is left out by the daemon (and logged there);
    // only problems of precert.toml itself stop it here.
    super::readable(config)?;
    let (settings, _disabled) = crate::config::load_isolated(config, crate::config::Secrets::Resolve)?;
    crate::logging::init(&settings.log);
    tracing::debug!(?settings, "Configuration loaded.");
    // As every command that loads the configuration: end the browsers a dead
    // precert left and remove their profiles.
    crate::browser::reap_orphans(&settings.data_dir);
    drop(settings);
    let stop = CancellationToken::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM received."); stop.cancel(); return; }
                    _ = int.recv() => { tracing::info!("SIGINT received."); stop.cancel(); return; }
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP received: reloading.");
                        let _ = reload_tx.send(()).await;
                    }
                }
            }
        })
    };
    let result = crate::daemon::run(config.to_owned(), reload_rx, stop).await;
    signals.abort();
    result?;
    Ok(Outcome::Ok)
}
