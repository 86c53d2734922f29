//! The Redis server: subscribes to every served route, dispatches each message, publishes
//! replies on `<route>.reply`, and subscribes again after the broker comes back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_IN_FLIGHT, Publisher, open, pubsub};
use crate::codec::{Outgoing, Packet, PacketError, encode_reply};
use crate::dispatch::{Dispatched, Dispatcher, Incoming};
use crate::error::{Error, Result};
use crate::transport::steps::Steps;
use crate::transport::{Endpoint, Listener, Shutdown};

/// First and longest wait between attempts to reach a broker that went away.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The server side of the Redis transport, connected to its broker.
pub struct RedisListener {
    client: ::redis::Client,
    addr: String,
    connect_timeout: Duration,
    max_in_flight: usize,
    /// The subscriber connection opened by `bind`, used for the first subscription.
    first: Option<::redis::aio::PubSub>,
    publisher: Arc<Publisher>,
    /// With `group=name`: replicas in the group claim each request, so one handles it.
    group: Option<Arc<str>>,
    /// Raised once subscribed to every route.
    ready: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for RedisListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

impl RedisListener {
    /// Connects to the broker named by `redis://host:port`; fails if it cannot be reached.
    pub async fn bind(ep: &Endpoint) -> Result<Self> {
        ep.only_params(&["connect_timeout_ms", "max_in_flight", "group"])?;
        let group = match ep.param("group") {
            Some("") => {
                return Err(Error::InvalidUrl {
                    url: ep.as_str().to_owned(),
                    reason: "query parameter `group` needs a name".into(),
                });
            }
            other => other.map(Arc::from),
        };
        let connect_timeout = ep
            .param_as("connect_timeout_ms")?
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let max_in_flight = ep
            .param_as::<usize>("max_in_flight")?
            .unwrap_or(DEFAULT_MAX_IN_FLIGHT)
            .clamp(1, Semaphore::MAX_PERMITS);
        let (client, addr) = open(ep)?;
        let first = pubsub(&client, &addr, connect_timeout).await?;
        let publisher = Arc::new(Publisher::new(client.clone(), addr.clone(), connect_timeout));
        Ok(RedisListener {
            client,
            addr,
            connect_timeout,
            max_in_flight,
            first: Some(first),
            publisher,
            group,
            ready: tokio::sync::watch::Sender::new(false),
        })
    }
}

impl Listener for RedisListener {
    fn local_url(&self) -> String {
        self.addr.clone()
    }

    fn serve(self: Box<Self>, dispatcher: Dispatcher, shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        serve(*self, dispatcher, shutdown).boxed()
    }

    fn ready(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.ready.subscribe())
    }
}

async fn serve(mut l: RedisListener, dispatcher: Dispatcher, mut shutdown: Shutdown) -> Result<()> {
    let mut routes: Vec<String> = dispatcher.routes().routes().map(str::to_owned).collect();
    routes.sort();
    routes.dedup();
    let permits = Arc::new(Semaphore::new(l.max_in_flight));
    let mut work = JoinSet::new();
    let mut backoff = BACKOFF_MIN;
    let mut reconnecting = false;
    'connection: while !shutdown.is_down() {
        let first = l.first.take();
        let subscribe = async {
            let mut ps = match first {
                Some(ps) => ps,
                None => pubsub(&l.client, &l.addr, l.connect_timeout)
                    .await
                    .map_err(|e| e.to_string())?,
            };
            match tokio::time::timeout(COMMAND_TIMEOUT, ps.subscribe(&routes)).await {
                Ok(Ok(())) => Ok(ps),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("SUBSCRIBE not acknowledged within {COMMAND_TIMEOUT:?}")),
            }
        };
        let subscribed = tokio::select! {
            _ = shutdown.wait() => break,
            s = subscribe => s,
        };
        let mut messages = match subscribed {
            Ok(ps) => {
                if std::mem::take(&mut reconnecting) {
                    tracing::info!(addr = %l.addr, "reconnected to redis; subscribed again");
                }
                backoff = BACKOFF_MIN;
                tracing::debug!(addr = %l.addr, routes = ?routes, "subscribed");
                l.ready.send_replace(true);
                ps.into_on_message()
            }
            Err(e) => {
                tracing::warn!(addr = %l.addr, error = %e, retry_in = ?backoff, "cannot subscribe; retrying");
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        loop {
            while work.try_join_next().is_some() {}
            // Room for one more message first: while full, messages wait in Redis.
            let permit = tokio::select! {
                _ = shutdown.wait() => break 'connection,
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let msg = tokio::select! {
                _ = shutdown.wait() => break 'connection,
                m = messages.next() => m,
            };
            let Some(msg) = msg else {
                tracing::warn!(addr = %l.addr, "lost the redis subscriber connection; reconnecting");
                reconnecting = true;
                // Same broker: the publisher's connection is gone too, though it would only
                // find out (losing a reply) on its next write.
                l.publisher.disconnect();
                break;
            };
            let body = Bytes::copy_from_slice(msg.get_payload_bytes());
            let channel = msg.get_channel_name();
            let task = match &l.group {
                Some(group) => claim_then_handle(group, &dispatcher, &l.publisher, channel, body),
                None => handle(&dispatcher, &l.publisher, channel, body),
            };
            if let Some(task) = task {
                work.spawn(async move {
                    task.await;
                    drop(permit);
                });
            }
        }
    }
    // Unsubscribed (the subscriber connection is gone); let handlers in flight finish and
    // publish their replies.
    while work.join_next().await.is_some() {}
    l.publisher.disconnect();
    Ok(())
}

/// How long a claim on a request is kept: only replicas that receive the same PUBLISH race
/// for it, so this merely has to outlast their skew; then Redis drops the key.
const CLAIM_TTL: Duration = Duration::from_secs(60);

/// For a server in a group: a request is handled only by the replica that claims it first
/// (`SET … NX` on a key made of the group, the channel, the request id and a digest of the
/// packet). Events, which carry no id, still reach every replica.
fn claim_then_handle(
    group: &str,
    dispatcher: &Dispatcher,
    publisher: &Arc<Publisher>,
    channel: &str,
    body: Bytes,
) -> Option<BoxFuture<'static, ()>> {
    let id = match Packet::parse(&body) {
        Ok(p) if p.pattern.is_some() || p.data.is_some() => p.id.map(str::to_owned),
        _ => None,
    };
    let Some(id) = id else {
        return handle(dispatcher, publisher, channel, body);
    };
    let key = format!("switchboard:claim:{group}:{channel}:{id}:{:016x}", fnv1a(&body));
    let (dispatcher, publisher, channel) = (dispatcher.clone(), publisher.clone(), channel.to_owned());
    Some(
        async move {
            match publisher.claim(&key, CLAIM_TTL).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::trace!(%channel, "another replica of the group took the request");
                    return;
                }
                // Better handled twice than not at all.
                Err(e) => tracing::warn!(%channel, error = %e, "could not claim a request; handling it anyway"),
            }
            if let Some(task) = handle(&dispatcher, &publisher, &channel, body) {
                task.await;
            }
        }
        .boxed(),
    )
}

