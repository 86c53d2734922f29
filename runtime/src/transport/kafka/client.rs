//! The Kafka client: one producer for requests and events, and one consumer that reads the
//! reply topics (`<route>.reply`) of the routes called so far.
//!
//! Unlike NestJS's client, the reply consumer joins no consumer group: it is assigned every
//! partition of a reply topic, starting at the topic's end when the route is first called,
//! so no rebalance delays the first call and replies are never routed to another instance.
//! Replies for other clients' ids are skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use rdkafka::admin::AdminClient;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::OnceCell;

use super::{
    CONTENT_TYPE, CORRELATION_ID, Ctx, HeaderMap, NEST_ERR, NEST_IS_DISPOSED, Options, REPLY_PARTITION, REPLY_TOPIC,
    Shared, decode_error, decode_value, encode_value, ensure_topics, header, probe, watch_brokers,
};
use crate::error::{Error, Result, RpcError};
use crate::service::{Outbound, Replies, ReplyItem};
use crate::transport::{ClientOptions, ClientTransport, Endpoint};
use crate::wire::nestjs::pending::Pending;

/// The client side of the Kafka transport.
pub struct KafkaClient {
    opts: Options,
    connect_timeout: Duration,
    pending: Arc<Pending>,
    conn: OnceCell<Arc<Conn>>,
    /// Broker checks so far.
    probes: AtomicU64,
    /// Serialises broker checks while the brokers are (or may be) down; holds the number and
    /// error of the last check that failed, which the calls queued behind it share instead of
    /// each waiting for a check of their own.
    probing: tokio::sync::Mutex<Option<(u64, String)>>,
}

impl std::fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaClient").field("url", &self.opts.url).finish()
    }
}

/// The librdkafka clients, made on first use.
struct Conn {
    shared: Arc<Shared>,
    producer: FutureProducer<Ctx>,
    consumer: Arc<StreamConsumer<Ctx>>,
    admin: AdminClient<Ctx>,
    /// What is set up so far, by route.
    routes: Mutex<HashMap<String, Arc<RouteSetup>>>,
    reader: tokio::task::JoinHandle<()>,
    watchdog: tokio::task::JoinHandle<()>,
}

/// A route's topics, each set up once.
#[derive(Default)]
struct RouteSetup {
    /// The route's topic is known to exist. A broker that does not create topics on demand
    /// (Tansu, or Kafka with `auto.create.topics.enable=false`) would leave a record to a
    /// missing one unsent until its deadline.
    topic: OnceCell<()>,
    /// `<route>.reply` is read: the partition replies are asked for.
    reply_partition: OnceCell<i32>,
}

impl Conn {
    fn route(&self, route: &str) -> Arc<RouteSetup> {
        let mut routes = self.routes.lock().expect("routes lock");
        match routes.get(route) {
            Some(setup) => setup.clone(),
            None => routes.entry(route.to_owned()).or_default().clone(),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
        self.watchdog.abort();
    }
}

impl KafkaClient {
    /// A client for `kafka://host:port[,host:port]?…`; connects on first use.
    pub(crate) fn new(ep: &Endpoint, defaults: &ClientOptions) -> Result<Self> {
        let opts = Options::parse(ep, false)?;
        Ok(KafkaClient {
            pending: Pending::new(opts.url.clone()),
            opts,
            connect_timeout: defaults.connect_timeout,
            conn: OnceCell::new(),
            probes: AtomicU64::new(0),
            probing: tokio::sync::Mutex::new(None),
        })
    }

    /// The clients, checked to reach a broker when the last check (or an error) said they
    /// might not: a call while the brokers are down fails at once instead of at its deadline.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let conn = self.conn.get_or_try_init(|| self.make_conn()).await?.clone();
        if conn.shared.is_down() {
            let seen = self.probes.load(Ordering::Acquire);
            let mut failed = self.probing.lock().await;
            if conn.shared.is_down() {
                if let Some((n, reason)) = &*failed
                    && *n > seen
                {
                    return Err(self.opts.connect_error(reason));
                }
                let attempt = self.probes.fetch_add(1, Ordering::AcqRel) + 1;
                let (c, timeout) = (conn.clone(), self.connect_timeout);
                let probed = tokio::task::spawn_blocking(move || probe(c.producer.client(), &c.shared, timeout))
                    .await
                    .map_err(|e| self.opts.connect_error(e))?;
                if let Err(e) = probed {
                    let reason = match &e {
                        Error::Connect { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    };
                    *failed = Some((attempt, reason));
                    return Err(e);
                }
            }
        }
        Ok(conn)
    }

