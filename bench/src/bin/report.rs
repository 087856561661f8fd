//! Reports: `precert report` (the real binary) over a ledger of 100 000
//! requests with 1 000 000 events, its wall time and peak memory beside the
//! goals (< 2 s, < 100 MB).
//!
//! The ledger is written in bulk, not through the `Ledger` API (a million
//! events one transaction each would take hours): the schema comes from
//! `Ledger::open`, one sample case is imported for a real `data` document,
//! and `INSERT … SELECT` statements over a number series write 100 000
//! cases (that document with its reference changed) and their events —
//! import, triage, submission, three polls, a decision (approved, partially
//! approved, denied with a reason; one in twenty still pending; one in ten
//! pended and back first) and a letter — spread over 2026, with
//! submission-to-decision times from 0 to 199 hours; then each request's
//! facts are folded from its events (`Ledger::rebuild_facts`, the table the
//! ledger otherwise writes with every status change). SQLite only (the
//! embedded default); the statements use SQLite's `strftime`. Case `id`s
//! follow the sample's (1), so the `i`-th synthetic case is `id` `i + 1`.
//!
//! `bench-report --cases N` writes N requests instead; `--keep FILE` copies
//! the ledger written to FILE and stops there (no report is run), to
//! measure the report's SQL alone through the `sqlite3` shell.

use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use precert::config::{self, Secrets};
use precert::intake::{self, Format};
use precert::store::{Actor, Ledger};
use precert_bench::{ms, Project, Samples, Table};

const CASES: i64 = 100_000;
const RUNS: usize = 3;
const GOAL_TIME: Duration = Duration::from_secs(2);
const GOAL_RSS_MB: f64 = 100.0;

/// Seconds from 2026-01-01 to each case's submission: 5 minutes apart.
const SPACING: i64 = 300;

fn at(expr: &str) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%S.000000Z', '2026-01-01T00:00:00', printf('%+d seconds', {expr}))")
}

/// The events of every case, in steps.
/// One step: (offset from submission in seconds, as SQL over `id`; kind;
/// from; to; actor; detail as SQL; which cases, as SQL).
type Step = (
    String,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
    String,
    String,
);

fn steps() -> Vec<Step> {
    let sub = format!("id * {SPACING}");
    let decided = "(id % 200) * 3600 + 600".to_owned();
    vec![
        (
            format!("{sub} - 86400"),
            "imported",
            None,
            Some("new"),
            "import:bench",
            "'{}'".into(),
            "1 = 1".into(),
        ),
        (
            format!("{sub} - 86000"),
            "status_changed",
            Some("new"),
            Some("required"),
            "import:bench",
            "'{}'".into(),
            "1 = 1".into(),
        ),
        (
            format!("{sub} - 86000"),
            "status_changed",
            Some("required"),
            Some("ready"),
            "import:bench",
            "'{}'".into(),
            "1 = 1".into(),
        ),
        (
            format!("{sub} - 60"),
            "status_changed",
            Some("ready"),
            Some("submitting"),
            "job:submit#1",
            "'{}'".into(),
            "1 = 1".into(),
        ),
        (
            sub.clone(),
            "status_changed",
            Some("submitting"),
            Some("pending"),
            "job:submit#1",
            "'{}'".into(),
            "1 = 1".into(),
        ),
        (
            format!("{sub} + 3600"),
            "run",
            None,
            None,
            "job:poll#1",
            "'{\"action\":\"poll_status\",\"result\":\"ok\"}'".into(),
            "1 = 1".into(),
        ),
        (
            format!("{sub} + 7200"),
            "run",
            None,
            None,
            "job:poll#1",
            "'{\"action\":\"poll_status\",\"result\":\"ok\"}'".into(),
            "1 = 1".into(),
        ),
        (
            format!("{sub} + 10800"),
            "run",
            None,
            None,
            "job:poll#1",
            "'{\"action\":\"poll_status\",\"result\":\"ok\"}'".into(),
            "1 = 1".into(),
        ),
        (
            format!("{sub} + 300"),
            "status_changed",
            Some("pending"),
            Some("pended_for_info"),
            "job:poll#1",
            "'{}'".into(),
            "id % 10 = 3".into(),
        ),
        (
            format!("{sub} + 400"),
            "status_changed",
            Some("pended_for_info"),
            Some("pending"),
            "user:bench",
            "'{}'".into(),
            "id % 10 = 3".into(),
        ),
        // The decision: its status depends on the case (see `build`).
        (
            format!("{sub} + {decided}"),
            "decision_recorded",
            Some("pending"),
            None,
            "job:poll#1",
            "'{\"denial_code\":' || CASE WHEN id % 20 = 0 THEN '\"CO-' || (id % 7) || '\"' ELSE 'null' END || '}'"
                .into(),
            "id % 20 <> 2".into(),
        ),
        (
            format!("{sub} + {decided} + 3600"),
            "letter",
            None,
            None,
            "job:letters#1",
            "'{\"kind\":\"letter\"}'".into(),
            "id % 20 <> 2".into(),
        ),
    ]
}

