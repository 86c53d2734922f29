//! The Kafka server: one consumer in the server's group, subscribed to every route's topic,
//! and one producer for replies.
//!
//! Messages are handled by the shared broker loop, concurrently (up to `max_in_flight`); a
//! message's offset is stored for commit only once it and every earlier message of its
//! partition have been handled, so a server that dies mid-batch leaves the unhandled
//! messages to the next member of its group (at-least-once).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use rdkafka::admin::AdminClient;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use super::{
    CONTENT_TYPE, CORRELATION_ID, Ctx, HeaderMap, NEST_ERR, NEST_IS_DISPOSED, Options, REPLY_PARTITION, REPLY_TOPIC,
    Shared, decode_value, encode_error, encode_value, ensure_topics, header, probe,
};
use crate::error::{NO_MESSAGE_HANDLER, Result};
use crate::service::{Context, Headers, Kind, Payload, Request, Router, RouterFuture};
use crate::transport::broker::{self, Delivery, Handling, ReplySink, Source};
use crate::transport::{Endpoint, Listener, Shutdown};
use crate::wire::nestjs::steps::Step;

/// The server side of the Kafka transport.
pub struct KafkaListener {
    opts: Options,
    shared: Arc<Shared>,
    producer: FutureProducer<Ctx>,
    admin: AdminClient<Ctx>,
}

impl std::fmt::Debug for KafkaListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaListener").field("url", &self.opts.url).finish()
    }
}

impl KafkaListener {
    /// Connects to the brokers named in `ep` (failing when none answers within 10 s).
    pub async fn bind(ep: &Endpoint) -> Result<Self> {
        let opts = Options::parse(ep, true)?;
        let shared = Shared::new(&opts.url, None);
        let producer: FutureProducer<Ctx> = opts
            .producer_config()
            .create_with_context(Ctx(shared.clone()))
            .map_err(|e| opts.connect_error(e))?;
        let admin: AdminClient<Ctx> = opts
            .base_config()
            .create_with_context(Ctx(shared.clone()))
            .map_err(|e| opts.connect_error(e))?;
        let (p, s) = (producer.clone(), shared.clone());
        tokio::task::spawn_blocking(move || probe(p.client(), &s, Duration::from_secs(10)))
            .await
            .map_err(|e| opts.connect_error(e))??;
        Ok(KafkaListener {
            opts,
            shared,
            producer,
            admin,
        })
    }
}

impl Listener for KafkaListener {
    fn local_url(&self) -> String {
        self.opts.url.clone()
    }

    fn serve(self: Box<Self>, router: Router, shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        async move {
            let max_in_flight = self.opts.max_in_flight;
            let source = Consuming::start(*self, &router).await?;
            broker::serve(source, router, max_in_flight, shutdown).await;
            Ok(())
        }
        .boxed()
    }

    /// Ready once the consumer group has given this server its partitions; not ready while
    /// no broker answers, ready again once one does.
    fn ready(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.shared.assigned.subscribe())
    }
}

/// The server's consumer, in its group, subscribed to every route's topic; librdkafka
/// reconnects and rejoins by itself.
struct Consuming {
    opts: Options,
    shared: Arc<Shared>,
    producer: FutureProducer<Ctx>,
    consumer: Arc<StreamConsumer<Ctx>>,
    server: Arc<Server>,
    /// Lowers the ready flag while no broker answers (`watch_brokers`).
    _watchdog: AbortOnDrop,
}

