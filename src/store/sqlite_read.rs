//! Many rows from a SQLite ledger file, read in place through SQLite's C
//! API on the calling thread.
//!
//! sqlx's SQLite driver copies every value of every row on its worker
//! thread (`sqlite3_value_dup`, an `Arc` each) and the caller frees them on
//! its own: for a year's report over 100 000 requests, ~25 values a row,
//! most of the time went to the allocator and its arena locks
//! (bench-report under `perf`: `_int_malloc`, `_int_free` and lock waits
//! above 40 %). A read of that size (the report's rows) goes through a
//! [`ReadOnly`] connection of its own instead, on a blocking thread: each
//! row's values are read where SQLite keeps them, and only what the caller
//! keeps is copied.
//!
//! Everything else stays on sqlx (`Ledger`'s pool): this is a read-only
//! connection to the same file, with the same WAL snapshot rules as any
//! other reader.

use std::ffi::{c_int, CStr, CString};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::ptr::NonNull;

use libsqlite3_sys as ffi;

use super::row::Arg;
use super::StoreError;

/// How long a read waits on a lock it cannot take (a checkpoint
/// truncating the WAL) before it fails: as long as the pool's.
const BUSY_TIMEOUT_MS: c_int = 5_000;

/// A read-only connection to a SQLite file, used by one thread.
pub(crate) struct ReadOnly {
    db: NonNull<ffi::sqlite3>,
}

/// A prepared statement, finalized when dropped.
struct Statement {
    stmt: NonNull<ffi::sqlite3_stmt>,
}

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: the statement was prepared by `sqlite3_prepare_v2` and is
        // finalized once, here.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        // SAFETY: every statement borrows the connection and is finalized
        // before it; the handle is closed once, here.
        unsafe { ffi::sqlite3_close(self.db.as_ptr()) };
    }
}

/// The row a statement stands on, its columns by name.
pub(crate) struct Row<'a> {
    stmt: &'a Statement,
    /// Column names in order: a row asks for each by name, ~25 a row,
    /// and comparing a few short names beats hashing them.
    columns: &'a [String],
}

impl ReadOnly {
    /// Opens the file read-only (it must exist: a report never creates a
    /// ledger).
    pub(crate) fn open(path: &Path) -> Result<ReadOnly, StoreError> {
        let name = CString::new(path.as_os_str().as_bytes()).map_err(|_| StoreError::Sqlite {
            code: ffi::SQLITE_CANTOPEN,
            message: format!("the ledger's path {} holds a NUL byte", path.display()),
        })?;
        let mut db = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated and outlives the call; `db`
        // receives a handle (or NULL when SQLite could not allocate one).
        let rc = unsafe {
            ffi::sqlite3_open_v2(
                name.as_ptr(),
                &mut db,
                ffi::SQLITE_OPEN_READONLY | ffi::SQLITE_OPEN_NOMUTEX,
                std::ptr::null(),
            )
        };
        // A handle comes back even when the open failed; dropping it closes it.
        let conn = NonNull::new(db).map(|db| ReadOnly { db });
        match conn {
            Some(conn) if rc == ffi::SQLITE_OK => {
                // SAFETY: a valid, open handle.
                unsafe { ffi::sqlite3_busy_timeout(conn.db.as_ptr(), BUSY_TIMEOUT_MS) };
                Ok(conn)
            }
            Some(conn) => Err(conn.error(rc, &format!("cannot open {}", path.display()))),
            None => Err(StoreError::Sqlite {
                code: rc,
                message: format!("cannot open {}: out of memory", path.display()),
            }),
        }
    }

