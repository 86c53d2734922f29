//! NestJS's JSON packets (docs/nestjs-wire.md §0): decoding requests, events and replies
//! without copying payloads, and encoding them with NestJS's exact key order.

use std::ops::Range;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::scan::{scalar_end, skip_space, value_end};
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
    /// `metadata` already read into headers while the packet was split by hand.
    read_metadata: Option<crate::service::Headers>,
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

/// Entries of a packet's `metadata` kept as headers; more are skipped. A peer's thousands of
/// tiny entries would otherwise cost an allocation or two each, many times the frame.
const MAX_METADATA_ENTRIES: usize = 128;

/// Warnings about skipped metadata entries, at most one a second.
static TOO_MANY: crate::text::Throttle = crate::text::Throttle::new(1);

/// An object's string values, read in one pass (other values skipped unread), at most
/// [`MAX_METADATA_ENTRIES`].
struct Strings(crate::service::Headers);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StringsVisitor;
        impl<'de> Visitor<'de> for StringsVisitor {
            type Value = Strings;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strings, A::Error> {
                let mut out = crate::service::headers::Building::default();
                let (mut entries, mut skipped) = (0, 0);
                loop {
                    if entries < MAX_METADATA_ENTRIES {
                        let Some(Key(key)) = map.next_key::<Key<'de>>()? else {
                            break;
                        };
                        entries += 1;
                        if let Some(value) = map.next_value::<MaybeString>()?.0 {
                            out.insert(&*key, value);
                        }
                    } else {
                        // Past the cap: checked as JSON, nothing kept.
                        if map.next_key::<IgnoredAny>()?.is_none() {
                            break;
                        }
                        map.next_value::<IgnoredAny>()?;
                        skipped += 1;
                    }
                }
                if skipped > 0
                    && let Some(held_back) = TOO_MANY.allow()
                {
                    tracing::warn!(
                        skipped,
                        held_back,
                        "a packet's metadata has more than {MAX_METADATA_ENTRIES} entries; the rest are ignored"
                    );
                }
                Ok(Strings(out.done()))
            }
        }
        d.deserialize_map(StringsVisitor)
    }
}

/// How NestJS reads a packet's missing `pattern`.
const UNDEFINED: &str = "undefined";

