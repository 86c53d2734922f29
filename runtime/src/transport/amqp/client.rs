//! The RabbitMQ client: one connection and one confirm channel, which consumes
//! `amq.rabbitmq.reply-to` (direct reply-to must be consumed on the channel that
//! publishes) and publishes requests and events to the queue. Replies are matched to calls
//! by `correlation_id` only, as NestJS does. A lost connection fails the calls in flight
//! at once; the next call reconnects, with backoff between failed attempts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};

use super::{Options, REPLY_TO, metadata_to_headers};
use crate::error::{Error, Result};
use crate::service::{Outbound, Replies};
use crate::transport::backoff::Backoff;
use crate::transport::{ClientOptions, ClientTransport, Endpoint};
use crate::wire::nestjs::packet::encode_request;
use crate::wire::nestjs::pending::Pending;

/// The client side of the RabbitMQ transport; connects lazily.
pub struct AmqpClient {
    opts: Options,
    current: RwLock<Option<Arc<Session>>>,
    connecting: tokio::sync::Mutex<Backoff>,
}

impl std::fmt::Debug for AmqpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpClient").field("queue", &self.opts.queue).finish()
    }
}

/// One connection and the calls in flight on it.
struct Session {
    conn: Connection,
    channel: Channel,
    pending: Arc<Pending>,
    alive: Arc<AtomicBool>,
}

impl AmqpClient {
    /// A client for `amqp://…?queue=…`; connects on the first call (or [`connect`]).
    ///
    /// [`connect`]: ClientTransport::connect
    pub(crate) fn new(ep: &Endpoint, defaults: &ClientOptions) -> Result<Self> {
        Ok(AmqpClient {
            opts: Options::parse(ep, defaults.connect_timeout)?,
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::default(),
        })
    }

    fn live(&self) -> Option<Arc<Session>> {
        self.current
            .read()
            .expect("session lock")
            .as_ref()
            .filter(|s| s.alive.load(Ordering::Acquire))
            .cloned()
    }

    async fn session(&self) -> Result<Arc<Session>> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let mut backoff = self.connecting.lock().await;
        if let Some(s) = self.live() {
            return Ok(s);
        }
        if let Some(reason) = backoff.wait_reason() {
            return Err(self.opts.connect_error(reason));
        }
        match self.open().await {
            Ok(s) => {
                if backoff.succeeded() {
                    crate::signal::reconnected("amqp");
                }
                *self.current.write().expect("session lock") = Some(s.clone());
                Ok(s)
            }
            Err(reason) => Err(self.opts.connect_error(backoff.failed(reason))),
        }
    }

    async fn open(&self) -> std::result::Result<Arc<Session>, String> {
        let conn = self.opts.connect().await.map_err(|e| match e {
            Error::Connect { reason, .. } => reason,
            other => other.to_string(),
        })?;
        let setup = async {
            let channel = conn.create_channel().await?;
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            self.opts.declare(&channel).await?;
            // The reply consumer must not ack (`PRECONDITION_FAILED - reply consumer
            // cannot acknowledge`) and must exist before the first publish.
            let consume = BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            };
            let consumer = channel
                .basic_consume(REPLY_TO.into(), "".into(), consume, FieldTable::default())
                .await?;
            lapin::Result::Ok((channel, consumer))
        };
        let (channel, consumer) = match setup.await {
            Ok(ok) => ok,
            Err(e) => {
                let _ = conn.close(200, "OK".into()).await;
                return Err(format!("setting up queue `{}`: {e}", self.opts.queue));
            }
        };
        let session = Arc::new(Session {
            conn,
            channel,
            pending: Pending::new(self.opts.url.clone()),
            alive: Arc::new(AtomicBool::new(true)),
        });
        tokio::spawn(read_replies(
            consumer,
            session.pending.clone(),
            session.alive.clone(),
            self.opts.url.clone(),
        ));
        Ok(session)
    }

    fn properties(&self, msg: &Outbound) -> BasicProperties {
        BasicProperties::default()
            .with_headers(metadata_to_headers(&msg.headers))
            .with_delivery_mode(if self.opts.persistent { 2 } else { 1 })
    }

    fn publish_error(&self, session: &Session, e: lapin::Error) -> Error {
        if session.alive.load(Ordering::Acquire) && session.conn.status().connected() {
            Error::broker(format!("publishing to queue `{}` failed", self.opts.queue), e)
        } else {
            Error::ConnectionClosed {
                addr: self.opts.url.clone(),
            }
        }
    }
}

