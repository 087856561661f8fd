//! Portal automation: the engine runs `playbooks/sandbox.yaml` in real
//! headless Chromium (through chromedriver) against an in-process sandbox,
//! for five synthetic cases of one practice, one browser session reused.
//!
//! For every run it takes the wall time of `Engine::run` and, from the
//! sandbox's request log, the requests the run caused and the sum of their
//! server-side latencies: the part of the run the portal itself needs (the
//! physical limit). The rest is the browser, chromedriver and the engine.
//! Then the five cases are polled with one `poll_worklist` against five
//! `poll_status` runs.
//!
//! Needs `/usr/bin/chromedriver` and `/usr/bin/chromium` (as the tests do).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use precert::config::{self, Secrets};
use precert::engine::Engine;
use precert::playbook::{self, Action};
use precert::store::{Actor, Ledger};
use precert_bench::{ms, Project, Samples, Table, SECRETS};
use precert_sandbox::{Decision, Sandbox, SandboxConfig, SandboxHandle};

/// Rounds of `poll_worklist` (and of five `poll_status`) to compare.
const WORKLIST_ROUNDS: usize = 3;
/// No new run starts after this long.
const DEADLINE: Duration = Duration::from_secs(110);

const HEADER: &str = "practice_id,case_id,patient_first_name,patient_last_name,patient_birth_date,patient_member_id,patient_group_number,coverage_payer,coverage_plan,coverage_plan_type,coverage_state,requesting_provider_name,requesting_provider_npi,requesting_provider_location,servicing_provider_name,servicing_provider_npi,servicing_provider_location,service_lines,diagnoses,service_start,service_end,setting,urgency,attachments,precert_required";

/// Five synthetic cases of Lakeside for five active sandbox members, one per
/// scenario: in review (decided by the bench), approved, partially approved,
/// denied, approved. Each carries one attachment, as most real cases do.
const CASES: &[(&str, &str, &str, &str, &str, &str, &str)] = &[
    // (case id, member, birth date, lines, diagnoses, start, setting)
    (
        "PB-1",
        "SBX100200301",
        "1961-04-12",
        "73721-RT*1",
        "M25.561;M17.11",
        "2026-12-08",
        "outpatient",
    ),
    (
        "PB-2",
        "SBX100200302",
        "1975-09-30",
        "E0601*1",
        "G47.33",
        "2026-12-09",
        "home",
    ),
    (
        "PB-3",
        "SBX100200303",
        "1988-02-14",
        "97110-GP*12",
        "M25.561",
        "2026-12-10",
        "office",
    ),
    (
        "PB-4",
        "SBX100200305",
        "1969-07-22",
        "72148*1",
        "M54.16;M51.26",
        "2026-12-11",
        "outpatient",
    ),
    (
        "PB-5",
        "SBX100200306",
        "1992-11-05",
        "E0601*1",
        "G47.33",
        "2026-12-12",
        "home",
    ),
];

fn cases_csv() -> String {
    let mut out = format!("{HEADER}\n");
    for (id, member, dob, lines, dx, start, setting) in CASES {
        out.push_str(&format!(
            "lakeside-ortho,{id},Synthetic,Patient,{dob},{member},GRP-4410,sandbox,Sandbox Advantage PPO,medicare_advantage,IL,\"Jordan Reyes, MD\",1987654328,main,Lakeside Orthopedics Imaging,1555012347,main,{lines},{dx},{start},{start},{setting},standard,documents/knee-xray-report.pdf,yes\n"
        ));
    }
    out
}

/// One `Engine::run` as the sandbox saw it.
#[derive(Clone)]
struct Run {
    wall: Duration,
    requests: usize,
    server: Duration,
}

struct World {
    sandbox: SandboxHandle,
    ledger: Ledger,
    engine: Engine,
    actor: Actor,
    ids: Vec<i64>,
}

impl World {
    async fn run(&self, action: Action, id: i64) -> anyhow::Result<Run> {
        let before = self.sandbox.request_log().len();
        let t0 = Instant::now();
        let report = self.engine.run(action, id, &self.actor).await?;
        let wall = t0.elapsed();
        if let Some(f) = report.failure {
            anyhow::bail!("{action} of case {id} failed: {f}");
        }
        let log = self.sandbox.request_log();
        let mine = &log[before.min(log.len())..];
        Ok(Run {
            wall,
            requests: mine.len(),
            server: mine
                .iter()
                .map(|e| Duration::from_secs_f64(e.latency_ms / 1000.0))
                .sum(),
        })
    }

    fn logins(&self) -> usize {
        self.sandbox
            .request_log()
            .iter()
            .filter(|e| e.method == "POST" && e.path == "/portal/login")
            .count()
    }
}

/// A row of the per-action table.
fn action_row(t: &mut Table, name: &str, runs: &[Run]) {
    let walls: Samples = runs.iter().map(|r| r.wall).collect();
    let servers: Samples = runs.iter().map(|r| r.server).collect();
    let total_wall: Duration = walls.total();
    let total_server: Duration = servers.total();
    let requests: usize = runs.iter().map(|r| r.requests).sum();
    t.row(vec![
        name.into(),
        runs.len().to_string(),
        ms(walls.median()),
        ms(walls.p90()),
        format!("{:.1}", requests as f64 / runs.len().max(1) as f64),
        ms(servers.median()),
        format!(
            "{:.3} %",
            100.0 * total_server.as_secs_f64() / total_wall.as_secs_f64().max(1e-9)
        ),
    ]);
}

