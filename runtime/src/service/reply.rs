//! [`Reply`]: what a service answers to one request or event, and [`ReplyItem`], one packet
//! of it as a transport sends it and a client receives it.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde::Serialize;

use super::Local;
use crate::error::RpcError;

/// One packet of a reply: a JSON value or an error.
#[derive(Debug)]
pub enum ReplyItem {
    /// A value, as JSON text.
    Value(Bytes),
    /// An error; the reply ends with it.
    Error(RpcError),
    /// A value handed back in-process, not encoded (see [`Local`]).
    Local(Local),
    /// A value as one MessagePack value, from a Switchboard peer over `?codec=msgpack`.
    MsgPack(Bytes),
}

impl ReplyItem {
    /// The item with a `Local` value encoded, for transports that send bytes.
    pub(crate) fn encoded(self) -> ReplyItem {
        match self {
            ReplyItem::Local(v) => match v.to_json() {
                Ok(json) => ReplyItem::Value(json),
                Err(e) => {
                    tracing::error!(error = %e, "a handler's reply could not be serialised");
                    ReplyItem::Error(RpcError::internal())
                }
            },
            // Only a reply relayed from a msgpack peer: JSON for a JSON one.
            ReplyItem::MsgPack(v) => match crate::wire::msgpack::msgpack_to_json(&v) {
                Ok(json) => ReplyItem::Value(json),
                Err(e) => {
                    tracing::error!(error = %e, "a MessagePack reply could not be converted to JSON");
                    ReplyItem::Error(RpcError::internal())
                }
            },
            other => other,
        }
    }

    /// The item with its value as MessagePack, for a `?codec=msgpack` connection: a `Local`
    /// value encoded straight, JSON converted.
    pub(crate) fn packed(self) -> ReplyItem {
        let packed = match self {
            ReplyItem::Local(v) => v.to_msgpack(),
            ReplyItem::Value(json) => crate::wire::msgpack::json_to_msgpack(&json),
            other => return other,
        };
        match packed {
            Ok(v) => ReplyItem::MsgPack(v),
            Err(e) => {
                tracing::error!(error = %e, "a handler's reply could not be serialised");
                ReplyItem::Error(RpcError::internal())
            }
        }
    }
}

impl PartialEq for ReplyItem {
    /// Values compare by their JSON; a `Local` or MessagePack value by its JSON too.
    fn eq(&self, other: &Self) -> bool {
        let json = |item: &ReplyItem| match item {
            ReplyItem::Value(v) => Some(v.clone()),
            ReplyItem::Local(v) => v.to_json().ok(),
            ReplyItem::MsgPack(v) => crate::wire::msgpack::msgpack_to_json(v).ok(),
            ReplyItem::Error(_) => None,
        };
        match (self, other) {
            (ReplyItem::Error(a), ReplyItem::Error(b)) => a == b,
            (a, b) => json(a).is_some() && json(a) == json(b),
        }
    }
}

/// A handler's answer: zero or more values, or an error, then completion.
///
/// A plain value is one item; `()` is none (completion only, as NestJS sends for `void`);
/// a stream is as many as it yields (NestJS's Observable replies). An error ends the reply.
/// For an event the reply says whether the listeners succeeded. Layers may look at it
/// or answer one of their own:
///
/// ```
/// use switchboard::{Reply, RpcError};
///
/// let denied = Reply::error(RpcError::new("forbidden"));
/// assert_eq!(denied.as_error().and_then(RpcError::message), Some("forbidden"));
/// let value = Reply::value(&serde_json::json!({"result": 8.0}));
/// assert_eq!(value.as_json().map(|b| &b[..]), Some(&br#"{"result":8}"#[..]));
/// ```
pub struct Reply(Inner);

enum Inner {
    Empty,
    Value(Bytes),
    /// A short value's JSON, held in the reply itself: no allocation of its own.
    Short(Short),
    Error(RpcError),
    Stream(BoxStream<'static, ReplyItem>),
    Local(Local),
    /// Nobody handles the pattern: transports answer with NestJS's own packet for it.
    NoHandler,
    /// A stream that has ended (or a single item already taken).
    Done,
}

impl Reply {
    /// Completion without a value.
    pub fn empty() -> Self {
        Reply(Inner::Empty)
    }

    /// NestJS's answer for a pattern nobody handles (`There is no matching message handler
    /// defined in the remote service.`), which transports send in NestJS's own shape.
    pub fn no_handler() -> Self {
        Reply(Inner::NoHandler)
    }

    /// True for [`Reply::no_handler`].
    pub fn is_no_handler(&self) -> bool {
        matches!(self.0, Inner::NoHandler)
    }

    /// One error.
    pub fn error(err: RpcError) -> Self {
        Reply(Inner::Error(err))
    }

