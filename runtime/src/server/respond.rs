//! How a handler's return value becomes a [`Reply`]: [`IntoReply`] and [`ReplyStream`].
//!
//! A handler returns `()` (completion only), a `Result` (its `Ok` value, or its error as an
//! [`RpcError`], whatever the `Result` is called), a [`ReplyStream`] or `impl Stream` (several
//! values), a [`Reply`], or any other `serde::Serialize` value (one value).

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use serde::Serialize;

use crate::error::RpcError;
use crate::service::Reply;

/// A return type with a reply shape of its own. Any other `Serialize` value is one value.
pub trait IntoReply {
    /// The reply.
    fn into_reply(self) -> Reply;
}

impl IntoReply for () {
    fn into_reply(self) -> Reply {
        Reply::empty()
    }
}

impl IntoReply for Reply {
    fn into_reply(self) -> Reply {
        self
    }
}

impl<T: Serialize + Send + 'static> IntoReply for ReplyStream<T> {
    fn into_reply(self) -> Reply {
        Reply::values(self)
    }
}

impl<R: IntoReply, E: Into<RpcError>> IntoReply for Result<R, E> {
    fn into_reply(self) -> Reply {
        match self {
            Ok(r) => r.into_reply(),
            Err(e) => Reply::error(e.into()),
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
