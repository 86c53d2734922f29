//! The NATS client: one connection, one wildcard inbox subscription for every call's replies.
//!
//! Each request gets its own reply subject `<inbox>.<id>` (a fresh subject per request, as
//! NestJS uses), all served by one `<inbox>.*` subscription, so a call costs one publish.
//! The reply subject also carries the id, which is how the server's 503 no-responders status
//! (which has no body) finds its call.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::{Event, StatusCode, Subject};
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;

use super::{NatsOptions, to_nats_headers, wire_size};
use crate::error::{Error, NO_MESSAGE_HANDLER, Result, RpcError};
use crate::service::{Outbound, Replies};
use crate::transport::{ClientOptions, ClientTransport, Endpoint};
use crate::wire::nestjs::packet::encode_request;
use crate::wire::nestjs::pending::Pending;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The client side of the NATS transport.
pub struct NatsClient {
    opts: NatsOptions,
    connect_timeout: Duration,
    pending: Arc<Pending>,
    current: RwLock<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<Backoff>,
}

impl std::fmt::Debug for NatsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsClient").field("url", &self.opts.url).finish()
    }
}

/// Failed first connections, so that calls to a dead broker fail fast instead of each
/// waiting for a connect timeout.
#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

/// A live connection and its reply subscription.
struct Conn {
    nats: async_nats::Client,
    /// `_INBOX.<nuid>.`: a request's reply subject is this plus its id.
    inbox: String,
    jetstream: Option<async_nats::jetstream::Context>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl NatsClient {
    /// A client for `nats://host:port[?jetstream=<stream>]`; connects on first use.
    pub(crate) fn new(ep: &Endpoint, defaults: &ClientOptions) -> Result<Self> {
        let opts = NatsOptions::parse(ep)?;
        Ok(NatsClient {
            pending: Pending::new(opts.url.clone()),
            opts,
            connect_timeout: defaults.connect_timeout,
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(Backoff::default()),
        })
    }

    async fn conn(&self) -> Result<Arc<Conn>> {
        if let Some(conn) = self.current.read().expect("conn lock").clone() {
            return Ok(conn);
        }
        // Boxed: held inline, the connecting future (kilobytes) would make every call's
        // future as big, and each call allocate and copy that much.
        Box::pin(self.connect_now()).await
    }

    /// Connects, unless another call did meanwhile or the last attempt failed too recently.
    async fn connect_now(&self) -> Result<Arc<Conn>> {
        let mut backoff = self.connecting.lock().await;
        if let Some(conn) = self.current.read().expect("conn lock").clone() {
            return Ok(conn);
        }
        if let Some(at) = backoff.retry_at.filter(|at| *at > Instant::now()) {
            return Err(Error::Connect {
                addr: self.opts.url.clone(),
                reason: format!(
                    "{} (next attempt in {} ms)",
                    backoff.last_error,
                    at.saturating_duration_since(Instant::now()).as_millis()
                ),
            });
        }
        match self.open().await {
            Ok(conn) => {
                *backoff = Backoff::default();
                let conn = Arc::new(conn);
                *self.current.write().expect("conn lock") = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                backoff.failures += 1;
                backoff.retry_at = Some(
                    Instant::now()
                        + MIN_BACKOFF
                            .saturating_mul(1 << backoff.failures.min(6))
                            .min(MAX_BACKOFF),
                );
                backoff.last_error = match &e {
                    Error::Connect { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                Err(e)
            }
        }
    }

    async fn open(&self) -> Result<Conn> {
        let pending = Arc::downgrade(&self.pending);
        let url = self.opts.url.clone();
        let nats = self
            .opts
            .connect(self.connect_timeout, move |event| match event {
                // Replies to calls in flight may be lost with the connection: fail them now
                // rather than at their deadlines. New calls wait for the reconnect.
                Event::Disconnected => {
                    tracing::warn!(url = %url, "disconnected from the NATS server; reconnecting");
                    if let Some(pending) = pending.upgrade() {
                        pending.fail_all(|| Error::ConnectionClosed { addr: url.clone() });
                    }
                }
                Event::Connected => tracing::info!(url = %url, "connected to the NATS server"),
                Event::SlowConsumer(sid) => {
                    crate::signal::dropped("nats", "slow_consumer");
                    if let Some(held_back) = super::SLOW_CONSUMER.allow() {
                        tracing::warn!(url = %url, sid, held_back, "NATS slow consumer: replies were dropped (async-nats's buffer of the reply inbox was full)")
                    }
                }
                other => tracing::debug!(url = %url, event = %other, "NATS event"),
            })
            .await?;
        let inbox = format!("{}.", nats.new_inbox());
        let mut replies = nats.subscribe(format!("{inbox}*")).await.map_err(|e| Error::Connect {
            addr: self.opts.url.clone(),
            reason: format!("cannot subscribe to the reply inbox: {e}"),
        })?;
        let pending = self.pending.clone();
        let prefix = inbox.clone();
        let reader = tokio::spawn(async move {
            while let Some(msg) = replies.next().await {
                let Some(id) = msg.subject.as_str().strip_prefix(prefix.as_str()) else {
                    continue;
                };
                if msg.status == Some(StatusCode::NO_RESPONDERS) {
                    // Nobody subscribes to the subject: the server answered for the handlers.
                    pending.fail(id, RpcError::from_value(NO_MESSAGE_HANDLER.into()));
                } else if msg.status.is_some() && msg.payload.is_empty() {
                    tracing::debug!(status = ?msg.status, "ignoring a status message on the reply inbox");
                } else {
                    pending.deliver_for(id, &msg.payload);
                }
            }
        });
        let jetstream = self
            .opts
            .jetstream
            .as_ref()
            .map(|_| async_nats::jetstream::new(nats.clone()));
        // The first subscription must be in place before the first request goes out.
        nats.flush().await.map_err(|e| Error::Connect {
            addr: self.opts.url.clone(),
            reason: e.to_string(),
        })?;
        Ok(Conn {
            nats,
            inbox,
            jetstream,
            reader,
        })
    }

    /// Connected now, or a clear error (while async-nats reconnects, messages would only be
    /// buffered, and the caller would wait for its deadline).
    fn check_connected(&self, conn: &Conn) -> Result<()> {
        match conn.nats.connection_state() {
            State::Connected => Ok(()),
            state => Err(Error::Connect {
                addr: self.opts.url.clone(),
                reason: format!("not connected to the NATS server ({state:?}); reconnecting"),
            }),
        }
    }

    /// A failed publish of `msg`, whose packet and headers weigh `size` bytes.
    fn publish_error(&self, conn: &Conn, route: &str, size: usize, e: async_nats::PublishError) -> Error {
        match e.kind() {
            async_nats::client::PublishErrorKind::MaxPayloadExceeded => Error::TooLarge {
                context: format!(
                    "message to `{}` for the NATS server at {} (raise the server's max_payload)",
                    route, self.opts.url
                ),
                size,
                limit: conn.nats.server_info().max_payload,
            },
            async_nats::client::PublishErrorKind::InvalidSubject => Error::broker(
                format!(
                    "`{}` is not a valid NATS subject (no whitespace or empty tokens)",
                    route
                ),
                e,
            ),
            _ => Error::ConnectionClosed {
                addr: self.opts.url.clone(),
            },
        }
    }

    /// Sends a request; taking the client by `Arc`, the future is the whole call (a wrapper
    /// around it would hold `msg` a second time).
    async fn request(self: Arc<Self>, msg: Outbound) -> Result<Replies> {
        let conn = self.conn().await?;
        // Registered before the state check: a drop after the check fails this call too.
        let (id, rx) = self.pending.register(msg.route.clone())?;
        self.check_connected(&conn)?;
        let reply = format!("{}{id}", conn.inbox);
        let payload = body(&msg, Some(&id));
        let size = wire_size(&msg.headers, payload.len());
        let headers = to_nats_headers(&msg.headers);
        // Only the route is kept: each call allocates this future.
        let (route, subject) = subject(msg);
        // One publish future in this one, whichever it is.
        let sent = match headers {
            Some(h) => conn
                .nats
                .publish_with_reply_and_headers(subject, reply, h, payload)
                .left_future(),
            None => conn.nats.publish_with_reply(subject, reply, payload).right_future(),
        }
        .await;
        sent.map_err(|e| self.publish_error(&conn, &route, size, e))?;
        Replies::first_of(rx).await
    }

    async fn emit(&self, msg: Outbound) -> Result<()> {
        let conn = self.conn().await?;
        self.check_connected(&conn)?;
        let payload = body(&msg, None);
        let size = wire_size(&msg.headers, payload.len());
        let headers = to_nats_headers(&msg.headers);
        let (route, subject) = subject(msg);
        if let Some(js) = &conn.jetstream {
            // Durable: done once the stream has stored the event.
            let stored = match headers {
                Some(h) => js.publish_with_headers(subject.clone(), h, payload).await,
                None => js.publish(subject.clone(), payload).await,
            };
            let stored = match stored {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            return stored.map(drop).map_err(|e| {
                Error::broker(
                    format!(
                        "JetStream did not store the event on `{subject}`; is there a stream `{}` covering \
                         this subject (a server with the same `jetstream` URL creates it)?",
                        self.opts.jetstream.as_deref().unwrap_or_default()
                    ),
                    e,
                )
            });
        }
        let sent = match headers {
            Some(h) => conn.nats.publish_with_headers(subject, h, payload).await,
            None => conn.nats.publish(subject, payload).await,
        };
        sent.map_err(|e| self.publish_error(&conn, &route, size, e))
    }
}

/// `msg`'s route, and the subject it is published on: a route known at compile time is not
/// copied (a `String` would be, twice).
fn subject(msg: Outbound) -> (Cow<'static, str>, Subject) {
    let subject = match &msg.route {
        Cow::Borrowed(route) => Subject::from_static(route),
        Cow::Owned(route) => Subject::from(route.as_str()),
    };
    (msg.route, subject)
}

fn body(msg: &Outbound, id: Option<&str>) -> Bytes {
    // The caller's headers travel as NATS headers, as NestJS's NatsRecord headers do;
    // Switchboard's own in the packet.
    let own = || msg.headers.iter().filter(|(k, _)| super::own(k));
    let room: usize = own().map(|(k, v)| k.len() + v.len() + 6).sum();
    let mut buf = Vec::with_capacity(msg.pattern.len() + msg.payload.len() + room + 64);
    encode_request(&mut buf, &msg.pattern, &msg.payload, own(), id);
    Bytes::from(buf)
}

impl ClientTransport for NatsClient {
    fn connect(&self) -> BoxFuture<'_, Result<()>> {
        async move { self.conn().await.map(drop) }.boxed()
    }

    fn request(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<Replies>> {
        Box::pin(NatsClient::request(self, msg))
    }

    fn emit(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<()>> {
        async move { NatsClient::emit(&self, msg).await }.boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            // Core NATS publishes are buffered in the client: written once flushed.
            let conn = self.current.read().expect("conn lock").clone();
            match conn {
                Some(conn) => conn
                    .nats
                    .flush()
                    .await
                    .map_err(|e| Error::broker("NATS flush failed", e)),
                None => Ok(()),
            }
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let conn = self.current.write().expect("conn lock").take();
            if let Some(conn) = conn {
                // Events emitted just before close still go out.
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.nats.flush()).await;
            }
            self.pending.close(|| Error::Closed);
        }
        .boxed()
    }
}
