//! When a secret rotates: a cron expression (5 fields, or 6 with seconds
//! first; UTC) or `rate(N minutes|hours|days)`, plus a window over which the
//! start is spread so that many secrets on one schedule do not all rotate
//! in the same second.

use crate::error::{Error, Result};
use chrono::{DateTime, TimeZone, Utc};
use rand::Rng;
use std::str::FromStr;
use std::time::Duration;

/// Longest window accepted: a start spread over more than a week is a
/// schedule of its own.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 86_400);

#[derive(Clone, Debug)]
pub enum Schedule {
    Cron {
        /// As the operator wrote it (shown back unchanged).
        source: String,
        parsed: Box<cron::Schedule>,
    },
    Rate {
        source: String,
        every_ms: i64,
    },
}

impl Schedule {
    pub fn parse(raw: &str) -> Result<Schedule> {
        let raw = raw.trim();
        if let Some(inner) = raw.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
            return parse_rate(raw, inner);
        }
        let fields: Vec<&str> = raw.split_whitespace().collect();
        let normalised = match fields.len() {
            // minute hour day-of-month month day-of-week
            5 => format!("0 {} {} {} {} {}", fields[0], fields[1], fields[2], fields[3], unix_day_of_week(fields[4])?),
            // second minute hour day-of-month month day-of-week
            6 => format!(
                "{} {} {} {} {} {}",
                fields[0],
                fields[1],
                fields[2],
                fields[3],
                fields[4],
                unix_day_of_week(fields[5])?
            ),
            n => {
                return Err(Error::invalid(format!(
                    "schedule: {raw:?} has {n} fields; write a cron expression of 5 fields \
                     (minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\"), 6 with seconds first, \
                     or rate(N minutes|hours|days)"
                )));
            }
        };
        let parsed = cron::Schedule::from_str(&normalised)
            .map_err(|e| Error::invalid(format!("schedule: {raw:?} is not a valid cron expression ({e})")))?;
        let schedule = Schedule::Cron { source: raw.to_owned(), parsed: Box::new(parsed) };
        if schedule.next_after(0).is_none() {
            return Err(Error::invalid(format!("schedule: {raw:?} never fires")));
        }
        Ok(schedule)
    }

    pub fn as_str(&self) -> &str {
        match self {
            Schedule::Cron { source, .. } | Schedule::Rate { source, .. } => source,
        }
    }

    /// The first slot strictly after `after_ms` (Unix milliseconds, UTC).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Schedule::Rate { every_ms, .. } => after_ms.checked_add(*every_ms),
            Schedule::Cron { parsed, .. } => {
                let after: DateTime<Utc> = Utc.timestamp_millis_opt(after_ms).single()?;
                parsed.after(&after).next().map(|t| t.timestamp_millis())
            }
        }
    }

    /// The shortest gap between two slots seen over the next few firings:
    /// a window longer than that would let one start run into the next.
    pub fn shortest_gap_ms(&self, from_ms: i64) -> i64 {
        match self {
            Schedule::Rate { every_ms, .. } => *every_ms,
            Schedule::Cron { .. } => {
                let mut gap = i64::MAX;
                let mut t = self.next_after(from_ms);
                for _ in 0..32 {
                    let (Some(a), Some(b)) = (t, t.and_then(|a| self.next_after(a))) else { break };
                    gap = gap.min(b - a);
                    t = Some(b);
                }
                gap
            }
        }
    }

    /// The next slot to rotate at, given the slot that just fired (if it
    /// was a scheduled run): the slot after it, unless that one is already
    /// past (the server was down), in which case the first slot after
    /// `now`, so missed slots are not replayed one by one.
    pub fn next_slot(&self, fired: Option<i64>, now: i64) -> Option<i64> {
        match fired.and_then(|f| self.next_after(f)) {
            Some(next) if next > now => Some(next),
            _ => self.next_after(now),
        }
    }
}

fn parse_rate(raw: &str, inner: &str) -> Result<Schedule> {
    let bad = || {
        Error::invalid(format!(
            "schedule: {raw:?} is not a rate; write rate(N minutes), rate(N hours) or rate(N days) with N ≥ 1"
        ))
    };
    let mut words = inner.split_whitespace();
    let (Some(n), Some(unit), None) = (words.next(), words.next(), words.next()) else {
        return Err(bad());
    };
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit_ms: i64 = match unit {
        "minute" | "minutes" => 60_000,
        "hour" | "hours" => 3_600_000,
        "day" | "days" => 86_400_000,
        _ => return Err(bad()),
    };
    if !(1..=100_000).contains(&n) {
        return Err(bad());
    }
    Ok(Schedule::Rate { source: raw.to_owned(), every_ms: n * unit_ms })
}

/// Unix cron numbers days 0-7 (0 and 7 are Sunday); the `cron` crate
/// numbers them 1-7 from Sunday. Numbers are shifted, names kept, so
/// `1-5` still means Monday to Friday.
fn unix_day_of_week(field: &str) -> Result<String> {
    let shift = |n: &str| -> Result<String> {
        match n.parse::<u8>() {
            Ok(d @ 0..=6) => Ok((d + 1).to_string()),
            Ok(7) => Ok("1".into()),
            Ok(_) => Err(Error::invalid(format!("schedule: day of week {n} is out of range 0-7"))),
            // A name (MON) or `*` / `?`: the same in both.
            Err(_) => Ok(n.to_owned()),
        }
    };
    let mut out = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let range = match range.split_once('-') {
            Some(("0", "7")) => "1-7".to_owned(),
            // `5-7` (Friday to Sunday) cannot become `6-1`: write it as `6-7,1`.
            Some((a, "7")) if step.is_none() && a.parse::<u8>().is_ok() => {
                out.push("1".to_owned());
                format!("{}-7", shift(a)?)
            }
            Some((_, "7")) if step.is_some() => {
                return Err(Error::invalid(
                    "schedule: a day-of-week range ending in 7 cannot take a step; use 0-6 (Sunday is 0)",
                ));
            }
            Some((a, b)) => format!("{}-{}", shift(a)?, shift(b)?),
            None => shift(range)?,
        };
        out.push(match step {
            Some(s) => format!("{range}/{s}"),
            None => range,
        });
    }
    Ok(out.join(","))
}

