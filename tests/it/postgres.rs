//! PostgreSQL for the tests, and what only several writers can show.
//!
//! The server is real: Debian's `postgresql`, a private cluster in
//! `target/pg` (data, socket and log; no TCP), created by `initdb` and
//! started by `pg_ctl` as the `postgres` user when the tests run as root,
//! as the current user otherwise. The first test that needs it starts it
//! (under a file lock, so parallel test processes start it once); it keeps
//! running for the next test run, and `scripts/test` stops it at the end.
//! `PRECERT_TEST_PG=postgres://USER@HOST/postgres` uses a server of your own
//! instead. Every test gets a database of its own, dropped when it ends.
//!
//! The tests here race several writers — tasks, and processes (this test
//! binary run again as a worker) — for the same jobs, mail, escalations,
//! submission leases and cron slots, and check that each was taken once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use precert::config::Job;
use precert::queue::{LeaseFilter, NewJob, Queue};
use precert::store::{Actor, Ledger, StoreError};
use sqlx::Connection;

use super::support::{Project, REPO};

/// The backends a test can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend: `NAME::sqlite` and
/// `NAME::postgres`.
macro_rules! both_backends {
    ($(#[$attr:meta])* $name:ident) => {
        mod $name {
            use super::super::postgres::Backend;
            $(#[$attr])*
            async fn sqlite() {
                super::$name(Backend::Sqlite).await
            }
            $(#[$attr])*
            async fn postgres() {
                super::$name(Backend::Postgres).await
            }
        }
    };
}
pub(crate) use both_backends;

const PORT: u16 = 55432;

/// Where the test cluster is.
struct Server {
    /// A URL for database `DB`: `{DB}` is replaced by its name.
    url_template: String,
}

impl Server {
    fn url(&self, db: &str) -> String {
        self.url_template.replace("{DB}", db)
    }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("PRECERT_TEST_PG") {
        Ok(url) if !url.is_empty() => {
            let (base, query) = url.split_once('?').map_or((url.as_str(), ""), |(b, q)| (b, q));
            let (server, _db) = base
                .rsplit_once('/')
                .expect("PRECERT_TEST_PG: postgres://USER@HOST/DATABASE");
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            Server {
                url_template: format!("{server}/{{DB}}{query}"),
            }
        }
        _ => start_private_cluster(),
    })
}

/// The newest PostgreSQL's programs on this machine.
fn pg_bindir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): scripts/test installs Debian's \
             `postgresql`, or set PRECERT_TEST_PG to a server of your own"
        ),
    }
}

/// (uid, gid) of the `postgres` user when the tests run as root: the
/// server refuses to run as root.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam with a valid C string; the result is read at once,
    // before any other call could reuse its static buffer.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "the tests run as root, and there is no `postgres` user to run the server (Debian's package creates it)"
    );
    // SAFETY: checked non-null above.
    let pw = unsafe { &*pw };
    Some((pw.pw_uid, pw.pw_gid))
}

