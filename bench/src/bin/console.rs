//! The console over a ledger of 100 000 cases (issue 13): the worklist's
//! first page, a filtered page, a search and a case page, each requested N
//! times by a signed-in supervisor, median and p99 beside the goals
//! (worklist < 100 ms, case page < 50 ms).
//!
//! The ledger is written in bulk, as `bench-report` writes its own: the
//! schema from `Ledger::open`, one sample case imported for a real `data`
//! document, then `INSERT … SELECT` over a number series for 100 000 cases
//! of the two sample practices (their reference changed; statuses spread
//! over the graph: pending, pended for information, needs attention,
//! approved, denied, …) with five events each and a letter for the decided
//! ones. SQLite only (the embedded default).
//!
//! The console is the real binary (`precert console`, built beside this
//! one) on 127.0.0.1; the client is reqwest on one kept-alive connection.
//! The time measured is the request's round trip on loopback: the server's
//! time plus well under a millisecond of client and socket.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use precert::config::{self, Secrets};
use precert::console::{self, Role};
use precert::intake::{self, Format};
use precert::store::{Actor, Ledger};
use precert_bench::{ms, Project, Samples, Table};

const CASES: i64 = 100_000;
const GOAL_WORKLIST: Duration = Duration::from_millis(100);
const GOAL_CASE: Duration = Duration::from_millis(50);
const PASSWORD: &str = "bench password, long enough";

fn at(expr: &str) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%S.000000Z', '2026-01-01T00:00:00', printf('%+d seconds', {expr}))")
}

/// Writes 100 000 cases with their events and letters; how long it took.
async fn build(ledger: &Ledger, settings: &config::Settings, p: &Project) -> anyhow::Result<Duration> {
    let file = p.path("samples/cases.json");
    let ctx = intake::Context {
        settings,
        default_practice: None,
        base_dir: file.parent().expect("samples/"),
        today: chrono::Utc::now().date_naive(),
    };
    intake::import_file(&file, Format::Json, &ctx, ledger, &Actor::user("bench"), |_, _| {}).await?;
    let sample = ledger
        .find("lakeside-ortho", "LO-2026-1004")
        .await?
        .context("the sample case")?;
    let template = serde_json::to_string(&sample.data)?.replace('\'', "''");
    let t0 = Instant::now();
    // Two cases in three are lakeside-ortho's; statuses cycle through ten.
    ledger
        .execute_raw(&format!(
            "INSERT INTO cases (practice_id, case_ref, payer, status, urgency, service_start, service_end, data, payer_ref, created_at, updated_at, submitted_at) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {CASES}) \
             SELECT CASE WHEN i % 3 = 0 THEN 'valley-imaging' ELSE 'lakeside-ortho' END, 'SYN-' || i, \
               CASE WHEN i % 2 = 0 THEN 'sandbox' ELSE 'sandbox-pas' END, \
               CASE i % 10 WHEN 0 THEN 'denied' WHEN 1 THEN 'pending' WHEN 2 THEN 'pended_for_info' \
                 WHEN 3 THEN 'needs_attention' WHEN 4 THEN 'ready' WHEN 5 THEN 'partially_approved' ELSE 'approved' END, \
               CASE WHEN i % 10 = 7 THEN 'urgent' ELSE 'standard' END, '2026-12-15', '2026-12-15', \
               replace(replace('{template}', '\"LO-2026-1004\"', '\"SYN-' || i || '\"'), '\"lakeside-ortho\"', \
                 CASE WHEN i % 3 = 0 THEN '\"valley-imaging\"' ELSE '\"lakeside-ortho\"' END), \
               CASE WHEN i % 10 = 4 THEN NULL ELSE 'REF-' || i END, \
               {created}, {updated}, CASE WHEN i % 10 = 4 THEN NULL ELSE {created} END FROM n",
            created = at("i * 300"),
            updated = at("i * 300 + (i % 97) * 3600"),
        ))
        .await?;
    for (offset, kind, from, to, actor, detail) in [
        ("0", "imported", "NULL", "'new'", "import:bench", "'{}'"),
        ("60", "status_changed", "'new'", "'ready'", "import:bench", "'{}'"),
        (
            "120",
            "status_changed",
            "'ready'",
            "'submitting'",
            "job:submit#1",
            "'{}'",
        ),
        (
            "180",
            "run",
            "NULL",
            "NULL",
            "job:submit#1",
            "'{\"action\":\"submit\",\"result\":\"ok\"}'",
        ),
        (
            "240",
            "status_changed",
            "'submitting'",
            "status",
            "job:submit#1",
            "'{}'",
        ),
    ] {
        ledger
            .execute_raw(&format!(
                "INSERT INTO case_events (case_id, at, kind, from_status, to_status, actor, detail) \
                 SELECT id, {at}, '{kind}', {from}, {to}, '{actor}', {detail} FROM cases \
                 WHERE case_ref LIKE 'SYN-%' ORDER BY id",
                at = at(&format!("CAST(substr(case_ref, 5) AS INTEGER) * 300 + {offset}")),
            ))
            .await?;
    }
    ledger
        .execute_raw(&format!(
            "INSERT INTO letters (case_id, kind, stored_path, sha256, bytes, media_type, fetched_at) \
             SELECT id, 'letter', 'letters/' || id || '.pdf', printf('%064d', id), 1000, 'application/pdf', {at} \
             FROM cases WHERE case_ref LIKE 'SYN-%' AND status IN ('approved', 'partially_approved', 'denied')",
            at = at("id * 300 + 7200")
        ))
        .await?;
    ledger.execute_raw("ANALYZE").await?;
    Ok(t0.elapsed())
}

