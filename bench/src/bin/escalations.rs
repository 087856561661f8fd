//! Escalations: what the escalation hook adds to a status change (a denial
//! with and without the `Escalator` installed), the `escalations` job's scan
//! over 1 000 and 5 000 active cases (first scan: opens; second: all already
//! open), and delivery of 1 000 queued mails by `escalate::send_due` through
//! the file transport and through SMTP to a real local server
//! (`tests/smtp_server.py`, aiosmtpd, 127.0.0.1, plain SMTP).
//!
//! Cases are synthetic (`SYN-000000`…, practice `lakeside-ortho`, payer
//! `sandbox`), imported in-process with `intake::import_file` and moved
//! through the `Ledger` API on an injected clock.

use std::io::BufRead as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use precert::case::{CaseStatus, Decision, DenialReason};
use precert::config::{self, MailTransport, Secrets, Settings};
use precert::escalate::{self, Escalator};
use precert::intake::{self, Format};
use precert::mail::Mailer;
use precert::store::{Actor, CaseFilter, Ledger, RulesCursor, SendOutcome};
use precert_bench::{ms, synthetic_csv, Project, Samples, Table, REPO};

/// Denials per mode in the hook-cost comparison.
const DENIALS: usize = 500;
/// Active cases per practice, and first scans of each (a first scan is
/// repeated on the same ledger with its escalations and outbox emptied).
const SCAN_SIZES: &[(usize, usize)] = &[(1_000, 2), (5_000, 1)];
/// Second scans per size (nothing to open).
const SECOND_RUNS: usize = 3;
/// Mails queued for delivery (the 1 000-case practice's first scan).
const MAILS: usize = 1_000;
/// Mails timed one by one per transport (3b); SMTP at ~50 ms a mail here.
const ONE_BY_ONE: &[(&str, usize)] = &[("file", 1_000), ("smtp", 100)];
/// No optional measurement (a repeated first scan) starts after this long.
const DEADLINE: Duration = Duration::from_secs(60);
/// The injected "now": Monday 2 November 2026, 09:00 in Chicago.
const NOW: &str = "2026-11-02T15:00:00Z";
const PRACTICE: &str = "lakeside-ortho";
const PYTHON: &str = "/usr/bin/python3";

