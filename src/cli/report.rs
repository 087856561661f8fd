//! `precert report`: how each payer and practice did over a period, and the
//! evidence of late decisions (`docs/reports.md`).

use std::path::PathBuf;

use crate::tz::Tz;
use anyhow::Context as _;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use clap::{Args, ValueEnum};

use super::Outcome;
use crate::config::Settings;
use crate::report::{self, published, render, Dimension, ReportQuery};
use crate::store::{Ledger, ReportScope};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables for a terminal.
    Text,
    /// Figures one row per group; with --late, the late requests.
    Csv,
    /// The whole report.
    Json,
    /// The late-decision evidence as a printable page (implies --late).
    Html,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Requests first submitted on or after this day (YYYY-MM-DD, in the
    /// practice's zone with --practice, else UTC; or an RFC 3339 time).
    /// Default: the first of January this year.
    #[arg(long)]
    from: Option<String>,
    /// …and up to this day, inclusive (or before this RFC 3339 time).
    /// Default: now.
    #[arg(long)]
    to: Option<String>,
    /// Read the ledger as it stood at this time (RFC 3339 or a day's end):
    /// a past report made again says the same. Default: now.
    #[arg(long)]
    as_of: Option<String>,
    /// One practice only (its time zone then reads the days).
    #[arg(long)]
    practice: Option<String>,
    /// One payer only (its id in precert, as in the practice's payers).
    #[arg(long)]
    payer: Option<String>,
    /// Group further by plan-type, cpt (the first service line's code),
    /// setting or state.
    #[arg(long, value_parser = parse_dimension)]
    by: Option<Dimension>,
    /// List each request decided past its legal window (or undecided past
    /// it), with the events that prove it.
    #[arg(long)]
    late: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Where payers' published figures are (`PAYER-YEAR.toml`). Default:
    /// `reports/published/` in the project (beside `config/`).
    #[arg(long)]
    published: Option<PathBuf>,
}

fn parse_dimension(s: &str) -> Result<Dimension, String> {
    s.parse()
}

/// A `--from`/`--to`/`--as-of` value: an RFC 3339 time, or a day in `tz`
/// (its start; with `end`, the start of the next day).
pub fn parse_bound(flag: &str, value: &str, tz: Tz, end: bool) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d")
        .with_context(|| format!("--{flag} {value}: expected a day (YYYY-MM-DD) or an RFC 3339 time"))?;
    let day = if end {
        day.succ_opt().with_context(|| format!("--{flag} {value}: too far"))?
    } else {
        day
    };
    Ok(report::start_of(day, tz))
}

pub async fn run(args: ReportArgs, settings: &Settings, config: &std::path::Path) -> anyhow::Result<Outcome> {
    if let Some(p) = &args.practice {
        if settings.practice(p).is_none() {
            let known: Vec<&str> = settings.practices.iter().map(|p| p.id.as_str()).collect();
            anyhow::bail!("--practice {p}: no such practice (configured: {})", known.join(", "));
        }
    }
    let tz = args
        .practice
        .as_deref()
        .map_or(crate::tz::UTC, |p| report::practice_tz(settings, p));
    let now = Utc::now();
    let as_of = match &args.as_of {
        Some(v) => parse_bound("as-of", v, tz, true)?,
        None => now,
    };
    let to = match &args.to {
        Some(v) => parse_bound("to", v, tz, true)?,
        None => as_of,
    };
    let from = match &args.from {
        Some(v) => parse_bound("from", v, tz, false)?,
        None => report::start_of(
            NaiveDate::from_ymd_opt(to.with_timezone(&tz).year(), 1, 1).expect("the first of January"),
            tz,
        ),
    };
    if from >= to {
        anyhow::bail!("--from must be before --to (the period is empty)");
    }
    let dir = args.published.clone().unwrap_or_else(|| published::default_dir(config));
    let (figures, problems) = published::load_dir(&dir);
    for e in &problems {
        eprintln!("{e}");
    }
    let ledger = Ledger::open(&settings.database_url).await?;
    let query = ReportQuery {
        scope: ReportScope {
            from,
            to,
            as_of,
            practice: args.practice.clone(),
            payer: args.payer.clone(),
            allowed: None,
        },
        by: args.by,
        late: args.late || args.format == Format::Html,
    };
    let report = report::build(&ledger, settings, &figures, &query).await;
    ledger.close().await;
    let report = report?;
    let out = match args.format {
        Format::Text => render::text(&report),
        Format::Csv if args.late => render::late_csv(&report.late),
        Format::Csv => render::figures_csv(&report),
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Html => render::late_html(&report, |p| report::practice_tz(settings, p), render::Style::Inline),
    };
    print!("{out}");
    if problems.is_empty() {
        Ok(Outcome::Ok)
    } else {
        eprintln!(
            "{} problem{} in published figures; those files were left out",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        Ok(Outcome::Problems)
    }
}
