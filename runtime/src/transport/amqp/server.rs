//! The RabbitMQ server: consumes the queue and hands each delivery to the shared broker
//! loop, which routes it by its body's pattern; requests are answered on their `reply_to`,
//! and a message is acked once it has been handled. Reconnects with backoff when the broker
//! goes away.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};

use super::{Options, RETRIES_HEADER, headers_to_metadata};
use crate::error::{Error, NO_MESSAGE_HANDLER, Result};
use crate::service::{Context, Kind, Request, Router};
use crate::transport::broker::{self, Delivery, Handling, ReplySink, Source};
use crate::transport::{Endpoint, Listener, Shutdown};
use crate::wire::nestjs::packet::{Packet, encode_reply_without_id};
use crate::wire::nestjs::steps::Step;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The server side of the RabbitMQ transport: a connection to the broker with the queue
/// declared, ready to consume.
pub struct AmqpListener {
    opts: Options,
    conn: Option<Connection>,
    /// Up while consuming the queue: lowered when the connection is lost, raised again once
    /// consuming again.
    ready: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for AmqpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpListener").field("queue", &self.opts.queue).finish()
    }
}

impl AmqpListener {
    /// Connects to the broker and declares the queue, so that messages sent from now on
    /// wait for the server; fails at once when the broker is unreachable.
    pub async fn bind(ep: &Endpoint) -> Result<Self> {
        let opts = Options::parse(ep, Duration::from_secs(5))?;
        let conn = opts.connect().await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| opts.connect_error(e.to_string()))?;
        opts.declare(&channel)
            .await
            .map_err(|e| opts.connect_error(format!("declaring queue `{}`: {e}", opts.queue)))?;
        let _ = channel.close(200, "OK".into()).await;
        Ok(AmqpListener {
            opts,
            conn: Some(conn),
            ready: tokio::sync::watch::Sender::new(false),
        })
    }
}

impl Listener for AmqpListener {
    fn local_url(&self) -> String {
        self.opts.url.clone()
    }

    fn serve(self: Box<Self>, router: Router, shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        let max_in_flight = self.opts.max_in_flight;
        let source = Consuming {
            opts: self.opts,
            first: self.conn,
            session: None,
            backoff: MIN_BACKOFF,
            ready: self.ready,
        };
        async move {
            broker::serve(source, router, max_in_flight, shutdown).await;
            Ok(())
        }
        .boxed()
    }

    /// Messages sent from `bind` on wait in the queue; this says whether the server
    /// consumes them.
    fn ready(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.ready.subscribe())
    }
}

/// What a message's task needs from its session.
struct Shared {
    opts: Options,
    /// Consumes the queue; replies and acks go here too.
    channel: Channel,
    /// A confirm channel for moving failed events (retries, dead letters): the original
    /// is acked only once the broker has the copy.
    confirm: Channel,
}

struct Session {
    conn: Connection,
    shared: Arc<Shared>,
    consumer: Consumer,
}

async fn open_session(opts: &Options, conn: Option<Connection>) -> std::result::Result<Session, String> {
    let conn = match conn.filter(|c| c.status().connected()) {
        Some(conn) => conn,
        None => opts.connect().await.map_err(|e| e.to_string())?,
    };
    setup(opts, conn).await.map_err(|e| e.to_string())
}

async fn setup(opts: &Options, conn: Connection) -> lapin::Result<Session> {
    let channel = conn.create_channel().await?;
    opts.declare(&channel).await?;
    channel.basic_qos(opts.prefetch, BasicQosOptions::default()).await?;
    let confirm = conn.create_channel().await?;
    confirm.confirm_select(ConfirmSelectOptions::default()).await?;
    if !opts.noack {
        let dlq = QueueDeclareOptions {
            durable: opts.durable,
            ..Default::default()
        };
        confirm
            .queue_declare(opts.dead_letter_queue().into(), dlq, FieldTable::default())
            .await?;
    }
    // Acked by us even with `noack` (as each message is taken): the broker's own no-ack
    // mode ignores `prefetch` and pushes the whole queue, which would wait in our memory.
    let consume = BasicConsumeOptions::default();
    let consumer = channel
        .basic_consume(opts.queue.as_str().into(), "".into(), consume, FieldTable::default())
        .await?;
    Ok(Session {
        conn,
        shared: Arc::new(Shared {
            opts: opts.clone(),
            channel,
            confirm,
        }),
        consumer,
    })
}