    /// One value, already JSON text.
    pub fn json(json: Bytes) -> Self {
        Reply(Inner::Value(json))
    }

    /// One value, serialised as JavaScript would write it; a value that cannot be
    /// serialised is logged and answered with NestJS's `Internal server error`.
    pub fn value<T: Serialize + ?Sized>(value: &T) -> Self {
        // Written where it is returned from: bytes just stored and then moved would make the
        // move wait for them.
        let mut reply = Reply(Inner::Short(Short::EMPTY));
        let Inner::Short(short) = &mut reply.0 else {
            unreachable!("made short above")
        };
        match write_json(value, short, Bytes::copy_from_slice) {
            Ok(None) => {}
            Ok(Some(long)) => reply.0 = Inner::Value(long),
            Err(e) => {
                tracing::error!(error = %e, "a handler's reply could not be serialised");
                reply.0 = Inner::Error(RpcError::internal());
            }
        }
        reply
    }

    /// One value handed back in-process, not encoded (for a sender whose context
    /// [takes local replies](super::Context::takes_local_reply)).
    pub fn local<T: Serialize + Send + 'static>(value: T) -> Self {
        Reply(Inner::Local(Local::new(value)))
    }

    /// Any number of packets; the reply ends after the first error. A panic while the
    /// stream is polled ends it with NestJS's `Internal server error`.
    pub fn stream(items: impl Stream<Item = ReplyItem> + Send + 'static) -> Self {
        Reply(Inner::Stream(Guarded { items: items.boxed() }.boxed()))
    }

    /// Values that may fail part-way, serialised one by one.
    pub fn values<T: Serialize>(values: impl Stream<Item = Result<T, RpcError>> + Send + 'static) -> Self {
        Self::stream(values.map(|v| match v {
            Ok(v) => encode(&v),
            Err(e) => ReplyItem::Error(e),
        }))
    }

    /// The error, when the reply is one error.
    pub fn as_error(&self) -> Option<&RpcError> {
        match &self.0 {
            Inner::Error(e) => Some(e),
            _ => None,
        }
    }

    /// True when the reply is one error.
    pub fn is_error(&self) -> bool {
        matches!(self.0, Inner::Error(_))
    }

    /// The value's JSON, when the reply is one value.
    pub fn as_json(&self) -> Option<&[u8]> {
        match &self.0 {
            Inner::Value(v) => Some(v),
            Inner::Short(v) => Some(v.as_bytes()),
            _ => None,
        }
    }

    /// True once nothing more will come, so a transport can mark the last value as final
    /// without polling again.
    pub fn is_done(&self) -> bool {
        matches!(self.0, Inner::Done | Inner::Empty)
    }

    /// True for a reply of several packets (a stream).
    pub fn is_stream(&self) -> bool {
        matches!(self.0, Inner::Stream(_))
    }

    /// Runs the reply to its end without sending anything (an event's listener); true when
    /// it ended without an error.
    pub async fn drain(mut self) -> Result<(), RpcError> {
        let mut result = Ok(());
        while let Some(item) = self.next().await {
            if let ReplyItem::Error(e) = item {
                result = Err(e);
            }
        }
        result
    }
}

impl Stream for Reply {
    type Item = ReplyItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<ReplyItem>> {
        let item = match std::mem::replace(&mut self.0, Inner::Done) {
            Inner::Empty | Inner::Done => None,
            Inner::Value(v) => Some(ReplyItem::Value(v)),
            Inner::Short(v) => Some(ReplyItem::Value(Bytes::copy_from_slice(v.as_bytes()))),
            Inner::Error(e) => Some(ReplyItem::Error(e)),
            Inner::NoHandler => Some(ReplyItem::Error(RpcError::no_handler())),
            Inner::Local(v) => Some(ReplyItem::Local(v)),
            Inner::Stream(mut items) => {
                let polled = items.poll_next_unpin(cx);
                if !matches!(polled, Poll::Ready(None) | Poll::Ready(Some(ReplyItem::Error(_)))) {
                    self.0 = Inner::Stream(items);
                }
                return polled;
            }
        };
        Poll::Ready(item)
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Empty => f.write_str("Reply::Empty"),
            Inner::Value(v) => write!(f, "Reply::Value({} bytes)", v.len()),
            Inner::Short(v) => write!(f, "Reply::Value({} bytes)", v.as_bytes().len()),
            Inner::Error(e) => write!(f, "Reply::Error({e:?})"),
            Inner::Stream(_) => f.write_str("Reply::Stream"),
            Inner::NoHandler => f.write_str("Reply::NoHandler"),
            Inner::Local(v) => write!(f, "Reply::{v:?}"),
            Inner::Done => f.write_str("Reply::Done"),
        }
    }
}

