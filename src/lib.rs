//! precert: pre-certification (prior authorization) automation.
//!
//! See `ARCHITECTURE.md` for the map. In short: `config` loads settings,
//! `intake` turns practice files into validated `case`s, `store` keeps them
//! and their audit trail, and `cli` is the thin layer over all of it.

pub mod api;
pub mod browser;
pub mod case;
pub mod cli;
pub mod config;
pub mod console;
pub mod crd;
pub mod daemon;
pub mod engine;
pub mod escalate;
pub mod files;
pub mod ids;
pub mod intake;
pub mod limits;
pub mod logging;
pub mod mail;
pub mod pas;
pub mod phi;
pub mod playbook;
pub mod queue;
pub mod report;
pub mod requirements;
pub mod schedule;
pub mod scrub;
pub mod store;
pub mod totp;
pub mod tz;
