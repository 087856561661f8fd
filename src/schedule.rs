//! When a practice's jobs fire: cron expressions evaluated in the practice's
//! own time zone.
//!
//! Expressions are standard 5-field crontab (minute hour day-of-month month
//! day-of-week) or 6–7 fields with seconds first and a year last, parsed by
//! `croner`. Two rules are ours, and each is a decision worth knowing:
//!
//! - **Day of month OR day of week, as Vixie cron does it.** When both day
//!   fields are restricted, a day matching either fires. Vixie cron counts a
//!   field as unrestricted when it *starts* with `*` (so `*/2` is
//!   unrestricted, and `*/2 … 1` means odd days that are Mondays). croner
//!   treats only a bare `*` so; we add croner's `+` (AND) prefix to the
//!   day-of-week field in that case, so both agree with Vixie.
//! - **Daylight saving time: every wall-clock slot fires exactly once.**
//!   croner is asked only about the wall clock (naive local times, where no
//!   change of clock exists); we map each matching wall-clock time to an
//!   instant ourselves. A time the clock skips when it springs forward (02:30
//!   on 2026-03-08 in Chicago) fires once, at the first instant after the gap
//!   (03:00 CDT), merged with anything else due then. A time the clock
//!   repeats when it falls back (01:30 on 2026-11-01) fires once, at its
//!   first occurrence (01:30 CDT). This holds for every expression, hourly
//!   ones included: on the fall-back day an hourly job leaves the repeated
//!   hour out, which for batch jobs is better than running a wall-clock slot
//!   twice. (croner's own zoned search runs interval jobs twice in the
//!   repeated hour and drops them in the skipped one.)

use std::fmt;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::config::{Job, Practice};

/// A cron expression that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{expr}` is not a valid cron expression: {reason}")]
pub struct ScheduleError {
    pub expr: String,
    pub reason: String,
}

/// How many missed slots `due` counts before it stops counting.
pub const MISSED_COUNT_CAP: u32 = 10_000;

/// A cron expression bound to a time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    tz: Tz,
}

/// The slot a schedule owes after a pause (downtime, or simply the time
/// between two ticks of the scheduler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// The latest slot at or before now: the one to run.
    pub slot: DateTime<Utc>,
    /// Earlier slots since the last fire that are folded into this one
    /// (counted up to [`MISSED_COUNT_CAP`]).
    pub missed: u32,
}

impl Schedule {
    pub fn parse(expr: &str, tz: Tz) -> Result<Schedule, ScheduleError> {
        let expr = expr.trim();
        let err = |reason: String| ScheduleError {
            expr: expr.to_owned(),
            reason,
        };
        let fields = expr.split_whitespace().count();
        if !expr.starts_with('@') && !(5..=7).contains(&fields) {
            return Err(err(format!(
                "it has {fields} fields; a cron expression has 5 (minute hour day-of-month month day-of-week) or 6-7 (seconds first)"
            )));
        }
        let cron = croner::parser::CronParser::new()
            .parse(&vixie_days(expr))
            .map_err(|e| err(e.to_string()))?;
        Ok(Schedule {
            expr: expr.to_owned(),
            cron,
            tz,
        })
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The next `n` fire times strictly after `after`, in order. Fewer when
    /// the expression runs out (a year field in the past).
    pub fn next_fires(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = self.local(after);
        let mut last = after;
        // A wall-clock match can map to an instant at or before `after` only
        // inside a repeated hour, so this bound is never reached in practice;
        // it keeps a pathological time zone from looping forever.
        let mut budget = 100_000 + n * 10;
        while out.len() < n && budget > 0 {
            budget -= 1;
            let Ok(local) = self.cron.find_next_occurrence(&cursor, false) else {
                break;
            };
            let at = self.instant(local);
            if at > last {
                out.push(at);
                last = at;
            }
            cursor = local;
        }
        out
    }

    pub fn next_fire(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_fires(after, 1).into_iter().next()
    }

    /// The latest fire time at or before `now`.
    pub fn latest_fire_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local_now = self.local(now);
        // In the second pass of a repeated hour, wall-clock times later than
        // now's map to first-pass instants before now; start past the
        // repeated range so the backward walk sees them.
        let mut cursor = match self.tz.from_local_datetime(&local_now) {
            LocalResult::Ambiguous(..) => local_now + Duration::hours(3),
            _ => local_now,
        };
        let mut inclusive = true;
        for _ in 0..100_000 {
            let local = self.cron.find_previous_occurrence(&cursor, inclusive).ok()?;
            let at = self.instant(local);
            if at <= now {
                return Some(at);
            }
            cursor = local;
            inclusive = false;
        }
        None
    }

