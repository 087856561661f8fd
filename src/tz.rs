//! Time zones, read from the system's time zone database (tzdata).
//!
//! A practice names its zone (`timezone = "America/Chicago"`); schedules,
//! deadlines and the times mail and pages show are in it. The zone is read
//! from `$TZDIR` (else `/usr/share/zoneinfo`) the first time a configuration
//! names it, and kept for the life of the process: a daemon picks up a tzdata
//! update when it restarts.
//!
//! Why not the IANA database built into the binary (chrono-tz, which precert
//! used before): its ~35 000 transitions each carry a pointer, half of the
//! relocations the loader applied at every start — ~245 page faults and
//! ~1.5 ms of every command, `precert cases show` included (bench/README §6).
//! `UTC` needs no file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use chrono::{FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone};
use tz::timezone::TransitionRule;
use tz::TimeZoneRef;

/// Where tzdata is when `$TZDIR` does not say.
const ZONEINFO: &str = "/usr/share/zoneinfo";

/// A time zone of the IANA database. `Copy`: each zone is read once and
/// kept for the process's life (there are as many as zones the
/// configuration names).
#[derive(Clone, Copy)]
pub struct Tz(&'static Zone);

struct Zone {
    name: &'static str,
    rules: TimeZoneRef<'static>,
    /// Every offset the zone has used or will use, from UTC in seconds:
    /// the candidates for a local time.
    offsets: &'static [i32],
}

static UTC_ZONE: Zone = Zone {
    name: "UTC",
    rules: TimeZoneRef::utc(),
    offsets: &[0],
};

/// Coordinated Universal Time, without tzdata.
pub const UTC: Tz = Tz(&UTC_ZONE);

/// Zones read so far, by name.
static ZONES: Mutex<Vec<&'static Zone>> = Mutex::new(Vec::new());

/// Why a name is not a zone.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TzError {
    #[error("`{0}` is not an IANA time zone name (e.g. America/Chicago)")]
    NotAName(String),
    #[error("`{name}` is not an IANA time zone (e.g. America/Chicago); no {path}")]
    Unknown { name: String, path: String },
    #[error(
        "time zones are read from the system's time zone database, and there is none at {dir} \
         (install tzdata, or set TZDIR to where it is)"
    )]
    NoDatabase { dir: String },
    #[error("time zone `{name}`: {path} cannot be read: {reason}")]
    Unreadable { name: String, path: String, reason: String },
}

impl Tz {
    pub const UTC: Tz = UTC;

    /// The zone the IANA database calls `name`, read from tzdata the first
    /// time it is asked for.
    pub fn named(name: &str) -> Result<Tz, TzError> {
        if name == "UTC" {
            return Ok(UTC);
        }
        let mut zones = ZONES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(z) = zones.iter().find(|z| z.name == name) {
            return Ok(Tz(z));
        }
        let zone = read(name, &database())?;
        zones.push(zone);
        Ok(Tz(zone))
    }

    /// The zone's IANA name, e.g. `America/Chicago`.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// The offset in effect at `unix` seconds.
    fn at(self, unix: i64) -> TzOffset {
        let rules = &self.0.rules;
        // Out of the range tz can compute (years beyond ±292 billion): the
        // zone's first type, as good as any.
        let t = rules.find_local_time_type(unix).unwrap_or(&rules.local_time_types()[0]);
        self.offset(t.ut_offset(), t.time_zone_designation())
    }

    fn offset(self, seconds: i32, abbreviation: &'static str) -> TzOffset {
        TzOffset {
            tz: self,
            fixed: FixedOffset::east_opt(seconds).unwrap_or(FixedOffset::east_opt(0).expect("0 is an offset")),
            abbreviation: if abbreviation.is_empty() {
                self.0.name
            } else {
                abbreviation
            },
        }
    }
}

fn database() -> PathBuf {
    std::env::var_os("TZDIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(ZONEINFO), PathBuf::from)
}

/// A name is read as a path under the database: it must look like one of
/// the database's names, so it cannot leave it.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && !part.starts_with('-')
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b))
        })
}