    /// The connection's last error, after `rc`.
    fn error(&self, rc: c_int, doing: &str) -> StoreError {
        // SAFETY: a valid handle; SQLite returns a NUL-terminated message it
        // owns, copied at once.
        let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.db.as_ptr())) }
            .to_string_lossy()
            .into_owned();
        StoreError::Sqlite {
            code: rc,
            message: format!("{doing}: {message}"),
        }
    }

    /// Runs `sql`, binding `$N` to `binds[N - 1]`, and hands each row to
    /// `each` until the rows end or `each` returns `false`.
    pub(crate) fn each_row(
        &self,
        sql: &str,
        binds: &[Arg<'_>],
        mut each: impl FnMut(&Row<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let stmt = self.prepare(sql)?;
        self.bind(&stmt, binds)?;
        // SAFETY (all calls below): `stmt` is a valid prepared statement of
        // this connection; column names are NUL-terminated strings SQLite
        // owns until the statement is finalized, copied at once.
        let count = unsafe { ffi::sqlite3_column_count(stmt.stmt.as_ptr()) };
        let columns: Vec<String> = (0..count)
            .map(|i| {
                let name = unsafe { ffi::sqlite3_column_name(stmt.stmt.as_ptr(), i) };
                if name.is_null() {
                    String::new()
                } else {
                    unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
                }
            })
            .collect();
        let row = Row {
            stmt: &stmt,
            columns: &columns,
        };
        loop {
            match unsafe { ffi::sqlite3_step(stmt.stmt.as_ptr()) } {
                ffi::SQLITE_ROW => {
                    if !each(&row)? {
                        return Ok(());
                    }
                }
                ffi::SQLITE_DONE => return Ok(()),
                rc => return Err(self.error(rc, "reading rows")),
            }
        }
    }

    fn prepare(&self, sql: &str) -> Result<Statement, StoreError> {
        let len = c_int::try_from(sql.len()).map_err(|_| StoreError::Sqlite {
            code: ffi::SQLITE_TOOBIG,
            message: "a statement longer than 2 GB".into(),
        })?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `sql` is valid for `len` bytes (no NUL needed with a
        // length); `stmt` receives the statement or NULL.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                self.db.as_ptr(),
                sql.as_ptr().cast(),
                len,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        match NonNull::new(stmt) {
            Some(stmt) if rc == ffi::SQLITE_OK => Ok(Statement { stmt }),
            other => {
                drop(other.map(|stmt| Statement { stmt }));
                Err(self.error(rc, "preparing a statement"))
            }
        }
    }

    /// Binds each parameter by its number: SQLite numbers `$N` parameters
    /// in the order they first appear, so `$3` may be its first.
    fn bind(&self, stmt: &Statement, binds: &[Arg<'_>]) -> Result<(), StoreError> {
        let p = stmt.stmt.as_ptr();
        // SAFETY: a valid statement; parameter names are NUL-terminated
        // strings SQLite owns; each bound text is a `&str` that outlives
        // the statement (`SQLITE_STATIC`: SQLite does not copy it), for
        // `each_row` finalizes the statement before it returns.
        let count = unsafe { ffi::sqlite3_bind_parameter_count(p) };
        for i in 1..=count {
            let name = unsafe { ffi::sqlite3_bind_parameter_name(p, i) };
            let name = (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned());
            let number = name
                .as_deref()
                .and_then(|n| n.strip_prefix('$').or_else(|| n.strip_prefix('?')))
                .and_then(|n| n.parse::<usize>().ok());
            let value = number.and_then(|n| n.checked_sub(1)).and_then(|n| binds.get(n));
            let Some(value) = value else {
                return Err(StoreError::Sqlite {
                    code: ffi::SQLITE_RANGE,
                    message: format!(
                        "parameter {} of a statement has no value ({} given)",
                        name.as_deref().unwrap_or("?"),
                        binds.len()
                    ),
                });
            };
            let rc = match *value {
                Arg::Int(n) => unsafe { ffi::sqlite3_bind_int64(p, i, n) },
                Arg::Text(text) => unsafe {
                    ffi::sqlite3_bind_text(p, i, text.as_ptr().cast(), text.len() as c_int, ffi::SQLITE_STATIC())
                },
            };
            if rc != ffi::SQLITE_OK {
                return Err(self.error(rc, "binding a parameter"));
            }
        }
        Ok(())
    }
}

impl Row<'_> {
    fn index(&self, col: &str) -> Result<c_int, StoreError> {
        let found = self.columns.iter().position(|c| c == col);
        found.map(|i| i as c_int).ok_or_else(|| StoreError::Sqlite {
            code: ffi::SQLITE_RANGE,
            message: format!("no column {col} in the row"),
        })
    }

    fn is_null(&self, i: c_int) -> bool {
        // SAFETY: a valid statement standing on a row; `i` is one of its columns.
        unsafe { ffi::sqlite3_column_type(self.stmt.stmt.as_ptr(), i) == ffi::SQLITE_NULL }
    }

    /// A text column's value, borrowed from SQLite for `f` (valid until the
    /// next step, so never kept).
    pub(crate) fn with_text<T>(&self, col: &str, f: impl FnOnce(&str) -> T) -> Result<Option<T>, StoreError> {
        let i = self.index(col)?;
        if self.is_null(i) {
            return Ok(None);
        }
        let p = self.stmt.stmt.as_ptr();
        // SAFETY: `sqlite3_column_text` then `sqlite3_column_bytes`, in the
        // order SQLite documents, on the row the statement stands on; the
        // bytes stay valid until the next step or conversion, and `f` only
        // borrows them.
        let bytes = unsafe {
            let text = ffi::sqlite3_column_text(p, i);
            if text.is_null() {
                return Err(StoreError::Sqlite {
                    code: ffi::SQLITE_NOMEM,
                    message: format!("column {col}: out of memory"),
                });
            }
            let len = ffi::sqlite3_column_bytes(p, i);
            std::slice::from_raw_parts(text, len.max(0) as usize)
        };
        let text = std::str::from_utf8(bytes).map_err(|_| StoreError::Sqlite {
            code: ffi::SQLITE_MISMATCH,
            message: format!("column {col} is not UTF-8 text"),
        })?;
        Ok(Some(f(text)))
    }

    pub(crate) fn text(&self, col: &str) -> Result<Option<String>, StoreError> {
        self.with_text(col, str::to_owned)
    }

    pub(crate) fn blob(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let i = self.index(col)?;
        if self.is_null(i) {
            return Ok(None);
        }
        let p = self.stmt.stmt.as_ptr();
        // SAFETY: `sqlite3_column_blob` then `sqlite3_column_bytes`, in the
        // order SQLite documents, on the row the statement stands on; the
        // bytes are copied before the next step. An empty blob may come
        // back as NULL.
        let bytes = unsafe {
            let blob = ffi::sqlite3_column_blob(p, i);
            let len = ffi::sqlite3_column_bytes(p, i).max(0) as usize;
            if blob.is_null() || len == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(blob.cast::<u8>(), len).to_vec()
            }
        };
        Ok(Some(bytes))
    }

    pub(crate) fn int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        let i = self.index(col)?;
        if self.is_null(i) {
            return Ok(None);
        }
        // SAFETY: as in `is_null`.
        Ok(Some(unsafe { ffi::sqlite3_column_int64(self.stmt.stmt.as_ptr(), i) }))
    }
}
