//! NestJS `JsonSocket` framing, `<len>#<json>` with `len` in UTF-16 code units
//! (runtime/docs/nestjs-wire.md §1.2), shared by the ceiling server and the load generator.
//!
//! Deliberately simple: frames are split from a contiguous buffer, and a frame whose body
//! is not all there yet is rescanned on the next read. Correct for any UTF-8 text; fast
//! for the all-ASCII bodies of the benchmark.

use std::ops::Range;

/// Longest decimal length prefix accepted.
const MAX_PREFIX: usize = 20;

/// Why a byte stream is not a sequence of frames.
#[derive(Debug)]
pub enum FrameError {
    /// The prefix before `#` is not a decimal number.
    BadLength(String),
    /// The announced length ends inside a character, or the bytes are not UTF-8.
    BadUtf8,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadLength(p) => write!(f, "corrupted length prefix {p:?}"),
            FrameError::BadUtf8 => f.write_str("frame body is not UTF-8 text of the announced length"),
        }
    }
}

impl std::error::Error for FrameError {}

/// The first complete frame in `buf`: where its body lies and how many bytes it takes up
/// (prefix included). `None` while it is incomplete.
pub fn next_frame(buf: &[u8]) -> Result<Option<(Range<usize>, usize)>, FrameError> {
    let window = &buf[..buf.len().min(MAX_PREFIX + 1)];
    let Some(hash) = window.iter().position(|&b| b == b'#') else {
        if buf.len() > MAX_PREFIX {
            return Err(FrameError::BadLength(String::from_utf8_lossy(window).into_owned()));
        }
        return Ok(None);
    };
    let prefix = &buf[..hash];
    if prefix.is_empty() || !prefix.iter().all(u8::is_ascii_digit) {
        return Err(FrameError::BadLength(String::from_utf8_lossy(prefix).into_owned()));
    }
    // At most 20 digits: parse with overflow checks.
    let units = prefix
        .iter()
        .try_fold(0usize, |n, &d| n.checked_mul(10)?.checked_add(usize::from(d - b'0')))
        .ok_or_else(|| FrameError::BadLength(String::from_utf8_lossy(prefix).into_owned()))?;
    let start = hash + 1;
    let body = &buf[start..];
    // ASCII: one unit per byte.
    if body.len() >= units && body[..units].is_ascii() {
        return Ok(Some((start..start + units, start + units)));
    }
    // General case: walk characters by their UTF-8 lead byte, counting UTF-16 units
    // (4-byte characters are surrogate pairs: 2 units). serde_json validates the rest.
    let (mut counted, mut i) = (0usize, 0usize);
    while counted < units {
        let Some(&lead) = body.get(i) else { return Ok(None) };
        let (bytes, n) = match lead {
            0x00..=0x7F => (1, 1),
            0xC0..=0xDF => (2, 1),
            0xE0..=0xEF => (3, 1),
            0xF0..=0xF7 => (4, 2),
            _ => return Err(FrameError::BadUtf8),
        };
        counted += n;
        i += bytes;
    }
    if counted != units {
        // The length ends between the two halves of a surrogate pair.
        return Err(FrameError::BadUtf8);
    }
    if i > body.len() {
        return Ok(None);
    }
    Ok(Some((start..start + i, start + i)))
}

// Framing as the runtime writes it: the driver and the ceiling put the same bytes on the wire.
pub use switchboard::transport::tcp::frame::encode_frame as put_frame;

/// Appends a decimal integer (no allocation, no `fmt` machinery).
pub fn put_uint(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends a signed decimal integer.
pub fn put_int(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    put_uint(out, n.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(mut input: &[u8]) -> Result<Vec<String>, FrameError> {
        let mut out = Vec::new();
        while let Some((body, used)) = next_frame(input)? {
            out.push(String::from_utf8(input[body].to_vec()).unwrap());
            input = &input[used..];
        }
        Ok(out)
    }

    #[test]
    fn utf16_lengths_and_round_trip() {
        let body = r#"{"pattern":"echo","data":{"x":"é😀"},"id":"u1"}"#;
        assert_eq!(switchboard::transport::tcp::frame::utf16_len(body.as_bytes()), 47);
        let mut wire = Vec::new();
        put_frame(&mut wire, body.as_bytes());
        put_frame(&mut wire, b"{}");
        assert!(wire.starts_with(b"47#"));
        assert_eq!(split(&wire).unwrap(), vec![body.to_owned(), "{}".to_owned()]);
        // Every strict prefix is incomplete, never an error.
        for cut in 0..wire.len() - 3 {
            let got = split(&wire[..cut]).unwrap();
            assert!(got.len() <= 1, "cut {cut}");
        }
    }

    #[test]
    fn bad_frames() {
        assert!(matches!(next_frame(b"ab#{}"), Err(FrameError::BadLength(_))));
        assert!(matches!(next_frame(b"#{}"), Err(FrameError::BadLength(_))));
        assert!(matches!(
            next_frame(b"123456789012345678901234"),
            Err(FrameError::BadLength(_))
        ));
        assert!(matches!(next_frame("1#😀".as_bytes()), Err(FrameError::BadUtf8)));
        assert!(next_frame(b"5#{}").unwrap().is_none());
    }

    #[test]
    fn integers() {
        let mut out = Vec::new();
        for n in [0, 7, -7, i64::MAX, i64::MIN, 1_000_000_000] {
            out.clear();
            put_int(&mut out, n);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), n.to_string());
        }
    }
}
