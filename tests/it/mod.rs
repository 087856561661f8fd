mod config;
mod intake;
mod ledger;
mod logging;
pub mod support;