impl From<RpcError> for Reply {
    fn from(err: RpcError) -> Self {
        Reply::error(err)
    }
}

/// A stream whose panics end it with an error instead of unwinding into the transport.
struct Guarded {
    items: BoxStream<'static, ReplyItem>,
}

impl Stream for Guarded {
    type Item = ReplyItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<ReplyItem>> {
        let items = &mut self.items;
        match std::panic::catch_unwind(AssertUnwindSafe(|| items.poll_next_unpin(cx))) {
            Ok(polled) => polled,
            Err(panic) => {
                tracing::error!(panic = %crate::error::panic_message(&*panic), "a reply stream panicked");
                // A panicked stream is not polled again.
                self.items = futures_util::stream::empty().boxed();
                Poll::Ready(Some(ReplyItem::Error(RpcError::internal())))
            }
        }
    }
}

/// Serialises a reply value (see [`to_json`]); a value that cannot be serialised is logged
/// and becomes NestJS's `Internal server error`.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> ReplyItem {
    match to_json(value) {
        Ok(v) => ReplyItem::Value(v),
        Err(e) => {
            tracing::error!(error = %e, "a handler's reply could not be serialised");
            ReplyItem::Error(RpcError::internal())
        }
    }
}

/// Serialises a value as JavaScript would write it, into a `Bytes` that owns its buffer
/// alone, so dropping it touches no reference count (values split off a shared buffer
/// cost two atomic operations each, more than the copy of a small one).
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Bytes> {
    let mut short = Short::EMPTY;
    let long = write_json(value, &mut short, Bytes::copy_from_slice)?;
    Ok(long.unwrap_or_else(|| Bytes::copy_from_slice(short.as_bytes())))
}

/// Serialises a value as JavaScript would write it: JSON that fits a [`Short`] is written
/// straight into `short` (`None` then), longer JSON into a per-thread buffer that is handed
/// to `long`.
fn write_json<T: Serialize + ?Sized, R>(
    value: &T,
    short: &mut Short,
    long: impl FnOnce(&[u8]) -> R,
) -> serde_json::Result<Option<R>> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        // A `Serialize` impl that itself encodes a value gets a buffer of its own.
        let Ok(mut scratch) = scratch.try_borrow_mut() else {
            let json = crate::json::to_vec(value)?;
            return Ok(match Short::new(&json) {
                Some(s) => {
                    *short = s;
                    None
                }
                None => Some(long(&json)),
            });
        };
        scratch.clear();
        let out = crate::json::write_into(
            ShortFirst {
                short,
                long: &mut scratch,
            },
            value,
        )?;
        // What spills is never empty, and the buffer starts empty.
        let result = (!out.long.is_empty()).then(|| long(out.long));
        if scratch.capacity() > 64 * 1024 {
            // One huge value does not keep its buffer's size for the thread's life.
            *scratch = Vec::new();
        }
        Ok(result)
    })
}

/// Where [`write_json`] writes: a [`Short`] until the JSON outgrows it, then `long` (empty
/// until then).
struct ShortFirst<'a> {
    short: &'a mut Short,
    long: &'a mut Vec<u8>,
}

impl ShortFirst<'_> {
    #[cold]
    fn spill(&mut self, buf: &[u8]) {
        if self.long.is_empty() {
            self.long.extend_from_slice(self.short.as_bytes());
        }
        self.long.extend_from_slice(buf);
    }
}

