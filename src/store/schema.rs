//! Connecting to the ledger's database and bringing its schema up to date.
//!
//! Every process that opens the ledger migrates it first, under a lock that
//! spans the whole run: a PostgreSQL advisory lock (session level, on a
//! connection of its own that is closed afterwards, so a process that dies
//! mid-way releases it), or a `flock` beside a SQLite file. Two daemons that
//! start together therefore migrate once: the second waits, then finds
//! nothing left to do. Each migration runs in its own transaction with its
//! bookkeeping row (sqlx's `_sqlx_migrations`), so a failed one leaves no
//! trace and is retried at the next start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::MigrateError;
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};

use super::backend::{Backend, MigrationLock};
use super::sqlite_read::ReadOnly;
use super::{private_dir, restrict, sqlite_path, StoreError};

/// The advisory lock key precert's migrations hold on PostgreSQL: the bytes
/// of "precert\0" (advisory keys are per database, so one constant serves).
const PG_MIGRATION_LOCK: i64 = 0x7072_6563_6572_7400;

/// A migration as the database records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i64,
    pub description: String,
    /// When it was applied, as the database wrote it.
    pub installed_on: String,
    /// Its SQL is the SQL this precert embeds for that version.
    pub checksum_matches: bool,
}

/// Where a database's schema stands against this precert's migrations.
#[derive(Clone, Debug)]
pub struct SchemaStatus {
    pub backend: Backend,
    /// False for a SQLite file that does not exist yet.
    pub exists: bool,
    /// Every migration this precert embeds: (version, description, how it
    /// was applied — None while pending).
    pub migrations: Vec<(i64, &'static str, Option<AppliedMigration>)>,
    /// Applied migrations this precert does not know: the database was
    /// migrated by a newer precert.
    pub unknown: Vec<AppliedMigration>,
}

impl SchemaStatus {
    pub fn pending(&self) -> impl Iterator<Item = (i64, &'static str)> + '_ {
        self.migrations
            .iter()
            .filter(|(_, _, a)| a.is_none())
            .map(|(v, d, _)| (*v, *d))
    }

    /// Applied migrations whose SQL differs from this precert's.
    pub fn changed(&self) -> impl Iterator<Item = &AppliedMigration> {
        self.migrations
            .iter()
            .filter_map(|(_, _, a)| a.as_ref())
            .filter(|a| !a.checksum_matches)
    }

    pub fn up_to_date(&self) -> bool {
        self.pending().next().is_none() && self.changed().next().is_none() && self.unknown.is_empty()
    }
}

/// The URL with its password (if any) replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn open_error(url: &str, source: sqlx::Error) -> StoreError {
    StoreError::Open {
        url: redact_url(url),
        source,
    }
}

fn backend_of(url: &str) -> Result<Backend, StoreError> {
    Backend::from_url(url).ok_or_else(|| StoreError::UnknownUrl { url: redact_url(url) })
}

/// Connections in a ledger's pool: the daemon's workers, its HTTP
/// listener and its schedules share them.
pub(super) const POOL_CONNECTIONS: u32 = 4;

fn install_drivers() {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(|| {
        // SQLite keeps memory statistics by default, under a process-wide
        // mutex taken by every allocation (each value of each row read);
        // precert never reads them. Possible only before SQLite is first
        // used; if it already was (a library user opened it first), it
        // answers SQLITE_MISUSE and the default stands.
        // SAFETY: a documented start-up option of SQLite, with one int.
        unsafe {
            libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int);
        }
        sqlx::any::install_default_drivers();
    });
}

/// The ledger's connection pool (creating a SQLite file and its private
/// directory if needed), of at most `connections`. Does not migrate.
pub(super) async fn connect(url: &str, connections: u32) -> Result<(Backend, AnyPool), StoreError> {
    install_drivers();
    let backend = backend_of(url)?;
    // A ledger file named in `database_url` is created if it does not
    // exist yet, as the default one is: sqlx opens an existing file only
    // unless the URL says `mode=rwc`. A URL that names its mode keeps it.
    let creating;
    let url = if backend == Backend::Sqlite && sqlite_path(url).is_some() && !url.contains("mode=") {
        creating = format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' });
        creating.as_str()
    } else {
        url
    };
    let file = sqlite_path(url);
    if let Some(file) = &file {
        sqlite_or_new(file)?;
    }
    if let Some(dir) = file
        .as_deref()
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
    {
        if !dir.exists() {
            private_dir(dir).map_err(|source| StoreError::DataDir {
                path: dir.to_owned(),
                source,
            })?;
        }
    }
    let pool = AnyPoolOptions::new()
        .max_connections(connections)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                if Backend::of(conn) == Backend::Sqlite {
                    // WAL lets readers (the CLI) work while the daemon
                    // writes; the busy timeout waits out a writer's lock
                    // instead of failing at once.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; \
                         PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|source| open_error(url, source))?;
    if let Some(file) = &file {
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", file.display()));
            if p.exists() {
                restrict(&p, 0o600).map_err(|source| StoreError::DataDir {
                    path: p.clone(),
                    source,
                })?;
            }
        }
    }
    Ok((backend, pool))
}

