#![cfg(feature = "brokers")]
//! No password or token from a transport URL reaches a log line (ours or a client crate's,
//! at every level), an error's text or its sources, `Display`, `Debug` or `local_url()`, on
//! any transport that takes credentials: a server and a client are started with each URL
//! (some connect, some are refused, some cannot reach the broker) and everything they show
//! is searched for the secret.

mod common;

use std::io::Write;
use std::sync::{Mutex, Once};
use std::time::Duration;

use serde_json::Value;
use switchboard::{Client, Microservice};

/// Every log line of this test binary, at every level and from every crate.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
            .with_ansi(false)
            .with_writer(|| Capture)
            .init();
    });
}

/// An error as a user could see it: its text, its `Debug`, and every source's text.
fn shown_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("{e} {e:?}");
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(" | {s} {s:?}"));
        source = s.source();
    }
    out
}

/// Serves and calls `url`; returns everything shown, and whether the server started.
async fn exercise(url: &str) -> (Vec<String>, bool) {
    let mut shown = Vec::new();
    let server = tokio::time::timeout(
        Duration::from_secs(20),
        Microservice::new().handler(common::ECHO).listen(url).start(),
    )
    .await
    .expect("starting ends, one way or the other");
    let started = server.is_ok();
    match &server {
        Ok(s) => {
            shown.push(s.local_url().to_owned());
            shown.push(format!("{s:?}"));
        }
        Err(e) => shown.push(shown_error(e)),
    }
    let builder = Client::builder(url).timeout(Duration::from_secs(2));
    shown.push(format!("{builder:?}"));
    match builder.connect().await {
        Ok(client) => {
            shown.push(format!("{client:?}"));
            match client.send_raw::<Value>("echo", "hi").await {
                Ok(v) => shown.push(v.to_string()),
                Err(e) => shown.push(shown_error(&e)),
            }
            if let Err(e) = client.emit_raw("nobody", 1).await {
                shown.push(shown_error(&e));
            }
            client.close().await;
        }
        Err(e) => shown.push(shown_error(&e)),
    }
    if let Ok(s) = server {
        s.shutdown().await.unwrap();
    }
    (shown, started)
}

/// `url` (with `secret` in it) served and called, and the same credentials against a port
/// nothing listens on: the secret shows nowhere.
async fn never_shown(url: &str, unreachable: &str, secret: &str, must_start: bool) {
    capture_logs();
    if !common::conformance::reachable(url) {
        common::missing(url, "run scripts/brokers.sh");
        return;
    }
    let (mut shown, started) = exercise(url).await;
    assert_eq!(started, must_start, "the server on {url} started: {shown:?}");
    let (refused, _) = exercise(unreachable).await;
    shown.extend(refused);
    // Nor any piece of it: a parser that stopped at a `/` or `?` would show the rest.
    let pieces: Vec<&str> = secret.split(['/', '?']).filter(|p| p.len() >= 3).collect();
    for text in &shown {
        for piece in &pieces {
            assert!(!text.contains(piece), "`{piece}` of `{secret}` shown: {text}");
        }
    }
    let log = String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned();
    assert!(!log.is_empty(), "logs were captured");
    for piece in &pieces {
        if let Some(line) = log.lines().find(|l| l.contains(piece)) {
            panic!("`{piece}` of `{secret}` in a log line: {line}");
        }
    }
}

#[tokio::test]
async fn redis() {
    // Redis here has no password: the AUTH is refused and the server fails to start.
    never_shown(
        "redis://:s3cr3t-redis@127.0.0.1:6379",
        "redis://:s3cr3t-redis@127.0.0.1:1",
        "s3cr3t-redis",
        false,
    )
    .await;
}

#[tokio::test]
async fn nats_user_and_password() {
    never_shown(
        "nats://me:s3cr3t-nats@127.0.0.1:4222",
        "nats://me:s3cr3t-nats@127.0.0.1:1",
        "s3cr3t-nats",
        true,
    )
    .await;
}

#[tokio::test]
async fn nats_token() {
    never_shown(
        "nats://s3cr3t-token@127.0.0.1:4222",
        "nats://s3cr3t-token@127.0.0.1:1",
        "s3cr3t-token",
        true,
    )
    .await;
}

