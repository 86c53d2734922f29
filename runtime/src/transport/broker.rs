//! The serve loop every broker transport shares, and the NestJS pieces they all need.
//!
//! A broker supplies a [`Source`] of [`Delivery`]s (its subscription, reconnecting by
//! itself); each delivery knows how to become a request, where its reply packets go, and how
//! to acknowledge itself. The loop here does the rest, the same way on every broker: at most
//! `max_in_flight` messages handled at once (the broker keeps the rest), finished work reaped
//! without waking the loop, and on shutdown: stop taking messages, let the ones in flight
//! finish (and reply, and acknowledge), then close.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Endpoint, Shutdown};
use crate::error::{Error, Result};
use crate::service::{Address, Context, Headers, Kind, Payload, Reply, Request, Router};
use crate::wire::nestjs::packet::{Packet, PacketError};
use crate::wire::nestjs::steps::{Step, Steps};

/// The URL parameter that bounds the messages a server handles at once, on every transport.
pub(crate) const MAX_IN_FLIGHT: &str = "max_in_flight";

/// `max_in_flight` from the URL (at least 1), or `default`.
pub(crate) fn max_in_flight(ep: &Endpoint, default: usize) -> Result<usize> {
    Ok(ep
        .param_as::<usize>(MAX_IN_FLIGHT)?
        .unwrap_or(default)
        .clamp(1, Semaphore::MAX_PERMITS))
}

/// A broker's subscription.
pub(crate) trait Source: Send + 'static {
    /// One message as the broker delivered it.
    type Delivery: Delivery;

    /// The next message; `None` once the source has ended (it reconnects by itself and only
    /// ends when it cannot go on).
    fn next(&mut self) -> impl Future<Output = Option<Self::Delivery>> + Send;

    /// Stops taking messages, once shutdown has begun (unsubscribe, cancel the consumer).
    fn stop(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// Closes the connection, once every message in flight is done.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// One message from a broker.
pub(crate) trait Delivery: Send + 'static {
    /// Hands the message to `router` before returning, so that messages reach the router in
    /// the order they were delivered (which fixes the order of a pattern's events), and
    /// returns the rest: waiting for the reply, sending it, acknowledging.
    fn serve(self, router: &Router) -> impl Future<Output = ()> + Send + 'static;
}

/// Serves `source` until `shutdown`, then drains: the loop every broker runs.
pub(crate) async fn serve<S: Source>(mut source: S, router: Router, max_in_flight: usize, mut shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut tasks = JoinSet::new();
    // One wait for the whole loop: a new one per message would register with the signal
    // (a lock) each time.
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        // Reaped here rather than awaited in the selects: a task waiting on `join_next` is
        // woken by every handler that ends, one more wake-up per message.
        while let Some(done) = tasks.try_join_next() {
            log_panic(done);
        }
        // Room for one more message first: while full, messages wait in the broker.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                biased;
                _ = &mut stop => break,
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            },
        };
        let delivery = tokio::select! {
            biased;
            _ = &mut stop => break,
            next = source.next() => match next {
                Some(delivery) => delivery,
                None => break,
            },
        };
        // Boxed here: a delivery's future is kilobytes (it holds the reply's publish), and
        // spawned as it is, it would be copied several times on its way into the task.
        let work = Box::pin(delivery.serve(&router));
        tasks.spawn(async move {
            work.await;
            drop(permit);
        });
    }
    source.stop().await;
    while let Some(done) = tasks.join_next().await {
        log_panic(done);
    }
    source.close().await;
}

fn log_panic(done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        // Handlers' panics are caught by the router; this is the transport's own code.
        tracing::error!(panic = %crate::error::panic_message(&*e.into_panic()), "a message task panicked");
    }
}

/// What a broker received, read as NestJS reads it.
// RabbitMQ and Kafka read messages their own way.
#[cfg_attr(not(any(feature = "redis", feature = "nats", feature = "mqtt")), allow(dead_code))]
pub(crate) enum Inbound {
    /// A NestJS packet: the request or event, and the raw `id` a request's reply echoes.
    Packet { request: Request, id: Option<Bytes> },
    /// Not a NestJS packet (JSON without `pattern` and `data`, or not JSON at all): NestJS
    /// hands it to the channel's event listeners as the data (text when it is not JSON).
    External(Request),
    /// Not text at all.
    Invalid,
}