fn main() -> anyhow::Result<()> {
    for (k, v) in SECRETS {
        // SAFETY: set before the runtime starts any thread.
        unsafe { std::env::set_var(k, v) };
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let started = Instant::now();
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0").await?;
    let p = Project::new()?;
    p.use_sandbox(&sandbox.base_url())?;
    let csv = p.path("samples/bench-cases.csv");
    std::fs::write(&csv, cases_csv())?;
    let out = p.precert()?.args(["cases", "import"]).arg(&csv).output()?;
    anyhow::ensure!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let settings = config::load(&p.config_path(), Secrets::Resolve).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (playbooks, errors) = playbook::load_dir(&settings.playbooks_dir);
    anyhow::ensure!(errors.is_empty(), "playbooks: {errors:?}");
    let ledger = Ledger::open(&settings.database_url).await?;
    let mut ids = Vec::new();
    for (case, ..) in CASES {
        ids.push(ledger.find_by_ref(case).await?.pop().context("an imported case")?.id);
    }
    let engine = Engine::new(Arc::new(settings), ledger.clone(), playbooks);
    let w = World {
        sandbox,
        ledger,
        engine,
        actor: Actor::job("bench", 1),
        ids,
    };
    let result = measure(&w, started).await;
    w.engine.shutdown().await;
    w.ledger.close().await;
    w.sandbox.shutdown().await;
    result
}

async fn measure(w: &World, started: Instant) -> anyhow::Result<()> {
    let (mut submit, mut poll, mut letter) = (Vec::new(), Vec::new(), Vec::new());
    for &id in &w.ids {
        submit.push(w.run(Action::Submit, id).await?);
    }
    // The first case is in review until a reviewer approves it; the others
    // were decided by the sandbox's rules at once.
    for &id in &w.ids[..1] {
        let reference = w.ledger.get(id).await?.payer_ref.context("a payer reference")?;
        w.sandbox.decide(&reference, Decision::Approve)?;
    }
    for &id in &w.ids {
        poll.push(w.run(Action::PollStatus, id).await?);
    }
    for &id in &w.ids {
        letter.push(w.run(Action::DownloadLetter, id).await?);
    }
    let mut worklist = Vec::new();
    let mut poll_rounds: Vec<Vec<Run>> = Vec::new();
    for _ in 0..WORKLIST_ROUNDS {
        if started.elapsed() > DEADLINE {
            break;
        }
        worklist.push(w.run(Action::PollWorklist, w.ids[0]).await?);
        let mut round = Vec::new();
        for &id in &w.ids {
            round.push(w.run(Action::PollStatus, id).await?);
        }
        poll_rounds.push(round);
    }
    let logins = w.logins();

    let mut t = Table::new(
        &format!(
            "Engine::run in headless Chromium against the sandbox ({} cases, one session reused, {logins} login(s); ms)",
            w.ids.len()
        ),
        &[
            "action",
            "runs",
            "wall median",
            "wall p90",
            "requests/run",
            "server sum median",
            "server share of wall",
        ],
    );
    action_row(
        &mut t,
        "submit, first (starts chromedriver + Chromium, logs in)",
        &submit[..1],
    );
    action_row(&mut t, "submit, session reused", &submit[1..]);
    action_row(&mut t, "poll_status", &poll);
    action_row(&mut t, "download_letter", &letter);
    action_row(&mut t, "poll_worklist (all 5 cases)", &worklist);
    let all: Vec<Run> = submit
        .iter()
        .chain(&poll)
        .chain(&letter)
        .chain(&worklist)
        .chain(poll_rounds.iter().flatten())
        .cloned()
        .collect();
    action_row(&mut t, "all runs", &all);
    t.print();

    let mut t = Table::new(
        "Polling the same 5 cases: one poll_worklist vs poll_status per case (ms)",
        &["round", "poll_worklist wall", "5 × poll_status wall", "ratio"],
    );
    for (i, (wl, round)) in worklist.iter().zip(&poll_rounds).enumerate() {
        let five: Duration = round.iter().map(|r| r.wall).sum();
        t.row(vec![
            (i + 1).to_string(),
            ms(wl.wall),
            ms(five),
            format!("{:.1}×", five.as_secs_f64() / wl.wall.as_secs_f64()),
        ]);
    }
    t.print();

    let total_wall: Duration = all.iter().map(|r| r.wall).sum();
    let total_server: Duration = all.iter().map(|r| r.server).sum();
    let requests: usize = all.iter().map(|r| r.requests).sum();
    println!(
        "\nPhysical limit: {} runs took {:.2} s; the portal spent {:.3} s serving their {requests} requests ({:.3} %), \
         the other {:.2} s were the browser, chromedriver and the engine.",
        all.len(),
        total_wall.as_secs_f64(),
        total_server.as_secs_f64(),
        100.0 * total_server.as_secs_f64() / total_wall.as_secs_f64(),
        (total_wall - total_server).as_secs_f64()
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
