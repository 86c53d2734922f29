//! [`Outbound`]: a call on its way out of a client, and [`Replies`], the packets that answer it.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use tokio::time::Instant;

use super::{Extensions, Headers, Kind, Local, Reply, ReplyItem};
use crate::error::{Result, RpcError};

/// A request or event on its way out, as client layers and transports see it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Outbound {
    /// Request (a reply is awaited) or event.
    pub kind: Kind,
    /// The pattern as JSON, as it goes in a NestJS packet's `pattern` field.
    pub pattern: Cow<'static, str>,
    /// The normalised route (the channel, subject or topic on brokers).
    pub route: Cow<'static, str>,
    /// The payload as JSON.
    pub payload: Bytes,
    /// Headers (in the packet as NestJS 12's `metadata` on TCP, Redis and MQTT; the
    /// broker's own headers on NATS, RabbitMQ and Kafka, except Switchboard's own `sb-…`
    /// ones, which NATS carries in `metadata`; metadata on gRPC).
    pub headers: Headers,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// Values for the layers below (a layer above puts them here).
    pub extensions: Extensions,
    /// The payload as a value, not encoded (`payload` is then empty): only for a transport
    /// that [takes values](crate::transport::ClientTransport::takes_values) or encodes
    /// payloads itself (`?codec=msgpack`), when no layer is in between.
    pub(crate) local: Option<Local>,
}

impl Outbound {
    /// A call to `route` (whose pattern JSON is `pattern`) with a JSON payload, due at `deadline`.
    pub fn new(
        kind: Kind,
        pattern: impl Into<Cow<'static, str>>,
        route: impl Into<Cow<'static, str>>,
        payload: Bytes,
        deadline: Instant,
    ) -> Self {
        Outbound {
            kind,
            pattern: pattern.into(),
            route: route.into(),
            payload,
            headers: Headers::new(),
            deadline,
            extensions: Extensions::new(),
            local: None,
        }
    }

    /// The payload as a value, if the call carries one instead of JSON (in-process calls).
    pub fn take_local(&mut self) -> Option<Local> {
        self.local.take()
    }

    /// The time left before the deadline (zero once it has passed), for transports that send
    /// it along (gRPC's `grpc-timeout`).
    pub fn timeout(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

impl Clone for Outbound {
    /// A copy (a retry's): a payload carried as a value is encoded in the copy, since a value
    /// is not copied.
    fn clone(&self) -> Self {
        let payload = match &self.local {
            Some(value) => value.to_json().unwrap_or_default(),
            None => self.payload.clone(),
        };
        Outbound {
            kind: self.kind,
            pattern: self.pattern.clone(),
            route: self.route.clone(),
            payload,
            headers: self.headers.clone(),
            deadline: self.deadline,
            extensions: self.extensions.clone(),
            local: None,
        }
    }
}

/// `now + after`, saturating far in the future for "no deadline" durations.
pub(crate) fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The packets of one reply, as a client receives them; ends after the last one. An event's
/// replies are empty.
pub struct Replies(Inner);

enum Inner {
    Empty,
    Reply(Reply),
    Stream(BoxStream<'static, Result<ReplyItem>>),
    /// The first packet, already received, then the rest.
    Started(Option<ReplyItem>, BoxStream<'static, Result<ReplyItem>>),
}

impl Replies {
    /// No packets: an event was accepted, or a request completed without a value.
    pub fn empty() -> Self {
        Replies(Inner::Empty)
    }

    /// Packets as a transport receives them.
    pub fn new(packets: impl Stream<Item = Result<ReplyItem>> + Send + 'static) -> Self {
        Replies(Inner::Stream(packets.boxed()))
    }

    /// Waits for the first of `packets`, for a transport's `request`: it resolves once the
    /// reply has started (or failed, or ended without a packet).
    pub async fn first_of(packets: impl Stream<Item = Result<ReplyItem>> + Send + 'static) -> Result<Replies> {
        let mut packets = packets.boxed();
        match packets.next().await {
            None => Ok(Replies::empty()),
            Some(Err(e)) => Err(e),
            Some(Ok(first)) => Ok(Replies(Inner::Started(Some(first), packets))),
        }
    }

    /// A service's reply, received in-process.
    pub fn from_reply(reply: Reply) -> Self {
        Replies(Inner::Reply(reply))
    }

    /// The error the reply starts with, when its first packet has arrived and is one (what
    /// a layer counts as the call's outcome).
    pub fn first_error(&self) -> Option<&RpcError> {
        match &self.0 {
            Inner::Reply(reply) => reply.as_error(),
            Inner::Started(Some(ReplyItem::Error(e)), _) => Some(e),
            _ => None,
        }
    }
}

impl From<BoxStream<'static, Result<ReplyItem>>> for Replies {
    fn from(packets: BoxStream<'static, Result<ReplyItem>>) -> Self {
        Replies(Inner::Stream(packets))
    }
}

impl Stream for Replies {
    type Item = Result<ReplyItem>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.0 {
            Inner::Empty => Poll::Ready(None),
            Inner::Reply(reply) => reply.poll_next_unpin(cx).map(|item| item.map(Ok)),
            Inner::Stream(s) => s.poll_next_unpin(cx),
            Inner::Started(first, rest) => match first.take() {
                Some(item) => Poll::Ready(Some(Ok(item))),
                None => rest.poll_next_unpin(cx),
            },
        }
    }
}

impl fmt::Debug for Replies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Replies")
    }
}
