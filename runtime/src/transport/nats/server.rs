//! The NATS server: one subscription per route (in the URL's queue group, if any), each
//! message handed to the shared broker loop, reply packets published to the message's reply
//! subject. With `?jetstream=`, event-only routes are consumed from a durable JetStream
//! consumer instead.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;
use tokio_stream::StreamMap;

use super::{NatsOptions, nats_headers};
use crate::error::{Error, Result, RpcError};
use crate::service::{Address, Context, Headers, Kind, Request, Router};
use crate::transport::broker::{self, Delivery, Handling, Inbound, ReplySink, Source};
use crate::transport::{Endpoint, Listener, Shutdown};
use crate::wire::nestjs::packet::{Outgoing, encode_reply, reply_capacity};
use crate::wire::nestjs::steps::Step;

/// How long to wait for a broker that is away before giving up on a message's ack.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The server side of the NATS transport, connected and ready to subscribe.
pub struct NatsListener {
    opts: NatsOptions,
    nats: async_nats::Client,
    /// Up while subscribed: raised once every subscription is in place, lowered when the
    /// connection is lost, raised again when async-nats has reconnected (it subscribes
    /// again first).
    ready: tokio::sync::watch::Sender<bool>,
    /// Set once every subscription was in place: from then on a reconnection means ready.
    subscribed: Arc<AtomicBool>,
}

impl std::fmt::Debug for NatsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsListener").field("url", &self.opts.url).finish()
    }
}

impl NatsListener {
    /// Connects to the NATS server of `nats://host:port[?queue=…&jetstream=…]`; an
    /// unreachable broker is reported here.
    pub async fn bind(ep: &Endpoint) -> Result<Self> {
        let opts = NatsOptions::parse(ep)?;
        let url = opts.url.clone();
        let ready = tokio::sync::watch::Sender::new(false);
        let subscribed = Arc::new(AtomicBool::new(false));
        let (up, was_subscribed) = (ready.clone(), subscribed.clone());
        let nats = opts
            .connect(CONNECT_TIMEOUT, move |event| match event {
                async_nats::Event::Disconnected => {
                    up.send_replace(false);
                    tracing::warn!(url = %url, "server lost its NATS connection; reconnecting")
                }
                // Also the first connection, before `serve` subscribes: ready only after that.
                // On a reconnection async-nats sends the subscriptions again before anything
                // else, so they are in place within a round trip.
                async_nats::Event::Connected if was_subscribed.load(Ordering::Acquire) => {
                    up.send_replace(true);
                    tracing::info!(url = %url, "server connected to NATS; subscriptions restored")
                }
                async_nats::Event::Connected => tracing::debug!(url = %url, "server connected to NATS"),
                async_nats::Event::SlowConsumer(sid) => {
                    // One event a message dropped: counted each, warned of once a second.
                    crate::signal::dropped("nats", "slow_consumer");
                    if let Some(held_back) = super::SLOW_CONSUMER.allow() {
                        tracing::warn!(url = %url, sid, held_back, "NATS slow consumer: a subscription's buffer (subscription_capacity, 65,536 messages by default) was full; messages dropped (max_in_flight)")
                    }
                }
                other => tracing::debug!(url = %url, event = %other, "NATS event"),
            })
            .await?;
        Ok(NatsListener {
            opts,
            nats,
            ready,
            subscribed,
        })
    }
}

impl Listener for NatsListener {
    fn local_url(&self) -> String {
        self.opts.url.clone()
    }

    fn serve(self: Box<Self>, router: Router, shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        async move {
            let max_in_flight = self.opts.max_in_flight;
            let source = Subscriptions::open(*self, &router).await?;
            broker::serve(source, router, max_in_flight, shutdown).await;
            Ok(())
        }
        .boxed()
    }

    fn ready(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.ready.subscribe())
    }
}

/// Every route's subscription: core NATS, or a durable consumer for event-only routes with
/// `?jetstream=`. async-nats reconnects and resubscribes by itself; the JetStream consumers
/// recover by themselves too.
struct Subscriptions {
    opts: NatsOptions,
    /// Shared with every message: a clone of the client allocates, and is 150 bytes of
    /// every message's future.
    nats: Arc<async_nats::Client>,
    // Not `select_all`: its FuturesUnordered wakes the task again whenever it polled every
    // stream, which made one needless worker wake-up (a futex call) per message.
    core: StreamMap<&'static str, async_nats::Subscriber>,
    durable: StreamMap<&'static str, pull::Stream>,
}

