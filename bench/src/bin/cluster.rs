//! Issue 12: several daemons on one PostgreSQL. Jobs leased and completed
//! per second by 1, 2 and 4 "daemons" (each its own connection pool and two
//! workers, as `precert daemon` with `webdriver.max_sessions = 2`) on no-op
//! jobs, beside the same with one daemon on SQLite and beside the server's
//! own limit (single-statement commits per second on one connection); and
//! `precert cases import` (the real binary) of 100 000 synthetic cases into
//! PostgreSQL and into SQLite.
//!
//! PostgreSQL: `PRECERT_BENCH_PG` names a server and a database to connect
//! to for creating the benchmark's own (dropped at the end), e.g. the test
//! cluster that `scripts/test` starts in `target/pg`:
//! `postgres://postgres@localhost/postgres?host=$PWD/target/pg/run&port=55432`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use precert::config::Job;
use precert::queue::{LeaseFilter, NewJob, Queue};
use precert::store::Ledger;
use precert_bench::{synthetic_csv, Project, Table};
use sqlx::Connection as _;

const JOBS: usize = 4_000;
const WORKERS_PER_DAEMON: usize = 2;
const IMPORT: usize = 100_000;

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
    let pg = PgDb::create(&admin, "precert_bench_cluster").await?;
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
    let import_pg = PgDb::create(&admin, "precert_bench_import").await?;
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
