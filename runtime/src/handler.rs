//! How an `async fn` becomes a handler: the erased [`HandlerFn`], its input [`Inbound`] and
//! its output [`Reply`].
//!
//! The attribute macros generate, for every handler, a plain `fn(Inbound) -> Reply` that
//! decodes the payload synchronously (straight from the received frame), calls the user's
//! function and turns its output into a [`Reply`].

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::error::RpcError;
use crate::registry::HandlerEntry;

/// The type-erased entry point of a handler. The payload is decoded before it returns, so
/// the reply borrows nothing from the received frame.
pub type HandlerFn = for<'a> fn(Inbound<'a>) -> Reply;

/// A message on its way to a handler: the payload as JSON text, borrowed from the received
/// frame (not copied), and its [`Context`].
#[derive(Clone)]
pub struct Inbound<'a> {
    data: Option<&'a [u8]>,
    ctx: Context,
}

impl<'a> Inbound<'a> {
    /// A message whose payload is the JSON text `data`, or absent (`None`).
    pub fn new(data: Option<&'a [u8]>, ctx: Context) -> Self {
        Inbound { data, ctx }
    }

    /// The payload's JSON text; `null` when the sender left `data` out.
    pub fn payload_json(&self) -> &'a [u8] {
        self.data.unwrap_or(b"null")
    }

    /// The message's context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Decodes the payload into `T`, or explains why it cannot be.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        serde_json::from_slice(self.payload_json())
            .map_err(|e| RpcError::new(format!("invalid payload for pattern {}: {e}", self.ctx.pattern())))
    }

    /// Checks that the payload is JSON, for handlers that take none (the others check it by
    /// decoding it).
    pub fn check_payload(&self) -> Result<(), RpcError> {
        self.decode::<serde::de::IgnoredAny>().map(drop)
    }

    /// Consumes the message, keeping its context.
    pub fn into_context(self) -> Context {
        self.ctx
    }
}

impl fmt::Debug for Inbound<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("pattern", &self.ctx.pattern())
            .field("payload", &String::from_utf8_lossy(self.payload_json()))
            .finish()
    }
}

/// One packet of a reply: a JSON value or an error.
#[derive(Debug, Clone)]
pub enum ReplyItem {
    /// A value, already serialised to JSON.
    Value(Bytes),
    /// An error; the reply ends with it.
    Error(RpcError),
}

/// A handler's answer: zero or more values, or an error, then completion.
///
/// A plain value is one item; `()` is none (completion only, as NestJS sends for `void`);
/// a [`ReplyStream`] is as many as it yields (NestJS's Observable replies). An error ends
/// the reply, and so does a panic in the handler, which becomes NestJS's
/// `Internal server error`.
pub struct Reply {
    items: Items,
    done: bool,
    handler: Option<&'static HandlerEntry>,
}

