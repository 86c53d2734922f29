//! Redis by hand (the `redis` crate), as NestJS does it: requests published on the route's
//! channel, replies on `<route>.reply`, each side with a subscriber and a publisher
//! connection.

use std::sync::Arc;

use anyhow::{Context as _, ensure};
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use tokio::task::JoinSet;

use super::{BARE_ROUTE, Broker, Caller, Pending};

const ADDR: &str = "redis://127.0.0.1:6379";

pub struct Redis;

#[derive(Clone)]
pub struct Bare {
    publisher: MultiplexedConnection,
    pending: Arc<Pending>,
}

async fn publish(conn: &mut MultiplexedConnection, channel: &str, body: &[u8]) -> anyhow::Result<i64> {
    Ok(redis::cmd("PUBLISH")
        .arg(channel)
        .arg(body)
        .query_async::<i64>(conn)
        .await?)
}

impl Broker for Redis {
    type Bare = Bare;

    async fn start() -> anyhow::Result<Self> {
        Ok(Redis)
    }

    fn url(&self) -> String {
        ADDR.to_owned()
    }

    async fn bare(&self, tasks: &mut JoinSet<()>) -> anyhow::Result<Bare> {
        let client = redis::Client::open(ADDR)?;
        let reply_channel = format!("{BARE_ROUTE}.reply");

        // Responder: subscribed to the route; each request answered in its own task.
        let mut requests = client.get_async_pubsub().await.context("connect to Redis")?;
        requests.subscribe(BARE_ROUTE).await?;
        let responder = client.get_multiplexed_async_connection().await?;
        let to = reply_channel.clone();
        tasks.spawn(async move {
            let mut stream = requests.into_on_message();
            while let Some(msg) = stream.next().await {
                let Some((_, reply)) = super::answer(msg.get_payload_bytes(), true) else {
                    continue;
                };
                let (mut conn, to) = (responder.clone(), to.clone());
                tokio::spawn(async move {
                    if let Err(e) = publish(&mut conn, &to, &reply).await {
                        eprintln!("bare redis responder: {e:#}");
                    }
                });
            }
        });

        // Requester: subscribed to the reply channel before the first request.
        let mut replies = client.get_async_pubsub().await?;
        replies.subscribe(&reply_channel).await?;
        let pending = Arc::new(Pending::default());
        let p = pending.clone();
        tasks.spawn(async move {
            let mut stream = replies.into_on_message();
            while let Some(msg) = stream.next().await {
                p.complete_packet(msg.get_payload_bytes());
            }
        });
        Ok(Bare {
            publisher: client.get_multiplexed_async_connection().await?,
            pending,
        })
    }
}

impl Caller for Bare {
    async fn call(&self, a: i64, b: i64) -> anyhow::Result<i64> {
        self.pending
            .call(|id| async move {
                let mut conn = self.publisher.clone();
                let receivers = publish(&mut conn, BARE_ROUTE, &super::request_packet(&id, a, b)).await?;
                ensure!(receivers > 0, "nobody is subscribed to {BARE_ROUTE}");
                Ok(())
            })
            .await
    }

    fn strays(&self) -> u64 {
        self.pending.strays()
    }
}
