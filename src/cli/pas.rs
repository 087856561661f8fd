//! `precert pas …`: look at the Da Vinci PAS channel's two halves by hand —
//! the request Bundle a case would become, and what a payer's answer means.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;

use super::Outcome;
use crate::config::Settings;
use crate::pas;
use crate::store::{private_dir, Ledger};

#[derive(Debug, Subcommand)]
pub enum PasCommand {
    /// Print the PAS request Bundle (FHIR JSON) that `Claim/$submit` would
    /// send for a case. It holds the patient's PHI and attachments in full.
    Bundle {
        /// The number from `cases list`, `PRACTICE/CASE_ID`, or a case ID.
        #[arg(long = "case")]
        case: String,
    },
    /// Read a payer's answer (a ClaimResponse, a PAS response Bundle, a
    /// notification Bundle or an OperationOutcome) and print the decision
    /// per item and the case status it means, as JSON.
    Decode { file: PathBuf },
}

pub async fn run(cmd: PasCommand, config: &Path) -> anyhow::Result<Outcome> {
    match cmd {
        PasCommand::Bundle { case } => {
            let settings = super::load(config, crate::config::Secrets::Skip)?;
            bundle(&settings, &case).await
        }
        PasCommand::Decode { file } => decode(&file),
    }
}

async fn bundle(settings: &Settings, id: &str) -> anyhow::Result<Outcome> {
    private_dir(&settings.data_dir)
        .with_context(|| format!("cannot create the data directory {}", settings.data_dir.display()))?;
    let ledger = Ledger::open(&settings.database_url).await?;
    let case = super::cases::resolve(&ledger, id).await;
    ledger.close().await;
    let case = case?;
    let practice = settings.practice(&case.data.practice_id).with_context(|| {
        format!(
            "case {}: practice {} is not configured",
            case.key(),
            case.data.practice_id
        )
    })?;
    let insurer_name = practice
        .payers
        .get(&case.data.coverage.payer)
        .and_then(|b| b.account.get("payer_name"))
        .map(String::as_str);
    let ctx = pas::Context {
        practice,
        data_dir: &settings.data_dir,
        insurer_name,
        now: chrono::Utc::now(),
    };
    let bundle = pas::request_bundle(&case.data, &ctx)?;
    println!("{}", bundle.to_json_pretty());
    Ok(Outcome::Ok)
}

fn decode(file: &Path) -> anyhow::Result<Outcome> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    match pas::decode_str(&text) {
        Ok(outcome) => {
            for w in &outcome.warnings {
                eprintln!("warning: {}: off-spec: {w}", file.display());
            }
            println!("{}", serde_json::to_string_pretty(&outcome)?);
            Ok(Outcome::Ok)
        }
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            Ok(Outcome::Problems)
        }
    }
}