/// FNV-1a, 64 bits: a digest every replica computes alike, whatever it was built with.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Dispatches one message; returns the work left to do (publishing the reply, running the
/// event's listeners).
fn handle(
    dispatcher: &Dispatcher,
    publisher: &Arc<Publisher>,
    channel: &str,
    body: Bytes,
) -> Option<BoxFuture<'static, ()>> {
    // NestJS looks the handler up by the channel, not by the packet's pattern.
    let pattern = dispatcher.routes().channel_pattern(channel);
    let packet = match Packet::parse(&body) {
        Ok(p) if p.pattern.is_some() || p.data.is_some() => p,
        parsed => return external(dispatcher, &pattern, channel, &body, parsed.err()),
    };
    let outcome = dispatcher.dispatch(Incoming {
        pattern: &pattern,
        data: packet.data.map(str::as_bytes),
        request: packet.id.is_some(),
        metadata: packet.metadata_map(),
        transport: "redis",
    });
    let id = packet.id.map(|id| body.slice(Packet::range_in(&body, id)));
    let reply_to = format!("{channel}.reply");
    let publisher = publisher.clone();
    match (outcome, id) {
        (Dispatched::Reply(reply), Some(id)) => Some(
            async move {
                let mut steps = Steps::new(reply);
                let mut buf = Vec::new();
                while let Some(step) = steps.next().await {
                    buf.clear();
                    encode_reply(&mut buf, &id, step.outgoing());
                    if let Err(e) = publish_reply(&publisher, &reply_to, &buf).await {
                        tracing::warn!(channel = %reply_to, error = %e, "could not publish a reply");
                        return;
                    }
                }
            }
            .boxed(),
        ),
        (Dispatched::NoHandler { .. }, Some(id)) => Some(
            async move {
                let mut buf = Vec::new();
                encode_reply(&mut buf, &id, Outgoing::NoHandler);
                if let Err(e) = publish_reply(&publisher, &reply_to, &buf).await {
                    tracing::warn!(channel = %reply_to, error = %e, "could not publish a reply");
                }
            }
            .boxed(),
        ),
        (Dispatched::Event(run), _) => Some(run),
        _ => None,
    }
}

/// Publishes a reply packet, once more on a fresh connection if the connection it was
/// written to turned out to be dead (a broker restart): a client ignores a duplicate reply,
/// while a lost one would leave it waiting until its deadline.
async fn publish_reply(publisher: &Publisher, channel: &str, body: &[u8]) -> Result<()> {
    match publisher.publish(channel, body).await {
        Err(Error::ConnectionClosed { .. }) => publisher.publish(channel, body).await.map(drop),
        other => other.map(drop),
    }
}

/// A message that is not a NestJS packet: NestJS hands it to the channel's event listeners
/// as `{pattern: channel, data: <the message>}`, JSON-decoded when it is JSON, else as text.
fn external(
    dispatcher: &Dispatcher,
    pattern: &str,
    channel: &str,
    body: &Bytes,
    why: Option<PacketError>,
) -> Option<BoxFuture<'static, ()>> {
    let data: Vec<u8> = match why {
        // Valid JSON that is not a packet (an array, a number, an object without
        // `pattern`/`data`): the decoded value itself.
        None | Some(PacketError::NotAnObject) => body.to_vec(),
        Some(PacketError::InvalidJson(_)) | Some(PacketError::InvalidUtf8) => {
            let text = String::from_utf8_lossy(body);
            tracing::debug!(%channel, "a message that is not JSON; handing it to event listeners as text");
            serde_json::to_vec(&*text).expect("strings serialise")
        }
    };
    match dispatcher.dispatch(Incoming {
        pattern,
        data: Some(&data),
        request: false,
        metadata: None,
        transport: "redis",
    }) {
        Dispatched::Event(run) => Some(run),
        _ => None,
    }
}
