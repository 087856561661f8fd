//! The two databases the ledger runs on, and every place they differ.
//!
//! The ledger speaks to both through sqlx's `Any` driver with one set of
//! queries (see ARCHITECTURE.md, "Two backends"). What cannot be written
//! the same way for both is here, and only here:
//!
//! - the schema: each backend has its own migrations, embedded, with the
//!   same versions and descriptions;
//! - row locks: on PostgreSQL a write transaction locks the row it read
//!   before it changes it (`FOR NO KEY UPDATE`), and a claim skips rows
//!   another transaction holds (`FOR UPDATE SKIP LOCKED`); on SQLite a write
//!   transaction holds the whole database from its first statement
//!   (`BEGIN IMMEDIATE`), so the same SELECT needs no suffix;
//! - the migration lock: a PostgreSQL advisory lock, an exclusive `flock` on
//!   the SQLite file's directory (see `schema`);
//! - reading a field of a JSON text column (`json_text`, for reports).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::AnyConnection;

/// Which database a ledger lives in, by its URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH`: the embedded default, one machine.
    Sqlite,
    /// `postgres://…` or `postgresql://…`: shared by several daemons.
    Postgres,
}

/// The URL schemes precert accepts, for error messages.
pub const SCHEMES: &str = "sqlite://PATH or postgres://USER@HOST/DATABASE";

impl Backend {
    /// The backend a database URL names; `None` for any other scheme.
    pub fn from_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// The backend of an open connection.
    pub(crate) fn of(conn: &AnyConnection) -> Backend {
        if conn.backend_name() == "PostgreSQL" {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }

    /// Appended to a SELECT of one row the transaction goes on to change.
    /// PostgreSQL: lock it until commit, so a second writer waits and then
    /// reads what the first wrote (read committed alone would let both read
    /// the old row). `NO KEY`: inserts that reference the row (its events)
    /// are not blocked by it. SQLite: the transaction already holds the
    /// database.
    pub(crate) fn lock_row(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR NO KEY UPDATE",
        }
    }

    /// Appended to the SELECT that picks a row to claim (a job, a mail):
    /// PostgreSQL locks it and passes over rows other claimers hold, so N
    /// claimers take N different rows without waiting on each other.
    pub(crate) fn skip_locked(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// A text value inside a JSON text column, NULL when absent: `path` is
    /// object keys and array indexes (`["service_lines", "0", "code"]`).
    /// SQLite's `json_extract`, PostgreSQL's `#>>`; the path is precert's
    /// own constant, never user input.
    pub(crate) fn json_text(self, column: &str, path: &[&str]) -> String {
        match self {
            Backend::Sqlite => {
                let mut p = String::from("$");
                for seg in path {
                    if seg.bytes().all(|b| b.is_ascii_digit()) {
                        p.push_str(&format!("[{seg}]"));
                    } else {
                        p.push('.');
                        p.push_str(seg);
                    }
                }
                format!("json_extract({column}, '{p}')")
            }
            Backend::Postgres => format!("(({column})::json #>> '{{{}}}')", path.join(",")),
        }
    }

    /// The embedded migrations: (version, description, SQL).
    pub fn migrations(self) -> &'static [(i64, &'static str, &'static str)] {
        match self {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        }
    }

    pub(crate) fn migrator(self) -> Migrator {
        let migrations: Vec<Migration> = self
            .migrations()
            .iter()
            .map(|(v, d, sql)| Migration::new(*v, Cow::Borrowed(d), MigrationType::Simple, Cow::Borrowed(sql), false))
            .collect();
        Migrator {
            migrations: Cow::Owned(migrations),
            // The caller holds precert's own migration lock around the whole
            // run (`schema::run_migrations`), so that it can also tell what
            // this run applied; sqlx's lock would only repeat it.
            locking: false,
            ..Migrator::DEFAULT
        }
    }
}

static SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "ledger", include_str!("migrations/sqlite/0001_ledger.sql")),
    (
        2,
        "letters and references",
        include_str!("migrations/sqlite/0002_letters_and_references.sql"),
    ),
    (3, "jobs", include_str!("migrations/sqlite/0003_jobs.sql")),
    (4, "escalations", include_str!("migrations/sqlite/0004_escalations.sql")),
    (
        5,
        "submission owner",
        include_str!("migrations/sqlite/0005_submission_owner.sql"),
    ),
    (6, "console", include_str!("migrations/sqlite/0006_console.sql")),
    (7, "payer slots", include_str!("migrations/sqlite/0007_payer_slots.sql")),
    (
        8,
        "console links and totp",
        include_str!("migrations/sqlite/0008_console_links_totp.sql"),
    ),
    (
        9,
        "scale next check",
        include_str!("migrations/sqlite/0009_scale_next_check.sql"),
    ),
    (10, "intake api", include_str!("migrations/sqlite/0010_intake_api.sql")),
    (
        14,
        "pas subscriptions",
        include_str!("migrations/sqlite/0014_pas_subscriptions.sql"),
    ),
    (
        16,
        "report events",
        include_str!("migrations/sqlite/0016_report_events.sql"),
    ),
    (
        17,
        "expected amount",
        include_str!("migrations/sqlite/0017_expected_amount.sql"),
    ),
    (
        18,
        "worklist indexes",
        include_str!("migrations/sqlite/0018_worklist_indexes.sql"),
    ),
    (19, "case facts", include_str!("migrations/sqlite/0019_case_facts.sql")),
    (
        20,
        "case deadlines",
        include_str!("migrations/sqlite/0020_case_deadlines.sql"),
    ),
];

static POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "ledger", include_str!("migrations/postgres/0001_ledger.sql")),
    (
        2,
        "letters and references",
        include_str!("migrations/postgres/0002_letters_and_references.sql"),
    ),
    (3, "jobs", include_str!("migrations/postgres/0003_jobs.sql")),
    (
        4,
        "escalations",
        include_str!("migrations/postgres/0004_escalations.sql"),
    ),
    (
        5,
        "submission owner",
        include_str!("migrations/postgres/0005_submission_owner.sql"),
    ),
    (6, "console", include_str!("migrations/postgres/0006_console.sql")),
    (
        7,
        "payer slots",
        include_str!("migrations/postgres/0007_payer_slots.sql"),
    ),
    (
        8,
        "console links and totp",
        include_str!("migrations/postgres/0008_console_links_totp.sql"),
    ),
    (
        9,
        "scale next check",
        include_str!("migrations/postgres/0009_scale_next_check.sql"),
    ),
    (
        10,
        "intake api",
        include_str!("migrations/postgres/0010_intake_api.sql"),
    ),
    (
        14,
        "pas subscriptions",
        include_str!("migrations/postgres/0014_pas_subscriptions.sql"),
    ),
    (
        16,
        "report events",
        include_str!("migrations/postgres/0016_report_events.sql"),
    ),
    (
        17,
        "expected amount",
        include_str!("migrations/postgres/0017_expected_amount.sql"),
    ),
    (
        18,
        "worklist indexes",
        include_str!("migrations/postgres/0018_worklist_indexes.sql"),
    ),
    (
        19,
        "case facts",
        include_str!("migrations/postgres/0019_case_facts.sql"),
    ),
    (
        20,
        "case deadlines",
        include_str!("migrations/postgres/0020_case_deadlines.sql"),
    ),
];

/// An exclusive hold on migrating one SQLite ledger, across processes:
/// sqlx's SQLite migrator takes no lock, and two processes starting on a
/// new file would both try to create its tables. It is a `flock` on the
/// directory that holds the file, not on the file itself: closing any
/// descriptor of the database file would drop SQLite's own POSIX locks on it
/// in this process. Released when dropped.
pub(crate) struct MigrationLock {
    _dir: std::fs::File,
}

impl MigrationLock {
    /// Waits (on a blocking thread) until no other process migrates a
    /// ledger in `dir`.
    pub(crate) async fn acquire(dir: PathBuf) -> std::io::Result<MigrationLock> {
        tokio::task::spawn_blocking(move || lock_dir(&dir))
            .await
            .map_err(std::io::Error::other)?
    }
}

fn lock_dir(dir: &Path) -> std::io::Result<MigrationLock> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(dir)?;
    loop {
        // SAFETY: flock on a descriptor we own; it has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(MigrationLock { _dir: file });
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
