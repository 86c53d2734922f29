//! [`Reply`]: what a service answers to one request or event, and [`ReplyItem`], one packet
//! of it as a transport sends it and a client receives it.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::{Bytes, BytesMut};
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
        match to_json(value) {
            Ok(json) => Reply(Inner::Value(json)),
            Err(e) => {
                tracing::error!(error = %e, "a handler's reply could not be serialised");
                Reply(Inner::Error(RpcError::internal()))
            }
        }
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
    pub fn as_json(&self) -> Option<&Bytes> {
        match &self.0 {
            Inner::Value(v) => Some(v),
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

/// Serialises a value as JavaScript would write it. Values go into a per-thread buffer and
/// are split off it, so a small value costs no allocation of its own (the buffer is reused
/// once every value cut from it has been dropped).
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Bytes> {
    const CHUNK: usize = 16 * 1024;
    thread_local! {
        static ARENA: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
    }
    ARENA.with(|arena| {
        // A `Serialize` impl that itself encodes a value gets a buffer of its own.
        let Ok(mut arena) = arena.try_borrow_mut() else {
            return crate::json::to_vec(value).map(Bytes::from);
        };
        if arena.capacity() - arena.len() < 512 {
            arena.reserve(CHUNK);
        }
        let result = crate::json::write_to(Append(&mut arena), value);
        let json = arena.split();
        result.map(|()| json.freeze())
    })
}

/// `io::Write` onto the end of a `BytesMut`: serde_json writes a value in many small pieces,
/// and `bytes`' own writer takes each through `write` and the default `write_all` loop.
struct Append<'a>(&'a mut BytesMut);

impl std::io::Write for Append<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
