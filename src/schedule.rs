//! When a practice's jobs fire: cron expressions evaluated in the practice's
//! own time zone.
//!
//! Expressions are standard 5-field crontab (minute hour day-of-month month
//! day-of-week; day-of-week 0-7 with 0 and 7 Sunday, or SUN-SAT) or 6-7 fields
//! with seconds first and a year last, and `@hourly`, `@daily`, `@weekly`,
//! `@monthly`, `@yearly`. [`Schedule::parse`] reads each field itself, so that
//! a mistake is named by field, value and allowed range, and hands the `cron`
//! crate a canonical expression (seconds first, explicit lists, day-of-week
//! as names: `cron` counts weekdays from Sunday = 1). `L`, `W` and `#`, which
//! `cron` has no equivalent for, are refused with that reason; years are
//! those `cron` knows, 1970-2100. Two rules are ours, and each is a decision
//! worth knowing:
//!
//! - **Day of month OR day of week, as Vixie cron does it.** When both day
//!   fields are restricted, a day matching either fires. Vixie cron counts a
//!   field as unrestricted when it *starts* with `*` (so `*/2` is
//!   unrestricted, and `*/2 … 1` means odd days that are Mondays). `cron`
//!   always combines the day fields with AND, so an expression with both
//!   fields restricted becomes two schedules, one per day field, and fires
//!   at the earlier of their next times.
//! - **Daylight saving time: every wall-clock slot fires exactly once.**
//!   `cron` is asked only about the wall clock (local times read as UTC,
//!   where no change of clock exists); we map each matching wall-clock time
//!   to an instant ourselves. A time the clock skips when it springs forward
//!   (02:30 on 2026-03-08 in Chicago) fires once, at the first instant after
//!   the gap (03:00 CDT), merged with anything else due then. A time the
//!   clock repeats when it falls back (01:30 on 2026-11-01) fires once, at
//!   its first occurrence (01:30 CDT). This holds for every expression,
//!   hourly ones included: on the fall-back day an hourly job leaves the
//!   repeated hour out, which for batch jobs is better than running a
//!   wall-clock slot twice.

use std::fmt;
use std::str::FromStr;