/// A browser as far as cookies go.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
}

impl Browser {
    fn keep(&mut self, res: &reqwest::Response) {
        for v in res.headers().get_all(reqwest::header::SET_COOKIE) {
            let v = v.to_str().unwrap_or_default();
            let pair = v.split(';').next().unwrap_or_default();
            if let Some((k, val)) = pair.split_once('=') {
                self.cookies.insert(k.to_owned(), val.to_owned());
            }
        }
    }

    fn cookie(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// GETs `path`: its status, body and round-trip time.
    async fn get(&mut self, path: &str) -> anyhow::Result<(u16, String, Duration)> {
        let t0 = Instant::now();
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie())
            .send()
            .await?;
        let status = res.status().as_u16();
        self.keep(&res);
        let body = res.text().await?;
        Ok((status, body, t0.elapsed()))
    }

    async fn sign_in(&mut self, name: &str) -> anyhow::Result<()> {
        let (_, form, _) = self.get("/login").await?;
        let at = form
            .find("name=\"csrf\" value=\"")
            .context("the sign-in form's token")?
            + 19;
        let csrf = form[at..].split('"').next().unwrap_or_default().to_owned();
        let res = self
            .http
            .post(format!("{}/login", self.base))
            .header("cookie", self.cookie())
            .form(&[("name", name), ("password", PASSWORD), ("csrf", &csrf)])
            .send()
            .await?;
        anyhow::ensure!(res.status().as_u16() == 303, "sign-in answered {}", res.status());
        self.keep(&res);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(200);
    let p = Project::new()?;
    let config = p.config_path();
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, format!("{text}\n[console]\nlisten = \"127.0.0.1:0\"\n"))?;
    let settings = Arc::new(config::load(&config, Secrets::Skip).map_err(|e| anyhow::anyhow!("{e}"))?);
    let ledger = Ledger::open(&settings.database_url).await?;
    let built = build(&ledger, &settings, &p).await?;
    println!(
        "Ledger: {CASES} cases, {} events written in {} ms.\n",
        CASES * 5,
        built.as_millis()
    );
    let practices = vec!["lakeside-ortho".to_owned(), "valley-imaging".to_owned()];
    console::users::add(&ledger, &settings, "sam", Role::Supervisor, &practices, PASSWORD).await?;
    // Every undecided case's decision deadline, computed and stored as the
    // console does when it starts (then again: nothing left to compute).
    for what in ["computed", "checked again"] {
        let t0 = Instant::now();
        console::refresh_deadlines(&ledger, &settings).await?;
        println!(
            "Decision deadlines of the undecided cases {what} in {} ms.",
            t0.elapsed().as_millis()
        );
    }
    println!();
    ledger.close().await;
    let mut child = p
        .precert()?
        .arg("console")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut child = Stop(child);
    let addr = loop {
        let line = lines.next().context("`precert console` ended before listening")??;
        if let Some(rest) = line.split("Console at http://").nth(1) {
            break rest.split_whitespace().next().unwrap_or_default().to_owned();
        }
    };
    // Its log keeps flowing; read it so the console never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    let mut b = Browser {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        base: format!("http://{addr}"),
        cookies: HashMap::new(),
    };
    b.sign_in("sam").await?;
    let pages: [(&str, &str, Duration, &str); 6] = [
        ("worklist, first page", "/cases", GOAL_WORKLIST, "SYN-"),
        (
            "worklist, filtered (practice, payer, status)",
            "/cases?practice=lakeside-ortho&payer=sandbox-pas&status=pending",
            GOAL_WORKLIST,
            "SYN-",
        ),
        (
            "worklist, due within 48 h, soonest first",
            "/cases?due=48",
            GOAL_WORKLIST,
            "Cases",
        ),
        (
            "worklist, past the deadline (20 000 undecided cases)",
            "/cases?due=overdue",
            GOAL_WORKLIST,
            "SYN-",
        ),
        (
            "worklist, search by case ID",
            "/cases?q=SYN-77777",
            GOAL_WORKLIST,
            "SYN-77777",
        ),
        ("case page", "/cases/lakeside-ortho/SYN-50000", GOAL_CASE, "SYN-50000"),
    ];
    let mut t = Table::new(
        &format!("The console over {CASES} cases ({n} requests each, signed in as a supervisor of both practices)"),
        &["page", "median ms", "p99 ms", "max ms", "goal", "met"],
    );
    for (name, path, goal, expect) in pages {
        // A few first, so the ledger's pages are in memory as they would be.
        for _ in 0..3 {
            b.get(path).await?;
        }
        let mut samples = Samples::new();
        for _ in 0..n {
            let (status, body, took) = b.get(path).await?;
            anyhow::ensure!(status == 200 && body.contains(expect), "{path}: HTTP {status}");
            samples.push(took);
        }
        t.row(vec![
            name.to_owned(),
            ms(samples.median()),
            ms(samples.p99()),
            ms(samples.max()),
            format!("< {} ms", goal.as_millis()),
            if samples.p99() < goal {
                "yes"
            } else if samples.median() < goal {
                "median only"
            } else {
                "no"
            }
            .into(),
        ]);
    }
    t.print();
    let status = child.stop()?;
    anyhow::ensure!(status.success(), "`precert console` stopped with {status}");
    Ok(())
}

/// The console's process, stopped (SIGTERM) when the bench ends, however
/// it ends.
struct Stop(std::process::Child);

impl Stop {
    fn stop(&mut self) -> std::io::Result<std::process::ExitStatus> {
        // SAFETY: signals our own child, which has not been waited for.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        self.0.wait()
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.stop();
        }
    }
}
