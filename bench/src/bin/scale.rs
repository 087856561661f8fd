//! `bench-scale`: precert over a ledger of 100 000 cases (`--cases N` for
//! another size, e.g. 1 000 000), each figure printed beside its goal
//! (issue 19, "Scale on one machine"):
//!
//! 1. `precert cases import` of a generated CSV (no attachments) builds the
//!    ledger: cases a second and the importer's peak memory;
//! 2. `cases list` (first page) and `cases show`, as commands and as the
//!    ledger calls behind them;
//! 3. `Escalator::scan` of the practice: the first (every case is new to
//!    the rules) and then with nothing due;
//! 4. `precert daemon` running the escalation job on a one-second schedule
//!    for a minute (its first job looks at every open case again): its
//!    peak resident memory (`VmHWM`) and what it holds at the end. With
//!    `--daemon-minutes N` the job runs on a one-minute schedule for N
//!    minutes instead (an hour: `--daemon-minutes 60`), its resident set
//!    sampled every tenth of the run.
//!
//! Synthetic data only (`precert_bench::synthetic_csv`), 127.0.0.1 only.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use precert::config::{self, Secrets};
use precert::escalate::Escalator;
use precert::store::{CaseFilter, Ledger};
use precert_bench::{ms, synthetic_csv, Project, Samples, Table};

const PRACTICE: &str = "lakeside-ortho";

/// How long the daemon runs its escalation job every second (without
/// `--daemon-minutes`).
const DAEMON_RUN: Duration = Duration::from_secs(60);

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// A `/proc/PID/status` figure in kB.
fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Runs a command to its end; its wall time and peak resident memory (kB,
/// from `wait4`'s `ru_maxrss`).
fn run_measured(mut cmd: std::process::Command) -> anyhow::Result<(Duration, u64, std::process::Output)> {
    let t0 = Instant::now();
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id() as libc::pid_t;
    // Read the pipes on threads while waiting for the process ourselves.
    let (mut out, mut err) = (child.stdout.unwrap(), child.stderr.unwrap());
    let reader = std::thread::spawn(move || {
        let mut o = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut o).ok();
        o
    });
    let ereader = std::thread::spawn(move || {
        let mut e = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut e).ok();
        e
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    anyhow::ensure!(r == pid, "wait4 failed: {}", std::io::Error::last_os_error());
    let took = t0.elapsed();
    let output = std::process::Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(status),
        stdout: reader.join().unwrap_or_default(),
        stderr: ereader.join().unwrap_or_default(),
    };
    Ok((took, usage.ru_maxrss as u64, output))
}