/// Runs a PostgreSQL program as the server's user; panics with its output
/// when it fails.
fn pg_command(bin: &Path, program: &str, args: &[&str], cwd: &Path) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin.join(program));
    cmd.args(args).current_dir(cwd).env("LC_ALL", "C.UTF-8");
    if let Some((uid, gid)) = server_user() {
        cmd.uid(uid).gid(gid).env("HOME", cwd);
    }
    cmd.output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn chown_to_server(path: &Path) {
    if let Some((uid, gid)) = server_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// Creates (once) and starts (when it is not running) the cluster in
/// `target/pg`. Idempotent and safe for parallel test processes: they take
/// turns under an exclusive lock on `target/pg/lock`.
fn start_private_cluster() -> Server {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    let root = Path::new(REPO).join("target/pg");
    let data = root.join("data");
    let run = root.join("run");
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.join("lock")).unwrap();
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    let bin = pg_bindir();
    let major = bin.parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    let initialised = std::fs::read_to_string(data.join("PG_VERSION")).is_ok_and(|v| v.trim() == major);
    if !initialised {
        // A cluster of another PostgreSQL version, or half made: start over.
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown_to_server(&data);
        let out = pg_command(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            &root,
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Only this machine's test processes connect, through the socket in
        // target/pg/run. Durability is not what these tests are about.
        let conf = format!(
            "\n# precert tests (tests/it/postgres.rs)\nlisten_addresses = ''\nport = {PORT}\n\
             unix_socket_directories = '{}'\nmax_connections = 300\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\n",
            run.display()
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
    }
    std::fs::create_dir_all(&run).unwrap();
    chown_to_server(&run);
    let status = pg_command(&bin, "pg_ctl", &["status", "-D", data.to_str().unwrap()], &root);
    if !status.status.success() {
        // `-w` waits until the server accepts connections (or fails).
        let log = run.join("server.log");
        let out = pg_command(
            &bin,
            "pg_ctl",
            &[
                "start",
                "-D",
                data.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-l",
                log.to_str().unwrap(),
            ],
            &root,
        );
        assert!(
            out.status.success(),
            "the test PostgreSQL did not start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    Server {
        url_template: format!(
            "postgres://postgres@localhost/{{DB}}?host={}&port={PORT}",
            run.display()
        ),
    }
}

/// A database of this test's own on the test server; dropped with it.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub async fn new() -> PgDatabase {
        static N: AtomicU32 = AtomicU32::new(0);
        let server = server();
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            Utc::now().timestamp_micros() % 1_000_000_000
        );
        let mut admin = sqlx::PgConnection::connect(&server.url("postgres"))
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL ({}): {e}", server.url("postgres")));
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        PgDatabase {
            url: server.url(&name),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin = server().url("postgres");
        let name = self.name.clone();
        // Drop may run inside the test's runtime: a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                    let _ = c.close().await;
                }
            })
        })
        .join();
    }
}

/// A project (the shipped configuration and samples) with its ledger on
/// one backend: the project's SQLite file, or a database of its own on the
/// test PostgreSQL.
pub struct TestDb {
    pub project: Project,
    pub url: String,
    _pg: Option<PgDatabase>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let project = Project::new();
        let (url, pg) = match backend {
            Backend::Sqlite => (project.settings().database_url, None),
            Backend::Postgres => {
                let db = PgDatabase::new().await;
                (db.url.clone(), Some(db))
            }
        };
        TestDb { project, url, _pg: pg }
    }

    pub async fn ledger(&self) -> Ledger {
        Ledger::open(&self.url).await.unwrap()
    }

    /// Imports a case file of the project through the library (the CLI
    /// reads `database_url` from the configuration, which is SQLite's).
    pub async fn import(&self, ledger: &Ledger, rel: &str) -> precert::intake::ImportReport {
        let settings = self.project.settings();
        let path = self.project.path(rel);
        let ctx = precert::intake::Context {
            settings: &settings,
            default_practice: None,
            base_dir: path.parent().unwrap(),
            today: Utc::now().date_naive(),
        };
        let format = precert::intake::Format::from_path(&path).unwrap();
        precert::intake::import_file(&path, format, &ctx, ledger, &Actor::current_user(), |_, _| {})
            .await
            .unwrap()
    }
}

// --- tests ------------------------------------------------------------------

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 15, 0, 0).unwrap()
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    a_new_database_is_migrated_once_by_processes_starting_together
);
async fn a_new_database_is_migrated_once_by_processes_starting_together(backend: Backend) {
    let db = TestDb::new(backend).await;
    // Four ledgers opening a database nobody has migrated: each on its own
    // connections, as four daemons would. They take turns on the migration
    // lock; the later ones find nothing to do, and none fails.
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { Ledger::open(&url).await })
        })
        .collect();
    for open in opens {
        open.await.unwrap().unwrap().close().await;
    }
    let status = precert::store::schema_status(&db.url).await.unwrap();
    assert!(status.up_to_date(), "{status:?}");
    assert_eq!(status.migrations.len(), status.backend.migrations().len());
    assert!(precert::store::migrate(&db.url).await.unwrap().is_empty());
}

