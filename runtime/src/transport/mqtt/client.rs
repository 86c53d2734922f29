//! The MQTT client: one broker connection driven by a background task, a reply topic
//! subscription per route (made once, SUBACK awaited before the first request on it), and
//! the shared correlation table for replies.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet as MqttPacket, QoS, SubscribeReasonCode};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::{Backoff, Options};
use crate::error::{Error, Result};
use crate::service::{Outbound, Replies};
use crate::transport::{ClientOptions, ClientTransport, Endpoint};
use crate::wire::nestjs::packet::encode_request;
use crate::wire::nestjs::pending::Pending;

/// The client side of the MQTT transport. Connects on first use (or [`connect`]); while the
/// broker is away it reconnects with backoff, failing the calls in flight at once.
///
/// [`connect`]: ClientTransport::connect
pub struct MqttClient {
    opts: Arc<Options>,
    conn: Mutex<Option<Arc<Conn>>>,
}

impl std::fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttClient").field("url", &self.opts.url).finish()
    }
}

impl MqttClient {
    /// A client for `mqtt://host:port`; connects lazily.
    pub(crate) fn new(ep: &Endpoint, defaults: &ClientOptions) -> Result<Self> {
        let opts = Options::parse(ep, defaults.connect_timeout, defaults.max_frame_len)?;
        Ok(MqttClient {
            opts: Arc::new(opts),
            conn: Mutex::new(None),
        })
    }

    /// The connection, started on first use.
    fn conn(&self) -> Arc<Conn> {
        let mut slot = self.conn.lock().expect("mqtt client lock");
        slot.get_or_insert_with(|| Conn::start(self.opts.clone())).clone()
    }
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.lock().ok().and_then(|mut c| c.take()) {
            conn.shut();
        }
    }
}

