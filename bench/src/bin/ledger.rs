//! The ledger: import throughput of a generated CSV of synthetic cases
//! through `precert cases import` (the real binary, a fresh SQLite file per
//! run), and status transitions per second through `Ledger::transition`,
//! one at a time and from several tasks at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use precert::case::CaseStatus;
use precert::config::{self, Secrets};
use precert::store::{Actor, CaseFilter, Ledger};
use precert_bench::{ms, synthetic_csv, Project, Samples, Table, CSV_HEADER};

const SIZES: &[usize] = &[1_000, 5_000];
const RUNS: usize = 3;
/// Transitions per phase.
const TRANSITIONS: usize = 5_000;
/// Cases per phase: each goes once round ready → submitting → pending →
/// needs_attention → ready.
const CYCLE: [CaseStatus; 4] = [
    CaseStatus::Submitting,
    CaseStatus::Pending,
    CaseStatus::NeedsAttention,
    CaseStatus::Ready,
];
const TASKS: usize = 4;
/// Attempts after a "database is locked" failure, per transition.
const RETRIES: usize = 50;
/// No new repetition starts after this long.
const DEADLINE: Duration = Duration::from_secs(90);

/// Runs `precert cases import FILE` and returns its wall time.
fn import(p: &Project, file: &std::path::Path) -> anyhow::Result<Duration> {
    let mut cmd = p.precert()?;
    cmd.args(["cases", "import"]).arg(file);
    let t0 = Instant::now();
    let out = cmd.output()?;
    let took = t0.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "import failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

fn rate(n: usize, d: Duration) -> String {
    if d.is_zero() {
        return "-".into();
    }
    format!("{:.0}", n as f64 / d.as_secs_f64())
}

/// One transition per step of `CYCLE` for each case of `ids`, the whole
/// cycle for every case before the next, timed one by one (a retried
/// transition counts from its first attempt). A transition that fails with
/// SQLite's "database is locked" is retried up to `RETRIES` times after a short back-off; the
/// second value is how many attempts failed that way.
async fn transitions(ledger: &Ledger, ids: &[i64], actor: &Actor) -> anyhow::Result<(Samples, usize)> {
    let mut s = Samples::new();
    let mut locked = 0;
    for to in CYCLE {
        for &id in ids {
            let t0 = Instant::now();
            let mut attempt = 0;
            loop {
                match ledger.transition(id, to, actor, None).await {
                    Ok(_) => break,
                    Err(e) if attempt < RETRIES && e.to_string().contains("database is locked") => {
                        locked += 1;
                        attempt += 1;
                        // A deferred transaction that lost the write lock
                        // fails at once (busy_timeout does not apply), so
                        // back off a little before trying again.
                        tokio::time::sleep(Duration::from_millis(attempt as u64)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            s.push(t0.elapsed());
        }
    }
    Ok((s, locked))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let csv_dir = tempfile::tempdir()?;

    // Import.
    let empty = csv_dir.path().join("empty.csv");
    std::fs::write(&empty, format!("{CSV_HEADER}\n"))?;
    let mut baseline = Samples::new();
    for _ in 0..RUNS {
        baseline.push(import(&Project::new()?, &empty)?);
    }
    let mut t = Table::new(
        &format!("`precert cases import` of synthetic cases (release build, fresh SQLite ledger per run, {RUNS} runs)"),
        &[
            "run",
            "cases",
            "median ms",
            "p90 ms",
            "cases/s (median)",
            "cases/s net of fixed cost",
        ],
    );
    t.row(vec![
        "header only (process, config, open + migrate)".into(),
        "0".into(),
        ms(baseline.median()),
        ms(baseline.p90()),
        "-".into(),
        "-".into(),
    ]);
    let mut kept: Option<Project> = None;
    for &n in SIZES {
        let file = csv_dir.path().join(format!("cases-{n}.csv"));
        std::fs::write(&file, synthetic_csv(n))?;
        let (mut first, mut again) = (Samples::new(), Samples::new());
        for _ in 0..RUNS {
            if started.elapsed() > DEADLINE && !first.is_empty() {
                break;
            }
            let p = Project::new()?;
            first.push(import(&p, &file)?);
            // The same file again: every case is recognised, nothing is added.
            again.push(import(&p, &file)?);
            kept = Some(p);
        }
        let net = |d: Duration| d.saturating_sub(baseline.median());
        t.row(vec![
            format!("new cases ({} runs)", first.len()),
            n.to_string(),
            ms(first.median()),
            ms(first.p90()),
            rate(n, first.median()),
            rate(n, net(first.median())),
        ]);
        t.row(vec![
            format!("same file again, nothing added ({} runs)", again.len()),
            n.to_string(),
            ms(again.median()),
            ms(again.p90()),
            rate(n, again.median()),
            rate(n, net(again.median())),
        ]);
    }
    t.print();

    // Transitions, in the ledger of the last (largest) import.
    let p = kept.context("at least one import ran")?;
    let settings = config::load(&p.config_path(), Secrets::Skip).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ledger = Ledger::open(&settings.database_url).await?;
    let ids: Vec<i64> = ledger
        .list(&CaseFilter {
            status: Some(CaseStatus::Ready),
            ..Default::default()
        })
        .await?
        .iter()
        .map(|c| c.id)
        .collect();
    let per_phase = TRANSITIONS / CYCLE.len();
    anyhow::ensure!(ids.len() >= 2 * per_phase, "only {} ready cases", ids.len());
    let actor = Actor::job("bench", 1);

    let t0 = Instant::now();
    let (seq, seq_locked) = transitions(&ledger, &ids[..per_phase], &actor).await?;
    let seq_wall = t0.elapsed();

    let chunk = per_phase / TASKS;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let shared: Arc<[i64]> = ids[per_phase..2 * per_phase].into();
    for k in 0..TASKS {
        let (ledger, actor, shared) = (ledger.clone(), actor.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            transitions(&ledger, &shared[k * chunk..(k + 1) * chunk], &actor).await
        }));
    }
    let mut conc = Samples::new();
    let mut conc_locked = 0;
    for task in tasks {
        let (s, locked) = task.await??;
        conc_locked += locked;
        for d in s.values() {
            conc.push(*d);
        }
    }
    let conc_wall = t0.elapsed();
    let events = ledger.events(ids[0]).await?.len();
    ledger.close().await;

    let mut t = Table::new(
        &format!(
            "Ledger::transition (SQLite WAL, synchronous=NORMAL; {} cases in the ledger; ready → submitting → pending → needs_attention → ready)",
            ids.len()
        ),
        &["mode", "transitions", "median ms", "p90 ms", "p99 ms", "max ms", "transitions/s", "\"locked\" retries"],
    );
    t.row(vec![
        "one at a time".into(),
        seq.len().to_string(),
        ms(seq.median()),
        ms(seq.p90()),
        ms(seq.p99()),
        ms(seq.max()),
        rate(seq.len(), seq_wall),
        seq_locked.to_string(),
    ]);
    t.row(vec![
        format!("{TASKS} tasks at once (pool of 4 connections)"),
        conc.len().to_string(),
        ms(conc.median()),
        ms(conc.p90()),
        ms(conc.p99()),
        ms(conc.max()),
        rate(conc.len(), conc_wall),
        conc_locked.to_string(),
    ]);
    t.print();
    println!("\n(events in the first case's timeline afterwards: {events})");
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