#[tokio::test]
async fn db_status_and_migrate_on_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let before = precert::store::schema_status(&db.url).await.unwrap();
    assert_eq!(before.backend, precert::store::Backend::Postgres);
    let all: Vec<(i64, &str)> = before.backend.migrations().iter().map(|(v, d, _)| (*v, *d)).collect();
    assert_eq!(&all[..2], [(1, "ledger"), (2, "letters and references")]);
    assert_eq!(before.pending().collect::<Vec<_>>(), all);
    let applied = precert::store::migrate(&db.url).await.unwrap();
    assert_eq!(applied, all);
    assert!(precert::store::migrate(&db.url).await.unwrap().is_empty());
    let after = precert::store::schema_status(&db.url).await.unwrap();
    assert!(after.up_to_date());
    assert!(after
        .migrations
        .iter()
        .all(|(_, _, a)| a.as_ref().is_some_and(|a| a.checksum_matches)));
}

#[tokio::test]
async fn db_status_and_migrate_on_the_command_line() {
    let p = Project::new();
    let db_file = p.settings().data_dir.join("precert.db");
    let out = p.precert(&["db", "status"]);
    let text = super::support::stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", super::support::stderr(&out));
    assert!(
        text.contains("(SQLite)") && text.contains("does not exist yet"),
        "{text}"
    );
    let n = precert::store::Backend::Sqlite.migrations().len();
    assert!(text.contains("   5  submission owner          pending"), "{text}");
    assert!(text.contains(&format!("{n} migration(s) pending")), "{text}");
    assert!(!db_file.exists(), "status creates nothing");

    let out = p.precert(&["db", "migrate"]);
    let text = super::support::stdout(&out);
    assert!(out.status.success(), "{text}{}", super::support::stderr(&out));
    assert!(
        text.contains("applied    1  ledger") && text.contains(&format!("{n} migration(s) applied")),
        "{text}"
    );

    let out = p.precert(&["db", "migrate"]);
    assert!(super::support::stdout(&out).contains("already up to date"));
    let out = p.precert(&["db", "status"]);
    let text = super::support::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("Up to date.") && !text.contains("pending"), "{text}");
}

#[test]
fn a_ledger_file_named_in_the_configuration_is_created_with_its_directory() {
    // `database_url = "sqlite:///…/ledger.db"`, a file that does not exist
    // yet (nor its directory), without `?mode=rwc`: created, private.
    use std::os::unix::fs::PermissionsExt as _;
    let p = Project::new();
    let file = p.path("elsewhere/ledger.db");
    let config = p.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("database_url = \"sqlite://{}\"\n{text}", file.display()),
    )
    .unwrap();
    let out = p.precert(&["db", "migrate"]);
    assert!(
        out.status.success(),
        "{}{}",
        super::support::stdout(&out),
        super::support::stderr(&out)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let out = p.precert(&["db", "status"]);
    assert!(super::support::stdout(&out).contains("Up to date."));
}

both_backends!(
    #[tokio::test]
    a_schema_newer_than_this_precert_is_refused_with_the_reason
);
async fn a_schema_newer_than_this_precert_is_refused_with_the_reason(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ledger = db.ledger().await;
    let checksum = match backend {
        Backend::Sqlite => "X'00'",
        Backend::Postgres => "'\\x00'::bytea",
    };
    ledger
        .execute_raw(&format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99, 'from the future', TRUE, {checksum}, 0)"
        ))
        .await
        .unwrap();
    ledger.close().await;
    let err = Ledger::open(&db.url).await.err().unwrap();
    assert!(matches!(err, StoreError::NewerSchema { version: 99 }), "{err}");
    assert!(err.to_string().contains("upgrade precert"), "{err}");
    let status = precert::store::schema_status(&db.url).await.unwrap();
    assert_eq!(status.unknown.len(), 1);
    assert!(!status.up_to_date());
}