impl Subscriptions {
    /// Subscribes to every route of `router`; raises the listener's ready flag once the NATS
    /// server has them all.
    async fn open(l: NatsListener, router: &Router) -> Result<Self> {
        let NatsListener {
            opts,
            nats,
            ready,
            subscribed,
        } = l;
        let mut durable_routes = Vec::new();
        let mut core = StreamMap::new();
        for info in router.routes() {
            let route = info.route();
            if opts.jetstream.is_some() && !info.has_request_handler() {
                durable_routes.push(route);
                continue;
            }
            let sub = match &opts.queue {
                Some(q) => nats.queue_subscribe(route.to_owned(), q.clone()).await,
                None => nats.subscribe(route.to_owned()).await,
            }
            .map_err(|e| broker::subscribe_error(&format!("NATS subject `{route}`"), e))?;
            core.insert(route, sub);
        }
        let mut durable = StreamMap::new();
        if let Some(stream_name) = &opts.jetstream
            && !durable_routes.is_empty()
        {
            durable.extend(durable_messages(&opts, &nats, stream_name, &durable_routes).await?);
        }
        // Subscriptions are in place once the server has processed them (a flush only hands
        // the SUBs to the socket).
        confirm_subscribed(&nats, &opts.url).await?;
        tracing::info!(url = %opts.url, queue = ?opts.queue, durable = durable_routes.len(), "NATS server subscribed");
        subscribed.store(true, Ordering::Release);
        // Unless the connection was lost meanwhile (async-nats then subscribes again itself,
        // and the reconnection raises the flag).
        if nats.connection_state() == async_nats::connection::State::Connected {
            ready.send_replace(true);
        }
        Ok(Subscriptions {
            opts,
            nats: Arc::new(nats),
            core,
            durable,
        })
    }
}

impl Source for Subscriptions {
    type Delivery = Message;

