//! Polling at the speed of the wire (issue 15): N pending requests on the
//! sandbox, each with its case in the ledger, polled three ways by the
//! engine in real headless Chromium:
//!
//! (a) per case through the browser (the status search page, rendered),
//! (b) per case through `fetch` (the search's JSON with the browser
//!     session's cookies — the shipped `playbooks/sandbox.yaml`),
//! (c) by worklist (every page of it, through the browser).
//!
//! (a) and (b) with one session and with two (the playbook's
//! `max_sessions` = 2: the cases polled two at a time, as the daemon's poll
//! job and `precert run … --all` do); (c) is one pass, one session.
//!
//! Each figure stands beside the physical limit: the requests the portal
//! served during it × the page latency ÷ sessions, and beside Robot
//! Framework 7.5 + SeleniumLibrary doing (a)'s work (`bench/robot/poll.robot`,
//! run from a venv this program creates under `target/robot-venv` with pip
//! from PyPI; without network the peer's row says why it is missing). Usage:
//! `bench-wire [N …]` (default 100 1000); at 1 000 the browser path is
//! measured on its first 100 cases and scaled (said in the table).
//!
//! Needs `/usr/bin/chromedriver` and `/usr/bin/chromium` (as the tests do).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use precert::case::CaseStatus;
use precert::config::Settings;
use precert::config::{self, Secrets};
use precert::engine::Engine;
use precert::playbook::{self, Action, Playbook};
use precert::store::{Actor, Ledger};
use precert_bench::{Project, Table, CSV_HEADER, REPO, SECRETS};
use precert_sandbox::store::{Channel, NewRequest};
use precert_sandbox::{HazardsPatch, Sandbox, SandboxConfig, SandboxHandle};

/// Per-case browser polls measured at most (the rest is scaled).
const BROWSER_MAX: usize = 100;

fn request(i: usize) -> NewRequest {
    let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 8).expect("a date") + chrono::Days::new(i as u64 % 300);
    NewRequest {
        channel: Channel::Portal,
        submitted_by: "lakeside.precert".into(),
        provider_npi: "1245319599".into(),
        provider_name: "Lakeside Orthopedics".into(),
        member_id: "SBX100200301".into(),
        member_name: "Avery Marsh".into(),
        request_type: "imaging".into(),
        urgency: "standard".into(),
        setting: "outpatient".into(),
        lines: vec![("73721".into(), 1)],
        diagnoses: vec!["M25.561".into()],
        service_start: day,
        service_end: day,
        servicing_npi: "1555012347".into(),
        attachments: Vec::new(),
        claim_identifier: None,
    }
}

struct World {
    references: Vec<String>,
    sandbox: SandboxHandle,
    ledger: Ledger,
    settings: Arc<Settings>,
    /// The shipped playbook (per case by `fetch`) and the same with the
    /// browser's `poll_status`.
    fetching: Vec<Playbook>,
    browsing: Vec<Playbook>,
    ids: Vec<i64>,
    _p: Project,
}

/// A way of polling, measured.
struct Figure {
    what: String,
    sessions: usize,
    wall: Duration,
    requests: usize,
}

impl World {
    /// An engine whose sandbox playbook allows `sessions` at once.
    fn engine(&self, playbooks: &[Playbook], sessions: u32) -> Engine {
        let mut playbooks = playbooks.to_vec();
        for p in &mut playbooks {
            p.max_sessions = sessions;
        }
        Engine::new(self.settings.clone(), self.ledger.clone(), playbooks)
    }
}

fn main() -> anyhow::Result<()> {
    for (k, v) in SECRETS {
        // SAFETY: set before the runtime starts any thread.
        unsafe { std::env::set_var(k, v) };
    }
    // `--worklist`: only the worklist figure (the per-case ways and the
    // peer take minutes at 1 000 requests).
    let only_worklist = std::env::args().any(|a| a == "--worklist");
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| a != "--worklist")
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("sizes are numbers: {e}"))?;
    let sizes = if sizes.is_empty() { vec![100, 1000] } else { sizes };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async {
            for n in sizes {
                let w = world(n).await?;
                for latency in [0u64, 50] {
                    let result = measure(&w, latency, only_worklist).await;
                    if let Err(e) = result {
                        eprintln!("{n} requests at {latency} ms: {e:#}");
                    }
                }
                w.ledger.close().await;
                w.sandbox.shutdown().await;
            }
            Ok(())
        })
}