#[tokio::test]
async fn a_database_url_precert_cannot_use_gets_a_clear_error() {
    let err = Ledger::open("mysql://root@localhost/precert").await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "`mysql://root@localhost/precert` is not a database URL precert knows; use sqlite://PATH or postgres://USER@HOST/DATABASE"
    );
    // An unreachable server: the error names it, without its password.
    let missing = Path::new(REPO).join("target/pg/no-such-dir");
    let url = format!(
        "postgres://precert:s3cret@localhost/precert?host={}&port=1",
        missing.display()
    );
    let err = Ledger::open(&url).await.err().unwrap().to_string();
    assert!(
        err.starts_with("cannot open the ledger at postgres://precert:***@localhost/precert"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

// --- several writers --------------------------------------------------------

const WORKER_ENV: &str = "PRECERT_TEST_WORKER";
/// An advisory lock the writers wait on, so that they all start at once.
const GATE: i64 = 4242;

/// What racing writers do.
#[derive(Clone, Copy, Debug)]
enum Race {
    /// Lease and complete jobs until none is left.
    Jobs,
    /// Claim and send mail until none is due.
    Mail,
    /// Claim the submission lease of every ready case.
    Submissions,
}

impl Race {
    fn name(self) -> &'static str {
        match self {
            Race::Jobs => "jobs",
            Race::Mail => "mail",
            Race::Submissions => "submissions",
        }
    }
}

/// Four writers in this process, each with its own ledger (its own
/// connections); returns how many things they took.
/// Four writers' ledgers, opened (connected, migrated) before the race
/// starts, so neither process begins while the other is still connecting.
async fn four_ledgers(url: &str) -> Vec<Ledger> {
    let mut ledgers = Vec::new();
    for _ in 0..4 {
        ledgers.push(Ledger::open(url).await.unwrap());
    }
    ledgers
}

async fn four_writers(race: Race, ledgers: Vec<Ledger>) -> usize {
    let tasks: Vec<_> = ledgers
        .into_iter()
        .enumerate()
        .map(|(w, ledger)| {
            tokio::spawn(async move {
                let took = one_writer(race, &ledger, w).await;
                ledger.close().await;
                took
            })
        })
        .collect();
    let mut took = 0;
    for t in tasks {
        took += t.await.unwrap();
    }
    took
}

async fn one_writer(race: Race, ledger: &Ledger, w: usize) -> usize {
    let me = format!("{}-w{w}", std::process::id());
    let mut took = 0;
    match race {
        Race::Jobs => {
            let q = Queue::new(ledger.clone());
            while let Some(job) = q
                .lease(&me, Duration::from_secs(300), &LeaseFilter::default(), t0())
                .await
                .unwrap()
            {
                q.complete(&job.lease, t0()).await.unwrap();
                took += 1;
            }
        }
        Race::Mail => {
            while let Some(mail) = ledger.claim_mail(chrono::Duration::minutes(5)).await.unwrap() {
                ledger
                    .finish_mail(&mail, &precert::store::SendOutcome::Sent)
                    .await
                    .unwrap();
                took += 1;
            }
        }
        Race::Submissions => {
            let filter = precert::store::CaseFilter {
                status: Some(precert::case::CaseStatus::Ready),
                ..Default::default()
            };
            let mut ids: Vec<i64> = ledger.list(&filter).await.unwrap().iter().map(|c| c.id).collect();
            // Each writer goes through the cases from another place.
            let n = ids.len();
            ids.rotate_left((w * 7 + std::process::id() as usize) % n.max(1));
            for id in ids {
                match ledger.claim_submission(id, &Actor::job("submit", w as i64)).await {
                    Ok(lease) => {
                        assert_eq!(lease.took_over, None);
                        took += 1;
                    }
                    Err(StoreError::Owned { .. }) => {}
                    Err(e) => panic!("claim of case {id}: {e}"),
                }
            }
        }
    }
    took
}

/// The second process: this test binary, running `worker_process`.
struct Worker {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Worker {
    fn start(race: Race, url: &str) -> Worker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "it::postgres::worker_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_ENV, format!("{}|{url}", race.name()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Worker { child, lines }
    }

    /// What follows `@@WORD` in the worker's output (its test harness
    /// prints around it, on the same line too). Blocks a thread: call from
    /// `spawn_blocking`, under a timeout.
    fn expect(&mut self, word: &str) -> String {
        let marker = format!("@@{word}");
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            if let Some((_, rest)) = line.split_once(&marker) {
                return rest.split_whitespace().next().unwrap_or_default().to_owned();
            }
        }
        panic!("the worker process ended without printing `{marker}`");
    }
}

/// Runs `f` on a blocking thread and waits for it at most `secs`.
async fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::time::timeout(Duration::from_secs(secs), tokio::task::spawn_blocking(f))
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs} s waiting for {what}"))
        .unwrap()
}

