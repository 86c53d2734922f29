//! OpenTelemetry tracing on every transport, asserted on the spans a real exporter sends to
//! an OTLP collector in this process (examples/collector): one trace from a caller's span
//! through a service, a call that service makes and an event, with the names, kinds and
//! attributes pinned per transport; and one trace across NestJS 12 and Rust, both ways, with
//! the NestJS side traced by examples/nestjs-tracing.

#![cfg(all(feature = "telemetry", feature = "brokers", feature = "grpc"))]

mod common;

use std::future::IntoFuture;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::nest::{self, NestServer};
use serde_json::{Value, json};

use example_collector::{Collector, SpanRecord};
use switchboard::prelude::*;
use switchboard::telemetry::Telemetry;
use tracing::Instrument;

/// The collector and the exporter, on a runtime of their own that outlives every test's.
struct Observed {
    collector: Collector,
    telemetry: Telemetry,
}

fn observed() -> &'static Observed {
    static OBSERVED: OnceLock<Observed> = OnceLock::new();
    OBSERVED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let collector = Collector::start("127.0.0.1:0").await.unwrap();
                let telemetry = switchboard::telemetry::builder("traced-tests")
                    .endpoint(&collector.endpoint)
                    .init()
                    .expect("telemetry starts");
                tx.send(Observed { collector, telemetry }).unwrap();
                std::future::pending::<()>().await
            })
        });
        rx.recv().unwrap()
    })
}

/// Every span exported so far once `done` holds of them (ours flushed meanwhile); `None` if
/// it does not within `within`.
async fn exported(within: Duration, done: impl Fn(&[SpanRecord]) -> bool) -> Option<Vec<SpanRecord>> {
    let observed = observed();
    let flush = || {
        let _ = observed.telemetry.flush();
    };
    observed.collector.wait_for(within, flush, done).await
}

/// The client `front` calls, set once the service's URL is known.
#[derive(Clone, Default)]
struct Downstream(Arc<OnceLock<Client>>);

#[message_pattern("traced.front")]
async fn front(n: i64, State(down): State<Downstream>) -> RpcResult<i64> {
    tracing::info!(n, "front calls add_one");
    let client = down.0.get().expect("the downstream client is set");
    Ok(client.send(ADD_ONE, n).await?)
}

#[message_pattern("traced.add_one")]
async fn add_one(n: i64) -> i64 {
    n + 1
}

#[event_pattern("traced.seen")]
async fn seen(n: i64) {
    let _work = tracing::info_span!("inner work", n).entered();
}

#[message_pattern("traced.fails")]
async fn fails() -> RpcResult<()> {
    Err(RpcError::new("no such thing"))
}

/// What every transport must export, `{s}` being its `messaging.system`: the caller's span,
/// the request's spans (and those of the call its handler makes) under it, the event's, a
/// handler's own span under its message's, and a failed call marked as such.
const EXPECTED: &str = "\
case {s} [internal]
  send traced.fails [client] error.type=rpc_error messaging.destination.name=traced.fails messaging.message.body.size=4 messaging.operation.name=send messaging.operation.type=send messaging.system={s} !error
    process traced.fails [server] error.type=rpc_error messaging.destination.name=traced.fails messaging.operation.name=process messaging.operation.type=process messaging.system={s} switchboard.kind=request !error
  send traced.front [client] messaging.destination.name=traced.front messaging.message.body.size=2 messaging.operation.name=send messaging.operation.type=send messaging.system={s}
    process traced.front [server] messaging.destination.name=traced.front messaging.operation.name=process messaging.operation.type=process messaging.system={s} switchboard.kind=request
      send traced.add_one [client] messaging.destination.name=traced.add_one messaging.message.body.size=2 messaging.operation.name=send messaging.operation.type=send messaging.system={s}
        process traced.add_one [server] messaging.destination.name=traced.add_one messaging.operation.name=process messaging.operation.type=process messaging.system={s} switchboard.kind=request
  send traced.seen [producer] messaging.destination.name=traced.seen messaging.message.body.size=1 messaging.operation.name=emit messaging.operation.type=send messaging.system={s}
    process traced.seen [consumer] messaging.destination.name=traced.seen messaging.operation.name=process messaging.operation.type=process messaging.system={s} switchboard.kind=event link=parent
      inner work [internal]
";