/// How long after its slot a rotation may start: each due time is drawn
/// uniformly from `[slot, slot + window)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window(pub Duration);

impl Window {
    pub fn parse(raw: &str, schedule: &Schedule, now: i64) -> Result<Window> {
        let d = humantime::parse_duration(raw.trim()).map_err(|e| {
            Error::invalid(format!("window: {raw:?} is not a duration ({e}); write e.g. \"30m\" or \"2h\""))
        })?;
        if d > MAX_WINDOW {
            return Err(Error::invalid(format!("window: {raw:?} is longer than 7 days")));
        }
        let gap = schedule.shortest_gap_ms(now);
        if d.as_millis() as i64 > gap {
            return Err(Error::invalid(format!(
                "window: {raw:?} is longer than the {} between two slots of schedule {:?}; \
                 a start could run into the next slot",
                humantime::format_duration(Duration::from_millis(gap.max(0) as u64)),
                schedule.as_str()
            )));
        }
        Ok(Window(d))
    }

    pub fn millis(self) -> i64 {
        self.0.as_millis() as i64
    }

    /// A due time for `slot`, spread over the window.
    pub fn due(self, slot: i64) -> i64 {
        let w = self.millis();
        if w <= 0 { slot } else { slot + rand::thread_rng().gen_range(0..w) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn five_field_cron_is_unix_cron_in_utc() {
        let s = Schedule::parse("0 3 * * *").unwrap();
        assert_eq!(s.next_after(at("2026-01-01T10:00:00Z")), Some(at("2026-01-02T03:00:00Z")));
        // 1-5 is Monday to Friday; 2026-01-03 is a Saturday.
        let weekdays = Schedule::parse("30 9 * * 1-5").unwrap();
        assert_eq!(weekdays.next_after(at("2026-01-03T00:00:00Z")), Some(at("2026-01-05T09:30:00Z")));
        // 0 and 7 are both Sunday.
        for sunday in ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN"] {
            let s = Schedule::parse(sunday).unwrap();
            assert_eq!(s.next_after(at("2026-01-01T00:00:00Z")), Some(at("2026-01-04T00:00:00Z")), "{sunday}");
        }
        // Friday to Sunday.
        let weekend = Schedule::parse("0 0 * * 5-7").unwrap();
        assert_eq!(weekend.next_after(at("2026-01-03T12:00:00Z")), Some(at("2026-01-04T00:00:00Z")));
        assert_eq!(weekend.next_after(at("2026-01-04T12:00:00Z")), Some(at("2026-01-09T00:00:00Z")));
    }

    #[test]
    fn six_field_cron_has_seconds_first() {
        let s = Schedule::parse("15 */10 * * * *").unwrap();
        assert_eq!(s.next_after(at("2026-01-01T10:00:20Z")), Some(at("2026-01-01T10:10:15Z")));
    }

    #[test]
    fn rates_add_their_interval() {
        let s = Schedule::parse("rate(12 hours)").unwrap();
        assert_eq!(s.next_after(1000), Some(1000 + 12 * 3_600_000));
        assert!(Schedule::parse("rate(1 minutes)").is_ok());
        assert!(Schedule::parse("rate(1 minute)").is_ok());
        for bad in ["rate(0 hours)", "rate(hours)", "rate(5 weeks)", "rate(-1 days)", "rate(1.5 days)", "rate(1 days"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_cron_is_refused_naming_the_field() {
        for bad in ["", "* * *", "61 * * * *", "* * * * * * * *", "0 0 * * 8", "0 0 31 2 *"] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.message().starts_with("schedule:"), "{bad}: {}", e.message());
        }
    }

    #[test]
    fn a_missed_slot_is_not_replayed() {
        let s = Schedule::parse("rate(1 minutes)").unwrap();
        // On time: the slot after the one that fired.
        assert_eq!(s.next_slot(Some(60_000), 61_000), Some(120_000));
        // After an hour down: one slot after now, not sixty in a row.
        assert_eq!(s.next_slot(Some(60_000), 3_600_500), Some(3_660_500));
        assert_eq!(s.next_slot(None, 5), Some(60_005));
    }

    #[test]
    fn windows_spread_within_bounds_and_never_past_the_next_slot() {
        let s = Schedule::parse("0 * * * *").unwrap();
        let w = Window::parse("30m", &s, 0).unwrap();
        for _ in 0..200 {
            let due = w.due(1_000_000);
            assert!((1_000_000..1_000_000 + 30 * 60_000).contains(&due));
        }
        assert!(Window::parse("2h", &s, 0).unwrap_err().message().contains("between two slots"));
        assert!(Window::parse("8d", &Schedule::parse("rate(30 days)").unwrap(), 0).is_err());
        assert!(Window::parse("soon", &s, 0).is_err());
        assert_eq!(Window::default().due(42), 42);
    }
}