    async fn next(&mut self) -> Option<Message> {
        loop {
            tokio::select! {
                biased;
                Some((route, msg)) = self.core.next(), if !self.core.is_empty() => {
                    return Some(Message::Core {
                        route,
                        msg,
                        nats: self.nats.clone(),
                    });
                }
                Some((route, msg)) = self.durable.next(), if !self.durable.is_empty() => match msg {
                    Ok(msg) => {
                        return Some(Message::Durable {
                            route,
                            msg: Box::new(msg),
                            max_deliver: self.opts.max_deliver,
                        });
                    }
                    Err(e) => {
                        // The consumer recovers by itself (missed heartbeats, a broker away);
                        // pause so that a burst of errors does not spin.
                        tracing::warn!(url = %self.opts.url, route, error = %e, "JetStream consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                // Every subscription ended: the connection is closed for good.
                else => return None,
            }
        }
    }

    async fn stop(&mut self) {
        // Dropping the subscriptions unsubscribes; the connection stays for the replies.
        self.core = StreamMap::new();
        self.durable = StreamMap::new();
    }

    async fn close(self) {
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, self.nats.flush()).await;
        tracing::debug!(url = %self.opts.url, "NATS server stopped");
    }
}

/// Waits until the NATS server has registered every subscription sent so far on `nats`: it
/// handles a connection's commands in order, so a message published to our own inbox after
/// them comes back only once they are all in place.
async fn confirm_subscribed(nats: &async_nats::Client, url: &str) -> Result<()> {
    let failed = |reason: String| Error::Connect {
        addr: url.to_owned(),
        reason,
    };
    let inbox = nats.new_inbox();
    let mut echo = nats
        .subscribe(inbox.clone())
        .await
        .map_err(|e| failed(format!("cannot subscribe: {e}")))?;
    nats.publish(inbox, Bytes::new())
        .await
        .map_err(|e| failed(format!("cannot publish: {e}")))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(failed("the connection closed while subscribing".into())),
        Err(_) => Err(failed(format!(
            "the NATS server did not confirm the subscriptions within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// The JetStream stream over the event-only routes, and one durable pull consumer per
/// route, filtered on its subject: services sharing a stream only get their own events,
/// and replicas sharing a `durable` name split them.
async fn durable_messages(
    opts: &NatsOptions,
    nats: &async_nats::Client,
    stream_name: &str,
    routes: &[&'static str],
) -> Result<Vec<(&'static str, pull::Stream)>> {
    let js_err = |what: &str, e: Box<dyn std::error::Error + Send + Sync>| Error::Broker {
        context: format!("JetStream {what} `{stream_name}` at {}", opts.url),
        source: Some(e),
    };
    let js = jetstream::new(nats.clone());
    let mut stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: stream_name.to_owned(),
            subjects: routes.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        })
        .await
        .map_err(|e| js_err("cannot create stream", e.into()))?;
    // An existing stream (another service, an older version) must cover our subjects too.
    let info = stream
        .info()
        .await
        .map_err(|e| js_err("cannot read stream", e.into()))?
        .clone();
    let missing: Vec<_> = routes
        .iter()
        .filter(|r| !info.config.subjects.iter().any(|s| s == **r))
        .collect();
    if !missing.is_empty() {
        let mut config = info.config.clone();
        config.subjects.extend(missing.iter().map(|r| r.to_string()));
        js.update_stream(config)
            .await
            .map_err(|e| js_err("cannot add our subjects to stream", e.into()))?;
    }
    let mut out = Vec::with_capacity(routes.len());
    for &route in routes {
        // Consumer names cannot hold every character a route can: name it by a stable hash.
        let name = format!("{}-{:016x}", opts.durable, broker::fnv1a(route.as_bytes()));
        let consumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("switchboard: events of `{route}`")),
                    filter_subject: route.to_owned(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: opts.ack_wait,
                    max_deliver: opts.max_deliver,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| js_err(&format!("cannot create durable consumer `{name}` on"), e.into()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| js_err("cannot consume from", e.into()))?;
        out.push((route, messages));
    }
    Ok(out)
}

/// One message on a served route.
enum Message {
    /// From a core subscription: a request (with a reply subject) or an event.
    Core {
        route: &'static str,
        msg: async_nats::Message,
        nats: Arc<async_nats::Client>,
    },
    /// A durable event, acknowledged once handled.
    Durable {
        route: &'static str,
        // Boxed: a core message, the common one, is a quarter of its size.
        msg: Box<jetstream::Message>,
        max_deliver: i64,
    },
}

impl Delivery for Message {
    fn serve(self, router: &Router) -> Handling<impl Future<Output = ()> + Send + 'static> {
        match self {
            Message::Core { route, msg, nats } => {
                let Handling { waits, rest } = serve_core(route, msg, nats, router);
                Handling {
                    waits,
                    rest: rest.left_future(),
                }
            }
            Message::Durable {
                route,
                msg,
                max_deliver,
            } => {
                let Handling { waits, rest } = serve_durable(route, *msg, max_deliver, router);
                Handling {
                    waits,
                    // Boxed: far bigger than a core message's future, which would be as big otherwise.
                    rest: rest.boxed().right_future(),
                }
            }
        }
    }
}

/// Why a body is not JSON, when it is not. NestJS's NATS server fails on such a message, so
/// unlike Redis's it is not handed to listeners as text.
fn not_json(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .err()
        .map(|e| e.to_string())
}

/// The message as a request or event, or why it is not JSON. NATS headers win over v12's
/// body `metadata` for keys both carry.
fn read(
    route: &'static str,
    msg: &async_nats::Message,
    router: &Router,
) -> std::result::Result<(Request, Option<Bytes>), String> {
    let (mut request, id) = match broker::read(&msg.payload, router.channel_address(route), "nats", Headers::new()) {
        Inbound::Packet { request, id } => (request, id),
        Inbound::External(event) => match not_json(&msg.payload) {
            None => {
                tracing::debug!(subject = %msg.subject, "a message that is not a NestJS packet; handing it to event listeners");
                (event, None)
            }
            Some(why) => return Err(why),
        },
        Inbound::Invalid => return Err("not UTF-8".into()),
    };
    if let Some(headers) = &msg.headers {
        request.context_mut().headers_mut().extend(nats_headers(headers));
    }
    Ok((request, id))
}

fn serve_core(
    route: &'static str,
    msg: async_nats::Message,
    nats: Arc<async_nats::Client>,
    router: &Router,
) -> Handling<impl Future<Output = ()> + Send + 'static> {
    let (reply, id) = match read(route, &msg, router) {
        Ok((request, id)) => (broker::start(router.call(request)), id),
        Err(why) => return Handling::done(refuse(msg, nats, why).boxed().left_future()),
    };
    // Only what the reply needs is kept: this future is allocated for every message.
    let to = msg.reply;
    let waits = reply.waits();
    let rest = async move {
        let reply = reply.await;
        match (id, to) {
            (Some(id), Some(to)) => {
                let mut sink = ReplyTo { nats: &nats, to, id };
                if let Err(e) = broker::send_reply(reply, &mut sink).await {
                    tracing::warn!(reply_to = %sink.to, error = %e, "could not publish a reply");
                }
            }
            // A request without a reply subject: run it and drop the answer, as NestJS does.
            (Some(_), None) => {
                let _ = reply.drain().await;
            }
            // An event: the router ran its listeners.
            (None, _) => {}
        }
    };
    Handling {
        waits,
        rest: rest.right_future(),
    }
}

/// Drops a message that is not JSON; a requester is answered with an error.
async fn refuse(msg: async_nats::Message, nats: Arc<async_nats::Client>, why: String) {
    tracing::error!(subject = %msg.subject, error = %why, bytes = msg.payload.len(), "dropping a NATS message that is not JSON");
    if let Some(to) = msg.reply {
        // No id to echo; a raw requester still gets an answer instead of a timeout.
        let err = RpcError::new(format!("invalid JSON payload on `{}`: {why}", msg.subject));
        let mut buf = Vec::new();
        encode_reply(&mut buf, b"null", Outgoing::Error(&err));
        let _ = nats.publish(to, buf.into()).await;
    }
}

/// A request's reply subject.
struct ReplyTo<'a> {
    nats: &'a async_nats::Client,
    to: async_nats::Subject,
    id: Bytes,
}

impl ReplySink for ReplyTo<'_> {
    fn send(&mut self, step: Step) -> impl Future<Output = Result<()>> + Send {
        // Encoded before the future, which then holds neither the step nor the rare paths:
        // it is part of every reply's future.
        let what = step.outgoing();
        let mut buf = Vec::with_capacity(reply_capacity(&self.id, &what));
        encode_reply(&mut buf, &self.id, what);
        let len = buf.len();
        let this = &*self;
        async move {
            let sent = this.nats.publish(this.to.clone(), buf.into()).await;
            match sent {
                Ok(()) => Ok(()),
                // Too big for the broker: an error reply instead, so that the caller is told
                // instead of waiting for its deadline; nothing more goes.
                Err(e) if matches!(e.kind(), async_nats::client::PublishErrorKind::MaxPayloadExceeded) => {
                    Box::pin(this.too_large(len)).await
                }
                Err(e) => Err(Error::broker(format!("cannot publish a reply to `{}`", this.to), e)),
            }
        }
    }
}

impl ReplyTo<'_> {
    /// Tells the caller its reply of `len` bytes was too big for the broker.
    async fn too_large(&self, len: usize) -> Result<()> {
        let err = RpcError::new(format!("the reply ({len} bytes) exceeds the NATS server's max_payload"));
        let mut buf = Vec::new();
        encode_reply(&mut buf, &self.id, Outgoing::Error(&err));
        let _ = self.nats.publish(self.to.clone(), buf.into()).await;
        Err(Error::TooLarge {
            context: format!("a reply to `{}` for the NATS server's max_payload", self.to),
            size: len,
            limit: self.nats.server_info().max_payload,
        })
    }
}