/// Routes replies to their calls; when the consumer ends (the connection or channel is
/// gone) the calls in flight fail at once and the session is marked dead.
async fn read_replies(mut consumer: Consumer, pending: Arc<Pending>, alive: Arc<AtomicBool>, url: String) {
    while let Some(delivery) = consumer.next().await {
        match delivery {
            Ok(d) => match d.properties.correlation_id() {
                Some(id) => pending.deliver_for(id.as_str(), &Bytes::from(d.data)),
                None => tracing::debug!(%url, "ignoring a reply without correlation_id"),
            },
            Err(e) => {
                tracing::warn!(%url, error = %e, "connection to RabbitMQ lost");
                break;
            }
        }
    }
    alive.store(false, Ordering::Release);
    pending.close(|| Error::ConnectionClosed { addr: url.clone() });
}

impl ClientTransport for AmqpClient {
    fn connect(&self) -> BoxFuture<'_, Result<()>> {
        self.session().map(|s| s.map(drop)).boxed()
    }

    fn request(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<Replies>> {
        async move {
            let session = self.session().await?;
            let (id, rx) = session.pending.register(msg.route.clone())?;
            let mut body = Vec::with_capacity(msg.payload.len() + msg.pattern.len() + 48);
            encode_request(
                &mut body,
                &msg.pattern,
                &msg.payload,
                std::iter::empty(),
                Some(id.as_str()),
            );
            let props = self
                .properties(&msg)
                .with_correlation_id(id.as_str().into())
                .with_reply_to(REPLY_TO.into());
            let confirm = session
                .channel
                .basic_publish(
                    "".into(),
                    self.opts.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .map_err(|e| self.publish_error(&session, e))?;
            // The reply is what the caller waits for; a broker that refuses the message
            // (a full queue with `reject-publish`) must not leave it waiting until its deadline.
            let pending = session.pending.clone();
            let queue = self.opts.queue.clone();
            tokio::spawn(async move {
                if let Ok(Confirmation::Nack(_)) = confirm.await {
                    let refused = Error::refused(format!("RabbitMQ refused the request (queue `{queue}`)"));
                    pending.push(&id, Err(refused), true);
                }
            });
            Replies::first_of(rx).await
        }
        .boxed()
    }

    fn emit(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<()>> {
        async move {
            let session = self.session().await?;
            let mut body = Vec::with_capacity(msg.payload.len() + msg.pattern.len() + 32);
            encode_request(&mut body, &msg.pattern, &msg.payload, std::iter::empty(), None);
            let props = self.properties(&msg);
            let published = async {
                session
                    .channel
                    .basic_publish(
                        "".into(),
                        self.opts.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    )
                    .await?
                    .await
            };
            // Like NestJS, an event counts as sent once the broker has confirmed it.
            match published.await.map_err(|e| self.publish_error(&session, e))? {
                Confirmation::Nack(_) => Err(Error::refused(format!(
                    "RabbitMQ refused the event (queue `{}`)",
                    self.opts.queue
                ))),
                _ => Ok(()),
            }
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let session = self.current.write().expect("session lock").take();
            if let Some(s) = session {
                s.alive.store(false, Ordering::Release);
                s.pending.close(|| Error::Closed);
                let _ = s.channel.close(200, "OK".into()).await;
                let _ = s.conn.close(200, "OK".into()).await;
            }
        }
        .boxed()
    }
}
