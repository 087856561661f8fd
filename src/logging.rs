//! Structured logs with tracing: human-readable on a terminal, JSON lines
//! for log shippers. Logs go to stderr, so command output on stdout stays
//! clean for pipes.
//!
//! PHI masking is not a filter over formatted text (that would be guesswork);
//! the PHI types mask themselves (`crate::phi`), and this module only flips
//! the process-wide switch when the configuration asks for unmasked logs.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// `PRECERT_LOG` overrides the configured filter, like `RUST_LOG`.
pub const FILTER_ENV: &str = "PRECERT_LOG";

/// Installs the global subscriber. Safe to call once per process; later
/// calls are ignored (tests may load several configurations).
pub fn init(settings: &LogSettings) {
    crate::phi::reveal_in_logs(!settings.mask_phi);
    // sqlx logs every statement at debug; keep it to warnings unless asked.
    let directives = std::env::var(FILTER_ENV).unwrap_or_else(|_| format!("{},sqlx=warn", settings.level));
    let filter = EnvFilter::builder().parse_lossy(directives);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init(),
    };
    // Already installed: keep the first subscriber.
    drop(result);
}