    /// What is owed at `now` when the last fire (or the moment the schedule
    /// was first seen) was `after`: the latest slot in `(after, now]`, once,
    /// however many slots the pause swallowed.
    pub fn due(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<Due> {
        let slot = self.latest_fire_at_or_before(now)?;
        if slot <= after {
            return None;
        }
        let mut missed = 0;
        let mut cursor = after;
        while missed < MISSED_COUNT_CAP {
            match self.next_fire(cursor) {
                Some(t) if t < slot => {
                    missed += 1;
                    cursor = t;
                }
                _ => break,
            }
        }
        Some(Due { slot, missed })
    }

    fn local(&self, t: DateTime<Utc>) -> NaiveDateTime {
        t.with_timezone(&self.tz).naive_local()
    }

    /// The instant a matching wall-clock time fires at (see the module
    /// documentation for the daylight-saving rule).
    fn instant(&self, local: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
            LocalResult::None => {
                // Skipped by a spring-forward: the first wall-clock minute
                // that exists again. Real gaps end on a whole minute.
                let mut probe = local.with_second(0).and_then(|t| t.with_nanosecond(0)).unwrap_or(local);
                for _ in 0..(48 * 60) {
                    probe += Duration::minutes(1);
                    match self.tz.from_local_datetime(&probe) {
                        LocalResult::Single(t) => return t.with_timezone(&Utc),
                        LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
                        LocalResult::None => {}
                    }
                }
                // No zone has a two-day gap; read it with the standard
                // offset rather than fail.
                self.tz.from_utc_datetime(&local).with_timezone(&Utc)
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expr, self.tz)
    }
}

/// Rewrites the day-of-week field so croner combines the day fields as Vixie
/// cron does: AND when either field starts with `*` (or `?`) without being a
/// bare wildcard, which croner would otherwise combine with OR.
fn vixie_days(expr: &str) -> String {
    let mut fields: Vec<String> = expr.split_whitespace().map(str::to_owned).collect();
    let (dom, dow) = match fields.len() {
        5 => (2, 4),
        6 | 7 => (3, 5),
        _ => return expr.to_owned(),
    };
    let bare = |f: &str| f == "*" || f == "?";
    let starred = |f: &str| f.starts_with('*') || f.starts_with('?');
    let (d, w) = (fields[dom].as_str(), fields[dow].as_str());
    if !w.starts_with('+') && !bare(d) && !bare(w) && (starred(d) || starred(w)) {
        fields[dow] = format!("+{w}");
    }
    fields.join(" ")
}

/// One job of one practice with its schedule.
#[derive(Clone, Debug)]
pub struct JobSchedule {
    pub practice: String,
    pub job: Job,
    pub schedule: Schedule,
}

/// Every job of a practice, in `Job` order, in the practice's time zone.
/// Configuration has checked the expressions already; an error here means
/// a `Practice` built some other way.
pub fn practice_schedules(practice: &Practice) -> Result<Vec<JobSchedule>, ScheduleError> {
    practice
        .schedules
        .iter()
        .map(|(job, expr)| {
            Ok(JobSchedule {
                practice: practice.id.clone(),
                job: *job,
                schedule: Schedule::parse(expr, practice.timezone)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_starred_but_restricted_day_fields_get_the_and_prefix() {
        assert_eq!(vixie_days("0 0 1,15 * 1"), "0 0 1,15 * 1");
        assert_eq!(vixie_days("0 0 * * 1"), "0 0 * * 1");
        assert_eq!(vixie_days("0 0 */2 * 1"), "0 0 */2 * +1");
        assert_eq!(vixie_days("0 0 0 1-5 * */2"), "0 0 0 1-5 * +*/2");
        assert_eq!(vixie_days("0 0 ? * 1"), "0 0 ? * 1");
        assert_eq!(vixie_days("@daily"), "@daily");
    }
}