/// The server's consumer of the queue, opened again after the broker comes back.
struct Consuming {
    opts: Options,
    /// The connection opened by `bind`, used for the first session.
    first: Option<Connection>,
    session: Option<Session>,
    backoff: Duration,
    /// The listener's ready flag.
    ready: tokio::sync::watch::Sender<bool>,
}

impl Source for Consuming {
    type Delivery = Message;

    async fn next(&mut self) -> Option<Message> {
        loop {
            let Some(session) = &mut self.session else {
                let first = self.first.take();
                let again = first.is_none();
                match open_session(&self.opts, first).await {
                    Ok(s) => {
                        if again {
                            crate::signal::reconnected("amqp");
                        }
                        self.backoff = MIN_BACKOFF;
                        tracing::info!(url = %self.opts.url, queue = %self.opts.queue, "consuming");
                        self.session = Some(s);
                        self.ready.send_replace(true);
                    }
                    Err(e) => {
                        tracing::warn!(url = %self.opts.url, error = %e, retry_in = ?self.backoff, "cannot consume from RabbitMQ; retrying");
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                }
                continue;
            };
            match session.consumer.next().await {
                Some(Ok(delivery)) => {
                    if self.opts.noack {
                        // `noack`: acked as it is taken, before it is handled.
                        log_ack(delivery.acker.ack(BasicAckOptions::default()).await);
                    }
                    return Some(Message {
                        delivery,
                        shared: session.shared.clone(),
                    });
                }
                Some(Err(e)) => tracing::warn!(url = %self.opts.url, error = %e, "lost the RabbitMQ consumer"),
                None => {
                    tracing::warn!(url = %self.opts.url, "connection to RabbitMQ lost; reconnecting");
                    self.ready.send_replace(false);
                    self.session = None;
                }
            }
        }
    }

    async fn stop(&mut self) {
        let Some(session) = &mut self.session else { return };
        // Stop taking messages; the ones delivered but not taken yet go back to the queue
        // when the channel closes (they are not acked, `noack` or not).
        let tag = session.consumer.tag();
        let _ = session
            .shared
            .channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await;
    }

    async fn close(mut self) {
        // In-flight handlers have replied and acked on the still-open channel.
        if let Some(session) = self.session.take().filter(|s| s.conn.status().connected()) {
            // Channels first: closing the connection under open channels makes lapin log errors.
            let _ = session.shared.channel.close(200, "OK".into()).await;
            let _ = session.shared.confirm.close(200, "OK".into()).await;
            let _ = session.conn.close(200, "OK".into()).await;
        }
        if let Some(conn) = self.first.take().filter(|c| c.status().connected()) {
            let _ = conn.close(200, "OK".into()).await;
        }
    }
}

/// One delivery from the queue.
struct Message {
    delivery: lapin::message::Delivery,
    shared: Arc<Shared>,
}

impl Delivery for Message {
    fn serve(self, router: &Router) -> Handling<impl Future<Output = ()> + Send + 'static> {
        let lapin::message::Delivery {
            data,
            properties,
            acker,
            ..
        } = self.delivery;
        let shared = self.shared;
        let body = Bytes::from(data);
        let manual = !shared.opts.noack;
        let packet = match Packet::parse(&body) {
            Ok(p) if p.pattern.is_some() || p.data.is_some() => p,
            parsed => {
                // NestJS reads such a body as an "external" message with an undefined pattern,
                // which nothing handles.
                let why = match parsed {
                    Ok(_) => "a JSON object without `pattern` and `data`",
                    Err(_) => "not a JSON object",
                };
                tracing::warn!(queue = %shared.opts.queue, why, "An unsupported message was received. It has been negative acknowledged, so it will not be re-delivered. Pattern: undefined");
                return Handling::done(
                    async move {
                        if manual {
                            log_ack(acker.nack(drop_it()).await);
                        }
                    }
                    .left_future(),
                );
            }
        };
        // RabbitMQ routes by the packet's pattern: one queue carries every route.
        let (address, payload) = (packet.address(&body), packet.payload(&body));
        let id = packet.id.map(|id| body.slice(Packet::range_in(&body, id)));
        let kind = if id.is_some() { Kind::Request } else { Kind::Event };
        let ctx = Context::new("amqp", kind).with_headers(headers(&properties, &packet).into());
        let reply = broker::start(router.call(Request::new(address.clone(), payload, ctx)));
        let router = router.clone();
        let waits = reply.waits();
        let rest = async move {
            let Some(id) = id else {
                let reply = reply.await;
                if manual {
                    // An event, acked once every listener has succeeded; a failure retries it.
                    if reply.is_no_handler() {
                        log_ack(acker.nack(drop_it()).await);
                    } else if reply.drain().await.is_ok() {
                        log_ack(acker.ack(BasicAckOptions::default()).await);
                    } else {
                        retry(&shared, &body, properties, &acker).await;
                    }
                }
                return;
            };
            let reply = reply.await;
            let no_handler = reply.is_no_handler();
            if no_handler {
                let route = router.resolve_route(&address).err().unwrap_or_default();
                tracing::warn!(queue = %shared.opts.queue, "An unsupported message was received. It has been negative acknowledged, so it will not be re-delivered. Pattern: {route}");
            }
            match properties.reply_to() {
                Some(to) => {
                    let mut sink = ReplyTo {
                        channel: &shared.channel,
                        to: to.clone(),
                        correlation_id: properties.correlation_id().clone(),
                        id,
                        buf: Vec::new(),
                    };
                    if let Err(e) = broker::send_reply(reply, &mut sink).await {
                        tracing::debug!(error = %e, "could not send a reply");
                    }
                }
                None => {
                    let _ = reply.drain().await;
                    if !no_handler {
                        tracing::warn!(queue = %shared.opts.queue, "a request without reply_to was handled; its reply was dropped");
                    }
                }
            }
            if manual {
                match no_handler {
                    true => log_ack(acker.nack(drop_it()).await),
                    false => log_ack(acker.ack(BasicAckOptions::default()).await),
                }
            }
        };
        Handling {
            waits,
            rest: rest.right_future(),
        }
    }
}

