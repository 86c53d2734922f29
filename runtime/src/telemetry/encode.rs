//! OTLP export bodies written straight from [`SpanRecord`]s: the protobuf
//! `ExportTraceServiceRequest` (OTLP/gRPC and `http/protobuf`) and its OTLP JSON mapping
//! (`http/json`). No message structs in between: a span costs its bytes in the output and
//! nothing else.
//!
//! Field numbers are those of opentelemetry-proto's `trace.proto`, `common.proto`,
//! `resource.proto` and `trace_service.proto`. Fields are written in field-number order, as
//! prost writes them, so the bytes are the ones prost would write for the same message.

use std::sync::Arc;

use super::record::{SpanContext, SpanRecord};

/// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`: the next bit says whether the parent is remote.
const HAS_IS_REMOTE: u32 = 0x100;
/// `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`.
const IS_REMOTE: u32 = 0x200;
/// `STATUS_CODE_ERROR`.
const STATUS_ERROR: u8 = 2;

// Protobuf wire types.
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// A one-byte tag (fields 1 to 15).
const fn tag(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

/// `Span.flags` is field 16: its tag is a two-byte varint.
const SPAN_FLAGS_TAG: [u8; 2] = {
    let tag = (16 << 3) | I32 as u32;
    [(tag & 0x7f) as u8 | 0x80, (tag >> 7) as u8]
};

/// The export's fixed part: the resource's attributes and the instrumentation scope, encoded once.
pub(crate) struct Encoder {
    /// `ResourceSpans.resource`, tag and length included.
    pb_resource: Vec<u8>,
    /// `ScopeSpans.scope`, tag and length included.
    pb_scope: Vec<u8>,
    /// The JSON request up to its first span.
    json_head: Vec<u8>,
}

/// What closes the JSON request after its last span.
const JSON_TAIL: &[u8] = b"]}]}]}";

impl Encoder {
    /// `resource`: the resource's attributes (service.name, telemetry.sdk.*, OTEL_RESOURCE_ATTRIBUTES …)
    /// as string key/values. The scope is named "switchboard" with version env!("CARGO_PKG_VERSION").
    pub(crate) fn new(resource: &[(String, String)]) -> Encoder {
        let attributes = || resource.iter().map(|(k, v)| (k.as_str(), Value::Str(v)));

        let len: usize = attributes().map(|(k, v)| field_len(key_value_len(k, v))).sum();
        let mut pb_resource = vec![0; field_len(len)];
        let mut pb = Pb::new(&mut pb_resource);
        pb.byte(tag(1, LEN));
        pb.varint(len as u64);
        for (key, value) in attributes() {
            pb.key_value(tag(1, LEN), key, value);
        }
        pb.end();

        let (name, version) = ("switchboard", env!("CARGO_PKG_VERSION"));
        let len = str_len(name) + str_len(version);
        let mut pb_scope = vec![0; field_len(len)];
        let mut pb = Pb::new(&mut pb_scope);
        pb.byte(tag(1, LEN));
        pb.varint(len as u64);
        pb.str_field(tag(1, LEN), name);
        pb.str_field(tag(2, LEN), version);
        pb.end();

        let mut json_head = Vec::with_capacity(256);
        json_head.extend_from_slice(br#"{"resourceSpans":[{"resource":{"attributes":["#);
        for (i, (key, value)) in attributes().enumerate() {
            if i > 0 {
                json_head.push(b',');
            }
            let mut escaped = Vec::with_capacity(key.len());
            json_str_body(&mut escaped, key);
            json_key_value(&mut json_head, &escaped, value);
        }
        json_head.extend_from_slice(br#"]},"scopeSpans":[{"scope":{"name":"#);
        json_str(&mut json_head, name);
        json_head.extend_from_slice(br#","version":"#);
        json_str(&mut json_head, version);
        json_head.extend_from_slice(br#"},"spans":["#);

        Encoder {
            pb_resource,
            pb_scope,
            json_head,
        }
    }

    /// Appends to `out` one ExportTraceServiceRequest (protobuf) holding `spans` (one ResourceSpans,
    /// one ScopeSpans).
    pub(crate) fn protobuf(&self, spans: &[SpanRecord], out: &mut Vec<u8>) {
        // The two enclosing lengths depend on every span: the spans are written first, after room
        // for the longest head, and the head then goes just before them (one move of the body to
        // close the gap, cheaper than sizing every span twice).
        const MAX_VARINT: usize = 10;
        let start = out.len();
        let room = 1 + MAX_VARINT + self.pb_resource.len() + 1 + MAX_VARINT + self.pb_scope.len();
        out.resize(start + room, 0);

        let mut spans_len = 0;
        for span in spans {
            let len = span.pb_len();
            let at = out.len();
            out.resize(at + field_len(len), 0);
            let mut pb = Pb::new(&mut out[at..]);
            pb.byte(tag(2, LEN)); // ScopeSpans.spans
            pb.varint(len as u64);
            span.pb_write(&mut pb);
            pb.end();
            spans_len += field_len(len);
        }

        let scope_spans = self.pb_scope.len() + spans_len;
        let resource_spans = self.pb_resource.len() + field_len(scope_spans);
        let head = field_len(resource_spans) - spans_len;
        let mut pb = Pb::new(&mut out[start + room - head..start + room]);
        pb.byte(tag(1, LEN)); // ExportTraceServiceRequest.resource_spans
        pb.varint(resource_spans as u64);
        pb.bytes(&self.pb_resource);
        pb.byte(tag(2, LEN)); // ResourceSpans.scope_spans
        pb.varint(scope_spans as u64);
        pb.bytes(&self.pb_scope);
        pb.end();
        out.copy_within(start + room - head.., start);
        out.truncate(start + head + spans_len);
    }

    /// Appends to `out` the same request as OTLP JSON.
    pub(crate) fn json(&self, spans: &[SpanRecord], out: &mut Vec<u8>) {
        // An estimate (escapes may add more): a span's text is about 600 bytes besides these two.
        let text: usize = spans.iter().map(|s| 640 + s.name.len() + s.destination.len()).sum();
        out.reserve(self.json_head.len() + text + JSON_TAIL.len());
        out.extend_from_slice(&self.json_head);
        for (i, span) in spans.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            span.json_write(out);
        }
        out.extend_from_slice(JSON_TAIL);
    }
}

/// An attribute's value, as the records have them.
#[derive(Clone, Copy)]
enum Value<'a> {
    Str(&'a str),
    Int(i64),
}

/// Runs `$body` for each of a span's attributes, in their order, with `$key` and `$value` bound.
/// A macro rather than a closure so that each key is a literal where it is copied and sized: the
/// copies and lengths compile to constants.
macro_rules! for_each_attribute {
    ($span:expr, |$key:ident, $value:ident| $body:expr) => {{
        let span: &SpanRecord = $span;
        {
            let ($key, $value) = ("messaging.system", Value::Str(span.system));
            $body;
        }
        {
            let ($key, $value) = ("messaging.destination.name", Value::Str(&span.destination));
            $body;
        }
        {
            let ($key, $value) = ("messaging.operation.type", Value::Str(span.kind.operation()));
            $body;
        }
        {
            let ($key, $value) = ("messaging.operation.name", Value::Str(span.kind.operation_name()));
            $body;
        }
        if let Some(kind) = span.kind.switchboard_kind() {
            let ($key, $value) = ("switchboard.kind", Value::Str(kind));
            $body;
        }
        if let Some(size) = span.body_size {
            let size = i64::try_from(size).unwrap_or(i64::MAX);
            let ($key, $value) = ("messaging.message.body.size", Value::Int(size));
            $body;
        }
        if let Some(error) = span.error_type {
            let ($key, $value) = ("error.type", Value::Str(error));
            $body;
        }
    }};
}

impl SpanRecord {
    fn is_root(&self) -> bool {
        self.parent_span_id == [0; 8]
    }

    /// OTLP's `Span.flags`: the W3C flags and whether the parent is remote (a root has no parent:
    /// "has is_remote" with "not remote").
    fn otlp_flags(&self) -> u32 {
        let remote = if self.parent_is_remote && !self.is_root() {
            IS_REMOTE
        } else {
            0
        };
        self.flags as u32 | HAS_IS_REMOTE | remote
    }

    /// `operation` and `name` joined by a space, without joining them.
    fn name_len(&self) -> usize {
        self.kind.operation().len() + 1 + self.name.len()
    }

    /// The encoded length of the `Span` message (its fields, without its own tag and length).
    fn pb_len(&self) -> usize {
        let mut len = 18 + 10; // trace_id, span_id
        len += opt_str_len(trace_state(&self.trace_state));
        if !self.is_root() {
            len += 10;
        }
        len += field_len(self.name_len());
        len += 2; // kind, never 0
        len += fixed64_len(self.start) + fixed64_len(self.end);
        for_each_attribute!(self, |key, value| len += field_len(key_value_len(key, value)));
        if let Some(link) = &self.link {
            len += field_len(link_len(link));
        }
        if self.error_type.is_some() {
            len += 4; // status: tag, length, code's tag and value
        }
        len += SPAN_FLAGS_TAG.len() + 4;
        len
    }

    fn pb_write(&self, pb: &mut Pb<'_>) {
        pb.bytes_field(tag(1, LEN), &self.trace_id);
        pb.bytes_field(tag(2, LEN), &self.span_id);
        pb.opt_str_field(tag(3, LEN), trace_state(&self.trace_state));
        if !self.is_root() {
            pb.bytes_field(tag(4, LEN), &self.parent_span_id);
        }
        pb.byte(tag(5, LEN));
        pb.varint(self.name_len() as u64);
        pb.bytes(self.kind.operation().as_bytes());
        pb.byte(b' ');
        pb.bytes(self.name.as_bytes());
        pb.bytes(&[tag(6, VARINT), self.kind as u8]);
        pb.fixed64_field(tag(7, I64), self.start);
        pb.fixed64_field(tag(8, I64), self.end);
        for_each_attribute!(self, |key, value| pb.key_value(tag(9, LEN), key, value));
        if let Some(link) = &self.link {
            pb.byte(tag(13, LEN));
            pb.varint(link_len(link) as u64);
            pb.bytes_field(tag(1, LEN), &link.trace_id);
            pb.bytes_field(tag(2, LEN), &link.span_id);
            pb.opt_str_field(tag(3, LEN), trace_state(&link.trace_state));
            pb.byte(tag(6, I32));
            pb.bytes(&link_flags(link).to_le_bytes());
        }
        if self.error_type.is_some() {
            pb.bytes(&[tag(15, LEN), 2, tag(3, VARINT), STATUS_ERROR]);
        }
        pb.bytes(&SPAN_FLAGS_TAG);
        pb.bytes(&self.otlp_flags().to_le_bytes());
    }

    fn json_write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"traceId":"#);
        json_hex(out, &self.trace_id);
        out.extend_from_slice(br#","spanId":"#);
        json_hex(out, &self.span_id);
        if !self.is_root() {
            out.extend_from_slice(br#","parentSpanId":"#);
            json_hex(out, &self.parent_span_id);
        }
        let state = trace_state(&self.trace_state);
        if !state.is_empty() {
            out.extend_from_slice(br#","traceState":"#);
            json_str(out, state);
        }
        out.extend_from_slice(br#","flags":"#);
        put_decimal(out, self.otlp_flags().into());
        out.extend_from_slice(br#","name":""#);
        out.extend_from_slice(self.kind.operation().as_bytes());
        out.push(b' ');
        json_str_body(out, &self.name);
        out.extend_from_slice(br#"","kind":"#);
        out.push(b'0' + self.kind as u8); // 2 to 5
        out.extend_from_slice(br#","startTimeUnixNano":""#);
        put_decimal(out, self.start);
        out.extend_from_slice(br#"","endTimeUnixNano":""#);
        put_decimal(out, self.end);
        out.extend_from_slice(br#"","attributes":["#);
        for_each_attribute!(self, |key, value| {
            json_key_value(out, key.as_bytes(), value);
            out.push(b',')
        });
        // There are always attributes: the last comma becomes the closing bracket.
        if let Some(last) = out.last_mut() {
            *last = b']';
        }
        if let Some(link) = &self.link {
            out.extend_from_slice(br#","links":[{"traceId":"#);
            json_hex(out, &link.trace_id);
            out.extend_from_slice(br#","spanId":"#);
            json_hex(out, &link.span_id);
            let state = trace_state(&link.trace_state);
            if !state.is_empty() {
                out.extend_from_slice(br#","traceState":"#);
                json_str(out, state);
            }
            out.extend_from_slice(br#","flags":"#);
            put_decimal(out, link_flags(link).into());
            out.extend_from_slice(b"}]");
        }
        if self.error_type.is_some() {
            out.extend_from_slice(br#","status":{"code":2}"#);
        }
        out.push(b'}');
    }
}

fn trace_state(state: &Option<Arc<str>>) -> &str {
    state.as_deref().unwrap_or("")
}

fn link_flags(link: &SpanContext) -> u32 {
    link.flags as u32 | HAS_IS_REMOTE | if link.remote { IS_REMOTE } else { 0 }
}

/// The encoded length of a `Span.Link` with no attributes.
fn link_len(link: &SpanContext) -> usize {
    18 + 10 + opt_str_len(trace_state(&link.trace_state)) + 5
}

// Protobuf.

#[inline(always)]
fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least 1 (prost's formula).
    ((((v | 1).leading_zeros() ^ 63) * 9 + 73) / 64) as usize
}

/// A length-delimited field with a one-byte tag whose contents take `len` bytes.
#[inline(always)]
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

#[inline(always)]
fn str_len(s: &str) -> usize {
    field_len(s.len())
}

/// Proto3 leaves out empty strings.
#[inline(always)]
fn opt_str_len(s: &str) -> usize {
    if s.is_empty() { 0 } else { str_len(s) }
}

/// Proto3 leaves out zeros (a time is never 0, but the length must match what is written).
fn fixed64_len(v: u64) -> usize {
    if v == 0 { 0 } else { 9 }
}

/// `AnyValue`'s length: a oneof's field is written even when it holds its default.
#[inline(always)]
fn any_value_len(value: Value<'_>) -> usize {
    match value {
        Value::Str(s) => str_len(s),
        Value::Int(n) => 1 + varint_len(n as u64),
    }
}

#[inline(always)]
fn key_value_len(key: &str, value: Value<'_>) -> usize {
    opt_str_len(key) + field_len(any_value_len(value))
}

/// Protobuf output of a size known beforehand, written through a cursor into a slice: no capacity
/// check and length store per write as with a `Vec`. Writing past the end (a wrong length) panics.
struct Pb<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Pb<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Pb { buf, at: 0 }
    }

    /// Every byte written: the lengths computed were right.
    fn end(self) {
        debug_assert_eq!(self.at, self.buf.len(), "encoded length");
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.buf[self.at] = b;
        self.at += 1;
    }

    #[inline(always)]
    fn bytes(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    #[inline(always)]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    /// A length-delimited field with a one-byte tag.
    #[inline(always)]
    fn bytes_field(&mut self, tag: u8, bytes: &[u8]) {
        self.byte(tag);
        self.varint(bytes.len() as u64);
        self.bytes(bytes);
    }

    #[inline(always)]
    fn str_field(&mut self, tag: u8, s: &str) {
        self.bytes_field(tag, s.as_bytes());
    }

    #[inline(always)]
    fn opt_str_field(&mut self, tag: u8, s: &str) {
        if !s.is_empty() {
            self.str_field(tag, s);
        }
    }

    #[inline(always)]
    fn fixed64_field(&mut self, tag: u8, v: u64) {
        if v != 0 {
            self.byte(tag);
            self.bytes(&v.to_le_bytes());
        }
    }

    /// A `KeyValue` as field `field_tag` of its parent.
    #[inline(always)]
    fn key_value(&mut self, field_tag: u8, key: &str, value: Value<'_>) {
        self.byte(field_tag);
        self.varint(key_value_len(key, value) as u64);
        self.opt_str_field(tag(1, LEN), key);
        self.byte(tag(2, LEN));
        self.varint(any_value_len(value) as u64);
        match value {
            Value::Str(s) => self.str_field(tag(1, LEN), s),
            Value::Int(n) => {
                self.byte(tag(3, VARINT));
                self.varint(n as u64);
            }
        }
    }
}

// JSON.

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Ids are lowercase hex strings in OTLP JSON (not base64 as protobuf's JSON mapping has bytes).
/// Written to the stack first: one copy of a constant size.
#[inline(always)]
fn json_hex<const N: usize>(out: &mut Vec<u8>, bytes: &[u8; N]) {
    const { assert!(N <= 16) };
    let mut text = [b'"'; 34];
    for (i, &b) in bytes.iter().enumerate() {
        text[1 + 2 * i] = HEX[(b >> 4) as usize];
        text[2 + 2 * i] = HEX[(b & 15) as usize];
    }
    out.extend_from_slice(&text[..2 * N + 2]);
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    json_str_body(out, s);
    out.push(b'"');
}

/// `s` escaped for the inside of a JSON string: quote, backslash and control characters; the rest
/// (non-ASCII included) stays as it is.
fn json_str_body(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Nearly always nothing to escape: one branch-free (vectorised) pass, then one copy.
    let plain = bytes
        .iter()
        .fold(true, |plain, &b| plain & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.extend_from_slice(bytes);
        return;
    }
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        match b {
            b'"' => out.extend_from_slice(br#"\""#),
            b'\\' => out.extend_from_slice(br"\\"),
            _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]),
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
}

/// `{"key":"…","value":{"stringValue":"…"}}`, `key` already escaped; an int is a string of its
/// digits (a 64-bit integer).
#[inline(always)]
fn json_key_value(out: &mut Vec<u8>, key: &[u8], value: Value<'_>) {
    out.extend_from_slice(br#"{"key":""#);
    out.extend_from_slice(key);
    match value {
        Value::Str(s) => {
            out.extend_from_slice(br#"","value":{"stringValue":"#);
            json_str(out, s);
        }
        Value::Int(n) => {
            out.extend_from_slice(br#"","value":{"intValue":""#);
            if n < 0 {
                out.push(b'-');
            }
            put_decimal(out, n.unsigned_abs());
            out.push(b'"');
        }
    }
    out.extend_from_slice(b"}}");
}

/// Four digits per 64-bit division, two per table look-up (the times have 19 digits).
fn put_decimal(out: &mut Vec<u8>, mut v: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let pair = |n: u32| {
        let n = n as usize * 2;
        [PAIRS[n], PAIRS[n + 1]]
    };
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while v >= 10_000 {
        let four = (v % 10_000) as u32;
        v /= 10_000;
        i -= 4;
        buf[i..i + 2].copy_from_slice(&pair(four / 100));
        buf[i + 2..i + 4].copy_from_slice(&pair(four % 100));
    }
    let mut v = v as u32;
    if v >= 100 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(&pair(v % 100));
        v /= 100;
    }
    if v >= 10 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(&pair(v));
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message as _;

    use super::*;
    use crate::telemetry::record::{SAMPLED, SpanKind};

    const VERSION: &str = env!("CARGO_PKG_VERSION");

    fn resource() -> Vec<(String, String)> {
        vec![
            ("service.name".into(), "users".into()),
            ("telemetry.sdk.language".into(), "rust".into()),
            ("deployment.environment".into(), "a \"quoted\" é\n".into()),
        ]
    }

    fn record(kind: SpanKind, name: &'static str, destination: &str) -> SpanRecord {
        SpanRecord {
            trace_id: [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
            ],
            span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            parent_span_id: [0; 8],
            parent_is_remote: false,
            flags: SAMPLED,
            trace_state: None,
            kind,
            name: Cow::Borrowed(name),
            destination: Cow::Owned(destination.to_owned()),
            system: "tcp",
            body_size: None,
            error_type: None,
            link: None,
            start: 1_700_000_000_123_456_789,
            end: 1_700_000_000_124_000_001,
        }
    }

    /// A root CLIENT span with a body size; a SERVER span with a remote parent, a trace state and
    /// an error; a CONSUMER span with a link; a destination with non-ASCII text.
    fn records() -> Vec<SpanRecord> {
        let mut client = record(SpanKind::Client, "users.get", "users.get");
        client.body_size = Some(12);

        let mut server = record(SpanKind::Server, "users.get", "users.get");
        server.span_id = [1, 2, 3, 4, 5, 6, 7, 8];
        server.parent_span_id = [0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1];
        server.parent_is_remote = true;
        server.trace_state = Some("vendor=a,other=b".into());
        server.error_type = Some("timeout");

        let mut consumer = record(SpanKind::Consumer, "user.created", "user.created");
        consumer.trace_id = [0xff; 16];
        consumer.span_id = [9; 8];
        consumer.flags = 0;
        consumer.system = "nats";
        consumer.link = Some(SpanContext {
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
            flags: SAMPLED,
            trace_state: Some("k=v".into()),
            remote: true,
        });

        let mut producer = record(SpanKind::Producer, "commandes.créées", "commandes.créées→日本");
        producer.body_size = Some(300_000);
        producer.link = Some(SpanContext {
            trace_id: [1; 16],
            span_id: [2; 8],
            flags: 0,
            trace_state: None,
            remote: false,
        });

        vec![client, server, consumer, producer]
    }

    fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Any::StringValue(value.into())),
            }),
            key_strindex: 0,
        }
    }

    fn int(key: &str, value: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Any::IntValue(value)),
            }),
            key_strindex: 0,
        }
    }

    /// Checks a decoded request against the records it was encoded from, field by field.
    fn check(request: &ExportTraceServiceRequest, records: &[SpanRecord]) {
        assert_eq!(request.resource_spans.len(), 1);
        let resource_spans = &request.resource_spans[0];
        assert_eq!(resource_spans.schema_url, "");
        let attributes: Vec<_> = resource().iter().map(|(k, v)| string(k, v)).collect();
        assert_eq!(resource_spans.resource.as_ref().unwrap().attributes, attributes);
        assert_eq!(resource_spans.scope_spans.len(), 1);
        let scope_spans = &resource_spans.scope_spans[0];
        let scope = scope_spans.scope.as_ref().unwrap();
        assert_eq!((scope.name.as_str(), scope.version.as_str()), ("switchboard", VERSION));
        assert!(scope.attributes.is_empty());
        assert_eq!(scope_spans.spans.len(), records.len());
        for (span, record) in scope_spans.spans.iter().zip(records) {
            check_span(span, record);
        }
    }

    fn check_span(span: &Span, record: &SpanRecord) {
        assert_eq!(span.trace_id, record.trace_id);
        assert_eq!(span.span_id, record.span_id);
        let root = record.parent_span_id == [0; 8];
        if root {
            assert!(span.parent_span_id.is_empty());
        } else {
            assert_eq!(span.parent_span_id, record.parent_span_id);
        }
        assert_eq!(span.trace_state, record.trace_state.as_deref().unwrap_or(""));
        let remote = if record.parent_is_remote && !root { 0x200 } else { 0 };
        assert_eq!(span.flags, record.flags as u32 | 0x100 | remote);
        assert_eq!(span.name, format!("{} {}", record.kind.operation(), record.name));
        assert_eq!(span.kind, record.kind as i32);
        assert_eq!(span.start_time_unix_nano, record.start);
        assert_eq!(span.end_time_unix_nano, record.end);

        let mut attributes = vec![
            string("messaging.system", record.system),
            string("messaging.destination.name", &record.destination),
            string("messaging.operation.type", record.kind.operation()),
            string("messaging.operation.name", record.kind.operation_name()),
        ];
        if let Some(kind) = record.kind.switchboard_kind() {
            attributes.push(string("switchboard.kind", kind));
        }
        if let Some(size) = record.body_size {
            attributes.push(int("messaging.message.body.size", size as i64));
        }
        if let Some(error) = record.error_type {
            attributes.push(string("error.type", error));
        }
        assert_eq!(span.attributes, attributes);

        match &record.error_type {
            Some(_) => {
                let status = span.status.as_ref().unwrap();
                assert_eq!((status.code, status.message.as_str()), (2, ""));
            }
            None => assert_eq!(span.status, None),
        }

        match &record.link {
            None => assert!(span.links.is_empty()),
            Some(link) => {
                assert_eq!(span.links.len(), 1);
                let got = &span.links[0];
                assert_eq!(got.trace_id, link.trace_id);
                assert_eq!(got.span_id, link.span_id);
                assert_eq!(got.trace_state, link.trace_state.as_deref().unwrap_or(""));
                assert_eq!(
                    got.flags,
                    link.flags as u32 | 0x100 | if link.remote { 0x200 } else { 0 }
                );
                assert!(got.attributes.is_empty());
            }
        }
        assert!(span.events.is_empty());
        assert_eq!(
            (
                span.dropped_attributes_count,
                span.dropped_events_count,
                span.dropped_links_count
            ),
            (0, 0, 0)
        );
    }

    /// Where two encodings first differ, rather than both in full.
    fn same_bytes(prost: &[u8], ours: &[u8]) {
        let at = prost
            .iter()
            .zip(ours)
            .position(|(a, b)| a != b)
            .unwrap_or(prost.len().min(ours.len()));
        assert!(
            prost == ours,
            "differ at byte {at} (lengths {} and {}): prost {:?}, ours {:?}",
            prost.len(),
            ours.len(),
            &prost[at..(at + 16).min(prost.len())],
            &ours[at..(at + 16).min(ours.len())],
        );
    }

    fn protobuf(records: &[SpanRecord]) -> (Vec<u8>, ExportTraceServiceRequest) {
        let mut out = Vec::new();
        Encoder::new(&resource()).protobuf(records, &mut out);
        let request = ExportTraceServiceRequest::decode(out.as_slice()).unwrap();
        (out, request)
    }

    fn json(records: &[SpanRecord]) -> (Vec<u8>, ExportTraceServiceRequest) {
        let mut out = Vec::new();
        Encoder::new(&resource()).json(records, &mut out);
        let request = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
        (out, request)
    }

    #[test]
    fn protobuf_decodes_field_by_field() {
        let records = records();
        let (bytes, request) = protobuf(&records);
        check(&request, &records);
        // prost writes fields in the same order and sizes them the same way: the same bytes.
        assert_eq!(request.encoded_len(), bytes.len());
        same_bytes(&request.encode_to_vec(), &bytes);

        // The mapping spelled out, not derived as `check` does.
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans[0].name, "send users.get");
        assert_eq!((spans[0].kind, spans[0].flags), (3, 0x101));
        assert_eq!(spans[0].attributes[4], int("messaging.message.body.size", 12));
        assert_eq!(spans[1].name, "process users.get");
        assert_eq!((spans[1].kind, spans[1].flags), (2, 0x301));
        assert_eq!(spans[1].parent_span_id, [0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1]);
        assert_eq!(spans[1].trace_state, "vendor=a,other=b");
        assert_eq!(spans[1].status.as_ref().map(|s| s.code), Some(2));
        assert_eq!(spans[1].attributes[5], string("error.type", "timeout"));
        assert_eq!((spans[2].kind, spans[2].flags), (5, 0x100));
        assert_eq!(
            (spans[2].links[0].flags, spans[2].links[0].trace_state.as_str()),
            (0x301, "k=v")
        );
        assert_eq!(spans[3].name, "send commandes.créées");
        assert_eq!(
            spans[3].attributes[1],
            string("messaging.destination.name", "commandes.créées→日本")
        );
        assert_eq!(spans[3].links[0].flags, 0x100);
    }

    #[test]
    fn appends_after_what_is_there() {
        // A gRPC frame's header, say, written before the message.
        let (records, encoder) = (records(), Encoder::new(&resource()));
        let (mut pb, mut json) = (b"head!".to_vec(), b"head!".to_vec());
        encoder.protobuf(&records, &mut pb);
        encoder.json(&records, &mut json);
        assert_eq!((&pb[..5], &json[..5]), (&b"head!"[..], &b"head!"[..]));
        same_bytes(&pb[5..], &protobuf(&records).0);
        assert_eq!(json[5..], self::json(&records).0);
    }

    #[test]
    fn a_root_is_never_remote() {
        let mut root = record(SpanKind::Server, "r", "r");
        root.parent_is_remote = true;
        let records = [root];
        let span = &protobuf(&records).1.resource_spans[0].scope_spans[0].spans[0];
        assert!(span.parent_span_id.is_empty());
        assert_eq!(span.flags, 0x101);
    }

    #[test]
    fn json_decodes_field_by_field() {
        let records = records();
        let (text, request) = json(&records);
        check(&request, &records);
        assert_eq!(request, protobuf(&records).1);

        // The OTLP JSON specifics, which a lenient reader would not catch.
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        let spans = &value["resourceSpans"][0]["scopeSpans"][0]["spans"];
        assert_eq!(spans[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(spans[0]["spanId"], "00f067aa0ba902b7");
        assert!(spans[0].get("parentSpanId").is_none());
        assert!(spans[0].get("traceState").is_none());
        assert!(spans[0].get("status").is_none());
        assert!(spans[0].get("links").is_none());
        assert_eq!(spans[0]["kind"], 3);
        assert_eq!(spans[0]["flags"], 0x101);
        assert_eq!(spans[0]["startTimeUnixNano"], "1700000000123456789");
        assert_eq!(spans[0]["attributes"][4]["value"]["intValue"], "12");
        assert_eq!(spans[1]["parentSpanId"], "deadbeef00000001");
        assert_eq!(spans[1]["flags"], 0x301);
        assert_eq!(spans[1]["status"], serde_json::json!({"code": 2}));
        assert_eq!(spans[2]["links"][0]["traceId"], "abababababababababababababababab");
        assert_eq!(spans[2]["links"][0]["flags"], 0x301);
    }

    #[test]
    fn an_empty_batch_is_a_valid_request() {
        let (bytes, request) = protobuf(&[]);
        check(&request, &[]);
        same_bytes(&request.encode_to_vec(), &bytes);
        let (_, from_json) = json(&[]);
        check(&from_json, &[]);
    }

    #[test]
    fn many_spans_round_trip() {
        let records: Vec<_> = (0..1000u32)
            .map(|i| {
                let mut r = records()[i as usize % 4].clone();
                r.span_id = u64::from(i + 1).to_be_bytes();
                r.start += u64::from(i) * 1_000;
                r.end = r.start + u64::from(i);
                // Destinations of every length around the one-byte varint's limit.
                r.destination = Cow::Owned("d".repeat(i as usize % 300));
                r
            })
            .collect();
        let (bytes, request) = protobuf(&records);
        check(&request, &records);
        assert_eq!(request.encoded_len(), bytes.len());
        same_bytes(&request.encode_to_vec(), &bytes);
        let (_, from_json) = json(&records);
        check(&from_json, &records);
        assert_eq!(from_json, request);
    }

    #[test]
    fn any_text_survives_json_escaping() {
        let text = "a\"b\\c\nd\u{1}e\u{1f}\u{7f}\u{202e}f😀g\t";
        let mut r = record(SpanKind::Server, "route", text);
        r.trace_state = Some("x=\"\\".into());
        let records = [r];
        let (raw, request) = json(&records);
        check(&request, &records);
        let raw = std::str::from_utf8(&raw).unwrap();
        assert!(raw.contains(r#"a\"b\\c\u000ad\u0001e\u001f"#), "{raw}");
        assert!(raw.contains("\u{7f}\u{202e}f😀g\\u0009"), "{raw}");
        let (bytes, request) = protobuf(&records);
        check(&request, &records);
        same_bytes(&request.encode_to_vec(), &bytes);
    }

    #[test]
    fn varints_and_decimals() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, 1 << 56, u64::MAX] {
            let mut out = vec![0; varint_len(v)];
            let mut pb = Pb::new(&mut out);
            pb.varint(v);
            pb.end();
            assert_eq!(prost::encoding::decode_varint(&mut out.as_slice()).unwrap(), v);
            let mut out = Vec::new();
            put_decimal(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
        for v in (0..100_000).chain([999_999, 1_000_000, 10u64.pow(18), 10u64.pow(19) - 1, 10u64.pow(19)]) {
            let mut out = Vec::new();
            put_decimal(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
    }

    /// `cargo test --release -p switchboard --features telemetry --lib encode -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_ns_per_span() {
        use std::hint::black_box;
        use std::time::Instant;

        let base = records();
        let batch: Vec<_> = (0..512).map(|i| base[i % base.len()].clone()).collect();
        let encoder = Encoder::new(&resource());
        let mut out = Vec::new();
        type Encode = fn(&Encoder, &[SpanRecord], &mut Vec<u8>);
        let formats: [(&str, Encode); 2] = [("protobuf", Encoder::protobuf), ("json", Encoder::json)];
        for (format, encode) in formats {
            let rounds = 2_000;
            for _ in 0..100 {
                out.clear();
                encode(&encoder, black_box(&batch), &mut out);
            }
            let at = Instant::now();
            for _ in 0..rounds {
                out.clear();
                encode(&encoder, black_box(&batch), &mut out);
                black_box(&out);
            }
            let ns = at.elapsed().as_nanos() as f64 / (rounds * batch.len()) as f64;
            println!(
                "{format}: {ns:.1} ns per span, {} bytes per span",
                out.len() / batch.len()
            );
        }

        // For scale: prost encoding the same request from its message structs.
        out.clear();
        encoder.protobuf(&batch, &mut out);
        let request = ExportTraceServiceRequest::decode(out.as_slice()).unwrap();
        let rounds = 200;
        let at = Instant::now();
        for _ in 0..rounds {
            out.clear();
            black_box(&request).encode(&mut out).unwrap();
            black_box(&out);
        }
        let ns = at.elapsed().as_nanos() as f64 / (rounds * batch.len()) as f64;
        println!("prost, from message structs: {ns:.1} ns per span");
    }
}