/// One value (the common case, without stream machinery) or any number.
enum Items {
    One(BoxFuture<'static, ReplyItem>),
    /// A handler's own value, serialised only when it is ready: into the transport's buffer
    /// when it polls with one ([`Reply::poll_into`]), else into a [`ReplyItem`].
    Value(Pin<Box<dyn ValueFuture>>),
    Many(BoxStream<'static, ReplyItem>),
}

/// A handler future whose output is serialised on completion.
trait ValueFuture: Send {
    /// Polls the handler; when it is done, writes its value as JSON into `sink` (returning
    /// `None`) or, without a sink, returns it encoded.
    fn poll_value(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        sink: Option<&mut Vec<u8>>,
    ) -> Poll<Option<ReplyItem>>;
}

pin_project_lite::pin_project! {
    /// A handler's future and what to do with its output.
    struct Valued<F, M> {
        #[pin]
        fut: F,
        map: M,
    }
}

impl<F, M, T> ValueFuture for Valued<F, M>
where
    F: Future + Send,
    M: Fn(F::Output) -> Result<T, RpcError> + Send,
    T: Serialize,
{
    fn poll_value(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        sink: Option<&mut Vec<u8>>,
    ) -> Poll<Option<ReplyItem>> {
        let this = self.project();
        let value = match (this.map)(std::task::ready!(this.fut.poll(cx))) {
            Ok(v) => v,
            Err(e) => return Poll::Ready(Some(ReplyItem::Error(e))),
        };
        Poll::Ready(match sink {
            None => Some(encode(&value)),
            Some(out) => {
                let start = out.len();
                match crate::json::write(out, &value) {
                    Ok(()) => None,
                    Err(e) => {
                        out.truncate(start);
                        tracing::error!(error = %e, "a handler's reply could not be serialised");
                        Some(ReplyItem::Error(RpcError::internal()))
                    }
                }
            }
        })
    }
}

impl Reply {
    fn new(items: impl Stream<Item = ReplyItem> + Send + 'static) -> Self {
        Reply {
            items: Items::Many(items.boxed()),
            done: false,
            handler: None,
        }
    }

    pub(crate) fn one(item: impl Future<Output = ReplyItem> + Send + 'static) -> Self {
        Reply {
            items: Items::One(Box::pin(item)),
            done: false,
            handler: None,
        }
    }

    /// True once the reply has nothing more to give, so a transport can mark the last
    /// value as final without polling again.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// A reply that completes without a value.
    pub fn empty() -> Self {
        Self::new(stream::empty())
    }

    /// A reply of one error.
    pub fn error(err: RpcError) -> Self {
        Self::one(std::future::ready(ReplyItem::Error(err)))
    }

    /// A reply of one value, from a handler's future.
    pub fn from_value<F, T>(fut: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
        T: Serialize + 'static,
    {
        Self::valued(Valued {
            fut,
            map: Ok::<T, RpcError>,
        })
    }

    /// A reply from a fallible handler's future.
    pub fn from_result<F, T, E>(fut: F) -> Self
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize + 'static,
        E: Into<RpcError> + 'static,
    {
        Self::valued(Valued {
            fut,
            map: |r: Result<T, E>| r.map_err(Into::into),
        })
    }

    fn valued(value: impl ValueFuture + 'static) -> Self {
        Reply {
            items: Items::Value(Box::pin(value)),
            done: false,
            handler: None,
        }
    }

    /// True for a handler's single value, which [`poll_into`](Self::poll_into) can serialise
    /// straight into a transport's buffer.
    #[cfg_attr(not(feature = "tcp"), allow(dead_code))]
    pub(crate) fn is_single_value(&self) -> bool {
        matches!(self.items, Items::Value(_))
    }

    /// Polls a reply for its next item; a handler's single value is serialised straight into
    /// `sink` (appended; `Ready(Some(None))`) instead of into an item of its own. Other
    /// replies yield items as [`Stream::poll_next`] does (`Ready(Some(Some(item)))`).
    #[cfg_attr(not(feature = "tcp"), allow(dead_code))]
    pub(crate) fn poll_into(
        &mut self,
        cx: &mut TaskContext<'_>,
        sink: &mut Vec<u8>,
    ) -> Poll<Option<Option<ReplyItem>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !matches!(self.items, Items::Value(_)) {
            return self.poll_next_unpin(cx).map(|item| item.map(Some));
        }
        self.poll_guarded(cx, Some(sink)).map(Some)
    }

    /// A completion-only reply from a handler returning `()`.
    pub fn from_unit<F>(fut: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Self::new(stream::once(fut).filter_map(|()| async { None }))
    }

    /// A multi-value reply from a handler returning a stream of values.
    pub fn from_stream<F, S, T>(fut: F) -> Self
    where
        F: Future<Output = S> + Send + 'static,
        S: Stream<Item = Result<T, RpcError>> + Send + 'static,
        T: Serialize,
    {
        Self::new(stream::once(fut).flatten().map(|item| match item {
            Ok(v) => encode(&v),
            Err(e) => ReplyItem::Error(e),
        }))
    }

    /// Wraps an already-built item stream.
    pub fn from_items(items: impl Stream<Item = ReplyItem> + Send + 'static) -> Self {
        Self::new(items)
    }

    /// Names the handler in the log line of a panic.
    pub(crate) fn of_handler(mut self, entry: &'static HandlerEntry) -> Self {
        self.handler = Some(entry);
        self
    }
}

impl Reply {
    /// Polls the items once, with panics caught (a panic ends the reply as NestJS's
    /// `Internal server error`). `Ready(None)` from a `Value` means the value went to `sink`.
    fn poll_guarded(&mut self, cx: &mut TaskContext<'_>, sink: Option<&mut Vec<u8>>) -> Poll<Option<ReplyItem>> {
        if self.done {
            return Poll::Ready(None);
        }
        let items = &mut self.items;
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| match items {
            Items::One(fut) => fut.as_mut().poll(cx).map(|item| Some(Some(item))),
            Items::Value(fut) => fut.as_mut().poll_value(cx, sink).map(Some),
            Items::Many(items) => items.as_mut().poll_next(cx).map(|item| item.map(Some)),
        }));
        match polled {
            // One value (or one written to the sink): the reply is complete.
            Ok(Poll::Ready(Some(item))) if !matches!(self.items, Items::Many(_)) => {
                self.done = true;
                Poll::Ready(item)
            }
            Ok(Poll::Ready(Some(Some(ReplyItem::Error(e))))) => {
                self.done = true;
                Poll::Ready(Some(ReplyItem::Error(e)))
            }
            Ok(Poll::Ready(Some(item))) => Poll::Ready(item),
            Ok(Poll::Ready(None)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => {
                // A panicked future must not be polled again.
                self.done = true;
                let handler = self.handler.map_or_else(|| "?".to_owned(), |h| h.location());
                tracing::error!(%handler, "handler panicked");
                Poll::Ready(Some(ReplyItem::Error(RpcError::internal())))
            }
        }
    }
}

impl Stream for Reply {
    type Item = ReplyItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<ReplyItem>> {
        self.poll_guarded(cx, None)
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reply")
    }
}

/// Serialises a reply value. Small replies are written into a reused per-thread buffer and
/// copied out at their exact size: one allocation instead of a growing `Vec` plus the
/// shared header `Bytes` adds for a `Vec` with spare capacity.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> ReplyItem {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(256));
    }
    const SMALL: usize = 4096;
    let written = SCRATCH.with(|scratch| {
        // A `Serialize` impl that itself encodes a reply gets a fresh buffer.
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            return crate::json::to_vec(value).map(Bytes::from);
        };
        buf.clear();
        let result = crate::json::write(&mut buf, value);
        result.map(|()| {
            if buf.len() <= SMALL {
                Bytes::copy_from_slice(&buf)
            } else {
                Bytes::from(std::mem::replace(&mut *buf, Vec::with_capacity(256)))
            }
        })
    });
    match written {
        Ok(v) => ReplyItem::Value(v),
        Err(e) => {
            tracing::error!(error = %e, "a handler's reply could not be serialised");
            ReplyItem::Error(RpcError::internal())
        }
    }
}