/// The browser path's `poll_status`: the sandbox playbook's search page.
const BROWSER_POLL: &str = r##"  poll_status:
    - navigate: "{{ payer.base_url }}/portal/status?reference={{ case.payer_reference }}"
    - wait_for: { present: "#status-results-container[data-loaded='true'], #status-results-container[data-loaded='error']" }
      timeout: 20s
    - rows:
        selector: "#status-results tr[data-reference='{{ case.payer_reference }}']"
        cells:
          status: td.col-status
          auth_number: td.col-auth-number
        into: found
    - for_each:
        list: vars.found
        as: row
        steps:
          - outcome: { status: "{{ row.status }}", reference: "{{ case.payer_reference }}", auth_number: "{{ row.auth_number }}" }

"##;

async fn world(n: usize) -> anyhow::Result<World> {
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0").await?;
    let p = Project::new()?;
    p.use_sandbox(&sandbox.base_url())?;
    let references: Vec<String> = (0..n).map(|i| sandbox.file_request(request(i))).collect();
    let mut csv = format!("{CSV_HEADER}\n");
    for i in 0..n {
        csv.push_str(&format!(
            "lakeside-ortho,WB-{i:05},Avery,Marsh,1961-04-12,SBX100200301,GRP-4410,sandbox,Sandbox Advantage PPO,medicare_advantage,IL,\"Jordan Reyes, MD\",1987654328,main,Lakeside Orthopedics Imaging,1555012347,main,73721-RT*1,M25.561,2026-12-08,2026-12-08,outpatient,standard,,yes\n"
        ));
    }
    let csv_path = p.path("wire.csv");
    std::fs::write(&csv_path, csv)?;
    let out = p.precert()?.args(["cases", "import"]).arg(&csv_path).output()?;
    anyhow::ensure!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    let settings = config::load(&p.config_path(), Secrets::Resolve).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        settings.webdriver.max_sessions >= 2,
        "the configuration's webdriver.max_sessions must allow two sessions"
    );
    let ledger = Ledger::open(&settings.database_url).await?;
    let actor = Actor::user("bench");
    let mut ids = Vec::new();
    for (i, reference) in references.iter().enumerate() {
        let id = ledger.find_by_ref(&format!("WB-{i:05}")).await?[0].id;
        ledger.transition(id, CaseStatus::Submitting, &actor, None).await?;
        ledger.set_payer_ref(id, reference, &actor).await?;
        ledger.transition(id, CaseStatus::Pending, &actor, None).await?;
        ids.push(id);
    }
    let (fetching, errors) = playbook::load_dir(&settings.playbooks_dir);
    anyhow::ensure!(errors.is_empty(), "playbooks: {errors:?}");
    // The same playbook with the browser's poll_status.
    let dir = p.path("playbooks-browser");
    std::fs::create_dir_all(&dir)?;
    let text = std::fs::read_to_string(p.path("playbooks/sandbox.yaml"))?;
    let (start, end) = (
        text.find("  poll_status:\n").unwrap_or(0),
        text.find("  poll_worklist:\n").unwrap_or(0),
    );
    std::fs::write(
        dir.join("sandbox.yaml"),
        format!("{}{BROWSER_POLL}{}", &text[..start], &text[end..]),
    )?;
    let (browsing, errors) = playbook::load_dir(&dir);
    anyhow::ensure!(errors.is_empty(), "playbooks: {errors:?}");
    Ok(World {
        references,
        settings: Arc::new(settings),
        fetching,
        browsing,
        sandbox,
        ledger,
        ids,
        _p: p,
    })
}

