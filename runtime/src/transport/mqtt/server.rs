//! The MQTT server: subscribes to every route (through `$share/<group>/` when asked), hands
//! each message to the shared broker loop, routed by its topic as NestJS does, and publishes
//! replies to `<topic>/reply`.
//!
//! rumqttc's event loop carries replies, acknowledgements and pings as well as incoming
//! messages, so it must be polled all the time: were it paused while the server is full,
//! handlers waiting to publish their replies (and pings) would stall with it. It runs in a
//! task of its own that does nothing but poll it, and hands incoming messages over a channel
//! that never makes it wait; the shared loop takes them from there, `max_in_flight` at a
//! time. What waits in between: at QoS 1/2 at most the broker's in-flight window (a message
//! is acknowledged only once handled, and the broker sends no more than its window of
//! unacknowledged ones); at QoS 0, which has no flow control, whatever the broker pushes, up
//! to [`QOS0_BACKLOG`] bytes of payloads: past that, QoS 0 messages are dropped (at most once
//! allows it; a broker drops them too when its queue for a slow subscriber is full), counted
//! in a warning. QoS 1 and 2 messages are never dropped.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet as MqttPacket, Publish, QoS, SubscribeFilter};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::acks::Acks;
use super::{Backoff, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_PACKET_SIZE, Options, topic_matches};
use crate::error::{Error, Result, RpcError};
use crate::service::{Address, Headers, Router};
use crate::transport::broker::{self, Delivery, Handling, Inbound, ReplySink, Source};
use crate::transport::{Endpoint, Listener, Shutdown};
use crate::wire::nestjs::packet::{Outgoing as Packet, encode_reply};
use crate::wire::nestjs::steps::Step;

/// Messages waiting for the shared loop beyond which the server warns that it falls behind.
const BACKLOG_WARNING: usize = 10_000;
/// Bytes of payloads waiting for the shared loop past which QoS 0 messages are dropped.
pub(crate) const QOS0_BACKLOG: usize = 64 * 1024 * 1024;
/// Warnings about dropped QoS 0 messages, at most one a second.
static DROPPED: crate::text::Throttle = crate::text::Throttle::new(1);

/// The server side of the MQTT transport, connected to its broker.
pub struct MqttListener {
    opts: Options,
    client: AsyncClient,
    eventloop: EventLoop,
    /// Up while subscribed: raised once the broker acknowledged the subscriptions, lowered
    /// when the connection is lost, raised again on the next SUBACK.
    ready: watch::Sender<bool>,
}

impl std::fmt::Debug for MqttListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttListener").field("url", &self.opts.url).finish()
    }
}

impl MqttListener {
    /// Connects to the broker named by `mqtt://host:port`; fails when it does not answer.
    pub async fn bind(ep: &Endpoint) -> Result<Self> {
        let opts = Options::parse(ep, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_PACKET_SIZE)?;
        if !opts.clean_session && opts.client_id.is_none() {
            return Err(Error::InvalidUrl {
                url: opts.url.clone(),
                reason: "`clean_session=false` needs a fixed `client_id`, or the broker cannot find the session again"
                    .into(),
            });
        }
        // With QoS 1/2 a message is acknowledged once handled, not on receipt.
        let manual_acks = opts.qos != QoS::AtMostOnce;
        let (client, mut eventloop) = opts.open(opts.client_id(), opts.clean_session, manual_acks);
        let connack = tokio::time::timeout(opts.connect_timeout, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(MqttPacket::ConnAck(ack))) => return Ok(ack),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no CONNACK within {:?}", opts.connect_timeout)))
        .map_err(|reason| Error::Connect {
            addr: opts.url.clone(),
            reason,
        })?;
        tracing::debug!(url = %opts.url, session_present = connack.session_present, "MQTT server connected");
        Ok(MqttListener {
            opts,
            client,
            eventloop,
            ready: watch::Sender::new(false),
        })
    }
}

impl Listener for MqttListener {
    fn local_url(&self) -> String {
        self.opts.url.clone()
    }

    fn serve(self: Box<Self>, router: Router, shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        async move {
            let max_in_flight = self.opts.max_in_flight;
            let source = Subscription::start(*self, &router).await?;
            broker::serve(source, router, max_in_flight, shutdown).await;
            Ok(())
        }
        .boxed()
    }

    fn ready(&self) -> Option<watch::Receiver<bool>> {
        Some(self.ready.subscribe())
    }
}

/// What to subscribe to, and how a topic finds its route.
struct Table {
    filters: Vec<SubscribeFilter>,
    /// Routes that are MQTT filters (`+`, `#`, `$share/…`), as (bare filter, route): matched
    /// in order when no route equals the topic, as NestJS does.
    wildcards: Vec<(String, &'static str)>,
}

impl Table {
    fn new(router: &Router, opts: &Options) -> Self {
        let mut filters = Vec::new();
        let mut wildcards = Vec::new();
        for info in router.routes() {
            let route = info.route();
            // A route written as a shared subscription is subscribed to as it is.
            let filter = match (&opts.group, route.starts_with("$share/")) {
                (Some(group), false) => format!("$share/{group}/{route}"),
                _ => route.to_owned(),
            };
            let bare = strip_share(route);
            if bare.contains(['+', '#']) || bare.len() != route.len() {
                wildcards.push((bare.to_owned(), route));
            }
            filters.push(SubscribeFilter::new(filter, opts.qos));
        }
        Table { filters, wildcards }
    }

