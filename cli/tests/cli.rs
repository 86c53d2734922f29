//! The `switchboard` binary against real services: Switchboard servers on every transport but
//! the in-process one, and the NestJS 12 peer (tests/nestjs) over TCP, Redis, NATS, MQTT and
//! RabbitMQ. Each failure kind has its exit code.

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::prelude::*;

mod common;
#[cfg(any(feature = "brokers", feature = "postgres"))]
use common::missing;
use common::nestjs;

#[message_pattern({ cmd = "sum" })]
async fn sum(numbers: Vec<f64>) -> f64 {
    numbers.iter().sum()
}

#[message_pattern("cli.count")]
async fn count(n: u32) -> ReplyStream<u32> {
    ReplyStream::iter(1..=n)
}

#[message_pattern("cli.headers")]
async fn headers(headers: Headers) -> HashMap<String, String> {
    headers.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[message_pattern("cli.delay")]
async fn delay(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

#[message_pattern("cli.fails")]
async fn fails() -> RpcResult<u32> {
    Err(RpcError::from_value(json!({"code": 42, "message": "no such thing"})))
}

/// Events `cli.evt` received.
static EVENTS: Mutex<Vec<Value>> = Mutex::new(Vec::new());

#[event_pattern("cli.evt")]
async fn evt(data: Value) {
    EVENTS.lock().unwrap().push(data);
}

#[derive(Serialize, Deserialize)]
struct Order {
    id: String,
    lines: Vec<(String, u32)>,
    note: Option<String>,
}

#[message_pattern({ cmd = "order.place" }, idempotent, retries = 2, timeout = "3s")]
async fn place_order(order: Order) -> RpcResult<u64> {
    Ok(order.lines.len() as u64)
}

#[event_pattern("order.placed", key = "id")]
async fn order_placed(_order: Order) {}

/// Runs the binary with `args` and `stdin`.
fn cli(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the switchboard binary runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        std::io::Write::write_all(&mut input, text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

async fn run(args: Vec<String>, stdin: Option<&'static str>) -> Output {
    tokio::task::spawn_blocking(move || cli(&args.iter().map(String::as_str).collect::<Vec<_>>(), stdin))
        .await
        .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn serve(url: &str) -> switchboard::RunningServer {
    Microservice::from_registry()
        .listen(url)
        .start()
        .await
        .expect("server starts")
}

#[tokio::test]
async fn calls_and_emits_over_tcp() {
    let server = serve("tcp://127.0.0.1:0").await;
    let url = server.local_url().to_owned();

    let out = run(args(&["call", &url, r#"{"cmd":"sum"}"#, "[1,2,3.5]"]), None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "6.5\n");

    // Every value of a multi-value reply, one per line; the payload from stdin.
    let out = run(args(&["call", &url, "cli.count"]), Some("3")).await;
    assert_eq!(text(&out.stdout), "1\n2\n3\n");
    let out = run(args(&["call", &url, "cli.count", "-", "--json"]), Some("2")).await;
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, [json!({"value": 1}), json!({"value": 2}), json!({"ok": true})]);

    let out = run(
        args(&[
            "call",
            &url,
            "cli.headers",
            "null",
            "-H",
            "tenant=acme",
            "--trace-id",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ]),
        None,
    )
    .await;
    let seen: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(seen["tenant"], "acme");
    let traceparent = seen["traceparent"].as_str().unwrap_or_default();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{seen}"
    );

    let marker = format!("cli-{}", std::process::id());
    let out = run(
        args(&["emit", &url, "cli.evt", &json!({"marker": marker}).to_string()]),
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(event_seen(&marker).await, "the event reached its listener");
    server.shutdown().await.unwrap();
}

/// An OTLP/HTTP collector taking `http/json`: every export's body, parsed.
#[cfg(feature = "telemetry")]
async fn json_collector() -> (String, std::sync::Arc<Mutex<Vec<Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let exports = std::sync::Arc::new(Mutex::new(Vec::new()));
    let kept = exports.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // One request: its head, then `content-length` bytes of body.
                    let head_end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
                    kept.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if conn.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, exports)
}

/// Every span in the exports, by name.
#[cfg(feature = "telemetry")]
fn exported_spans(exports: &[Value]) -> HashMap<String, Value> {
    let mut spans = HashMap::new();
    for export in exports {
        for resource in export["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    spans.insert(span["name"].as_str().unwrap_or_default().to_owned(), span.clone());
                }
            }
        }
    }
    spans
}

/// The CLI with OTLP variables pointing at `collector`, over `protocol`.
#[cfg(feature = "telemetry")]
async fn traced_cli(collector: &str, protocol: &str, list: &[&str]) -> Output {
    let (collector, protocol, list) = (collector.to_owned(), protocol.to_owned(), args(list));
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(&list)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env_remove("OTEL_SDK_DISABLED")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[cfg(feature = "telemetry")]
#[tokio::test]
async fn exports_the_spans_of_a_call_when_an_otlp_endpoint_is_set() {
    let server = serve("tcp://127.0.0.1:0").await;
    let url = server.local_url().to_owned();
    let (collector, exports) = json_collector().await;

    // Given a trace id: the command's span and the call's are in that trace, the call's span is
    // the command's child, and the service is handed the call's span as its parent.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let out = traced_cli(
        &collector,
        "http/json",
        &["call", &url, "cli.headers", "null", "--trace-id", trace],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let seen: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let spans = exported_spans(&exports.lock().unwrap());
    let (command, send) = (&spans["switchboard call"], &spans["send cli.headers"]);
    assert_eq!(command["traceId"], trace, "{command}");
    assert_eq!(send["traceId"], trace, "{send}");
    assert_eq!(send["parentSpanId"], command["spanId"]);
    assert!(send["kind"] == json!(3) || send["kind"] == "SPAN_KIND_CLIENT", "{send}");
    let span_id = send["spanId"].as_str().unwrap();
    assert_eq!(seen["traceparent"], format!("00-{trace}-{span_id}-01"));

    // Without one, a trace of its own; an event is a PRODUCER span.
    exports.lock().unwrap().clear();
    let out = traced_cli(
        &collector,
        "http/json",
        &["emit", &url, "cli.evt", r#"{"marker":"traced"}"#],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spans = exported_spans(&exports.lock().unwrap());
    let (command, send) = (&spans["switchboard emit"], &spans["send cli.evt"]);
    assert_eq!(send["traceId"], command["traceId"]);
    assert_ne!(command["traceId"], trace);
    assert!(
        send["kind"] == json!(4) || send["kind"] == "SPAN_KIND_PRODUCER",
        "{send}"
    );

    // Over OTLP/gRPC, the default protocol, from the CLI's single-threaded runtime.
    let grpc = example_collector::Collector::start("127.0.0.1:0").await.unwrap();
    let out = traced_cli(
        &grpc.endpoint,
        "grpc",
        &["call", &url, "cli.count", "2", "--trace-id", trace],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spans = grpc.spans();
    let names: Vec<(&str, &str, &str)> = spans
        .iter()
        .map(|s| (s.name.as_str(), s.kind, s.trace_id.as_str()))
        .collect();
    assert!(names.contains(&("switchboard call", "internal", trace)), "{names:?}");
    assert!(names.contains(&("send cli.count", "client", trace)), "{names:?}");
    assert!(spans.iter().all(|s| s.service == "switchboard-cli"), "{names:?}");

    // With no endpoint set, nothing is sent.
    exports.lock().unwrap().clear();
    let out = run(args(&["call", &url, r#"{"cmd":"sum"}"#, "[1,2]"]), None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(exports.lock().unwrap().is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_failure_has_its_exit_code() {
    let server = serve("tcp://127.0.0.1:0").await;
    let url = server.local_url().to_owned();
    let code = |out: &Output| out.status.code();

    let out = run(args(&["call", &url, "cli.nobody"]), None).await;
    assert_eq!(code(&out), Some(3), "no handler: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cli.nobody"), "{}", text(&out.stderr));

    let out = run(args(&["call", &url, "cli.delay", "5000", "--timeout", "200ms"]), None).await;
    assert_eq!(code(&out), Some(4), "timeout: {}", text(&out.stderr));

    let out = run(args(&["call", &url, "cli.fails", "--json"]), None).await;
    assert_eq!(code(&out), Some(6), "handler error");
    let line: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(line["error"]["kind"], "handler_error");
    assert!(
        line["error"]["message"].as_str().unwrap().contains("no such thing"),
        "{line}"
    );

    for bad in [
        args(&["call", &url, "cli.count", "{not json"]),
        args(&["call", &url, "cli.count", "1", "--timeout", "soon"]),
        args(&["call", &url, "cli.count", "1", "-H", "novalue"]),
        args(&["call", "carrier-pigeon://x", "cli.count", "1"]),
        args(&["call", &url]),
    ] {
        let out = run(bad.clone(), None).await;
        assert_eq!(code(&out), Some(2), "{bad:?}: {}", text(&out.stderr));
    }
    server.shutdown().await.unwrap();

    // Nothing listens there any more.
    let out = run(args(&["call", &url, "cli.count", "1", "--timeout", "2s"]), None).await;
    assert_eq!(code(&out), Some(5), "refused: {}", text(&out.stderr));
}

#[cfg(feature = "brokers")]
#[tokio::test]
async fn calls_over_a_broker() {
    let url = "nats://127.0.0.1:4222";
    if std::net::TcpStream::connect("127.0.0.1:4222").is_err() {
        return missing("NATS on 127.0.0.1:4222", "run scripts/brokers.sh");
    }
    let server = serve(url).await;
    let out = run(args(&["call", url, "cli.count", "2"]), None).await;
    assert_eq!(text(&out.stdout), "1\n2\n", "{}", text(&out.stderr));
    // No responders on NATS: no handler, at once.
    let out = run(args(&["call", url, "cli.nobody_on_nats"]), None).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    server.shutdown().await.unwrap();

    // An event over MQTT, where publishing only queues: the process exits after it went out.
    let url = "mqtt://127.0.0.1:1883";
    if std::net::TcpStream::connect("127.0.0.1:1883").is_err() {
        return missing("Mosquitto on 127.0.0.1:1883", "run scripts/brokers.sh");
    }
    let server = serve(url).await;
    let marker = format!("cli-mqtt-{}", std::process::id());
    let out = run(
        args(&["emit", url, "cli.evt", &json!({"marker": marker}).to_string()]),
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(event_seen(&marker).await, "the event reached its listener");
    server.shutdown().await.unwrap();
}

/// Waits (up to 15 s: a Kafka consumer group takes seconds to form) until `cli.evt` got `marker`.
async fn event_seen(marker: &str) -> bool {
    for _ in 0..750 {
        if EVENTS.lock().unwrap().iter().any(|e| e["marker"] == json!(marker)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The same commands against NestJS 12's own TCP server (tests/nestjs/server.mjs).
#[tokio::test]
async fn calls_a_nestjs_server() {
    let Some((mut node, port)) = nestjs(&["--port", "0"]).await else {
        return;
    };
    let url = format!("tcp://127.0.0.1:{port}");

    let out = run(args(&["call", &url, r#"{"cmd":"sum"}"#, "[1,2,3]"]), None).await;
    assert_eq!(text(&out.stdout), "6\n", "{}", text(&out.stderr));
    let out = run(args(&["call", &url, "stream"]), None).await;
    assert_eq!(text(&out.stdout), "1\n2\n3\n", "{}", text(&out.stderr));
    let out = run(args(&["call", &url, "rpc_object"]), None).await;
    assert_eq!(out.status.code(), Some(6));
    assert!(text(&out.stderr).contains("custom msg"), "{}", text(&out.stderr));
    let out = run(args(&["call", &url, "nope"]), None).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = run(args(&["call", &url, "meta", "{}", "-H", "tenant=acme"]), None).await;
    assert!(
        text(&out.stdout).contains(r#""tenant":"acme""#),
        "{}",
        text(&out.stdout)
    );
    // A NestJS service cannot describe itself: said in words, exit 3 (no handler).
    let out = run(args(&["describe", &url]), None).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not describe itself"),
        "{}",
        text(&out.stderr)
    );
    let out = run(args(&["emit", &url, "evt", r#"{"from":"cli"}"#]), None).await;
    assert!(out.status.success());
    let mut seen = String::new();
    for _ in 0..50 {
        seen = text(&run(args(&["call", &url, "events_seen"]), None).await.stdout);
        if seen.contains(r#""from":"cli""#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.contains(r#""from":"cli""#), "{seen}");
    node.kill().await.unwrap();
}

/// `call`, `emit` and `listen` against NestJS 12 servers on Redis, NATS, MQTT and RabbitMQ
/// (`listen` is refused on RabbitMQ, where overhearing would take messages from the queue).
#[cfg(feature = "brokers")]
#[tokio::test]
async fn calls_emits_and_listens_with_nestjs_on_brokers() {
    let queue = format!("cli-nest-{}", std::process::id());
    let amqp = format!("amqp://guest:guest@127.0.0.1:5672?queue={queue}&durable=false");
    for (url, port) in [
        ("redis://127.0.0.1:6379", 6379),
        ("nats://127.0.0.1:4222", 4222),
        ("mqtt://127.0.0.1:1883", 1883),
        (amqp.as_str(), 5672),
    ] {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            return missing(&format!("a broker at 127.0.0.1:{port}"), "run scripts/brokers.sh");
        }
        let Some((mut node, _)) = nestjs(&["--url", url]).await else {
            return;
        };
        let out = run(args(&["call", url, r#"{"cmd":"sum"}"#, "[1,2,3]"]), None).await;
        assert_eq!(text(&out.stdout), "6\n", "{url}: {}", text(&out.stderr));
        let out = run(args(&["call", url, "stream", "--json"]), None).await;
        assert_eq!(
            text(&out.stdout),
            "{\"value\":1}\n{\"value\":2}\n{\"value\":3}\n{\"ok\":true}\n",
            "{url}: {}",
            text(&out.stderr)
        );

        let marker = format!("nest-{port}-{}", std::process::id());
        let child = match port {
            5672 => None,
            _ => Some(listener(url, &["evt", "--count", "1", "--json"]).await),
        };
        let out = run(
            args(&["emit", url, "evt", &json!({"marker": marker}).to_string()]),
            None,
        )
        .await;
        assert!(out.status.success(), "{url}: {}", text(&out.stderr));
        if let Some(child) = child {
            let lines = heard(child).await;
            assert_eq!(lines[0]["channel"], "evt", "{url}: {lines:?}");
            assert_eq!(lines[0]["message"]["data"]["marker"], json!(marker), "{url}: {lines:?}");
        } else {
            let out = run(args(&["listen", url, "evt"]), None).await;
            assert_eq!(out.status.code(), Some(2), "{url}: {}", text(&out.stderr));
        }
        let mut seen = String::new();
        for _ in 0..50 {
            seen = text(&run(args(&["call", url, "events_seen"]), None).await.stdout);
            if seen.contains(&marker) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(seen.contains(&marker), "{url}: NestJS got the event: {seen}");
        node.kill().await.unwrap();
    }
}

/// `call` and `emit` against Switchboard services on the transports the other tests leave out:
/// Redis, RabbitMQ, Kafka (librdkafka's mock cluster), gRPC and TLS.
#[cfg(all(feature = "brokers", feature = "grpc", feature = "tls"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_emits_on_every_transport() {
    for port in [6379, 5672] {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            return missing(&format!("a broker at 127.0.0.1:{port}"), "run scripts/brokers.sh");
        }
    }
    let mock = switchboard::transport::kafka::KafkaMock::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let queue = format!("cli-every-{}", std::process::id());
    let servers = [
        "redis://127.0.0.1:6379".to_owned(),
        format!("amqp://guest:guest@127.0.0.1:5672?queue={queue}&durable=false"),
        format!("kafka://{}", mock.bootstrap()),
        "grpc://127.0.0.1:0".to_owned(),
        format!(
            "tls://127.0.0.1:0?cert={}&key={}",
            cert_path.display(),
            key_path.display()
        ),
    ];
    for listen in servers {
        let server = serve(&listen).await;
        let url = match listen.split_once("://").unwrap().0 {
            "grpc" => server.local_url().to_owned(),
            "tls" => format!(
                "{}?ca={}&server_name=localhost",
                server.local_url(),
                cert_path.display()
            ),
            _ => listen.clone(),
        };
        let scheme = listen.split_once("://").unwrap().0;
        let out = run(args(&["call", &url, "cli.count", "3", "--timeout", "20s"]), None).await;
        assert_eq!(text(&out.stdout), "1\n2\n3\n", "{scheme}: {}", text(&out.stderr));
        let marker = format!("every-{scheme}-{}", std::process::id());
        let out = run(
            args(&["emit", &url, "cli.evt", &json!({"marker": marker}).to_string()]),
            None,
        )
        .await;
        assert!(out.status.success(), "{scheme}: {}", text(&out.stderr));
        assert!(event_seen(&marker).await, "{scheme}: the event reached its listener");
        server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn describes_a_service() {
    let server = Microservice::new()
        .name("shop")
        .version("2.1.0")
        .handler(PLACE_ORDER)
        .handler(ORDER_PLACED)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let url = server.local_url().to_owned();
    let (place, placed) = (PLACE_ORDER.contract().unwrap(), ORDER_PLACED.contract().unwrap());
    let out = run(args(&["describe", &url]), None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "shop 2.1.0: 2 patterns

event    order.placed
  handler   cli::order_placed
  policy    by key id
  contract  {placed}
  payload   {{id: string, lines: [(string, integer)], note?: string}}

request  {{\"cmd\":\"order.place\"}}
  handler   cli::place_order
  policy    timeout 3000 ms, idempotent, retries 2
  contract  {place}
  payload   {{id: string, lines: [(string, integer)], note?: string}}
  reply     integer
"
        )
    );

    // By name (for a broker several services share), as JSON, with whole schemas.
    let out = run(args(&["describe", &url, "--name", "shop", "--json"]), None).await;
    let described: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(described["name"], "shop");
    assert_eq!(
        described["patterns"][1]["policy"],
        json!({"timeout_ms": 3000, "idempotent": true, "retries": 2})
    );
    assert_eq!(described["patterns"][1]["contract"], place.to_string());
    assert_eq!(
        described["patterns"][1]["payload"]["required"],
        json!(["id", "lines"]),
        "{described}"
    );
    let out = run(args(&["describe", &url, "--schemas"]), None).await;
    assert!(text(&out.stdout).contains("\"prefixItems\""), "{}", text(&out.stdout));
    let out = run(args(&["describe", &url, "--name", "other"]), None).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    server.shutdown().await.unwrap();

    // Turned off: nothing answers.
    let quiet = Microservice::new()
        .handler(PLACE_ORDER)
        .describe_pattern(false)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let out = run(args(&["describe", quiet.local_url()]), None).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    quiet.shutdown().await.unwrap();
}

/// `switchboard listen` started on `url` for `args`; returns once it is subscribed.
#[cfg(feature = "brokers")]
async fn listener(url: &str, extra: &[&str]) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("listen")
        .arg(url)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the switchboard binary runs");
    let mut err = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stderr.take().unwrap()));
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = err.next_line().await {
            if line.starts_with("listening on") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready.ok(), Some(true), "listen on {url} subscribes");
    child
}

/// What a listener printed once it stopped (after `--count` messages).
#[cfg(feature = "brokers")]
async fn heard(child: tokio::process::Child) -> Vec<Value> {
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("the listener stops after its count")
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// On Redis, NATS and MQTT, `listen` overhears events, and on Redis a request and its reply,
/// without taking them from the service.
#[cfg(feature = "brokers")]
#[tokio::test]
async fn listens_on_brokers() {
    for (url, port) in [
        ("redis://127.0.0.1:6379", 6379),
        ("nats://127.0.0.1:4222", 4222),
        ("mqtt://127.0.0.1:1883", 1883),
    ] {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            return missing(&format!("a broker at {url}"), "run scripts/brokers.sh");
        }
        let server = serve(url).await;
        let child = listener(url, &["cli.evt", "--count", "1", "--json"]).await;
        let marker = format!("listen-{port}-{}", std::process::id());
        let client = Client::connect(url).await.unwrap();
        client.emit_raw("cli.evt", json!({"marker": marker})).await.unwrap();
        let lines = heard(child).await;
        assert_eq!(lines.len(), 1, "{url}: {lines:?}");
        assert_eq!(lines[0]["channel"], "cli.evt", "{url}");
        assert_eq!(lines[0]["message"]["data"]["marker"], json!(marker), "{url}: {lines:?}");
        assert!(event_seen(&marker).await, "{url}: the service still got the event");
        server.shutdown().await.unwrap();
    }
    let url = "redis://127.0.0.1:6379";
    let server = serve(url).await;
    let child = listener(url, &["cli.count", "-n", "2", "--json"]).await;
    let client = Client::connect(url).await.unwrap();
    assert_eq!(client.send_raw::<u32>("cli.count", 1).await.unwrap(), 1);
    let lines = heard(child).await;
    let channels: Vec<&str> = lines.iter().map(|l| l["channel"].as_str().unwrap()).collect();
    assert_eq!(channels, ["cli.count", "cli.count.reply"], "{lines:?}");
    assert_eq!(lines[1]["message"]["response"], json!(1));
    server.shutdown().await.unwrap();
}

/// On Kafka the listener is a consumer group of its own: it sees the events from when it is
/// assigned, and the service's group still gets them (librdkafka's mock cluster).
#[cfg(feature = "brokers")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listens_on_kafka() {
    let mock = switchboard::transport::kafka::KafkaMock::start().unwrap();
    let url = format!("kafka://{}", mock.bootstrap());
    mock.create_topic("cli.evt", 1).unwrap();
    let server = serve(&url).await;
    let child = listener(&url, &["cli.evt", "--count", "2", "--json"]).await;
    let marker = format!("kafka-{}", std::process::id());
    let client = Client::connect(&url).await.unwrap();
    for n in 0..2 {
        client
            .emit_raw("cli.evt", json!({"marker": marker, "n": n}))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let lines = heard(child).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(line["channel"], "cli.evt", "{lines:?}");
        assert_eq!(line["message"], json!({"marker": marker, "n": n}), "{lines:?}");
    }
    // The service's group joins on its own time: up to 20 s.
    let mut seen = false;
    for _ in 0..4 {
        seen = seen || event_seen(&marker).await;
    }
    assert!(seen, "the service's own group still got the events");
    let out = run(args(&["listen", &url]), None).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "patterns are needed on Kafka: {}",
        text(&out.stderr)
    );
    let out = run(args(&["listen", &url, "no.such.topic"]), None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("none of the topics"),
        "{}",
        text(&out.stderr)
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn listen_refuses_what_it_cannot_overhear() {
    for url in [
        "tcp://127.0.0.1:1",
        "amqp://guest:s3cret@127.0.0.1:5672",
        "kafka://guest:s3cret@127.0.0.1:9092",
        "http://guest:s3cret@127.0.0.1:1",
        "mqtt://guest:s3cret@127.0.0.1:port",
    ] {
        let out = run(args(&["listen", url, "x"]), None).await;
        assert_eq!(out.status.code(), Some(2), "{url}: {}", text(&out.stderr));
        assert!(!text(&out.stderr).contains("s3cret"), "{}", text(&out.stderr));
    }
}

/// A password or token in a URL stays out of every message, whatever the command fails on.
#[tokio::test]
async fn no_url_secret_reaches_an_error() {
    let cases: &[(&[&str], i32)] = &[
        (&["events", "tail", "mysql://guest:s3cret@127.0.0.1/db"], 2),
        (&["saga", "list", "mysql://guest:s3cret@127.0.0.1/db"], 2),
        (&["bench", "tcp://guest:s3cret@127.0.0.1:1", "x", "-n", "1"], 5),
        (&["call", "tcp://guest:s3cret@127.0.0.1:1", "x"], 5),
        (&["call", "redis://127.0.0.1:1?password=s3cret", "x"], 2),
    ];
    for (list, code) in cases {
        let out = run(args(list), None).await;
        assert_eq!(out.status.code(), Some(*code), "{list:?}: {}", text(&out.stderr));
        assert!(!text(&out.stderr).contains("s3cret"), "{list:?}: {}", text(&out.stderr));
    }
    // A NATS server without authentication takes any token: the call reaches it, and no
    // service answers the describe pattern.
    #[cfg(feature = "brokers")]
    {
        if std::net::TcpStream::connect("127.0.0.1:4222").is_err() {
            return missing("NATS on 127.0.0.1:4222", "run scripts/brokers.sh");
        }
        let out = run(
            args(&["describe", "nats://s3cret@127.0.0.1:4222", "--name", "nobody"]),
            None,
        )
        .await;
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("nats://***@127.0.0.1:4222"),
            "{}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).contains("s3cret"), "{}", text(&out.stderr));
    }
}

/// `events tail` and `events replay` on an SQLite store: everything, one stream, one name, the
/// last N, following new commits, and publishing again to a service that counts what arrives.
#[tokio::test]
async fn tails_and_replays_an_event_store() {
    use switchboard_eventstore::{EventStore, ExpectedVersion, NewEvent, SqliteStore};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let store_url = format!("sqlite:{}", db.display());
    let store = SqliteStore::open(&db).unwrap();
    let marker = format!("replayed-{}", std::process::id());
    let event = |name: &str, n: u32| NewEvent::raw(name, 1, json!({"marker": marker, "n": n}).to_string());
    store
        .append(
            "user-1",
            ExpectedVersion::NoStream,
            vec![event("cli.evt", 1), event("EMAIL_UPDATED", 2)],
        )
        .await
        .unwrap();
    store
        .append("user-2", ExpectedVersion::NoStream, vec![event("cli.evt", 3)])
        .await
        .unwrap();

    let lines = |out: &Output| -> Vec<Value> {
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let out = run(args(&["events", "tail", &store_url, "-n", "0"]), None).await;
    assert_eq!(out.status.code(), Some(2), "-n 0 is refused: {}", text(&out.stderr));
    let out = run(args(&["events", "tail", &store_url, "--json"]), None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = lines(&out);
    let positions: Vec<_> = all.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, [1, 2, 3]);
    assert_eq!(all[1]["stream"], "user-1");
    assert_eq!(all[1]["revision"], 1);
    assert_eq!(all[1]["name"], "EMAIL_UPDATED");
    assert_eq!(all[1]["data"]["n"], 2);

    let out = run(args(&["events", "tail", &store_url, "--stream", "user-1"]), None).await;
    let human = text(&out.stdout);
    assert!(human.starts_with("#1 user-1@0 cli.evt v1 {"), "{human}");
    assert_eq!(human.lines().count(), 2);
    let out = run(
        args(&["events", "tail", &store_url, "--name", "cli.evt", "--json"]),
        None,
    )
    .await;
    assert_eq!(
        lines(&out)
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 3]
    );
    let out = run(args(&["events", "tail", &store_url, "--last", "1", "--json"]), None).await;
    assert_eq!(lines(&out)[0]["position"], 3);

    // --follow prints what is committed while it runs.
    let mut follower = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["events", "tail", &store_url, "--follow", "-n", "5", "--json"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let mut followed = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(30), followed.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    store
        .append(
            "user-3",
            ExpectedVersion::Any,
            vec![event("cli.evt", 4), event("cli.evt", 5)],
        )
        .await
        .unwrap();
    let mut newer = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(30), followed.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        newer.push(
            serde_json::from_str::<Value>(&line).unwrap()["position"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(newer, [4, 5], "the followed commits, then it stops at -n 5");
    assert!(follower.wait().await.unwrap().success());

    // Replay the cli.evt events to a service.
    let server = serve("tcp://127.0.0.1:0").await;
    let out = run(
        args(&[
            "events",
            "replay",
            &store_url,
            "--name",
            "cli.evt",
            "--to",
            server.local_url(),
            "--json",
        ]),
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(lines(&out)[0], json!({"replayed": 4}));
    for _ in 0..250 {
        if EVENTS
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["marker"] == json!(marker))
            .count()
            >= 4
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ns: Vec<_> = EVENTS
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["marker"] == json!(marker))
        .map(|e| e["n"].clone())
        .collect();
    assert_eq!(ns, [json!(1), json!(3), json!(4), json!(5)], "in stored order");
    server.shutdown().await.unwrap();

    // No store there: usage error, nothing created.
    let nowhere = dir.path().join("nowhere.db");
    let out = run(args(&["events", "tail", &nowhere.display().to_string()]), None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!nowhere.exists());
}

/// `events tail` on a PostgreSQL store, in a schema of its own.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn tails_a_postgres_store() {
    use switchboard_eventstore::{EventStore, ExpectedVersion, NewEvent, PgStore};

    let url = std::env::var("SB_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let schema = format!("cli_t_{}_{}", std::process::id(), fastrand_suffix());
    let store = match PgStore::builder(url.clone()).schema(schema.clone()).connect().await {
        Ok(store) => store,
        Err(e) => return missing("PostgreSQL", &format!("{e}; start it with scripts/brokers.sh")),
    };
    store
        .append(
            "acct-1",
            ExpectedVersion::NoStream,
            vec![NewEvent::raw("OPENED", 1, "{\"by\":\"cli\"}")],
        )
        .await
        .unwrap();
    let out = run(
        args(&["events", "tail", &format!("{url}?schema={schema}"), "--json"]),
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(
        (
            line["stream"].as_str(),
            line["name"].as_str(),
            line["data"]["by"].as_str()
        ),
        (Some("acct-1"), Some("OPENED"), Some("cli"))
    );
    let _ = switchboard_eventstore::postgres::sqlx::query(switchboard_eventstore::postgres::sqlx::AssertSqlSafe(
        format!("DROP SCHEMA {schema} CASCADE"),
    ))
    .execute(store.pool())
    .await;
}

#[cfg(feature = "postgres")]
fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}

/// The saga test's participants: a reservation, a charge that is always declined, and a
/// release that fails while `RELEASE_DOWN` is set.
static RELEASE_DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

#[message_pattern("cli.saga.reserve")]
async fn cli_saga_reserve(n: u32) -> u32 {
    n
}

#[message_pattern("cli.saga.charge")]
async fn cli_saga_charge(_n: u32) -> RpcResult<u32> {
    Err(RpcError::new("card declined"))
}

#[message_pattern("cli.saga.release")]
async fn cli_saga_release(_n: u32) -> RpcResult<()> {
    if RELEASE_DOWN.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(RpcError::unavailable("inventory is down"));
    }
    Ok(())
}

/// `saga list|show|retry|abort` on an SQLite log that an orchestrator in this process runs:
/// two sagas parked because a compensation kept failing; one retried from the command line is
/// picked up by the orchestrator and compensated, the other aborted; mistakes exit with 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_shows_and_operates_sagas() {
    use switchboard_saga::log::SqliteLog;
    use switchboard_saga::{Orchestrator, Saga, Status, Step};

    let _participants = Microservice::new()
        .handler(CLI_SAGA_RESERVE)
        .handler(CLI_SAGA_CHARGE)
        .handler(CLI_SAGA_RELEASE)
        .listen("mem://cli-saga")
        .start()
        .await
        .unwrap();
    let client = switchboard::Client::connect("mem://cli-saga").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let log_url = format!("sqlite:{}", db.display());
    let quick = Duration::from_millis(10);
    let saga = Saga::<u32>::new("order")
        .step(Step::new("reserve", &client, CLI_SAGA_RESERVE, |n: &u32| *n).compensate(CLI_SAGA_RELEASE, |_, r| *r))
        .pivot(Step::new("charge", &client, CLI_SAGA_CHARGE, |n: &u32| *n))
        .compensation_retry(2, quick, quick, Duration::from_secs(5));
    let orchestrator = Orchestrator::builder(SqliteLog::open(&db).unwrap())
        .claim_every(Duration::from_millis(50))
        .build();
    let orders = orchestrator.register(saga);
    orchestrator.start();
    assert_eq!(orders.run("o-1", 1).await.unwrap().status, Status::Stuck);
    assert_eq!(orders.run("o-2", 2).await.unwrap().status, Status::Stuck);

    let out = run(args(&["saga", "list", &log_url, "--status", "stuck", "--json"]), None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = listed.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["o-2", "o-1"], "newest first");
    assert_eq!(listed[0]["status"], "stuck");

    let out = run(args(&["saga", "show", &log_url, "o-1"]), None).await;
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for part in [
        "o-1  order  stuck",
        "step_failed",
        "card declined",
        "compensation_retrying",
        "inventory is down",
    ] {
        assert!(shown.contains(part), "{part:?} in:\n{shown}");
    }

    // The inventory is back: the operator retries o-1 from the terminal.
    RELEASE_DOWN.store(false, std::sync::atomic::Ordering::SeqCst);
    let out = run(args(&["saga", "retry", &log_url, "o-1", "--json"]), None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), r#"{"id":"o-1","status":"compensating"}"#);
    let done = tokio::time::timeout(Duration::from_secs(30), orders.wait("o-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        done.status,
        Status::Compensated,
        "the orchestrator picked the retried saga up"
    );

    let out = run(
        args(&[
            "saga",
            "abort",
            &log_url,
            "o-2",
            "--reason",
            "refunded by hand",
            "--json",
        ]),
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), r#"{"id":"o-2","status":"aborted"}"#);

    for mistake in [
        args(&["saga", "retry", &log_url, "o-1"]),
        args(&["saga", "show", &log_url, "nobody"]),
        args(&["saga", "list", &log_url, "--status", "sleeping"]),
        args(&["saga", "list", "sqlite:/nonexistent/orders.db"]),
    ] {
        let out = run(mistake.clone(), None).await;
        assert_eq!(out.status.code(), Some(2), "{mistake:?}: {}", text(&out.stderr));
    }
}

/// Every command's `--help` shows it in use.
#[test]
fn every_command_has_examples_in_its_help() {
    for command in [
        &["call"][..],
        &["emit"],
        &["listen"],
        &["describe"],
        &["events", "tail"],
        &["events", "replay"],
        &["saga", "list"],
        &["saga", "show"],
        &["saga", "retry"],
        &["saga", "skip"],
        &["saga", "abort"],
        &["bench"],
        &["repl"],
    ] {
        let mut line = command.to_vec();
        line.push("--help");
        let out = cli(&line, None);
        assert!(out.status.success(), "{command:?}");
        let example = format!("switchboard {} ", command.join(" "));
        assert!(
            text(&out.stdout).contains(&example),
            "`{}` shows no example:\n{}",
            line.join(" "),
            text(&out.stdout)
        );
    }
}
