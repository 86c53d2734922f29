//! The Redis server: subscribes to every served route and hands each message to the shared
//! broker loop; replies are published on `<route>.reply`. Subscribes again after the broker
//! comes back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};

use super::subscriber::Subscriber;
use super::{COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_IN_FLIGHT, Publisher, open};
use crate::error::{Error, Result};
use crate::service::{Headers, Router};
use crate::transport::broker::{self, Delivery, Handling, Inbound, ReplySink, Source};
use crate::transport::{Endpoint, Listener, Shutdown};
use crate::wire::nestjs::packet::{Packet, encode_reply, reply_capacity};
use crate::wire::nestjs::steps::Step;

/// First and longest wait between attempts to reach a broker that went away.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The server side of the Redis transport, connected to its broker.
pub struct RedisListener {
    client: ::redis::Client,
    addr: String,
    connect_timeout: Duration,
    max_in_flight: usize,
    /// Silence on the subscriber connection after which Redis is sent a PING (`None`: never).
    ping_every: Option<Duration>,
    /// The subscriber connection opened by `bind`, used for the first subscription.
    first: Option<Subscriber>,
    publisher: Arc<Publisher>,
    /// With `group=name`: replicas in the group claim each request, so one handles it.
    group: Option<Arc<str>>,
    /// Up while subscribed to every route: lowered when the subscriber connection is lost,
    /// raised again once subscribed again.
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
        ep.only_params(&["connect_timeout_ms", broker::MAX_IN_FLIGHT, "group", "ping_interval_ms"])?;
        let group = match ep.param("group") {
            Some("") => {
                return Err(Error::InvalidUrl {
                    url: ep.redacted(),
                    reason: "query parameter `group` needs a name".into(),
                });
            }
            other => other.map(Arc::from),
        };
        let connect_timeout = ep
            .param_as("connect_timeout_ms")?
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let max_in_flight = broker::max_in_flight(ep, DEFAULT_MAX_IN_FLIGHT)?;
        let ping_every = super::ping_interval(ep)?;
        let (client, addr) = open(ep)?;
        let first = Subscriber::connect(client.get_connection_info(), &addr, connect_timeout).await?;
        let publisher = Arc::new(Publisher::new(client.clone(), addr.clone(), connect_timeout));
        Ok(RedisListener {
            client,
            addr,
            connect_timeout,
            max_in_flight,
            ping_every,
            first: Some(first),
            publisher,
            group,
            ready: tokio::sync::watch::Sender::new(false),
        })
    }

    /// A served channel, with what its messages' replies need.
    fn channel(&self, name: &str) -> Arc<Channel> {
        Arc::new(Channel {
            name: name.into(),
            reply: format!("{name}.reply").into(),
            publisher: self.publisher.clone(),
            group: self.group.clone(),
        })
    }
}

impl Listener for RedisListener {
    fn local_url(&self) -> String {
        self.addr.clone()
    }

    fn serve(self: Box<Self>, router: Router, shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        let mut routes: Vec<&str> = router.routes().map(|r| r.route()).collect();
        routes.sort_unstable();
        routes.dedup();
        let max_in_flight = self.max_in_flight;
        let channels = routes.iter().map(|route| self.channel(route)).collect();
        let source = Subscription {
            l: *self,
            channels,
            messages: None,
            backoff: BACKOFF_MIN,
            reconnecting: false,
            shutdown: shutdown.clone(),
        };
        async move {
            broker::serve(source, router, max_in_flight, shutdown).await;
            Ok(())
        }
        .boxed()
    }

    fn ready(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.ready.subscribe())
    }
}

/// The server's subscription to every route, renewed after the broker comes back.
struct Subscription {
    l: RedisListener,
    /// The channel of every route, sorted by name.
    channels: Vec<Arc<Channel>>,
    messages: Option<Subscriber>,
    backoff: Duration,
    reconnecting: bool,
    shutdown: Shutdown,
}