/// Polls `ids` per case with `sessions` runs at once (each on its own
/// session, signed in before the clock starts), as the daemon does.
async fn poll(w: &World, playbooks: &[Playbook], what: &str, ids: &[i64], sessions: usize) -> anyhow::Result<Figure> {
    let engine = Arc::new(w.engine(playbooks, sessions as u32));
    // Sign in first, every session at once (each login takes its own): a
    // login is not polling.
    let mut logins = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        let e = engine.clone();
        logins.spawn(async move { e.login_only("sandbox", "lakeside-ortho").await });
    }
    while let Some(r) = logins.join_next().await {
        let r = r??;
        anyhow::ensure!(r.failure.is_none(), "login: {:?}", r.failure);
    }
    let before = w.sandbox.request_log().len();
    let t0 = Instant::now();
    let queue = Arc::new(Mutex::new(ids.iter().rev().copied().collect::<Vec<_>>()));
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        let (engine, queue, what) = (engine.clone(), queue.clone(), what.to_owned());
        runs.spawn(async move {
            let actor = Actor::job("bench", 1);
            loop {
                let Some(id) = queue.lock().expect("queue lock").pop() else {
                    return anyhow::Ok(());
                };
                let r = engine.run(Action::PollStatus, id, &actor).await?;
                if let Some(f) = r.failure {
                    anyhow::bail!("{what}: case {id}: {f}");
                }
            }
        });
    }
    let mut result = Ok(());
    while let Some(r) = runs.join_next().await {
        if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
            result = Err(e);
        }
    }
    let wall = t0.elapsed();
    engine.shutdown().await;
    result?;
    Ok(Figure {
        what: what.into(),
        sessions,
        wall,
        requests: w.sandbox.request_log().len() - before,
    })
}

/// A figure measured on the first `browsed` of `n` cases, scaled to `n`.
fn scaled(mut f: Figure, browsed: usize, n: usize) -> Figure {
    if browsed < n {
        f.what = format!("{} (first {browsed}, scaled ×{})", f.what, n / browsed);
        f.wall = f.wall.mul_f64(n as f64 / browsed as f64);
        f.requests = f.requests * n / browsed;
    }
    f
}

async fn measure(w: &World, latency: u64, only_worklist: bool) -> anyhow::Result<()> {
    let n = w.ids.len();
    w.sandbox
        .set_hazards(HazardsPatch {
            latency_ms: Some(latency),
            ..Default::default()
        })
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut figures = Vec::new();
    let browsed = n.min(BROWSER_MAX);
    let mut fetch = Vec::new();
    for sessions in [1, 2].into_iter().filter(|_| !only_worklist) {
        let b = poll(w, &w.browsing, "per case, browser", &w.ids[..browsed], sessions).await?;
        figures.push(scaled(b, browsed, n));
        let f = poll(w, &w.fetching, "per case, fetch", &w.ids, sessions).await?;
        fetch.push(f.wall);
        figures.push(f);
    }
    let peer = if only_worklist {
        None
    } else {
        match robot(w, browsed).await {
            Ok(f) => Some(scaled(f, browsed, n)),
            Err(e) => {
                eprintln!("Robot Framework peer not measured: {e:#}");
                None
            }
        }
    };
    let engine = w.engine(&w.fetching, 1);
    let r = engine.login_only("sandbox", "lakeside-ortho").await?;
    anyhow::ensure!(r.failure.is_none(), "login: {:?}", r.failure);
    let before = w.sandbox.request_log().len();
    let t0 = Instant::now();
    let r = engine
        .run(Action::PollWorklist, w.ids[0], &Actor::job("bench", 1))
        .await?;
    let wall = t0.elapsed();
    engine.shutdown().await;
    anyhow::ensure!(r.failure.is_none(), "worklist: {:?}", r.failure);
    figures.push(Figure {
        what: format!("worklist ({} rows read)", r.observations.len()),
        sessions: 1,
        wall,
        requests: w.sandbox.request_log().len() - before,
    });
    let mut t = Table::new(
        &format!("{n} pending requests, {latency} ms page latency"),
        &[
            "polled",
            "sessions",
            "wall",
            "per case",
            "requests served",
            "physical limit",
            "× limit",
        ],
    );
    for f in figures.iter().chain(&peer) {
        let limit = Duration::from_millis(latency) * f.requests as u32 / f.sessions as u32;
        t.row(vec![
            f.what.clone(),
            f.sessions.to_string(),
            format!("{:.2} s", f.wall.as_secs_f64()),
            format!("{:.1} ms", f.wall.as_secs_f64() * 1000.0 / n as f64),
            f.requests.to_string(),
            format!("{:.2} s", limit.as_secs_f64()),
            if latency == 0 {
                "—".into()
            } else {
                format!("{:.2}", f.wall.as_secs_f64() / limit.as_secs_f64())
            },
        ]);
    }
    t.print();
    if let Some(f) = &peer {
        for (i, wall) in fetch.iter().enumerate() {
            let x = f.wall.as_secs_f64() / wall.as_secs_f64();
            println!(
                "per case by fetch, {} session(s), vs Robot Framework (1 session): {x:.1}× faster (goal ≥ 5×: {})",
                i + 1,
                if x >= 5.0 { "met" } else { "not met" }
            );
        }
        println!(
            "per case through the browser, 1 session, vs Robot Framework: {:.2}×",
            f.wall.as_secs_f64() / figures[0].wall.as_secs_f64()
        );
    }
    if latency > 0 {
        for f in figures.iter().filter(|f| f.what == "per case, fetch") {
            let limit = Duration::from_millis(latency) * f.requests as u32 / f.sessions as u32;
            let x = f.wall.as_secs_f64() / limit.as_secs_f64();
            println!(
                "per case by fetch, {} session(s): goal ≤ 2× the physical limit at {latency} ms: {} ({x:.2}×)",
                f.sessions,
                if x <= 2.0 { "met" } else { "not met" }
            );
        }
    }
    println!();
    Ok(())
}