/// A message's headers: its AMQP headers, and v12's body `metadata` over them.
fn headers(properties: &BasicProperties, packet: &Packet<'_>) -> HashMap<String, String> {
    let mut metadata = HashMap::new();
    if let Some(headers) = properties.headers() {
        headers_to_metadata(headers, &mut metadata);
        metadata.remove(RETRIES_HEADER);
    }
    if let Some(meta) = packet.metadata_map() {
        metadata.extend(meta.iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
    }
    metadata
}

/// Nack without requeue: NestJS's treatment of messages nobody handles.
fn drop_it() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: false,
    }
}

fn log_ack(result: lapin::Result<bool>) {
    if let Err(e) = result {
        // The channel is gone; the broker redelivers the message to the next consumer.
        tracing::debug!(error = %e, "could not acknowledge a message");
    }
}

/// A failed event goes back to the queue with its retry count raised, or to the
/// dead-letter queue once `max_retries` is used up; the original is acked only after the
/// broker confirmed the copy, so a crash in between duplicates rather than loses it.
async fn retry(shared: &Shared, body: &[u8], properties: BasicProperties, acker: &lapin::Acker) {
    let mut headers = properties.headers().clone().unwrap_or_default();
    let tries = match headers.inner().get(RETRIES_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        _ => 0,
    };
    let (to, tries) = if tries >= shared.opts.max_retries {
        (shared.opts.dead_letter_queue(), tries)
    } else {
        (shared.opts.queue.clone(), tries + 1)
    };
    headers.insert(RETRIES_HEADER.into(), AMQPValue::LongLongInt(i64::from(tries)));
    let props = properties.with_headers(headers);
    let published = async {
        shared
            .confirm
            .basic_publish(
                "".into(),
                to.as_str().into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?
            .await
    };
    match published.await {
        Ok(Confirmation::Ack(_)) => {
            if to == shared.opts.queue {
                tracing::warn!(queue = %to, attempt = tries, "an event handler failed; the event will be delivered again");
            } else {
                tracing::error!(queue = %to, "an event handler failed {} times; the event was moved to the dead-letter queue", tries + 1);
            }
            log_ack(acker.ack(BasicAckOptions::default()).await);
        }
        other => {
            tracing::warn!(result = ?other.map(|_| ()), "could not move a failed event; requeueing it");
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            log_ack(acker.nack(requeue).await);
        }
    }
}

/// A request's `reply_to`, answered as NestJS's RMQ server answers: the body without `id`
/// (but for the no-handler reply), the request's `correlation_id` beside it.
struct ReplyTo<'a> {
    channel: &'a Channel,
    to: ShortString,
    correlation_id: Option<ShortString>,
    /// The request's raw `id`, for the no-handler reply.
    id: Bytes,
    buf: Vec<u8>,
}