async fn traced(system: &str, server_url: &str, client_url: impl FnOnce(&str) -> String) {
    let observed = observed();
    let down = Downstream::default();
    let server = Microservice::new()
        .with_state(down.clone())
        .handler(FRONT)
        .handler(ADD_ONE)
        .handler(SEEN)
        .handler(FAILS)
        .listen(server_url)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{system}: the service starts ({e}); run scripts/brokers.sh"));
    let url = client_url(server.local_url());
    down.0.set(Client::connect(&url).await.unwrap()).unwrap();
    let client = Client::connect(&url).await.unwrap();

    let root = tracing::info_span!("case", otel.name = format!("case {system}"));
    async {
        assert_eq!(client.send(FRONT, 41).await.unwrap(), 42);
        client.emit(SEEN, 7).await.unwrap();
        client.send(FAILS, ()).await.unwrap_err();
    }
    .instrument(root)
    .await;

    let root_name = format!("case {system}");
    let spans = exported(Duration::from_secs(20), |spans| {
        render(spans, &root_name).is_some_and(|t| t.lines().count() >= 10)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{system}: the spans did not arrive within 20 s: {:#?}",
            observed.collector.spans()
        )
    });
    let tree = render(&spans, &root_name).unwrap();
    let mut expected = EXPECTED.replace("{s}", system);
    if system == "mem" {
        // In-process requests hand their payloads over as values, never encoded.
        for line in [
            "send traced.fails [client]",
            "send traced.front [client]",
            "send traced.add_one [client]",
        ] {
            let at = expected.find(line).unwrap();
            let end = at + expected[at..].find('\n').unwrap();
            let cut = expected[at..end]
                .replace(" messaging.message.body.size=2", "")
                .replace(" messaging.message.body.size=4", "");
            expected.replace_range(at..end, &cut);
        }
    }
    assert_eq!(tree, expected, "{system}: spans as exported:\n{tree}");

    // Every span of the trace is this service's, and the handler's log carries the trace id.
    let trace = &spans.iter().find(|s| s.name == root_name).unwrap().trace_id;
    let process = spans
        .iter()
        .find(|s| &s.trace_id == trace && s.name == "process traced.front")
        .unwrap();
    assert_eq!(process.attributes.get("trace_id"), Some(trace), "{process:?}");
    assert!(
        spans
            .iter()
            .filter(|s| &s.trace_id == trace)
            .all(|s| s.service == "traced-tests")
    );
    server.shutdown().await.unwrap();
}

/// The trace whose root is named `root` as a tree (see `example_collector::render`), with
/// the messaging and error attributes; `None` until the root has arrived.
fn render(spans: &[SpanRecord], root: &str) -> Option<String> {
    let root = spans.iter().find(|s| s.name == root)?;
    let tree = example_collector::render(spans, &root.trace_id, |k| {
        k.starts_with("messaging.") || k.starts_with("error.") || k.starts_with("switchboard.")
    });
    Some(tree.replace(" (traced-tests)", ""))
}

fn same(url: &str) -> String {
    url.to_owned()
}

#[tokio::test]
async fn in_process() {
    traced("mem", "mem://traced", same).await;
}

#[tokio::test]
async fn tcp() {
    traced("tcp", "tcp://127.0.0.1:0", same).await;
}

#[tokio::test]
async fn grpc() {
    traced("grpc", "grpc://127.0.0.1:0", same).await;
}

#[tokio::test]
async fn redis() {
    traced("redis", "redis://127.0.0.1:6379", same).await;
}

#[tokio::test]
async fn nats() {
    traced("nats", "nats://127.0.0.1:4222", same).await;
}

#[tokio::test]
async fn mqtt() {
    traced("mqtt", "mqtt://127.0.0.1:1883", same).await;
}

#[tokio::test]
async fn rabbitmq() {
    traced("rabbitmq", "amqp://127.0.0.1:5672?queue=sb-traced&durable=false", same).await;
}

#[tokio::test]
async fn kafka() {
    let cluster = switchboard::transport::kafka::KafkaMock::start().expect("librdkafka's mock cluster starts");
    let url = format!("kafka://{}?session_timeout_ms=6000", cluster.bootstrap());
    traced("kafka", &url, same).await;
}

#[derive(Deserialize)]
struct Relay {
    url: String,
    pattern: String,
    data: Value,
}

/// Calls `pattern` at `url`: the Rust hop between two NestJS services.
#[message_pattern("traced.nest.relay")]
async fn nest_relay(relay: Relay) -> RpcResult<Value> {
    let client = Client::connect(&relay.url).await?;
    Ok(client.send_raw::<Value>(relay.pattern.as_str(), relay.data).await?)
}

#[message_pattern("traced.nest.add")]
async fn nest_add(n: i64) -> i64 {
    n + 1
}

/// The spans of `trace` once it holds `chain` (each (service, name) the child of the one
/// before), flushing ours meanwhile; panics with what arrived otherwise.
async fn chain(trace: &str, chain: &[(&str, &str, &str)]) -> Vec<SpanRecord> {
    let observed = observed();
    let holds = |spans: &[SpanRecord]| {
        let mut parent: Option<&SpanRecord> = None;
        for (service, name, kind) in chain {
            let found = spans.iter().find(|s| {
                s.trace_id == trace
                    && s.service == *service
                    && s.name == *name
                    && s.kind == *kind
                    && parent.is_none_or(|p| s.parent == p.span_id)
            });
            match found {
                Some(s) => parent = Some(s),
                None => return false,
            }
        }
        true
    };
    exported(Duration::from_secs(30), holds).await.unwrap_or_else(|| {
        panic!(
            "trace {trace} does not hold {chain:?}; as received:\n{}",
            observed.collector.tree(trace, |k| k == "messaging.system")
        )
    })
}

