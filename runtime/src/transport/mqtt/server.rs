//! The MQTT server: subscribes to every route (through `$share/<group>/` when asked),
//! dispatches each message by its topic as NestJS does, and publishes replies to
//! `<topic>/reply`.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet as MqttPacket, Publish, QoS, SubscribeFilter};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Backoff, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_PACKET_SIZE, Options, topic_matches};
use crate::codec::{Outgoing as Reply, Packet, PacketError, encode_reply};
use crate::dispatch::{Dispatched, Dispatcher, Incoming};
use crate::error::{Error, Result};
use crate::registry::Routes;
use crate::transport::steps::Steps;
use crate::transport::{Endpoint, Listener, Shutdown};

/// The server side of the MQTT transport, connected to its broker.
pub struct MqttListener {
    opts: Options,
    client: AsyncClient,
    eventloop: EventLoop,
    /// Raised once the broker acknowledged the subscriptions.
    ready: tokio::sync::watch::Sender<bool>,
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
            ready: tokio::sync::watch::Sender::new(false),
        })
    }
}

impl Listener for MqttListener {
    fn local_url(&self) -> String {
        self.opts.url.clone()
    }

    fn serve(self: Box<Self>, dispatcher: Dispatcher, shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        serve(*self, dispatcher, shutdown).boxed()
    }

    fn ready(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.ready.subscribe())
    }
}

/// What to subscribe to, and how a topic finds its handlers.
struct Table {
    filters: Vec<SubscribeFilter>,
    /// Routes that are MQTT filters (`+`, `#`, `$share/…`): matched in order when no
    /// route equals the topic, as NestJS does.
    wildcards: Vec<(String, String)>,
}

impl Table {
    fn new(routes: &Routes, opts: &Options) -> Self {
        let mut filters = Vec::new();
        let mut wildcards = Vec::new();
        let mut names: Vec<&str> = routes.routes().collect();
        names.sort_unstable();
        for route in names {
            // A route written as a shared subscription is subscribed to as it is.
            let filter = match (&opts.group, route.starts_with("$share/")) {
                (Some(group), false) => format!("$share/{group}/{route}"),
                _ => route.to_owned(),
            };
            let bare = strip_share(route);
            if bare.contains(['+', '#']) || bare.len() != route.len() {
                wildcards.push((bare.to_owned(), route.to_owned()));
            }
            filters.push(SubscribeFilter::new(filter, opts.qos));
        }
        Table { filters, wildcards }
    }

    /// The pattern to dispatch a message on `topic` with: the route it belongs to, or the
    /// topic as a JSON string (which the dispatcher reports as a miss).
    fn pattern<'a>(&'a self, routes: &Routes, topic: &'a str) -> Cow<'a, str> {
        // One lookup when there are no wildcard filters (the usual case).
        if !self.wildcards.is_empty()
            && routes.get(topic).is_none()
            && let Some((_, route)) = self.wildcards.iter().find(|(f, _)| topic_matches(f, topic))
        {
            return Cow::Borrowed(route);
        }
        routes.channel_pattern(topic)
    }
}

/// `$share/<group>/<filter>` → `<filter>`.
fn strip_share(route: &str) -> &str {
    route
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(route, |(_, filter)| filter)
}