/// Reads a message that arrived at `address` (a broker routing by channel passes
/// `Router::channel_address(channel)`) as NestJS does. `headers` are the broker's own (NATS,
/// AMQP); the packet's `metadata` is added to them.
#[cfg_attr(not(any(feature = "redis", feature = "nats", feature = "mqtt")), allow(dead_code))]
pub(crate) fn read(body: &Bytes, address: Address, transport: &'static str, headers: Headers) -> Inbound {
    match Packet::parse(body) {
        Ok(mut p) if p.pattern.is_some() || p.data.is_some() => {
            let id = p.id.map(|id| body.slice(Packet::range_in(body, id)));
            let kind = if id.is_some() { Kind::Request } else { Kind::Event };
            let headers = match (headers.is_empty(), p.metadata) {
                // Taken as parsed: no second map.
                (true, _) => p.headers(),
                (false, None) => headers,
                (false, Some(_)) => {
                    let mut headers = headers;
                    headers.extend(p.headers().iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
                    headers
                }
            };
            let payload = p.payload(body);
            let ctx = Context::new(transport, kind).with_headers(headers);
            Inbound::Packet {
                request: Request::new(address, payload, ctx),
                id,
            }
        }
        Ok(_) | Err(PacketError::NotAnObject) => Inbound::External(external(address, body.clone(), transport, headers)),
        Err(PacketError::InvalidJson(_)) => {
            let text = serde_json::to_vec(&*String::from_utf8_lossy(body)).expect("strings serialise");
            Inbound::External(external(address, text.into(), transport, headers))
        }
        Err(PacketError::InvalidUtf8) => Inbound::Invalid,
    }
}

#[cfg_attr(not(any(feature = "redis", feature = "nats", feature = "mqtt")), allow(dead_code))]
fn external(address: Address, data: Bytes, transport: &'static str, headers: Headers) -> Request {
    let ctx = Context::new(transport, Kind::Event).with_headers(headers);
    Request::new(address, Payload::Json(data), ctx)
}

/// Where one request's reply packets go.
pub(crate) trait ReplySink: Send {
    /// Sends one packet of the reply.
    fn send(&mut self, step: Step) -> impl Future<Output = Result<()>> + Send;
}

/// Sends a reply's packets, in NestJS's shape (completion merged into the last value), until
/// the reply ends or a packet cannot be sent.
pub(crate) async fn send_reply(reply: Reply, sink: &mut impl ReplySink) -> Result<()> {
    let mut steps = Steps::new(reply);
    while let Some(step) = steps.next().await {
        sink.send(step).await?;
    }
    Ok(())
}

/// FNV-1a, 64 bits: a digest every replica computes alike, whatever it was built with.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A served route's subscription failed.
#[allow(dead_code)]
pub(crate) fn subscribe_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::broker(format!("cannot subscribe to {what}"), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_external_messages_and_garbage() {
        let body = Bytes::from_static(br#"{"pattern":"sum","data":[1,2],"id":"7","metadata":{"k":"v"}}"#);
        let Inbound::Packet { request, id } = read(&body, Address::static_route("sum"), "redis", Headers::new()) else {
            panic!()
        };
        assert_eq!(id.as_deref(), Some(&b"\"7\""[..]));
        assert_eq!(request.payload().and_then(Payload::json), Some(&b"[1,2]"[..]));
        assert_eq!(request.headers().get("k"), Some("v"));
        assert_eq!(request.kind(), Kind::Request);

        let Inbound::External(ext) = read(
            &Bytes::from_static(b"[1]"),
            Address::static_route("sum"),
            "redis",
            Headers::new(),
        ) else {
            panic!()
        };
        assert_eq!(ext.payload().and_then(Payload::json), Some(&b"[1]"[..]));
        assert_eq!(ext.kind(), Kind::Event);
        let Inbound::External(text) = read(
            &Bytes::from_static(b"hello"),
            Address::static_route("sum"),
            "redis",
            Headers::new(),
        ) else {
            panic!()
        };
        assert_eq!(text.payload().and_then(Payload::json), Some(&b"\"hello\""[..]));
        assert!(matches!(
            read(
                &Bytes::from_static(b"\xff"),
                Address::static_route("sum"),
                "redis",
                Headers::new()
            ),
            Inbound::Invalid
        ));
    }

    #[test]
    fn fnv1a_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
