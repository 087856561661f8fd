//! The precert sandbox payer: a realistic prior-authorization portal and Da Vinci PAS
//! FHIR API served locally, with scenario rules, switchable hazards and an admin API.
//!
//! Start it in-process from a test:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use precert_sandbox::{Sandbox, SandboxConfig};
//! let handle = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0").await?;
//! println!("portal at {}/portal/login", handle.base_url());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

// Handlers short-circuit with a ready `Response` as the error (axum's idiom); it is built
// at most once per request, so its size does not matter.
#![allow(clippy::result_large_err)]

mod admin;
pub mod codes;
pub mod config;
mod fhir;
mod pdf;
mod portal;
mod server;
mod state;
pub mod store;
pub mod totp;

pub use config::{ConfigError, CrdAnswer, SandboxConfig};
pub use server::{Sandbox, SandboxHandle};
pub use state::{Hazards, HazardsPatch, LogEntry, OffSpec, SearchFailure};
pub use store::{AuthRequest, Decision, Status};

/// Renders a decision letter PDF; public so other crates can test their PDF handling.
pub use pdf::text_pdf;