/// Writes the ledger; how long it took and how many events it holds.
async fn build(p: &Project, cases: i64, keep: Option<&std::path::Path>) -> anyhow::Result<(Duration, u64)> {
    let settings = config::load(&p.config_path(), Secrets::Skip).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ledger = Ledger::open(&settings.database_url).await?;
    let file = p.path("samples/cases.json");
    let ctx = intake::Context {
        settings: &settings,
        default_practice: None,
        base_dir: file.parent().expect("samples/"),
        today: chrono::Utc::now().date_naive(),
    };
    intake::import_file(&file, Format::Json, &ctx, &ledger, &Actor::user("bench"), |_, _| {}).await?;
    let sample = ledger
        .find("lakeside-ortho", "LO-2026-1004")
        .await?
        .context("the sample case")?;
    let template = serde_json::to_string(&sample.data)?.replace('\'', "''");
    let t0 = Instant::now();
    let mut events = 0;
    ledger
        .execute_raw(&format!(
            "INSERT INTO cases (practice_id, case_ref, payer, status, urgency, service_start, service_end, data, decision, created_at, updated_at, submitted_at) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {cases}) \
             SELECT 'lakeside-ortho', 'SYN-' || i, CASE WHEN i % 2 = 0 THEN 'sandbox' ELSE 'sandbox-pas' END, \
               CASE WHEN (i + 1) % 20 = 0 THEN 'denied' WHEN (i + 1) % 20 = 1 THEN 'partially_approved' \
                 WHEN (i + 1) % 20 = 2 THEN 'pending' ELSE 'approved' END, \
               CASE WHEN (i + 1) % 10 = 0 THEN 'urgent' ELSE 'standard' END, '2026-12-15', '2026-12-15', \
               replace('{template}', '\"LO-2026-1004\"', '\"SYN-' || i || '\"'), \
               CASE WHEN (i + 1) % 20 <> 2 THEN '{{\"auth_number\":null,\"valid\":null,\"lines\":[],\"conditions\":null,\"denial\":' || \
                 CASE WHEN (i + 1) % 20 = 0 THEN '{{\"code\":\"CO-' || ((i + 1) % 7) || '\",\"text\":\"Reason ' || ((i + 1) % 7) || '\"}}' ELSE 'null' END || \
                 ',\"decided_at\":\"' || {d} || '\",\"source\":\"bench\"}}' END, \
               {a}, {a}, {a} FROM n",
            a = at(&format!("(i + 1) * {SPACING}")),
            d = at(&format!("(i + 1) * {SPACING} + ((i + 1) % 200) * 3600 + 600")),
        ))
        .await?;
    for (offset, kind, from, to, actor, detail, which) in steps() {
        let sql_to = match (kind, to) {
            ("decision_recorded", _) => {
                "CASE WHEN id % 20 = 0 THEN 'denied' WHEN id % 20 = 1 THEN 'partially_approved' ELSE 'approved' END"
                    .to_owned()
            }
            (_, Some(t)) => format!("'{t}'"),
            (_, None) => "NULL".to_owned(),
        };
        let sql_from = from.map_or("NULL".to_owned(), |f| format!("'{f}'"));
        events += ledger
            .execute_raw(&format!(
                "INSERT INTO case_events (case_id, at, kind, from_status, to_status, actor, detail) \
                 SELECT id, {at}, '{kind}', {sql_from}, {sql_to}, '{actor}', {detail} FROM cases \
                 WHERE case_ref LIKE 'SYN-%' AND {which} ORDER BY id",
                at = at(&offset),
            ))
            .await?;
    }
    ledger
        .execute_raw(&format!(
            "INSERT INTO letters (case_id, kind, stored_path, sha256, bytes, media_type, fetched_at) \
             SELECT id, 'letter', 'letters/' || id || '.pdf', printf('%064d', id), 1000, 'application/pdf', {at} \
             FROM cases WHERE case_ref LIKE 'SYN-%' AND id % 20 <> 2 AND id % 3 <> 0",
            at = at(&format!("id * {SPACING} + (id % 200) * 3600 + 4200"))
        ))
        .await?;
    // The events were written by bulk statements, not through the ledger:
    // their facts (`case_facts`) are folded from them, as `precert report`
    // would find them had each change been recorded one by one.
    ledger.rebuild_facts().await?;
    ledger.execute_raw("ANALYZE").await?;
    let took = t0.elapsed();
    if let Some(file) = keep {
        // A copy of the whole database, the WAL's last pages included.
        let file = file.to_str().context("a UTF-8 path for --keep")?.replace('\'', "''");
        ledger.execute_raw(&format!("VACUUM INTO '{file}'")).await?;
    }
    ledger.close().await;
    Ok((took, events))
}

