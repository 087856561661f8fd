//! Sandbox startup: how long from "start" to the first answered HTTP request.
//!
//! In-process: `Sandbox::start` (with the demo configuration built inside
//! the timed span) until `GET /admin/health` answers 200, then a graceful
//! `shutdown`. The binary: spawn `precert-sandbox --listen 127.0.0.1:0`
//! until its "listening" line, until the first 200, and SIGTERM until exit.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use precert_bench::{ms, sibling_exe, Samples, Table};
use precert_sandbox::{Sandbox, SandboxConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

const RUNS: usize = 50;
/// The whole benchmark gives up after this long.
const DEADLINE: Duration = Duration::from_secs(100);

fn client() -> reqwest::Client {
    // A fresh client per run, so each first request pays its own connect.
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a plain HTTP client")
}

async fn health(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let r = client.get(format!("{base}/admin/health")).send().await?;
    anyhow::ensure!(r.status().is_success(), "health answered {}", r.status());
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let exe = sibling_exe("precert-sandbox")?;

    // In-process.
    let (mut bound, mut first, mut down) = (Samples::new(), Samples::new(), Samples::new());
    for _ in 0..RUNS {
        if started.elapsed() > DEADLINE {
            break;
        }
        let http = client();
        let t0 = Instant::now();
        let sbx = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0").await?;
        bound.push(t0.elapsed());
        health(&http, &sbx.base_url()).await?;
        first.push(t0.elapsed());
        let t1 = Instant::now();
        sbx.shutdown().await;
        down.push(t1.elapsed());
    }

    // The binary.
    let (mut line, mut bin_first, mut bin_down) = (Samples::new(), Samples::new(), Samples::new());
    for _ in 0..RUNS {
        if started.elapsed() > DEADLINE {
            break;
        }
        let http = client();
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new(&exe)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", exe.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let announced = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("no listening line within 10 s")??
            .context("the sandbox closed stdout")?;
        line.push(t0.elapsed());
        let Some(base) = announced.strip_prefix("precert-sandbox listening on ") else {
            bail!("unexpected first line: {announced}");
        };
        health(&http, base).await?;
        bin_first.push(t0.elapsed());
        let pid = child.id().context("the child has a pid")? as i32;
        let t1 = Instant::now();
        // SAFETY: sends SIGTERM to the child this benchmark spawned and still owns.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .context("no exit within 10 s of SIGTERM")??;
        bin_down.push(t1.elapsed());
        anyhow::ensure!(status.success(), "the sandbox exited with {status}");
    }

    let mut t = Table::new(
        &format!("Sandbox startup ({} runs each, ms)", bound.len()),
        &["measure", "median", "p90", "max"],
    );
    let mut add = |name: &str, s: &Samples| t.row(vec![name.into(), ms(s.median()), ms(s.p90()), ms(s.max())]);
    add("in-process: Sandbox::start returned", &bound);
    add("in-process: start → first 200 (/admin/health)", &first);
    add("in-process: shutdown (graceful)", &down);
    add("binary: spawn → \"listening\" line", &line);
    add("binary: spawn → first 200 (/admin/health)", &bin_first);
    add("binary: SIGTERM → exit", &bin_down);
    t.print();
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
