//! Issue 12: several daemons on one PostgreSQL do each thing once — with one
//! of them SIGKILLed mid-run and restarted.

use std::collections::BTreeSet;
use std::time::Duration;

use precert::case::CaseStatus;
use precert::store::Ledger;
use precert_sandbox::{Sandbox, SandboxConfig};
use sqlx::Row;

use super::daemon::{free_port, start_with, until, Daemon};
use super::postgres::PgDatabase;
use super::smtp::SmtpServer;
use super::support::Project;

const CASES: usize = 300;

/// `CASES` ready lakeside cases, each a distinct request (its own service
/// date); every tenth a lumbar MRI the sandbox denies (a supervisor's mail),
/// the others a knee MRI it approves after 20 s of its clock.
fn cases_csv(p: &Project) -> String {
    let sample = std::fs::read_to_string(p.path("samples/cases.csv")).unwrap();
    let mut lines = sample.lines();
    let header = lines.next().unwrap();
    let first = lines.next().unwrap();
    let base = chrono::NaiveDate::from_ymd_opt(2026, 12, 10).unwrap();
    let mut out = format!("{header}\n");
    for i in 0..CASES {
        let day = (base + chrono::Duration::days(i as i64)).to_string();
        let mut row = first
            .replacen("LO-2026-1001", &format!("LO-CL-{i:04}"), 1)
            .replace("2026-12-08", &day);
        if i % 10 == 0 {
            row = row.replacen("73721-RT*1", "72148*1", 1);
        }
        out.push_str(&row);
        out.push('\n');
    }
    out
}

/// The cluster's public address: a TCP balancer on loopback that hands each
/// connection to the next daemon that accepts it, as a load balancer in front
/// of several precert servers would. Payers reach the cluster through it.
struct Balancer {
    url: String,
    backends: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
}

