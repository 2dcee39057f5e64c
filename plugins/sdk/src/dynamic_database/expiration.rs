//! The lease's end (`expires-at`, RFC 3339 in UTC) in the forms the
//! engines read, for `{{expiration}}`.

use crate::StepError;

/// The parts of `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00|-00:00)`.
struct Utc<'a> {
    date: &'a str,
    time: &'a str,
    fraction: &'a str,
}

/// Checks that `expires_at` is an RFC 3339 time in UTC; returns it as it
/// is (PostgreSQL reads it as a `timestamptz`, e.g. in `VALID UNTIL`).
pub fn rfc3339_utc(expires_at: &str) -> Result<String, StepError> {
    parse(expires_at)?;
    Ok(expires_at.to_owned())
}

/// `expires_at` as `YYYY-MM-DD HH:MM:SS[.ffffff]` in UTC: what MySQL and
/// MariaDB read as a `DATETIME` (neither takes RFC 3339's `T...Z` in every
/// version). The fraction is cut to microseconds, their finest.
pub fn utc_datetime(expires_at: &str) -> Result<String, StepError> {
    let utc = parse(expires_at)?;
    let fraction = &utc.fraction[..utc.fraction.len().min(7)];
    Ok(format!("{} {}{}", utc.date, utc.time, if fraction.len() > 1 { fraction } else { "" }))
}

fn parse(text: &str) -> Result<Utc<'_>, StepError> {
    let bad = || StepError::fatal(format!("expires-at {text:?} is not an RFC 3339 time in UTC"));
    let body = ["Z", "z", "+00:00", "-00:00"].iter().find_map(|zone| text.strip_suffix(zone)).ok_or_else(bad)?;
    if body.len() < 19 || !body.is_ascii() || !matches!(&body[10..11], "T" | "t" | " ") {
        return Err(bad());
    }
    let (date, time, fraction) = (&body[..10], &body[11..19], &body[19..]);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let field = |s: &str, low: u32, high: u32| digits(s) && s.parse::<u32>().is_ok_and(|n| (low..=high).contains(&n));
    let valid = field(&date[..4], 0, 9999)
        && &date[4..5] == "-"
        && field(&date[5..7], 1, 12)
        && &date[7..8] == "-"
        && field(&date[8..10], 1, 31)
        && field(&time[..2], 0, 23)
        && &time[2..3] == ":"
        && field(&time[3..5], 0, 59)
        && &time[5..6] == ":"
        && field(&time[6..8], 0, 60)
        && (fraction.is_empty() || fraction.starts_with('.') && digits(&fraction[1..]));
    if !valid {
        return Err(bad());
    }
    Ok(Utc { date, time, fraction })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_kept_for_postgres() {
        assert_eq!(rfc3339_utc("2030-01-02T03:04:05Z").unwrap(), "2030-01-02T03:04:05Z");
        assert_eq!(rfc3339_utc("2030-01-02T03:04:05.123+00:00").unwrap(), "2030-01-02T03:04:05.123+00:00");
    }

    #[test]
    fn mysql_gets_a_datetime_in_utc() {
        assert_eq!(utc_datetime("2030-01-02T03:04:05Z").unwrap(), "2030-01-02 03:04:05");
        assert_eq!(utc_datetime("2030-01-02t03:04:05.5z").unwrap(), "2030-01-02 03:04:05.5");
        assert_eq!(utc_datetime("2030-01-02T03:04:05.123456789-00:00").unwrap(), "2030-01-02 03:04:05.123456");
    }

    #[test]
    fn anything_else_is_a_fatal_error() {
        for bad in [
            "",
            "2030-01-02",
            "2030-01-02T03:04:05",
            "2030-01-02T03:04:05+02:00",
            "2030-13-02T03:04:05Z",
            "2030-01-02T24:04:05Z",
            "2030-01-02T03:04:05.Z",
            "2030-01-02X03:04:05Z",
            "2030-01-0éT03:04:05Z",
            "'; DROP TABLE t; --Z",
        ] {
            let error = rfc3339_utc(bad).unwrap_err();
            assert!(!error.is_retryable() && error.message().contains("RFC 3339"), "{bad}");
        }
    }
}