/// A SQLite file to open is a SQLite database, or empty, or not there yet
/// (it is created). Any other file is refused at once: sqlx would retry
/// its connection until the pool's 30-second timeout and then report only
/// the timeout.
fn sqlite_or_new(file: &Path) -> Result<(), StoreError> {
    use std::io::Read as _;
    const MAGIC: &[u8; 16] = b"SQLite format 3\0";
    let Ok(f) = std::fs::File::open(file) else {
        // Not there (created), or not readable (the open says so).
        return Ok(());
    };
    let mut head = Vec::with_capacity(MAGIC.len());
    if f.take(MAGIC.len() as u64).read_to_end(&mut head).is_err() || head.is_empty() || head == MAGIC {
        return Ok(());
    }
    Err(StoreError::NotSqlite { path: file.to_owned() })
}

/// Brings the schema up to date under the migration lock. Returns the
/// migrations this call applied (none when another process had already).
pub(super) async fn run_migrations(
    backend: Backend,
    url: &str,
    pool: &AnyPool,
) -> Result<Vec<(i64, &'static str)>, StoreError> {
    // Up to date already (every migration of this build applied, none
    // changed since, none failed): nothing to take the lock for. Most opens
    // are this one: every CLI command, every daemon start after the first.
    {
        let mut conn = pool.acquire().await?;
        let before = applied(backend, &mut conn).await?;
        if up_to_date(backend, before.iter().map(|(v, m)| (*v, m.checksum_matches))) {
            return Ok(Vec::new());
        }
    }
    let migrator = backend.migrator();
    match backend {
        Backend::Sqlite => {
            // An in-memory database is this process's alone.
            let _lock = match sqlite_path(url)
                .as_deref()
                .map(|f| f.parent().unwrap_or(Path::new(".")))
            {
                Some(dir) => {
                    let dir = if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir
                    };
                    Some(
                        MigrationLock::acquire(dir.to_owned())
                            .await
                            .map_err(|source| StoreError::DataDir {
                                path: dir.to_owned(),
                                source,
                            })?,
                    )
                }
                None => None,
            };
            let mut conn = pool.acquire().await?;
            let before = applied(backend, &mut conn).await?;
            migrator.run_direct(&mut *conn).await.map_err(migrate_error)?;
            Ok(newly_applied(backend, &before))
        }
        Backend::Postgres => {
            // A connection of its own: the session-level lock goes with it
            // when it closes (or when this process dies), never back into
            // the pool.
            let mut conn = AnyConnection::connect(url).await.map_err(|e| open_error(url, e))?;
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(PG_MIGRATION_LOCK)
                .execute(&mut conn)
                .await?;
            let before = applied(backend, &mut conn).await?;
            let result = migrator.run_direct(&mut conn).await.map_err(migrate_error);
            conn.close().await?;
            result?;
            Ok(newly_applied(backend, &before))
        }
    }
}

/// Every migration of this build applied, unchanged, and no other: nothing
/// to migrate. `applied`: each applied version, and whether its checksum is
/// this build's.
fn up_to_date(backend: Backend, applied: impl IntoIterator<Item = (i64, bool)>) -> bool {
    let applied: BTreeMap<i64, bool> = applied.into_iter().collect();
    let ours = backend.migrations();
    applied.len() == ours.len() && ours.iter().all(|(v, _, _)| applied.get(v) == Some(&true))
}

