//! `listen`: prints what passes on a broker — events, requests and their replies — for the
//! patterns given (or everything), without taking it from the services: Redis, NATS and MQTT
//! deliver every message to every subscriber; on Kafka the listener is a consumer group of its
//! own (the services' groups keep their offsets), reading from the end. RabbitMQ hands a
//! queue's messages to one consumer, and TCP and gRPC are point to point: there is nothing to
//! overhear.

// Without the broker transports only the refusals are left.
#![cfg_attr(not(feature = "brokers"), allow(unused))]

use serde_json::{Value, json};

use crate::outcome::{Failure, Output};

/// Listens on `url` until `count` messages were printed (or forever).
pub async fn listen(url: &str, patterns: &[Value], count: Option<usize>, out: &Output) -> Result<(), Failure> {
    let routes: Vec<String> = patterns
        .iter()
        .map(|p| switchboard_pattern::route_of_wire_pattern(&p.to_string()).unwrap_or_else(|| p.to_string()))
        .collect();
    let mut printer = Printer { out, left: count };
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        #[cfg(feature = "brokers")]
        "nats" => nats(url, &routes, &mut printer).await,
        #[cfg(feature = "brokers")]
        "redis" => redis(url, &routes, &mut printer).await,
        #[cfg(feature = "brokers")]
        "mqtt" => mqtt(url, &routes, &mut printer).await,
        "amqp" => Err(Failure::usage(
            "amqp: a queue's messages go to one consumer, so listening would take them from the service",
        )),
        #[cfg(feature = "brokers")]
        "kafka" => kafka(url, &routes, &mut printer).await,
        "tcp" | "tls" | "grpc" | "mem" => Err(Failure::usage(format!(
            "{scheme}: point to point, there is nothing to overhear (use call)"
        ))),
        #[cfg(not(feature = "brokers"))]
        "nats" | "redis" | "mqtt" | "kafka" => Err(Failure::usage(format!(
            "{scheme}: this build has no broker transports (feature `brokers`)"
        ))),
        _ => Err(Failure::usage(format!(
            "cannot listen on {:?}: use redis://, nats://, mqtt:// or kafka://",
            switchboard::transport::redact(url)
        ))),
    }
}

/// Prints messages and counts them down.
struct Printer<'a> {
    out: &'a Output,
    left: Option<usize>,
}

impl Printer<'_> {
    /// Prints one message; false once `count` messages were printed.
    fn print(&mut self, channel: &str, body: &[u8], headers: Option<Value>) -> bool {
        let text = String::from_utf8_lossy(body);
        if self.out.json {
            let message = serde_json::from_slice::<Value>(body).unwrap_or_else(|_| Value::String(text.into_owned()));
            let mut line = json!({ "channel": channel, "message": message });
            if let Some(h) = headers {
                line["headers"] = h;
            }
            println!("{line}");
        } else {
            println!("{channel} {text}");
        }
        match &mut self.left {
            Some(0) | None => true,
            Some(n) => {
                *n -= 1;
                *n > 0
            }
        }
    }

    fn ready(&self, what: &str) {
        eprintln!("listening on {what}");
    }
}

fn unreachable(url: &str, e: impl std::fmt::Display) -> Failure {
    Failure::unreachable(format!("{}: {e}", switchboard::transport::redact(url)))
}

#[cfg(feature = "brokers")]
async fn nats(url: &str, routes: &[String], p: &mut Printer<'_>) -> Result<(), Failure> {
    use futures_util::StreamExt;
    let client = async_nats::connect(url).await.map_err(|e| unreachable(url, e))?;
    let subjects: Vec<String> = if routes.is_empty() {
        vec![">".into()]
    } else {
        routes.to_vec()
    };
    let mut all = futures_util::stream::SelectAll::new();
    for subject in &subjects {
        all.push(
            client
                .subscribe(subject.clone())
                .await
                .map_err(|e| unreachable(url, e))?,
        );
    }
    client.flush().await.map_err(|e| unreachable(url, e))?;
    p.ready(&subjects.join(", "));
    while let Some(msg) = all.next().await {
        let headers = msg.headers.as_ref().map(|h| {
            h.iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Value::from(v.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(",")),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        });
        if !p.print(msg.subject.as_str(), &msg.payload, headers) {
            break;
        }
    }
    Ok(())
}