/// Four writers here and four in a second process, released together.
/// Returns what each process took.
async fn race_two_processes(race: Race, url: &str) -> (usize, usize) {
    let postgres = url.starts_with("postgres");
    let mut gate = None;
    if postgres {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(GATE)
            .execute(&mut conn)
            .await
            .unwrap();
        gate = Some(conn);
    }
    let mut worker = Worker::start(race, url);
    let mut worker = within(60, "the worker process to be ready", move || {
        worker.expect("READY");
        worker
    })
    .await;
    // Both processes' writers are connected; open the gate (PostgreSQL: the
    // worker waits on it; SQLite: it was ready, so it is racing already).
    let ledgers = four_ledgers(url).await;
    if let Some(mut conn) = gate {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(GATE)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let here = four_writers(race, ledgers).await;
    // The worker stays alive until told (a claimant on this host whose
    // process is gone counts as having let go of its leases).
    let (there, worker) = within(120, "the worker process to finish", move || {
        let n: usize = worker.expect("DONE").parse().unwrap();
        (n, worker)
    })
    .await;
    let Worker { mut child, .. } = worker;
    drop(child.stdin.take());
    let status = within(30, "the worker process to exit", move || child.wait().unwrap()).await;
    assert!(status.success(), "worker process: {status}");
    (here, there)
}

/// The second process of the races above; does nothing when run on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "run by the tests of this module as their second process"]
async fn worker_process() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let (race, url) = spec.split_once('|').unwrap();
    let race = [Race::Jobs, Race::Mail, Race::Submissions]
        .into_iter()
        .find(|r| r.name() == race)
        .unwrap();
    let ledgers = four_ledgers(url).await;
    if url.starts_with("postgres") {
        let mut gate = sqlx::PgConnection::connect(url).await.unwrap();
        println!("@@READY");
        // Wait for the gate to open: the parent holds it until both
        // processes are ready.
        sqlx::query("SELECT pg_advisory_lock_shared($1)")
            .bind(GATE)
            .execute(&mut gate)
            .await
            .unwrap();
        gate.close().await.unwrap();
    } else {
        println!("@@READY");
    }
    let took = four_writers(race, ledgers).await;
    println!("@@DONE {took}");
    // Stay until the parent has checked (it closes stdin).
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
        .await
        .unwrap()
        .unwrap();
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    two_processes_of_four_workers_lease_each_job_once
);
async fn two_processes_of_four_workers_lease_each_job_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ledger = db.ledger().await;
    let q = Queue::new(ledger.clone());
    const JOBS: usize = 300;
    for _ in 0..JOBS {
        q.enqueue(&NewJob::new(Job::Poll, "lakeside-ortho", t0()).payer("sandbox"), t0())
            .await
            .unwrap();
    }
    let (here, there) = race_two_processes(Race::Jobs, &db.url).await;
    assert_eq!(here + there, JOBS, "every job run once ({here} here, {there} there)");
    let jobs = q.list(None).await.unwrap();
    assert_eq!(jobs.len(), JOBS);
    for j in &jobs {
        // Token 1: leased once, by one worker, never taken over.
        assert_eq!(
            (j.state, j.attempts, j.lease_token),
            (precert::queue::JobState::Done, 1, 1),
            "job {}",
            j.id
        );
    }
    if backend == Backend::Postgres {
        assert!(
            here > 0 && there > 0,
            "both processes worked ({here} here, {there} there)"
        );
    }
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    two_processes_of_four_senders_send_each_mail_once
);
async fn two_processes_of_four_senders_send_each_mail_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ledger = db.ledger().await;
    const MAILS: usize = 150;
    for i in 0..MAILS {
        let mail = precert::mail::OutgoingMail {
            message_id: format!("digest-{i}@lakeside-ortho.precert"),
            in_reply_to: None,
            to: vec!["supervisor@lakeside.example".into()],
            cc: vec![],
            subject: format!("Digest {i}"),
            text: "text".into(),
            html: "<p>html</p>".into(),
        };
        assert!(ledger.queue_mail("lakeside-ortho", "digest", &mail).await.unwrap());
    }
    let (here, there) = race_two_processes(Race::Mail, &db.url).await;
    assert_eq!(
        here + there,
        MAILS,
        "every mail claimed once ({here} here, {there} there)"
    );
    let outbox = ledger.outbox(true).await.unwrap();
    assert_eq!(outbox.len(), MAILS);
    for m in &outbox {
        assert_eq!(
            (m.state, m.attempts),
            (precert::store::OutboxState::Sent, 1),
            "mail {}",
            m.id
        );
    }
    if backend == Backend::Postgres {
        assert!(
            here > 0 && there > 0,
            "both processes sent ({here} here, {there} there)"
        );
    }
}

