//! A temporary precert project: the shipped config and samples, its own
//! data directory, and the sample secrets in the environment.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use precert::config::{self, Secrets, Settings};
use precert::store::Ledger;

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The sample practices' secrets (synthetic; the sandbox payer's values).
pub const SECRETS: &[(&str, &str)] = &[
    ("LAKESIDE_SANDBOX_PASSWORD", "Sandbox-Lakeside-2026"),
    ("LAKESIDE_SANDBOX_TOTP_SEED", "JBSWY3DPEHPK3PXP"),
    ("LAKESIDE_SANDBOX_CLIENT_SECRET", "sandbox-lakeside-client-secret"),
    ("VALLEY_SANDBOX_PASSWORD", "Sandbox-Valley-2026"),
    ("VALLEY_SANDBOX_TOTP_SEED", "KRSXG5CTMVRXEZLU"),
];

pub struct Project {
    pub dir: tempfile::TempDir,
    /// The project's own PostgreSQL database, when it runs on one (dropped
    /// with the project).
    _pg: Option<super::postgres::PgDatabase>,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

impl Project {
    /// A copy of the repository's `config/` and `samples/`.
    pub fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&Path::new(REPO).join("config"), &dir.path().join("config"));
        copy_dir(&Path::new(REPO).join("samples"), &dir.path().join("samples"));
        copy_dir(&Path::new(REPO).join("playbooks"), &dir.path().join("playbooks"));
        Project { dir, _pg: None }
    }

    /// [`Project::new`] with its ledger on `backend`: the project's SQLite
    /// file, or a database of its own on the test PostgreSQL, written into
    /// `config/precert.toml` so that the CLI and the daemon use it too.
    pub async fn on(backend: super::postgres::Backend) -> Project {
        let mut p = Project::new();
        if backend == super::postgres::Backend::Postgres {
            let db = super::postgres::PgDatabase::new().await;
            let path = p.config_path();
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.replacen(
                "# database_url = \"sqlite:///var/lib/precert/precert.db\"",
                &format!("database_url = \"{}\"", db.url),
                1,
            );
            assert!(
                text.contains(&db.url),
                "config/precert.toml has no database_url line to replace"
            );
            std::fs::write(&path, text).unwrap();
            p._pg = Some(db);
        }
        p
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Points every practice's `sandbox` payer at a running sandbox.
    pub fn use_sandbox(&self, base_url: &str) {
        for practice in ["lakeside-ortho", "valley-imaging"] {
            let path = self.path(&format!("config/practices/{practice}.toml"));
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.replacen(
                "[payers.sandbox]\n",
                &format!("[payers.sandbox]\nbase_url = \"{base_url}\"\n"),
                1,
            );
            std::fs::write(&path, text).unwrap();
        }
    }

    /// Sends mail through SMTP to a server on loopback (plain SMTP, which
    /// the configuration allows for loopback only).
    pub fn use_smtp(&self, port: u16) {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace("transport = \"file\"", "transport = \"smtp\"")
            + &format!("\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n");
        std::fs::write(&path, text).unwrap();
    }

    /// Loads settings with secrets, as the daemon and `precert run` do.
    pub fn settings_with_secrets(&self) -> Settings {
        for (k, v) in SECRETS {
            // SAFETY: test processes set these before any thread reads them;
            // nextest runs each test in its own process.
            unsafe { std::env::set_var(k, v) };
        }
        config::load(&self.config_path(), Secrets::Resolve).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("config/precert.toml")
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Runs `precert --config … ARGS` with the sample secrets set.
    pub fn precert(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_precert"));
        cmd.arg("--config")
            .arg(self.config_path())
            .args(args)
            .current_dir(self.dir.path());
        for (k, v) in SECRETS {
            cmd.env(k, v);
        }
        cmd.env_remove("PRECERT_LOG").env_remove("CREDENTIALS_DIRECTORY");
        cmd
    }

    pub fn settings(&self) -> Settings {
        config::load(&self.config_path(), Secrets::Skip).unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn ledger(&self) -> Ledger {
        Ledger::open(&self.settings().database_url).await.unwrap()
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