fn read(name: &str, dir: &Path) -> Result<&'static Zone, TzError> {
    if !valid_name(name) {
        return Err(TzError::NotAName(name.to_owned()));
    }
    let path = dir.join(name);
    let shown = path.display().to_string();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(if dir.join("UTC").exists() || dir.join("Etc").is_dir() {
                TzError::Unknown {
                    name: name.to_owned(),
                    path: shown,
                }
            } else {
                TzError::NoDatabase {
                    dir: dir.display().to_string(),
                }
            });
        }
        // A directory (`America`) is not a zone either.
        Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => {
            return Err(TzError::Unknown {
                name: name.to_owned(),
                path: shown,
            })
        }
        Err(e) => {
            return Err(TzError::Unreadable {
                name: name.to_owned(),
                path: shown,
                reason: e.to_string(),
            })
        }
    };
    let rules = tz::TimeZone::from_tz_data(&bytes).map_err(|e| TzError::Unreadable {
        name: name.to_owned(),
        path: shown,
        reason: format!("not a time zone file ({e})"),
    })?;
    let rules: &'static tz::TimeZone = Box::leak(Box::new(rules));
    let rules = rules.as_ref();
    let mut offsets: Vec<i32> = rules.local_time_types().iter().map(|t| t.ut_offset()).collect();
    match rules.extra_rule() {
        Some(TransitionRule::Fixed(t)) => offsets.push(t.ut_offset()),
        Some(TransitionRule::Alternate(a)) => offsets.extend([a.std().ut_offset(), a.dst().ut_offset()]),
        None => {}
    }
    offsets.sort_unstable();
    offsets.dedup();
    Ok(Box::leak(Box::new(Zone {
        name: Box::leak(name.to_owned().into_boxed_str()),
        rules,
        offsets: Box::leak(offsets.into_boxed_slice()),
    })))
}

impl FromStr for Tz {
    type Err = TzError;
    fn from_str(s: &str) -> Result<Tz, TzError> {
        Tz::named(s)
    }
}

impl PartialEq for Tz {
    fn eq(&self, other: &Tz) -> bool {
        self.0.name == other.0.name
    }
}
impl Eq for Tz {}

impl std::hash::Hash for Tz {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.name.hash(h);
    }
}

impl fmt::Debug for Tz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl fmt::Display for Tz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

/// The offset of a zone at an instant; shown (`%Z`) as its abbreviation,
/// e.g. `CDT`.
#[derive(Clone, Copy)]
pub struct TzOffset {
    tz: Tz,
    fixed: FixedOffset,
    abbreviation: &'static str,
}

impl TzOffset {
    pub fn abbreviation(&self) -> &'static str {
        self.abbreviation
    }
}

impl Offset for TzOffset {
    fn fix(&self) -> FixedOffset {
        self.fixed
    }
}

impl fmt::Display for TzOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.abbreviation)
    }
}

impl fmt::Debug for TzOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.abbreviation)
    }
}

impl TimeZone for Tz {
    type Offset = TzOffset;

