//! NestJS's `JsonSocket` framing: `<length>#<json>`, the length counted in UTF-16 code
//! units (JavaScript string length), not bytes (docs/nestjs-wire.md §1.2).

use bytes::{Buf, Bytes, BytesMut};

/// Longest length prefix accepted before `#` (NestJS's own limit is far past any sane frame).
const MAX_PREFIX: usize = 20;

/// Why the byte stream is not a sequence of frames. The connection cannot recover.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The prefix before `#` is not a decimal length.
    #[error("corrupted length value {0:?} supplied in a packet")]
    CorruptedLength(String),
    /// The announced length is over the configured cap.
    #[error("frame of {len} characters exceeds the limit of {max}")]
    TooLarge {
        /// Announced length, in UTF-16 units.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The body takes more bytes than the cap allows (the cap counts both units and bytes:
    /// a frame of 3-byte characters would otherwise take three times the memory).
    #[error("frame exceeds the limit of {max} bytes")]
    TooManyBytes {
        /// The cap.
        max: usize,
    },
    /// The length ends inside a character, or the bytes are not UTF-8.
    #[error("frame body is not valid UTF-8 of the announced length")]
    InvalidUtf8,
}

/// Splits a byte stream into frame bodies.
#[derive(Debug)]
pub struct FrameDecoder {
    max_len: usize,
    /// Body length in UTF-16 units and where the body starts, once the prefix is read.
    header: Option<(usize, usize)>,
    /// Resume point of the unit count inside the body (bytes scanned, units counted,
    /// continuation bytes still owed by the last character).
    scanned: usize,
    units: usize,
    owed: u8,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_len` UTF-16 units or bytes.
    pub fn new(max_len: usize) -> Self {
        FrameDecoder {
            max_len,
            header: None,
            scanned: 0,
            units: 0,
            owed: 0,
        }
    }

    /// True when part of a frame has been received but not all of it.
    pub fn is_mid_frame(&self, buf: &BytesMut) -> bool {
        self.header.is_some() || !buf.is_empty()
    }

    /// Takes the next complete frame body off the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        Ok(self.decode_body(buf)?.map(|body| body.bytes))
    }

    /// [`decode`](Self::decode), keeping what the length count learnt of the text.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use switchboard::transport::tcp::frame::FrameDecoder;
    ///
    /// let mut buf = BytesMut::from(&b"2#{}3#[1"[..]);
    /// let mut frames = FrameDecoder::new(1024);
    /// let body = frames.decode_body(&mut buf).unwrap().unwrap();
    /// assert_eq!(body.text(), Some("{}"));
    /// assert!(frames.decode_body(&mut buf).unwrap().is_none(), "the next one is not all there");
    /// ```
    pub fn decode_body(&mut self, buf: &mut BytesMut) -> Result<Option<Body>, FrameError> {
        let Some(Framed { body, ascii }) = self.next_in(buf)? else {
            return Ok(None);
        };
        buf.advance(body.start);
        let bytes = buf.split_to(body.len()).freeze();
        Ok(Some(Body { bytes, ascii }))
    }

    /// Where the next complete frame's body lies in `buf`, without taking it off: the caller
    /// removes `..body.end` from the front of `buf` before looking for the next frame (and
    /// leaves `buf`'s front alone while this finds only part of one).
    pub fn next_in(&mut self, buf: &[u8]) -> Result<Option<Framed>, FrameError> {
        let (len, start) = match self.header {
            Some(h) => h,
            None => match self.read_header(buf)? {
                Some(h) => h,
                None => return Ok(None),
            },
        };
        // Fast path: all-ASCII bodies are one unit per byte.
        let ascii = self.scanned == 0 && buf.len() - start >= len && buf[start..start + len].is_ascii();
        let end = match ascii {
            true => len,
            false => match self.body_end(&buf[start..], len)? {
                Some(end) => end,
                None => return Ok(None),
            },
        };
        self.header = None;
        self.scanned = 0;
        self.units = 0;
        self.owed = 0;
        Ok(Some(Framed {
            body: start..start + end,
            ascii,
        }))
    }

    fn read_header(&mut self, buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
        let window = &buf[..buf.len().min(MAX_PREFIX + 1)];
        let Some(hash) = window.iter().position(|&b| b == b'#') else {
            if buf.len() > MAX_PREFIX {
                return Err(FrameError::CorruptedLength(
                    String::from_utf8_lossy(window).into_owned(),
                ));
            }
            return Ok(None);
        };
        let len = parse_length(&buf[..hash])?;
        if len > self.max_len {
            return Err(FrameError::TooLarge { len, max: self.max_len });
        }
        self.header = Some((len, hash + 1));
        Ok(self.header)
    }

