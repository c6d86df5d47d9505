//! Command-line sizes: `65536`, `64KiB`, `16MiB`, `1GiB`, `1.5MiB`, and
//! copybreaks (a size or `auto`).

use bytesize::ByteSize;
use netdma::config::Copybreak;

/// Parses a byte count: a number with an optional unit, as the `bytesize` crate reads it:
/// `Ki`/`KiB`, `Mi`/`MiB`, `Gi`/`GiB` are powers of 1024, `K`/`KB`, `M`/`MB`, `G`/`GB`
/// powers of 1000, `B` or nothing is bytes; case-insensitive; a fraction is allowed.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?}: {e} (e.g. 65536, 64KiB, 16MiB, 1GiB)"))
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

/// `n` bytes for people, in IEC units: `512 B`, `64.0 KiB`, `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    ByteSize(n).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(64_000));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(65536), "64.0 KiB");
        assert_eq!(parse_copybreak("auto"), Ok(Copybreak::Auto));
        assert_eq!(parse_copybreak("4KiB"), Ok(Copybreak::Bytes(4096)));
    }
}
