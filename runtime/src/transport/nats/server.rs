//! The NATS server: one subscription per route (in the URL's queue group, if any), each
//! message handled on its own task, reply packets published to the message's reply subject.
//! With `?jetstream=`, event-only routes are consumed from a durable JetStream consumer instead.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;
use tokio::task::JoinSet;
use tokio_stream::StreamMap;

use super::{NatsOptions, headers_to_map};
use crate::codec::{Outgoing, Packet, PacketError, encode_reply};
use crate::dispatch::{Dispatched, Dispatcher, Incoming};
use crate::error::{Error, Result, RpcError};
use crate::transport::steps::Steps;
use crate::transport::{Endpoint, Listener, Shutdown};

/// Messages handled at once by one server; beyond it, messages wait in the subscriptions.
const MAX_IN_FLIGHT: usize = 1024;
/// How long to wait for a broker that is away before giving up on a message's ack.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The server side of the NATS transport, connected and ready to subscribe.
pub struct NatsListener {
    opts: NatsOptions,
    nats: async_nats::Client,
    /// Raised once every subscription is in place.
    ready: tokio::sync::watch::Sender<bool>,
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
        let nats = opts
            .connect(CONNECT_TIMEOUT, move |event| match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!(url = %url, "server lost its NATS connection; reconnecting")
                }
                async_nats::Event::Connected => {
                    tracing::info!(url = %url, "server connected to NATS; subscriptions restored")
                }
                async_nats::Event::SlowConsumer(sid) => {
                    tracing::warn!(url = %url, sid, "NATS slow consumer: the server dropped messages")
                }
                other => tracing::debug!(url = %url, event = %other, "NATS event"),
            })
            .await?;
        Ok(NatsListener {
            opts,
            nats,
            ready: tokio::sync::watch::Sender::new(false),
        })
    }
}