    /// Byte length of a body of `len` UTF-16 units at the front of `body`, once it is all there.
    fn body_end(&mut self, body: &[u8], len: usize) -> Result<Option<usize>, FrameError> {
        for (i, &b) in body.iter().enumerate().skip(self.scanned) {
            let continuation = b & 0xC0 == 0x80;
            if continuation {
                if self.owed == 0 {
                    return Err(FrameError::InvalidUtf8);
                }
                self.owed -= 1;
                continue;
            }
            if self.owed != 0 {
                return Err(FrameError::InvalidUtf8);
            }
            if self.units == len {
                return Ok(Some(i));
            }
            if i >= self.max_len {
                return Err(FrameError::TooManyBytes { max: self.max_len });
            }
            let (units, owed) = match b {
                0x00..=0x7F => (1, 0),
                0xC0..=0xDF => (1, 1),
                0xE0..=0xEF => (1, 2),
                0xF0..=0xF7 => (2, 3),
                _ => return Err(FrameError::InvalidUtf8),
            };
            self.units += units;
            self.owed = owed;
            if self.units > len {
                // The announced length ends inside a surrogate pair.
                return Err(FrameError::InvalidUtf8);
            }
        }
        if body.len() > self.max_len {
            return Err(FrameError::TooManyBytes { max: self.max_len });
        }
        self.scanned = body.len();
        Ok((self.units == len && self.owed == 0).then_some(body.len()))
    }
}

/// Where a complete frame's body lies, as [`FrameDecoder::next_in`] found it.
#[derive(Debug)]
pub struct Framed {
    /// The body's bytes in the buffer searched.
    pub body: std::ops::Range<usize>,
    /// Every byte was seen to be ASCII while the length was counted.
    pub ascii: bool,
}

/// A frame's body, as [`FrameDecoder::decode_body`] took it.
#[derive(Debug)]
pub struct Body {
    bytes: Bytes,
    /// Every byte was seen to be ASCII while the length was counted.
    ascii: bool,
}

impl Body {
    /// The body's bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The body as text; `None` if it is not UTF-8 (checked here only when the length count
    /// did not see ASCII throughout).
    pub fn text(&self) -> Option<&str> {
        match self.ascii {
            // SAFETY: ASCII is UTF-8; `ascii` is set only by the decoder, after checking.
            true => Some(unsafe { std::str::from_utf8_unchecked(&self.bytes) }),
            false => std::str::from_utf8(&self.bytes).ok(),
        }
    }
}

/// `parseInt(prefix, 10)` as NestJS applies it: leading whitespace and trailing junk after
/// the digits are tolerated; no digits is an error.
fn parse_length(prefix: &[u8]) -> Result<usize, FrameError> {
    let corrupted = || FrameError::CorruptedLength(String::from_utf8_lossy(prefix).into_owned());
    let trimmed = prefix.trim_ascii_start();
    // `parseInt` takes a sign; a negative length is no frame.
    let trimmed = trimmed.strip_prefix(b"+").unwrap_or(trimmed);
    let digits = trimmed.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(corrupted());
    }
    // By hand: `str::parse` costs more than the rest of a small frame's header.
    trimmed[..digits]
        .iter()
        .try_fold(0usize, |n, &d| n.checked_mul(10)?.checked_add(usize::from(d - b'0')))
        .ok_or_else(corrupted)
}

/// The length of UTF-8 text in UTF-16 code units.
pub fn utf16_len(text: &[u8]) -> usize {
    if text.is_ascii() {
        return text.len();
    }
    text.iter()
        .map(|&b| match b {
            0x80..=0xBF => 0,
            0xF0..=0xFF => 2,
            _ => 1,
        })
        .sum()
}

/// Appends `<len>#<body>` to `out`.
pub fn encode_frame(out: &mut Vec<u8>, body: &[u8]) {
    write_length(out, utf16_len(body));
    out.extend_from_slice(body);
}