/// A task that stops when the server does.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs while the server does: when a broker refuses connections (librdkafka says so through
/// the context), checks whether any broker still answers. While none does the server is not
/// ready (it takes no messages); once one answers again it is, as it was before (librdkafka
/// reconnects and keeps its group membership by itself).
async fn watch_brokers(producer: FutureProducer<Ctx>, shared: Arc<Shared>) {
    let reachable = |timeout| {
        let (p, s) = (producer.clone(), shared.clone());
        async move {
            tokio::task::spawn_blocking(move || probe(p.client(), &s, timeout))
                .await
                .is_ok_and(|r| r.is_ok())
        }
    };
    loop {
        shared.suspect.notified().await;
        if !reachable(Duration::from_millis(1500)).await {
            let was_ready = shared.assigned.send_replace(false);
            tracing::warn!(url = %shared.url, "no Kafka broker reachable; the server is not ready");
            while !reachable(Duration::from_millis(1500)).await {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tracing::info!(url = %shared.url, "a Kafka broker answers again");
            if was_ready {
                shared.assigned.send_replace(true);
            }
        }
        // The refusals repeat with every reconnect attempt; one check a second is enough.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Consuming {
    async fn start(l: KafkaListener, router: &Router) -> Result<Self> {
        // Each served route once, sorted.
        let topics: Vec<String> = router.routes().map(|r| r.route().to_owned()).collect();
        for topic in &topics {
            if !is_legal_topic(topic) {
                // NestJS has the same limit: Kafka takes only [a-zA-Z0-9._-], up to 249 characters.
                tracing::warn!(url = %l.opts.url, %topic, "route is not a legal Kafka topic name; real brokers refuse it (use a string pattern such as `math.sum`)");
            }
        }
        ensure_topics(&l.admin, &l.producer, &l.opts, &topics).await?;
        let consumer: StreamConsumer<Ctx> = l
            .opts
            .base_config()
            .set("group.id", &l.opts.group)
            .set("session.timeout.ms", l.opts.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (l.opts.session_timeout_ms / 10).clamp(100, 3000).to_string(),
            )
            // Offsets are stored by us once a message is handled, and committed in the background.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set(
                "auto.offset.reset",
                if l.opts.from_beginning { "earliest" } else { "latest" },
            )
            .set("fetch.wait.max.ms", l.opts.max_wait_ms.to_string())
            .create_with_context(Ctx(l.shared.clone()))
            .map_err(|e| l.opts.connect_error(e))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| l.opts.connect_error(format!("cannot subscribe to {topics:?}: {e}")))?;
        tracing::debug!(url = %l.opts.url, group = %l.opts.group, ?topics, "consuming");
        let consumer = Arc::new(consumer);
        let server = Arc::new(Server {
            producer: l.producer.clone(),
            consumer: consumer.clone(),
            tracker: Tracker::default(),
        });
        let watchdog = AbortOnDrop(tokio::spawn(watch_brokers(l.producer.clone(), l.shared.clone())));
        Ok(Consuming {
            opts: l.opts,
            shared: l.shared,
            producer: l.producer,
            consumer,
            server,
            _watchdog: watchdog,
        })
    }
}

impl Source for Consuming {
    type Delivery = Record;

