//! NestJS's JSON packets (docs/nestjs-wire.md §0): decoding requests, events and replies
//! without copying payloads, and encoding them with NestJS's exact key order.

use std::collections::HashMap;
use std::ops::Range;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::error::{NO_MESSAGE_HANDLER, RpcError};

/// A packet as received, fields borrowed from the frame. Every field is kept raw so that
/// `null` is told apart from absent (`"id":null` is a request, `"response":null` a value).
/// Like `JSON.parse`, a repeated key keeps its last value; unknown keys are ignored.
#[derive(Default)]
pub(crate) struct Packet<'a> {
    pub pattern: Option<&'a str>,
    pub data: Option<&'a str>,
    pub id: Option<&'a str>,
    pub metadata: Option<&'a str>,
    pub response: Option<&'a str>,
    pub err: Option<&'a str>,
    pub is_disposed: Option<&'a str>,
}

impl<'de> Deserialize<'de> for Packet<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PacketVisitor;
        impl<'de> Visitor<'de> for PacketVisitor {
            type Value = Packet<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Packet<'de>, A::Error> {
                let mut p = Packet::default();
                while let Some(key) = map.next_key::<Field>()? {
                    let slot = match key {
                        Field::Pattern => &mut p.pattern,
                        Field::Data => &mut p.data,
                        Field::Id => &mut p.id,
                        Field::Metadata => &mut p.metadata,
                        Field::Response => &mut p.response,
                        Field::Err => &mut p.err,
                        Field::IsDisposed => &mut p.is_disposed,
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<&RawValue>()?.get());
                }
                Ok(p)
            }
        }
        d.deserialize_map(PacketVisitor)
    }
}

/// A packet key, matched without allocating.
enum Field {
    Pattern,
    Data,
    Id,
    Metadata,
    Response,
    Err,
    IsDisposed,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a packet key")
            }
            fn visit_str<E>(self, key: &str) -> Result<Field, E> {
                Ok(match key {
                    "pattern" => Field::Pattern,
                    "data" => Field::Data,
                    "id" => Field::Id,
                    "metadata" => Field::Metadata,
                    "response" => Field::Response,
                    "err" => Field::Err,
                    "isDisposed" => Field::IsDisposed,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(FieldVisitor)
    }
}

/// An object's string values, read in one pass (other values skipped unread).
struct Strings(HashMap<String, String>);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StringsVisitor;
        impl<'de> Visitor<'de> for StringsVisitor {
            type Value = Strings;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strings, A::Error> {
                let mut out = HashMap::with_capacity(map.size_hint().unwrap_or(2));
                while let Some(key) = map.next_key::<String>()? {
                    if let Some(value) = map.next_value::<MaybeString>()?.0 {
                        out.insert(key, value);
                    }
                }
                Ok(Strings(out))
            }
        }
        d.deserialize_map(StringsVisitor)
    }
}

/// A JSON string, or `None` for any other value (skipped).
struct MaybeString(Option<String>);

