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
    Many(BoxStream<'static, ReplyItem>),
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
        T: Serialize,
    {
        Self::one(async move { encode(&fut.await) })
    }

    /// A reply from a fallible handler's future.
    pub fn from_result<F, T, E>(fut: F) -> Self
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize,
        E: Into<RpcError>,
    {
        Self::one(async move {
            match fut.await {
                Ok(v) => encode(&v),
                Err(e) => ReplyItem::Error(e.into()),
            }
        })
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

impl Stream for Reply {
    type Item = ReplyItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<ReplyItem>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| match &mut this.items {
            Items::One(fut) => fut.as_mut().poll(cx).map(|item| {
                this.done = true;
                Some(item)
            }),
            Items::Many(items) => items.as_mut().poll_next(cx),
        }));
        match polled {
            Ok(Poll::Ready(Some(ReplyItem::Error(e)))) => {
                this.done = true;
                Poll::Ready(Some(ReplyItem::Error(e)))
            }
            Ok(Poll::Ready(None)) => {
                this.done = true;
                Poll::Ready(None)
            }
            Ok(other) => other,
            Err(_) => {
                // A panicked future must not be polled again.
                this.done = true;
                let handler = this.handler.map_or_else(|| "?".to_owned(), |h| h.location());
                tracing::error!(%handler, "handler panicked");
                Poll::Ready(Some(ReplyItem::Error(RpcError::internal())))
            }
        }
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
