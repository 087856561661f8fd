//! Issue 12: several daemons on one PostgreSQL. Jobs leased and completed
//! per second by 1, 2 and 4 "daemons" (each its own connection pool and two
//! workers, as `precert daemon` with `webdriver.max_sessions = 2`) on no-op
//! jobs, beside the same with one daemon on SQLite and beside the server's
//! own limit (single-statement commits per second on one connection); and
//! `precert cases import` (the real binary) of 100 000 synthetic cases into
//! PostgreSQL and into SQLite; and the poll of 20 000 open requests through
//! the sandbox payer's PAS API by 1 and by 4 `precert daemon` processes
//! (`bench-cluster poll` runs only that part).
//!
//! PostgreSQL: `PRECERT_BENCH_PG` names a server and a database to connect
//! to for creating the benchmark's own (dropped at the end), e.g. the test
//! cluster that `scripts/test` starts in `target/pg`:
//! `postgres://postgres@localhost/postgres?host=$PWD/target/pg/run&port=55432`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{Timelike as _, Utc};
use precert::config::Job;
use precert::queue::{LeaseFilter, NewJob, Queue};
use precert::store::Ledger;
use precert_bench::{pas_csv, schedules, synthetic_csv, Project, Table};
use sqlx::Connection as _;

const JOBS: usize = 4_000;
const WORKERS_PER_DAEMON: usize = 2;
const IMPORT: usize = 100_000;
/// Open requests polled through the PAS API, spread over practices (a
/// practice's poll of one payer is one job, run by one daemon).
const POLL_CASES: usize = 20_000;
const POLL_PRACTICES: usize = 8;

/// A database of the benchmark's own on the server `admin` points at.
struct PgDb {
    admin: String,
    name: String,
    url: String,
}

impl PgDb {
    async fn create(admin: &str, name: &str) -> anyhow::Result<PgDb> {
        let mut c = sqlx::PgConnection::connect(admin).await.context("PRECERT_BENCH_PG")?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut c)
            .await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut c)
            .await?;
        c.close().await?;
        let (base, query) = admin.split_once('?').unwrap_or((admin, ""));
        let (server, _) = base
            .rsplit_once('/')
            .context("PRECERT_BENCH_PG: postgres://USER@HOST/DATABASE")?;
        let url = if query.is_empty() {
            format!("{server}/{name}")
        } else {
            format!("{server}/{name}?{query}")
        };
        Ok(PgDb {
            admin: admin.to_owned(),
            name: name.to_owned(),
            url,
        })
    }

    async fn drop_it(self) -> anyhow::Result<()> {
        let mut c = sqlx::PgConnection::connect(&self.admin).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name))
            .execute(&mut c)
            .await?;
        c.close().await?;
        Ok(())
    }
}

/// Queues `JOBS` no-op jobs, then lets `daemons` × `WORKERS_PER_DAEMON`
/// workers lease and complete them; jobs per second.
async fn drain(url: &str, daemons: usize) -> anyhow::Result<f64> {
    let setup = Ledger::open(url).await?;
    setup.execute_raw("DELETE FROM jobs").await?;
    let queue = Queue::new(setup.clone());
    let now = Utc::now();
    for i in 0..JOBS {
        queue
            .enqueue(&NewJob::new(Job::Escalations, &format!("bench-{}", i % 50), now), now)
            .await?;
    }
    let mut pools = Vec::new();
    for _ in 0..daemons {
        pools.push(Arc::new(Queue::new(Ledger::open(url).await?)));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (d, q) in pools.iter().enumerate() {
        for w in 0..WORKERS_PER_DAEMON {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let owner = format!("bench-{d}-w{w}");
                let mut done = 0usize;
                loop {
                    let now = Utc::now();
                    let Some(job) = q
                        .lease(&owner, Duration::from_secs(120), &LeaseFilter::default(), now)
                        .await?
                    else {
                        return anyhow::Ok(done);
                    };
                    q.complete(&job.lease, Utc::now()).await?;
                    done += 1;
                }
            }));
        }
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(total == JOBS, "{total} of {JOBS} jobs completed");
    for q in pools {
        q.ledger().close().await;
    }
    setup.close().await;
    Ok(JOBS as f64 / secs)
}