impl Balancer {
    async fn start() -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let backends = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u16>::new()));
        let pool = backends.clone();
        tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let ports = pool.lock().unwrap().clone();
                next += 1;
                let first = next;
                tokio::spawn(async move {
                    for i in 0..ports.len() {
                        let port = ports[(first + i) % ports.len()];
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer { url, backends }
    }
}

fn start(p: &Project, db: &str, n: usize, balancer: &Balancer) -> Daemon {
    let port = free_port();
    balancer.backends.lock().unwrap().push(port);
    start_with(
        p,
        port,
        false,
        &format!("daemon-{n}"),
        &[
            ("PRECERT__DATABASE_URL", db),
            ("PRECERT__HTTP__PUBLIC_URL", &balancer.url),
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_on_one_postgresql_submit_and_mail_each_thing_once_though_one_is_killed() {
    let db = PgDatabase::new().await;
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let smtp = SmtpServer::start();
    let p = Project::new();
    p.use_sandbox(&sandbox.base_url());
    p.use_smtp(smtp.port());
    // lakeside's sandbox cases go through the PAS API (no browser: the
    // test is about the cluster, not the portal); valley has no cases.
    let path = p.path("config/practices/lakeside-ortho.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let from = text.find("[payers.sandbox]\n").unwrap();
    let to = text.find("[payers.sandbox-pas]").unwrap();
    let head = format!(
        "{}[payers.sandbox]\nplaybook = \"sandbox-pas\"\nbase_url = \"{}\"\naccount = {{ client_id = \"lakeside-pas\" }}\n\
         secrets.client_secret = {{ env = \"LAKESIDE_SANDBOX_CLIENT_SECRET\" }}\n\n{}",
        &text[..from],
        sandbox.base_url(),
        &text[to..]
    );
    let head = head.split("[schedules]").next().unwrap().to_owned();
    std::fs::write(
        &path,
        format!(
            "{head}[schedules]\nsubmit = \"*/2 * * * * *\"\npoll = \"*/2 * * * * *\"\nletters = \"0 0 1 1 *\"\nescalations = \"*/2 * * * * *\"\n"
        ),
    )
    .unwrap();
    // The PAS payer allows one session at once — across the cluster.
    let pb = p.path("playbooks/sandbox-pas.yaml");
    let text = std::fs::read_to_string(&pb).unwrap();
    assert!(
        text.contains("  max_sessions: 4\n"),
        "the shipped PAS playbook allows 4 at once"
    );
    std::fs::write(&pb, text.replacen("  max_sessions: 4\n", "  max_sessions: 1\n", 1)).unwrap();
    p.write("samples/cluster.csv", &cases_csv(&p));
    let out = p
        .command(&["cases", "import", "samples/cluster.csv"])
        .env("PRECERT__DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ledger = Ledger::open(&db.url).await.unwrap();
    assert_eq!(
        ledger.count_by_status().await.unwrap(),
        [(CaseStatus::Ready, CASES as i64)]
    );

    let balancer = Balancer::start().await;
    let mut daemons: Vec<Daemon> = (0..3).map(|n| start(&p, &db.url, n, &balancer)).collect();
    // Kill one while submissions are under way, then start it again.
    until(
        &daemons[0],
        Duration::from_secs(120),
        "submissions under way",
        || async { sandbox.submissions().len() >= CASES / 5 },
    )
    .await;
    let killed = daemons.remove(0);
    let killed_pid = killed.pid();
    killed.signal(libc::SIGKILL);
    let killed_log = killed.log();
    let _ = killed.exit(Duration::from_secs(10)).await;
    daemons.push(start(&p, &db.url, 3, &balancer));

    // Everything is decided (the sandbox's reviewers work on its clock) and
    // every mail is out.
    let done = || async {
        sandbox.advance_clock(Duration::from_secs(30));
        let counts = ledger.count_by_status().await.unwrap();
        let settled = counts
            .iter()
            .all(|(s, _)| matches!(s, CaseStatus::Approved | CaseStatus::Denied));
        let outbox = ledger.outbox(false).await.unwrap();
        settled && outbox.is_empty()
    };
    until(
        &daemons[0],
        Duration::from_secs(420),
        "every case decided and its mail sent",
        done,
    )
    .await;
    let logs: Vec<String> = std::iter::once(killed_log)
        .chain(daemons.iter().map(|d| d.log()))
        .collect();
    for d in daemons {
        d.signal(libc::SIGTERM);
        assert!(d.exit(Duration::from_secs(60)).await.success());
    }

    // One PAS subscription for the whole cluster, though four daemons
    // started and one was killed;
    // none deleted. Notifications came through the balancer to whichever
    // daemon it chose, and each checked the payer's token against the
    // ledger, so none was refused.
    let subscription_calls = |method: &str| {
        sandbox
            .request_log()
            .iter()
            .filter(|e| e.method == method && e.path.starts_with("/fhir/Subscription"))
            .count()
    };
    // (Its `sandbox-pas` binding points at no payer here: its registration
    // is refused and left to be tried again.)
    assert_eq!((subscription_calls("POST"), subscription_calls("DELETE")), (1, 0));
    let rows = ledger.subscriptions().await.unwrap();
    let registered: Vec<_> = rows.iter().filter(|r| r.subscription_id.is_some()).collect();
    assert_eq!(registered.len(), 1, "{rows:?}");
    assert_eq!(registered[0].route, "lakeside-ortho/sandbox");
    // A claim is left only by the killed daemon (killed mid-registration),
    // and only until its lease runs out.
    assert!(
        rows.iter().all(|r| r
            .holder
            .as_ref()
            .is_none_or(|h| h.ends_with(&format!("-{killed_pid}"))
                && r.lease_until <= r.updated_at + chrono::Duration::seconds(60))),
        "a claim was left: {rows:?}"
    );
    let handled: Vec<usize> = logs
        .iter()
        .map(|l| l.matches("PAS notification handled.").count())
        .collect();
    assert!(
        handled.iter().filter(|&&n| n > 0).count() >= 2,
        "notifications were handled by one daemon only: {handled:?}"
    );
    assert!(
        logs.iter().all(|l| !l.contains("PAS notification refused")),
        "a daemon refused a notification"
    );

    // Each case reached the payer once: as many submissions as cases, each
    // case holding its own reference.
    let submissions = sandbox.submissions();
    assert_eq!(submissions.len(), CASES, "requests the payer received");
    let cases = ledger.list(&Default::default()).await.unwrap();
    let refs: BTreeSet<String> = cases.iter().filter_map(|c| c.payer_ref.clone()).collect();
    let sent: BTreeSet<String> = submissions.iter().map(|s| s.reference.clone()).collect();
    assert_eq!(refs, sent, "each case holds the reference of its one request");
    let denied = cases.iter().filter(|c| c.status == CaseStatus::Denied).count();
    assert_eq!(denied, CASES / 10);

    // Each mail once: the SMTP server received every mail the outbox sent,
    // and every denial's mail is among them. SMTP allows one window for a
    // second copy: the killed daemon's mail whose message the server had
    // taken when the kill came, before the ledger recorded it as sent. Its
    // claim ran out and another daemon sent it again — with the same
    // Message-ID, so a mail client shows it once (ARCHITECTURE.md). Any
    // copy must be that: a mail claimed more than once, that the killed
    // daemon never logged as sent, at most one per mail it had in flight.
    let received = smtp.messages();
    let mut copies: std::collections::BTreeMap<&str, usize> = Default::default();
    for m in &received {
        *copies.entry(m.message_id.as_str()).or_default() += 1;
    }
    let outbox = ledger.outbox(true).await.unwrap();
    assert_eq!(copies.len(), outbox.len(), "every queued mail arrived");
    let twice: Vec<&str> = copies.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
    assert!(
        twice.len() <= 4 && copies.values().all(|n| *n <= 2),
        "mail arrived more than once: {copies:?}"
    );
    for id in &twice {
        let row = outbox.iter().find(|o| o.message_id == *id).unwrap();
        assert!(row.attempts >= 2, "{id} arrived twice but was claimed once: {row:?}");
        assert!(
            !logs[0].lines().any(|l| l.contains("Mail sent.") && l.contains(id)),
            "{id} arrived twice though the killed daemon had logged it sent"
        );
    }
    // (Counted by Message-ID: a denial's mail may be the copy above.)
    let denial_mails: BTreeSet<&str> = received
        .iter()
        .filter(|m| m.subject.contains("Denied"))
        .map(|m| m.message_id.as_str())
        .collect();
    assert_eq!(denial_mails.len(), CASES / 10);

    // One session at once across the three daemons: no two jobs' runs
    // against the payer overlap on the timeline.
    let mut spans: std::collections::BTreeMap<String, (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> =
        std::collections::BTreeMap::new();
    for c in &cases {
        for e in ledger.events(c.id).await.unwrap() {
            if e.actor.starts_with("job:submit#") || e.actor.starts_with("job:poll#") {
                let s = spans.entry(e.actor.clone()).or_insert((e.at, e.at));
                s.0 = s.0.min(e.at);
                s.1 = s.1.max(e.at);
            }
        }
    }
    let spans: Vec<_> = spans.into_iter().collect();
    // (With decisions arriving by notification, the polls may find nothing
    // to write: one submit job's span can be all there is.)
    assert!(!spans.is_empty(), "{spans:?}");
    for (i, (a, (a0, a1))) in spans.iter().enumerate() {
        for (b, (b0, b1)) in &spans[i + 1..] {
            // The killed daemon's job ended without a last event: its span
            // ends at its last write, which is still before the next job's
            // first (that job waited for the dead holder's slot).
            assert!(a1 < b0 || b1 < a0, "{a} ({a0}..{a1}) and {b} ({b0}..{b1}) ran at once");
        }
    }

    // Each cron slot fired once, and nothing is left held by the dead
    // daemon.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let twice: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM (SELECT practice_id, job, scheduled_at FROM cron_fires \
         GROUP BY practice_id, job, scheduled_at HAVING COUNT(*) > 1) t",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get("n");
    assert_eq!(twice, 0, "a cron slot fired twice");
    let fired: i64 = sqlx::query("SELECT COUNT(*) AS n FROM cron_fires WHERE outcome = 'fired'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    assert!(fired > 0);
    let held: i64 = sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE state = 'leased' AND lease_owner LIKE $1")
        .bind(format!("%-{killed_pid}-%"))
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    assert_eq!(held, 0, "jobs still leased by the killed daemon");
    pool.close().await;
    sandbox.shutdown().await;
}

/// Issue 12: the cluster's cap on browser sessions. Two daemons on one
/// PostgreSQL drive one WebDriver grid node (a chromedriver started apart);
/// the two practices use two portal playbooks that each allow a session of
/// their own, but `webdriver.cluster_sessions = 1` says the grid takes one:
/// the node never has two sessions open, though both daemons submit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grid_shared_by_two_daemons_never_holds_more_sessions_than_the_cluster_cap() {
    let db = PgDatabase::new().await;
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let node = super::browser::GridNode::start().await;
    let p = Project::new();
    p.use_sandbox(&sandbox.base_url());
    // valley's portal account goes through a second playbook of the same
    // portal, with a session of its own.
    let text = std::fs::read_to_string(p.path("playbooks/sandbox.yaml")).unwrap();
    p.write(
        "playbooks/sandbox-two.yaml",
        &text.replacen("  id: sandbox\n", "  id: sandbox-two\n", 1),
    );
    for practice in ["lakeside-ortho", "valley-imaging"] {
        let path = p.path(&format!("config/practices/{practice}.toml"));
        let mut text = std::fs::read_to_string(&path).unwrap();
        if practice == "valley-imaging" {
            text = text.replacen(
                "[payers.sandbox]\n",
                "[payers.sandbox]\nplaybook = \"sandbox-two\"\n",
                1,
            );
        }
        let head = text.split("[schedules]").next().unwrap().to_owned();
        std::fs::write(
            &path,
            format!(
                "{head}[schedules]\nsubmit = \"*/2 * * * * *\"\npoll = \"0 0 1 1 *\"\nletters = \"0 0 1 1 *\"\nescalations = \"0 0 1 1 *\"\n"
            ),
        )
        .unwrap();
    }
    let import = p
        .command(&["cases", "import", "samples/cases.csv"])
        .env("PRECERT__DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    let ledger = Ledger::open(&db.url).await.unwrap();
    // Five of the six sample cases reach the payer (one member is inactive).
    let cases = ledger.list(&Default::default()).await.unwrap().len() - 1;

    let grid = |n: usize| {
        start_with(
            &p,
            free_port(),
            false,
            &format!("grid-daemon-{n}"),
            &[
                ("PRECERT__DATABASE_URL", db.url.as_str()),
                ("PRECERT__WEBDRIVER__REMOTE_URL", node.url.as_str()),
                ("PRECERT__WEBDRIVER__CLUSTER_SESSIONS", "1"),
                ("PRECERT__WEBDRIVER__CHROMEDRIVER", "/nonexistent/chromedriver"),
            ],
            &[],
        )
    };
    let daemons = [grid(0), grid(1)];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while sandbox.submissions().len() < cases {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {cases} cases submitted; the daemons' logs:\n{}\n----\n{}",
            sandbox.submissions().len(),
            daemons[0].log(),
            daemons[1].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs: Vec<String> = daemons.iter().map(|d| d.log()).collect();
    for d in daemons {
        d.signal(libc::SIGTERM);
        assert!(d.exit(Duration::from_secs(60)).await.success());
    }
    assert_eq!(sandbox.submissions().len(), cases, "each case once");
    let (most, opened) = node.sessions();
    assert_eq!(most, 1, "sessions open at once on the grid node:\n{}", node.log());
    assert!(opened >= 2, "both practices ran: {opened} sessions");
    assert!(
        logs.iter()
            .any(|l| l.contains("Every browser session of the cluster is in use")),
        "the cap was never reached, so it proved nothing:\n{}",
        logs.join("\n----\n")
    );
    sandbox.shutdown().await;
}