impl Subscription {
    /// Subscribes to every route, retrying with backoff; false once shutdown has begun.
    async fn subscribe(&mut self) -> bool {
        while !self.shutdown.is_down() {
            let first = self.l.first.take();
            let subscribed = async {
                let mut sub = match first {
                    Some(sub) => sub,
                    None => Subscriber::connect(
                        self.l.client.get_connection_info(),
                        &self.l.addr,
                        self.l.connect_timeout,
                    )
                    .await
                    .map_err(|e| e.to_string())?,
                };
                let names: Vec<&str> = self.channels.iter().map(|c| &*c.name).collect();
                match tokio::time::timeout(COMMAND_TIMEOUT, sub.subscribe(&names)).await {
                    Ok(Ok(())) => Ok(sub),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("SUBSCRIBE not acknowledged within {COMMAND_TIMEOUT:?}")),
                }
            }
            .await;
            match subscribed {
                Ok(sub) => {
                    if std::mem::take(&mut self.reconnecting) {
                        tracing::info!(addr = %self.l.addr, "reconnected to redis; subscribed again");
                        crate::signal::reconnected("redis");
                    }
                    self.backoff = BACKOFF_MIN;
                    let routes: Vec<&str> = self.channels.iter().map(|c| &*c.name).collect();
                    tracing::debug!(addr = %self.l.addr, ?routes, "subscribed");
                    self.l.ready.send_replace(true);
                    self.messages = Some(sub);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(addr = %self.l.addr, error = %e, retry_in = ?self.backoff, "cannot subscribe; retrying");
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = shutdown.wait() => return false,
                        _ = tokio::time::sleep(self.backoff) => {}
                    }
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        false
    }
}

impl Source for Subscription {
    type Delivery = Message;

    async fn next(&mut self) -> Option<Message> {
        loop {
            if self.messages.is_none() && !self.subscribe().await {
                return None;
            }
            let messages = self.messages.as_mut().expect("subscribed above");
            match messages.next(self.l.ping_every).await {
                Some(msg) => {
                    let name = &msg.channel[..];
                    let channel = match self.channels.binary_search_by(|c| c.name.as_bytes().cmp(name)) {
                        Ok(at) => self.channels[at].clone(),
                        // Not one we subscribed to: cannot happen, but costs only this.
                        Err(_) => self.l.channel(&String::from_utf8_lossy(name)),
                    };
                    return Some(Message {
                        body: msg.payload,
                        channel,
                    });
                }
                None => {
                    tracing::warn!(addr = %self.l.addr, "lost the redis subscriber connection; reconnecting");
                    // Not ready until subscribed again.
                    self.l.ready.send_replace(false);
                    self.messages = None;
                    self.reconnecting = true;
                    // Same broker: the publisher's connection is gone too, though it would
                    // only find out (losing a reply) on its next write.
                    self.l.publisher.disconnect();
                }
            }
        }
    }

    async fn stop(&mut self) {
        // Dropping the subscriber connection unsubscribes.
        self.messages = None;
    }

    async fn close(self) {
        self.l.publisher.disconnect();
    }
}

/// A served channel: its name, its reply channel, and where replies go. Made once, shared
/// by its messages.
struct Channel {
    name: Box<str>,
    reply: Box<str>,
    publisher: Arc<Publisher>,
    group: Option<Arc<str>>,
}

/// One message on a served channel.
struct Message {
    body: Bytes,
    channel: Arc<Channel>,
}

/// How long a claim on a request is kept: only replicas that receive the same PUBLISH race
/// for it, so this merely has to outlast their skew; then Redis drops the key.
const CLAIM_TTL: Duration = Duration::from_secs(60);

impl Delivery for Message {
    fn serve(self, router: &Router) -> Handling<impl Future<Output = ()> + Send + 'static> {
        // For a server in a group: a request is handled only by the replica that claims it
        // first (`SET … NX` on a key made of the group, the channel, the request id and a
        // digest of the packet). Events, which carry no id, still reach every replica.
        if let Some(group) = &self.channel.group
            && let Ok(p) = Packet::parse(&self.body)
            && (p.pattern.is_some() || p.data.is_some())
            && let Some(id) = p.id
        {
            let key = format!(
                "switchboard:claim:{group}:{}:{id}:{:016x}",
                self.channel.name,
                broker::fnv1a(&self.body)
            );
            let router = router.clone();
            let rest = async move {
                match self.channel.publisher.claim(&key, CLAIM_TTL).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::trace!(channel = %self.channel.name, "another replica of the group took the request");
                        return;
                    }
                    // Better handled twice than not at all.
                    Err(e) => {
                        tracing::warn!(channel = %self.channel.name, error = %e, "could not claim a request; handling it anyway")
                    }
                }
                self.route(&router).rest.await
            }
            .boxed();
            // Routed once claimed: the handler runs in a task of its own.
            return Handling { waits: true, rest };
        }
        let Handling { waits, rest } = self.route(router);
        Handling {
            waits,
            rest: rest.boxed(),
        }
    }
}