    async fn next(&mut self) -> Option<Record> {
        let msg = loop {
            match self.consumer.recv().await {
                Ok(msg) => break msg,
                Err(e) => {
                    // A lost broker is already reported (once) by the context.
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::BrokerTransportFailure) {
                        tracing::debug!(url = %self.opts.url, error = %e, "Kafka consumer error");
                    } else {
                        tracing::warn!(url = %self.opts.url, error = %e, "Kafka consumer error");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        self.shared.set_up();
        let record = Record {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            value: msg.payload().map(<[u8]>::to_vec),
            headers: HeaderMap::from_headers(msg.headers()),
            server: self.server.clone(),
        };
        drop(msg);
        self.server
            .tracker
            .begin(&record.topic, record.partition, record.offset);
        Some(record)
    }

    async fn stop(&mut self) {
        // The consumer stays in the group until `close`: the messages in flight store their
        // offsets with it.
        tracing::debug!(url = %self.opts.url, "stopping");
    }

    async fn close(self) {
        // Every message taken has been handled: commit what they stored, then leave.
        let Consuming {
            producer,
            consumer,
            server,
            ..
        } = self;
        let _ = tokio::task::spawn_blocking(move || {
            // Only the partitions still ours: another member may have committed further on
            // those the group moved away, and committing our older offset there would rewind it.
            let tpl = match consumer.assignment() {
                Ok(owned) => server.tracker.stored(&owned),
                Err(_) => TopicPartitionList::new(),
            };
            drop(server);
            if tpl.count() > 0
                && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
            {
                tracing::warn!(error = %e, "could not commit the last offsets; their messages may be handled again");
            }
            // Dropping the consumer leaves the group, so its partitions move on at once.
            drop(consumer);
            let _ = producer.flush(Duration::from_secs(5));
        })
        .await;
    }
}

/// Kafka's rule for topic names (object patterns such as `{"cmd":"sum"}` break it).
fn is_legal_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A consumed record, owned.
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    value: Option<Vec<u8>>,
    headers: HeaderMap,
    server: Arc<Server>,
}

impl Delivery for Record {
    fn serve(self, router: &Router) -> Handling<impl Future<Output = ()> + Send + 'static> {
        let (reply, to) = Server::route(&self, router);
        let reply = broker::start(reply);
        let waits = reply.waits();
        let rest = async move {
            let reply = reply.await;
            match to {
                Some((id, topic, partition)) => {
                    let mut to = ReplyTo {
                        server: &self.server,
                        topic: &topic,
                        partition,
                        id: &id,
                    };
                    let _ = broker::send_reply(reply, &mut to).await;
                }
                None => drop(reply),
            }
            // Only once handled: a server that dies before leaves the message to the next member.
            self.server.done(&self);
        };
        Handling { waits, rest }
    }
}

/// Where a request's reply goes: its correlation id, reply topic and partition.
type ReplyAddress = (Vec<u8>, String, Option<i32>);

struct Server {
    producer: FutureProducer<Ctx>,
    consumer: Arc<StreamConsumer<Ctx>>,
    tracker: Tracker,
}

impl Server {
    /// Hands one record to the router as NestJS's `ServerKafka.handleMessage` does (the topic
    /// is the route, the value the payload: Kafka has no packet around it), with where a
    /// request's reply goes: its correlation id, reply topic and partition.
    fn route(r: &Record, router: &Router) -> (RouterFuture, Option<ReplyAddress>) {
        let address = router.channel_address(&r.topic);
        let payload = Payload::Json(decode_value(r.value.as_deref(), r.headers.get(CONTENT_TYPE)));
        let headers: Headers = r.headers.metadata().map(Headers::from).unwrap_or_default();
        let correlation = r.headers.get(CORRELATION_ID);
        let reply_topic = r.headers.get_str(REPLY_TOPIC);
        // NestJS treats a message for an event handler as an event, replies or not.
        let event_route = router
            .resolve_route(&address)
            .is_ok_and(|route| !route.has_request_handler());
        let (Some(id), Some(reply_topic), false) = (correlation, reply_topic, event_route) else {
            let ctx = Context::new("kafka", Kind::Event).with_headers(headers);
            return (router.call(Request::new(address, payload, ctx)), None);
        };
        let ctx = Context::new("kafka", Kind::Request).with_headers(headers);
        let partition = r
            .headers
            .get_str(REPLY_PARTITION)
            .and_then(|p| p.trim().parse::<f64>().ok())
            .filter(|p| p.is_finite() && *p >= 0.0)
            .map(|p| p as i32);
        let to = (id.to_vec(), reply_topic.to_owned(), partition);
        (router.call(Request::new(address, payload, ctx)), Some(to))
    }

    /// Marks a record handled and stores the offset its partition can be committed at.
    fn done(&self, r: &Record) {
        if let Some(next) = self.tracker.end(&r.topic, r.partition, r.offset) {
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&r.topic, r.partition, Offset::Offset(next))
                .is_ok()
                && let Err(e) = self.consumer.store_offsets(&tpl)
            {
                // The partition moved to another member meanwhile: it will see the message again.
                tracing::debug!(topic = %r.topic, partition = r.partition, error = %e, "offset not stored");
            }
        }
    }
}

/// Where a request's reply records go: NestJS's reply packets as record headers.
struct ReplyTo<'a> {
    server: &'a Server,
    topic: &'a str,
    partition: Option<i32>,
    id: &'a [u8],
}

impl ReplyTo<'_> {
    /// Sends one record; waits until the broker has it, so the packets of one reply stay in
    /// order. A record the broker does not take is logged and skipped.
    async fn produce(&self, headers: OwnedHeaders, value: Option<&[u8]>) {
        let mut record = FutureRecord::<[u8], [u8]>::to(self.topic).headers(headers);
        if let Some(p) = self.partition {
            record = record.partition(p);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        let sent = self
            .server
            .producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await;
        if let Err((e, _)) = sent {
            tracing::warn!(topic = self.topic, error = %e, "could not send a reply");
        }
    }
}