impl ClientTransport for MqttClient {
    fn connect(&self) -> BoxFuture<'_, Result<()>> {
        async move { self.conn().wait_up().await.map(drop) }.boxed()
    }

    fn request(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<Replies>> {
        async move {
            let conn = self.conn();
            let epoch = conn.wait_up().await?;
            conn.check_topic(&msg.route)?;
            conn.subscribe(format!("{}/reply", msg.route)).await?;
            let (id, rx) = conn.shared.pending.register(msg.route.clone())?;
            let mut body = Vec::with_capacity(msg.payload.len() + msg.pattern.len() + 48);
            encode_request(
                &mut body,
                &msg.pattern,
                &msg.payload,
                msg.headers.iter(),
                Some(id.as_str()),
            );
            conn.publish(&msg.route, body).await?;
            // The connection may have dropped between the checks and the publish, after the
            // in-flight calls were failed: then nobody would fail this one.
            conn.still_up(epoch)?;
            Replies::first_of(rx).await
        }
        .boxed()
    }

    fn emit(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<()>> {
        async move {
            let conn = self.conn();
            let epoch = conn.wait_up().await?;
            conn.check_topic(&msg.route)?;
            let mut body = Vec::with_capacity(msg.payload.len() + msg.pattern.len() + 32);
            encode_request(&mut body, &msg.pattern, &msg.payload, msg.headers.iter(), None);
            conn.publish(&msg.route, body).await?;
            conn.still_up(epoch)
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        let conn = self.conn.lock().expect("mqtt client lock").take();
        async move {
            if let Some(conn) = conn {
                conn.shut();
                // Returns once the DISCONNECT, and the events queued before it, went out (or
                // the driver was stopped): a process may exit right after.
                for _ in 0..100 {
                    if conn.driver.is_finished() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
        .boxed()
    }
}

/// The broker connection's state, as the driver task reports it.
#[derive(Debug, Clone)]
enum Status {
    /// Not connected yet, or reconnecting after `reason`.
    Down { reason: Option<String> },
    /// Connected; the number counts connections, so a caller can tell one from the next.
    Up(u64),
}

/// Reply-topic subscriptions. SUBACKs name a packet id, which rumqttc only reveals when
/// the SUBSCRIBE goes out; SUBSCRIBEs leave in the order they were queued, so `queued`
/// pairs each outgoing packet id with its topic.
#[derive(Default)]
struct Subs {
    topics: HashMap<String, watch::Sender<SubState>>,
    queued: VecDeque<String>,
    sent: HashMap<u16, String>,
}

#[derive(Debug, Clone, PartialEq)]
enum SubState {
    Waiting,
    Ready,
    Failed(String),
}

/// What the driver task shares with callers.
struct Shared {
    url: String,
    pending: Arc<Pending>,
    status: watch::Sender<Status>,
    subs: Mutex<Subs>,
}

impl Shared {
    /// Forgets every subscription; calls waiting for a SUBACK fail with `reason`.
    fn fail_subscriptions(&self, reason: &str) {
        let mut subs = self.subs.lock().expect("mqtt subs lock");
        for (_, tx) in subs.topics.drain() {
            tx.send_if_modified(|s| {
                let waiting = *s == SubState::Waiting;
                if waiting {
                    *s = SubState::Failed(reason.to_owned());
                }
                waiting
            });
        }
        subs.queued.clear();
        subs.sent.clear();
    }
}

struct Conn {
    client: AsyncClient,
    shared: Arc<Shared>,
    qos: QoS,
    max_packet_size: usize,
    connect_timeout: std::time::Duration,
    /// Keeps SUBSCRIBEs in the order their topics were queued.
    sub_order: tokio::sync::Mutex<()>,
    driver: AbortHandle,
}

impl Conn {
    fn start(opts: Arc<Options>) -> Arc<Conn> {
        let (client, eventloop) = opts.open(opts.client_id(), true, false);
        let shared = Arc::new(Shared {
            url: opts.url.clone(),
            pending: Pending::new(opts.url.clone()),
            status: watch::Sender::new(Status::Down { reason: None }),
            subs: Mutex::default(),
        });
        let driver = tokio::spawn(drive(eventloop, shared.clone())).abort_handle();
        Arc::new(Conn {
            client,
            shared,
            qos: opts.qos,
            max_packet_size: opts.max_packet_size,
            connect_timeout: opts.connect_timeout,
            sub_order: tokio::sync::Mutex::new(()),
            driver,
        })
    }

    /// Waits (up to the connect timeout) until the broker connection is up.
    async fn wait_up(&self) -> Result<u64> {
        let mut rx = self.shared.status.subscribe();
        let up = tokio::time::timeout(self.connect_timeout, rx.wait_for(|s| matches!(s, Status::Up(_)))).await;
        if let Ok(Ok(status)) = up
            && let Status::Up(epoch) = *status
        {
            return Ok(epoch);
        }
        let reason = match &*self.shared.status.borrow() {
            Status::Down { reason: Some(r) } => format!("{r} (reconnecting)"),
            _ => format!("no CONNACK within {:?}", self.connect_timeout),
        };
        Err(Error::Connect {
            addr: self.shared.url.clone(),
            reason,
        })
    }

    fn still_up(&self, epoch: u64) -> Result<()> {
        match *self.shared.status.borrow() {
            Status::Up(now) if now == epoch => Ok(()),
            _ => Err(self.closed()),
        }
    }

    fn closed(&self) -> Error {
        Error::ConnectionClosed {
            addr: self.shared.url.clone(),
        }
    }

    /// Routes with MQTT wildcards or nothing in them cannot be published to.
    fn check_topic(&self, route: &str) -> Result<()> {
        if route.is_empty() || !rumqttc::valid_topic(route) {
            return Err(Error::refused(format!(
                "`{route}` is not an MQTT topic one can publish to (empty, or with `+`/`#`)"
            )));
        }
        Ok(())
    }

    async fn publish(&self, topic: &str, body: Vec<u8>) -> Result<()> {
        let size = super::publish_size(topic, body.len());
        if size > self.max_packet_size {
            return Err(Error::TooLarge {
                context: format!("an MQTT packet to `{topic}` exceeds max_packet_size"),
                size,
                limit: self.max_packet_size,
            });
        }
        self.client
            .publish(topic, self.qos, false, body)
            .await
            .map_err(|_| self.closed())
    }

    /// Subscribes to `topic` unless already done, and waits for the broker's SUBACK.
    async fn subscribe(&self, topic: String) -> Result<()> {
        let (mut rx, first) = {
            let mut subs = self.shared.subs.lock().expect("mqtt subs lock");
            match subs.topics.get(&topic) {
                Some(tx) if *tx.borrow() == SubState::Ready => return Ok(()),
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = watch::channel(SubState::Waiting);
                    subs.topics.insert(topic.clone(), tx);
                    (rx, true)
                }
            }
        };
        if first {
            let _order = self.sub_order.lock().await;
            self.shared
                .subs
                .lock()
                .expect("mqtt subs lock")
                .queued
                .push_back(topic.clone());
            if self.client.subscribe(topic.clone(), self.qos).await.is_err() {
                return Err(self.closed());
            }
        }
        // The driver answers every waiter: SUBACK, refusal, connection loss or close; a
        // broker that never answers is given the connect timeout.
        let waited = tokio::time::timeout(self.connect_timeout, rx.wait_for(|s| *s != SubState::Waiting))
            .await
            .map(|state| state.map(|s| s.clone()));
        let state = match waited {
            Ok(state) => state,
            Err(_) => {
                let reason = format!("no SUBACK within {:?}", self.connect_timeout);
                // Forget the subscription, so that the next call subscribes again.
                let mut subs = self.shared.subs.lock().expect("mqtt subs lock");
                if let Some(tx) = subs.topics.get(&topic)
                    && rx.same_channel(&tx.subscribe())
                    && let Some(tx) = subs.topics.remove(&topic)
                {
                    tx.send_replace(SubState::Failed(reason.clone()));
                }
                Ok(SubState::Failed(reason))
            }
        };
        match state {
            Ok(SubState::Ready) => Ok(()),
            Ok(SubState::Failed(reason)) => Err(Error::Connect {
                addr: self.shared.url.clone(),
                reason: format!("cannot subscribe to `{topic}`: {reason}"),
            }),
            _ => Err(self.closed()),
        }
    }

    /// Stops the connection; calls in flight fail with [`Error::Closed`].
    fn shut(&self) {
        self.shared.pending.close(|| Error::Closed);
        // Calls waiting for a SUBACK fail too: the driver stops before it would come.
        self.shared.fail_subscriptions("client closed");
        let _ = self.client.try_disconnect();
        let driver = self.driver.clone();
        // Let the DISCONNECT go out, then stop the driver for good.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                driver.abort();
            });
        } else {
            driver.abort();
        }
    }
}

/// Polls rumqttc's event loop: hands replies to their calls, pairs SUBACKs with their
/// topics, and reconnects with backoff when the broker goes away.
async fn drive(mut eventloop: EventLoop, shared: Arc<Shared>) {
    let mut backoff = Backoff::new();
    let mut connections = 0u64;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(MqttPacket::Publish(p))) => shared.pending.deliver(&p.payload),
            Ok(Event::Incoming(MqttPacket::ConnAck(_))) => {
                backoff.reset();
                connections += 1;
                if connections > 1 {
                    tracing::info!(url = %shared.url, "MQTT client reconnected");
                    crate::signal::reconnected("mqtt");
                }
                shared.status.send_replace(Status::Up(connections));
            }
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                let mut subs = shared.subs.lock().expect("mqtt subs lock");
                if let Some(topic) = subs.queued.pop_front() {
                    subs.sent.insert(pkid, topic);
                }
            }
            Ok(Event::Incoming(MqttPacket::SubAck(ack))) => {
                let mut subs = shared.subs.lock().expect("mqtt subs lock");
                let Some(topic) = subs.sent.remove(&ack.pkid) else {
                    continue;
                };
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure));
                if refused {
                    if let Some(tx) = subs.topics.remove(&topic) {
                        tx.send_replace(SubState::Failed("refused by the broker".into()));
                    }
                } else if let Some(tx) = subs.topics.get(&topic) {
                    tx.send_replace(SubState::Ready);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                shared.status.send_replace(Status::Down {
                    reason: Some("client closed".into()),
                });
                shared.fail_subscriptions("client closed");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let reason = e.to_string();
                let was_up = matches!(*shared.status.borrow(), Status::Up(_));
                shared.status.send_replace(Status::Down {
                    reason: Some(reason.clone()),
                });
                // A new (clean) session starts without subscriptions, and rumqttc drops the
                // SUBSCRIBEs it had not sent yet: every subscription starts over.
                shared.fail_subscriptions(&format!("connection lost: {reason}"));
                shared.pending.fail_all(|| Error::ConnectionClosed {
                    addr: shared.url.clone(),
                });
                let wait = backoff.next();
                if was_up {
                    tracing::warn!(url = %shared.url, error = %reason, "MQTT client lost its broker connection; reconnecting");
                } else {
                    tracing::debug!(url = %shared.url, error = %reason, retry_in = ?wait, "MQTT connect failed");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A broker that accepts the connection (CONNACK) and then never answers anything,
    /// SUBSCRIBE included.
    async fn mute_broker() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    if sock.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let _ = sock.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                    while sock.read(&mut buf).await.unwrap_or(0) > 0 {}
                });
            }
        });
        format!("mqtt://{addr}")
    }

    fn client(url: &str) -> MqttClient {
        let opts = ClientOptions {
            pool_size: 1,
            connect_timeout: Duration::from_millis(300),
            max_frame_len: super::super::DEFAULT_MAX_PACKET_SIZE,
        };
        MqttClient::new(&Endpoint::parse(url).unwrap(), &opts).unwrap()
    }

    fn outbound(route: &'static str) -> Outbound {
        Outbound::new(
            crate::service::Kind::Request,
            format!("\"{route}\""),
            route,
            Bytes::from_static(b"1"),
            tokio::time::Instant::now() + Duration::from_secs(30),
        )
    }

    #[tokio::test]
    async fn a_subscription_the_broker_never_acknowledges_fails_at_the_connect_timeout() {
        let c = Arc::new(client(&mute_broker().await));
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(5), c.request(outbound("sum"))).await;
        let Ok(Err(e)) = result else {
            panic!("the request hung waiting for a SUBACK");
        };
        assert!(e.to_string().contains("SUBACK"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn close_fails_calls_waiting_for_a_subscription() {
        let url = mute_broker().await;
        // A connect timeout longer than the test's patience: only close can end the wait.
        let c = Arc::new(client(&format!("{url}?connect_timeout_ms=20000")));
        c.connect().await.unwrap();
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.request(outbound("sum")).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.close().await;
        let result = tokio::time::timeout(Duration::from_secs(2), waiting).await;
        let Ok(Ok(Err(_))) = result else {
            panic!("a call waiting for its SUBACK was not failed by close");
        };
    }
}