    fn from_offset(offset: &TzOffset) -> Tz {
        offset.tz
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> TzOffset {
        self.at(utc.and_utc().timestamp())
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> TzOffset {
        self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
    }

    /// Each offset the zone has is tried: `local` minus the offset is an
    /// instant, and the offset is right when the zone has it then. None
    /// fits in a gap (spring forward), two in a fold (fall back); the
    /// earlier instant comes first.
    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<TzOffset> {
        let l = local.and_utc().timestamp();
        let mut fits: Vec<(i64, TzOffset)> = Vec::with_capacity(2);
        for &o in self.0.offsets {
            let Some(unix) = l.checked_sub(i64::from(o)) else {
                continue;
            };
            let at = self.at(unix);
            if at.fixed.local_minus_utc() == o {
                fits.push((unix, at));
            }
        }
        fits.sort_by_key(|(unix, _)| *unix);
        match fits.as_slice() {
            [] => MappedLocalTime::None,
            [(_, one)] => MappedLocalTime::Single(*one),
            [(_, first), .., (_, last)] => MappedLocalTime::Ambiguous(*first, *last),
        }
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<TzOffset> {
        match self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN)) {
            MappedLocalTime::None => {
                self.offset_from_local_datetime(&local.and_hms_opt(23, 59, 59).expect("23:59:59 is a time"))
            }
            found => found,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike, Utc};

    fn chicago() -> Tz {
        Tz::named("America/Chicago").expect("tzdata has America/Chicago")
    }

    fn local(tz: Tz, s: &str) -> MappedLocalTime<chrono::DateTime<Tz>> {
        tz.from_local_datetime(&NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap())
    }

    #[test]
    fn a_zone_is_read_once_and_named() {
        let a = chicago();
        let b: Tz = "America/Chicago".parse().unwrap();
        assert!(std::ptr::eq(a.0, b.0));
        assert_eq!(a.to_string(), "America/Chicago");
        assert_eq!(UTC.name(), "UTC");
        assert_ne!(a, UTC);
    }

    #[test]
    fn instants_show_in_the_zone_with_its_abbreviation() {
        let summer = Utc
            .with_ymd_and_hms(2026, 7, 1, 17, 0, 0)
            .unwrap()
            .with_timezone(&chicago());
        assert_eq!(summer.format("%Y-%m-%d %H:%M %Z").to_string(), "2026-07-01 12:00 CDT");
        let winter = Utc
            .with_ymd_and_hms(2026, 1, 15, 17, 0, 0)
            .unwrap()
            .with_timezone(&chicago());
        assert_eq!(winter.format("%H:%M %Z %z").to_string(), "11:00 CST -0600");
        let utc = Utc.with_ymd_and_hms(2026, 1, 15, 17, 0, 0).unwrap().with_timezone(&UTC);
        assert_eq!(utc.format("%H:%M %Z").to_string(), "17:00 UTC");
        // Beyond the file's last transition the zone's rule goes on.
        let far = Utc
            .with_ymd_and_hms(2090, 7, 1, 17, 0, 0)
            .unwrap()
            .with_timezone(&chicago());
        assert_eq!(far.format("%H:%M %Z").to_string(), "12:00 CDT");
    }

    #[test]
    fn local_times_in_a_gap_and_a_fold() {
        let tz = chicago();
        // 2026-03-08 02:30 does not exist in Chicago (clocks go 02:00 → 03:00).
        assert_eq!(local(tz, "2026-03-08 02:30"), MappedLocalTime::None);
        // 2026-11-01 01:30 happens twice: CDT first, then CST.
        match local(tz, "2026-11-01 01:30") {
            MappedLocalTime::Ambiguous(a, b) => {
                assert_eq!(a.with_timezone(&Utc).hour(), 6);
                assert_eq!(b.with_timezone(&Utc).hour(), 7);
                assert_eq!(a.offset().abbreviation(), "CDT");
                assert_eq!(b.offset().abbreviation(), "CST");
            }
            other => panic!("a fold, not {other:?}"),
        }
        let noon = local(tz, "2026-06-15 12:00").single().unwrap();
        assert_eq!(noon.with_timezone(&Utc).hour(), 17);
        assert_eq!(noon.with_timezone(&Utc).day(), 15);
        // A zone that moved its offset for good (Samoa skipped 2011-12-30).
        let apia = Tz::named("Pacific/Apia").unwrap();
        assert_eq!(local(apia, "2011-12-30 12:00"), MappedLocalTime::None);
        assert!(local(apia, "2011-12-31 12:00").single().is_some());
    }

    #[test]
    fn names_that_are_not_zones_say_why() {
        assert!(matches!(Tz::named("America/Chicagoo"), Err(TzError::Unknown { .. })));
        assert!(matches!(Tz::named("America"), Err(TzError::Unknown { .. })));
        for bad in [
            "",
            "../etc/passwd",
            "/etc/passwd",
            "America//Chicago",
            "America/./Chicago",
            "a b",
        ] {
            assert_eq!(Tz::named(bad), Err(TzError::NotAName(bad.into())), "{bad:?}");
        }
        let none = read("America/Chicago", Path::new("/nonexistent-tzdata"))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            none,
            TzError::NoDatabase {
                dir: "/nonexistent-tzdata".into()
            }
        );
        assert!(none.to_string().contains("install tzdata"), "{none}");
    }
}
