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
//!    sampled every tenth of the run;
//! 5. the nightly poll of 20 000 open requests of another practice through
//!    the sandbox payer's PAS API (`--pas N` for another count) by `precert
//!    daemon`: requests a second beside the sandbox's own ceiling, and the
//!    daemon's peak memory (`--only-pas` runs only this part).
//!
//! `--keep` keeps the project directory (its `config/` and the 100 000-case
//! ledger in `data/`) and prints where it is, to measure a command again:
//! `precert -c DIR/config/precert.toml cases show lakeside-ortho/SYN-050000`.
//!
//! Synthetic data only (`precert_bench::synthetic_csv`), 127.0.0.1 only.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{Timelike as _, Utc};
use precert::case::CaseStatus;
use precert::config::{self, Secrets};
use precert::escalate::Escalator;
use precert::pas::{inquiry_bundle, Endpoint, PasClient, RetryPolicy};
use precert::store::{case_view_in_place, Actor, CaseFilter, CaseName, Ledger, Lookup};
use precert_bench::{ms, pas_csv, schedules, synthetic_csv, Project, Samples, Table, SECRETS};
use precert_sandbox::store::{Channel, NewRequest};
use precert_sandbox::{Sandbox, SandboxConfig};

const PRACTICE: &str = "lakeside-ortho";
/// The practice whose open requests the PAS poll asks after.
const PAS_PRACTICE: &str = "pas-0";
/// Open requests the PAS poll asks after (`--pas N`).
const PAS_REQUESTS: usize = 20_000;
/// Inquiries sent one at a time to measure the sandbox's own ceiling.
const CEILING_SAMPLE: usize = 2_000;

/// Requests in flight at once for the practice's `sandbox` payer: its
/// playbook's `max_sessions`.
fn practice_in_flight(settings: &config::Settings, practice: &str) -> u32 {
    let (playbooks, _) = precert::playbook::load_dir(&settings.playbooks_dir);
    settings
        .practice(practice)
        .and_then(|p| p.payers.get("sandbox"))
        .and_then(|b| playbooks.iter().find(|p| p.id == b.playbook))
        .map_or(1, |p| p.max_sessions)
}

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

const USAGE: &str = "usage: bench-scale [--cases N] [--daemon-minutes N] [--pas N] [--only-pas] [--keep]";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut cases: usize = 100_000;
    // `None`: the job every second for `DAEMON_RUN`; `Some(n)`: every
    // minute for n minutes.
    let mut daemon_minutes: Option<u64> = None;
    let mut pas: usize = PAS_REQUESTS;
    let mut only_pas = false;
    let mut keep = false;
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
            "--pas" => pas = args.next().context("--pas N")?.parse().context("--pas N")?,
            "--only-pas" => only_pas = true,
            "--keep" => keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}; {USAGE}"),
        }
    }
    let (run, every) = match daemon_minutes {
        Some(n) => (Duration::from_secs(60 * n), "0 * * * * *"),
        None => (DAEMON_RUN, "* * * * * *"),
    };
    let project = Project::new()?;
    if only_pas {
        let mut table = Table::new(
            &format!("bench-scale: the PAS poll of {pas} open requests"),
            &["measure", "figure", "goal", ""],
        );
        pas_poll(&project, pas, &mut table).await?;
        table.print();
        project.keep_if(keep);
        return Ok(());
    }
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
    let mut show_in_place = Samples::new();
    let filter = CaseFilter {
        practice: Some(PRACTICE.into()),
        ..CaseFilter::default()
    };
    let middle = format!("{PRACTICE}/SYN-{:06}", cases / 2);
    // A process's time moves with the host's (page cache, scheduler, CPU
    // steal): the median of 11 runs, the commands alternated, beside the
    // process's start alone (`precert --version`) in the same rounds.
    let mut start_cli = Samples::new();
    for _ in 0..11 {
        let mut cmd = project.precert()?;
        cmd.arg("--version");
        let (t, _, out) = run_measured(cmd)?;
        anyhow::ensure!(out.status.success(), "precert --version failed");
        start_cli.push(t);
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
        let view = ledger.case_view(&CaseName::Id(id)).await?;
        show_lib.push(t0.elapsed());
        anyhow::ensure!(matches!(view, Lookup::Found(_)), "the middle case");
        let t0 = Instant::now();
        let view = case_view_in_place(&settings.database_url, &CaseName::Id(id)).await?;
        show_in_place.push(t0.elapsed());
        anyhow::ensure!(matches!(view, Some(Lookup::Found(_))), "the middle case, in place");
    }
    for (what, s, goal) in [
        ("list first page: Ledger::list_page, ms (median)", &list_lib, 50.0),
        (
            "list first page: `precert cases list`, ms (median of 11)",
            &list_cli,
            50.0,
        ),
        ("show: Ledger::case_view through the pool, ms (median)", &show_lib, 10.0),
        (
            "show: case_view_in_place (a SQLite file read on the caller's thread), ms (median)",
            &show_in_place,
            10.0,
        ),
        ("show: `precert cases show`, ms (median of 11)", &show_cli, 10.0),
    ] {
        let m = s.median().as_secs_f64() * 1000.0;
        table.row(vec![
            what.into(),
            ms(s.median()),
            format!("< {goal}"),
            verdict(m < goal),
        ]);
    }

    table.row(vec![
        "the process's start alone: `precert --version`, ms (median of 11; the host's speed now)".into(),
        ms(start_cli.median()),
        "-".into(),
        String::new(),
    ]);

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
    project.set_schedules(&format!(
        "submit = \"0 0 1 1 *\"\npoll = \"0 0 1 1 *\"\nletters = \"0 0 1 1 *\"\n\
         escalations = \"{every}\"\ndigest = \"0 0 1 1 *\"\n"
    ))?;
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
    // 5. The PAS poll.
    pas_poll(&project, pas, &mut table).await?;
    table.print();
    println!(
        "\nNot measured here: a report (bench-report) and the worklist poll (bench-wire), the browser half \
         of issue 19."
    );
    project.keep_if(keep);
    Ok(())
}