impl Listener for NatsListener {
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

async fn serve(l: NatsListener, dispatcher: Dispatcher, mut shutdown: Shutdown) -> Result<()> {
    let NatsListener { opts, nats, ready } = l;
    let routes = dispatcher.routes();
    let mut durable_routes = Vec::new();
    // Not `select_all`: its FuturesUnordered wakes the task again whenever it polled every
    // stream, which made one needless worker wake-up (a futex call) per message.
    let mut core = StreamMap::new();
    let unique: std::collections::BTreeSet<&str> = routes.routes().collect();
    for route in unique {
        let handlers = routes.get(route).expect("listed routes resolve");
        if opts.jetstream.is_some() && handlers.message.is_none() {
            durable_routes.push(handlers.route);
            continue;
        }
        let sub = match &opts.queue {
            Some(q) => nats.queue_subscribe(route.to_owned(), q.clone()).await,
            None => nats.subscribe(route.to_owned()).await,
        }
        .map_err(|e| Error::Protocol(format!("cannot subscribe to NATS subject `{route}`: {e}")))?;
        core.insert(handlers.route, sub);
    }
    let mut durable = StreamMap::new();
    if let Some(stream_name) = &opts.jetstream
        && !durable_routes.is_empty()
    {
        durable.extend(durable_messages(&opts, &nats, stream_name, &durable_routes).await?);
    }
    // Subscriptions are in place once the server has processed them (a flush only hands the
    // SUBs to the socket).
    confirm_subscribed(&nats, &opts.url).await?;
    tracing::info!(url = %opts.url, queue = ?opts.queue, durable = durable_routes.len(), "NATS server subscribed");
    ready.send_replace(true);

    let mut tasks = JoinSet::new();
    loop {
        // Reaped here rather than awaited in the select: a task waiting on `join_next` is
        // woken by every handler that ends, one more wake-up per message.
        while tasks.try_join_next().is_some() {}
        let room = tasks.len() < MAX_IN_FLIGHT;
        tokio::select! {
            _ = shutdown.wait() => break,
            Some(_) = tasks.join_next(), if !room => {}
            Some((route, msg)) = core.next(), if room => handle(&nats, &dispatcher, &mut tasks, route, msg),
            Some((route, msg)) = durable.next(), if room => match msg {
                Ok(msg) => handle_durable(&dispatcher, &mut tasks, route, msg, opts.max_deliver),
                Err(e) => {
                    // The consumer recovers by itself (missed heartbeats, a broker away); pause
                    // so that a burst of errors does not spin.
                    tracing::warn!(url = %opts.url, route, error = %e, "JetStream consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    // Stop taking messages (unsubscribes), let in-flight ones finish, and send their replies.
    drop(core);
    drop(durable);
    while tasks.join_next().await.is_some() {}
    let _ = tokio::time::timeout(CONNECT_TIMEOUT, nats.flush()).await;
    tracing::debug!(url = %opts.url, "NATS server stopped");
    Ok(())
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
) -> Result<Vec<(&'static str, jetstream::consumer::pull::Stream)>> {
    let js_err = |what: &str, e: &dyn std::fmt::Display| {
        Error::Protocol(format!("JetStream {what} `{stream_name}` at {}: {e}", opts.url))
    };
    let js = jetstream::new(nats.clone());
    let mut stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: stream_name.to_owned(),
            subjects: routes.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        })
        .await
        .map_err(|e| js_err("cannot create stream", &e))?;
    // An existing stream (another service, an older version) must cover our subjects too.
    let info = stream
        .info()
        .await
        .map_err(|e| js_err("cannot read stream", &e))?
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
            .map_err(|e| js_err("cannot add our subjects to stream", &e))?;
    }
    let mut out = Vec::with_capacity(routes.len());
    for &route in routes {
        // Consumer names cannot hold every character a route can: name it by a stable hash.
        let name = format!("{}-{:016x}", opts.durable, fnv1a(route.as_bytes()));
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
            .map_err(|e| js_err(&format!("cannot create durable consumer `{name}` on"), &e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| js_err("cannot consume from", &e))?;
        out.push((route, messages));
    }
    Ok(out)
}

/// FNV-1a, 64 bits: stable across builds, unlike the standard library's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a message body means to a NestJS server (§0.4).
enum Body<'a> {
    /// A request (`id` present) or event with the packet's fields.
    Packet(Packet<'a>),
    /// Valid JSON without `pattern`/`data` (or not an object): an event whose data is the
    /// whole body.
    External,
    /// Not JSON: NestJS crashes here; we log and answer or drop.
    Invalid(String),
}

fn classify(payload: &[u8]) -> Body<'_> {
    match Packet::parse(payload) {
        Ok(p) if p.pattern.is_none() && p.data.is_none() => Body::External,
        Ok(p) => Body::Packet(p),
        Err(PacketError::NotAnObject) => Body::External,
        Err(PacketError::InvalidJson(e)) => Body::Invalid(e.to_string()),
        Err(PacketError::InvalidUtf8) => Body::Invalid("not UTF-8".into()),
    }
}

/// Handler metadata: NATS headers, then v12's body `metadata` for keys the headers lack.
fn metadata(
    msg_headers: Option<&async_nats::HeaderMap>,
    packet: Option<&Packet<'_>>,
) -> Option<HashMap<String, String>> {
    let mut meta = msg_headers.map(headers_to_map);
    if let Some(body_meta) = packet.and_then(Packet::metadata_map) {
        let meta = meta.get_or_insert_with(HashMap::new);
        for (k, v) in body_meta {
            meta.entry(k).or_insert(v);
        }
    }
    meta
}

fn handle(
    nats: &async_nats::Client,
    dispatcher: &Dispatcher,
    tasks: &mut JoinSet<()>,
    route: &'static str,
    msg: async_nats::Message,
) {
    let pattern = dispatcher.routes().channel_pattern(route);
    let body = classify(&msg.payload);
    let (data, id) = match &body {
        Body::Packet(p) => (p.data.map(str::as_bytes), p.id),
        Body::External => (Some(&msg.payload[..]), None),
        Body::Invalid(e) => {
            tracing::error!(subject = %msg.subject, error = %e, bytes = msg.payload.len(), "dropping a NATS message that is not JSON");
            if let Some(reply) = msg.reply.clone() {
                // No id to echo; a raw requester still gets an answer instead of a timeout.
                let err = RpcError::new(format!("invalid JSON payload on `{}`: {e}", msg.subject));
                let mut buf = Vec::new();
                encode_reply(&mut buf, b"null", Outgoing::Error(&err));
                let nats = nats.clone();
                tasks.spawn(async move {
                    let _ = nats.publish(reply, buf.into()).await;
                });
            }
            return;
        }
    };
    let packet = match &body {
        Body::Packet(p) => Some(p),
        _ => None,
    };
    let outcome = dispatcher.dispatch(Incoming {
        pattern: &pattern,
        data,
        request: id.is_some(),
        metadata: metadata(msg.headers.as_ref(), packet),
        transport: "nats",
    });
    let id = id.map(|raw| Bytes::copy_from_slice(raw.as_bytes()));
    match (outcome, id, msg.reply) {
        (Dispatched::Reply(reply), Some(id), Some(to)) => {
            let nats = nats.clone();
            tasks.spawn(async move {
                let mut steps = Steps::new(reply);
                while let Some(step) = steps.next().await {
                    let mut buf = Vec::new();
                    encode_reply(&mut buf, &id, step.outgoing());
                    if !publish_reply(&nats, &to, &id, buf).await {
                        break;
                    }
                }
            });
        }
        // A request without a reply subject: run it and drop the answer, as NestJS does.
        (Dispatched::Reply(mut reply), _, _) => {
            tasks.spawn(async move { while reply.next().await.is_some() {} });
        }
        (Dispatched::NoHandler { .. }, Some(id), Some(to)) => {
            let nats = nats.clone();
            tasks.spawn(async move {
                let mut buf = Vec::new();
                encode_reply(&mut buf, &id, Outgoing::NoHandler);
                publish_reply(&nats, &to, &id, buf).await;
            });
        }
        (Dispatched::Event(run), _, _) => {
            tasks.spawn(run);
        }
        _ => {}
    }
}

/// Publishes one reply packet; a packet too big for the broker becomes an error reply, so
/// the caller is told instead of waiting for its deadline. False when nothing more should go.
async fn publish_reply(nats: &async_nats::Client, to: &async_nats::Subject, id: &[u8], buf: Vec<u8>) -> bool {
    let len = buf.len();
    match nats.publish(to.clone(), buf.into()).await {
        Ok(()) => true,
        Err(e) if matches!(e.kind(), async_nats::client::PublishErrorKind::MaxPayloadExceeded) => {
            tracing::error!(reply_to = %to, bytes = len, error = %e, "reply too big for the NATS server");
            let err = RpcError::new(format!("the reply ({len} bytes) exceeds the NATS server's max_payload"));
            let mut buf = Vec::new();
            encode_reply(&mut buf, id, Outgoing::Error(&err));
            let _ = nats.publish(to.clone(), buf.into()).await;
            false
        }
        Err(e) => {
            tracing::warn!(reply_to = %to, error = %e, "could not publish a reply");
            false
        }
    }
}

/// A durable event: acked once every listener succeeded, otherwise redelivered (after a
/// pause that grows with the number of deliveries).
fn handle_durable(
    dispatcher: &Dispatcher,
    tasks: &mut JoinSet<()>,
    route: &'static str,
    msg: jetstream::Message,
    max_deliver: i64,
) {
    let pattern = dispatcher.routes().channel_pattern(route);
    let run = {
        let body = classify(&msg.payload);
        let data = match &body {
            Body::Packet(p) => p.data.map(str::as_bytes),
            Body::External => Some(&msg.payload[..]),
            Body::Invalid(e) => {
                tracing::error!(subject = %msg.subject, error = %e, "dropping a durable NATS event that is not JSON");
                None
            }
        };
        let packet = match &body {
            Body::Packet(p) => Some(p),
            _ => None,
        };
        match body {
            Body::Invalid(_) => None,
            _ => Some(dispatcher.dispatch_event(Incoming {
                pattern: &pattern,
                data,
                request: false,
                metadata: metadata(msg.headers.as_ref(), packet),
                transport: "nats",
            })),
        }
    };
    tasks.spawn(async move {
        let kind = match run {
            // Not JSON: redelivery cannot help.
            None => AckKind::Term,
            // Nobody listens (already logged): nothing to retry.
            Some(None) => AckKind::Ack,
            Some(Some(run)) => {
                if run.await {
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
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::handler::{Inbound, Reply};
    use crate::registry::{HandlerEntry, HandlerKind, Registry};

    fn noop(_: Inbound<'_>) -> Reply {
        Reply::empty()
    }

    static EVT: HandlerEntry = HandlerEntry {
        kind: HandlerKind::Event,
        route: "evt",
        pattern: "\"evt\"",
        name: "noop",
        module: module_path!(),
        file: file!(),
        line: line!(),
        call: noop,
    };

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
        let mut registry = Registry::new();
        registry.add(&EVT);
        let (stop, shutdown) = Shutdown::new();
        let serving = tokio::spawn(Box::new(listener).serve(Dispatcher::new(registry.routes().unwrap()), shutdown));
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
