//! A guest-written blob whose every byte the host can predict: for artifact transfers checked
//! byte for byte.

/// Shell that writes `$BYTES` bytes of numbered lines to `$OUT`: the numbers 1 to 1000 on a
/// line, repeated (a period of 3,894 bytes, no multiple of a tar block or a page: a block
/// lost, doubled or shifted shows). Busybox's `yes`, `seq`, `tr` and `head` suffice.
pub const MAKE_BLOB: &str = r#"yes "$(seq 1 1000 | tr '\n' ' ')" | head -c "$BYTES" >"$OUT""#;

/// What [`MAKE_BLOB`] writes for `bytes`.
pub fn blob(bytes: usize) -> Vec<u8> {
    let mut line: String = (1..=1000).map(|i| format!("{i} ")).collect();
    line.push('\n');
    line.as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(bytes)
        .collect()
}

/// `n` reproducible pseudo-random bytes (xorshift from `seed`): content that does not
/// compress, so a store keeps it raw.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_blob_has_the_period_of_its_line() {
        let b = super::blob(10_000);
        assert_eq!(b.len(), 10_000);
        assert!(b.starts_with(b"1 2 3 "));
        assert_eq!(&b[..3894], &b[3894..7788]);
        assert_eq!(b[3893], b'\n');
    }
}
