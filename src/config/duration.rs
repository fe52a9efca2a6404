//! Duration strings such as `"250ms"`, `"10s"`, `"5m"`, `"48h"`, `"2d"`.
//!
//! Only a whole number followed by one unit is accepted: no fractions (`"1.5s"`; write
//! `"1500ms"`), no compound forms (`"1h30m"`), no spaces. One spelling per value keeps configs
//! easy to grep and compare; a fraction is refused with a hint rather than rounded silently.

use std::time::Duration;

/// The accepted units, longest suffix first so that `ms` is not read as `m`.
const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses a duration string: a whole number followed by `ms`, `s`, `m`, `h` or `d`.
///
/// Zero (`"0s"`) parses; whether it is allowed is up to the caller. The error is a
/// one-line message quoting the input, e.g.
/// `invalid duration "10x": expected a number followed by ms, s, m, h or d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected =
        || format!("invalid duration {s:?}: expected a number followed by ms, s, m, h or d");
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    if number.is_empty() {
        return Err(expected());
    }
    if unit.starts_with('.') {
        return Err(format!(
            "invalid duration {s:?}: use a whole number with a smaller unit (e.g. \"1500ms\" for 1.5s)"
        ));
    }
    let Some(&(_, millis_per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(expected());
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {s:?}: too large"))
}

/// Formats a duration the way [`parse_duration`] reads it, in the largest unit that is
/// exact (`"1h"`, `"90s"`, `"250ms"`), for messages and `hookgate check`.
pub fn format_duration(d: Duration) -> String {
    let millis = d.as_millis();
    UNITS
        .iter()
        .rev()
        .map(|&(name, per_unit)| (name, u128::from(per_unit)))
        .find(|&(_, per_unit)| millis >= per_unit && millis.is_multiple_of(per_unit))
        .map_or_else(
            || format!("{millis}ms"),
            |(name, per_unit)| format!("{}{name}", millis / per_unit),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("48h"), Ok(Duration::from_secs(48 * 3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86_400)));
    }

    #[test]
    fn zero_parses_so_that_validation_can_name_the_key() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn unknown_unit_is_explained() {
        assert_eq!(
            parse_duration("10x"),
            Err("invalid duration \"10x\": expected a number followed by ms, s, m, h or d".into())
        );
    }

    #[test]
    fn missing_unit_or_number_is_rejected() {
        for bad in [
            "10", "s", "", "-5s", "+5s", " 5s", "5 s", "5s ", "1h30m", "5S",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(
                err.contains("expected a number followed by"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn fractions_get_a_hint() {
        let err = parse_duration("1.5s").expect_err("fraction");
        assert!(err.contains("1500ms"), "{err}");
    }

    #[test]
    fn format_round_trips_in_the_largest_exact_unit() {
        for (text, millis) in [
            ("1h", 3_600_000),
            ("90s", 90_000),
            ("250ms", 250),
            ("2d", 172_800_000),
            ("0ms", 0),
        ] {
            assert_eq!(format_duration(Duration::from_millis(millis)), text);
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(millis)));
        }
    }

    #[test]
    fn overflow_is_rejected_not_wrapped() {
        let err = parse_duration("18446744073709551615d").expect_err("overflow");
        assert!(err.ends_with("too large"), "{err}");
        let err = parse_duration("99999999999999999999999s").expect_err("too many digits");
        assert!(err.ends_with("too large"), "{err}");
    }
}
