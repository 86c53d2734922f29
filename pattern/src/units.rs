//! The units of a declared policy, as written in an attribute or a configuration file:
//! durations (`"2s"`, `"500ms"`, `"1m30s"`) and rates (`"200/s"`). Shared by the macros (at
//! compile time) and the runtime (policy overrides read at start-up), so both accept the same.

/// `"2s"`, `"500ms"`, `"1m30s"`, `"1h"`: milliseconds, more than zero and at most a year.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(scale)?)?;
        rest = &rest[unit_len..];
    }
    (1..=365 * 24 * 3_600_000).contains(&total).then_some(total)
}

/// `"200/s"`, `"5/m"`, `"10/100ms"`: calls and the period in milliseconds.
pub fn parse_rate(text: &str) -> Option<(u32, u64)> {
    let (n, per) = text.split_once('/')?;
    let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
    let per = match per.trim() {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => parse_duration_ms(other)?,
    };
    Some((n, per))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration_ms("2s"), Some(2_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        for bad in [
            "",
            "2",
            "s",
            "2 s",
            "1.5s",
            "0s",
            "2d",
            "-1s",
            "99999999999999999999s",
            "9000h",
        ] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
        assert_eq!(parse_rate("200/s"), Some((200, 1_000)));
        assert_eq!(parse_rate("5/m"), Some((5, 60_000)));
        assert_eq!(parse_rate("10/100ms"), Some((10, 100)));
        for bad in ["200", "0/s", "x/s", "5/", "5/day"] {
            assert_eq!(parse_rate(bad), None, "{bad:?}");
        }
    }
}