impl ReplySink for ReplyTo<'_> {
    async fn send(&mut self, step: Step) -> Result<()> {
        let h = header(OwnedHeaders::new_with_capacity(4), CORRELATION_ID, self.id);
        match step {
            Step::Value { json, last } => {
                let encoded = encode_value(&json);
                let mut h = header(h, CONTENT_TYPE, encoded.content_type.as_bytes());
                if last {
                    h = header(h, NEST_IS_DISPOSED, &[0]);
                }
                self.produce(h, encoded.value.as_deref()).await;
            }
            Step::Done => self.produce(header(h, NEST_IS_DISPOSED, &[0]), None).await,
            Step::Error(err) => {
                let h = header(h, NEST_ERR, &encode_error(err.value()));
                self.produce(header(h, NEST_IS_DISPOSED, &[0]), None).await;
            }
            // NestJS sends the error without `kafka_nest-is-disposed`: it is terminal anyway.
            Step::NoHandler => {
                self.produce(header(h, NEST_ERR, NO_MESSAGE_HANDLER.as_bytes()), None)
                    .await;
            }
        }
        Ok(())
    }
}

/// Offsets in flight per partition, so that only offsets below every unhandled message are
/// committed.
#[derive(Default)]
struct Tracker(Mutex<HashMap<(String, i32), Part>>);

#[derive(Default)]
struct Part {
    in_flight: BTreeMap<i64, u32>,
    next: i64,
    stored: i64,
}

impl Tracker {
    fn begin(&self, topic: &str, partition: i32, offset: i64) {
        let mut parts = self.0.lock().expect("tracker lock");
        let part = parts.entry((topic.to_owned(), partition)).or_default();
        *part.in_flight.entry(offset).or_default() += 1;
        part.next = part.next.max(offset + 1);
    }

    /// The offset to store now, if it moved.
    fn end(&self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let mut parts = self.0.lock().expect("tracker lock");
        let part = parts.get_mut(&(topic.to_owned(), partition))?;
        if let Some(n) = part.in_flight.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                part.in_flight.remove(&offset);
            }
        }
        let committable = part.in_flight.keys().next().copied().unwrap_or(part.next);
        (committable != part.stored).then(|| {
            part.stored = committable;
            committable
        })
    }

    /// The stored offsets of the partitions in `owned` (the consumer's assignment), to commit
    /// on shutdown.
    fn stored(&self, owned: &TopicPartitionList) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), part) in self.0.lock().expect("tracker lock").iter() {
            if part.stored > 0 && owned.find_partition(topic, *partition).is_some() {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(part.stored));
            }
        }
        tpl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(is_legal_topic("math.sum_2-x"));
        assert!(!is_legal_topic(r#"{"cmd":"sum"}"#));
        assert!(!is_legal_topic(".."));
    }

    #[test]
    fn offsets_are_stored_only_below_unhandled_messages() {
        let t = Tracker::default();
        for o in 0..3 {
            t.begin("a", 0, o);
        }
        assert_eq!(t.end("a", 0, 1), None, "0 is still in flight");
        assert_eq!(t.end("a", 0, 0), Some(2));
        assert_eq!(t.end("a", 0, 2), Some(3));
        t.begin("a", 0, 3);
        t.begin("a", 0, 3); // redelivered after a rebalance
        assert_eq!(t.end("a", 0, 3), None);
        assert_eq!(t.end("a", 0, 3), Some(4));
    }

    #[test]
    fn shutdown_commits_only_partitions_still_assigned() {
        let t = Tracker::default();
        for p in 0..3 {
            t.begin("a", p, 10);
            t.end("a", p, 10);
        }
        // Partition 0 moved to another member, which may have committed beyond 11 since.
        let mut owned = TopicPartitionList::new();
        owned.add_partition("a", 1);
        owned.add_partition("a", 2);
        let tpl = t.stored(&owned);
        assert_eq!(tpl.count(), 2);
        assert!(tpl.find_partition("a", 0).is_none());
        assert_eq!(tpl.find_partition("a", 1).map(|e| e.offset()), Some(Offset::Offset(11)));
    }
}