/// Runs `precert report ARGS`: wall time and peak resident memory (MB).
fn report(p: &Project, args: &[&str]) -> anyhow::Result<(Duration, f64, String)> {
    let mut cmd = p.precert()?;
    cmd.arg("report").args(args);
    cmd.stdout(std::process::Stdio::piped());
    let t0 = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    // wait4 gives the child's own peak RSS (ru_maxrss, kB on Linux).
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut out = child.stdout.expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).map(|_| s)
    });
    // SAFETY: waits for our own child, with valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = t0.elapsed();
    anyhow::ensure!(r == pid, "wait4: {}", std::io::Error::last_os_error());
    let stdout = reader.join().expect("reader")?;
    let status = std::process::ExitStatus::from_raw(status);
    anyhow::ensure!(status.success(), "precert report {args:?}: {status}");
    Ok((took, usage.ru_maxrss as f64 / 1024.0, stdout))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (mut cases, mut keep) = (CASES, None);
    let mut argv = std::env::args().skip(1);
    while let Some(a) = argv.next() {
        match a.as_str() {
            "--cases" => cases = argv.next().context("--cases N")?.parse().context("--cases N")?,
            "--keep" => keep = Some(std::path::PathBuf::from(argv.next().context("--keep FILE")?)),
            other => anyhow::bail!("unknown argument {other}; usage: bench-report [--cases N] [--keep FILE]"),
        }
    }
    let p = Project::new()?;
    let (built, events) = build(&p, cases, keep.as_deref()).await?;
    let db = p.path("data/precert.db");
    let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    println!(
        "Ledger: {cases} cases and {events} events written in {} ms ({:.0} MB SQLite file).\n",
        built.as_millis(),
        size as f64 / 1e6
    );
    if let Some(file) = keep {
        println!("Ledger kept as {}.", file.display());
        return Ok(());
    }
    let year = [
        "--from",
        "2026-01-01",
        "--to",
        "2026-12-31",
        "--as-of",
        "2027-01-15T00:00:00Z",
    ];
    let reports: Vec<(&str, Vec<&str>)> = vec![
        ("the year, per payer (table)", vec![]),
        ("the year, per payer (CSV)", vec!["--format", "csv"]),
        ("the year, by CPT code (JSON)", vec!["--by", "cpt", "--format", "json"]),
        (
            "late evidence, one payer, March (CSV)",
            vec![
                "--payer",
                "sandbox",
                "--from",
                "2026-03-01",
                "--to",
                "2026-03-31",
                "--late",
                "--format",
                "csv",
            ],
        ),
    ];
    let mut t = Table::new(
        &format!("precert report over {cases} requests ({RUNS} runs each; goals < 2 s, < 100 MB)"),
        &[
            "report",
            "median ms",
            "max ms",
            "peak RSS MB",
            "time goal",
            "memory goal",
        ],
    );
    let mut shown = false;
    for (name, extra) in reports {
        let mut samples = Samples::new();
        let mut rss: f64 = 0.0;
        for _ in 0..RUNS {
            let mut args: Vec<&str> = year.to_vec();
            if extra.contains(&"--from") {
                args = vec!["--as-of", "2027-01-15T00:00:00Z"];
            }
            args.extend(extra.iter().copied());
            let (took, mb, out) = report(&p, &args)?;
            if !shown {
                // The figures cover every request: the table's first rows.
                anyhow::ensure!(out.contains("sandbox"), "unexpected output:\n{out}");
                println!("{}", out.lines().take(5).collect::<Vec<_>>().join("\n"));
                println!();
                shown = true;
            }
            samples.push(took);
            rss = rss.max(mb);
        }
        t.row(vec![
            name.to_owned(),
            ms(samples.median()),
            ms(samples.max()),
            format!("{rss:.1}"),
            if samples.median() < GOAL_TIME { "met" } else { "missed" }.into(),
            if rss < GOAL_RSS_MB { "met" } else { "missed" }.into(),
        ]);
    }
    t.print();
    Ok(())
}
