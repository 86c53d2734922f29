//! MQTT by hand (`rumqttc`), as NestJS does it: QoS 0 requests published on the route's
//! topic, replies on `<route>/reply`; the requester subscribes to the reply topic (and waits
//! for the SUBACK) before its first request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::task::JoinSet;

use super::{BARE_ROUTE, Broker, Caller, Pending};

const HOST: &str = "127.0.0.1";
const PORT: u16 = 1883;
/// Requests the client may queue for its event loop.
const CAPACITY: usize = 1024;

pub struct Mqtt;

#[derive(Clone)]
pub struct Bare {
    client: AsyncClient,
    pending: Arc<Pending>,
}

/// A connection subscribed to `topic` (SUBACK received).
async fn subscribed(role: &str, topic: &str) -> anyhow::Result<(AsyncClient, EventLoop)> {
    static N: AtomicU64 = AtomicU64::new(0);
    let id = format!(
        "bench_{role}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut opts = MqttOptions::new(id, HOST, PORT);
    opts.set_keep_alive(Duration::from_secs(60));
    let (client, mut events) = AsyncClient::new(opts, CAPACITY);
    // As Switchboard's transport: small latency-bound packets, no Nagle delay.
    let mut net = events.network_options();
    net.set_tcp_nodelay(true);
    events.set_network_options(net);
    client.subscribe(topic, QoS::AtMostOnce).await?;
    let acked = async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
                return anyhow::Ok(());
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), acked).await {
        Ok(r) => r.with_context(|| format!("connect to MQTT at {HOST}:{PORT}"))?,
        Err(_) => bail!("no SUBACK for {topic} within 5 s"),
    }
    Ok((client, events))
}

impl Broker for Mqtt {
    type Bare = Bare;

    async fn start() -> anyhow::Result<Self> {
        Ok(Mqtt)
    }

    fn url(&self) -> String {
        format!("mqtt://{HOST}:{PORT}")
    }

    async fn bare(&self, tasks: &mut JoinSet<()>) -> anyhow::Result<Bare> {
        let reply_topic = format!("{BARE_ROUTE}/reply");

        // Responder: each request answered in its own task (the event loop must keep polling
        // while replies queue up: the client's queue drains only through it).
        let (server, mut events) = subscribed("responder", BARE_ROUTE).await?;
        let reply_topic: Arc<str> = reply_topic.into();
        tasks.spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Some((_, reply)) = super::answer(&p.payload, true) else {
                            continue;
                        };
                        let (server, to) = (server.clone(), reply_topic.clone());
                        tokio::spawn(async move {
                            if let Err(e) = server.publish(&*to, QoS::AtMostOnce, false, reply).await {
                                eprintln!("bare mqtt responder: {e}");
                            }
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("bare mqtt responder: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });

        // Requester.
        let (client, mut events) = subscribed("requester", &format!("{BARE_ROUTE}/reply")).await?;
        let pending = Arc::new(Pending::default());
        let p = pending.clone();
        tasks.spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(msg))) => p.complete_packet(&msg.payload),
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("bare mqtt requester: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Bare { client, pending })
    }
}

impl Caller for Bare {
    async fn call(&self, a: i64, b: i64) -> anyhow::Result<i64> {
        self.pending
            .call(|id| async move {
                let body = super::request_packet(&id, a, b);
                self.client.publish(BARE_ROUTE, QoS::AtMostOnce, false, body).await?;
                Ok(())
            })
            .await
    }

    fn strays(&self) -> u64 {
        self.pending.strays()
    }
}
