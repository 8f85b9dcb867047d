//! Times and durations as users write and read them: `30d`, `in 5d`, `3m ago`,
//! RFC 3339 instants. Pure functions: the current time is a parameter ([`now`]
//! reads the clock once, in the caller).

use agent_core::time::{civil_from_days, days_from_civil};

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Seconds of `30d`, `12h`, `90m` or `45s`: one positive number and one unit, the
/// form the relay takes for `expires_in` and a lock's `for`.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid duration '{s}': {why} (use e.g. 30d, 12h, 90m or 45s)");
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| bad("no unit"))?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad("no number"));
    }
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad(&format!("unknown unit '{unit}'"))),
    };
    let n: u64 = num.parse().map_err(|_| bad("number too large"))?;
    if n == 0 {
        return Err(bad("it must be longer than 0"));
    }
    n.checked_mul(unit_secs)
        .filter(|secs| *secs <= i64::MAX as u64 / 2)
        .ok_or_else(|| bad("too long"))
}

/// A duration the relay will parse, checked here first so that a typo fails
/// before any request: the trimmed text, for clap's `value_parser`.
pub fn duration_arg(s: &str) -> Result<String, String> {
    parse_duration(s).map(|_| s.trim().to_string())
}

/// `t` relative to `now`: `45s ago`, `3m ago`, `in 5d`; whole units, rounded down.
pub fn relative(t: i64, now: i64) -> String {
    let d = t.saturating_sub(now);
    let s = d.unsigned_abs();
    let amount = match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    };
    if d > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// [`relative`], or `none` (`never`, `-`) when there is no time.
pub fn relative_or(t: Option<i64>, now: i64, none: &str) -> String {
    t.map_or_else(|| none.to_string(), |t| relative(t, now))
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Unix seconds of an RFC 3339 time (`2030-01-31T12:00:00Z`, `...+02:00`, with
/// optional fractions of a second, which are dropped), or of plain unix seconds.
pub fn parse_instant(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid time '{s}': use RFC 3339, e.g. 2030-01-31T12:00:00Z");
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| bad());
    }
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
        let part = &t[r];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (y, mo, d) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) || h > 23 || mi > 59 {
        return Err(bad());
    }
    // A leap second (60) is read as the next second.
    if sec > 60 {
        return Err(bad());
    }
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || !matches!(ob[0], b'+' | b'-') || ob[3] != b':' {
                return Err(bad());
            }
            let (oh, om) = (num(t.len() - 5..t.len() - 3)?, num(t.len() - 2..t.len())?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let o = (oh * 3600 + om * 60) as i64;
            if ob[0] == b'-' {
                -o
            } else {
                o
            }
        }
    };
    Ok(days_from_civil(y, mo, d) * 86400 + (h * 3600 + mi * 60 + sec) as i64 - offset)
}

/// `t` as an RFC 3339 time in UTC, to the second.
pub fn format_instant(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86400), t.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_one_number_and_one_unit() {
        assert_eq!(parse_duration("45s"), Ok(45));
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("12h"), Ok(43200));
        assert_eq!(parse_duration(" 30d "), Ok(30 * 86400));
        assert_eq!(duration_arg(" 30d ").as_deref(), Ok("30d"));
        for bad in [
            "",
            "30",
            "d",
            "0h",
            "1h30m",
            "1.5h",
            "-5m",
            "5 m",
            "3w",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            parse_duration("3w").unwrap_err(),
            "invalid duration '3w': unknown unit 'w' (use e.g. 30d, 12h, 90m or 45s)"
        );
    }

    #[test]
    fn relative_times_round_down_to_whole_units() {
        let now = 1_000_000;
        assert_eq!(relative(now, now), "0s ago");
        assert_eq!(relative(now - 59, now), "59s ago");
        assert_eq!(relative(now - 200, now), "3m ago");
        assert_eq!(relative(now - 7200, now), "2h ago");
        assert_eq!(relative(now - 86400 * 3 - 5, now), "3d ago");
        assert_eq!(relative(now + 30, now), "in 30s");
        assert_eq!(relative(now + 86400 * 5 + 100, now), "in 5d");
        assert_eq!(relative_or(None, now, "never"), "never");
        assert_eq!(relative_or(Some(now + 3600), now, "never"), "in 1h");
    }

    #[test]
    fn rfc3339_times_parse_and_print() {
        assert_eq!(parse_instant("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_instant("2000-03-01T00:00:00Z"), Ok(951868800));
        assert_eq!(parse_instant("2030-01-31T12:00:00Z"), Ok(1896091200));
        assert_eq!(parse_instant("2030-01-31T14:00:00+02:00"), Ok(1896091200));
        assert_eq!(
            parse_instant("2030-01-31t09:30:00.25-02:30"),
            Ok(1896091200)
        );
        assert_eq!(parse_instant("2024-02-29 00:00:00Z"), Ok(1709164800));
        assert_eq!(parse_instant("1896091200"), Ok(1896091200));
        for bad in [
            "2030-01-31",
            "2030-01-31T12:00:00",
            "2023-02-29T00:00:00Z",
            "2030-13-01T00:00:00Z",
            "2030-01-31T24:00:00Z",
            "2030-01-31T12:00:00.Z",
            "2030-01-31T12:00:00+0200",
            "tomorrow",
        ] {
            assert!(parse_instant(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(format_instant(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_instant(1709164800 + 3723), "2024-02-29T01:02:03Z");
        for t in [-86401, 951868799, 1896091200, 4102444800] {
            assert_eq!(parse_instant(&format_instant(t)), Ok(t));
        }
    }
}
