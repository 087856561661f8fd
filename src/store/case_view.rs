//! One case as `precert cases show` prints it: the case, its timeline,
//! letters, last poll, submission lease and escalations.
//!
//! Read through the ledger's pool ([`Ledger::case_view`]) or, on a SQLite
//! file whose schema is this precert's, in place on the calling thread
//! ([`case_view_in_place`]): six indexed lookups need no worker thread, no
//! pool and no migration check beyond comparing the applied migrations. Both
//! run the same statements and read the rows with the same code
//! (`row::Source`).

use std::path::Path;

use chrono::{DateTime, Utc};

use super::row::{Arg, Source};
use super::sqlite_read::ReadOnly;
use super::{
    case_from_row, escalations, event_from_row, letter_from_row, owner, schema, sqlite_path, CaseEvent, Escalation,
    Ledger, Letter, Owner, StoreError, SELECT_CASE, SELECT_EVENTS, SELECT_LETTERS,
};
use crate::case::CaseRecord;

/// How a command names a case: its number, `PRACTICE/CASE`, or the
/// practice's reference alone (when one practice uses it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaseName<'a> {
    Id(i64),
    Key { practice: &'a str, case_ref: &'a str },
    Ref(&'a str),
}

impl<'a> CaseName<'a> {
    pub fn parse(name: &'a str) -> CaseName<'a> {
        if let Ok(n) = name.parse::<i64>() {
            return CaseName::Id(n);
        }
        match name.split_once('/') {
            Some((practice, case_ref)) => CaseName::Key { practice, case_ref },
            None => CaseName::Ref(name),
        }
    }
}

/// What a name found.
#[derive(Debug)]
pub enum Lookup<T> {
    Found(T),
    Missing,
    /// The reference is used by several practices: their cases' keys.
    Ambiguous(Vec<String>),
}

/// Everything `cases show` prints about a case.
#[derive(Debug)]
pub struct CaseView {
    pub case: CaseRecord,
    /// Oldest first.
    pub events: Vec<CaseEvent>,
    pub letters: Vec<Letter>,
    /// When the payer was last asked and said nothing new.
    pub last_polled: Option<DateTime<Utc>>,
    pub owner: Option<Owner>,
    /// Newest first.
    pub escalations: Vec<Escalation>,
}

impl Ledger {
    /// The case a name names.
    pub async fn lookup(&self, name: &CaseName<'_>) -> Result<Lookup<CaseRecord>, StoreError> {
        lookup(&self.pool, name).await
    }

    /// The case a name names, with all `cases show` prints of it.
    pub async fn case_view(&self, name: &CaseName<'_>) -> Result<Lookup<CaseView>, StoreError> {
        view(&self.pool, name).await
    }
}

/// [`Ledger::case_view`] read in place, on this thread, from the SQLite
/// file `url` names; `None` when it cannot be (another database, a file
/// that cannot be opened or read, a schema this precert must migrate first
/// or does not know): then open the [`Ledger`], which migrates or says why
/// not.
/// Blocks the calling thread for the read (a few indexed lookups).
pub async fn case_view_in_place(url: &str, name: &CaseName<'_>) -> Result<Option<Lookup<CaseView>>, StoreError> {
    let Some(path) = sqlite_path(url).filter(|p| p.is_file()) else {
        return Ok(None);
    };
    let Ok(db) = ReadOnly::open(Path::new(&path)) else {
        return Ok(None);
    };
    // Not this build's schema, or not readable so (a `-shm` this user
    // cannot write): the ledger's open says what to do.
    if !schema::current_in_place(&db).unwrap_or(false) {
        return Ok(None);
    }
    view(&db, name).await.map(Some)
}

/// The cases a name names (at most one but for a reference alone), in id
/// order: the one read behind [`Ledger::get`], [`Ledger::find`],
/// [`Ledger::find_by_ref`] and [`lookup`].
pub(super) async fn cases_named(src: &impl Source, name: &CaseName<'_>) -> Result<Vec<CaseRecord>, StoreError> {
    let (sql, args) = match *name {
        CaseName::Id(id) => (format!("{SELECT_CASE} WHERE id = $1"), vec![Arg::Int(id)]),
        CaseName::Key { practice, case_ref } => (
            format!("{SELECT_CASE} WHERE practice_id = $1 AND case_ref = $2"),
            vec![Arg::Text(practice), Arg::Text(case_ref)],
        ),
        CaseName::Ref(case_ref) => (
            format!("{SELECT_CASE} WHERE case_ref = $1 ORDER BY id"),
            vec![Arg::Text(case_ref)],
        ),
    };
    src.rows(&sql, &args, |r| case_from_row(r)).await
}

/// When the payer was last asked about case `id` and said nothing new.
pub(super) async fn last_polled(src: &impl Source, id: i64) -> Result<Option<DateTime<Utc>>, StoreError> {
    src.rows("SELECT last_polled_at FROM cases WHERE id = $1", &[Arg::Int(id)], |r| {
        r.time("last_polled_at", id)
    })
    .await?
    .pop()
    .ok_or_else(|| StoreError::NotFound(format!("case {id}")))
}

async fn lookup(src: &impl Source, name: &CaseName<'_>) -> Result<Lookup<CaseRecord>, StoreError> {
    let mut found = cases_named(src, name).await?;
    Ok(match found.len() {
        0 => Lookup::Missing,
        1 => Lookup::Found(found.remove(0)),
        _ => Lookup::Ambiguous(found.iter().map(CaseRecord::key).collect()),
    })
}

async fn view(src: &impl Source, name: &CaseName<'_>) -> Result<Lookup<CaseView>, StoreError> {
    let case = match lookup(src, name).await? {
        Lookup::Found(case) => case,
        Lookup::Missing => return Ok(Lookup::Missing),
        Lookup::Ambiguous(keys) => return Ok(Lookup::Ambiguous(keys)),
    };
    let id = case.id;
    let events = src
        .rows(SELECT_EVENTS, &[Arg::Int(id)], |r| event_from_row(r, id))
        .await?;
    let letters = src
        .rows(SELECT_LETTERS, &[Arg::Int(id)], |r| letter_from_row(r, id))
        .await?;
    let last_polled = last_polled(src, id).await?;
    let owner = owner::owner_from(src, id).await?;
    let escalations = src
        .rows(escalations::SELECT_CASE_ESCALATIONS, &[Arg::Int(id)], |r| {
            escalations::escalation_from_row(r)
        })
        .await?;
    Ok(Lookup::Found(CaseView {
        case,
        events,
        letters,
        last_polled,
        owner,
        escalations,
    }))
}