/// A durable event: acked once every listener succeeded, otherwise redelivered (after a
/// pause that grows with the number of deliveries).
fn serve_durable(
    route: &'static str,
    msg: jetstream::Message,
    max_deliver: i64,
    router: &Router,
) -> Handling<impl Future<Output = ()> + Send + 'static> {
    let read = read(route, &msg, router).map(|(request, _)| broker::start(router.call(as_event(request))));
    let waits = read.as_ref().is_ok_and(broker::Started::waits);
    let rest = async move {
        let kind = match read {
            Err(why) => {
                tracing::error!(subject = %msg.subject, error = %why, "dropping a durable NATS event that is not JSON");
                // Redelivery cannot help.
                AckKind::Term
            }
            Ok(reply) => {
                let reply = reply.await;
                // Nobody listens (the router logged it): nothing to retry.
                if reply.is_no_handler() || reply.drain().await.is_ok() {
                    AckKind::Ack
                } else {
                    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1).max(1);
                    if delivered == max_deliver {
                        tracing::error!(
                            subject = %msg.subject,
                            delivered,
                            "a durable event failed on its last delivery (max_deliver); JetStream keeps it in \
                             the stream but delivers it no more"
                        );
                    }
                    AckKind::Nak(Some(Duration::from_millis(100u64 << delivered.min(7))))
                }
            }
        };
        if let Err(e) = msg.ack_with(kind).await {
            // The broker redelivers after ack_wait: at least once, never lost.
            tracing::warn!(subject = %msg.subject, error = %e, "could not acknowledge a durable event");
        }
    };
    Handling { waits, rest }
}

