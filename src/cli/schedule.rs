//! `precert schedule`: when each practice's jobs fire next, in the
//! practice's local time and in UTC.

use anyhow::{bail, Context};
use chrono::{DateTime, Timelike, Utc};
use clap::Args;

use super::Outcome;
use crate::config::Settings;
use crate::schedule::practice_schedules;

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Only this practice.
    #[arg(long)]
    pub practice: Option<String>,
    /// Fire times to show per job.
    #[arg(long, short = 'n', default_value_t = 3)]
    pub count: usize,
    /// Count from this instant (RFC 3339, e.g. 2026-03-07T12:00:00Z)
    /// instead of now.
    #[arg(long)]
    pub after: Option<String>,
}

pub fn run(args: ScheduleArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let after = match &args.after {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .with_context(|| format!("--after `{s}` is not an RFC 3339 time such as 2026-03-07T12:00:00Z"))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let practices: Vec<_> = match &args.practice {
        Some(id) => match settings.practice(id) {
            Some(p) => vec![p],
            None => bail!("no practice `{id}` in {}", settings.practices_dir.display()),
        },
        None => settings.practices.iter().collect(),
    };
    for (i, p) in practices.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let note = if p.enabled { "" } else { " [disabled: no jobs run]" };
        println!("{} ({}){note}", p.id, p.timezone);
        for js in practice_schedules(p)? {
            let fires = js.schedule.next_fires(after, args.count);
            let label = format!("  {:<12} {:<20}", js.job.as_str(), js.schedule.expr());
            if fires.is_empty() && args.count > 0 {
                println!("{label} never again");
            }
            for (k, t) in fires.iter().enumerate() {
                let local = t.with_timezone(&p.timezone);
                let (local_fmt, utc_fmt) = if t.second() == 0 {
                    ("%a %Y-%m-%d %H:%M %Z", "%Y-%m-%d %H:%M UTC")
                } else {
                    ("%a %Y-%m-%d %H:%M:%S %Z", "%Y-%m-%d %H:%M:%S UTC")
                };
                let lead = if k == 0 { label.clone() } else { " ".repeat(label.len()) };
                println!("{lead} {}  {}", local.format(local_fmt), t.format(utc_fmt));
            }
        }
    }
    Ok(Outcome::Ok)
}
