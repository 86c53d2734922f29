//! Kafka by hand (`rdkafka`), as NestJS does it: the request record on the route's topic
//! carries only the data, with the headers `kafka_correlationId`, `kafka_replyTopic`
//! (`<route>.reply`) and `kafka_replyPartition`; the reply record goes to that topic and
//! partition with the correlation id and `kafka_nest-is-disposed` (one byte 0x00).
//!
//! The broker is librdkafka's mock cluster, a fresh one per measurement (no records or
//! committed offsets carried over), on a thread of its own in this process; or, with
//! `SWITCHBOARD_BENCH_KAFKA=host:port`, a running Kafka-protocol broker (Tansu, say), where
//! every measurement uses consumer groups of its own that start at the topics' end. Both
//! sides use the client settings Switchboard's transport uses (`linger.ms` 1, Nagle off,
//! the same `fetch.wait.max.ms`), so the comparison is of the code, not of librdkafka tuning.
//!
//! Caveat, measured: the mock cluster, and Tansu 0.6, answer a fetch only when
//! `fetch.wait.max.ms` has passed, even when records are waiting, so a hop costs up to that
//! wait (Switchboard's default is 100 ms; both sides use 5 ms here to leave the code's cost
//! visible). Apache Kafka answers a fetch as soon as `fetch.min.bytes` (1) is there.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use switchboard::transport::kafka::KafkaMock;
use tokio::task::JoinSet;

use super::{BARE_ROUTE, Broker, Caller, Pending, ROUTE};

const CORRELATION_ID: &str = "kafka_correlationId";
const REPLY_TOPIC: &str = "kafka_replyTopic";
const REPLY_PARTITION: &str = "kafka_replyPartition";
const IS_DISPOSED: &str = "kafka_nest-is-disposed";
const ERR: &str = "kafka_nest-err";

/// Both sides' `fetch.wait.max.ms`. The mock and Tansu 0.6 both answer a fetch only when it
/// has passed, even when records wait, so it is kept short to leave the code's cost visible.
const FETCH_WAIT_MS: &str = "5";

/// `host:port` of a running Kafka-protocol broker to measure on instead of the mock.
const EXTERNAL: &str = "SWITCHBOARD_BENCH_KAFKA";

/// Printed under the table.
pub fn note() -> String {
    match std::env::var(EXTERNAL) {
        Ok(at) => format!(
            "kafka: the broker at {at} ({EXTERNAL}); fetch.wait.max.ms {FETCH_WAIT_MS} ms on both sides \
             (Tansu 0.6, like the mock, answers a fetch only after it)"
        ),
        Err(_) => format!(
            "kafka: librdkafka's mock cluster answers each fetch only after fetch.wait.max.ms \
             ({FETCH_WAIT_MS} ms here, both sides), so the timer is part of every call \
             (another broker: {EXTERNAL}=host:port)"
        ),
    }
}

/// The broker of one measurement: a mock cluster (alive until this is dropped) or a running
/// broker.
pub struct Kafka {
    bootstrap: String,
    /// A running broker: the measurement's own consumer-group suffix.
    external: Option<u64>,
    _mock: Option<KafkaMock>,
}

impl Kafka {
    /// A consumer group of this measurement's own.
    fn group(&self, name: &str) -> String {
        match self.external {
            Some(n) => format!("{name}-{}-{n}", std::process::id()),
            None => name.to_owned(),
        }
    }

    /// On a running broker: the topics, which it may not create by itself.
    async fn create_topics(bootstrap: &str) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = config(bootstrap).create()?;
        let names = topics();
        let topics = names
            .each_ref()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&topics, &opts).await? {
            match result {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(anyhow!("create topic {topic}: {code}")),
            }
        }
        Ok(())
    }
}

/// Both sides' request and reply topics.
fn topics() -> [String; 4] {
    let reply = |route: &str| format!("{route}.reply");
    [ROUTE.to_owned(), reply(ROUTE), BARE_ROUTE.to_owned(), reply(BARE_ROUTE)]
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
        if let Ok(bootstrap) = std::env::var(EXTERNAL) {
            static MEASUREMENTS: AtomicU64 = AtomicU64::new(0);
            Self::create_topics(&bootstrap)
                .await
                .with_context(|| format!("the Kafka broker at {bootstrap} ({EXTERNAL})"))?;
            return Ok(Kafka {
                bootstrap,
                external: Some(MEASUREMENTS.fetch_add(1, Ordering::Relaxed)),
                _mock: None,
            });
        }
        let mock = KafkaMock::start()?;
        for topic in topics() {
            mock.create_topic(&topic, 1)?;
        }
        Ok(Kafka {
            bootstrap: mock.bootstrap().to_owned(),
            external: None,
            _mock: Some(mock),
        })
    }

    fn url(&self) -> String {
        let mut url = format!("kafka://{}?max_wait_ms={FETCH_WAIT_MS}", self.bootstrap);
        if self.external.is_some() {
            // A group of its own, from the topic's end: earlier measurements' records stay.
            url += &format!("&group={}&from_beginning=false", self.group("bench-sb"));
        }
        url
    }

    async fn bare(&self, tasks: &mut JoinSet<()>) -> anyhow::Result<Bare> {
        let reply_topic = format!("{BARE_ROUTE}.reply");

        // Responder: a consumer group on the route's topic, a producer for the replies.
        let requests: StreamConsumer = config(&self.bootstrap)
            .set("group.id", self.group("bench-bare-server"))
            .set(
                "auto.offset.reset",
                if self.external.is_some() { "latest" } else { "earliest" },
            )
            .set("enable.auto.commit", "true")
            .set("session.timeout.ms", "6000")
            .set("fetch.wait.max.ms", FETCH_WAIT_MS)
            .create()?;
        requests.subscribe(&[BARE_ROUTE])?;
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

        // Requester: partition 0 of the reply topic, assigned (no group), from its end as it
        // is now (as Switchboard's client does).
        let consumer: StreamConsumer = config(&self.bootstrap)
            .set("group.id", "bench-bare-client")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", FETCH_WAIT_MS)
            .create()?;
        let (_, end) = consumer.fetch_watermarks(&reply_topic, 0, Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&reply_topic, 0, Offset::Offset(end))?;
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
                let value = super::data_packet(a, b);
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
                let record = FutureRecord::<(), _>::to(BARE_ROUTE).payload(&value).headers(headers);
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
