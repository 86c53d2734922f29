//! Kafka by hand (`rdkafka`), as NestJS does it: the request record on the route's topic
//! carries only the data, with the headers `kafka_correlationId`, `kafka_replyTopic`
//! (`<route>.reply`) and `kafka_replyPartition`; the reply record goes to that topic and
//! partition with the correlation id and `kafka_nest-is-disposed` (one byte 0x00).
//!
//! The broker is librdkafka's mock cluster, a fresh one per measurement (no records or
//! committed offsets carried over), on a thread of its own in this process. Both sides use
//! the client settings Switchboard's transport uses (`linger.ms` 1, Nagle off,
//! `fetch.wait.max.ms`, 5 ms here), so the comparison is of the code, not of librdkafka tuning.
//!
//! Caveat, measured: the mock cluster answers a fetch only when `fetch.wait.max.ms` has
//! passed, even when records are waiting, so every hop costs that wait (Switchboard's default
//! is 100 ms; both sides use 5 ms here to leave the code's cost visible). A real broker
//! answers a fetch as soon as `fetch.min.bytes` (1) is there.

use std::sync::{Arc, mpsc};

use anyhow::{Context as _, anyhow};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinSet;

use super::{Broker, Caller, Pending, ROUTE};

const CORRELATION_ID: &str = "kafka_correlationId";
const REPLY_TOPIC: &str = "kafka_replyTopic";
const REPLY_PARTITION: &str = "kafka_replyPartition";
const IS_DISPOSED: &str = "kafka_nest-is-disposed";
const ERR: &str = "kafka_nest-err";

/// Both sides' `fetch.wait.max.ms`: the mock waits this long on every fetch, so it is kept
/// short to leave some of the code's own cost visible.
const FETCH_WAIT_MS: &str = "5";

/// Printed under the table.
pub const NOTE: &str = "kafka: librdkafka's mock cluster answers each fetch only after fetch.wait.max.ms \
    (5 ms here, both sides), so the timer is part of every call; a real broker answers at once";

/// A mock cluster, alive until this is dropped.
pub struct Kafka {
    bootstrap: String,
    _stop: mpsc::Sender<()>,
}

#[derive(Clone)]
pub struct Bare {
    producer: FutureProducer,
    reply_topic: Arc<str>,
    pending: Arc<Pending>,
}

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("socket.nagle.disable", "true")
        .set("log.connection.close", "false");
    c
}

fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(config(bootstrap).set("linger.ms", "1").create()?)
}

fn header<'a>(msg: &'a impl Message, key: &str) -> Option<&'a [u8]> {
    msg.headers()?.iter().find(|h| h.key == key)?.value
}

impl Broker for Kafka {
    type Bare = Bare;

    async fn start() -> anyhow::Result<Self> {
        let (boot_tx, boot_rx) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        // The cluster handle is not `Send`: a thread owns it until `stop` is dropped.
        std::thread::Builder::new().name("kafka-mock".into()).spawn(move || {
            let cluster = MockCluster::new(1).and_then(|c| {
                c.create_topic(ROUTE, 1, 1)?;
                c.create_topic(&format!("{ROUTE}.reply"), 1, 1)?;
                Ok(c)
            });
            match cluster {
                Ok(c) => {
                    let _ = boot_tx.send(Ok(c.bootstrap_servers()));
                    let _ = stopped.recv();
                }
                Err(e) => {
                    let _ = boot_tx.send(Err(e));
                }
            }
        })?;
        let bootstrap = boot_rx
            .recv()
            .map_err(|_| anyhow!("the mock cluster thread ended"))?
            .context("start librdkafka's mock cluster")?;
        Ok(Kafka { bootstrap, _stop: stop })
    }

    fn url(&self) -> String {
        format!("kafka://{}?max_wait_ms={FETCH_WAIT_MS}", self.bootstrap)
    }