impl std::io::Write for ShortFirst<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.long.is_empty() && self.short.push(buf) {
            return Ok(());
        }
        self.spill(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The longest JSON a [`Reply`] holds in itself: as much as fits beside its other shapes.
const SHORT: usize = 62;

/// A short value's JSON, inline.
#[derive(Clone, Copy)]
struct Short {
    len: u8,
    bytes: [u8; SHORT],
}

impl Short {
    const EMPTY: Short = Short {
        len: 0,
        bytes: [0; SHORT],
    };

    fn new(json: &[u8]) -> Option<Short> {
        let mut short = Short::EMPTY;
        short.push(json).then_some(short)
    }

    /// Appends `more` if it fits. The short pieces a serializer writes (a brace, a key, a
    /// number) are copied by fixed-size moves, not a call to `memcpy` each.
    #[inline(always)]
    fn push(&mut self, more: &[u8]) -> bool {
        let (at, n) = (usize::from(self.len), more.len());
        let Some(to) = self.bytes.get_mut(at..at + n) else {
            return false;
        };
        match n {
            0 => {}
            // Overlapping moves cover every length in each range.
            1..=3 => {
                to[0] = more[0];
                to[n / 2] = more[n / 2];
                to[n - 1] = more[n - 1];
            }
            4..=7 => {
                to[..4].copy_from_slice(&more[..4]);
                to[n - 4..].copy_from_slice(&more[n - 4..]);
            }
            8..=16 => {
                to[..8].copy_from_slice(&more[..8]);
                to[n - 8..].copy_from_slice(&more[n - 8..]);
            }
            _ => to.copy_from_slice(more),
        }
        self.len += n as u8; // at most SHORT
        true
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_pieces_of_every_length_add_up() {
        let text: Vec<u8> = (0..SHORT as u8).map(|i| b'a' + i % 26).collect();
        for first in 0..=SHORT {
            for second in 0..=SHORT - first {
                let mut short = Short::EMPTY;
                assert!(short.push(&text[..first]) && short.push(&text[first..first + second]));
                assert_eq!(short.as_bytes(), &text[..first + second], "{first} + {second}");
            }
            let mut full = Short::new(&text[..first]).unwrap();
            assert!(!full.push(&vec![b'x'; SHORT - first + 1]), "no room past {SHORT} bytes");
            assert_eq!(full.as_bytes(), &text[..first]);
        }
    }

    #[test]
    fn values_that_outgrow_a_short_are_written_whole() {
        // Spilling in the middle of a piece, and a value serialised inside another's.
        struct Nested(String);
        impl Serialize for Nested {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let inner = to_json(&self.0).map_err(serde::ser::Error::custom)?;
                s.serialize_str(std::str::from_utf8(&inner).unwrap())
            }
        }
        for len in [SHORT - 4, SHORT - 2, SHORT, SHORT + 7, 500] {
            let value = serde_json::json!({ "k": "y".repeat(len), "n": 1.0 });
            let json = to_json(&value).unwrap();
            assert_eq!(
                json,
                serde_json::to_vec(&serde_json::json!({ "k": "y".repeat(len), "n": 1 })).unwrap()
            );
            let nested = to_json(&Nested("z".repeat(len))).unwrap();
            assert_eq!(
                nested,
                serde_json::to_vec(&serde_json::to_string(&"z".repeat(len)).unwrap()).unwrap()
            );
        }
    }

    #[tokio::test]
    async fn short_and_long_values_read_the_same() {
        // Either side of the longest value a reply holds in itself.
        for len in [0, SHORT - 3, SHORT - 2, SHORT - 1, 1000] {
            let value = "x".repeat(len);
            let json = format!("\"{value}\"");
            let mut r = Reply::value(&value);
            assert_eq!(r.as_json(), Some(json.as_bytes()), "{len}");
            assert_eq!(format!("{r:?}"), format!("Reply::Value({} bytes)", json.len()));
            assert_eq!(r.next().await, Some(ReplyItem::Value(Bytes::from(json))), "{len}");
            assert_eq!(r.next().await, None);
        }
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_short_value_held_inline_does_not_make_a_reply_bigger() {
        assert_eq!(std::mem::size_of::<Reply>(), 72);
    }

    #[tokio::test]
    async fn one_value_then_the_end() {
        let mut r = Reply::value(&serde_json::json!({"result": 6.0}));
        assert_eq!(
            r.next().await,
            Some(ReplyItem::Value(Bytes::from_static(br#"{"result":6}"#)))
        );
        assert_eq!(r.next().await, None);
        assert_eq!(Reply::empty().next().await, None);
    }

    #[tokio::test]
    async fn a_stream_ends_at_its_first_error_and_survives_a_panic() {
        let items = futures_util::stream::iter([
            ReplyItem::Value(Bytes::from_static(b"1")),
            ReplyItem::Error(RpcError::new("bad")),
            ReplyItem::Value(Bytes::from_static(b"2")),
        ]);
        let got: Vec<_> = Reply::stream(items).collect().await;
        assert_eq!(got.len(), 2);

        let panicking = futures_util::stream::poll_fn(|_| -> Poll<Option<ReplyItem>> { panic!("handler bug") });
        let got: Vec<_> = Reply::stream(panicking).collect().await;
        assert_eq!(got, [ReplyItem::Error(RpcError::internal())]);
    }

    #[test]
    fn encoded_values_are_cut_from_one_buffer() {
        let a = encode(&1u8);
        let b = encode(&"two");
        assert_eq!(a, ReplyItem::Value(Bytes::from_static(b"1")));
        assert_eq!(b, ReplyItem::Value(Bytes::from_static(b"\"two\"")));
        // Larger than a chunk still works.
        let big = "x".repeat(40_000);
        let ReplyItem::Value(v) = encode(&big) else { panic!() };
        assert_eq!(v.len(), 40_002);
    }

    #[tokio::test]
    async fn drain_reports_the_error() {
        assert!(Reply::empty().drain().await.is_ok());
        assert_eq!(
            Reply::error(RpcError::new("x")).drain().await.unwrap_err().message(),
            Some("x")
        );
    }
}