/// A throw-away project with a ledger on an injected clock.
struct World {
    p: Project,
    settings: Arc<Settings>,
    ledger: Ledger,
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl World {
    async fn new() -> anyhow::Result<World> {
        let p = Project::new()?;
        let settings = Arc::new(load(&p)?);
        let now = Arc::new(Mutex::new(utc(NOW)));
        let ledger = open(&settings, &now).await?;
        Ok(World {
            p,
            settings,
            ledger,
            now,
        })
    }

    fn set(&self, t: DateTime<Utc>) {
        *self.now.lock().expect("clock") = t;
    }

    /// Imports `n` synthetic cases (all `ready`); their ids, in order.
    async fn import(&self, n: usize) -> anyhow::Result<Vec<i64>> {
        let file = self.p.path("synthetic.csv");
        std::fs::write(&file, synthetic_csv(n))?;
        let ctx = intake::Context {
            settings: &self.settings,
            default_practice: None,
            base_dir: self.p.dir.path(),
            today: utc(NOW).date_naive(),
        };
        let report =
            intake::import_file(&file, Format::Csv, &ctx, &self.ledger, &Actor::user("bench"), |_, _| {}).await?;
        anyhow::ensure!(
            report.created == n && report.is_clean(),
            "import: {} created, {} invalid",
            report.created,
            report.invalid.len()
        );
        let ids: Vec<i64> = self
            .ledger
            .list(&CaseFilter {
                status: Some(CaseStatus::Ready),
                ..Default::default()
            })
            .await?
            .iter()
            .map(|c| c.id)
            .collect();
        anyhow::ensure!(ids.len() == n, "{} ready cases, expected {n}", ids.len());
        Ok(ids)
    }

    /// ready → submitting → pending at time `at`.
    async fn submit(&self, id: i64, at: DateTime<Utc>) -> anyhow::Result<()> {
        self.set(at);
        let a = Actor::user("bench");
        self.ledger.transition(id, CaseStatus::Submitting, &a, None).await?;
        self.ledger.transition(id, CaseStatus::Pending, &a, None).await?;
        Ok(())
    }

    fn escalator(&self) -> Arc<Escalator> {
        let (playbooks, errors) = precert::playbook::load_dir(&self.settings.playbooks_dir);
        assert!(errors.is_empty(), "playbooks: {errors:?}");
        Arc::new(Escalator::new(self.settings.clone(), &playbooks, Arc::default()))
    }
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("timestamp").with_timezone(&Utc)
}

fn load(p: &Project) -> anyhow::Result<Settings> {
    config::load(&p.config_path(), Secrets::Skip).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn open(settings: &Settings, now: &Arc<Mutex<DateTime<Utc>>>) -> anyhow::Result<Ledger> {
    let now = now.clone();
    let clock = Arc::new(move || *now.lock().expect("clock"));
    Ok(Ledger::open(&settings.database_url).await?.with_clock(clock))
}

fn decision(status: CaseStatus, at: DateTime<Utc>) -> Decision {
    let denied = status == CaseStatus::Denied;
    Decision {
        auth_number: (!denied).then(|| "AUTH-SYN".to_owned()),
        valid: None,
        lines: Vec::new(),
        conditions: None,
        denial: denied.then(|| DenialReason {
            code: Some("CLIN-06".into()),
            text: "Conservative therapy of six weeks is not documented".into(),
        }),
        decided_at: at,
        source: "manual:bench".into(),
    }
}

fn rate(n: usize, d: Duration) -> String {
    if d.is_zero() {
        return "-".into();
    }
    format!("{:.0}", n as f64 / d.as_secs_f64())
}

/// Figure 1: a denial through `record_decision`, with and without the hook, on
/// the same database: two `Ledger` handles (the hook belongs to a handle
/// and its clones), alternating case by case so drift hits both alike.
async fn hook_cost() -> anyhow::Result<()> {
    let w = World::new().await?;
    let ids = w.import(2 * DENIALS).await?;
    let submitted = utc(NOW) - chrono::Duration::days(1);
    for &id in &ids {
        w.submit(id, submitted).await?;
    }
    w.set(utc(NOW));
    let hooked = open(&w.settings, &w.now).await?;
    hooked.set_escalation_hook(w.escalator());
    let actor = Actor::user("bench");
    let (mut plain, mut with_hook) = (Samples::new(), Samples::new());
    for (i, pair) in ids.chunks(2).enumerate() {
        // Alternate which mode goes first in each pair.
        let order: [(&Ledger, bool); 2] = if i % 2 == 0 {
            [(&w.ledger, false), (&hooked, true)]
        } else {
            [(&hooked, true), (&w.ledger, false)]
        };
        for (k, (ledger, hook)) in order.iter().enumerate() {
            let d = decision(CaseStatus::Denied, utc(NOW));
            let t0 = Instant::now();
            ledger.record_decision(pair[k], &d, CaseStatus::Denied, &actor).await?;
            let took = t0.elapsed();
            if *hook {
                with_hook.push(took);
            } else {
                plain.push(took);
            }
        }
    }
    let escalations = hooked.escalations(Some(PRACTICE), false).await?.len();
    let outbox = hooked.outbox(false).await?.len();
    anyhow::ensure!(
        escalations == DENIALS && outbox == DENIALS,
        "{escalations} escalations, {outbox} mails"
    );
    hooked.close().await;
    w.ledger.close().await;

    let mut t = Table::new(
        &format!(
            "1. Ledger::record_decision of a denial (pending → denied), {DENIALS} cases each, alternating, same SQLite ledger ({} cases)",
            ids.len()
        ),
        &["mode", "calls", "median ms", "p90 ms", "p99 ms", "max ms", "escalations", "outbox rows"],
    );
    t.row(vec![
        "without the hook".into(),
        plain.len().to_string(),
        ms(plain.median()),
        ms(plain.p90()),
        ms(plain.p99()),
        ms(plain.max()),
        "0".into(),
        "0".into(),
    ]);
    t.row(vec![
        "with the Escalator hook".into(),
        with_hook.len().to_string(),
        ms(with_hook.median()),
        ms(with_hook.p90()),
        ms(with_hook.p99()),
        ms(with_hook.max()),
        escalations.to_string(),
        outbox.to_string(),
    ]);
    let extra = with_hook.median().as_secs_f64() - plain.median().as_secs_f64();
    t.row(vec![
        "difference (medians)".into(),
        String::new(),
        format!("{:+.2}", extra * 1000.0),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    t.print();
    println!(
        "\nThe hook's price: in the denial's own transaction it renders the mail (text + HTML), checks the \
         dedupe key, inserts the escalation, the outbox row and an `email` event."
    );
    Ok(())
}

/// A practice with `n` active cases, set up before escalations were
/// configured (no hook): a quarter each pending past the deadline
/// (submitted 10 days ago), pending fresh (1 day ago), denied and approved
/// (submitted 6 days ago, decided 3 days ago, no letter).
async fn scan_world(n: usize) -> anyhow::Result<World> {
    let w = World::new().await?;
    let ids = w.import(n).await?;
    let now = utc(NOW);
    let day = chrono::Duration::days(1);
    let actor = Actor::user("bench");
    for (i, &id) in ids.iter().enumerate() {
        match i % 4 {
            0 => w.submit(id, now - day * 10).await?,
            1 => w.submit(id, now - day).await?,
            k => {
                w.submit(id, now - day * 6).await?;
                w.set(now - day * 3);
                let to = if k == 2 {
                    CaseStatus::Denied
                } else {
                    CaseStatus::Approved
                };
                w.ledger
                    .record_decision(id, &decision(to, now - day * 3), to, &actor)
                    .await?;
            }
        }
    }
    w.set(now);
    Ok(w)
}

struct ScanResult {
    n: usize,
    first: Samples,
    opened: usize,
    second: Samples,
    load: Samples,
    keys: Samples,
}

/// Figure 2: `Escalator::scan`, first (opens) and second (nothing to open).
async fn scan(n: usize, first_runs: usize, started: Instant) -> anyhow::Result<(ScanResult, World)> {
    let w = scan_world(n).await?;
    let esc = w.escalator();
    w.ledger.set_escalation_hook(esc.clone());
    let mut r = ScanResult {
        n,
        first: Samples::new(),
        opened: 0,
        second: Samples::new(),
        load: Samples::new(),
        keys: Samples::new(),
    };
    for run in 0..first_runs {
        if run > 0 {
            if started.elapsed() > DEADLINE {
                break;
            }
            // Back to "never escalated" for another first scan.
            w.ledger.execute_raw("DELETE FROM outbox").await?;
            w.ledger.execute_raw("DELETE FROM escalations").await?;
            // And every case due for a look again.
            w.ledger
                .execute_raw(
                    "UPDATE cases SET next_check_at = updated_at \
                     WHERE status NOT IN ('cancelled', 'expired', 'not_required')",
                )
                .await?;
        }
        let t0 = Instant::now();
        r.opened = esc.scan(&w.ledger, PRACTICE).await?;
        r.first.push(t0.elapsed());
    }
    for _ in 0..SECOND_RUNS {
        let t0 = Instant::now();
        let again = esc.scan(&w.ledger, PRACTICE).await?;
        r.second.push(t0.elapsed());
        anyhow::ensure!(again == 0, "a second scan opened {again}");
        // Its two reads alone: the first page of cases due (none: each
        // has its next look in the future or none) and their active keys.
        let t0 = Instant::now();
        let due = w
            .ledger
            .cases_due_for_rules(PRACTICE, w.ledger.now(), &RulesCursor::default(), 500)
            .await?;
        r.load.push(t0.elapsed());
        let ids: Vec<i64> = due.iter().map(|c| c.case.id).collect();
        let t0 = Instant::now();
        w.ledger.active_escalation_keys(&ids).await?;
        r.keys.push(t0.elapsed());
    }
    Ok((r, w))
}

fn print_scans(results: &[ScanResult]) {
    let mut t = Table::new(
        "2. Escalator::scan of one practice (¼ pending past the deadline, ¼ pending fresh, ¼ denied, ¼ approved without letter)",
        &["scan", "active cases", "runs", "median ms", "p90 ms", "cases/s (median)", "opened"],
    );
    for r in results {
        t.row(vec![
            "first (opens escalations + first mails)".into(),
            r.n.to_string(),
            r.first.len().to_string(),
            ms(r.first.median()),
            ms(r.first.p90()),
            rate(r.n, r.first.median()),
            r.opened.to_string(),
        ]);
        t.row(vec![
            "second (everything already open)".into(),
            r.n.to_string(),
            r.second.len().to_string(),
            ms(r.second.median()),
            ms(r.second.p90()),
            rate(r.n, r.second.median()),
            "0".into(),
        ]);
        t.row(vec![
            "  of which Ledger::cases_due_for_rules (a page)".into(),
            r.n.to_string(),
            r.load.len().to_string(),
            ms(r.load.median()),
            ms(r.load.p90()),
            rate(r.n, r.load.median()),
            "-".into(),
        ]);
        t.row(vec![
            "  of which Ledger::active_escalation_keys".into(),
            r.n.to_string(),
            r.keys.len().to_string(),
            ms(r.keys.median()),
            ms(r.keys.p90()),
            "-".into(),
            "-".into(),
        ]);
    }
    t.print();
    println!(
        "\nFirst scan: every rule on every case, and for each finding not yet open a write transaction \
         (dedupe check, escalation, rendered mail into the outbox, case event). Second scan: the same \
         evaluation, every finding skipped against the set of active keys read once."
    );
}

/// Puts every outbox mail back in line, as if just queued.
async fn requeue(ledger: &Ledger) -> anyhow::Result<u64> {
    Ok(ledger
        .execute_raw(
            "UPDATE outbox SET state = 'pending', attempts = 0, sent_at = NULL, lease_until = NULL, \
             last_error = NULL, next_attempt_at = created_at",
        )
        .await?)
}

struct Delivery {
    name: String,
    mails: usize,
    round: Duration,
    claim: Samples,
    send: Samples,
    finish: Samples,
    total: Samples,
    received: usize,
}

/// Figure 3: `send_due` of the whole outbox in one round (throughput), then the
/// same mails again one by one as `send_due` does them
/// (claim → send → finish), each step timed.
async fn deliver(
    name: &str,
    ledger: &Ledger,
    mailer: &Mailer,
    one_by_one: usize,
    received: impl Fn() -> usize,
) -> anyhow::Result<Delivery> {
    let mails = requeue(ledger).await? as usize;
    anyhow::ensure!(mails == MAILS, "{mails} mails queued, expected {MAILS}");
    let t0 = Instant::now();
    let round = escalate::send_due(ledger, mailer).await?;
    let round_took = t0.elapsed();
    anyhow::ensure!(
        round.sent == mails && round.failed == 0,
        "{name}: sent {} failed {} of {mails}",
        round.sent,
        round.failed
    );
    requeue(ledger).await?;
    let (mut claim, mut send, mut finish, mut total) = (Samples::new(), Samples::new(), Samples::new(), Samples::new());
    let lease = chrono::Duration::minutes(5);
    while total.len() < one_by_one {
        let t0 = Instant::now();
        let Some(c) = ledger.claim_mail(lease).await? else {
            break;
        };
        let t1 = Instant::now();
        mailer
            .send(&c.mail, ledger.now())
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let t2 = Instant::now();
        ledger.finish_mail(&c, &SendOutcome::Sent).await?;
        let t3 = Instant::now();
        claim.push(t1 - t0);
        send.push(t2 - t1);
        finish.push(t3 - t2);
        total.push(t3 - t0);
    }
    Ok(Delivery {
        name: name.into(),
        mails,
        round: round_took,
        claim,
        send,
        finish,
        total,
        received: received(),
    })
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// `tests/smtp_server.py` on a free loopback port; killed on drop.
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    fn start() -> anyhow::Result<SmtpServer> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = std::process::Command::new(PYTHON)
            .arg(Path::new(REPO).join("tests/smtp_server.py"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--maildir")
            .arg(dir.path().join("Maildir"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting tests/smtp_server.py")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = SmtpServer { child, port, dir };
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(line) if line.starts_with("ready") => Ok(server),
            other => {
                let _ = server.child.kill();
                anyhow::bail!("smtp_server.py did not get ready: {other:?}")
            }
        }
    }

    fn received(&self) -> usize {
        count_files(&self.dir.path().join("Maildir/new"))
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn print_deliveries(ds: &[Delivery]) {
    let mut t = Table::new(
        "3a. escalate::send_due, one round over the whole outbox",
        &[
            "transport",
            "mails",
            "round ms",
            "mails/s",
            "ms per mail (mean)",
            "received",
        ],
    );
    for d in ds {
        t.row(vec![
            d.name.clone(),
            d.mails.to_string(),
            ms(d.round),
            rate(d.mails, d.round),
            format!("{:.2}", d.round.as_secs_f64() * 1000.0 / d.mails as f64),
            d.received.to_string(),
        ]);
    }
    t.print();
    let mut t = Table::new(
        "3b. The same mails again, one by one as send_due does them: per-mail latency (ms)",
        &["transport", "step", "mails", "median", "p90", "p99", "max"],
    );
    for d in ds {
        for (step, s) in [
            ("claim_mail (outbox → sending)", &d.claim),
            ("Mailer::send", &d.send),
            ("finish_mail (sent + event)", &d.finish),
            ("whole mail", &d.total),
        ] {
            t.row(vec![
                d.name.clone(),
                step.into(),
                s.len().to_string(),
                ms(s.median()),
                ms(s.p90()),
                ms(s.p99()),
                ms(s.max()),
            ]);
        }
    }
    t.print();
    println!(
        "\n3a: mails/s = mails / wall time of one send_due round (claim, MIME, deliver, record, each in turn). \
         3b: the outbox requeued and its first mails sent again, at most {ONE_BY_ONE:?} per transport, each \
         step timed."
    );
    println!(
        "\n\"received\": .eml files written (file) or messages in the server's Maildir (SMTP) after both \
         passes; a resend overwrites the same .eml (named by Message-ID), the Maildir keeps both."
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();

    hook_cost().await?;
    println!("({:.1} s)", started.elapsed().as_secs_f64());

    let mut scans = Vec::new();
    let mut kept = None;
    for &(n, first_runs) in SCAN_SIZES {
        let (r, w) = scan(n, first_runs, started).await?;
        scans.push(r);
        if kept.is_none() {
            kept = Some(w);
        } else {
            w.ledger.close().await;
        }
    }
    print_scans(&scans);
    println!("({:.1} s)", started.elapsed().as_secs_f64());

    // Delivery: the outbox of the 1 000-case practice after its first scan.
    let w = kept.context("a scan ran")?;
    let mut settings = (*w.settings).clone();
    let files = tempfile::tempdir()?;
    settings.mail.transport = MailTransport::File {
        dir: files.path().to_owned(),
    };
    let mut ds = vec![
        deliver(
            "file (.eml)",
            &w.ledger,
            &Mailer::new(&settings.mail)?,
            ONE_BY_ONE[0].1,
            || count_files(files.path()),
        )
        .await?,
    ];

    let server = SmtpServer::start()?;
    let path = w.p.config_path();
    let text = std::fs::read_to_string(&path)?.replace("transport = \"file\"", "transport = \"smtp\"")
        + &format!(
            "\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
            server.port
        );
    std::fs::write(&path, text)?;
    let smtp = load(&w.p)?;
    anyhow::ensure!(matches!(smtp.mail.transport, MailTransport::Smtp { .. }));
    ds.push(
        deliver(
            "SMTP (aiosmtpd, 127.0.0.1, no TLS)",
            &w.ledger,
            &Mailer::new(&smtp.mail)?,
            ONE_BY_ONE[1].1,
            || server.received(),
        )
        .await?,
    );
    drop(server);
    w.ledger.close().await;
    print_deliveries(&ds);

    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