    async fn make_conn(&self) -> Result<Arc<Conn>> {
        let shared = Shared::new(&self.opts.url, Some(self.pending.clone()));
        let ctx = Ctx(shared.clone());
        let producer: FutureProducer<Ctx> = self
            .opts
            .producer_config()
            .create_with_context(ctx.clone())
            .map_err(|e| self.opts.connect_error(e))?;
        let consumer: StreamConsumer<Ctx> = self
            .opts
            .base_config()
            .set("group.id", &self.opts.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A reply topic that was emptied (a broker that lost its data) is read from the start.
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.opts.max_wait_ms.to_string())
            .create_with_context(ctx.clone())
            .map_err(|e| self.opts.connect_error(e))?;
        let admin: AdminClient<Ctx> = self
            .opts
            .base_config()
            .create_with_context(ctx)
            .map_err(|e| self.opts.connect_error(e))?;
        let consumer = Arc::new(consumer);
        let reader = tokio::spawn(read_replies(consumer.clone(), shared.clone(), self.pending.clone()));
        let watchdog = tokio::spawn(watch_brokers(producer.clone(), shared.clone()));
        Ok(Arc::new(Conn {
            shared,
            producer,
            consumer,
            admin,
            routes: Mutex::default(),
            reader,
            watchdog,
        }))
    }

    /// Sets up `<route>.reply` once: created if missing, every partition assigned to the reply
    /// consumer from the current end. Returns the partition to ask replies on.
    async fn reply_partition(&self, conn: &Arc<Conn>, setup: &RouteSetup, route: &str) -> Result<i32> {
        let partition = setup
            .reply_partition
            .get_or_try_init(|| async {
                let topic = format!("{route}.reply");
                let counts =
                    ensure_topics(&conn.admin, &conn.producer, &self.opts, std::slice::from_ref(&topic)).await?;
                let count = counts.get(&topic).copied().unwrap_or(1);
                let (consumer, t) = (conn.consumer.clone(), topic.clone());
                let opts = self.opts.clone();
                tokio::task::spawn_blocking(move || {
                    // Start at the end as it is now: every reply to a request sent after this
                    // lands at or after it.
                    let mut tpl = TopicPartitionList::new();
                    for p in 0..count {
                        let (_, high) = consumer
                            .fetch_watermarks(&t, p, Duration::from_secs(5))
                            .map_err(|e| opts.connect_error(format!("offsets of topic `{t}`: {e}")))?;
                        tpl.add_partition_offset(&t, p, Offset::Offset(high))
                            .map_err(|e| Error::broker(format!("cannot read reply topic `{t}`"), e))?;
                    }
                    consumer
                        .incremental_assign(&tpl)
                        .map_err(|e| Error::broker(format!("cannot read reply topic `{t}`"), e))
                })
                .await
                .map_err(|e| Error::broker(format!("cannot read reply topic `{topic}`"), e))??;
                tracing::debug!(url = %self.opts.url, %topic, partitions = count, "reading replies");
                Ok::<_, Error>(0)
            })
            .await?;
        Ok(*partition)
    }

    /// Makes sure the topic of `route` exists, once per route: created if missing, as the
    /// server does for the routes it serves.
    async fn route_topic(&self, conn: &Arc<Conn>, setup: &RouteSetup, route: &str) -> Result<()> {
        setup
            .topic
            .get_or_try_init(|| async {
                ensure_topics(&conn.admin, &conn.producer, &self.opts, &[route.to_owned()])
                    .await
                    .map(drop)
            })
            .await
            .copied()
    }

    /// The record headers for `msg`: the caller's, then its `content-type`.
    fn headers(msg: &Outbound, content_type: &str) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(msg.headers.len() + 4);
        for (k, v) in msg.headers.iter() {
            if k != CONTENT_TYPE {
                h = header(h, k, v.as_bytes());
            }
        }
        header(h, CONTENT_TYPE, content_type.as_bytes())
    }

    /// A record of `size` bytes that could not be produced to `topic`.
    fn produce_error(&self, topic: &str, size: usize, e: KafkaError) -> Error {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => too_large(topic, size, self.opts.max_message_bytes),
            _ => self
                .opts
                .connect_error(format!("cannot produce to topic `{topic}`: {e}")),
        }
    }
}

/// A record the producer (or the broker) refused as too large.
fn too_large(topic: &str, size: usize, limit: usize) -> Error {
    Error::TooLarge {
        context: format!("a message to Kafka topic `{topic}` (raise max_message_bytes, and the broker's limit)"),
        size,
        limit,
    }
}

/// A record's value and headers, in bytes.
fn record_size(value: Option<&[u8]>, headers: &OwnedHeaders) -> usize {
    let headers: usize = headers
        .iter()
        .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
        .sum();
    value.map_or(0, <[u8]>::len) + headers
}

