//! How an `async fn` becomes a handler: the erased [`HandlerFn`], its input [`Inbound`] and
//! its output [`Reply`].
//!
//! The attribute macros generate, for every handler, a plain `fn(Inbound) -> Reply` that
//! decodes the payload synchronously (straight from the received frame), calls the user's
//! function and turns its output into a [`Reply`].

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::error::RpcError;

/// The type-erased entry point of a handler.
pub type HandlerFn = fn(Inbound) -> Reply;

/// A message on its way to a handler: the payload as JSON bytes (borrowed from the received
/// frame, not copied) and its [`Context`].
#[derive(Clone)]
pub struct Inbound {
    buf: Bytes,
    data: Option<Range<usize>>,
    ctx: Context,
}

impl Inbound {
    /// A message whose payload is the JSON text `data[range]`, or absent (`None`).
    pub fn new(buf: Bytes, data: Option<Range<usize>>, ctx: Context) -> Self {
        Inbound { buf, data, ctx }
    }

    /// The payload's JSON text; `null` when the sender left `data` out.
    pub fn payload_json(&self) -> &[u8] {
        match &self.data {
            Some(r) => &self.buf[r.clone()],
            None => b"null",
        }
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

    /// Consumes the message, keeping its context.
    pub fn into_context(self) -> Context {
        self.ctx
    }
}

impl fmt::Debug for Inbound {
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
/// a [`ReplyStream`] is as many as it yields (NestJS's Observable replies).
pub struct Reply(BoxStream<'static, ReplyItem>);

impl Reply {
    /// A reply that completes without a value.
    pub fn empty() -> Self {
        Reply(stream::empty().boxed())
    }

    /// A reply of one error.
    pub fn error(err: RpcError) -> Self {
        Reply(stream::once(async move { ReplyItem::Error(err) }).boxed())
    }

    /// A reply of one value, from a handler's future.
    pub fn from_value<F, T>(fut: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
        T: Serialize,
    {
        Reply(stream::once(async move { encode(&fut.await) }).boxed())
    }

    /// A reply from a fallible handler's future.
    pub fn from_result<F, T, E>(fut: F) -> Self
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize,
        E: Into<RpcError>,
    {
        Reply(
            stream::once(async move {
                match fut.await {
                    Ok(v) => encode(&v),
                    Err(e) => ReplyItem::Error(e.into()),
                }
            })
            .boxed(),
        )
    }

    /// A completion-only reply from a handler returning `()`.
    pub fn from_unit<F>(fut: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Reply(stream::once(fut).filter_map(|()| async { None }).boxed())
    }

    /// A multi-value reply from a handler returning a stream of values.
    pub fn from_stream<F, S, T>(fut: F) -> Self
    where
        F: Future<Output = S> + Send + 'static,
        S: Stream<Item = Result<T, RpcError>> + Send + 'static,
        T: Serialize,
    {
        let items = stream::once(fut).flatten().map(|item| match item {
            Ok(v) => encode(&v),
            Err(e) => ReplyItem::Error(e),
        });
        Reply(until_error(items).boxed())
    }

    /// Wraps an already-built item stream.
    pub fn from_items(items: impl Stream<Item = ReplyItem> + Send + 'static) -> Self {
        Reply(until_error(items).boxed())
    }

    /// The reply's items.
    pub fn into_stream(self) -> BoxStream<'static, ReplyItem> {
        self.0
    }
}

impl Stream for Reply {
    type Item = ReplyItem;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<ReplyItem>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reply")
    }
}

/// An error is terminal: nothing after it is sent.
fn until_error(items: impl Stream<Item = ReplyItem> + Send + 'static) -> impl Stream<Item = ReplyItem> + Send {
    let mut done = false;
    items.take_while(move |item| {
        let keep = !done;
        done |= matches!(item, ReplyItem::Error(_));
        std::future::ready(keep)
    })
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> ReplyItem {
    match crate::json::to_vec(value) {
        Ok(v) => ReplyItem::Value(Bytes::from(v)),
        Err(e) => {
            tracing::error!(error = %e, "a handler's reply could not be serialised");
            ReplyItem::Error(RpcError::internal())
        }
    }
}

/// A stream of reply values: the return type of a handler that answers with several values
/// (NestJS's Observable replies).
///
/// ```ignore
/// #[message_pattern("count")]
/// async fn count(n: u32) -> ReplyStream<u32> {
///     ReplyStream::iter(1..=n)
/// }
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