/// Waits (bounded) until `done`, looking every 50 ms (a file another
/// process writes has no event to wait on).
async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {} s", limit.as_secs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The nightly poll of `n` open requests of one practice through the
/// sandbox payer's PAS API (`Claim/$inquire`), by `precert daemon` on the
/// project's SQLite ledger: requests per second from the poll's cron slot
/// to the last case's `last_polled_at` (the ledger's clock), beside the
/// sandbox's own time for the same inquiries (its request log). The
/// requests are filed in the sandbox directly (as its portal's last wizard
/// step would, with the Claim identifier `$submit` would record) and the
/// cases moved to pending through the ledger, so setting up costs no
/// submission.
async fn pas_poll(project: &Project, n: usize, table: &mut Table) -> anyhow::Result<()> {
    let never = "0 0 1 1 *";
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0").await?;
    let base = sandbox.base_url();
    project.use_sandbox(&base)?;
    project.set_schedules(&schedules(never, never))?;
    project.pas_practice(PAS_PRACTICE, &base, &schedules(never, never))?;
    let csv = project.path("pas.csv");
    std::fs::write(&csv, pas_csv(n, 1)?)?;
    let out = project.precert()?.args(["cases", "import"]).arg(&csv).output()?;
    anyhow::ensure!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));

    let settings = config::load(&project.config_path(), Secrets::Skip).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ledger = Ledger::open(&settings.database_url).await?;
    let actor = Actor::user("bench");
    let filter = CaseFilter {
        practice: Some(PAS_PRACTICE.into()),
        ..CaseFilter::default()
    };
    let mut after = None;
    let mut seeded = 0;
    loop {
        let page = ledger.list_page(&filter, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.case.id);
        for listed in &page {
            let c = &listed.case;
            let day = c.data.service_dates.start;
            let reference = sandbox.file_request(NewRequest {
                channel: Channel::Api,
                submitted_by: "lakeside-pas".into(),
                provider_npi: "1245319599".into(),
                provider_name: "Lakeside Orthopedics".into(),
                member_id: c.data.patient.member_id.expose().into(),
                member_name: "Synthetic Patient".into(),
                request_type: "imaging".into(),
                urgency: "standard".into(),
                setting: "outpatient".into(),
                lines: vec![("70553".into(), 1)],
                diagnoses: vec!["R51.9".into()],
                service_start: day,
                service_end: day,
                servicing_npi: c.data.servicing_provider.npi.as_str().into(),
                attachments: Vec::new(),
                claim_identifier: Some(c.data.case_ref.clone()),
            });
            ledger.transition(c.id, CaseStatus::Submitting, &actor, None).await?;
            ledger.set_payer_ref(c.id, &reference, &actor).await?;
            ledger.transition(c.id, CaseStatus::Pending, &actor, None).await?;
            seeded += 1;
        }
    }
    anyhow::ensure!(seeded == n, "{seeded} of {n} requests filed");
    ledger.close().await;

    // The daemon starts with nothing scheduled; the poll then fires once,
    // at a whole second just ahead, set by a reload (SIGHUP).
    let log = project.path("daemon-pas.log");
    let mut child = project
        .precert()?
        .arg("daemon")
        .env("PRECERT__HTTP__LISTEN", "127.0.0.1:0")
        .env("PRECERT__CONSOLE__LISTEN", "127.0.0.1:0")
        .env("PRECERT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log)?))
        .spawn()?;
    let logged = |what: &'static str| {
        let log = log.clone();
        move || std::fs::read_to_string(&log).is_ok_and(|t| t.contains(what))
    };
    wait_until("the daemon's start", Duration::from_secs(60), logged("Daemon started.")).await?;
    let slot = (Utc::now() + chrono::Duration::seconds(2))
        .with_nanosecond(0)
        .context("a whole second")?;
    project.pas_practice(
        PAS_PRACTICE,
        &base,
        &schedules(never, &slot.format("%-S %-M %-H * * *").to_string()),
    )?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_until("the reload", Duration::from_secs(30), logged("Configuration reloaded.")).await?;
    anyhow::ensure!(Utc::now() < slot, "the reload took until the poll's slot");
    let pool = sqlx::SqlitePool::connect(&settings.database_url).await?;
    let since = slot.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let polled: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM cases WHERE practice_id = ?1 AND last_polled_at >= ?2")
                .bind(PAS_PRACTICE)
                .bind(&since)
                .fetch_one(&pool)
                .await?;
        if polled as usize >= n {
            break;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the daemon exited ({status}) after polling {polled} of {n}; see {}",
                log.display()
            );
        }
        anyhow::ensure!(Instant::now() < deadline, "{polled} of {n} polled after 30 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak = status_kb(child.id(), "VmHWM")?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    let last: String = sqlx::query_scalar("SELECT MAX(last_polled_at) FROM cases WHERE practice_id = ?1")
        .bind(PAS_PRACTICE)
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    let span = (chrono::DateTime::parse_from_rfc3339(&last)?.with_timezone(&Utc) - slot)
        .to_std()
        .context("the last stamp is after the slot")?
        .as_secs_f64();
    let served: Vec<_> = sandbox
        .request_log()
        .into_iter()
        .filter(|e| e.path.starts_with("/fhir/Claim/$inquire") && e.started_at >= slot)
        .collect();
    let own = served.iter().map(|e| e.latency_ms).sum::<f64>() / 1000.0;

    // The sandbox's own ceiling: inquiries one at a time from precert's PAS
    // client alone (no daemon, no ledger), and the sandbox's own time for
    // them (its request log).
    let practice = settings.practice(PAS_PRACTICE).context("the PAS practice")?;
    let secret = SECRETS
        .iter()
        .find(|(k, _)| *k == "LAKESIDE_SANDBOX_CLIENT_SECRET")
        .context("the sample client secret")?
        .1;
    let client = PasClient::new(
        Endpoint {
            fhir_base: format!("{base}/fhir"),
            token_url: format!("{base}/oauth/token"),
            client_id: "lakeside-pas".into(),
            client_secret: secrecy::SecretString::from(secret),
        },
        RetryPolicy::default(),
    )?;
    let ledger = Ledger::open(&settings.database_url).await?;
    let sample = ledger.list_page(&filter, None, CEILING_SAMPLE).await?;
    ledger.close().await;
    let ctx = precert::pas::Context {
        practice,
        data_dir: &settings.data_dir,
        insurer_name: None,
        now: Utc::now(),
    };
    let bundles: Vec<_> = sample.iter().map(|l| inquiry_bundle(&l.case.data, &ctx)).collect();
    // The token first, as the daemon has it before its poll.
    client.inquire(&bundles[0].fhir()).await?;
    let since = Utc::now();
    let t0 = Instant::now();
    for b in &bundles {
        client.inquire(&b.fhir()).await?;
    }
    let alone = t0.elapsed().as_secs_f64();
    let alone_log: Vec<_> = sandbox
        .request_log()
        .into_iter()
        .filter(|e| e.path.starts_with("/fhir/Claim/$inquire") && e.started_at >= since)
        .collect();
    let alone_own = alone_log.iter().map(|e| e.latency_ms).sum::<f64>() / 1000.0;
    sandbox.shutdown().await;
    let rate = n as f64 / span;
    let ceiling = alone_log.len() as f64 / alone_own;
    table.row(vec![
        format!("PAS poll: {n} open requests through `Claim/$inquire`, requests/s (the daemon, SQLite)"),
        format!("{rate:.0}"),
        format!("≥ 2000, within 2× the sandbox's ceiling ({ceiling:.0}/s)"),
        verdict(rate >= 2000.0 && rate * 2.0 >= ceiling),
    ]);
    table.row(vec![
        format!(
            "PAS poll: wall from the slot to the last stamp ({} inquiries, {} in flight, served in {own:.2} s of \
             the sandbox's time)",
            served.len(),
            practice_in_flight(&settings, PAS_PRACTICE)
        ),
        format!("{span:.2} s"),
        "-".into(),
        String::new(),
    ]);
    table.row(vec![
        format!(
            "the sandbox's ceiling: {} inquiries one at a time, served in {alone_own:.2} s of its own time, /s",
            alone_log.len()
        ),
        format!("{ceiling:.0}"),
        "-".into(),
        String::new(),
    ]);
    table.row(vec![
        format!(
            "peer: precert's PAS client alone (no daemon, no ledger), one at a time, {} inquiries, /s",
            bundles.len()
        ),
        format!("{:.0}", bundles.len() as f64 / alone),
        "-".into(),
        String::new(),
    ]);
    table.row(vec![
        "PAS poll: daemon peak, VmHWM MB".into(),
        mb(peak),
        "< 60".into(),
        verdict(peak < 60 * 1024),
    ]);
    Ok(())
}