    /// Where a message on `topic` goes: the route it belongs to, or the topic itself (which
    /// the router answers as a miss).
    fn address(&self, router: &Router, topic: &str) -> Address {
        let address = router.channel_address(topic);
        // One lookup when there are no wildcard filters (the usual case).
        if self.wildcards.is_empty() || router.resolve_route(&address).is_ok() {
            return address;
        }
        match self.wildcards.iter().find(|(f, _)| topic_matches(f, topic)) {
            Some((_, route)) => Address::static_route(route),
            None => address,
        }
    }
}

/// `$share/<group>/<filter>` → `<filter>`.
fn strip_share(route: &str) -> &str {
    route
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(route, |(_, filter)| filter)
}

async fn subscribe(client: &AsyncClient, table: &Table) -> Result<()> {
    client
        .subscribe_many(table.filters.iter().cloned())
        .await
        .map_err(|e| broker::subscribe_error("the MQTT routes", e))
}

/// What the event loop's task and the message tasks share.
struct Shared {
    url: String,
    client: AsyncClient,
    qos: QoS,
    max_packet_size: usize,
    table: Table,
    acks: Arc<Acks>,
    /// Bytes of payloads waiting for the shared loop.
    waiting: AtomicUsize,
}

/// The server's subscriptions, fed by the event loop's task.
struct Subscription {
    shared: Arc<Shared>,
    /// Messages from the event loop's task; dropped once shutdown has begun, which tells it
    /// to take no more.
    messages: Option<mpsc::UnboundedReceiver<Message>>,
    clean_session: bool,
    /// The backlog size the next warning is for.
    warn_at: usize,
    driver: AbortOnDrop,
    acker: AbortOnDrop,
}

impl Subscription {
    async fn start(l: MqttListener, router: &Router) -> Result<Self> {
        let MqttListener {
            opts,
            client,
            eventloop,
            ready,
        } = l;
        let table = Table::new(router, &opts);
        if table.filters.is_empty() {
            return Err(Error::NoHandlers);
        }
        subscribe(&client, &table).await?;
        let (acks, acker) = Acks::new(client.clone());
        let shared = Arc::new(Shared {
            url: opts.url.clone(),
            client,
            qos: opts.qos,
            max_packet_size: opts.max_packet_size,
            table,
            acks: Arc::new(acks),
            waiting: AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(eventloop, shared.clone(), tx, ready));
        Ok(Subscription {
            shared,
            messages: Some(rx),
            clean_session: opts.clean_session,
            warn_at: BACKLOG_WARNING,
            driver: AbortOnDrop(driver),
            acker: AbortOnDrop(acker),
        })
    }
}

impl Source for Subscription {
    type Delivery = Message;

    async fn next(&mut self) -> Option<Message> {
        let messages = self.messages.as_mut()?;
        let msg = messages.recv().await?;
        self.shared
            .waiting
            .fetch_sub(msg.publish.payload.len(), Ordering::Relaxed);
        let backlog = messages.len();
        if backlog >= self.warn_at {
            tracing::warn!(url = %self.shared.url, backlog, "MQTT messages are arriving faster than the server handles them (max_in_flight)");
            self.warn_at *= 2;
        } else if backlog == 0 {
            self.warn_at = BACKLOG_WARNING;
        }
        Some(msg)
    }

    async fn stop(&mut self) {
        // Messages not taken yet stay unacknowledged: with QoS 1/2 and a kept session the
        // broker sends them again to the next run.
        self.messages = None;
        tracing::debug!(url = %self.shared.url, "MQTT server draining");
        if self.clean_session {
            // Stop the broker sending more; a kept session keeps its subscriptions, so that
            // messages queue up for the next run instead.
            for f in &self.shared.table.filters {
                let _ = self.shared.client.try_unsubscribe(f.path.clone());
            }
        }
    }

