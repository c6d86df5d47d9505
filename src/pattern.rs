//! Seeded, position-addressable test data: byte `i` of stream `seed` is a fixed function of
//! `(seed, i)`, so a sender and a verifier regenerate the same bytes independently, at any
//! offset, without keeping the data in memory.

/// SplitMix64's finaliser: a good 64-bit mix of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The seed of connection `index` in a run seeded with `seed`.
pub fn connection_seed(seed: u64, index: usize) -> u64 {
    mix(seed ^ mix(index as u64 + 1))
}

/// Fills `buf` with the bytes of stream `seed` starting at byte `offset`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut word = offset / 8;
    let mut skip = (offset % 8) as usize;
    let mut i = 0;
    while i < buf.len() {
        let bytes = mix(seed ^ word.wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes();
        let n = (8 - skip).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[skip..skip + n]);
        i += n;
        skip = 0;
        word += 1;
    }
}

/// Checks `data` against stream `seed` at `offset`, using `scratch` (grown as needed).
/// Returns the stream offset of the first differing byte, if any.
pub fn verify(seed: u64, offset: u64, data: &[u8], scratch: &mut Vec<u8>) -> Option<u64> {
    if scratch.len() < data.len() {
        scratch.resize(data.len(), 0);
    }
    let expected = &mut scratch[..data.len()];
    fill(seed, offset, expected);
    if expected == data {
        return None;
    }
    let at = data
        .iter()
        .zip(expected.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    Some(offset + at as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_at_offset_matches_whole_stream() {
        let mut whole = vec![0u8; 1000];
        fill(7, 0, &mut whole);
        for start in [0usize, 1, 7, 8, 9, 500, 999] {
            let mut part = vec![0u8; 1000 - start];
            fill(7, start as u64, &mut part);
            assert_eq!(part, whole[start..]);
        }
        let mut other = vec![0u8; 1000];
        fill(8, 0, &mut other);
        assert_ne!(other, whole, "streams differ by seed");
    }
}
