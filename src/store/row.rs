//! A row read by column name, from sqlx (`Any`, over the ledger's pool) or
//! from SQLite's C API on the calling thread (`sqlite_read`), so the
//! ledger's records are read from either by the same code.
//!
//! The C API is for reads where sqlx's way costs more than the read: a
//! year's report (every value copied across threads) and `cases show` (a
//! worker thread started, and two thread hand-offs a statement, for six
//! indexed lookups). Every write, and every other read, goes through sqlx.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row as _};

use super::{parse_ts, sqlite_read, StoreError};

/// A row's values by column name.
pub(crate) trait ReadRow {
    fn text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<Option<i64>, StoreError>;

    /// A time column, parsed (RFC 3339, as the ledger writes times); `id`
    /// names the record in the error if it does not parse.
    fn time(&self, col: &str, id: i64) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.text(col)?.map(|s| parse_ts(id, &s)).transpose()
    }

    /// A text column that may not be NULL.
    fn req_text(&self, col: &str, id: i64) -> Result<String, StoreError> {
        required(self.text(col)?, col, id)
    }

    /// An integer column that may not be NULL.
    fn req_int(&self, col: &str, id: i64) -> Result<i64, StoreError> {
        required(self.int(col)?, col, id)
    }

    /// A time column that may not be NULL.
    fn req_time(&self, col: &str, id: i64) -> Result<DateTime<Utc>, StoreError> {
        required(self.time(col, id)?, col, id)
    }
}

/// A column that may not be NULL; `id` names the record.
pub(crate) fn required<T>(value: Option<T>, col: &str, id: i64) -> Result<T, StoreError> {
    value.ok_or_else(|| StoreError::Corrupt {
        id,
        reason: format!("no {col}"),
    })
}

impl ReadRow for AnyRow {
    fn text(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(col)?)
    }
}

impl ReadRow for sqlite_read::Row<'_> {
    fn text(&self, col: &str) -> Result<Option<String>, StoreError> {
        sqlite_read::Row::text(self, col)
    }
    fn int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        sqlite_read::Row::int(self, col)
    }
    /// Parsed where SQLite keeps the text: no copy.
    fn time(&self, col: &str, id: i64) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.with_text(col, |s| parse_ts(id, s))?.transpose()
    }
}

/// A statement's argument.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Int(i64),
    Text(&'a str),
}

/// Where a read's rows come from: the ledger's pool, or a read-only SQLite
/// connection on this thread ([`sqlite_read::ReadOnly`], whose reads block
/// the calling thread: for a command's few indexed lookups only).
pub(crate) trait Source {
    /// `sql`'s rows, each mapped by `each`.
    async fn rows<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        each: impl FnMut(&dyn ReadRow) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError>;
}

impl Source for AnyPool {
    async fn rows<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        mut each: impl FnMut(&dyn ReadRow) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut query = sqlx::query(sql);
        for a in args {
            query = match *a {
                Arg::Int(n) => query.bind(n),
                Arg::Text(s) => query.bind(s),
            };
        }
        query.fetch_all(self).await?.iter().map(|r| each(r)).collect()
    }
}

impl Source for sqlite_read::ReadOnly {
    async fn rows<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        mut each: impl FnMut(&dyn ReadRow) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.each_row(sql, args, |row| {
            out.push(each(row)?);
            Ok(true)
        })?;
        Ok(out)
    }
}