/// Single-row commits per second on one connection: the server's limit for
/// one worker (a job costs two: its lease and its end).
async fn commit_rate(url: &str) -> anyhow::Result<f64> {
    let ledger = Ledger::open(url).await?;
    ledger
        .execute_raw("CREATE TABLE IF NOT EXISTS bench_commit (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        .await?;
    ledger.execute_raw("DELETE FROM bench_commit").await?;
    ledger
        .execute_raw("INSERT INTO bench_commit (id, n) VALUES (1, 0)")
        .await?;
    let n = 2_000;
    let start = Instant::now();
    for _ in 0..n {
        ledger
            .execute_raw("UPDATE bench_commit SET n = n + 1 WHERE id = 1")
            .await?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    ledger.execute_raw("DROP TABLE bench_commit").await?;
    ledger.close().await;
    Ok(rate)
}

fn import(p: &Project, url: &str, file: &std::path::Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = p
        .precert()?
        .args(["cases", "import"])
        .arg(file)
        .env("PRECERT__DATABASE_URL", url)
        .output()?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(IMPORT as f64 / secs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin = std::env::var("PRECERT_BENCH_PG").context(
        "set PRECERT_BENCH_PG to a PostgreSQL server (see the top of bench/src/bin/cluster.rs and bench/README.md)",
    )?;
    let only_poll = std::env::args().nth(1).as_deref() == Some("poll");
    if !only_poll {
        queue_and_import(&admin).await?;
    }
    pas_poll(&admin).await
}

async fn queue_and_import(admin: &str) -> anyhow::Result<()> {
    let pg = PgDb::create(admin, "precert_bench_cluster").await?;
    let sqlite_dir = tempfile::tempdir()?;
    let sqlite = format!("sqlite://{}?mode=rwc", sqlite_dir.path().join("bench.db").display());

    let pg_limit = commit_rate(&pg.url).await?;
    let sqlite_limit = commit_rate(&sqlite).await?;
    let mut t = Table::new(
        &format!("Jobs leased and completed per second ({JOBS} no-op jobs, {WORKERS_PER_DAEMON} workers per daemon)"),
        &["ledger", "daemons", "jobs/s", "limit (commits/s on one connection ÷ 2)"],
    );
    for daemons in [1, 2, 4] {
        let rate = drain(&pg.url, daemons).await?;
        t.row(vec![
            "PostgreSQL".into(),
            daemons.to_string(),
            format!("{rate:.0}"),
            format!("{:.0} per worker", pg_limit / 2.0),
        ]);
    }
    let rate = drain(&sqlite, 1).await?;
    t.row(vec![
        "SQLite".into(),
        "1".into(),
        format!("{rate:.0}"),
        format!("{:.0} (one writer)", sqlite_limit / 2.0),
    ]);
    t.print();

    let p = Project::new()?;
    let file = p.path("samples/bench-import.csv");
    std::fs::write(&file, synthetic_csv(IMPORT))?;
    let import_pg = PgDb::create(admin, "precert_bench_import").await?;
    let mut t = Table::new(
        &format!("`precert cases import` of {IMPORT} synthetic cases"),
        &["ledger", "cases/s", "goal"],
    );
    t.row(vec![
        "PostgreSQL".into(),
        format!("{:.0}", import(&p, &import_pg.url, &file)?),
        "5 000/s (issue 19)".into(),
    ]);
    t.row(vec![
        "SQLite".into(),
        format!(
            "{:.0}",
            import(
                &p,
                &format!("sqlite://{}?mode=rwc", p.path("data/import.db").display()),
                &file
            )?
        ),
        "5 000/s (issue 19)".into(),
    ]);
    t.print();
    import_pg.drop_it().await?;
    pg.drop_it().await?;
    Ok(())
}

/// The sample practice `lakeside-ortho` as practice `id`, in UTC, with its
/// `sandbox` payer bound to the PAS playbook at `base`, and `schedules`.
fn write_practices(p: &Project, base: &str, schedules: &str) -> anyhow::Result<()> {
    for k in 0..POLL_PRACTICES {
        p.pas_practice(&format!("pas-{k}"), base, schedules)?;
    }
    Ok(())
}

/// Daemon processes of the benchmark: killed if it ends early.
struct Daemons(Vec<std::process::Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` `precert daemon` processes on `url`, logging to the project.
fn daemons(p: &Project, url: &str, n: usize, round: &str) -> anyhow::Result<Daemons> {
    let mut running = Daemons(Vec::new());
    for i in 0..n {
        let log = std::fs::File::create(p.path(&format!("daemon-{round}-{i}.log")))?;
        running.0.push(
            p.precert()?
                .arg("daemon")
                .env("PRECERT__DATABASE_URL", url)
                .env("PRECERT__HTTP__LISTEN", "127.0.0.1:0")
                .env("PRECERT__CONSOLE__LISTEN", "127.0.0.1:0")
                // Job starts are paced per payer (6 a minute by default);
                // the benchmark's schedules fire more often than that.
                .env("PRECERT__LIMITS__STARTS_PER_MINUTE", "600")
                .env("PRECERT__LIMITS__BURST", "50")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()?,
        );
    }
    Ok(running)
}

/// SIGTERM, then wait (bounded) for each to exit.
async fn stop(mut running: Daemons) -> anyhow::Result<()> {
    for c in &running.0 {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for c in &mut running.0 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.try_wait()?.is_none() {
            anyhow::ensure!(Instant::now() < deadline, "a daemon did not stop within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Waits (bounded, checking every 250 ms) until `done` says so.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + limit;
    while !done().await? {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not done within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Issue 12: 20 000 open requests polled through the PAS API (`$inquire`)
/// by 1 and by 4 daemons on one PostgreSQL, beside the sandbox payer's own
/// time for the same inquiries (its ceiling with one request in flight).
/// The requests are submitted first, by the four daemons, through the same
/// API (a code no sandbox scenario decides, so they stay In Review).
async fn pas_poll(admin: &str) -> anyhow::Result<()> {
    let sandbox =
        precert_sandbox::Sandbox::start(precert_sandbox::SandboxConfig::default_demo(), "127.0.0.1:0").await?;
    let base = sandbox.base_url();
    let p = Project::new()?;
    for e in std::fs::read_dir(p.path("config/practices"))? {
        std::fs::remove_file(e?.path())?;
    }
    let db = PgDb::create(admin, "precert_bench_pas_poll").await?;
    let pool = sqlx::PgPool::connect(&db.url).await?;

    // 20 000 cases over 8 practices, each a brain MRI (70553), which no
    // sandbox scenario decides.
    let csv = pas_csv(POLL_CASES, POLL_PRACTICES)?;
    let file = p.path("samples/pas-poll.csv");
    std::fs::write(&file, csv)?;
    write_practices(&p, &base, &schedules("*/2 * * * * *", "0 0 1 1 *"))?;
    let out = p
        .precert()?
        .args(["cases", "import"])
        .arg(&file)
        .env("PRECERT__DATABASE_URL", &db.url)
        .output()?;
    anyhow::ensure!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));

    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { anyhow::Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await?) }
    };
    // Submit every case, with four daemons.
    let t0 = Instant::now();
    let running = daemons(&p, &db.url, 4, "submit")?;
    wait_for("submitting 20 000 requests", Duration::from_secs(1800), || async {
        Ok(count("SELECT COUNT(*) FROM cases WHERE status IN ('new', 'required', 'ready', 'submitting')").await? == 0)
    })
    .await?;
    let submit_secs = t0.elapsed().as_secs_f64();
    stop(running).await?;
    let pending = count("SELECT COUNT(*) FROM cases WHERE status = 'pending'").await? as usize;
    anyhow::ensure!(
        pending == POLL_CASES,
        "{pending} of {POLL_CASES} requests are pending after submission"
    );

    let mut t = Table::new(
        &format!("{POLL_CASES} open requests through the PAS API, {POLL_PRACTICES} practices, one PostgreSQL"),
        &[
            "work",
            "daemons",
            "requests/s",
            "wall",
            "limit: the sandbox's own time (one in flight)",
        ],
    );
    let own = |path: &str, since: chrono::DateTime<Utc>| -> (usize, f64) {
        let log: Vec<_> = sandbox
            .request_log()
            .into_iter()
            .filter(|e| e.path.starts_with(path) && e.started_at >= since)
            .collect();
        (log.len(), log.iter().map(|e| e.latency_ms).sum::<f64>() / 1000.0)
    };
    let (n, secs) = own("/fhir/Claim/$submit", Utc::now() - chrono::Duration::hours(1));
    t.row(vec![
        "`$submit` (each once)".into(),
        "4".into(),
        format!("{:.0}", POLL_CASES as f64 / submit_secs),
        format!("{submit_secs:.1} s"),
        format!("{:.0}/s ({n} served in {secs:.2} s)", n as f64 / secs),
    ]);

    for n_daemons in [1usize, 4] {
        // Every practice's poll fires once, at one slot a few seconds
        // ahead (the daemons start first).
        let slot = (Utc::now() + chrono::Duration::seconds(12))
            .with_nanosecond(0)
            .context("a whole second")?;
        write_practices(
            &p,
            &base,
            &schedules("0 0 1 1 *", &slot.format("%-S %-M %-H * * *").to_string()),
        )?;
        let since = precert_ts(slot);
        let running = daemons(&p, &db.url, n_daemons, &format!("poll{n_daemons}"))?;
        let polled_sql = format!("SELECT COUNT(*) FROM cases WHERE last_polled_at >= '{since}'");
        wait_for("polling 20 000 requests", Duration::from_secs(1800), || {
            let (pool, sql) = (pool.clone(), polled_sql.clone());
            async move { Ok(sqlx::query_scalar::<_, i64>(&sql).fetch_one(&pool).await? as usize >= POLL_CASES) }
        })
        .await?;
        stop(running).await?;
        // From the slot to the last case's stamp (the ledger's clock).
        let last: String = sqlx::query_scalar("SELECT MAX(last_polled_at) FROM cases")
            .fetch_one(&pool)
            .await?;
        let span = (parse(&last)? - slot).num_milliseconds() as f64 / 1000.0;
        let (served, own_secs) = own("/fhir/Claim/$inquire", slot);
        t.row(vec![
            "`$inquire` (the nightly poll)".into(),
            n_daemons.to_string(),
            format!("{:.0}", POLL_CASES as f64 / span),
            format!("{span:.1} s"),
            format!("{:.0}/s ({served} served in {own_secs:.2} s)", served as f64 / own_secs),
        ]);
    }
    t.print();
    pool.close().await;
    db.drop_it().await?;
    sandbox.shutdown().await;
    Ok(())
}

/// A time as the ledger stores it (RFC 3339, microseconds, `Z`).
fn precert_ts(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse(s: &str) -> anyhow::Result<chrono::DateTime<Utc>> {
    Ok(chrono::DateTime::parse_from_rfc3339(s)?.with_timezone(&Utc))
}
