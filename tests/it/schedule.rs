//! Schedules: standard crontab meaning, in the practice's time zone, and
//! each wall-clock slot once across both daylight-saving changes.

use chrono::{DateTime, Datelike, TimeZone, Utc, Weekday};
use precert::schedule::Schedule;
use precert::tz::Tz;

use super::support::{stdout, Project};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn local(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

fn fires(expr: &str, tz: Tz, after: &str, n: usize) -> Vec<DateTime<Utc>> {
    Schedule::parse(expr, tz).unwrap().next_fires(utc(after), n)
}

#[test]
fn submit_runs_every_half_hour_in_office_hours_on_weekdays() {
    // Friday 2026-11-20, 18:45 in Chicago: the last slot of the week was
    // 18:30; the next is Monday 07:00.
    let f = fires("*/30 7-18 * * 1-5", chicago(), "2026-11-21T00:45:00Z", 3);
    assert_eq!(
        f,
        vec![
            local(chicago(), 2026, 11, 23, 7, 0),
            local(chicago(), 2026, 11, 23, 7, 30),
            local(chicago(), 2026, 11, 23, 8, 0),
        ]
    );
}

#[test]
fn a_slot_is_after_the_instant_it_is_asked_from_never_at_it() {
    // Asked at the very instant of a slot (the scheduler just fired it), the
    // next fire is the following one.
    let f = fires("0 2 * * *", chicago(), "2026-12-02T08:00:00Z", 1);
    assert_eq!(f, vec![utc("2026-12-03T08:00:00Z")]);
}

#[test]
fn day_of_month_or_day_of_week_as_in_vixie_cron() {
    // Both day fields restricted: the 1st, the 15th, and every Monday.
    let f = fires("0 9 1,15 * mon", Tz::UTC, "2026-06-30T00:00:00Z", 12);
    let days: Vec<(u32, Weekday)> = f.iter().map(|t| (t.day(), t.weekday())).collect();
    assert!(
        days.iter().all(|(d, w)| *d == 1 || *d == 15 || *w == Weekday::Mon),
        "{days:?}"
    );
    // July 2026: Wed 1st, Mon 6th, Mon 13th, Wed 15th, Mon 20th, Mon 27th.
    assert_eq!(
        days[..6],
        [
            (1, Weekday::Wed),
            (6, Weekday::Mon),
            (13, Weekday::Mon),
            (15, Weekday::Wed),
            (20, Weekday::Mon),
            (27, Weekday::Mon)
        ]
    );

    // One field unrestricted: only the other one counts.
    let mondays = fires("0 9 * * 1", Tz::UTC, "2026-06-30T00:00:00Z", 4);
    assert!(mondays.iter().all(|t| t.weekday() == Weekday::Mon));

    // Vixie counts a day field that starts with `*` as unrestricted, so
    // `*/2` with a weekday means odd days that are Mondays (AND), not every
    // odd day plus every Monday.
    let f = fires("0 9 */2 * 1", Tz::UTC, "2026-06-30T00:00:00Z", 4);
    for t in &f {
        assert_eq!(t.weekday(), Weekday::Mon, "{t}");
        assert_eq!(t.day() % 2, 1, "{t}");
    }
    assert_eq!(f[0], utc("2026-07-13T09:00:00Z"));
}

#[test]
fn six_and_seven_fields_put_seconds_first() {
    let f = fires("30 0 12 * * *", Tz::UTC, "2026-05-01T00:00:00Z", 2);
    assert_eq!(f, vec![utc("2026-05-01T12:00:30Z"), utc("2026-05-02T12:00:30Z")]);

    // The seventh field is the year.
    let f = fires("0 0 12 1 1 * 2028", Tz::UTC, "2026-05-01T00:00:00Z", 3);
    assert_eq!(f, vec![utc("2028-01-01T12:00:00Z")]);

    // Every 20 seconds means every 20 seconds.
    let f = fires("*/20 * * * * *", Tz::UTC, "2026-05-01T00:00:05Z", 3);
    assert_eq!(
        f,
        vec![
            utc("2026-05-01T00:00:20Z"),
            utc("2026-05-01T00:00:40Z"),
            utc("2026-05-01T00:01:00Z")
        ]
    );
}

#[test]
fn a_schedule_runs_on_the_practices_clock() {
    // 07:00 on a winter weekday, in Chicago and in Los Angeles.
    let after = "2026-12-01T00:00:00Z";
    assert_eq!(
        fires("0 7 * * *", chicago(), after, 1),
        vec![utc("2026-12-01T13:00:00Z")]
    );
    assert_eq!(
        fires("0 7 * * *", los_angeles(), after, 1),
        vec![utc("2026-12-01T15:00:00Z")]
    );
    // In summer the same wall-clock time is an hour earlier in UTC.
    assert_eq!(
        fires("0 7 * * *", chicago(), "2026-07-01T00:00:00Z", 1),
        vec![utc("2026-07-01T12:00:00Z")]
    );
}

#[test]
fn a_job_in_the_hour_skipped_by_spring_forward_runs_once_right_after_it() {
    // 2026-03-08 in Chicago: 02:00 CST jumps to 03:00 CDT; 02:30 never
    // happens. The nightly 02:30 job runs once, at 03:00 CDT.
    let f = fires("30 2 * * *", chicago(), "2026-03-07T12:00:00Z", 3);
    assert_eq!(
        f,
        vec![
            local(chicago(), 2026, 3, 8, 3, 0),
            local(chicago(), 2026, 3, 9, 2, 30),
            local(chicago(), 2026, 3, 10, 2, 30),
        ]
    );
    assert_eq!(f[0], utc("2026-03-08T08:00:00Z"));

    // An hourly job: 02:00 does not exist and merges with 03:00, so the
    // day has one run per real hour, none twice.
    let f = fires("0 * * * *", chicago(), "2026-03-08T05:30:00Z", 4);
    assert_eq!(
        f,
        vec![
            utc("2026-03-08T06:00:00Z"), // 00:00 CST
            utc("2026-03-08T07:00:00Z"), // 01:00 CST
            utc("2026-03-08T08:00:00Z"), // 03:00 CDT (02:00 skipped, run once)
            utc("2026-03-08T09:00:00Z"), // 04:00 CDT
        ]
    );

    // A job every 15 minutes inside the skipped hour runs once for all four.
    let f = fires("*/15 2 * * *", chicago(), "2026-03-08T07:50:00Z", 2);
    assert_eq!(f, vec![utc("2026-03-08T08:00:00Z"), local(chicago(), 2026, 3, 9, 2, 0)]);
}

#[test]
fn a_job_in_the_hour_repeated_by_fall_back_runs_once_at_its_first_occurrence() {
    // 2026-11-01 in Chicago: 02:00 CDT goes back to 01:00 CST; 01:30 happens
    // twice. The 01:30 job runs at the first (06:30 UTC) only.
    let f = fires("30 1 * * *", chicago(), "2026-10-31T12:00:00Z", 2);
    assert_eq!(f, vec![utc("2026-11-01T06:30:00Z"), utc("2026-11-02T07:30:00Z")]);

    // Asked during the second 01:xx, it does not run that night again.
    let f = fires("30 1 * * *", chicago(), "2026-11-01T07:15:00Z", 1);
    assert_eq!(f, vec![utc("2026-11-02T07:30:00Z")]);

    // The 02:00 poll runs once, at 02:00 CST.
    let f = fires("0 2 * * *", chicago(), "2026-10-31T12:00:00Z", 1);
    assert_eq!(f, vec![utc("2026-11-01T08:00:00Z")]);

    // Hourly: each wall-clock hour once, so the repeated 01:00 is left out.
    let f = fires("0 * * * *", chicago(), "2026-11-01T04:30:00Z", 3);
    assert_eq!(
        f,
        vec![
            utc("2026-11-01T05:00:00Z"), // 00:00 CDT
            utc("2026-11-01T06:00:00Z"), // 01:00 CDT
            utc("2026-11-01T08:00:00Z"), // 02:00 CST
        ]
    );
}

#[test]
fn after_downtime_the_latest_missed_slot_is_owed_once() {
    let s = Schedule::parse("0 2 * * *", chicago()).unwrap();
    // Last ran Monday 02:00; back up Thursday 10:00.
    let last = local(chicago(), 2026, 11, 16, 2, 0);
    let now = local(chicago(), 2026, 11, 19, 10, 0);
    let due = s.due(last, now).unwrap();
    assert_eq!(due.slot, local(chicago(), 2026, 11, 19, 2, 0));
    assert_eq!(due.missed, 2, "Tuesday's and Wednesday's slots are folded in");
    // Nothing more is owed until Friday 02:00.
    assert_eq!(s.due(due.slot, now), None);
    assert_eq!(s.due(due.slot, local(chicago(), 2026, 11, 20, 2, 0)).unwrap().missed, 0);

    // The latest slot before a time in the second 01:xx of fall-back night
    // is the first 01:30, not a slot "later" on the wall clock.
    let s = Schedule::parse("30 1 * * *", chicago()).unwrap();
    assert_eq!(
        s.latest_fire_at_or_before(utc("2026-11-01T07:15:00Z")),
        Some(utc("2026-11-01T06:30:00Z"))
    );
}

#[test]
fn a_bad_expression_is_refused_with_the_reason() {
    let err = Schedule::parse("0 2 * *", chicago()).unwrap_err();
    assert!(err.to_string().contains("has 4 fields"), "{err}");
    let err = Schedule::parse("61 2 * * *", chicago()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`61 2 * * *` is not a valid cron expression: minute `61` is out of range: minutes are 0-59"
    );
}

#[test]
fn check_names_the_bad_field_and_refuses_what_the_cron_crate_cannot_express() {
    let p = Project::new();
    let file = "config/practices/valley-imaging.toml";
    let text = std::fs::read_to_string(p.path(file))
        .unwrap()
        .replace(
            "poll = \"0 1,4 * * *\"",
            "poll = \"0 1,4 * * 1-8\"\nletters = \"0 3 L * *\"\ndigest = \"0 7 * * 1#2\"",
        )
        .replace("submit = \"*/15 6-20 * * *\"", "submit = \"*/15 6-20 * 1,13 *\"");
    p.write(file, &text);
    let out = p.precert(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = super::support::stderr(&out);
    for needle in [
        "schedules.poll: `0 1,4 * * 1-8` is not a valid cron expression: day-of-week `1-8`: 8 is out of range: days of the week are 0-7 (0 and 7 are Sunday) or SUN-SAT",
        "schedules.submit: `*/15 6-20 * 1,13 *` is not a valid cron expression: month `1,13`: 13 is out of range: months are 1-12 or JAN-DEC",
        "schedules.letters: `0 3 L * *` is not a valid cron expression: day-of-month `L`: `L` (last day, or nearest weekday) is not supported: the scheduler (the `cron` crate) has no `L` or `W`",
        "schedules.digest: `0 7 * * 1#2` is not a valid cron expression: day-of-week `1#2`: `1#2` (the Nth weekday of the month) is not supported",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(err.ends_with("4 problems found\n"), "{err}");
}

#[test]
fn precert_schedule_shows_each_practices_next_fires_in_local_time_and_utc() {
    let p = Project::new();
    let out = p.precert(&["schedule", "--after", "2026-03-07T12:00:00Z", "--count", "2"]);
    assert!(out.status.success(), "{}", super::support::stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"lakeside-ortho (America/Chicago)"), "{text}");
    assert!(lines.contains(&"valley-imaging (America/Los_Angeles)"), "{text}");
    // Lakeside's nightly poll on spring-forward night, then the night after.
    assert!(
        text.contains("  poll         0 2 * * *            Sun 2026-03-08 03:00 CDT  2026-03-08 08:00 UTC\n"),
        "{text}"
    );
    assert!(
        text.contains("Mon 2026-03-09 02:00 CDT  2026-03-09 07:00 UTC"),
        "{text}"
    );
    // Valley polls at 01:00 and 04:00 Pacific.
    assert!(
        text.contains("  poll         0 1,4 * * *          Sun 2026-03-08 01:00 PST  2026-03-08 09:00 UTC\n"),
        "{text}"
    );
    // Defaults fill what a practice does not name.
    assert!(
        text.contains("  digest       0 7 * * 1-5          Mon 2026-03-09 07:00 CDT  2026-03-09 12:00 UTC"),
        "{text}"
    );

    let out = p.precert(&[
        "schedule",
        "--practice",
        "valley-imaging",
        "-n",
        "1",
        "--after",
        "2026-11-01T08:30:00Z",
    ]);
    let text = stdout(&out);
    assert!(!text.contains("lakeside"), "{text}");
    assert!(
        text.contains("  poll         0 1,4 * * *          Sun 2026-11-01 04:00 PST  2026-11-01 12:00 UTC"),
        "{text}"
    );

    let out = p.precert(&["schedule", "--practice", "nobody"]);
    assert_eq!(out.status.code(), Some(2));
}

fn chicago() -> Tz {
    Tz::named("America/Chicago").expect("tzdata has America/Chicago")
}

fn los_angeles() -> Tz {
    Tz::named("America/Los_Angeles").expect("tzdata has America/Los_Angeles")
}