impl<'de> Deserialize<'de> for MaybeString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MaybeStringVisitor;
        impl<'de> Visitor<'de> for MaybeStringVisitor {
            type Value = MaybeString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<MaybeString, E> {
                Ok(MaybeString(Some(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<MaybeString, E> {
                Ok(MaybeString(Some(v)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_unit<E>(self) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeString, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeString(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeString, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeString(None))
            }
        }
        d.deserialize_any(MaybeStringVisitor)
    }
}

/// Why a frame's body is not a packet.
#[derive(Debug)]
pub(crate) enum PacketError {
    /// Not JSON at all: the peer is broken, NestJS closes the connection.
    InvalidJson(serde_json::Error),
    /// Not UTF-8 text.
    InvalidUtf8,
    /// Valid JSON that is not an object: NestJS treats it as an event with an undefined
    /// pattern and ignores it.
    NotAnObject,
}

impl<'a> Packet<'a> {
    /// Parses a packet body.
    pub fn parse(body: &'a [u8]) -> Result<Packet<'a>, PacketError> {
        // Checked once here, so the parser does not check each raw value again.
        let text = std::str::from_utf8(body).map_err(|_| PacketError::InvalidUtf8)?;
        if let Some(p) = Self::canonical(text) {
            return Ok(p);
        }
        match serde_json::from_str::<Packet<'a>>(text) {
            Ok(p) => Ok(p),
            Err(e) => match serde_json::from_str::<IgnoredAny>(text) {
                Ok(_) => Err(PacketError::NotAnObject),
                Err(_) => Err(PacketError::InvalidJson(e)),
            },
        }
    }

    /// A request or event exactly as NestJS clients write it, `{"pattern":P,"data":D,"id":I}`,
    /// with v12's `"metadata":M` between `data` and `id` (as NestJS 12 and Switchboard clients
    /// write it), no spaces, this order, `id` a scalar: split by hand, the hot path. Anything
    /// else is left to serde_json.
    fn canonical(text: &'a str) -> Option<Packet<'a>> {
        const PATTERN: &[u8] = br#"{"pattern":"#;
        const DATA: &[u8] = br#","data":"#;
        const METADATA: &[u8] = br#","metadata":"#;
        const ID: &[u8] = br#","id":"#;
        let b = text.as_bytes();
        let mut at = PATTERN.len();
        if !b.starts_with(PATTERN) {
            return None;
        }
        let end = value_end(b, at)?;
        let pattern = &text[at..end];
        at = end;
        if !b[at..].starts_with(DATA) {
            return None;
        }
        at += DATA.len();
        let end = value_end(b, at)?;
        let data = &text[at..end];
        at = end;
        let mut metadata = None;
        if b[at..].starts_with(METADATA) {
            at += METADATA.len();
            // Checked whole while its end is found, as serde_json would: a packet with broken
            // metadata is refused, not served without its headers.
            let mut values = serde_json::Deserializer::from_str(&text[at..]).into_iter::<IgnoredAny>();
            values.next()?.ok()?;
            let end = at + values.byte_offset();
            metadata = Some(&text[at..end]);
            at = end;
        }
        let mut id = None;
        if b[at..].starts_with(ID) {
            at += ID.len();
            let end = scalar_end(b, at)?;
            id = Some(&text[at..end]);
            at = end;
        }
        (b.get(at) == Some(&b'}') && at + 1 == b.len()).then_some(Packet {
            pattern: Some(pattern),
            data: Some(data),
            id,
            metadata,
            ..Packet::default()
        })
    }

    /// True when a `pattern` that matched no route is valid JSON (a pattern that matched is
    /// one of ours, so valid).
    pub fn check_pattern(pattern: &str) -> bool {
        serde_json::from_str::<IgnoredAny>(pattern).is_ok()
    }

    /// Where `raw` lies inside `body` (it was borrowed from it).
    pub fn range_in(body: &[u8], raw: &str) -> Range<usize> {
        let start = raw.as_ptr() as usize - body.as_ptr() as usize;
        start..start + raw.len()
    }

    /// v12's `metadata`: string values only, others ignored (NestJS types it `{string: string}`).
    pub fn metadata_map(&self) -> Option<HashMap<String, String>> {
        serde_json::from_str::<Strings>(self.metadata?).ok().map(|s| s.0)
    }

    /// Where a request or event packet read from `frame` is addressed: its `pattern`, or
    /// `undefined` (as NestJS reads a packet without one).
    pub fn address(&self, frame: &bytes::Bytes) -> crate::service::Address {
        match self.pattern {
            Some(p) => crate::service::Address::pattern_in(frame, p),
            None => crate::service::Address::static_pattern("undefined"),
        }
    }

    /// The packet's `data`, sliced from `frame` without copying; `null` when absent.
    pub fn payload(&self, frame: &bytes::Bytes) -> crate::service::Payload {
        match self.data {
            Some(d) => crate::service::Payload::Json(frame.slice_ref(d.as_bytes())),
            None => crate::service::Payload::null(),
        }
    }

    /// v12's `metadata` as headers.
    pub fn headers(&self) -> crate::service::Headers {
        self.metadata_map().map(Into::into).unwrap_or_default()
    }

    /// How a NestJS client reads this packet as a reply (`createObserver`, §0.3).
    pub fn reply(&self) -> ReplyPacket<'a> {
        if let Some(err) = self.err.filter(|e| truthy(e)) {
            return ReplyPacket::Error(err);
        }
        let disposed = self.is_disposed.is_some_and(truthy);
        match (self.response, disposed) {
            (Some(v), true) => ReplyPacket::Last(v),
            (None, true) => ReplyPacket::Done,
            (Some(v), false) => ReplyPacket::Value(v),
            // No known key at all: an "external" reply, the whole object is the final value.
            (None, false) if self.err.is_none() && self.is_disposed.is_none() => ReplyPacket::External,
            (None, false) => ReplyPacket::Value(null()),
        }
    }
}

fn null() -> &'static str {
    "null"
}

/// End of the JSON value starting at `at`: strings and scalars checked, objects and arrays
/// found by nesting. Their insides are checked by whoever reads them: the handler's
/// decoding for `data`, the route lookup (or `Packet::check_pattern`) for `pattern`.
fn value_end(b: &[u8], at: usize) -> Option<usize> {
    match *b.get(at)? {
        b'"' => string_end(b, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => scalar_end(b, at),
    }
}

/// End of a JSON string starting at `at` (a `"`); control characters make it invalid.
fn string_end(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        // Eight bytes at a time, straight to the first one that needs a look.
        while let Some(word) = b.get(i..i + 8) {
            let look = needs_look(u64::from_le_bytes(word.try_into().expect("eight bytes")));
            if look != 0 {
                i += look.trailing_zeros() as usize / 8;
                break;
            }
            i += 8;
        }
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            // Only JSON's escapes: an `id` is echoed back verbatim and must stay valid JSON.
            b'\\' => match b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                _ => return None,
            },
            0x00..=0x1F => return None,
            _ => i += 1,
        }
    }
}

/// The high bit of each byte of `w` that is `"`, `\\` or a control character (below 0x20),
/// exact up to the first such byte (the bits above it may be spurious).
fn needs_look(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    zero_byte(w ^ (ONES * u64::from(b'"'))) | zero_byte(w ^ (ONES * u64::from(b'\\'))) | below_space
}

/// End of a JSON string, number, `true`, `false` or `null` starting at `at`, checked.
fn scalar_end(b: &[u8], at: usize) -> Option<usize> {
    if *b.get(at)? == b'"' {
        return string_end(b, at);
    }
    let len = b[at..].iter().position(|&c| c == b',' || c == b'}')?;
    let token = &b[at..at + len];
    let valid = matches!(token, b"true" | b"false" | b"null") || is_json_number(token);
    valid.then_some(at + len)
}

/// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(t: &[u8]) -> bool {
    let digits = |t: &[u8], i: usize| i + t[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = usize::from(t.first() == Some(&b'-'));
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(t, i),
        _ => return false,
    }
    if t.get(i) == Some(&b'.') {
        let j = digits(t, i + 1);
        if j == i + 1 {
            return false;
        }
        i = j;
    }
    if matches!(t.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(t.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let j = digits(t, i);
        if j == i {
            return false;
        }
        i = j;
    }
    i == t.len()
}

/// JavaScript truthiness of a JSON value.
fn truthy(v: &str) -> bool {
    !matches!(v, "null" | "false" | "0" | "-0" | "\"\"") && !is_zero(v)
}

fn is_zero(text: &str) -> bool {
    text.parse::<f64>().is_ok_and(|n| n == 0.0)
}

/// A reply packet, as a client sees it.
#[derive(Debug)]
pub(crate) enum ReplyPacket<'a> {
    /// One value; more may follow.
    Value(&'a str),
    /// The last value.
    Last(&'a str),
    /// Completion without a value.
    Done,
    /// An error; terminal.
    Error(&'a str),
    /// The whole packet is the value, and it is final.
    External,
}

/// The `err` value of a reply, and whether it is NestJS's "no handler" reply.
pub(crate) fn rpc_error(raw: &str) -> RpcError {
    RpcError::from_value(serde_json::from_str(raw).unwrap_or(serde_json::Value::Null))
}

/// What a server writes back for one step of a reply.
#[derive(Debug)]
pub(crate) enum Outgoing<'a> {
    /// A value; `last` merges completion into it.
    Value { json: &'a [u8], last: bool },
    /// Completion without a value.
    Done,
    /// An error (terminal).
    Error(&'a RpcError),
    /// NestJS's no-handler reply.
    NoHandler,
}

/// Appends a reply packet for request `id` (raw JSON, echoed verbatim) to `out`, with
/// NestJS's key order.
pub(crate) fn encode_reply(out: &mut Vec<u8>, id: &[u8], what: Outgoing<'_>) {
    if let Outgoing::NoHandler = what {
        out.extend_from_slice(b"{\"id\":");
        out.extend_from_slice(id);
        out.extend_from_slice(b",\"status\":\"error\",\"err\":\"");
        out.extend_from_slice(NO_MESSAGE_HANDLER.as_bytes());
        out.extend_from_slice(b"\"}");
        return;
    }
    reply_fields(out, what);
    out.extend_from_slice(b",\"id\":");
    out.extend_from_slice(id);
    out.push(b'}');
}

/// Appends a reply packet without `id`, as RabbitMQ replies are (the id travels as the
/// message's `correlation_id`). Not for the no-handler reply, which RabbitMQ writes with its id.
#[cfg_attr(not(feature = "amqp"), allow(dead_code))]
pub(crate) fn encode_reply_without_id(out: &mut Vec<u8>, what: Outgoing<'_>) {
    reply_fields(out, what);
    out.push(b'}');
}

/// A reply packet up to, not including, its `id` and closing brace.
fn reply_fields(out: &mut Vec<u8>, what: Outgoing<'_>) {
    match what {
        Outgoing::Value { json, last } => {
            out.extend_from_slice(b"{\"response\":");
            out.extend_from_slice(json);
            if last {
                out.extend_from_slice(b",\"isDisposed\":true");
            }
        }
        Outgoing::Done => out.extend_from_slice(b"{\"isDisposed\":true"),
        Outgoing::Error(err) => {
            out.extend_from_slice(b"{\"err\":");
            crate::json::write(out, err.value()).expect("JSON values serialise");
            out.extend_from_slice(b",\"isDisposed\":true");
        }
        // Only without an id: RabbitMQ writes its own, with the id and another key order.
        Outgoing::NoHandler => {
            out.extend_from_slice(b"{\"err\":\"");
            out.extend_from_slice(NO_MESSAGE_HANDLER.as_bytes());
            out.extend_from_slice(b"\",\"status\":\"error\"");
        }
    }
}

/// Appends a request (`id` given) or event packet: `pattern, data[, metadata][, id]`.
pub(crate) fn encode_request(
    out: &mut Vec<u8>,
    pattern: &str,
    data: &[u8],
    metadata: Option<&HashMap<String, String>>,
    id: Option<&str>,
) {
    out.extend_from_slice(b"{\"pattern\":");
    out.extend_from_slice(pattern.as_bytes());
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    if let Some(meta) = metadata.filter(|m| !m.is_empty()) {
        out.extend_from_slice(b",\"metadata\":");
        serde_json::to_writer(&mut *out, meta).expect("string maps serialise");
    }
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":\"");
        out.extend_from_slice(id.as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(id: &str, what: Outgoing<'_>) -> String {
        let mut out = Vec::new();
        encode_reply(&mut out, id.as_bytes(), what);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_end_at_their_closing_quote_wherever_it_falls() {
        for pad in 0..20 {
            let fill = "a".repeat(pad);
            let ok = [
                format!(r#""{fill}""#),
                format!(r#""{fill}\"x""#),
                format!(r#""{fill}\\""#),
                format!(r#""{fill}\u00e9é""#),
            ];
            for text in ok {
                let b = format!("{text},").into_bytes();
                assert_eq!(string_end(&b, 0), Some(text.len()), "{text}");
            }
            for bad in [
                format!("\"{fill}\u{1}\""),
                format!(r#""{fill}\x""#),
                format!(r#""{fill}"#),
            ] {
                assert_eq!(string_end(bad.as_bytes(), 0), None, "{bad:?}");
            }
        }
    }

    #[test]
    fn replies_use_nestjs_key_order() {
        assert_eq!(
            reply("\"abc1\"", Outgoing::Value { json: b"6", last: true }),
            r#"{"response":6,"isDisposed":true,"id":"abc1"}"#
        );
        assert_eq!(
            reply(
                "\"s1\"",
                Outgoing::Value {
                    json: b"1",
                    last: false
                }
            ),
            r#"{"response":1,"id":"s1"}"#
        );
        assert_eq!(reply("\"s3\"", Outgoing::Done), r#"{"isDisposed":true,"id":"s3"}"#);
        assert_eq!(
            reply("\"e1\"", Outgoing::Error(&RpcError::new("bad thing"))),
            r#"{"err":{"status":"error","message":"bad thing"},"isDisposed":true,"id":"e1"}"#
        );
        assert_eq!(
            reply("\"n1\"", Outgoing::NoHandler),
            r#"{"id":"n1","status":"error","err":"There is no matching message handler defined in the remote service."}"#
        );
        assert_eq!(reply("7", Outgoing::Done), r#"{"isDisposed":true,"id":7}"#);
    }

    #[test]
    fn requests_use_nestjs_key_order() {
        let mut out = Vec::new();
        let meta = HashMap::from([("traceparent".to_string(), "00-abc-def-01".to_string())]);
        encode_request(
            &mut out,
            r#"{"cmd":"sum","a":1}"#,
            b"[1,2,3]",
            Some(&meta),
            Some("a18e27d5afe707e15ae91"),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"pattern":{"cmd":"sum","a":1},"data":[1,2,3],"metadata":{"traceparent":"00-abc-def-01"},"id":"a18e27d5afe707e15ae91"}"#
        );
    }

    #[test]
    fn null_is_not_absent() {
        let p = Packet::parse(br#"{"pattern":"x","data":null,"id":null}"#).unwrap();
        assert_eq!(p.data.unwrap(), "null");
        assert_eq!(p.id.unwrap(), "null");
        let p = Packet::parse(br#"{"pattern":"x","data":1}"#).unwrap();
        assert!(p.id.is_none());
    }

    #[test]
    fn metadata_keeps_string_values_only() {
        let p = Packet::parse(
            br#"{"id":"1","metadata":{"a":"x","b":1,"c":null,"d":[1,{"e":"f"}],"g":{"h":"i"},"j":"\u00e9\"","a":"y"},"pattern":"p"}"#,
        )
        .unwrap();
        let mut got: Vec<_> = p.metadata_map().unwrap().into_iter().collect();
        got.sort();
        assert_eq!(got, [("a".into(), "y".into()), ("j".into(), "é\"".into())]);
        let p = Packet::parse(br#"{"pattern":"p","metadata":"not an object"}"#).unwrap();
        assert!(p.metadata_map().is_none());
    }

    #[test]
    fn replies_are_read_like_nestjs_clients_do() {
        let kinds = |body: &str| format!("{:?}", Packet::parse(body.as_bytes()).unwrap().reply());
        assert!(kinds(r#"{"response":null,"isDisposed":true,"id":"v2"}"#).starts_with("Last"));
        assert!(kinds(r#"{"response":1,"id":"s1"}"#).starts_with("Value"));
        assert_eq!(kinds(r#"{"isDisposed":true,"id":"s3"}"#), "Done");
        assert!(kinds(r#"{"err":{"message":"x"},"id":"e"}"#).starts_with("Error"));
        assert!(kinds(r#"{"err":null,"response":2,"isDisposed":true,"id":"e"}"#).starts_with("Last"));
        assert_eq!(kinds(r#"{"hello":"bare","id":"b"}"#), "External");
    }

    #[test]
    fn like_json_parse_last_duplicate_wins_and_arrays_are_not_packets() {
        let p = Packet::parse(br#"{"pattern":"echo","data":1,"id":"a","id":"b"}"#).unwrap();
        assert_eq!(p.id.unwrap(), r#""b""#);
        assert!(matches!(
            Packet::parse(br#"["echo",42,"arr"]"#),
            Err(PacketError::NotAnObject)
        ));
        let p = Packet::parse(br#"{"pattern":"x","d\u0061ta":7}"#).unwrap();
        assert_eq!(p.data.unwrap(), "7", "escaped keys are keys too");
        // `isDisposed:false` alone is not an external reply: NestJS emits undefined and waits.
        let p = Packet::parse(br#"{"isDisposed":false,"id":"x"}"#).unwrap();
        assert!(matches!(p.reply(), ReplyPacket::Value(_)));
    }

    #[test]
    fn the_canonical_fast_path_agrees_with_serde() {
        let cases = [
            r#"{"pattern":{"cmd":"sum"},"data":[1,2,3],"id":"abc1"}"#,
            r#"{"pattern":"echo","data":{"x":"é😀 \" }"},"id":"u1"}"#,
            r#"{"pattern":"{\"cmd\":\"sum\"}","data":[1,2],"id":"abc2"}"#,
            r#"{"pattern":"evt","data":{"hello":"world"}}"#,
            r#"{"pattern":"echo","data":1,"id":7}"#,
            r#"{"pattern":"echo","data":-1.5e3,"id":null}"#,
            r#"{"pattern":"echo","data":null,"id":"x"}"#,
            r#"{"pattern":"echo","data":"}","id":"x"}"#,
            // NestJS 12 (and Switchboard) clients: metadata between data and id.
            r#"{"pattern":{"cmd":"add"},"data":{"a":1},"metadata":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","sb-timeout-ms":"29999"},"id":"7"}"#,
            r#"{"pattern":"evt","data":[1],"metadata":{"k":"}\"{"}}"#,
            r#"{"pattern":"echo","data":1,"metadata":{},"id":"x"}"#,
        ];
        for case in cases {
            let fast = Packet::canonical(case).unwrap_or_else(|| panic!("fast path takes {case}"));
            let slow: Packet<'_> = serde_json::from_str(case).unwrap();
            assert_eq!(
                (fast.pattern, fast.data, fast.id, fast.metadata),
                (slow.pattern, slow.data, slow.id, slow.metadata),
                "{case}"
            );
            assert_eq!(fast.metadata_map(), slow.metadata_map(), "{case}");
        }
        // Other shapes, and ids that are not plain scalars, go to serde_json.
        for other in [
            r#"{"data":1,"pattern":"echo","id":"x"}"#,
            r#"{ "pattern":"echo","data":1,"id":"x"}"#,
            r#"{"pattern":"echo","data":1,"id":"x","metadata":{"a":"b"}}"#,
            r#"{"pattern":"echo","data":1,"metadata":{"a":"b",},"id":"x"}"#,
            r#"{"pattern":"echo","data":1,"metadata":{"a":tru},"id":"x"}"#,
            r#"{"pattern":"echo","data":1,"id":{"n":1}}"#,
            r#"{"pattern":"echo","data":1,"id":01}"#,
            r#"{"pattern":"echo","data":1,"id":"x"} "#,
            r#"{"pattern":"echo","data":tru,"id":"x"}"#,
            r#"{"pattern":"echo","data":1,"id":"\q"}"#,
            r#"{"pattern":"echo","data":1,"id":"\u12"}"#,
        ] {
            assert!(Packet::canonical(other).is_none(), "{other}");
        }
    }

    #[test]
    fn non_objects_and_garbage_are_told_apart() {
        assert!(matches!(Packet::parse(br#""abc""#), Err(PacketError::NotAnObject)));
        assert!(matches!(Packet::parse(b"{nope"), Err(PacketError::InvalidJson(_))));
        assert!(matches!(Packet::parse(b""), Err(PacketError::InvalidJson(_))));
    }
}