/// A stream of reply values: the return type of a handler that answers with several values
/// (NestJS's Observable replies).
///
/// ```
/// use switchboard::prelude::*;
///
/// #[message_pattern("count")]
/// async fn count(n: u32) -> ReplyStream<u32> {
///     ReplyStream::iter(1..=n)
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use futures_util::StreamExt;
/// let values: Vec<u32> = count(3).await.map(Result::unwrap).collect().await;
/// assert_eq!(values, [1, 2, 3]);
/// # }
/// ```
pub struct ReplyStream<T>(BoxStream<'static, Result<T, RpcError>>);

impl<T: Send + 'static> ReplyStream<T> {
    /// A stream of values that may fail part-way.
    pub fn new(values: impl Stream<Item = Result<T, RpcError>> + Send + 'static) -> Self {
        ReplyStream(values.boxed())
    }

    /// A stream of values that cannot fail.
    pub fn from_stream(values: impl Stream<Item = T> + Send + 'static) -> Self {
        ReplyStream(values.map(Ok).boxed())
    }

    /// The values of an iterator, sent one by one.
    pub fn iter<I>(values: I) -> Self
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        Self::from_stream(stream::iter(values))
    }

    /// No values: completion only.
    pub fn empty() -> Self {
        ReplyStream(stream::empty().boxed())
    }
}

impl<T> Stream for ReplyStream<T> {
    type Item = Result<T, RpcError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl<T> fmt::Debug for ReplyStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplyStream")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_into(reply: &mut Reply, sink: &mut Vec<u8>) -> Poll<Option<Option<ReplyItem>>> {
        reply.poll_into(&mut TaskContext::from_waker(std::task::Waker::noop()), sink)
    }

    #[test]
    fn a_ready_value_is_written_in_place_and_ends_the_reply() {
        let mut sink = b"prefix:".to_vec();
        let mut reply = Reply::from_value(async { serde_json::json!({"result": 6.0}) });
        assert!(reply.is_single_value());
        assert!(matches!(poll_into(&mut reply, &mut sink), Poll::Ready(Some(None))));
        assert_eq!(sink, br#"prefix:{"result":6}"#);
        assert!(reply.is_done());
        assert!(matches!(poll_into(&mut reply, &mut sink), Poll::Ready(None)));
    }

    #[test]
    fn errors_and_panics_are_items_not_writes() {
        let mut sink = Vec::new();
        let mut failed = Reply::from_result(async { Err::<u32, _>(RpcError::new("bad")) });
        match poll_into(&mut failed, &mut sink) {
            Poll::Ready(Some(Some(ReplyItem::Error(e)))) => assert_eq!(e.message(), Some("bad")),
            other => panic!("{other:?}"),
        }
        let mut panicked = Reply::from_value(async {
            panic!("handler bug");
            #[allow(unreachable_code)]
            1u32
        });
        match poll_into(&mut panicked, &mut sink) {
            Poll::Ready(Some(Some(ReplyItem::Error(e)))) => assert_eq!(e, RpcError::internal()),
            other => panic!("{other:?}"),
        }
        assert!(sink.is_empty());
    }

    #[tokio::test]
    async fn without_a_sink_the_value_is_an_item() {
        let items: Vec<_> = Reply::from_value(async { 7u8 }).collect().await;
        assert!(matches!(&items[..], [ReplyItem::Value(v)] if v.as_ref() == b"7"));
    }
}