async fn serve(l: MqttListener, dispatcher: Dispatcher, mut shutdown: Shutdown) -> Result<()> {
    let MqttListener {
        opts,
        client,
        mut eventloop,
        ready,
    } = l;
    let table = Arc::new(Table::new(dispatcher.routes(), &opts));
    if table.filters.is_empty() {
        return Err(Error::Registry("no routes to subscribe to".into()));
    }
    subscribe(&client, &table).await?;
    // Bumped on every connection loss: an ack for a message of an older connection would
    // acknowledge whatever the broker numbered the same on the new one.
    let epoch = Arc::new(AtomicU64::new(0));
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(send_acks(client.clone(), epoch.clone(), ack_rx));
    let mut acks = AckQueue::default();
    let mut tasks: JoinSet<Option<u64>> = JoinSet::new();
    let mut backoff = Backoff::new();
    let mut draining = false;
    loop {
        if draining && tasks.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            _ = shutdown.wait(), if !draining => {
                draining = true;
                tracing::debug!(url = %opts.url, in_flight = tasks.len(), "MQTT server draining");
                if opts.clean_session {
                    // Stop the broker sending more; a kept session keeps its subscriptions,
                    // so that messages queue up for the next run instead.
                    for f in &table.filters {
                        let _ = client.try_unsubscribe(f.path.clone());
                    }
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(Some(seq)) = done {
                    acks.done(seq, epoch.load(Ordering::Acquire), &ack_tx);
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(MqttPacket::Publish(p))) => {
                    if draining {
                        // Not acknowledged: with QoS 1/2 and a kept session the broker
                        // sends it again to the next run.
                        tracing::debug!(topic = %p.topic, "message arrived while shutting down; left unhandled");
                    } else {
                        let seq = acks.push(&p);
                        let ctx = MessageCtx {
                            client: client.clone(),
                            qos: opts.qos,
                            max_packet_size: opts.max_packet_size,
                        };
                        let work = handle(&dispatcher, &table, ctx, p);
                        // Handlers' panics are caught by the dispatcher; this guards the
                        // rest, so that a message is always marked done.
                        tasks.spawn(AssertUnwindSafe(work).catch_unwind().map(move |_| seq));
                    }
                }
                Ok(Event::Incoming(MqttPacket::ConnAck(ack))) => {
                    backoff.reset();
                    tracing::info!(url = %opts.url, session_present = ack.session_present, "MQTT server reconnected");
                    if !draining {
                        // A new session has no subscriptions; renewing those of a kept one is harmless.
                        let (client, table) = (client.clone(), table.clone());
                        tasks.spawn(async move {
                            if let Err(e) = subscribe(&client, &table).await {
                                tracing::error!(error = %e, "could not resubscribe");
                            }
                            None
                        });
                    }
                }
                Ok(Event::Incoming(MqttPacket::SubAck(ack))) => {
                    // One SUBSCRIBE carries every route, so its SUBACK means all are in place.
                    ready.send_replace(true);
                    if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                        tracing::error!(url = %opts.url, "the broker refused a subscription: some routes are not served");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    epoch.fetch_add(1, Ordering::AcqRel);
                    // The broker sends unacknowledged messages again on a kept session.
                    acks.clear();
                    let wait = backoff.next();
                    tracing::warn!(url = %opts.url, error = %e, retry_in = ?wait, "MQTT server lost its broker connection");
                    if draining {
                        // Nothing can be answered any more; the handlers still finish.
                        while tasks.join_next().await.is_some() {}
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.wait() => {}
                    }
                }
            }
        }
    }
    // Acks, then replies, are queued ahead of the DISCONNECT: polling until it is written
    // flushes them.
    drop(ack_tx);
    let _ = acker.await;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    Ok(())
}

async fn subscribe(client: &AsyncClient, table: &Table) -> Result<()> {
    client
        .subscribe_many(table.filters.iter().cloned())
        .await
        .map_err(|e| Error::Protocol(format!("cannot subscribe: {e}")))
}

/// QoS 1/2 messages of the current connection, in arrival order, waiting for their
/// handlers. MQTT 3.1.1 (§4.6) wants acknowledgements in arrival order, so a finished
/// message is acknowledged once every earlier one is.
#[derive(Default)]
struct AckQueue {
    next: u64,
    /// (sequence number, packet id, QoS, handled).
    waiting: VecDeque<(u64, u16, QoS, bool)>,
}

impl AckQueue {
    /// Registers a message; its sequence number comes back when it has been handled.
    fn push(&mut self, p: &Publish) -> Option<u64> {
        if p.qos == QoS::AtMostOnce {
            return None;
        }
        self.next += 1;
        self.waiting.push_back((self.next, p.pkid, p.qos, false));
        Some(self.next)
    }