/// `n` ready cases of the lakeside practice, from the sample's first row.
pub(crate) fn many_cases_csv(n: usize) -> String {
    let sample = std::fs::read_to_string(Path::new(REPO).join("samples/cases.csv")).unwrap();
    let mut lines = sample.lines();
    let header = lines.next().unwrap();
    let first = lines.next().unwrap();
    let mut out = format!("{header}\n");
    for i in 0..n {
        out.push_str(&first.replacen("LO-2026-1001", &format!("LO-RACE-{i:04}"), 1));
        out.push('\n');
    }
    out
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    two_processes_of_four_claimants_take_each_submission_once
);
async fn two_processes_of_four_claimants_take_each_submission_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ledger = db.ledger().await;
    const CASES: usize = 60;
    db.project.write("samples/race.csv", &many_cases_csv(CASES));
    let report = db.import(&ledger, "samples/race.csv").await;
    assert_eq!(report.created, CASES, "{:?}", report.invalid);
    let (here, there) = race_two_processes(Race::Submissions, &db.url).await;
    assert_eq!(
        here + there,
        CASES,
        "every case claimed once ({here} here, {there} there)"
    );
    for case in ledger.list(&Default::default()).await.unwrap() {
        assert_eq!(case.status, precert::case::CaseStatus::Submitting);
        let owner = ledger.submission_owner(case.id).await.unwrap().unwrap();
        assert_eq!(owner.token, 1, "case {}: one grant", case.id);
        let started = ledger
            .events(case.id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.to_status == Some(precert::case::CaseStatus::Submitting))
            .count();
        assert_eq!(started, 1, "case {}", case.id);
    }
    if backend == Backend::Postgres {
        assert!(
            here > 0 && there > 0,
            "both processes claimed ({here} here, {there} there)"
        );
    }
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    daemons_raising_the_same_escalation_at_once_open_it_once
);
async fn daemons_raising_the_same_escalation_at_once_open_it_once(backend: Backend) {
    use precert::store::EscalationHook;
    let db = TestDb::new(backend).await;
    let settings = Arc::new(db.project.settings());
    let ledger = db.ledger().await;
    db.import(&ledger, "samples/cases.csv").await;
    let case = ledger.find("lakeside-ortho", "LO-2026-1001").await.unwrap().unwrap();
    // What the rules ask for when automation gives up on the case.
    let rules = precert::escalate::Escalator::new(settings.clone(), &[], Arc::default());
    let mut attention = case.clone();
    attention.status = precert::case::CaseStatus::NeedsAttention;
    let wanted = rules.on_status(&attention, None, Some("the portal changed"), Utc::now());
    assert_eq!(wanted.len(), 1, "{wanted:?}");
    let new = Arc::new(wanted.into_iter().next().unwrap());
    // Eight daemons' scans find it at the same moment.
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let (url, new, settings) = (db.url.clone(), new.clone(), settings.clone());
            tokio::spawn(async move {
                let ledger = Ledger::open(&url).await.unwrap();
                ledger.set_escalation_hook(Arc::new(precert::escalate::Escalator::new(
                    settings,
                    &[],
                    Arc::default(),
                )));
                let opened = ledger.open_escalation(&new).await.unwrap();
                ledger.close().await;
                opened
            })
        })
        .collect();
    let mut opened = Vec::new();
    for o in opens {
        opened.extend(o.await.unwrap());
    }
    assert_eq!(opened.len(), 1, "one of eight opened it: {opened:?}");
    let all = ledger.escalations(None, true).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, opened[0]);
    let mail = ledger.outbox(true).await.unwrap();
    assert_eq!(mail.len(), 1, "one first mail");
    assert_eq!(mail[0].escalation_id, Some(opened[0]));
}