/// Whether the SQLite file `db` reads has this build's schema, as
/// `run_migrations` first asks: a command that only reads may then read it
/// in place, without opening (and so migrating) the ledger.
pub(super) fn current_in_place(db: &ReadOnly) -> Result<bool, StoreError> {
    let mut tables = 0;
    db.each_row(EXISTS_SQLITE, &[], |r| {
        tables = r.int("n")?.unwrap_or(0);
        Ok(false)
    })?;
    if tables == 0 {
        return Ok(false);
    }
    let ours = checksums(Backend::Sqlite);
    let mut applied = Vec::new();
    db.each_row(
        "SELECT version, checksum FROM _sqlx_migrations WHERE success",
        &[],
        |r| {
            let version = super::row::required(r.int("version")?, "version", 0)?;
            let checksum = r.blob("checksum")?.unwrap_or_default();
            applied.push((version, ours.get(&version) == Some(&checksum)));
            Ok(true)
        },
    )?;
    Ok(up_to_date(Backend::Sqlite, applied))
}

/// Whether a SQLite database has sqlx's migrations table (`n`, 0 or 1).
const EXISTS_SQLITE: &str =
    "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";

fn newly_applied(backend: Backend, before: &BTreeMap<i64, AppliedMigration>) -> Vec<(i64, &'static str)> {
    backend
        .migrations()
        .iter()
        .filter(|(v, _, _)| !before.contains_key(v))
        .map(|(v, d, _)| (*v, *d))
        .collect()
}

/// A database newer than this precert gets a sentence saying so.
fn migrate_error(e: MigrateError) -> StoreError {
    match e {
        MigrateError::VersionMissing(v) => StoreError::NewerSchema { version: v },
        other => StoreError::Migrate(other),
    }
}

/// Each migration's checksum (SHA-384 of its SQL), computed once per
/// process: every command's open compares them with the recorded ones.
fn checksums(backend: Backend) -> &'static BTreeMap<i64, Vec<u8>> {
    static SQLITE: OnceLock<BTreeMap<i64, Vec<u8>>> = OnceLock::new();
    static POSTGRES: OnceLock<BTreeMap<i64, Vec<u8>>> = OnceLock::new();
    let cell = match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    };
    cell.get_or_init(|| {
        backend
            .migrator()
            .iter()
            .map(|m| (m.version, m.checksum.to_vec()))
            .collect()
    })
}

/// What `_sqlx_migrations` records (empty before the first migration).
async fn applied(backend: Backend, conn: &mut AnyConnection) -> Result<BTreeMap<i64, AppliedMigration>, StoreError> {
    let exists = match backend {
        Backend::Sqlite => EXISTS_SQLITE,
        Backend::Postgres => {
            "SELECT COUNT(*) AS n FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'"
        }
    };
    let n: i64 = sqlx::query(exists).fetch_one(&mut *conn).await?.try_get("n")?;
    if n == 0 {
        return Ok(BTreeMap::new());
    }
    let ours = checksums(backend);
    let rows = sqlx::query(
        "SELECT version, description, CAST(installed_on AS TEXT) AS installed_on, checksum \
         FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let version: i64 = r.try_get("version")?;
            let checksum: Vec<u8> = r.try_get("checksum")?;
            Ok((
                version,
                AppliedMigration {
                    version,
                    description: r.try_get("description")?,
                    installed_on: r.try_get("installed_on")?,
                    checksum_matches: ours.get(&version) == Some(&checksum),
                },
            ))
        })
        .collect()
}

/// Applies pending migrations (as opening the ledger does) and returns
/// those this call applied: `precert db migrate`.
pub async fn migrate(url: &str) -> Result<Vec<(i64, &'static str)>, StoreError> {
    let (backend, pool) = connect(url, POOL_CONNECTIONS).await?;
    let done = run_migrations(backend, url, &pool).await;
    pool.close().await;
    done
}

/// Where the schema stands, without changing anything (a SQLite file that
/// does not exist is not created): `precert db status`.
pub async fn schema_status(url: &str) -> Result<SchemaStatus, StoreError> {
    install_drivers();
    let backend = backend_of(url)?;
    let exists = sqlite_path(url).is_none_or(|f| f.exists());
    let mut recorded = if exists {
        let mut conn = AnyConnection::connect(url).await.map_err(|e| open_error(url, e))?;
        let applied = applied(backend, &mut conn).await;
        conn.close().await?;
        applied?
    } else {
        BTreeMap::new()
    };
    let migrations = backend
        .migrations()
        .iter()
        .map(|(v, d, _)| (*v, *d, recorded.remove(v)))
        .collect();
    Ok(SchemaStatus {
        backend,
        exists,
        migrations,
        unknown: recorded.into_values().collect(),
    })
}