impl Message {
    /// Hands the message to the router now; then sends a request's reply.
    fn route(self, router: &Router) -> Handling<impl Future<Output = ()> + Send + 'static> {
        // NestJS looks the handler up by the channel, not by the packet's pattern.
        let address = router.channel_address(&self.channel.name);
        let (reply, id) = match broker::read(&self.body, address, "redis", Headers::new()) {
            Inbound::Packet { request, id } => (Some(broker::start(router.call(request))), id),
            Inbound::External(event) => {
                tracing::debug!(channel = %self.channel.name, "a message that is not a NestJS packet; handing it to event listeners");
                (Some(broker::start(router.call(event))), None)
            }
            Inbound::Invalid => {
                tracing::warn!(channel = %self.channel.name, "dropping a message that is not UTF-8 text");
                (None, None)
            }
        };
        let waits = reply.as_ref().is_some_and(broker::Started::waits);
        let rest = async move {
            let Some(reply) = reply else { return };
            let reply = reply.await;
            if let Some(id) = id {
                let mut sink = ReplyTo {
                    publisher: &self.channel.publisher,
                    channel: &self.channel.reply,
                    id,
                    buf: Vec::new(),
                };
                if let Err(e) = broker::send_reply(reply, &mut sink).await {
                    tracing::warn!(channel = %sink.channel, error = %e, "could not publish a reply");
                }
            }
        };
        Handling { waits, rest }
    }
}

/// A request's reply channel.
struct ReplyTo<'a> {
    publisher: &'a Publisher,
    channel: &'a str,
    id: Bytes,
    buf: Vec<u8>,
}

impl ReplySink for ReplyTo<'_> {
    fn send(&mut self, step: Step) -> impl Future<Output = Result<()>> + Send {
        // Encoded before the future, which then holds neither the step nor a second publish:
        // it is part of every reply's future.
        self.buf.clear();
        let what = step.outgoing();
        self.buf.reserve(reply_capacity(&self.id, &what));
        encode_reply(&mut self.buf, &self.id, what);
        let (publisher, channel, buf) = (self.publisher, self.channel, &self.buf);
        async move {
            let sent = publisher.publish(channel, buf).await;
            match sent {
                // Once more on a fresh connection if the one it was written to turned out to
                // be dead (a broker restart): a client ignores a duplicate reply, while a lost
                // one would leave it waiting until its deadline.
                Err(Error::ConnectionClosed { .. }) => Box::pin(publisher.publish(channel, buf)).await.map(drop),
                other => other.map(drop),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Endpoint as Handler, Kind, Reply, Route, RouterBuilder};

    /// Each message's future is allocated: it must not carry the publisher's connecting
    /// path or a second publish (see the client's test).
    #[test]
    fn a_message_s_future_holds_no_connecting() {
        let mut builder = RouterBuilder::default();
        builder.add(
            "sum",
            "\"sum\"",
            Kind::Request,
            Handler {
                location: "noop".into(),
                order: Default::default(),
                route: Route::from_fn(|_| std::future::ready(Reply::empty()).boxed()),
            },
        );
        let router = builder.build(false, |route| route, |_, route| route);
        let (client, addr) = open(&Endpoint::parse("redis://127.0.0.1:6379").unwrap()).unwrap();
        let message = Message {
            body: Bytes::from_static(br#"{"pattern":"sum","data":1,"id":"1"}"#),
            channel: Arc::new(Channel {
                name: "sum".into(),
                reply: "sum.reply".into(),
                publisher: Arc::new(Publisher::new(client, addr, Duration::from_secs(1))),
                group: None,
            }),
        };
        let publish = size_of_val(&message.channel.publisher.publish("sum.reply", b"{}"));
        let work = message.route(&router).rest;
        // The reply's publish and the message's own state; a second publish (the retry) or
        // the connecting path would add as much again.
        assert!(
            size_of_val(&work) < publish + 1024,
            "{} bytes, the publish {publish}",
            size_of_val(&work)
        );
    }
}