#[cfg(feature = "brokers")]
async fn redis(url: &str, routes: &[String], p: &mut Printer<'_>) -> Result<(), Failure> {
    use futures_util::StreamExt;
    let client = redis::Client::open(url).map_err(|e| Failure::usage(format!("{e}")))?;
    let mut pubsub = client.get_async_pubsub().await.map_err(|e| unreachable(url, e))?;
    let what = if routes.is_empty() {
        pubsub.psubscribe("*").await.map_err(|e| unreachable(url, e))?;
        "every channel".to_owned()
    } else {
        // NestJS's Redis transport: requests and events on the route, replies on `<route>.reply`.
        let channels: Vec<String> = routes.iter().flat_map(|r| [r.clone(), format!("{r}.reply")]).collect();
        pubsub.subscribe(&channels).await.map_err(|e| unreachable(url, e))?;
        channels.join(", ")
    };
    p.ready(&what);
    let mut messages = pubsub.into_on_message();
    while let Some(msg) = messages.next().await {
        if !p.print(msg.get_channel_name(), msg.get_payload_bytes(), None) {
            break;
        }
    }
    Ok(())
}

#[cfg(feature = "brokers")]
async fn mqtt(url: &str, routes: &[String], p: &mut Printer<'_>) -> Result<(), Failure> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let authority = url
        .trim_start_matches("mqtt://")
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, port)) => (
            h,
            port.parse()
                .map_err(|_| Failure::usage(format!("bad port in {:?}", switchboard::transport::redact(url))))?,
        ),
        None => (authority, 1883),
    };
    if host.contains('@') {
        return Err(Failure::usage("listen on mqtt:// takes no credentials yet"));
    }
    let id = format!("switchboard-listen-{}", std::process::id());
    let (client, mut events) = AsyncClient::new(MqttOptions::new(id, host, port), 64);
    // NestJS's MQTT transport: requests and events on the route, replies on `<route>/reply`.
    let topics: Vec<String> = if routes.is_empty() {
        vec!["#".into()]
    } else {
        routes.iter().flat_map(|r| [r.clone(), format!("{r}/reply")]).collect()
    };
    for t in &topics {
        client
            .subscribe(t, QoS::AtMostOnce)
            .await
            .map_err(|e| unreachable(url, e))?;
    }
    let mut acked = 0;
    loop {
        match events.poll().await.map_err(|e| unreachable(url, e))? {
            Event::Incoming(Packet::SubAck(_)) => {
                acked += 1;
                if acked == topics.len() {
                    p.ready(&topics.join(", "));
                }
            }
            Event::Incoming(Packet::Publish(msg)) if !p.print(&msg.topic, &msg.payload, None) => break,
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    Ok(())
}

#[cfg(feature = "brokers")]
async fn kafka(url: &str, routes: &[String], p: &mut Printer<'_>) -> Result<(), Failure> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers as _;

    let authority = url
        .trim_start_matches("kafka://")
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(Failure::usage(
            "listen on kafka:// takes host:port[,host:port] (no credentials yet)",
        ));
    }
    if routes.is_empty() {
        return Err(Failure::usage(
            "kafka: name the patterns to listen to (a consumer sees topics that exist when it subscribes)",
        ));
    }
    // Partitions assigned by hand at their end offsets: no group is joined, so the services'
    // groups and offsets are left as they are, and what is produced from then on is seen.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", authority)
        .set("group.id", format!("switchboard-listen-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| unreachable(url, e))?;
    // NestJS's Kafka transport: requests and events on the route's topic, replies on `<route>.reply`.
    let wanted: Vec<String> = routes.iter().flat_map(|r| [r.clone(), format!("{r}.reply")]).collect();
    let wait = std::time::Duration::from_secs(10);
    // Blocking calls: the command's runtime has nothing else to run meanwhile.
    let (assignment, topics) = (|| {
        let mut assignment = rdkafka::TopicPartitionList::new();
        let mut topics = Vec::new();
        for topic in &wanted {
            let metadata = consumer
                .fetch_metadata(Some(topic), wait)
                .map_err(|e| unreachable(url, e))?;
            let Some(found) = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
            else {
                continue;
            };
            for partition in found.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(topic, partition.id(), wait)
                    .map_err(|e| unreachable(url, e))?;
                assignment
                    .add_partition_offset(topic, partition.id(), rdkafka::Offset::Offset(high))
                    .map_err(|e| unreachable(url, e))?;
            }
            topics.push(topic.clone());
        }
        Ok::<_, Failure>((assignment, topics))
    })()?;
    if topics.is_empty() {
        return Err(Failure::usage(format!(
            "kafka: none of the topics {} exists",
            wanted.join(", ")
        )));
    }
    consumer.assign(&assignment).map_err(|e| unreachable(url, e))?;
    let mut messages = consumer.stream();
    p.ready(&topics.join(", "));
    while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
        let message = message.map_err(|e| unreachable(url, e))?;
        let headers = message.headers().map(|h| {
            h.iter()
                .map(|header| {
                    let value = header.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (header.key.to_owned(), Value::from(value.into_owned()))
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        });
        if !p.print(message.topic(), message.payload().unwrap_or_default(), headers) {
            break;
        }
    }
    Ok(())
}