use crate::tz::Tz;
use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};

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
    /// One schedule, or two whose union is the expression (day of month OR
    /// day of week). They see local wall-clock times as UTC.
    crons: Vec<cron::Schedule>,
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
        let crons = canonical(expr)
            .and_then(|exprs| {
                exprs
                    .iter()
                    .map(|e| cron::Schedule::from_str(e).map_err(|err| format!("{err} (in `{e}`)")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|reason| ScheduleError {
                expr: expr.to_owned(),
                reason,
            })?;
        Ok(Schedule {
            expr: expr.to_owned(),
            crons,
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
            let Some(local) = self.next_local(cursor) else {
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
            let local = self.previous_local(cursor, inclusive)?;
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

    /// The first matching wall-clock time strictly after `after`.
    fn next_local(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let after = Utc.from_utc_datetime(&after);
        self.crons
            .iter()
            .filter_map(|c| c.after(&after).next())
            .min()
            .map(|t| t.naive_utc())
    }

    /// The last matching wall-clock time before `before` (or at it).
    fn previous_local(&self, before: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        // `cron` looks strictly before a whole second, and within the
        // second of a time with a fraction: a second later is "at or before".
        let probe = if inclusive {
            before.with_nanosecond(0)? + Duration::seconds(1)
        } else {
            before
        };
        let probe = Utc.from_utc_datetime(&probe);
        self.crons
            .iter()
            .filter_map(|c| c.after(&probe).next_back())
            .max()
            .map(|t| t.naive_utc())
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

/// One field of a cron expression: its name in messages and what it allows.
struct FieldSpec {
    name: &'static str,
    plural: &'static str,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, … (months and weekdays).
    names: &'static [&'static str],
    /// What the values are, for messages.
    range: &'static str,
}

const SECOND: FieldSpec = FieldSpec {
    name: "second",
    plural: "seconds",
    min: 0,
    max: 59,
    names: &[],
    range: "0-59",
};
const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    plural: "minutes",
    min: 0,
    max: 59,
    names: &[],
    range: "0-59",
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    plural: "hours",
    min: 0,
    max: 23,
    names: &[],
    range: "0-23",
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    plural: "days of the month",
    min: 1,
    max: 31,
    names: &[],
    range: "1-31",
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    plural: "months",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    range: "1-12 or JAN-DEC",
};
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    plural: "days of the week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    range: "0-7 (0 and 7 are Sunday) or SUN-SAT",
};
const YEAR: FieldSpec = FieldSpec {
    name: "year",
    plural: "years",
    min: 1970,
    max: 2100,
    names: &[],
    range: "1970-2100",
};

/// The `cron` crate's expressions for `expr`: one, or two whose union it is
/// (see the module documentation). The error names the field, the value and
/// what the field allows.
fn canonical(expr: &str) -> Result<Vec<String>, String> {
    let expr = match expr {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        e if e.starts_with('@') => {
            return Err(format!(
                "`{e}` is not a shorthand; use @hourly, @daily, @weekly, @monthly or @yearly"
            ))
        }
        e => e,
    };
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let (second, rest, year) = match fields.len() {
        5 => ("0", &fields[..], "*"),
        6 => (fields[0], &fields[1..], "*"),
        7 => (fields[0], &fields[1..6], fields[6]),
        n => {
            return Err(format!(
                "it has {n} fields; a cron expression has 5 (minute hour day-of-month month day-of-week) or 6-7 (seconds first, a year last)"
            ))
        }
    };
    let [minute, hour, dom, month, dow] = [rest[0], rest[1], rest[2], rest[3], rest[4]];
    let second = field(&SECOND, second)?;
    let minute = field(&MINUTE, minute)?;
    let hour = field(&HOUR, hour)?;
    let dom_list = field(&DAY_OF_MONTH, dom)?;
    let month = field(&MONTH, month)?;
    let dow_list = field(&DAY_OF_WEEK, dow)?;
    let year = field(&YEAR, year)?;
    let make = |d: &str, w: &str| format!("{second} {minute} {hour} {d} {month} {w} {year}");
    // Vixie cron: a day field is unrestricted when it starts with `*`.
    let starred = |f: &str| f.starts_with('*') || f.starts_with('?');
    if starred(dom) || starred(dow) {
        Ok(vec![make(&dom_list, &dow_list)])
    } else {
        Ok(vec![make(&dom_list, "*"), make("*", &dow_list)])
    }
}

/// One field in `cron`'s terms: `*`, or the explicit list of values
/// (weekdays as names, Sunday once).
fn field(spec: &FieldSpec, text: &str) -> Result<String, String> {
    let day_field = spec.name == DAY_OF_MONTH.name || spec.name == DAY_OF_WEEK.name;
    if text == "*" || (day_field && text == "?") {
        return Ok("*".to_owned());
    }
    let mut values = std::collections::BTreeSet::new();
    for item in text.split(',') {
        values.extend(item_values(spec, text, item)?);
    }
    let list: Vec<String> = if spec.name == DAY_OF_WEEK.name {
        let days: std::collections::BTreeSet<u32> = values.into_iter().map(|v| v % 7).collect();
        days.into_iter()
            .map(|d| DAY_OF_WEEK.names[d as usize].to_owned())
            .collect()
    } else {
        values.into_iter().map(|v| v.to_string()).collect()
    };
    Ok(list.join(","))
}

/// The values of one list item: `*`, `N`, `N-M`, each with an optional
/// `/STEP`.
fn item_values(spec: &FieldSpec, field_text: &str, item: &str) -> Result<Vec<u32>, String> {
    let bad = |why: String| format!("{} `{field_text}`: {why}", spec.name);
    if item.is_empty() {
        return Err(bad("an empty item in the list".into()));
    }
    let upper = item.to_ascii_uppercase();
    if upper.contains('#') {
        return Err(bad(format!(
            "`{item}` (the Nth weekday of the month) is not supported: the scheduler (the `cron` crate) has no `#`; list the days instead"
        )));
    }
    let special = |s: &str| {
        s == "L"
            || s == "LW"
            || s.starts_with("L-")
            || (s.len() > 1
                && (s.ends_with('L') || s.ends_with('W'))
                && s[..s.len() - 1].chars().all(|c| c.is_ascii_digit()))
    };
    if special(&upper) {
        return Err(bad(format!(
            "`{item}` (last day, or nearest weekday) is not supported: the scheduler (the `cron` crate) has no `L` or `W`; list the days instead"
        )));
    }
    let (base, step) = match item.split_once('/') {
        Some((b, s)) => {
            let step: u32 = s.parse().map_err(|_| bad(format!("the step `{s}` is not a number")))?;
            if step == 0 || step > spec.max {
                return Err(bad(format!(
                    "the step {step} is out of range: steps are 1-{}",
                    spec.max
                )));
            }
            (b, Some(step))
        }
        None => (item, None),
    };
    let weekday = spec.name == DAY_OF_WEEK.name;
    let (from, to) = if base == "*" || base == "?" {
        if base == "?" && spec.name != DAY_OF_MONTH.name && !weekday {
            return Err(bad("`?` is for day-of-month and day-of-week only".into()));
        }
        // `*` in day-of-week is Sunday to Saturday: 7 is Sunday again.
        (spec.min, if weekday { 6 } else { spec.max })
    } else if let Some((a, b)) = base.split_once('-') {
        let (a, b_text) = (value(spec, field_text, a)?, b);
        let mut b = value(spec, field_text, b_text)?;
        if weekday && b == 0 && b_text.eq_ignore_ascii_case("SUN") {
            // `FRI-SUN`: Sunday as the end of the week.
            b = 7;
        }
        if a > b {
            return Err(bad(format!(
                "the range `{base}` runs backwards; write the smaller value first"
            )));
        }
        (a, b)
    } else {
        let a = value(spec, field_text, base)?;
        // `N/STEP` runs from N to the end of the field.
        (a, if step.is_some() { spec.max } else { a })
    };
    Ok((from..=to).step_by(step.unwrap_or(1) as usize).collect())
}

/// A number or name within the field's range.
fn value(spec: &FieldSpec, field_text: &str, text: &str) -> Result<u32, String> {
    if let Some(i) = spec.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(spec.min + i as u32);
    }
    let out_of_range = || {
        let what = if text == field_text {
            format!("{} `{text}`", spec.name)
        } else {
            format!("{} `{field_text}`: {text}", spec.name)
        };
        format!("{what} is out of range: {} are {}", spec.plural, spec.range)
    };
    match text.parse::<u32>() {
        Ok(v) if (spec.min..=spec.max).contains(&v) => Ok(v),
        Ok(_) => Err(out_of_range()),
        Err(_) if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) => Err(out_of_range()),
        Err(_) => Err(format!(
            "{} `{field_text}`: `{text}` is not a value; {} are {}",
            spec.name, spec.plural, spec.range
        )),
    }
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

    fn reason(expr: &str) -> String {
        Schedule::parse(expr, Tz::UTC).unwrap_err().reason
    }

    #[test]
    fn only_day_fields_both_restricted_without_a_star_make_a_union() {
        let n = |e: &str| Schedule::parse(e, Tz::UTC).unwrap().crons.len();
        assert_eq!(n("0 0 1,15 * 1"), 2);
        assert_eq!(n("0 0 * * 1"), 1);
        assert_eq!(n("0 0 */2 * 1"), 1);
        assert_eq!(n("0 0 0 1-5 * */2"), 1);
        assert_eq!(n("0 0 ? * 1"), 1);
        assert_eq!(n("@daily"), 1);
    }

    #[test]
    fn expressions_become_cron_crate_expressions_with_seconds_and_weekday_names() {
        assert_eq!(
            canonical("*/30 7-18 * * 1-5").unwrap(),
            ["0 0,30 7,8,9,10,11,12,13,14,15,16,17,18 * * MON,TUE,WED,THU,FRI *"]
        );
        assert_eq!(canonical("0 0 * * 0,7").unwrap(), ["0 0 0 * * SUN *"]);
        assert_eq!(canonical("0 0 * * fri-sun").unwrap(), ["0 0 0 * * SUN,FRI,SAT *"]);
        assert_eq!(
            canonical("0 0 * * 5-1").unwrap_err(),
            "day-of-week `5-1`: the range `5-1` runs backwards; write the smaller value first"
        );
        assert_eq!(canonical("0 0 * * */2").unwrap(), ["0 0 0 * * SUN,TUE,THU,SAT *"]);
        assert_eq!(
            canonical("0 0 1,15 jan mon").unwrap(),
            ["0 0 0 1,15 1 * *", "0 0 0 * 1 MON *"]
        );
        assert_eq!(canonical("@weekly").unwrap(), ["0 0 0 * * SUN *"]);
    }

    #[test]
    fn a_bad_field_is_named_with_its_value_and_range() {
        assert_eq!(reason("0 25 * * *"), "hour `25` is out of range: hours are 0-23");
        assert_eq!(reason("61 2 * * *"), "minute `61` is out of range: minutes are 0-59");
        assert_eq!(
            reason("0 0 0 32 * *"),
            "day-of-month `32` is out of range: days of the month are 1-31"
        );
        assert_eq!(
            reason("0 0 1 13 *"),
            "month `13` is out of range: months are 1-12 or JAN-DEC"
        );
        assert_eq!(
            reason("0 0 * * 1-8"),
            "day-of-week `1-8`: 8 is out of range: days of the week are 0-7 (0 and 7 are Sunday) or SUN-SAT"
        );
        assert_eq!(reason("60 0 0 * * *"), "second `60` is out of range: seconds are 0-59");
        assert_eq!(
            reason("0 0 0 * * * 1969"),
            "year `1969` is out of range: years are 1970-2100"
        );
        assert_eq!(
            reason("0 0 * * mo"),
            "day-of-week `mo`: `mo` is not a value; days of the week are 0-7 (0 and 7 are Sunday) or SUN-SAT"
        );
        assert_eq!(
            reason("*/0 * * * *"),
            "minute `*/0`: the step 0 is out of range: steps are 1-59"
        );
        assert_eq!(reason("0 0 1,,2 * *"), "day-of-month `1,,2`: an empty item in the list");
        assert!(reason("@fortnightly").contains("not a shorthand"));
    }

    #[test]
    fn l_w_and_hash_are_refused_with_the_reason() {
        for (expr, needle) in [
            (
                "0 0 L * *",
                "day-of-month `L`: `L` (last day, or nearest weekday) is not supported",
            ),
            ("0 0 15W * *", "day-of-month `15W`: `15W` (last day"),
            ("0 0 LW * *", "no `L` or `W`"),
            ("0 0 * * 5L", "day-of-week `5L`"),
            (
                "0 0 * * 1#2",
                "day-of-week `1#2`: `1#2` (the Nth weekday of the month) is not supported",
            ),
        ] {
            let r = reason(expr);
            assert!(r.contains(needle), "{expr}: {r}");
        }
        // Month and weekday names with an L or a W in them are names.
        assert!(Schedule::parse("0 0 * jul wed", Tz::UTC).is_ok());
    }
}