/// A NestJS 12 client → a Switchboard service → a NestJS 12 service, on `url`'s transport
/// (`tcp://127.0.0.1:0` for a port each): one trace, each hop the child of the one before.
async fn nest_to_rust_to_nest(url: &str) {
    if !nest::nest_installed(12, url) {
        return;
    }
    let endpoint = observed().collector.endpoint.clone();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let nest_b = NestServer::start_with(12, url, &["--trace", "nest-b"], &env).await;
    let rust = Microservice::new()
        .handler(NEST_RELAY)
        .listen(url)
        .start()
        .await
        .unwrap();
    let rust_url = rust.local_url().to_owned();
    let ops = [
        nest::send(
            json!("traced.nest.relay"),
            json!({"url": nest_b.url(), "pattern": "echo", "data": 7}),
        ),
        json!({"op": "traceparent"}),
    ];
    let results = nest::nest_client_with(12, &rust_url, &ops, &["--trace", "nest-client"], &env).await;
    assert_eq!(results[0], json!({"ok": [7]}), "{results:?}");
    let traceparent = results[1]["ok"].as_str().unwrap_or_else(|| panic!("{results:?}"));
    let trace = traceparent.split('-').nth(1).unwrap();
    chain(
        trace,
        &[
            ("nest-client", "send traced.nest.relay", "client"),
            ("traced-tests", "process traced.nest.relay", "server"),
            ("traced-tests", "send echo", "client"),
            ("nest-b", "process echo", "server"),
        ],
    )
    .await;
    rust.shutdown().await.unwrap();
}

/// A Switchboard client → a NestJS 12 service → a Switchboard service: one trace.
async fn rust_to_nest_to_rust(url: &str, system: &str) {
    if !nest::nest_installed(12, url) {
        return;
    }
    let endpoint = observed().collector.endpoint.clone();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let nest_a = NestServer::start_with(12, url, &["--trace", "nest-a"], &env).await;
    let rust = Microservice::new().handler(NEST_ADD).listen(url).start().await.unwrap();
    let client = Client::connect(nest_a.url()).await.unwrap();
    let root_name = format!("reverse {system}");
    let root = tracing::info_span!("case", otel.name = root_name.as_str());
    let relay = json!({"url": rust.local_url(), "pattern": "traced.nest.add", "data": 1});
    // A call is sent when first polled, so an instrumented call is in its span.
    let relayed: Value = client
        .send_raw("relay", relay)
        .into_future()
        .instrument(root)
        .await
        .unwrap();
    assert_eq!(relayed, json!(2));
    let spans = exported(Duration::from_secs(20), |spans| {
        spans.iter().any(|s| s.name == root_name)
    })
    .await
    .expect("the root span is exported");
    let trace = spans.iter().find(|s| s.name == root_name).unwrap().trace_id.clone();
    chain(
        &trace,
        &[
            ("traced-tests", root_name.as_str(), "internal"),
            ("traced-tests", "send relay", "client"),
            ("nest-a", "process relay", "server"),
            ("nest-a", "send traced.nest.add", "client"),
            ("traced-tests", "process traced.nest.add", "server"),
        ],
    )
    .await;
    rust.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_trace_across_nestjs_and_rust_over_tcp() {
    nest_to_rust_to_nest("tcp://127.0.0.1:0").await;
    rust_to_nest_to_rust("tcp://127.0.0.1:0", "tcp").await;
}

#[tokio::test]
async fn one_trace_across_nestjs_and_rust_over_redis() {
    nest_to_rust_to_nest("redis://127.0.0.1:6379").await;
    rust_to_nest_to_rust("redis://127.0.0.1:6379", "redis").await;
}

#[tokio::test]
async fn one_trace_across_nestjs_and_rust_over_nats() {
    nest_to_rust_to_nest("nats://127.0.0.1:4222").await;
    rust_to_nest_to_rust("nats://127.0.0.1:4222", "nats").await;
}

/// A pattern nobody serves is the sender's text: its span is named `process (unmatched)`, so
/// senders cannot grow the set of span names; the text stays, escaped, as its destination.
#[tokio::test]
async fn unmatched_patterns_share_one_span_name() {
    observed(); // tracing set up before the service starts
    let server = Microservice::new()
        .handler(ADD_ONE)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::connect(server.local_url()).await.unwrap();
    let root = tracing::info_span!("case", otel.name = "case unmatched");
    let err = async { client.send_raw::<Value>("traced.nobody\n", json!(1)).await }
        .instrument(root)
        .await
        .unwrap_err();
    assert!(matches!(err, switchboard::Error::NoHandler { .. }), "{err}");
    let spans = exported(Duration::from_secs(20), |spans| {
        render(spans, "case unmatched").is_some_and(|t| t.lines().count() >= 3)
    })
    .await
    .expect("the spans arrive");
    let tree = render(&spans, "case unmatched").unwrap();
    assert!(
        tree.contains(
            "process (unmatched) [server] error.type=no_handler messaging.destination.name=traced.nobody\\n "
        ),
        "{tree}"
    );
    server.shutdown().await.unwrap();
}
