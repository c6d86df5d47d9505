//! Command-line sizes: `65536`, `64KiB`, `64K`, `16MiB`, `1GiB`, `1.5MiB`, and
//! copybreaks (a size or `auto`).

use netdma::config::Copybreak;

/// Parses a byte count: a number with an optional unit. `K`/`Ki`/`KiB`, `M`/`Mi`/`MiB`,
/// `G`/`Gi`/`GiB` are powers of 1024; `KB`/`MB`/`GB` powers of 1000; `B` or nothing is
/// bytes. Case-insensitive; a fractional number is allowed with a unit.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num = num.replace('_', "");
    if num.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number with an optional unit (e.g. 65536, 64KiB, 16MiB, 1GiB)"
        ));
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| format!("invalid size {s:?}: too large"));
    }
    let f: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: {num:?} is not a number"))?;
    let v = f * mult as f64;
    if !v.is_finite() || v < 0.0 || v >= u64::MAX as f64 {
        return Err(format!("invalid size {s:?}: out of range"));
    }
    Ok(v.round() as u64)
}

/// Parses a size that must fit in `usize` and be at least `min`.
pub fn parse_usize_at_least(s: &str, min: usize) -> Result<usize, String> {
    let v = parse_size(s)?;
    let v = usize::try_from(v).map_err(|_| format!("invalid size {s:?}: too large"))?;
    if v < min {
        return Err(format!("{s:?} is too small: at least {min} is needed"));
    }
    Ok(v)
}

/// Parses a copybreak: `auto` or a size (`4096`, `4KiB`).
pub fn parse_copybreak(s: &str) -> Result<Copybreak, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(Copybreak::Auto);
    }
    let v = parse_size(s).map_err(|e| format!("{e}; or \"auto\""))?;
    usize::try_from(v)
        .map(Copybreak::Bytes)
        .map_err(|_| format!("copybreak {s:?} is too large"))
}

/// `n` bytes for people: `64 MiB`, `1.5 GiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(parse_copybreak("auto"), Ok(Copybreak::Auto));
        assert_eq!(parse_copybreak("4KiB"), Ok(Copybreak::Bytes(4096)));
    }
}