    fn done(&mut self, seq: u64, epoch: u64, out: &mpsc::UnboundedSender<(u64, u16, QoS)>) {
        // Sequence numbers only grow, so a binary search finds it (if still current).
        if let Ok(i) = self.waiting.binary_search_by_key(&seq, |w| w.0) {
            self.waiting[i].3 = true;
        }
        while let Some(&(_, pkid, qos, true)) = self.waiting.front() {
            self.waiting.pop_front();
            let _ = out.send((epoch, pkid, qos));
        }
    }

    fn clear(&mut self) {
        self.waiting.clear();
    }
}

/// Hands acknowledgements to rumqttc, dropping those of a connection that has gone.
async fn send_acks(client: AsyncClient, epoch: Arc<AtomicU64>, mut rx: mpsc::UnboundedReceiver<(u64, u16, QoS)>) {
    while let Some((at, pkid, qos)) = rx.recv().await {
        if epoch.load(Ordering::Acquire) != at {
            continue;
        }
        let mut ack = Publish::new("", qos, Bytes::new());
        ack.pkid = pkid;
        if client.ack(&ack).await.is_err() {
            return;
        }
    }
}

/// What a message task needs to answer.
struct MessageCtx {
    client: AsyncClient,
    qos: QoS,
    max_packet_size: usize,
}

/// Decodes one message and returns its work: the reply, or the event's listeners. Never
/// panics on bad input.
fn handle(dispatcher: &Dispatcher, table: &Table, ctx: MessageCtx, p: Publish) -> BoxFuture<'static, ()> {
    let body = p.payload;
    let topic = p.topic;
    let pattern = table.pattern(dispatcher.routes(), &topic);
    // NestJS parses the payload if it can, and otherwise hands the text on as a string.
    let text_as_json;
    let (data, id, metadata): (Option<&[u8]>, Option<Bytes>, _) = match Packet::parse(&body) {
        Ok(packet) if packet.pattern.is_some() || packet.data.is_some() => (
            packet.data.map(str::as_bytes),
            packet.id.map(|id| body.slice(Packet::range_in(&body, id))),
            packet.metadata_map(),
        ),
        // Valid JSON without `pattern` and `data`: an "external" message, i.e. an event on the
        // topic whose data is the whole message.
        Ok(_) | Err(PacketError::NotAnObject) => (Some(&body[..]), None, None),
        Err(PacketError::InvalidJson(_)) => {
            text_as_json = serde_json::Value::from(String::from_utf8_lossy(&body)).to_string();
            (Some(text_as_json.as_bytes()), None, None)
        }
        Err(PacketError::InvalidUtf8) => {
            tracing::warn!(%topic, "dropping a message that is not UTF-8 text");
            return futures_util::future::ready(()).boxed();
        }
    };
    let outcome = dispatcher.dispatch(Incoming {
        pattern: &pattern,
        data,
        request: id.is_some(),
        metadata,
        transport: "mqtt",
    });
    let reply_topic = format!("{topic}/reply");
    match (outcome, id) {
        (Dispatched::Reply(reply), Some(id)) => async move {
            let mut steps = Steps::new(reply);
            while let Some(step) = steps.next().await {
                publish(&ctx, &reply_topic, &id, step.outgoing()).await;
            }
        }
        .boxed(),
        (Dispatched::NoHandler { .. }, Some(id)) => async move {
            publish(&ctx, &reply_topic, &id, Reply::NoHandler).await;
        }
        .boxed(),
        (Dispatched::Event(run), _) => run,
        _ => futures_util::future::ready(()).boxed(),
    }
}

async fn publish(ctx: &MessageCtx, topic: &str, id: &[u8], what: Reply<'_>) {
    let mut out = Vec::with_capacity(64);
    encode_reply(&mut out, id, what);
    let size = super::publish_size(topic, out.len());
    if size > ctx.max_packet_size {
        // Too big to send (rumqttc would drop the connection): the caller gets an error
        // instead of waiting for its deadline.
        tracing::error!(%topic, size, max_packet_size = ctx.max_packet_size, "reply too large for max_packet_size");
        out.clear();
        encode_reply(&mut out, id, Reply::Error(&crate::error::RpcError::internal()));
    }
    if let Err(e) = ctx.client.publish(topic, ctx.qos, false, out).await {
        tracing::error!(%topic, error = %e, "could not publish a reply");
    }
}