impl ClientTransport for KafkaClient {
    fn connect(&self) -> BoxFuture<'_, Result<()>> {
        async move { self.conn().await.map(drop) }.boxed()
    }

    fn request(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<Replies>> {
        async move {
            let conn = self.conn().await?;
            let setup = conn.route(&msg.route);
            self.route_topic(&conn, &setup, &msg.route).await?;
            let partition = self.reply_partition(&conn, &setup, &msg.route).await?;
            let (id, rx) = self.pending.register(msg.route.clone())?;
            let encoded = encode_value(&msg.payload);
            let reply_topic = format!("{}.reply", msg.route);
            let headers = Self::headers(&msg, encoded.content_type);
            let headers = header(headers, CORRELATION_ID, id.as_bytes());
            let headers = header(headers, REPLY_TOPIC, reply_topic.as_bytes());
            let headers = header(headers, REPLY_PARTITION, partition.to_string().as_bytes());
            let size = record_size(encoded.value.as_deref(), &headers);
            let mut record = FutureRecord::<[u8], [u8]>::to(&msg.route).headers(headers);
            if let Some(v) = &encoded.value {
                record = record.payload(v.as_slice());
            }
            match conn.producer.send_result(record) {
                Ok(delivery) => {
                    // A failed delivery ends the call.
                    let (pending, err_topic) = (self.pending.clone(), msg.route.to_string());
                    let (url, limit) = (self.opts.url.clone(), self.opts.max_message_bytes);
                    tokio::spawn(async move {
                        match delivery.await {
                            Ok(Ok(_)) => {}
                            Ok(Err((e, _))) => {
                                let err = match e.rdkafka_error_code() {
                                    Some(RDKafkaErrorCode::MessageSizeTooLarge) => too_large(&err_topic, size, limit),
                                    _ => Error::Connect {
                                        addr: url,
                                        reason: format!("request to topic `{err_topic}` not delivered: {e}"),
                                    },
                                };
                                pending.push(&id, Err(err), true);
                            }
                            Err(_) => pending.push(&id, Err(Error::ConnectionClosed { addr: url }), true),
                        }
                    });
                    Replies::first_of(rx).await
                }
                Err((e, _)) => Err(self.produce_error(&msg.route, size, e)),
            }
        }
        .boxed()
    }

    fn emit(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<()>> {
        async move {
            let conn = self.conn().await?;
            self.route_topic(&conn, &conn.route(&msg.route), &msg.route).await?;
            let encoded = encode_value(&msg.payload);
            let headers = Self::headers(&msg, encoded.content_type);
            let size = record_size(encoded.value.as_deref(), &headers);
            let mut record = FutureRecord::<[u8], [u8]>::to(&msg.route).headers(headers);
            if let Some(v) = &encoded.value {
                record = record.payload(v.as_slice());
            }
            // Resolves once the broker has the event.
            match conn.producer.send_result(record) {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(self.produce_error(&msg.route, size, e)),
                    Err(_) => Err(Error::ConnectionClosed {
                        addr: self.opts.url.clone(),
                    }),
                },
                Err((e, _)) => Err(self.produce_error(&msg.route, size, e)),
            }
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            self.pending.close(|| Error::Closed);
            if let Some(conn) = self.conn.get() {
                conn.reader.abort();
                conn.watchdog.abort();
                let producer = conn.producer.clone();
                let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
            }
        }
        .boxed()
    }
}

/// Routes reply records to their calls by `kafka_correlationId`.
async fn read_replies(consumer: Arc<StreamConsumer<Ctx>>, shared: Arc<Shared>, pending: Arc<Pending>) {
    loop {
        let msg = match consumer.recv().await {
            Ok(msg) => msg,
            Err(e) => {
                tracing::debug!(url = %shared.url, error = %e, "reply consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        shared.set_up();
        let headers = HeaderMap::from_headers(msg.headers());
        // Records without a correlation id are not replies (NestJS ignores them too).
        let Some(id) = headers.get_str(CORRELATION_ID) else {
            continue;
        };
        if let Some(err) = headers.get(NEST_ERR) {
            pending.fail(&id, RpcError::from_value(decode_error(err)));
            continue;
        }
        let last = headers.get(NEST_IS_DISPOSED).is_some();
        let content_type = headers.get(CONTENT_TYPE);
        match (msg.payload(), content_type) {
            // Completion without a value. (A NestJS server also writes a final `null` value
            // this way; NestJS's client surfaces it as an extra `null`, we do not.)
            (None, None) if last => pending.finish(&id),
            (payload, ct) => pending.push(&id, Ok(ReplyItem::Value(decode_value(payload, ct))), last),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_queued_behind_a_failed_broker_check_share_its_error() {
        // Nothing listens on port 1: every check waits for the whole connect timeout.
        let opts = ClientOptions {
            pool_size: 1,
            connect_timeout: Duration::from_millis(700),
            max_frame_len: 1 << 20,
        };
        let client = Arc::new(KafkaClient::new(&Endpoint::parse("kafka://127.0.0.1:1").unwrap(), &opts).unwrap());
        let started = Instant::now();
        let calls: Vec<_> = (0..6)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move { c.connect().await })
            })
            .collect();
        for call in calls {
            let result = call.await.unwrap();
            assert!(matches!(result, Err(Error::Connect { .. })), "{result:?}");
        }
        // One check for all of them, not one after the other (6 × 700 ms).
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{:?}",
            started.elapsed()
        );
    }
}