/// Appends the `<len>#` prefix of a frame whose body is `len` UTF-16 units long.
pub fn write_length(out: &mut Vec<u8>, mut len: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (len % 10) as u8;
        len /= 10;
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.push(b'#');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], max: usize) -> Result<Vec<String>, FrameError> {
        let mut dec = FrameDecoder::new(max);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = dec.decode(&mut buf)? {
            out.push(String::from_utf8(f.to_vec()).unwrap());
        }
        Ok(out)
    }

    #[test]
    fn lengths_are_written_in_decimal() {
        let edges = (0..20).flat_map(|p| {
            let n = 10usize.pow(p);
            [n - 1, n, n + 1]
        });
        for len in edges.chain([usize::MAX, 4242, 53]) {
            let mut out = b"x".to_vec();
            write_length(&mut out, len);
            assert_eq!(out, format!("x{len}#").into_bytes(), "{len}");
        }
    }

    #[test]
    fn length_is_utf16_units() {
        let body = r#"{"pattern":"echo","data":{"x":"é😀"},"id":"u1"}"#;
        assert_eq!(utf16_len(body.as_bytes()), 47);
        assert_eq!(body.len(), 50);
        let mut out = Vec::new();
        encode_frame(&mut out, body.as_bytes());
        assert!(out.starts_with(b"47#"));
        assert_eq!(frames(&out, 1000).unwrap(), vec![body.to_string()]);
    }

    #[test]
    fn pipelined_and_split_frames() {
        let input =
            b"37#{\"pattern\":\"echo\",\"data\":1,\"id\":\"p1\"}37#{\"pattern\":\"echo\",\"data\":2,\"id\":\"p2\"}";
        assert_eq!(frames(input, 1000).unwrap().len(), 2);
        // Byte by byte, including inside a multibyte character.
        let mut out = Vec::new();
        encode_frame(&mut out, "{\"x\":\"é😀\"}".as_bytes());
        let mut dec = FrameDecoder::new(1000);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in out {
            buf.extend_from_slice(&[b]);
            if let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0][..], "{\"x\":\"é😀\"}".as_bytes());
    }

    #[test]
    fn lenient_prefix_like_parse_int() {
        assert_eq!(frames(b" 2#{}", 10).unwrap(), vec!["{}"]);
        assert_eq!(frames(b"2abc#{}", 10).unwrap(), vec!["{}"]);
        assert_eq!(frames(b" +2#{}", 10).unwrap(), vec!["{}"], "parseInt takes a plus sign");
        assert!(matches!(frames(b"-2#{}", 10), Err(FrameError::CorruptedLength(_))));
        assert!(matches!(frames(b"+#{}", 10), Err(FrameError::CorruptedLength(_))));
    }

    #[test]
    fn bad_prefixes_and_caps() {
        assert!(matches!(frames(b"abc#{}", 10), Err(FrameError::CorruptedLength(_))));
        assert!(matches!(frames(b"#{}", 10), Err(FrameError::CorruptedLength(_))));
        // Past `usize`: no length at all, not a wrapped-around one.
        assert!(matches!(
            frames(b"99999999999999999999#{}", 10),
            Err(FrameError::CorruptedLength(_))
        ));
        assert!(matches!(
            frames(b"123456789012345678901234", 10),
            Err(FrameError::CorruptedLength(_))
        ));
        assert_eq!(frames(b"11#", 10), Err(FrameError::TooLarge { len: 11, max: 10 }));
        // Four characters, twelve bytes: within four units, past a cap of ten bytes.
        assert_eq!(
            frames("4#€€€€".as_bytes(), 10),
            Err(FrameError::TooManyBytes { max: 10 })
        );
        assert_eq!(frames("3#€€€".as_bytes(), 10).unwrap().len(), 1);
        assert_eq!(frames(b"0#", 10).unwrap(), vec![""]);
    }

    #[test]
    fn invalid_utf8_and_split_surrogates() {
        assert_eq!(frames(b"3#a\xffb", 10), Err(FrameError::InvalidUtf8));
        // 😀 is two units; a length of 1 ends inside it.
        assert_eq!(frames("1#😀".as_bytes(), 10), Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn a_body_is_text_only_if_it_is_utf8() {
        let body = |input: &[u8]| {
            FrameDecoder::new(100)
                .decode_body(&mut BytesMut::from(input))
                .unwrap()
                .unwrap()
        };
        assert_eq!(body(b"2#{}").text(), Some("{}"));
        assert_eq!(body("3#\"é\"".as_bytes()).text(), Some("\"é\""));
        // An overlong `/`: one unit by its lead byte, still not UTF-8.
        assert_eq!(body(b"1#\xc0\xaf").text(), None);
        assert_eq!(&body(b"1#\xc0\xaf").bytes()[..], b"\xc0\xaf");
    }

    #[test]
    fn byte_length_prefix_waits_for_more() {
        // The mistake NestJS documents: a byte length over non-ASCII text wants 3 more units.
        let body = r#"{"pattern":"echo","data":{"x":"é😀"},"id":"u1"}"#;
        let input = format!("50#{body}");
        assert_eq!(frames(input.as_bytes(), 1000).unwrap(), Vec::<String>::new());
    }
}