/// Robot Framework 7.5 + SeleniumLibrary polling the first `count`
/// requests through the search page, one session (sign-in not timed: the
/// suite times its loop itself).
async fn robot(w: &World, count: usize) -> anyhow::Result<Figure> {
    let venv = std::path::Path::new(REPO).join("target/robot-venv");
    let python = venv.join("bin/python");
    let ready = std::process::Command::new(&python)
        .args(["-c", "import robot, SeleniumLibrary; assert robot.__version__ == '7.5'"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        eprintln!(
            "creating {} (pip, PyPI): robotframework==7.5, robotframework-seleniumlibrary",
            venv.display()
        );
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?
            .success()
            && std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "robotframework==7.5", "robotframework-seleniumlibrary"])
                .status()?
                .success();
        anyhow::ensure!(ok, "the venv for Robot Framework could not be made (pip from PyPI)");
    }
    let suite = std::path::Path::new(REPO).join("bench/robot");
    let out = tempfile::tempdir()?;
    let clock = out.path().join("clock.txt");
    let refs = w.references[..count].join(",");
    let secret = |k: &str| {
        SECRETS
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| *v)
            .unwrap_or_default()
    };
    let before = w.sandbox.request_log().len();
    let status = tokio::process::Command::new(venv.join("bin/robot"))
        .arg("--outputdir")
        .arg(out.path())
        .args([
            "--output",
            "NONE",
            "--report",
            "NONE",
            "--log",
            "NONE",
            "--console",
            "quiet",
        ])
        .arg("--variable")
        .arg(format!("BASE:{}", w.sandbox.base_url()))
        .arg("--variable")
        .arg(format!("PASSWORD:{}", secret("LAKESIDE_SANDBOX_PASSWORD")))
        .arg("--variable")
        .arg(format!("SEED:{}", secret("LAKESIDE_SANDBOX_TOTP_SEED")))
        .arg("--variable")
        .arg(format!("REFS:{refs}"))
        .arg("--variable")
        .arg(format!("CLOCK:{}", clock.display()))
        .arg(suite.join("poll.robot"))
        .current_dir(&suite)
        .status()
        .await?;
    anyhow::ensure!(status.success(), "the robot suite failed ({status})");
    let wall: f64 = std::fs::read_to_string(&clock)?.trim().parse()?;
    // The requests of the loop: all but the sign-in's.
    let log = w.sandbox.request_log();
    let requests = log[before..]
        .iter()
        .filter(|e| e.path.starts_with("/portal/status") || e.path.starts_with("/portal/api/status"))
        .count();
    Ok(Figure {
        what: "per case, Robot Framework 7.5 + SeleniumLibrary (browser)".into(),
        sessions: 1,
        wall: Duration::from_secs_f64(wall),
        requests,
    })
}
