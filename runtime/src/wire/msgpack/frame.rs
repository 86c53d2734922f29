//! Switchboard's msgpack frames on TCP: the hello, then `u32`-length-prefixed bodies (see
//! the parent module for their layout).

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

/// What a msgpack client sends first, and a Switchboard server answers.
pub(crate) const HELLO: [u8; 4] = [0xC1, b'S', b'B', 1];

/// The kind of a reply frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Tag {
    /// A value; more follow.
    Value = 0,
    /// The last value.
    Last = 1,
    /// Completion without a value.
    Done = 2,
    /// An error (its value follows); the reply ends.
    Error = 3,
    /// Nobody handles the pattern.
    NoHandler = 4,
}

/// Why a frame body is not a packet. The frame is skipped (or answered with an error when
/// its id could be read); the connection goes on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid msgpack packet: {0}")]
pub(crate) struct PacketError(&'static str);

/// Why the byte stream is not a sequence of frames. The connection cannot recover.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The announced length is over the cap.
    #[error("msgpack frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The cap.
        max: usize,
    },
}

/// Splits a byte stream into frame bodies.
#[derive(Debug)]
pub(crate) struct FrameDecoder {
    max_len: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_len` bytes.
    pub(crate) fn new(max_len: usize) -> Self {
        FrameDecoder { max_len }
    }

    /// Takes the next complete frame body off the front of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> std::result::Result<Option<Bytes>, FrameError> {
        let Some(head) = buf.get(..4) else { return Ok(None) };
        let len = u32::from_be_bytes(head.try_into().expect("four bytes")) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge { len, max: self.max_len });
        }
        if buf.len() < 4 + len {
            // The buffer grows as the body arrives, not at the announced length.
            return Ok(None);
        }
        buf.advance(4);
        Ok(Some(buf.split_to(len).freeze()))
    }
}

/// Appends the length of a frame, to be filled in by [`end_frame`]; returns where it is.
fn start_frame(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

/// Writes the length of the frame started at `at`.
fn end_frame(out: &mut [u8], at: usize) {
    let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    rmp::encode::write_str(out, s).expect("writing to a Vec cannot fail");
}

/// Appends a request (`id` given) or event frame; `data` is one MessagePack value.
pub(crate) fn encode_request(
    out: &mut Vec<u8>,
    id: Option<&str>,
    pattern: &str,
    headers: &crate::service::Headers,
    data: &[u8],
) {
    let at = start_frame(out);
    rmp::encode::write_array_len(out, 3).expect("writing to a Vec cannot fail");
    match id {
        Some(id) => write_str(out, id),
        None => rmp::encode::write_nil(out).expect("writing to a Vec cannot fail"),
    }
    write_str(out, pattern);
    let n = headers.len();
    rmp::encode::write_map_len(out, u32::try_from(n).unwrap_or(u32::MAX)).expect("writing to a Vec cannot fail");
    for (k, v) in headers.iter() {
        write_str(out, k);
        write_str(out, v);
    }
    out.extend_from_slice(data);
    end_frame(out, at);
}

/// Appends a reply frame: `value` (one MessagePack value) for a value or an error.
pub(crate) fn encode_reply(out: &mut Vec<u8>, id: &[u8], tag: Tag, value: Option<&[u8]>) {
    let at = start_frame(out);
    rmp::encode::write_array_len(out, 2).expect("writing to a Vec cannot fail");
    rmp::encode::write_str_len(out, u32::try_from(id.len()).unwrap_or(u32::MAX)).expect("writing to a Vec cannot fail");
    out.extend_from_slice(id);
    rmp::encode::write_pfix(out, tag as u8).expect("writing to a Vec cannot fail");
    if let Some(value) = value {
        out.extend_from_slice(value);
    }
    end_frame(out, at);
}

/// A request or event frame, read without copying: ranges into its body.
#[derive(Debug)]
pub(crate) struct Request {
    /// The id of a request; `None` for an event.
    pub id: Option<Range<usize>>,
    /// The pattern's JSON text.
    pub pattern: Range<usize>,
    /// The sender's headers.
    pub headers: crate::service::Headers,
    /// The payload: one MessagePack value.
    pub data: Range<usize>,
}

/// Reads a string at the front of `rd`: its range in `body`.
fn read_str(body: &[u8], rd: &mut &[u8], what: &'static str) -> std::result::Result<Range<usize>, PacketError> {
    let len = rmp::decode::read_str_len(rd).map_err(|_| PacketError(what))? as usize;
    let start = body.len() - rd.len();
    if rd.len() < len || std::str::from_utf8(&rd[..len]).is_err() {
        return Err(PacketError(what));
    }
    *rd = &rd[len..];
    Ok(start..start + len)
}

/// As [`read_str`], the text itself.
fn read_text<'a>(body: &'a [u8], rd: &mut &'a [u8], what: &'static str) -> std::result::Result<&'a str, PacketError> {
    let range = read_str(body, rd, what)?;
    Ok(std::str::from_utf8(&body[range]).expect("checked by read_str"))
}

/// Reads a request or event frame's body. When only its id could be read, the error comes
/// with it, so that the sender gets an error reply.
pub(crate) fn parse_request(body: &[u8]) -> std::result::Result<Request, (Option<Range<usize>>, PacketError)> {
    let mut rd = body;
    match rmp::decode::read_array_len(&mut rd) {
        Ok(3) => {}
        _ => return Err((None, PacketError("expected [id, pattern, headers] and the payload"))),
    }
    let id = match rd.first() {
        Some(0xC0) => {
            rd = &rd[1..];
            None
        }
        _ => Some(read_str(body, &mut rd, "the id is not a string").map_err(|e| (None, e))?),
    };
    let fail = |e: PacketError| (id.clone(), e);
    let pattern = read_str(body, &mut rd, "the pattern is not a string").map_err(fail)?;
    let n = rmp::decode::read_map_len(&mut rd).map_err(|_| fail(PacketError("the headers are not a map")))?;
    let mut headers = crate::service::Headers::new();
    for _ in 0..n {
        let k = read_text(body, &mut rd, "a header is not a string").map_err(fail)?;
        let v = read_text(body, &mut rd, "a header is not a string").map_err(fail)?;
        headers.insert(k, v);
    }
    if rd.is_empty() {
        return Err(fail(PacketError("no payload")));
    }
    Ok(Request {
        id,
        pattern,
        headers,
        data: body.len() - rd.len()..body.len(),
    })
}

/// A reply frame, read: its call's id, its tag and the range of its value (empty when none).
pub(crate) fn parse_reply(body: &[u8]) -> std::result::Result<(&str, Tag, Range<usize>), PacketError> {
    let mut rd = body;
    if !matches!(rmp::decode::read_array_len(&mut rd), Ok(2)) {
        return Err(PacketError("expected [id, tag]"));
    }
    let id = read_text(body, &mut rd, "the id is not a string")?;
    let tag = match rmp::decode::read_pfix(&mut rd) {
        Ok(0) => Tag::Value,
        Ok(1) => Tag::Last,
        Ok(2) => Tag::Done,
        Ok(3) => Tag::Error,
        Ok(4) => Tag::NoHandler,
        _ => return Err(PacketError("unknown reply tag")),
    };
    let value = body.len() - rd.len()..body.len();
    if matches!(tag, Tag::Value | Tag::Last | Tag::Error) && value.is_empty() {
        return Err(PacketError("a value is missing"));
    }
    Ok((id, tag, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::msgpack::to_msgpack;

    #[test]
    fn requests_and_replies_read_back() {
        let headers: crate::service::Headers = [("traceparent", "00-1")].into_iter().collect();
        let data = to_msgpack(&[1, 2]).unwrap();
        let mut out = Vec::new();
        encode_request(&mut out, Some("abc"), "\"sum\"", &headers, &data);
        let mut buf = BytesMut::from(&out[..]);
        let mut dec = FrameDecoder::new(1024);
        let body = dec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        let req = parse_request(&body).unwrap();
        assert_eq!(&body[req.id.unwrap()], b"abc");
        assert_eq!(&body[req.pattern], b"\"sum\"");
        assert_eq!(req.headers.get("traceparent"), Some("00-1"));
        assert_eq!(&body[req.data], &data[..]);

        out.clear();
        encode_request(&mut out, None, "\"evt\"", &crate::service::Headers::new(), b"\xC0");
        let body = FrameDecoder::new(1024)
            .decode(&mut BytesMut::from(&out[..]))
            .unwrap()
            .unwrap();
        assert!(parse_request(&body).unwrap().id.is_none());

        out.clear();
        encode_reply(&mut out, b"abc", Tag::Last, Some(b"\x03"));
        let body = FrameDecoder::new(1024)
            .decode(&mut BytesMut::from(&out[..]))
            .unwrap()
            .unwrap();
        let (id, tag, value) = parse_reply(&body).unwrap();
        assert_eq!((id, tag, &body[value]), ("abc", Tag::Last, &b"\x03"[..]));
    }

    #[test]
    fn bad_frames_are_bounded_errors() {
        let mut dec = FrameDecoder::new(10);
        let mut buf = BytesMut::from(&[0, 0, 0, 11][..]);
        assert_eq!(dec.decode(&mut buf), Err(FrameError::TooLarge { len: 11, max: 10 }));
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 1][..]);
        assert_eq!(dec.decode(&mut buf), Ok(None), "waits for the rest");
        // Not an array; an id then garbage: the id comes back with the error.
        assert_eq!(parse_request(b"\x01").unwrap_err().0, None);
        let (id, _) = parse_request(b"\x93\xA1x\x07").unwrap_err();
        assert_eq!(id, Some(2..3));
        assert!(parse_request(b"\x93\xA1x\xA1p\x80").is_err(), "no payload");
        assert!(parse_reply(b"\x92\xA1x\x09").is_err(), "unknown tag");
        assert!(parse_reply(b"\x92\xA1x\x01").is_err(), "a value is missing");
    }
}
