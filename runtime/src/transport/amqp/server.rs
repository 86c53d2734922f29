//! The RabbitMQ server: consumes the queue, dispatches each message by its body's pattern,
//! answers requests on their `reply_to`, and acks once a message has been handled.
//! Reconnects with backoff when the broker goes away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};
use tokio::task::JoinSet;

use super::{Options, RETRIES_HEADER, headers_to_metadata};
use crate::codec::{Packet, encode_reply_without_id};
use crate::dispatch::{Dispatched, Dispatcher, Incoming};
use crate::error::{NO_MESSAGE_HANDLER, Result};
use crate::transport::steps::Steps;
use crate::transport::{Endpoint, Listener, Shutdown};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The server side of the RabbitMQ transport: a connection to the broker with the queue
/// declared, ready to consume.
pub struct AmqpListener {
    opts: Options,
    conn: Option<Connection>,
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
        Ok(AmqpListener { opts, conn: Some(conn) })
    }
}

impl Listener for AmqpListener {
    fn local_url(&self) -> String {
        self.opts.given.clone()
    }

    fn serve(self: Box<Self>, dispatcher: Dispatcher, shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        serve(*self, dispatcher, shutdown).boxed()
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
    if !opts.noack {
        channel.basic_qos(opts.prefetch, BasicQosOptions::default()).await?;
    }
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
    let consume = BasicConsumeOptions {
        no_ack: opts.noack,
        ..Default::default()
    };
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

async fn serve(l: AmqpListener, dispatcher: Dispatcher, mut shutdown: Shutdown) -> Result<()> {
    let AmqpListener { opts, mut conn } = l;
    let mut tasks = JoinSet::new();
    let mut backoff = MIN_BACKOFF;
    let mut last: Option<(Connection, Arc<Shared>)> = None;
    while !shutdown.is_down() {
        let session = tokio::select! {
            s = open_session(&opts, conn.take()) => s,
            _ = shutdown.wait() => break,
        };
        let mut session = match session {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(url = %opts.url, error = %e, retry_in = ?backoff, "cannot consume from RabbitMQ; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        tracing::info!(url = %opts.url, queue = %opts.queue, "consuming");
        loop {
            // Reaped here rather than awaited in the select: a task waiting on `join_next` is
            // woken by every handler that ends, one more wake-up per message.
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                delivery = session.consumer.next() => match delivery {
                    Some(Ok(d)) => handle(&session.shared, &dispatcher, d, &mut tasks),
                    Some(Err(e)) => tracing::warn!(url = %opts.url, error = %e, "lost the RabbitMQ consumer"),
                    None => break,
                },
                _ = shutdown.wait() => {
                    // Stop taking messages; the ones delivered but not handled yet go back
                    // to the queue when the channel closes (they are not acked).
                    let tag = session.consumer.tag();
                    let _ = session.shared.channel.basic_cancel(tag, BasicCancelOptions::default()).await;
                    break;
                }
            }
        }
        last = Some((session.conn, session.shared));
        if !shutdown.is_down() {
            tracing::warn!(url = %opts.url, "connection to RabbitMQ lost; reconnecting");
        }
    }
    // In-flight handlers finish, then reply and ack on the still-open channel.
    while tasks.join_next().await.is_some() {}
    if let Some((conn, shared)) = last.filter(|(c, _)| c.status().connected()) {
        // Channels first: closing the connection under open channels makes lapin log errors.
        let _ = shared.channel.close(200, "OK".into()).await;
        let _ = shared.confirm.close(200, "OK".into()).await;
        let _ = conn.close(200, "OK".into()).await;
    }
    if let Some(conn) = conn.filter(|c| c.status().connected()) {
        let _ = conn.close(200, "OK".into()).await;
    }
    Ok(())
}

/// Dispatches one delivery; the handler runs in its own task, which replies and acks.
fn handle(shared: &Arc<Shared>, dispatcher: &Dispatcher, d: Delivery, tasks: &mut JoinSet<()>) {
    let Delivery {
        data,
        properties,
        acker,
        ..
    } = d;
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
            if manual {
                tasks.spawn(async move { log_ack(acker.nack(drop_it()).await) });
            }
            return;
        }
    };
    let mut metadata = HashMap::new();
    if let Some(headers) = properties.headers() {
        headers_to_metadata(headers, &mut metadata);
        metadata.remove(RETRIES_HEADER);
    }
    if let Some(meta) = packet.metadata_map() {
        metadata.extend(meta);
    }
    let incoming = Incoming {
        pattern: packet.pattern.unwrap_or("undefined"),
        data: packet.data.map(str::as_bytes),
        request: packet.id.is_some(),
        metadata: (!metadata.is_empty()).then_some(metadata),
        transport: "amqp",
    };
    if packet.id.is_none() && manual {
        // An event, acked once every listener has succeeded; a failure retries it.
        let Some(run) = dispatcher.dispatch_event(incoming) else {
            tasks.spawn(async move { log_ack(acker.nack(drop_it()).await) });
            return;
        };
        let shared = shared.clone();
        tasks.spawn(async move {
            if run.await {
                log_ack(acker.ack(BasicAckOptions::default()).await);
            } else {
                retry(&shared, &body, properties, &acker).await;
            }
        });
        return;
    }
    let id = packet.id.map(|id| body.slice(Packet::range_in(&body, id)));
    let reply_to = properties.reply_to().clone();
    let correlation_id = properties.correlation_id().clone();
    match dispatcher.dispatch(incoming) {
        Dispatched::Reply(reply) => {
            let shared = shared.clone();
            tasks.spawn(async move {
                let mut steps = Steps::new(reply);
                let mut buf = Vec::new();
                while let Some(step) = steps.next().await {
                    let Some(to) = &reply_to else { continue };
                    buf.clear();
                    encode_reply_without_id(&mut buf, step.outgoing());
                    if let Err(e) = publish_reply(&shared.channel, to, &correlation_id, &buf).await {
                        tracing::debug!(error = %e, "could not send a reply");
                    }
                }
                if reply_to.is_none() {
                    tracing::warn!(queue = %shared.opts.queue, "a request without reply_to was handled; its reply was dropped");
                }
                if manual {
                    log_ack(acker.ack(BasicAckOptions::default()).await);
                }
            });
        }
        Dispatched::NoHandler { route } => {
            let shared = shared.clone();
            tracing::warn!(queue = %shared.opts.queue, "An unsupported message was received. It has been negative acknowledged, so it will not be re-delivered. Pattern: {route}");
            tasks.spawn(async move {
                if let Some(to) = &reply_to {
                    let mut buf = Vec::new();
                    encode_no_handler(&mut buf, id.as_deref().unwrap_or(b"null"));
                    if let Err(e) = publish_reply(&shared.channel, to, &correlation_id, &buf).await {
                        tracing::debug!(error = %e, "could not send a reply");
                    }
                }
                if manual {
                    log_ack(acker.nack(drop_it()).await);
                }
            });
        }
        Dispatched::Event(run) => {
            tasks.spawn(run);
        }
        Dispatched::Ignored => {}
    }
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

async fn publish_reply(
    channel: &Channel,
    reply_to: &ShortString,
    correlation_id: &Option<ShortString>,
    body: &[u8],
) -> lapin::Result<()> {
    // NestJS's replies carry an empty headers table and the request's correlation id.
    let mut props = BasicProperties::default().with_headers(FieldTable::default());
    if let Some(id) = correlation_id {
        props = props.with_correlation_id(id.clone());
    }
    channel
        .basic_publish("".into(), reply_to.clone(), BasicPublishOptions::default(), body, props)
        .await?;
    Ok(())
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
    use crate::codec::Outgoing;
    use crate::error::RpcError;

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