/// The user info runs to the last `@` before the query, as the transports read it: a `/` or `?`
/// in a password, a scheme in capitals, a secret in a query parameter.
#[tokio::test]
async fn secrets_wherever_the_url_holds_them() {
    for (url, unreachable, secret, starts) in [
        (
            "nats://me:s3cr/et-a@127.0.0.1:4222",
            "nats://me:s3cr/et-a@127.0.0.1:1",
            "s3cr/et-a",
            true,
        ),
        (
            "mqtt://me:s3cr/et-b@127.0.0.1:1883",
            "mqtt://me:s3cr/et-b@127.0.0.1:1",
            "s3cr/et-b",
            true,
        ),
        (
            "mqtt://me:s3cr?et-e@127.0.0.1:1883",
            "mqtt://me:s3cr?et-e@127.0.0.1:1",
            "s3cr?et-e",
            true,
        ),
        (
            "NATS://s3cret-c@127.0.0.1:4222",
            "NATS://s3cret-c@127.0.0.1:1",
            "s3cret-c",
            true,
        ),
        (
            "nats://127.0.0.1:4222?token=s3cret-d",
            "nats://127.0.0.1:1?token=s3cret-d",
            "s3cret-d",
            false,
        ),
    ] {
        never_shown(url, unreachable, secret, starts).await;
    }
}

#[tokio::test]
async fn mqtt() {
    never_shown(
        "mqtt://me:s3cr3t-mqtt@127.0.0.1:1883",
        "mqtt://me:s3cr3t-mqtt@127.0.0.1:1",
        "s3cr3t-mqtt",
        true,
    )
    .await;
}

#[tokio::test]
async fn rabbitmq_right_password() {
    // guest's password is guest: look for it where a password goes.
    never_shown(
        "amqp://guest:guest@127.0.0.1:5672/%2f?queue=secrets",
        "amqp://guest:guest@127.0.0.1:1/%2f",
        "guest:guest",
        true,
    )
    .await;
}

#[tokio::test]
async fn rabbitmq_wrong_password() {
    never_shown(
        "amqp://guest:s3cr3t-amqp@127.0.0.1:5672/%2f?queue=secrets-refused",
        "amqp://guest:s3cr3t-amqp@127.0.0.1:1/%2f",
        "s3cr3t-amqp",
        false,
    )
    .await;
}

#[tokio::test]
async fn kafka_refuses_credentials_in_its_url() {
    // Kafka takes no user info in its URL; the error about it must not repeat it.
    never_shown(
        "kafka://me:s3cr3t-kafka@127.0.0.1:6379",
        "kafka://me:s3cr3t-kafka@127.0.0.1:1",
        "s3cr3t-kafka",
        false,
    )
    .await;
}

/// Unknown events' patterns are the sender's text: a newline in one cannot forge a log line,
/// and a flood of them is not a flood of warnings.
#[tokio::test]
async fn remote_text_cannot_forge_or_flood_the_log() {
    capture_logs();
    let server = Microservice::new()
        .handler(common::ECHO)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    // One connection: the request below is read after every event before it.
    let client = Client::builder(&format!("{}?pool=1", server.local_url()))
        .connect()
        .await
        .unwrap();
    client.emit_raw("forge\nINFO forged: admin logged in", 1).await.unwrap();
    let long = format!("flood-{}", "x".repeat(1000));
    for _ in 0..2000 {
        client.emit_raw(long.as_str(), 1).await.unwrap();
    }
    // Read after the events on the same connection: once it answers, all were seen.
    assert_eq!(client.send_raw::<Value>("echo", 1).await.unwrap(), 1);
    server.shutdown().await.unwrap();
    let log = String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned();
    assert!(log.contains(r"forge\nINFO forged"), "the pattern is logged, escaped");
    assert!(!log.lines().any(|l| l.starts_with("INFO forged")), "a forged line");
    let floods: Vec<&str> = log.lines().filter(|l| l.contains("Event pattern: flood-")).collect();
    assert!(floods.len() < 200, "{} warnings for 2,000 unknown events", floods.len());
    assert!(floods.iter().all(|l| l.len() < 600), "a warning line is bounded");
}
