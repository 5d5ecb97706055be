//! Durations as Istio writes them: `5s`, `100ms`, `1.5s`, `3m`, `1h30m`.
//!
//! Istio reads durations with Go's `time.ParseDuration` rules (a sequence of
//! decimal numbers, each with a unit: `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`),
//! and its CRD schema refuses anything shorter than 1ms. micromesh keeps
//! milliseconds everywhere in the snapshot, so a duration becomes a whole
//! number of milliseconds here (sub-millisecond remainders are dropped).

/// Nanoseconds per unit, longest unit names first so `ms` is not read as `m`.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 60 * 60 * 1_000_000_000),
];

const NANOS_PER_MS: u128 = 1_000_000;

/// Parse an Istio duration into milliseconds; the error says what to write.
///
/// ```
/// use mesh_api::config::parse_duration_ms;
/// assert_eq!(parse_duration_ms("1.5s"), Ok(1500));
/// assert_eq!(parse_duration_ms("1h30m"), Ok(90 * 60 * 1000));
/// assert!(parse_duration_ms("5").unwrap_err().contains("`5s`"));
/// ```
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration: write a number and a unit, like `5s` or `100ms`".into());
    }
    if trimmed.starts_with('-') {
        return Err(format!(
            "`{trimmed}` is negative; a duration must be at least 1ms"
        ));
    }
    let body = trimmed.strip_prefix('+').unwrap_or(trimmed);
    if !body.contains(|c: char| c.is_alphabetic()) {
        return Err(format!(
            "`{trimmed}` has no unit: write `{body}s` for seconds or `{body}ms` for milliseconds"
        ));
    }

    let mut nanos: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        // The number: digits, optionally a fraction.
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        rest = &rest[number_len..];
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(format!(
                "`{trimmed}` is not a duration: write a number and a unit, like `5s`, `1.5s` or `100ms`"
            ));
        }

        // The unit: everything up to the next digit.
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            let hint = if unit.is_empty() {
                format!("`{number}` has no unit")
            } else {
                format!("unknown unit `{unit}`")
            };
            return Err(format!(
                "{hint} in `{trimmed}`: use h, m, s, ms, us or ns, like `5s` or `100ms`"
            ));
        };

        let too_long = || format!("`{trimmed}` is too long a duration");
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_long())?
        };
        nanos = whole
            .checked_mul(scale)
            .and_then(|n| nanos.checked_add(n))
            .ok_or_else(too_long)?;
        // The fraction contributes scale * digits / 10^len; nine digits are
        // more precision than a nanosecond needs.
        let digits: String = fraction.chars().take(9).collect();
        if !digits.is_empty() {
            let numerator: u128 = digits.parse().map_err(|_| too_long())?;
            let denominator = 10u128.pow(digits.len() as u32);
            nanos += numerator * scale / denominator;
        }
    }

    if nanos < NANOS_PER_MS {
        return Err(format!(
            "`{trimmed}` is shorter than 1ms, the smallest duration Istio accepts"
        ));
    }
    u64::try_from(nanos / NANOS_PER_MS).map_err(|_| format!("`{trimmed}` is too long a duration"))
}

/// Format milliseconds the way a learner would write them (`5s`, `1500ms`).
pub fn format_duration_ms(ms: u64) -> String {
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_spellings_parse_to_milliseconds() {
        assert_eq!(parse_duration_ms("5s"), Ok(5_000));
        assert_eq!(parse_duration_ms("100ms"), Ok(100));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1_500));
        assert_eq!(parse_duration_ms("3m"), Ok(180_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms(".5s"), Ok(500));
        assert_eq!(parse_duration_ms("2500us"), Ok(2));
        assert_eq!(parse_duration_ms("1000000ns"), Ok(1));
    }

    #[test]
    fn bad_durations_say_what_to_write() {
        let no_unit = parse_duration_ms("5").unwrap_err();
        assert!(
            no_unit.contains("no unit") && no_unit.contains("`5s`"),
            "{no_unit}"
        );
        let negative = parse_duration_ms("-5s").unwrap_err();
        assert!(negative.contains("negative"), "{negative}");
        let unit = parse_duration_ms("5sec").unwrap_err();
        assert!(unit.contains("unknown unit `sec`"), "{unit}");
        let tiny = parse_duration_ms("500us").unwrap_err();
        assert!(tiny.contains("shorter than 1ms"), "{tiny}");
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("1.2.3s").is_err());
        assert!(parse_duration_ms("s").is_err());
        assert!(parse_duration_ms("0s").is_err());
        assert!(parse_duration_ms("99999999999999999999999h").is_err());
    }

    #[test]
    fn formatting_picks_the_largest_whole_unit() {
        assert_eq!(format_duration_ms(5_000), "5s");
        assert_eq!(format_duration_ms(1_500), "1500ms");
        assert_eq!(format_duration_ms(180_000), "3m");
        assert_eq!(format_duration_ms(7_200_000), "2h");
    }
}
