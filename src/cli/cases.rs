//! `precert cases …`: import, list, show and move cases by hand.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Subcommand, ValueEnum};

use super::Outcome;
use crate::case::{CaseRecord, CaseStatus};
use crate::config::Settings;
use crate::intake::{self, Format};
use crate::store::{private_dir, Actor, CaseFilter, CaseName, Ledger, Lookup};

#[derive(Debug, Subcommand)]
pub enum CasesCommand {
    /// Import cases from a CSV or JSON file (see README: "Case files").
    /// Valid records are stored; invalid ones are listed by line, field and
    /// reason, and the exit code is 1. Importing a file again adds nothing.
    Import {
        file: PathBuf,
        /// The practice for records without a practice_id.
        #[arg(long)]
        practice: Option<String>,
        /// The file's format (default: from its extension).
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
    },
    /// List cases, oldest first, a page at a time (100 by default; the
    /// last line says how to get the next). Patients appear as initials.
    List {
        #[arg(long)]
        practice: Option<String>,
        #[arg(long)]
        payer: Option<String>,
        #[arg(long)]
        status: Option<CaseStatus>,
        /// Only the cases that need a decision on whether a pre-cert is
        /// required: `new` cases no requirement rule covers (`precert rules
        /// explain CASE` says why).
        #[arg(long, conflicts_with = "status")]
        needs_decision: bool,
        /// `table` (default), or `csv` / `json` for a practice's own system
        /// (auth numbers posted back): the table's fields plus the decision's
        /// auth number, dates and payer reference; no more patient details
        /// than the table (initials). The paging note goes to stderr.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Cases per page.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Start after this case number (the cursor the previous page names).
        #[arg(long, value_name = "ID")]
        after: Option<i64>,
        /// Every case, page after page (streamed: memory is one page's).
        #[arg(long, conflicts_with = "limit")]
        all: bool,
    },
    /// Show a case: its data, decision and event timeline. ID is the number
    /// from `cases list`, `PRACTICE/CASE_ID`, or the practice's case ID.
    Show {
        id: String,
        /// Show the patient's full name, birth date and member ID.
        #[arg(long)]
        phi: bool,
    },
    /// Move a case to another status by hand (a person resolving what
    /// automation could not). Moves the status graph forbids are refused.
    SetStatus {
        id: String,
        status: CaseStatus,
        /// Why, for the audit trail.
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Csv,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Csv,
    Json,
}

impl clap::ValueEnum for CaseStatus {
    fn value_variants<'a>() -> &'a [Self] {
        &CaseStatus::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

pub async fn run(cmd: CasesCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    private_dir(&settings.data_dir)
        .with_context(|| format!("cannot create the data directory {}", settings.data_dir.display()))?;
    if let CasesCommand::Show { id, phi } = &cmd {
        return show(settings, id, *phi).await;
    }
    // Reading needs no escalation rules (nothing is written that could
    // raise one) and no link key: the plain ledger, opened faster.
    let ledger = match cmd {
        CasesCommand::List { .. } => crate::store::Ledger::open(&settings.database_url).await?,
        _ => super::escalations::open_ledger(settings, &[]).await?,
    };
    let outcome = match cmd {
        CasesCommand::Import { file, practice, format } => import(&ledger, settings, file, practice, format).await,
        CasesCommand::List {
            practice,
            payer,
            status,
            needs_decision,
            format,
            limit,
            after,
            all,
        } => {
            let filter = CaseFilter {
                practice,
                payer,
                status: if needs_decision { Some(CaseStatus::New) } else { status },
            };
            list(&ledger, &filter, after, limit as usize, all, format).await?;
            Ok(Outcome::Ok)
        }
        CasesCommand::Show { .. } => unreachable!("shown above"),
        CasesCommand::SetStatus { id, status, note } => {
            let case = resolve(&ledger, &id).await?;
            if status == crate::case::CaseStatus::Submitting {
                eprintln!(
                    "error: a case becomes submitting only by being submitted, which takes its submission lease: \
                     `precert run PLAYBOOK submit --case {}`",
                    case.key()
                );
                ledger.close().await;
                return Ok(Outcome::Problems);
            }
            match ledger
                .transition(case.id, status, &Actor::current_user(), note.as_deref())
                .await
            {
                Ok(from) => {
                    println!("{}: {from} → {status}", case.key());
                    Ok(Outcome::Ok)
                }
                Err(e) if e.is_illegal_transition() || matches!(e, crate::store::StoreError::Owned { .. }) => {
                    eprintln!("error: {e}");
                    Ok(Outcome::Problems)
                }
                Err(e) => Err(e.into()),
            }
        }
    };
    ledger.close().await;
    outcome
}

/// Prints a page of cases, or with `all` every page, as they are read.
/// As a table the paging note is its last line; as CSV or JSON (read by
/// programs) it goes to stderr.
async fn list(
    ledger: &Ledger,
    filter: &CaseFilter,
    after: Option<i64>,
    limit: usize,
    all: bool,
    format: ListFormat,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    // One more than a page says whether another follows.
    let page = if all { 500 } else { limit };
    let mut cursor = after;
    let mut shown = 0usize;
    let mut out = std::io::stdout().lock();
    match format {
        ListFormat::Table => write!(out, "{}", render_header())?,
        ListFormat::Csv => write!(out, "{}", super::export::csv_header())?,
        ListFormat::Json => write!(out, "[")?,
    }
    loop {
        let mut cases = ledger.list_page(filter, cursor, page + 1).await?;
        let more = cases.len() > page;
        cases.truncate(page);
        let mut text = String::new();
        for c in &cases {
            match format {
                ListFormat::Table => render_row(&mut text, &c.case, c.letters),
                ListFormat::Csv => super::export::csv_row(&mut text, &c.case, c.letters),
                ListFormat::Json => {
                    if shown > 0 || !text.is_empty() {
                        text.push(',');
                    }
                    text.push('\n');
                    text.push_str(&super::export::json_row(&c.case, c.letters).to_string());
                }
            }
        }
        write!(out, "{text}")?;
        shown += cases.len();
        cursor = cases.last().map(|c| c.case.id).or(cursor);
        if more && all {
            continue;
        }
        if format == ListFormat::Json {
            writeln!(out, "{}]", if shown > 0 { "\n" } else { "" })?;
        }
        let note = if more {
            let last = cursor.unwrap_or_default();
            format!("{shown} case(s) shown; more follow: --after {last} for the next page, --all for every case")
        } else {
            format!("{shown} case(s)")
        };
        match format {
            ListFormat::Table => writeln!(out, "{note}")?,
            ListFormat::Csv | ListFormat::Json => eprintln!("{note}"),
        }
        return Ok(());
    }
}

async fn import(
    ledger: &Ledger,
    settings: &Settings,
    file: PathBuf,
    practice: Option<String>,
    format: Option<FormatArg>,
) -> anyhow::Result<Outcome> {
    let format = match format {
        Some(FormatArg::Csv) => Format::Csv,
        Some(FormatArg::Json) => Format::Json,
        None => match Format::from_path(&file) {
            Some(f) => f,
            None => bail!(
                "{}: cannot tell the format from the extension; pass --format csv or --format json",
                file.display()
            ),
        },
    };
    if let Some(p) = &practice {
        if settings.practice(p).is_none() {
            bail!(
                "--practice {p}: no such practice in {}",
                settings.practices_dir.display()
            );
        }
    }
    let base_dir = file.parent().map(PathBuf::from).unwrap_or_default();
    let ctx = intake::Context {
        settings,
        default_practice: practice.as_deref(),
        base_dir: &base_dir,
        today: chrono::Utc::now().date_naive(),
    };
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} cases {elapsed}")
            .expect("a valid progress template"),
    );
    let actor = Actor::current_user();
    let report = intake::import_file(&file, format, &ctx, ledger, &actor, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .await?;
    bar.finish_and_clear();
    for w in &report.warnings {
        eprintln!("warning: {}: {w}", file.display());
    }
    for problem in &report.invalid {
        let case = problem
            .case_ref
            .as_deref()
            .map(|c| format!(" (case {c})"))
            .unwrap_or_default();
        for e in &problem.errors {
            eprintln!("{}:{}{case}: {e}", file.display(), problem.line);
        }
    }
    println!(
        "{}: {} record(s): {} created, {} updated, {} unchanged, {} invalid",
        file.display(),
        report.records,
        report.created,
        report.updated,
        report.unchanged,
        report.invalid.len()
    );
    // Cases that arrived without saying whether a pre-cert is required:
    // the payers' requirement rules decide them now.
    if !report.undecided.is_empty() {
        let book = super::rules::load_rules(settings);
        let r = crate::requirements::decide_cases(ledger, settings, &book, &report.undecided).await?;
        if r.looked > 0 {
            println!(
                "requirement rules: {} case(s) decided ({} required, {} not required); {} need a decision (precert cases list --needs-decision)",
                r.decided(),
                r.required,
                r.not_required,
                r.undecided
            );
        }
    }
    Ok(if report.is_clean() {
        Outcome::Ok
    } else {
        Outcome::Problems
    })
}

/// A case by ledger number, `PRACTICE/CASE_ID`, or bare case ID.
pub(crate) async fn resolve(ledger: &Ledger, id: &str) -> anyhow::Result<CaseRecord> {
    found(id, ledger.lookup(&CaseName::parse(id)).await?)
}

/// The case a name found, or what the name did not find.
fn found<T>(id: &str, lookup: Lookup<T>) -> anyhow::Result<T> {
    match lookup {
        Lookup::Found(t) => Ok(t),
        Lookup::Missing => bail!("no case {id}"),
        Lookup::Ambiguous(keys) => bail!(
            "case ID {id} is used by several practices; name one of: {}",
            keys.join(", ")
        ),
    }
}

/// `precert cases show`: on a SQLite ledger of this precert's schema, read
/// in place (no pool, no worker thread: a command a person waits on);
/// otherwise through the ledger, opened (and migrated) as every command
/// opens it.
async fn show(settings: &Settings, id: &str, phi: bool) -> anyhow::Result<Outcome> {
    let name = CaseName::parse(id);
    let view = match crate::store::case_view_in_place(&settings.database_url, &name).await? {
        Some(view) => view,
        None => {
            let ledger = Ledger::open_single(&settings.database_url).await?;
            let view = ledger.case_view(&name).await;
            ledger.close().await;
            view?
        }
    };
    let v = found(id, view)?;
    let mut out = render_case(&v.case, &v.events, &v.letters, phi);
    if let Some(t) = v.last_polled {
        let _ = writeln!(
            out,
            "  last asked   {} (the payer said nothing new)",
            t.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    if let Some(o) = v.owner {
        let _ = writeln!(
            out,
            "  being submitted by {} since {} (lease {}, runs to {})",
            o.holder,
            o.since.format("%Y-%m-%d %H:%M:%S UTC"),
            o.token,
            o.until.format("%H:%M:%S UTC")
        );
    }
    if !v.escalations.is_empty() {
        out.push_str("  escalations\n");
        // Oldest first, as the timeline.
        for e in v.escalations.iter().rev() {
            let _ = writeln!(
                out,
                "    #{:<5} {:<18} {:<12} level {}  {} mail(s)  opened {}",
                e.id,
                e.reason.as_str(),
                e.state.as_str(),
                e.level,
                e.sends,
                e.opened_at.format("%Y-%m-%d %H:%M UTC")
            );
        }
    }
    // One write: the whole case or nothing.
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(Outcome::Ok)
}

fn codes(case: &CaseRecord) -> String {
    case.data
        .service_lines
        .iter()
        .map(|l| l.code.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The case table's heading.
pub fn render_header() -> String {
    format!(
        "{:>5}  {:<32} {:<10} {:<18} {:<8} {:<10} {:<16} {:<8} PATIENT\n",
        "ID", "CASE", "PAYER", "STATUS", "URGENCY", "SERVICE", "CODES", "LETTERS"
    )
}

/// One case's row, with how many letters it has.
pub fn render_row(out: &mut String, c: &CaseRecord, letters: usize) {
    let _ = writeln!(
        out,
        "{:>5}  {:<32} {:<10} {:<18} {:<8} {:<10} {:<16} {:<8} {}",
        c.id,
        c.key(),
        c.data.coverage.payer,
        c.status.as_str(),
        c.data.urgency.as_str(),
        c.data.service_dates.start,
        codes(c),
        letters,
        c.data.patient.name.initials()
    );
}

pub fn render_case(
    c: &CaseRecord,
    events: &[crate::store::CaseEvent],
    letters: &[crate::store::Letter],
    phi: bool,
) -> String {
    let d = &c.data;
    let p = &d.patient;
    let mut out = String::new();
    let _ = writeln!(out, "Case {}  {}", c.id, c.key());
    let _ = writeln!(
        out,
        "  status       {} (updated {})",
        c.status,
        c.updated_at.format("%Y-%m-%d %H:%M UTC")
    );
    let (name, born, member) = if phi {
        (
            p.name.expose_full(),
            p.birth_date.to_string(),
            p.member_id.expose().to_owned(),
        )
    } else {
        (
            p.name.initials(),
            p.birth_date.format("%Y").to_string(),
            p.member_id.masked(),
        )
    };
    let group = p
        .group_number
        .as_deref()
        .map(|g| format!("  group {g}"))
        .unwrap_or_default();
    let _ = writeln!(out, "  patient      {name}  born {born}  member {member}{group}");
    let _ = writeln!(
        out,
        "  coverage     {} · {} ({}, {})",
        d.coverage.payer, d.coverage.plan, d.coverage.plan_type, d.coverage.state
    );
    for (label, pr) in [
        ("requesting", &d.requesting_provider),
        ("servicing ", &d.servicing_provider),
    ] {
        let _ = writeln!(
            out,
            "  {label}   {}  NPI {}  tax ID {}  at {}",
            pr.name, pr.npi, pr.tax_id, pr.location
        );
    }
    let lines: Vec<String> = d
        .service_lines
        .iter()
        .map(|l| {
            let mods: String = l.modifiers.iter().map(|m| format!("-{m}")).collect();
            format!("{}{mods} ×{}", l.code, l.units)
        })
        .collect();
    let _ = writeln!(out, "  service      {}", lines.join("; "));
    let dx: Vec<&str> = d.diagnoses.iter().map(|x| x.as_str()).collect();
    let _ = writeln!(out, "  diagnoses    {}", dx.join(", "));
    let _ = writeln!(
        out,
        "  dates        {} to {}  {}, {}",
        d.service_dates.start, d.service_dates.end, d.setting, d.urgency
    );
    if d.attachments.is_empty() {
        let _ = writeln!(out, "  attachments  none");
    }
    for a in &d.attachments {
        let _ = writeln!(
            out,
            "  attachment   {} ({}, {} bytes, sha256 {}…)",
            a.file_name,
            a.media_type,
            a.bytes,
            &a.sha256[..12]
        );
    }
    match &c.decision {
        None => {
            let _ = writeln!(out, "  decision     none yet");
        }
        Some(dec) => {
            let auth = dec.auth_number.as_deref().unwrap_or("-");
            let valid = dec
                .valid
                .map(|v| format!("{} to {}", v.start, v.end))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "  decision     auth {auth}  valid {valid}  decided {}  from {}",
                dec.decided_at.format("%Y-%m-%d %H:%M UTC"),
                dec.source
            );
            for l in &dec.lines {
                let _ = writeln!(
                    out,
                    "               {} approved {} of {}",
                    l.code, l.approved_units, l.requested_units
                );
            }
            if let Some(den) = &dec.denial {
                let _ = writeln!(out, "  denial       {} {}", den.code.as_deref().unwrap_or(""), den.text);
            }
            if let Some(cond) = &dec.conditions {
                let _ = writeln!(out, "  conditions   {cond}");
            }
        }
    }
    if let Some(r) = &c.payer_ref {
        let _ = writeln!(out, "  payer ref    {r}");
    }
    for l in letters {
        let when = l
            .fetched_at
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<12} {} ({} bytes, sha256 {}…, fetched {when})",
            l.kind,
            l.stored_path.display(),
            l.bytes,
            &l.sha256[..12]
        );
    }
    let _ = writeln!(out, "  timeline");
    for e in events {
        let change = match (e.from_status, e.to_status) {
            (Some(f), Some(t)) => format!("{f} → {t}"),
            (None, Some(t)) => format!("→ {t}"),
            _ => String::new(),
        };
        let detail = match &e.detail {
            serde_json::Value::Object(m) if m.is_empty() => String::new(),
            v => v.to_string(),
        };
        let _ = writeln!(
            out,
            "    {}  {:<18} {:<28} {:<20} {}",
            e.at.format("%Y-%m-%d %H:%M:%S"),
            e.kind,
            change,
            e.actor,
            detail
        );
    }
    out
}