fn verdict(ok: bool) -> String {
    if ok { "met" } else { "NOT met" }.into()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut cases: usize = 100_000;
    // `None`: the job every second for `DAEMON_RUN`; `Some(n)`: every
    // minute for n minutes.
    let mut daemon_minutes: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cases" => cases = args.next().context("--cases N")?.parse().context("--cases N")?,
            "--daemon-minutes" => {
                let n: u64 = args
                    .next()
                    .context("--daemon-minutes N")?
                    .parse()
                    .context("--daemon-minutes N")?;
                anyhow::ensure!(n > 0, "--daemon-minutes N: at least 1");
                daemon_minutes = Some(n);
            }
            other => anyhow::bail!("unknown argument {other}; usage: bench-scale [--cases N] [--daemon-minutes N]"),
        }
    }
    let (run, every) = match daemon_minutes {
        Some(n) => (Duration::from_secs(60 * n), "0 * * * * *"),
        None => (DAEMON_RUN, "* * * * * *"),
    };
    let project = Project::new()?;
    let mut table = Table::new(
        &format!("bench-scale: {cases} cases of one practice"),
        &["measure", "figure", "goal", ""],
    );

    // 1. Import.
    let csv = project.path("cases.csv");
    std::fs::write(&csv, synthetic_csv(cases))?;
    let bytes = std::fs::metadata(&csv)?.len();
    let mut cmd = project.precert()?;
    cmd.args(["cases", "import"]).arg(&csv);
    let (took, rss, out) = run_measured(cmd)?;
    anyhow::ensure!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rate = cases as f64 / took.as_secs_f64();
    table.row(vec![
        format!("import {} MB of CSV: cases/s", bytes / 1_000_000),
        format!("{rate:.0}"),
        "≥ 5000".into(),
        verdict(rate >= 5000.0),
    ]);
    table.row(vec![
        "import: peak memory of `precert cases import`, MB".into(),
        mb(rss),
        "independent of the file".into(),
        String::new(),
    ]);

    // 2. List and show.
    let settings = Arc::new(config::load(&project.config_path(), Secrets::Skip).map_err(|e| anyhow::anyhow!("{e}"))?);
    let ledger = Ledger::open(&settings.database_url).await?;
    let mut list_cli = Samples::new();
    let mut show_cli = Samples::new();
    let mut list_lib = Samples::new();
    let mut show_lib = Samples::new();
    let filter = CaseFilter {
        practice: Some(PRACTICE.into()),
        ..CaseFilter::default()
    };
    let middle = format!("{PRACTICE}/SYN-{:06}", cases / 2);
    for _ in 0..5 {
        let mut cmd = project.precert()?;
        cmd.args(["cases", "list", "--practice", PRACTICE]);
        let (t, _, out) = run_measured(cmd)?;
        anyhow::ensure!(out.status.success(), "cases list failed");
        list_cli.push(t);
        let mut cmd = project.precert()?;
        cmd.args(["cases", "show", &middle]);
        let (t, _, out) = run_measured(cmd)?;
        anyhow::ensure!(out.status.success(), "cases show failed");
        show_cli.push(t);
    }
    let id = ledger
        .find(PRACTICE, &format!("SYN-{:06}", cases / 2))
        .await?
        .context("the middle case")?
        .id;
    for _ in 0..20 {
        let t0 = Instant::now();
        let page = ledger.list_page(&filter, None, 101).await?;
        list_lib.push(t0.elapsed());
        anyhow::ensure!(page.len() == 101.min(cases));
        let t0 = Instant::now();
        let case = ledger.get(id).await?;
        ledger.events(case.id).await?;
        ledger.letters(case.id).await?;
        ledger.case_escalations(case.id).await?;
        show_lib.push(t0.elapsed());
    }
    for (what, s, goal) in [
        ("list first page: Ledger::list_page, ms (median)", &list_lib, 50.0),
        ("list first page: `precert cases list`, ms (median)", &list_cli, 50.0),
        ("show: Ledger reads of one case, ms (median)", &show_lib, 10.0),
        ("show: `precert cases show`, ms (median)", &show_cli, 10.0),
    ] {
        let m = s.median().as_secs_f64() * 1000.0;
        table.row(vec![
            what.into(),
            ms(s.median()),
            format!("< {goal}"),
            verdict(m < goal),
        ]);
    }

    // 3. The scan, in-process.
    let (playbooks, errors) = precert::playbook::load_dir(&settings.playbooks_dir);
    anyhow::ensure!(errors.is_empty(), "playbooks: {errors:?}");
    let escalator = Arc::new(Escalator::new(settings.clone(), &playbooks, Arc::default()));
    ledger.set_escalation_hook(escalator.clone());
    let t0 = Instant::now();
    let first = escalator.scan_counted(&ledger, PRACTICE).await?;
    let first_took = t0.elapsed();
    let mut idle = Samples::new();
    let mut looked = 0;
    for _ in 0..5 {
        let t0 = Instant::now();
        looked += escalator.scan_counted(&ledger, PRACTICE).await?.cases;
        idle.push(t0.elapsed());
    }
    table.row(vec![
        format!(
            "scan, first (all {} open cases new to the rules; {} escalations opened), ms",
            first.cases, first.opened
        ),
        ms(first_took),
        "-".into(),
        String::new(),
    ]);
    table.row(vec![
        format!("scan with nothing due ({looked} cases looked at in 5 scans), ms (median)"),
        ms(idle.median()),
        "< 1000".into(),
        verdict(idle.median() < Duration::from_secs(1)),
    ]);
    ledger.close().await;

    // 4. The daemon: the escalation job every second for a minute, the
    //    first one reading every open case again.
    for practice in ["lakeside-ortho", "valley-imaging"] {
        let path = project.path(&format!("config/practices/{practice}.toml"));
        let text = std::fs::read_to_string(&path)?;
        let (head, tail) = text.split_once("[schedules]").context("[schedules]")?;
        let rest = tail
            .split_once("\n[")
            .map(|(_, r)| format!("\n[{r}"))
            .unwrap_or_default();
        let schedules = format!(
            "[schedules]\nsubmit = \"0 0 1 1 *\"\npoll = \"0 0 1 1 *\"\nletters = \"0 0 1 1 *\"\n\
             escalations = \"{every}\"\ndigest = \"0 0 1 1 *\"\n"
        );
        std::fs::write(&path, format!("{head}{schedules}{rest}"))?;
    }
    let ledger = Ledger::open(&settings.database_url).await?;
    ledger.execute_raw("DELETE FROM escalation_rules_seen").await?;
    ledger.close().await;
    let log = project.path("daemon.log");
    let mut cmd = project.precert()?;
    cmd.arg("daemon")
        .env("PRECERT__HTTP__LISTEN", "127.0.0.1:0")
        .env("PRECERT__CONSOLE__LISTEN", "127.0.0.1:0")
        .env("PRECERT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log)?));
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let t0 = Instant::now();
    let mut start_rss = None;
    // The resident set at each tenth of the run.
    let mut along = Vec::new();
    while t0.elapsed() < run {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if start_rss.is_none() && std::fs::read_to_string(&log)?.contains("Daemon started.") {
            start_rss = Some(status_kb(pid, "VmRSS")?);
        }
        if t0.elapsed() >= run.mul_f64((along.len() + 1) as f64 / 10.0) && along.len() < 10 {
            along.push(status_kb(pid, "VmRSS")?);
        }
    }
    let peak = status_kb(pid, "VmHWM")?;
    let end = status_kb(pid, "VmRSS")?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    child.wait()?;
    let text = std::fs::read_to_string(&log)?;
    let jobs = text
        .lines()
        .filter(|l| l.contains("Escalation rules evaluated.") && l.contains(PRACTICE))
        .count();
    table.row(vec![
        "daemon at start, VmRSS MB".into(),
        start_rss.map(mb).unwrap_or_else(|| "-".into()),
        "-".into(),
        String::new(),
    ]);
    table.row(vec![
        format!(
            "daemon peak over {jobs} escalation jobs in {} s, VmHWM MB",
            run.as_secs()
        ),
        mb(peak),
        "< 60".into(),
        verdict(peak < 60 * 1024),
    ]);
    table.row(vec![
        "daemon along the run (each tenth), VmRSS MB".into(),
        along.iter().map(|kb| mb(*kb)).collect::<Vec<_>>().join(" "),
        "-".into(),
        String::new(),
    ]);
    table.row(vec![
        "daemon at the end, VmRSS MB".into(),
        mb(end),
        "-".into(),
        String::new(),
    ]);
    table.print();
    println!(
        "\nNot measured here: a report, the PAS poll rate and the worklist poll (the browser and PAS \
         halves of issue 19)."
    );
    Ok(())
}
