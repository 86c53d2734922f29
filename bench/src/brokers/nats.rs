//! NATS by hand (`async-nats`), as NestJS does it: requests published on the route's subject
//! with a reply subject, answered on that subject without headers. Each request has its own
//! reply subject as in NestJS (`<inbox>.<id>`; NestJS subscribes a fresh inbox per call,
//! here one `<inbox>.*` subscription serves every call); replies are routed by their `id`.

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use tokio::task::JoinSet;

use super::{BARE_ROUTE, Broker, Caller, Pending};

const ADDR: &str = "127.0.0.1:4222";

pub struct Nats;

#[derive(Clone)]
pub struct Bare {
    client: async_nats::Client,
    inbox: String,
    pending: Arc<Pending>,
}

impl Broker for Nats {
    type Bare = Bare;

    async fn start() -> anyhow::Result<Self> {
        Ok(Nats)
    }

    fn url(&self) -> String {
        format!("nats://{ADDR}")
    }

    async fn bare(&self, tasks: &mut JoinSet<()>) -> anyhow::Result<Bare> {
        // Responder: its own connection, as a separate service would have; each request
        // answered in its own task, as a server does (a slow handler must not hold up the rest).
        let server = async_nats::connect(ADDR).await.context("connect to NATS")?;
        let mut requests = server.subscribe(BARE_ROUTE).await?;
        server.flush().await?;
        tasks.spawn(async move {
            while let Some(msg) = requests.next().await {
                let (Some(reply_to), Some((_, reply))) = (msg.reply, super::answer(&msg.payload, true)) else {
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    if let Err(e) = server.publish(reply_to, reply.into()).await {
                        eprintln!("bare nats responder: {e}");
                    }
                });
            }
        });

        // Requester: one inbox subscription for every call.
        let client = async_nats::connect(ADDR).await?;
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(format!("{inbox}.*")).await?;
        client.flush().await?;
        let pending = Arc::new(Pending::default());
        let p = pending.clone();
        tasks.spawn(async move {
            while let Some(msg) = replies.next().await {
                p.complete_packet(&msg.payload);
            }
        });
        Ok(Bare { client, inbox, pending })
    }
}

impl Caller for Bare {
    async fn call(&self, a: i64, b: i64) -> anyhow::Result<i64> {
        self.pending
            .call(|id| async move {
                let body = super::request_packet(&id, a, b);
                self.client
                    .publish_with_reply(BARE_ROUTE, format!("{}.{id}", self.inbox), body.into())
                    .await?;
                Ok(())
            })
            .await
    }

    fn strays(&self) -> u64 {
        self.pending.strays()
    }
}
