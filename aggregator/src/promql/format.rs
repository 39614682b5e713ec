//! Numbers as Prometheus writes them in its API: sample values as Go's
//! `strconv.FormatFloat(v, 'f', -1, 64)` (shortest round-trip digits, never an exponent) and
//! timestamps as seconds with up to three decimals. A range query writes hundreds of thousands
//! of both, so they go straight into the output buffer.

/// Appends Go's `strconv.FormatFloat(v, 'f', -1, 64)` of `v`: `NaN`, `+Inf`, `-Inf`, or the
/// shortest digits that read back as `v`, in fixed notation (`1`, `0.25`, `1e+21` written out).
pub fn push_go_float(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
        return;
    }
    let mut buf = zmij::Buffer::new();
    let text = buf.format_finite(v).as_bytes();
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if negative {
        out.push(b'-');
    }
    let (mantissa, exp) = match text.iter().position(|&b| b == b'e') {
        Some(i) => (&text[..i], parse_exp(&text[i + 1..])),
        None => (text, 0),
    };
    if exp == 0 {
        // fixed already: drop a trailing ".0"
        out.extend_from_slice(mantissa.strip_suffix(b".0").unwrap_or(mantissa));
        return;
    }
    // d[.ddd]e±x: the digits with the decimal point `point` places after the first
    let mut digits = [0u8; 24];
    let mut n = 0;
    let mut point = 0i32;
    for &b in mantissa {
        if b == b'.' {
            point = n as i32;
        } else if n < digits.len() {
            digits[n] = b;
            n += 1;
        }
    }
    if !mantissa.contains(&b'.') {
        point = n as i32;
    }
    while n > 1 && digits[n - 1] == b'0' {
        n -= 1;
    }
    let point = point + exp;
    if point <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-point) as usize));
        out.extend_from_slice(&digits[..n]);
    } else if point as usize >= n {
        out.extend_from_slice(&digits[..n]);
        out.extend(std::iter::repeat_n(b'0', point as usize - n));
    } else {
        out.extend_from_slice(&digits[..point as usize]);
        out.push(b'.');
        out.extend_from_slice(&digits[point as usize..n]);
    }
}

fn parse_exp(b: &[u8]) -> i32 {
    let (sign, digits) = match b.split_first() {
        Some((b'-', rest)) => (-1, rest),
        Some((b'+', rest)) => (1, rest),
        _ => (1, b),
    };
    sign * digits
        .iter()
        .fold(0i32, |acc, d| acc * 10 + i32::from(d - b'0'))
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)` as a string.
pub fn format_go_float(v: f64) -> String {
    let mut out = Vec::with_capacity(24);
    push_go_float(&mut out, v);
    // only ASCII digits, '.', '-' and letters are written
    String::from_utf8(out).unwrap_or_default()
}

/// "00" to "99", for writing integers two digits at a time.
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends a millisecond timestamp as seconds, the way Prometheus' JSON has them: `1700000000`,
/// `1700000000.5`, `1700000000.25`.
pub fn push_timestamp(out: &mut Vec<u8>, ms: i64) {
    if ms < 0 {
        out.push(b'-');
    }
    let abs = ms.unsigned_abs();
    let (mut secs, frac) = (abs / 1000, (abs % 1000) as usize);
    let mut buf = [0u8; 24];
    let mut i = buf.len();
    while secs >= 100 {
        let pair = (secs % 100) as usize * 2;
        secs /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if secs >= 10 {
        i -= 2;
        let pair = secs as usize * 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + secs as u8;
    }
    out.extend_from_slice(&buf[i..]);
    if frac != 0 {
        let d = [
            b'.',
            b'0' + (frac / 100) as u8,
            PAIRS[frac % 100 * 2],
            PAIRS[frac % 100 * 2 + 1],
        ];
        let len = if d[3] != b'0' {
            4
        } else if d[2] != b'0' {
            3
        } else {
            2
        };
        out.extend_from_slice(&d[..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Rust's `Display` of an `f64` is the shortest round-trip digits in fixed notation, which
    /// is what Go's 'f' with precision -1 writes.
    fn reference(v: f64) -> String {
        if v.is_nan() {
            "NaN".into()
        } else if v == f64::INFINITY {
            "+Inf".into()
        } else if v == f64::NEG_INFINITY {
            "-Inf".into()
        } else {
            format!("{v}")
        }
    }

    #[test]
    fn values_are_written_as_go_writes_them() {
        for v in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.25,
            100.0,
            123_456_789.0,
            1e21,
            1.5e22,
            -2.5e-7,
            1e-7,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            0.1 + 0.2,
            1_700_000_000.123,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            assert_eq!(format_go_float(v), reference(v), "{v:e}");
        }
        assert_eq!(format_go_float(1e21), "1000000000000000000000");
        assert_eq!(format_go_float(-0.0), "-0");
    }

    #[test]
    fn timestamps_are_written_as_prometheus_writes_them() {
        let text = |ms| {
            let mut out = Vec::new();
            push_timestamp(&mut out, ms);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(1_700_000_000_000), "1700000000");
        assert_eq!(text(1_700_000_000_500), "1700000000.5");
        assert_eq!(text(1_700_000_000_250), "1700000000.25");
        assert_eq!(text(1_700_000_000_001), "1700000000.001");
        assert_eq!(text(0), "0");
        assert_eq!(text(-1_500), "-1.5");
        assert_eq!(text(-500), "-0.5");
    }

    proptest! {
        #[test]
        fn any_finite_value_matches_display(bits in any::<u64>()) {
            let v = f64::from_bits(bits);
            prop_assert_eq!(format_go_float(v), reference(v));
        }

        #[test]
        fn any_timestamp_reads_back(ms in -10_000_000_000_000i64..10_000_000_000_000) {
            let mut out = Vec::new();
            push_timestamp(&mut out, ms);
            let secs: f64 = std::str::from_utf8(&out).unwrap().parse().unwrap();
            prop_assert_eq!((secs * 1000.0).round() as i64, ms);
        }
    }
}