/// A durable message is an event even if its packet carries an id: nobody waits for a reply
/// on a stream.
fn as_event(mut request: Request) -> Request {
    if request.kind() == Kind::Event {
        return request;
    }
    let address: Address = request.address().clone();
    let ctx = Context::new("nats", Kind::Event).with_headers(request.headers().clone());
    let payload = request.take_payload().unwrap_or_else(crate::service::Payload::null);
    Request::new(address, payload, ctx)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::service::{Endpoint as Handler, Reply, Route, RouterBuilder};

    fn router() -> Router {
        let mut builder = RouterBuilder::default();
        builder.add(
            "evt",
            "\"evt\"",
            Kind::Event,
            Handler {
                location: "noop".into(),
                order: Default::default(),
                route: Route::from_fn(|_| std::future::ready(Reply::empty()).boxed()),
            },
        );
        builder.build(false, |route| route, |_, route| route)
    }

    /// A NATS server that takes the connection and every command, but delivers the messages
    /// a client sends to its own inbox only once `release` is notified: it is still busy
    /// registering the client's subscriptions until then.
    async fn slow_server(release: Arc<tokio::sync::Notify>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let release = release.clone();
                tokio::spawn(async move {
                    let (read, mut write) = sock.into_split();
                    let info =
                        r#"INFO {"server_id":"x","version":"2.9.10","proto":1,"headers":true,"max_payload":1048576}"#;
                    write.write_all(format!("{info}\r\n").as_bytes()).await.unwrap();
                    let mut lines = BufReader::new(read);
                    let mut sids = std::collections::HashMap::new();
                    let mut line = String::new();
                    while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
                        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
                        line.clear();
                        match words.first().map(String::as_str) {
                            Some("PING") => write.write_all(b"PONG\r\n").await.unwrap(),
                            Some("SUB") => {
                                sids.insert(words[1].clone(), words.last().unwrap().clone());
                            }
                            Some("PUB") => {
                                let len: usize = words.last().unwrap().parse().unwrap();
                                let mut payload = vec![0; len + 2];
                                lines.read_exact(&mut payload).await.unwrap();
                                if let Some(sid) = sids.get(&words[1]) {
                                    release.notified().await;
                                    let msg = format!("MSG {} {sid} {len}\r\n", words[1]);
                                    write.write_all(msg.as_bytes()).await.unwrap();
                                    write.write_all(&payload).await.unwrap();
                                }
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        format!("nats://{addr}")
    }

    #[tokio::test]
    async fn ready_waits_until_the_server_has_the_subscriptions() {
        let release = Arc::new(tokio::sync::Notify::new());
        let url = slow_server(release.clone()).await;
        let listener = NatsListener::bind(&Endpoint::parse(&url).unwrap()).await.unwrap();
        let mut ready = listener.ready().unwrap();
        let (stop, shutdown) = Shutdown::new();
        let serving = tokio::spawn(Box::new(listener).serve(router(), shutdown));
        let early = tokio::time::timeout(Duration::from_millis(300), ready.wait_for(|&up| up))
            .await
            .is_ok();
        assert!(!early, "ready before the server confirmed the subscriptions");
        release.notify_one();
        let confirmed = tokio::time::timeout(Duration::from_secs(3), ready.wait_for(|&up| up))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(confirmed, "never ready");
        stop.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    }
}