    async fn bare(&self, tasks: &mut JoinSet<()>) -> anyhow::Result<Bare> {
        let reply_topic = format!("{ROUTE}.reply");

        // Responder: a consumer group on the route's topic, a producer for the replies.
        let requests: StreamConsumer = config(&self.bootstrap)
            .set("group.id", "bench-bare-server")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("session.timeout.ms", "6000")
            .set("fetch.wait.max.ms", FETCH_WAIT_MS)
            .create()?;
        requests.subscribe(&[ROUTE])?;
        let replies = producer(&self.bootstrap)?;
        tasks.spawn(async move {
            loop {
                let msg = match requests.recv().await {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("bare kafka responder: {e}");
                        continue;
                    }
                };
                let (Some(id), Some(to), Some(value)) = (
                    header(&msg, CORRELATION_ID),
                    header(&msg, REPLY_TOPIC).and_then(|t| std::str::from_utf8(t).ok()),
                    msg.payload().and_then(super::answer_data),
                ) else {
                    continue;
                };
                let partition = header(&msg, REPLY_PARTITION)
                    .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok())
                    .unwrap_or(0);
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: CORRELATION_ID,
                        value: Some(id),
                    })
                    .insert(Header {
                        key: IS_DISPOSED,
                        value: Some(&[0u8][..]),
                    });
                let record = FutureRecord::<(), _>::to(to)
                    .partition(partition)
                    .payload(&value)
                    .headers(headers);
                // Queued; librdkafka delivers it (the delivery report is not awaited).
                match replies.send_result(record) {
                    Ok(_delivery) => {}
                    Err((e, _)) => eprintln!("bare kafka responder: {e}"),
                }
            }
        });

        // Requester: partition 0 of the reply topic, assigned (no group), from its start.
        let consumer: StreamConsumer = config(&self.bootstrap)
            .set("group.id", "bench-bare-client")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", FETCH_WAIT_MS)
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&reply_topic, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let pending = Arc::new(Pending::default());
        let p = pending.clone();
        tasks.spawn(async move {
            loop {
                let Ok(msg) = consumer.recv().await else { continue };
                let Some(id) = header(&msg, CORRELATION_ID).and_then(|id| std::str::from_utf8(id).ok()) else {
                    continue;
                };
                let outcome = if let Some(err) = header(&msg, ERR) {
                    Err(anyhow!(
                        "the responder answered with an error: {}",
                        String::from_utf8_lossy(err)
                    ))
                } else if header(&msg, IS_DISPOSED).is_none() {
                    Err(anyhow!("reply without {IS_DISPOSED}"))
                } else {
                    msg.payload()
                        .and_then(|v| serde_json::from_slice::<super::AddReply>(v).ok())
                        .map(|r| r.result)
                        .ok_or_else(|| anyhow!("reply value is not {{\"result\":…}}"))
                };
                p.complete(id, outcome);
            }
        });
        Ok(Bare {
            producer: producer(&self.bootstrap)?,
            reply_topic: reply_topic.into(),
            pending,
        })
    }
}

impl Caller for Bare {
    async fn call(&self, a: i64, b: i64) -> anyhow::Result<i64> {
        self.pending
            .call(|id| async move {
                let value = format!(r#"{{"a":{a},"b":{b}}}"#);
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: CORRELATION_ID,
                        value: Some(id.as_str()),
                    })
                    .insert(Header {
                        key: REPLY_TOPIC,
                        value: Some(&*self.reply_topic),
                    })
                    .insert(Header {
                        key: REPLY_PARTITION,
                        value: Some("0"),
                    });
                let record = FutureRecord::<(), _>::to(ROUTE).payload(&value).headers(headers);
                // Queued; the delivery report is not awaited (the reply is what counts).
                let _delivery = self
                    .producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow!("produce the request: {e}"))?;
                Ok(())
            })
            .await
    }

    fn strays(&self) -> u64 {
        self.pending.strays()
    }
}
