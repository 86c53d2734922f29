//! RabbitMQ by hand (`lapin`), as NestJS does it: requests sent to one durable queue with
//! `reply_to = amq.rabbitmq.reply-to` (direct reply-to) and `correlation_id = id`; replies
//! published to `reply_to` with that correlation id and a body without `id`; the requester
//! routes replies by correlation id. Confirm channels on both sides, as NestJS's.
//!
//! Delivery as Switchboard's server does it by default (not NestJS's auto-ack): prefetch 256,
//! each request acked after its reply was published, so both sides give the same guarantee.

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::task::JoinSet;

use super::{Broker, Caller, Pending};

const AUTHORITY: &str = "guest:guest@127.0.0.1:5672";
/// Switchboard's queue, and the bare side's: both sides are up at once.
const QUEUE: &str = "switchboard_bench";
const BARE_QUEUE: &str = "switchboard_bench_bare";
const REPLY_TO: &str = "amq.rabbitmq.reply-to";
const PREFETCH: u16 = 256;

pub struct Amqp;

#[derive(Clone)]
pub struct Bare {
    channel: Channel,
    pending: Arc<Pending>,
    _conn: Arc<Connection>,
}

async fn connect() -> anyhow::Result<Connection> {
    Connection::connect(
        &format!("amqp://{AUTHORITY}?heartbeat=10"),
        ConnectionProperties::default(),
    )
    .await
    .with_context(|| {
        format!(
            "connect to RabbitMQ at {}",
            switchboard::transport::redact(&format!("amqp://{AUTHORITY}"))
        )
    })
}

async fn declare(channel: &Channel) -> anyhow::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(BARE_QUEUE.into(), durable, FieldTable::default())
        .await?;
    Ok(())
}

impl Broker for Amqp {
    type Bare = Bare;

    async fn start() -> anyhow::Result<Self> {
        Ok(Amqp)
    }

    fn url(&self) -> String {
        format!("amqp://{AUTHORITY}?queue={QUEUE}")
    }

    async fn bare(&self, tasks: &mut JoinSet<()>) -> anyhow::Result<Bare> {
        // Responder: consumes the queue on one channel, replies on a confirm channel.
        let server = connect().await?;
        let channel = server.create_channel().await?;
        declare(&channel).await?;
        channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
        let replies = server.create_channel().await?;
        replies.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut requests = channel
            .basic_consume(
                BARE_QUEUE.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let replies = Arc::new(replies);
        tasks.spawn(async move {
            let _keep = (server, channel);
            while let Some(delivery) = requests.next().await {
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("bare amqp responder: {e}");
                        break;
                    }
                };
                // Each request in its own task: reply, then ack.
                let replies = replies.clone();
                tokio::spawn(async move {
                    let props = &delivery.properties;
                    if let (Some(to), Some((_, reply))) = (props.reply_to(), super::answer(&delivery.data, false)) {
                        let mut out = BasicProperties::default().with_headers(FieldTable::default());
                        if let Some(id) = props.correlation_id() {
                            out = out.with_correlation_id(id.clone());
                        }
                        let published = replies
                            .basic_publish("".into(), to.clone(), BasicPublishOptions::default(), &reply, out)
                            .await;
                        if let Err(e) = published {
                            eprintln!("bare amqp responder: {e}");
                        }
                    }
                    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                        eprintln!("bare amqp responder: {e}");
                    }
                });
            }
        });

        // Requester: a confirm channel consuming direct reply-to before its first publish.
        let conn = connect().await?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        declare(&channel).await?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut replies = channel
            .basic_consume(REPLY_TO.into(), "".into(), no_ack, FieldTable::default())
            .await?;
        let pending = Arc::new(Pending::default());
        let p = pending.clone();
        tasks.spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                match delivery.properties.correlation_id() {
                    Some(id) => p.complete(id.as_str(), super::read_reply(&delivery.data).1),
                    None => p.complete_packet(&delivery.data),
                }
            }
        });
        Ok(Bare {
            channel,
            pending,
            _conn: Arc::new(conn),
        })
    }
}

impl Caller for Bare {
    async fn call(&self, a: i64, b: i64) -> anyhow::Result<i64> {
        self.pending
            .call(|id| async move {
                let body = super::request_packet(&id, a, b);
                let props = BasicProperties::default()
                    .with_headers(FieldTable::default())
                    .with_correlation_id(id.as_str().into())
                    .with_reply_to(REPLY_TO.into());
                // Sent (not waiting for the broker's confirm; the reply is what counts).
                self.channel
                    .basic_publish(
                        "".into(),
                        BARE_QUEUE.into(),
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    )
                    .await?;
                Ok(())
            })
            .await
    }

    fn strays(&self) -> u64 {
        self.pending.strays()
    }
}