    async fn close(mut self) {
        // Acks, then the disconnect, queue up behind the replies: the event loop's task
        // writes them all before it stops.
        self.shared.acks.close();
        let _ = (&mut self.acker.0).await;
        let _ = self.shared.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.driver.0).await;
    }
}

/// A task that stops when its handle is dropped (the server's future dropped without a
/// shutdown must not leave the connection running).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls rumqttc's event loop and nothing else (see the module's comment): forwards
/// messages, resubscribes after a reconnect, raises `ready` on the SUBACK and lowers it when
/// the connection is lost.
async fn drive(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Message>,
    ready: watch::Sender<bool>,
) {
    let mut backoff = Backoff::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(MqttPacket::Publish(p))) => {
                if tx.is_closed() {
                    // Not acknowledged: with QoS 1/2 and a kept session the broker sends it
                    // again to the next run.
                    tracing::debug!(topic = %p.topic, "message arrived while shutting down; left unhandled");
                    continue;
                }
                let waiting = shared.waiting.load(Ordering::Relaxed);
                if p.qos == QoS::AtMostOnce && waiting + p.payload.len() > QOS0_BACKLOG {
                    crate::signal::dropped("mqtt", "backlog");
                    if let Some(held_back) = DROPPED.allow() {
                        tracing::warn!(url = %shared.url, topic = %crate::text::for_log(&p.topic), waiting, held_back, "dropping a QoS 0 message: the server falls too far behind (max_in_flight)");
                    }
                    continue;
                }
                shared.waiting.fetch_add(p.payload.len(), Ordering::Relaxed);
                let seq = shared.acks.arrived(&p);
                let _ = tx.send(Message {
                    publish: p,
                    seq,
                    shared: shared.clone(),
                });
            }
            Ok(Event::Incoming(MqttPacket::ConnAck(ack))) => {
                backoff.reset();
                tracing::info!(url = %shared.url, session_present = ack.session_present, "MQTT server reconnected");
                crate::signal::reconnected("mqtt");
                if !tx.is_closed() {
                    // A new session has no subscriptions; renewing those of a kept one is
                    // harmless. Not awaited here: the request queue is emptied by this loop.
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = subscribe(&shared.client, &shared.table).await {
                            tracing::error!(url = %shared.url, error = %e, "could not resubscribe");
                        }
                    });
                }
            }
            Ok(Event::Incoming(MqttPacket::SubAck(ack))) => {
                // One SUBSCRIBE carries every route, so its SUBACK means all are in place.
                ready.send_replace(true);
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    tracing::error!(url = %shared.url, "the broker refused a subscription: some routes are not served");
                }
            }
            // Written once the server closes, after every reply and ack.
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                // Not ready until the broker has acknowledged the subscriptions again.
                ready.send_replace(false);
                shared.acks.lost();
                let wait = backoff.next();
                tracing::warn!(url = %shared.url, error = %e, retry_in = ?wait, "MQTT server lost its broker connection");
                if tx.is_closed() {
                    // Shutting down: nothing can be answered any more; the handlers still finish.
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tx.closed() => {}
                }
            }
        }
    }
}

/// One message on a served topic.
struct Message {
    publish: Publish,
    /// Its place among the messages to acknowledge (QoS 1/2).
    seq: Option<u64>,
    shared: Arc<Shared>,
}

impl Delivery for Message {
    fn serve(self, router: &Router) -> Handling<impl Future<Output = ()> + Send + 'static> {
        // Acknowledged once handled (or once its handling panicked), after its reply has
        // been handed to rumqttc.
        let ticket = self.seq.map(|seq| self.shared.acks.ticket(seq));
        let Publish { topic, payload, .. } = self.publish;
        let address = self.shared.table.address(router, &topic);
        let (reply, id) = match broker::read(&payload, address, "mqtt", Headers::new()) {
            Inbound::Packet { request, id } => (Some(broker::start(router.call(request))), id),
            Inbound::External(event) => {
                tracing::debug!(%topic, "a message that is not a NestJS packet; handing it to event listeners");
                (Some(broker::start(router.call(event))), None)
            }
            Inbound::Invalid => {
                tracing::warn!(%topic, "dropping a message that is not UTF-8 text");
                (None, None)
            }
        };
        let shared = self.shared;
        let waits = reply.as_ref().is_some_and(broker::Started::waits);
        let rest = async move {
            let _ticket = ticket;
            let Some(reply) = reply else { return };
            let reply = reply.await;
            if let Some(id) = id {
                let mut sink = ReplyTo {
                    shared: &shared,
                    topic: format!("{topic}/reply"),
                    id,
                };
                if let Err(e) = broker::send_reply(reply, &mut sink).await {
                    tracing::error!(topic = %sink.topic, error = %e, "could not publish a reply");
                }
            }
        };
        Handling { waits, rest }
    }
}

/// A request's reply topic.
struct ReplyTo<'a> {
    shared: &'a Shared,
    topic: String,
    id: Bytes,
}

impl ReplySink for ReplyTo<'_> {
    async fn send(&mut self, step: Step) -> Result<()> {
        let mut out = Vec::with_capacity(64);
        encode_reply(&mut out, &self.id, step.outgoing());
        let size = super::publish_size(&self.topic, out.len());
        let limit = self.shared.max_packet_size;
        let too_large = size > limit;
        if too_large {
            // Too big to send (rumqttc would drop the connection): the caller gets an error
            // instead of waiting for its deadline, and nothing more.
            out.clear();
            encode_reply(&mut out, &self.id, Packet::Error(&RpcError::internal()));
        }
        self.shared
            .client
            .publish(&self.topic, self.shared.qos, false, out)
            .await
            .map_err(|e| Error::broker(format!("cannot publish a reply to `{}`", self.topic), e))?;
        if too_large {
            return Err(Error::TooLarge {
                context: format!("a reply to `{}` (max_packet_size)", self.topic),
                size,
                limit,
            });
        }
        Ok(())
    }
}
