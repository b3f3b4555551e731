//! Human byte sizes such as `80GiB`, `512 MiB`, `1.5G` or a plain `1024`, as flags and
//! config files of every Hearth binary take them.
//!
//! Binary units (`Ki`, `Mi`, `Gi`, `Ti`, with or without a trailing `B`) are powers of 1024;
//! decimal units (`K`, `M`, `G`, `T`, with or without `B`) are powers of 1000, as in
//! Kubernetes quantities. Units are case-insensitive; a bare number is bytes.

/// Parses a human byte size. The error says what was wrong and what is accepted.
pub fn parse(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{input:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)"
            ));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(format!(
            "{input:?}: expected a number followed by an optional unit, such as 80GiB"
        ));
    }
    let too_big = || format!("{input:?}: too large");
    let whole: u128 = whole.parse().map_err(|_| too_big())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_big)?;
    if !fraction.is_empty() {
        // Exact arithmetic: "1.5GiB" is 1.5 * 2^30 bytes, truncated to a whole byte.
        if fraction.len() > 18 {
            return Err(format!("{input:?}: too many decimal places"));
        }
        let digits: u128 = fraction.parse().map_err(|_| too_big())?;
        let scale = 10u128.pow(fraction.len() as u32);
        // Checked: a whole part just under the u128 limit plus its fraction can pass it.
        bytes = bytes
            .checked_add(digits * multiplier / scale)
            .ok_or_else(too_big)?;
    }
    u64::try_from(bytes).map_err(|_| too_big())
}

#[cfg(test)]
mod tests {
    use super::parse as parse_size;

    #[test]
    fn a_fraction_at_the_edge_of_overflow_is_too_large_not_a_panic() {
        let err = parse_size("340282366920938463463374607.999999T").unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn binary_and_decimal_units() {
        assert_eq!(parse_size("80GiB"), Ok(80 * (1 << 30)));
        assert_eq!(parse_size("80gib"), Ok(80 * (1 << 30)));
        assert_eq!(parse_size("80Gi"), Ok(80 * (1 << 30)));
        assert_eq!(parse_size("80GB"), Ok(80_000_000_000));
        assert_eq!(parse_size("80G"), Ok(80_000_000_000));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("2k"), Ok(2000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("3TB"), Ok(3_000_000_000_000));
    }

    #[test]
    fn bare_numbers_are_bytes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size(" 7 "), Ok(7));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("5B"), Ok(5));
    }

    #[test]
    fn fractions_are_exact() {
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("0.5KiB"), Ok(512));
        assert_eq!(parse_size("2.25MB"), Ok(2_250_000));
    }

    #[test]
    fn garbage_is_rejected_with_the_input_named() {
        for bad in ["", "GiB", "80XB", "1.2.3G", "-1", "1.G", ".5G", "eighty"] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        assert!(parse_size("80XB").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn overflow_is_rejected() {
        assert!(parse_size("18446744073709551615").is_ok());
        assert!(
            parse_size("18446744073709551616")
                .unwrap_err()
                .contains("too large")
        );
        assert!(parse_size("16777216TiB").unwrap_err().contains("too large"));
        assert!(parse_size("99999999999999999999999999999999999999999").is_err());
    }
}
