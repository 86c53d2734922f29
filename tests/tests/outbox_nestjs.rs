//! The event store's outbox publishing to real NestJS listeners (`@EventPattern('evt')` in
//! tests/nestjs): stored events arrive as ordinary NestJS events, each once per listener, in
//! the order they were stored — over TCP, and over NATS with the broker features.

mod common;

use std::time::Duration;

use common::nest::{NestServer, nest_installed};
use serde_json::{Value, json};
use switchboard::Client;
use switchboard_eventstore::{EventStore, ExpectedVersion, NewEvent, Relay, SqliteStore};

async fn publishes_to_nest(url: &str) {
    if !nest_installed(12, url) {
        return;
    }
    let nest = NestServer::start(12, url).await;
    let client = Client::connect(nest.url()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db")).unwrap();
    let marker = format!("outbox-{}-{}", std::process::id(), fastrand::u64(..));
    for seq in 0..20 {
        let data = serde_json::to_vec(&json!({"marker": marker, "seq": seq})).unwrap();
        store
            .append(
                format!("order-{}", seq % 3),
                ExpectedVersion::Any,
                vec![NewEvent::raw("evt", 1, data)],
            )
            .await
            .unwrap();
    }
    let relay = Relay::new(store.clone(), client.clone());
    assert_eq!(relay.flush().await.unwrap(), 20, "every stored event published");

    let mut seen = Vec::new();
    for _ in 0..400 {
        let all: Vec<Value> = client.send_raw("events_seen", json!({})).await.unwrap();
        seen = all
            .into_iter()
            .filter(|e| e["data"]["marker"] == json!(marker))
            .collect();
        if seen.len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for handler in ["a", "b"] {
        let order: Vec<u64> = seen
            .iter()
            .filter(|e| e["handler"] == handler)
            .map(|e| e["data"]["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            order,
            (0..20).collect::<Vec<u64>>(),
            "NestJS listener {handler}: each event once, in stored order"
        );
    }
}

#[tokio::test]
async fn the_outbox_reaches_nestjs_listeners_over_tcp() {
    publishes_to_nest("tcp://127.0.0.1:0").await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn the_outbox_reaches_nestjs_listeners_over_nats() {
    publishes_to_nest("nats://127.0.0.1:4222").await;
}