/// A metadata key, borrowed from the packet unless it has escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(v.to_owned().into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
        }
        d.deserialize_str(KeyVisitor)
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
        Self::parse_text(std::str::from_utf8(body).map_err(|_| PacketError::InvalidUtf8)?)
    }

    /// [`parse`](Self::parse) of a body already known to be text.
    pub fn parse_text(text: &'a str) -> Result<Packet<'a>, PacketError> {
        match Self::nestjs_layout(text) {
            Some(p) => Ok(p),
            None => Self::parse_other(text),
        }
    }

    /// [`parse_text`](Self::parse_text) of a packet not in NestJS's own layout: out of line, so
    /// that the usual packet's path is short code.
    #[inline(never)]
    fn parse_other(text: &'a str) -> Result<Packet<'a>, PacketError> {
        if let Some(p) = Self::any_order(text) {
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

    /// A request or event split by hand (either way); `None` leaves it to serde_json.
    #[cfg(test)]
    fn split(text: &'a str) -> Option<Packet<'a>> {
        Self::nestjs_layout(text).or_else(|| Self::any_order(text))
    }

    /// A request or event exactly as NestJS clients write it, `{"pattern":P,"data":D,"id":I}`,
    /// with v12's `"metadata":M` between `data` and `id` (as NestJS 12 and Switchboard clients
    /// write it), no spaces, this order, `id` a scalar: straight-line code for the usual packet.
    fn nestjs_layout(text: &'a str) -> Option<Packet<'a>> {
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
        let (mut metadata, mut read_metadata) = (None, None);
        if b[at..].starts_with(METADATA) {
            at += METADATA.len();
            let (len, headers) = read_metadata_at(&text[at..])?;
            metadata = Some(&text[at..at + len]);
            read_metadata = headers;
            at += len;
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
            read_metadata,
            ..Packet::default()
        })
    }

    /// A request or event with no key but `pattern`, `data`, `metadata` and `id`, each at
    /// most once, in any order, with JSON's whitespace, written without escapes in the keys,
    /// `id` a scalar (other clients than NestJS's, written by hand or by a JSON library).
    fn any_order(text: &'a str) -> Option<Packet<'a>> {
        let b = text.as_bytes();
        let mut p = Packet::default();
        let open = skip_space(b, 0);
        if b.get(open) != Some(&b'{') {
            return None;
        }
        let mut at = skip_space(b, open + 1);
        if b.get(at) == Some(&b'}') {
            return (skip_space(b, at + 1) == b.len()).then_some(p);
        }
        loop {
            // A key is told by its first letter, then compared whole (its closing quote too).
            let rest = &b[at..];
            let (len, slot, read) = match rest.get(1)? {
                b'p' if rest.starts_with(br#""pattern""#) => (9, &mut p.pattern, Read::Value),
                b'd' if rest.starts_with(br#""data""#) => (6, &mut p.data, Read::Value),
                b'm' if rest.starts_with(br#""metadata""#) => (10, &mut p.metadata, Read::Metadata),
                b'i' if rest.starts_with(br#""id""#) => (4, &mut p.id, Read::Scalar),
                _ => return None,
            };
            if slot.is_some() {
                return None; // a repeated key: `JSON.parse` keeps the last, serde_json too
            }
            at = skip_space(b, at + len);
            if b.get(at) != Some(&b':') {
                return None;
            }
            at = skip_space(b, at + 1);
            let end = match read {
                Read::Value => value_end(b, at)?,
                Read::Scalar => scalar_end(b, at)?,
                Read::Metadata => {
                    let (len, headers) = read_metadata_at(&text[at..])?;
                    p.read_metadata = headers;
                    at + len
                }
            };
            *slot = Some(&text[at..end]);
            at = skip_space(b, end);
            match b.get(at) {
                Some(b',') => at = skip_space(b, at + 1),
                Some(b'}') if skip_space(b, at + 1) == b.len() => break,
                _ => return None,
            }
        }
        Some(p)
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
    pub fn metadata_map(&self) -> Option<crate::service::Headers> {
        if let Some(read) = &self.read_metadata {
            return Some(read.clone());
        }
        serde_json::from_str::<Strings>(self.metadata?).ok().map(|s| s.0)
    }

    /// The `pattern` as written, or `undefined` (as NestJS reads a packet without one).
    pub fn pattern_or_undefined(&self) -> &'a str {
        self.pattern.unwrap_or(UNDEFINED)
    }

    /// Where a request or event packet read from `frame` is addressed (see
    /// [`pattern_or_undefined`](Self::pattern_or_undefined)), sliced from it.
    #[cfg(feature = "amqp")]
    pub fn address(&self, frame: &bytes::Bytes) -> crate::service::Address {
        match self.pattern {
            Some(p) => crate::service::Address::pattern_in(frame, p),
            None => crate::service::Address::static_pattern(UNDEFINED),
        }
    }

    /// The packet's `data`, `null` when absent, sliced from the `frame` it was read from.
    pub fn payload(&self, frame: &bytes::Bytes) -> crate::service::Payload {
        match self.data {
            None => crate::service::Payload::null(),
            Some(d) => crate::service::Payload::Json(frame.slice_ref(d.as_bytes())),
        }
    }

    /// v12's `metadata` as headers (taken when the packet's split read them already).
    pub fn headers(&mut self) -> crate::service::Headers {
        self.read_metadata
            .take()
            .or_else(|| self.metadata_map())
            .unwrap_or_default()
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

/// How [`Packet::any_order`] finds a value's end: by nesting (checked later), as a checked
/// scalar, or read whole into headers.
enum Read {
    Value,
    Scalar,
    Metadata,
}

/// `metadata` at the start of `text`: its length, checked whole as serde_json would (a packet
/// with broken metadata is refused, not served without its headers), and its string values
/// read in the same pass (`None` for JSON that is not an object). `None` when it is not JSON.
fn read_metadata_at(text: &str) -> Option<(usize, Option<crate::service::Headers>)> {
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<Strings>();
    if let Ok(strings) = values.next()? {
        return Some((values.byte_offset(), Some(strings.0)));
    }
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<IgnoredAny>();
    values.next()?.ok()?;
    Some((values.byte_offset(), None))
}

fn null() -> &'static str {
    "null"
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

/// Room for the reply packet [`encode_reply`] writes (exact for values and completion), so
/// that it is written without growing its buffer.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn reply_capacity(id: &[u8], what: &Outgoing<'_>) -> usize {
    let body = match what {
        Outgoing::Value { json, .. } => json.len(),
        Outgoing::Done => 0,
        // Its message, more or less: a larger buffer is grown once.
        Outgoing::Error(_) | Outgoing::NoHandler => 64,
    };
    // `{"response":…,"isDisposed":true,"id":…}`.
    body + id.len() + 40
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
pub(crate) fn encode_request<'a>(
    out: &mut Vec<u8>,
    pattern: &str,
    data: &[u8],
    metadata: impl IntoIterator<Item = (&'a str, &'a str)>,
    id: Option<&str>,
) {
    out.extend_from_slice(b"{\"pattern\":");
    out.extend_from_slice(pattern.as_bytes());
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    let mut metadata = metadata.into_iter().peekable();
    if metadata.peek().is_some() {
        out.extend_from_slice(b",\"metadata\":{");
        for (i, (k, v)) in metadata.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, k).expect("strings serialise");
            out.push(b':');
            serde_json::to_writer(&mut *out, v).expect("strings serialise");
        }
        out.push(b'}');
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
        let meta: crate::service::Headers = [("traceparent", "00-abc-def-01")].into_iter().collect();
        encode_request(
            &mut out,
            r#"{"cmd":"sum","a":1}"#,
            b"[1,2,3]",
            meta.iter(),
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
        let mut got: Vec<(String, String)> = p
            .metadata_map()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        got.sort();
        assert_eq!(got, [("a".into(), "y".into()), ("j".into(), "é\"".into())]);
        let p = Packet::parse(br#"{"pattern":"p","metadata":"not an object"}"#).unwrap();
        assert!(p.metadata_map().is_none());
        // Keys are read in place unless escaped; escaped ones read the same.
        let mut p = Packet::parse(
            br#"{"pattern":"p","metadata":{"tr\u0061ceparent":"t","k\"ey":"v","plain":"w"},"data":1,"id":"1"}"#,
        )
        .unwrap();
        let headers = p.headers();
        assert_eq!(headers.get("traceparent"), Some("t"));
        assert_eq!(headers.get("k\"ey"), Some("v"));
        assert_eq!(headers.get("plain"), Some("w"));
        assert_eq!(headers.len(), 3);
    }

    #[test]
    fn metadata_keeps_its_first_entries_only() {
        // 100,000 entries in 1.3 MB: all checked as JSON, 128 kept.
        let entries: Vec<String> = (0..100_000).map(|i| format!(r#""k{i}":"v""#)).collect();
        let body = format!(
            r#"{{"pattern":"p","metadata":{{{}}},"data":1,"id":"1"}}"#,
            entries.join(",")
        );
        let mut p = Packet::parse(body.as_bytes()).unwrap();
        let headers = p.headers();
        assert_eq!(headers.iter().count(), MAX_METADATA_ENTRIES);
        assert_eq!(headers.get("k0"), Some("v"));
        assert_eq!(headers.get("k127"), Some("v"));
        assert_eq!(headers.get("k128"), None);
        // Broken JSON past the cap still refuses the packet.
        let body = format!(
            r#"{{"pattern":"p","metadata":{{{},"x":nope}},"data":1}}"#,
            entries[..200].join(",")
        );
        assert!(Packet::parse(body.as_bytes()).is_err());
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
    fn the_fast_paths_agree_with_serde() {
        let cases = [
            r#"{"pattern":{"cmd":"sum"},"data":[1,2,3],"id":"abc1"}"#,
            r#"{"pattern":"echo","data":{"x":"é😀 \" }"},"id":"u1"}"#,
            r#"{"pattern":"{\"cmd\":\"sum\"}","data":[1,2],"id":"abc2"}"#,
            r#"{"pattern":"evt","data":{"hello":"world"}}"#,
            r#"{"pattern":"echo","data":1,"id":7}"#,
            r#"{"pattern":"echo","data":-1.5e3,"id":null}"#,
            r#"{"pattern":"echo","data":null,"id":"x"}"#,
            r#"{"pattern":"echo","data":"}","id":"x"}"#,
            r#"{"pattern":"echo","data":[{"a":[1,{"b":"]}"}]},[],{}],"id":"x"}"#,
            // NestJS 12 (and Switchboard) clients: metadata between data and id.
            r#"{"pattern":{"cmd":"add"},"data":{"a":1},"metadata":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","sb-timeout-ms":"29999"},"id":"7"}"#,
            r#"{"pattern":"evt","data":[1],"metadata":{"k":"}\"{"}}"#,
            r#"{"pattern":"echo","data":1,"metadata":{},"id":"x"}"#,
            // Other orders and JSON's whitespace.
            r#"{"data":1,"pattern":"echo","id":"x"}"#,
            r#"{"id":"a1","metadata":{"traceparent":"00-1-2-01"},"pattern":{"cmd":"add"},"data":{"a":1}}"#,
            r#"{ "pattern":"echo","data":1,"id":"x"}"#,
            " {\n  \"pattern\" : \"echo\" ,\r\n\t\"data\": [1, 2] , \"id\" : 7 \n} ",
            r#"{"pattern":"echo","data":1,"id":"x","metadata":{"a":"b"}}"#,
            r#"{"pattern":"echo","data":1,"id":"x"} "#,
            r#"{"pattern":"echo","data":true,"id":false}"#,
            r#"{"id":"x"}"#,
            r#"{}"#,
            r#"{ }"#,
        ];
        for case in cases {
            let fast = Packet::split(case).unwrap_or_else(|| panic!("fast path takes {case}"));
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
            r#"{"pattern":"echo","data":1,"id":"a","id":"b"}"#,
            r#"{"pattern":"echo","data":1,"other":2,"id":"x"}"#,
            r#"{"pattern":"x","d\u0061ta":7}"#,
            r#"{"pattern":"echo","data":1,"id":"x",}"#,
            r#"{,"pattern":"echo"}"#,
            r#"{"pattern" "echo"}"#,
            r#"{"pattern":"echo""data":1}"#,
            r#"{"pattern":"echo","data":1,"id":"x"}}"#,
            r#"{"pattern":"echo","data":1,"id":"x"} x"#,
            r#"{"pattern":"echo","data":1"#,
            r#"{"pattern":"echo","data":1,"metadata":{"a":"b",},"id":"x"}"#,
            r#"{"pattern":"echo","data":1,"metadata":{"a":tru},"id":"x"}"#,
            r#"{"pattern":"echo","data":1,"id":{"n":1}}"#,
            r#"{"pattern":"echo","data":1,"id":01}"#,
            r#"{"pattern":"echo","data":tru,"id":"x"}"#,
            r#"{"pattern":"echo","data":1,"id":"\q"}"#,
            r#"{"pattern":"echo","data":1,"id":"\u12"}"#,
        ] {
            assert!(Packet::split(other).is_none(), "{other}");
        }
    }

    /// Random packets of the four request keys, in any order, some repeated, with random
    /// whitespace and values (some invalid): whatever the fast path takes, serde_json reads
    /// alike; what serde_json refuses, the fast path refuses too; and a packet with no repeated
    /// key that serde_json reads is taken by the fast path.
    #[test]
    fn any_order_and_whitespace_agree_with_serde() {
        const KEYS: [&str; 4] = ["pattern", "data", "metadata", "id"];
        const SCALARS: [&str; 12] = [
            r#""x""#,
            r#""a\"b\u00e9""#,
            "7",
            "-0.5e3",
            "true",
            "null",
            "tru",
            "01",
            r#""\q""#,
            "1.",
            "-",
            r#""é""#,
        ];
        const NESTED: [&str; 5] = [
            r#"{"cmd":"add"}"#,
            "[1,[2,{}]]",
            r#"{"a":"}"}"#,
            "{}",
            r#"{"k":"v","n":1}"#,
        ];
        const SPACE: [&str; 5] = ["", "", " ", "\n\t", "\r\n "];
        let space = || SPACE[fastrand::usize(..SPACE.len())];
        for _ in 0..20_000 {
            let mut keys: Vec<&str> = (0..fastrand::usize(0..6)).map(|_| KEYS[fastrand::usize(..4)]).collect();
            fastrand::shuffle(&mut keys);
            let fields: Vec<String> = keys
                .iter()
                .map(|&k| {
                    let value = match (k, fastrand::bool()) {
                        ("id", _) | (_, false) => SCALARS[fastrand::usize(..SCALARS.len())],
                        (_, true) => NESTED[fastrand::usize(..NESTED.len())],
                    };
                    format!(r#"{}"{k}"{}:{}{value}{}"#, space(), space(), space(), space())
                })
                .collect();
            let text = format!("{}{{{}{}}}{}", space(), fields.join(","), space(), space());
            let fast = Packet::split(&text);
            let slow = serde_json::from_str::<Packet<'_>>(&text);
            match (&fast, &slow) {
                (Some(f), Ok(s)) => assert_eq!(
                    (f.pattern, f.data, f.id, f.metadata),
                    (s.pattern, s.data, s.id, s.metadata),
                    "{text}"
                ),
                (Some(_), Err(e)) => panic!("the fast path took what serde_json refuses ({e}): {text}"),
                (None, Ok(_)) => {
                    let mut unique = keys.clone();
                    unique.sort();
                    unique.dedup();
                    assert!(
                        unique.len() < keys.len(),
                        "the fast path left a plain packet to serde_json: {text}"
                    );
                }
                (None, Err(_)) => {}
            }
        }
    }

    #[test]
    fn non_objects_and_garbage_are_told_apart() {
        assert!(matches!(Packet::parse(br#""abc""#), Err(PacketError::NotAnObject)));
        assert!(matches!(Packet::parse(b"{nope"), Err(PacketError::InvalidJson(_))));
        assert!(matches!(Packet::parse(b""), Err(PacketError::InvalidJson(_))));
    }
}