impl ReplySink for ReplyTo<'_> {
    async fn send(&mut self, step: Step) -> Result<()> {
        self.buf.clear();
        match step {
            Step::NoHandler => encode_no_handler(&mut self.buf, &self.id),
            step => encode_reply_without_id(&mut self.buf, step.outgoing()),
        }
        // NestJS's replies carry an empty headers table and the request's correlation id.
        let mut props = BasicProperties::default().with_headers(FieldTable::default());
        if let Some(id) = &self.correlation_id {
            props = props.with_correlation_id(id.clone());
        }
        self.channel
            .basic_publish(
                "".into(),
                self.to.clone(),
                BasicPublishOptions::default(),
                &self.buf,
                props,
            )
            .await
            .map_err(|e| Error::broker(format!("cannot send a reply to `{}`", self.to), e))?;
        Ok(())
    }
}

/// NestJS's RMQ no-handler reply: unlike its other replies it has the `id`, and its own key
/// order.
fn encode_no_handler(out: &mut Vec<u8>, id: &[u8]) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(b",\"err\":\"");
    out.extend_from_slice(NO_MESSAGE_HANDLER.as_bytes());
    out.extend_from_slice(b"\",\"status\":\"error\"}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RpcError;
    use crate::wire::nestjs::packet::Outgoing;

    fn encoded(id: &[u8], what: Outgoing<'_>) -> String {
        let mut out = Vec::new();
        match what {
            Outgoing::NoHandler => encode_no_handler(&mut out, id),
            what => encode_reply_without_id(&mut out, what),
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn replies_are_nestjs_rmq_bodies() {
        assert_eq!(
            encoded(b"", Outgoing::Value { json: b"6", last: true }),
            r#"{"response":6,"isDisposed":true}"#
        );
        assert_eq!(
            encoded(
                b"",
                Outgoing::Value {
                    json: b"1",
                    last: false
                }
            ),
            r#"{"response":1}"#
        );
        assert_eq!(encoded(b"", Outgoing::Done), r#"{"isDisposed":true}"#);
        assert_eq!(
            encoded(b"", Outgoing::Error(&RpcError::internal())),
            r#"{"err":{"status":"error","message":"Internal server error"},"isDisposed":true}"#
        );
        assert_eq!(
            encoded(br#""84e7259aa86362807c108""#, Outgoing::NoHandler),
            r#"{"id":"84e7259aa86362807c108","err":"There is no matching message handler defined in the remote service.","status":"error"}"#
        );
    }
}
