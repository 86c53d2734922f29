//! Runs the example system on TCP loopback: users, math, notifications and analytics
//! services and the HTTP gateway, each its own process; then makes a few HTTP calls and
//! shows the calls and events flowing through the services' logs. Exits non-zero if any
//! answer is wrong, so it doubles as a smoke test.
//!
//! The event-sourced users service (user-events) runs beside them, on a temporary SQLite file:
//! the demo creates, updates and deletes a user through it, reads the user rebuilt by replay
//! and its history, and waits for its outbox to reach analytics.
//!
//! The order saga (examples/orders) runs as four more processes: inventory, payment and shipping
//! behind inboxes, and the orchestrator with its saga log in a temporary SQLite file. One order
//! completes; one is declined by payment and its reservation released; for a third the
//! orchestrator is SIGKILLed while shipping works on it, restarted on the same file, and
//! finishes the saga, charging once.
//!
//! `demo --registry etcd://127.0.0.1:2379` runs the seed's service registry instead (see
//! [`discovery`]): two users instances register in etcd, the gateway finds them by name, one
//! is SIGKILLed mid-stream and no request fails (built with the examples' `etcd` features).
//!
//! `demo --broker nats://127.0.0.1:4222` (or any broker URL) runs the same unchanged services
//! over that broker instead: every service listens on it, and one emit reaches both listeners.
//! `--broker kafka://mock` starts librdkafka's mock cluster in this process and runs the
//! services over it (built with the `kafka-mock` feature), for machines without a Kafka broker.

use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use switchboard::Client;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

mod discovery;

/// A free port for a service, below Linux's ephemeral range (32768 and up): a port the kernel
/// hands out for `:0` or to an outgoing connection could be taken (or, by a client connecting
/// to it, self-connected) before the service listens.
fn free_port() -> anyhow::Result<u16> {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..32_000);
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Every line the services printed, by service, for the checks at the end.
type Logs = Arc<Mutex<Vec<(&'static str, String)>>>;

/// Starts a sibling binary, prefixing each line it prints with its name.
fn spawn(
    dir: &std::path::Path,
    name: &'static str,
    args: &[String],
    logs: &Logs,
    traces: &str,
) -> anyhow::Result<Child> {
    spawn_as(dir, name, name, args, logs, traces)
}

/// Starts the sibling binary `binary`, prefixing each line it prints with `name`.
fn spawn_as(
    dir: &std::path::Path,
    binary: &str,
    name: &'static str,
    args: &[String],
    logs: &Logs,
    traces: &str,
) -> anyhow::Result<Child> {
    let path = dir.join(binary);
    let mut child = Command::new(&path)
        .args(args)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .env("NO_COLOR", "1")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", traces)
        // Export spans within a fifth of a second (the default waits 5 s).
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build the examples first: scripts/demo.sh does)",
                path.display()
            )
        })?;
    for out in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child.stderr.take().map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    {
        let logs = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = strip_timestamp(&line).to_owned();
                println!("{name:>13} | {line}");
                logs.lock().expect("logs lock").push((name, line));
            }
        });
    }
    Ok(child)
}

/// tracing's default format starts with a timestamp; the demo reads better without it.
fn strip_timestamp(line: &str) -> &str {
    match line.split_once("Z ") {
        Some((ts, rest)) if ts.len() < 32 && ts.starts_with("20") => rest.trim_start(),
        _ => line,
    }
}

/// Waits (up to 20 s) until `service` printed a line containing `says`.
async fn wait_for_log(logs: &Logs, service: &str, says: &str, failed: &str) -> anyhow::Result<()> {
    wait_for_logs(logs, service, says, 1, failed).await
}

/// Waits (up to 20 s) until `service` printed `times` lines containing `says`.
async fn wait_for_logs(logs: &Logs, service: &str, says: &str, times: usize, failed: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        let seen = logs
            .lock()
            .expect("logs lock")
            .iter()
            .filter(|(name, line)| *name == service && line.contains(says))
            .count();
        if seen >= times {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{service} {failed} within 20 s")
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on 127.0.0.1:{port} after 10 s")
}

/// A minimal HTTP/1.1 exchange, enough for the demo: the status and the body as JSON.
/// With a `traceparent`, as a caller that traces sends it.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<Value>,
    traceparent: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let (status, body) = http_raw(port, method, path, body, traceparent).await?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::String(body))))
}

/// The status and the body as text.
async fn http_raw(
    port: u16,
    method: &str,
    path: &str,
    body: Option<Value>,
    traceparent: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let traceparent = traceparent.map(|t| format!("traceparent: {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{traceparent}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response)).await??;
    let (head, body) = response.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status = head.split_whitespace().nth(1).context("no status")?.parse()?;
    Ok((status, body.to_owned()))
}

/// Sends only a request's head, announcing a body of `length` bytes: the answer must come
/// without the body.
async fn http_head_only(port: u16, request_line: &str, length: u64) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let head = format!(
        "{request_line} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read the answer's head and body, without waiting for a close the server need not make.
    let text = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await??;
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response).into_owned();
        if n == 0 || text.contains("\r\n\r\n{") && text.ends_with('}') {
            break text;
        }
    };
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status = head.split_whitespace().nth(1).context("no status")?.parse()?;
    Ok((status, body.to_owned()))
}

async fn call(port: u16, method: &str, path: &str, body: Option<Value>, expect: (u16, Value)) -> anyhow::Result<()> {
    call_in_trace(port, method, path, body, expect, None).await
}

/// [`call`] from a caller that traces: its `traceparent` sent along.
async fn call_in_trace(
    port: u16,
    method: &str,
    path: &str,
    body: Option<Value>,
    expect: (u16, Value),
    traceparent: Option<&str>,
) -> anyhow::Result<()> {
    println!(
        "{:>13} > {method} {path} {}",
        "demo",
        body.as_ref().map(|b| b.to_string()).unwrap_or_default()
    );
    let got = http(port, method, path, body, traceparent).await?;
    println!("{:>13} < {} {}", "demo", got.0, got.1);
    ensure!(got == expect, "{method} {path}: expected {expect:?}, got {got:?}");
    tokio::time::sleep(Duration::from_millis(150)).await;
    Ok(())
}

/// How long the demo's breaker stays open before it lets a probe through (the seed's 30 s
/// would make a slow demo).
const HALF_OPEN_AFTER: Duration = Duration::from_secs(2);

fn resilient_args(listen: String, math: String) -> Vec<String> {
    vec![
        "--listen".into(),
        listen,
        "--math".into(),
        math,
        "--half-open-after-ms".into(),
        HALF_OPEN_AFTER.as_millis().to_string(),
    ]
}

/// Kills math: the resilient service answers `degraded`, its breaker opens after five failed
/// calls and then answers at once; math comes back, and after the open time a probe closes it.
async fn degrade_and_recover(
    dir: &std::path::Path,
    children: &mut [Child],
    math: u16,
    http_port: u16,
    logs: &Logs,
    traces: &str,
) -> anyhow::Result<()> {
    let killed = &mut children[1];
    killed.start_kill()?;
    killed.wait().await?;
    println!("{:>13} | math killed (SIGKILL)", "demo");
    let degraded = (200, json!({"status": "degraded"}));
    for n in 1..=7 {
        let started = std::time::Instant::now();
        let got = http(http_port, "GET", "/resilient/add?a=5&b=3", None, None).await?;
        println!(
            "{:>13} < GET /resilient/add?a=5&b=3 #{n}: {} {} in {:?}",
            "demo",
            got.0,
            got.1,
            started.elapsed()
        );
        ensure!(
            got == degraded,
            "while math is down: expected {degraded:?}, got {got:?}"
        );
    }
    // Without a fallback, the public gets a status and a word: no address, no OS error.
    let (status, body) = http_raw(http_port, "GET", "/math/add?a=5&b=3", None, None).await?;
    ensure!(
        status == 503 && !body.contains("127.0.0.1") && !body.contains("os error"),
        "math down, no fallback: expected a bare 503, got {status} {body}"
    );
    println!("{:>13} < GET /math/add?a=5&b=3 with math down: {status} {body}", "demo");
    wait_for_log(logs, "resilient", "circuit opened", "did not open its circuit").await?;
    println!(
        "{:>13} | the breaker opened: calls are answered without touching the network",
        "demo"
    );
    children[1] = spawn(
        dir,
        "math",
        &["--listen".into(), format!("tcp://127.0.0.1:{math}")],
        logs,
        traces,
    )?;
    wait_for_port(math).await?;
    println!(
        "{:>13} | math restarted; waiting {HALF_OPEN_AFTER:?} for the half-open probe",
        "demo"
    );
    tokio::time::sleep(HALF_OPEN_AFTER + Duration::from_millis(200)).await;
    call(
        http_port,
        "GET",
        "/resilient/add?a=5&b=3",
        None,
        (200, json!({"result": 8})),
    )
    .await?;
    wait_for_log(logs, "resilient", "circuit closed", "did not close its circuit").await?;
    println!("{:>13} | the probe succeeded: the breaker closed", "demo");
    Ok(())
}

/// Sends `{cmd}` to a service directly, printing the exchange: its reply, or the error it
/// answered with as `Err`.
async fn send(client: &Client, cmd: &str, payload: Value) -> anyhow::Result<Result<Value, Value>> {
    exchange(client, json!({ "cmd": cmd }), cmd, payload).await
}

/// `send` for a string pattern (`orders.create`).
async fn ask(client: &Client, pattern: &str, payload: Value) -> anyhow::Result<Result<Value, Value>> {
    exchange(client, json!(pattern), pattern, payload).await
}

async fn exchange(client: &Client, pattern: Value, cmd: &str, payload: Value) -> anyhow::Result<Result<Value, Value>> {
    println!("{:>13} > {cmd} {payload}", "demo");
    let reply = match client.send_raw::<Value>(pattern, payload).await {
        Ok(reply) => Ok(reply),
        Err(switchboard::Error::Rpc(e)) => Err(e.value().clone()),
        Err(e) => return Err(e).with_context(|| format!("{cmd} failed")),
    };
    match &reply {
        Ok(value) => println!("{:>13} < {value}", "demo"),
        Err(value) => println!("{:>13} < error {value}", "demo"),
    }
    Ok(reply)
}

/// `send`, expecting `expect`.
async fn expect(client: &Client, cmd: &str, payload: Value, expect: Result<Value, Value>) -> anyhow::Result<()> {
    let got = send(client, cmd, payload.clone()).await?;
    ensure!(got == expect, "{cmd} {payload}: expected {expect:?}, got {got:?}");
    Ok(())
}

/// The event names, revisions and positions `es.user_history` lists, and the events' ids.
async fn history(client: &Client, id: &str) -> anyhow::Result<Vec<(String, u64, u64, String)>> {
    let entries = send(client, "es.user_history", json!(id))
        .await?
        .map_err(|e| anyhow::anyhow!("es.user_history {id}: {e}"))?;
    let entries = entries.as_array().context("es.user_history: not a list")?;
    entries
        .iter()
        .map(|e| {
            Some((
                e.get("name")?.as_str()?.to_owned(),
                e.get("revision")?.as_u64()?,
                e.get("position")?.as_u64()?,
                e.get("id")?.as_str()?.to_owned(),
            ))
        })
        .collect::<Option<_>>()
        .context("es.user_history: an entry is not {name, id, revision, position}")
}

fn names(events: &[(String, u64, u64, String)]) -> String {
    let names: Vec<_> = events.iter().map(|(name, ..)| name.as_str()).collect();
    names.join(", ")
}

/// The event-sourced users service: commands become stored events, a read replays them, and
/// the outbox publishes them to analytics, which counts each once.
async fn event_sourcing(user_events: &Client, analytics: &Client) -> anyhow::Result<()> {
    let grace = |email: &str| json!({"id": "1", "name": "Grace", "email": email});
    expect(
        user_events,
        "es.create_user",
        json!({"name": "Grace", "email": "grace@example.com"}),
        Ok(grace("grace@example.com")),
    )
    .await?;
    expect(
        user_events,
        "es.update_email",
        json!({"id": "1", "email": "grace@navy.mil"}),
        Ok(grace("grace@navy.mil")),
    )
    .await?;
    expect(user_events, "es.get_user", json!("1"), Ok(grace("grace@navy.mil"))).await?;
    let events = history(user_events, "1").await?;
    ensure!(
        events.len() == 2,
        "user 1 should have 2 events after create and update, has {}",
        names(&events)
    );
    println!(
        "{:>13} | es.get_user: user 1 rebuilt by replay from {} events ({})",
        "demo",
        events.len(),
        names(&events)
    );
    expect(user_events, "es.delete_user", json!("1"), Ok(json!(true))).await?;
    expect(
        user_events,
        "es.get_user",
        json!("1"),
        Err(json!({"status": "error", "message": "user 1 not found", "code": 404})),
    )
    .await?;
    let events = history(user_events, "1").await?;
    let expected = [("USER_CREATED", 0), ("EMAIL_UPDATED", 1), ("USER_DELETED", 2)];
    ensure!(
        events.len() == expected.len()
            && events
                .iter()
                .zip(expected)
                .all(|((name, revision, ..), (n, r))| name == n && *revision == r)
            && events.windows(2).all(|w| w[0].2 < w[1].2),
        "es.user_history 1: expected {expected:?} in position order, got {events:?}"
    );
    for (name, revision, position, _) in &events {
        println!("{:>13} |   revision {revision}, position {position}: {name}", "demo");
    }
    println!(
        "{:>13} | deleted: es.get_user is a 404, the history keeps all 3 events",
        "demo"
    );
    // The outbox publishes every stored event; analytics counts each kind once.
    let want = json!({"created": 1, "email_updated": 1, "deleted": 1});
    let started = std::time::Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < Duration::from_secs(20) {
        match analytics.send_raw::<Value>(json!({"cmd": "es_events"}), ()).await {
            Ok(counts) if counts == want => {
                println!(
                    "{:>13} | the outbox reached analytics in {:?}: es_events -> {counts}",
                    "demo",
                    started.elapsed()
                );
                return redelivered(analytics, &events[0].3, &want).await;
            }
            Ok(counts) => {
                let over = ["created", "email_updated", "deleted"]
                    .iter()
                    .any(|k| counts.get(k).and_then(Value::as_u64).unwrap_or(0) > 1);
                ensure!(!over, "analytics counted an event more than once: {counts}");
                last = counts;
            }
            Err(e) => last = Value::String(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the outbox did not reach analytics within 20 s: es_events -> {last}, expected {want}")
}

/// Delivers the outbox's `USER_CREATED` again, as a relay restarted before its checkpoint
/// would (same event id in the `idempotency-key` header): analytics' inbox skips it.
async fn redelivered(analytics: &Client, event_id: &str, want: &Value) -> anyhow::Result<()> {
    let user = json!({"id": "1", "name": "Grace", "email": "grace@example.com"});
    println!("{:>13} > USER_CREATED {user} again, idempotency-key {event_id}", "demo");
    analytics
        .emit_raw("USER_CREATED", &user)
        .header("idempotency-key", event_id)
        .await?;
    analytics.flush().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = analytics.send_raw::<Value>(json!({"cmd": "es_events"}), ()).await?;
    ensure!(
        &counts == want,
        "a redelivered USER_CREATED was counted again: es_events -> {counts}, expected {want}"
    );
    println!(
        "{:>13} | analytics' inbox skipped the redelivery: es_events -> {counts}",
        "demo"
    );
    Ok(())
}

/// The order services' clients, and how the orchestrator is started (again, after the kill).
struct OrderFlow {
    orders: Client,
    inventory: Client,
    payment: Client,
    shipping: Client,
    /// The orchestrator's place in `children`, and its arguments.
    at: usize,
    args: Vec<String>,
    /// Its TCP port; `None` on a broker.
    port: Option<u16>,
    /// Whether to kill it (not on Kafka, where a killed consumer keeps its partitions until
    /// the group's session times out).
    kill: bool,
}

/// `ask`, expecting a reply (not an error).
async fn ok(client: &Client, pattern: &str, payload: Value) -> anyhow::Result<Value> {
    ask(client, pattern, payload)
        .await?
        .map_err(|e| anyhow::anyhow!("{pattern}: answered the error {e}"))
}

/// A JSON string's text (for the demo's lines).
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

/// How many entries of a list `pattern` answers for `order`.
async fn count(client: &Client, pattern: &str, order: &str) -> anyhow::Result<usize> {
    let list = ok(client, pattern, json!(order)).await?;
    Ok(list.as_array().with_context(|| format!("{pattern}: not a list"))?.len())
}

/// The seed's order saga over four services: one order completes; one is declined by payment
/// and its reservation released; and one survives its orchestrator's SIGKILL while shipping
/// works on it: the restarted orchestrator finishes it from the saga log, charging once.
async fn order_saga(
    flow: &OrderFlow,
    dir: &std::path::Path,
    children: &mut [Child],
    logs: &Logs,
    traces: &str,
) -> anyhow::Result<()> {
    let stock = |v: &Value| (v["available"].as_u64(), v["reserved"].as_u64());
    let widgets = ok(&flow.inventory, "inventory.stock", json!("widget")).await?;

    // 1. Every step succeeds.
    let done = ok(
        &flow.orders,
        "orders.create",
        json!({"id": "order-1", "sku": "widget", "qty": 2, "amount": 250}),
    )
    .await?;
    let order = &done["order"];
    ensure!(
        done["status"] == "completed" && order["shipment"].is_string() && order["payment"].is_string(),
        "order-1: expected completed with a payment and a shipment, got {done}"
    );
    let after = ok(&flow.inventory, "inventory.stock", json!("widget")).await?;
    ensure!(
        stock(&after) == (stock(&widgets).0.map(|n| n - 2), stock(&widgets).1.map(|n| n + 2)),
        "order-1 should hold 2 widgets: stock {widgets} before, {after} after"
    );
    println!(
        "{:>13} | order-1 completed: reserved {}, charged {}, shipped {}",
        "demo",
        text(&order["reservation"]),
        text(&order["payment"]),
        text(&order["shipment"])
    );

    // 2. Payment declines (over its limit): the pivot failed, so the reservation is released.
    let before = after;
    let declined = ok(
        &flow.orders,
        "orders.create",
        json!({"id": "order-2", "sku": "widget", "qty": 1, "amount": 5000}),
    )
    .await?;
    let order = &declined["order"];
    ensure!(
        declined["status"] == "compensated"
            && declined["error"].as_str().is_some_and(|e| e.contains("declined"))
            && order["reservation"].is_string()
            && order["payment"].is_null(),
        "order-2: expected compensated after a declined payment, with a reservation, got {declined}"
    );
    let after = ok(&flow.inventory, "inventory.stock", json!("widget")).await?;
    ensure!(
        after == before,
        "order-2's reservation was not released: stock {before} before, {after} after"
    );
    let log = ok(&flow.orders, "orders.get", json!("order-2")).await?;
    ensure!(
        log["log"]
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e == "reserve undone")),
        "order-2's saga log does not show the release: {log}"
    );
    ensure!(
        count(&flow.payment, "payment.charges", "order-2").await? == 0,
        "order-2 was charged"
    );
    println!(
        "{:>13} | order-2 compensated: payment declined, reservation {} released (widget stock back to {} available)",
        "demo",
        text(&order["reservation"]),
        after["available"]
    );

    if !flow.kill {
        println!(
            "{:>13} | (the orchestrator kill runs on TCP and the other brokers, not on Kafka)",
            "demo"
        );
        return Ok(());
    }
    // 3. The orchestrator is killed while shipping (slow for order-3) works on the last step.
    let orders = flow.orders.clone();
    let pending = tokio::spawn(async move {
        orders
            .send_raw::<Value>(
                "orders.create",
                json!({"id": "order-3", "sku": "widget", "qty": 1, "amount": 400}),
            )
            .await
    });
    println!(
        "{:>13} > orders.create {}",
        "demo",
        json!({"id": "order-3", "sku": "widget", "qty": 1, "amount": 400})
    );
    wait_for_log(logs, "shipping", "shipping slowly", "did not start shipping order-3").await?;
    let killed = &mut children[flow.at];
    killed.start_kill()?;
    killed.wait().await?;
    println!(
        "{:>13} | orders (the orchestrator) killed (SIGKILL) while shipping works on order-3",
        "demo"
    );
    match tokio::time::timeout(Duration::from_secs(2), pending).await {
        Ok(Ok(Ok(reply))) => bail!("orders.create order-3 answered although its orchestrator was killed: {reply}"),
        Ok(Ok(Err(e))) => println!("{:>13} < orders.create order-3: {e}", "demo"),
        _ => println!("{:>13} < orders.create order-3: no answer", "demo"),
    }
    children[flow.at] = spawn_as(dir, "orders", "orders", &flow.args, logs, traces)?;
    match flow.port {
        Some(port) => wait_for_port(port).await?,
        None => wait_for_logs(logs, "orders", "listening", 2, "did not listen again").await?,
    }
    println!("{:>13} | orders restarted on the same saga log", "demo");
    let started = std::time::Instant::now();
    let done = loop {
        let got = flow.orders.send_raw::<Value>("orders.get", json!("order-3")).await;
        match got {
            Ok(view) if view["status"] == "completed" => break view,
            Ok(view) if view["status"] != "running" => bail!("order-3 did not complete: {view}"),
            _ if started.elapsed() > Duration::from_secs(30) => bail!("order-3 did not complete within 30 s: {got:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    println!(
        "{:>13} < orders.get order-3: {} {:?} after the restart",
        "demo",
        text(&done["status"]),
        started.elapsed()
    );
    let log: Vec<&str> = done["log"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!("{:>13} |   saga log: {}", "demo", log.join(", "));
    let charges = count(&flow.payment, "payment.charges", "order-3").await?;
    let shipments = count(&flow.shipping, "shipping.shipments", "order-3").await?;
    let sends = |step: &str| log.iter().filter(|l| l.starts_with(&format!("{step} sent"))).count();
    ensure!(
        charges == 1 && shipments == 1 && sends("charge") == 1 && sends("ship") >= 2,
        "order-3: expected one charge, one shipment, ship sent again after the restart; got {charges} charge(s), \
         {shipments} shipment(s), log {log:?}"
    );
    ensure!(
        done["order"]["shipment"].is_string(),
        "order-3 completed without a shipment: {done}"
    );
    println!(
        "{:>13} | order-3 completed after the restart: charged once ({}), shipped once ({}); ship was sent {} times \
         with one idempotency key",
        "demo",
        text(&done["order"]["payment"]),
        text(&done["order"]["shipment"]),
        sends("ship")
    );
    Ok(())
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

/// Where one service listens on a broker. As with NestJS, each service gets its own RabbitMQ
/// queue and its own Kafka consumer group; the other brokers route by pattern alone.
fn service_url(broker: &str, service: &str) -> String {
    let key = match broker.split("://").next() {
        Some("amqp") => "queue",
        Some("kafka") => "group",
        _ => return broker.to_owned(),
    };
    let sep = if broker.contains('?') { '&' } else { '?' };
    format!("{broker}{sep}{key}={service}")
}

/// What the demo runs.
enum Mode {
    /// Every service, on TCP or over the broker given.
    System { broker: Option<String> },
    /// Service discovery through the registry given.
    Registry(String),
}

/// `--broker URL` or `--registry URL`, if given.
fn mode_arg() -> anyhow::Result<Mode> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next(), args.next()) {
        (None, ..) => Ok(Mode::System { broker: None }),
        (Some("--broker"), Some(url), None) => Ok(Mode::System { broker: Some(url) }),
        (Some("--registry"), Some(url), None) => Ok(Mode::Registry(url)),
        _ => bail!(
            "usage: demo [--broker URL | --registry URL]   (e.g. --broker nats://127.0.0.1:4222, --registry etcd://127.0.0.1:2379)"
        ),
    }
}

/// The trace context the demo's `POST /users` comes with: the caller's trace, and its span.
const CALLER_TRACEPARENT: &str = "00-5b8aa5a2d2c872e8321cf37308d69df2-051581bf3cb55c13-01";

/// Prints the trace of `POST /users` as the collector received it, and checks that it went
/// gateway → users, and gateway → notifications and analytics, in one trace: the caller's,
/// under the caller's span.
async fn print_trace(collector: &example_collector::Collector) -> anyhow::Result<()> {
    let expected = [
        ("gateway", "POST /users"),
        ("gateway", "send {\"cmd\":\"create_user\"}"),
        ("users", "process {\"cmd\":\"create_user\"}"),
        ("notifications", "process user_created"),
        ("analytics", "process user_created"),
    ];
    let trace = |spans: &[example_collector::SpanRecord]| {
        let root = spans.iter().find(|s| s.name == "POST /users")?;
        let all = expected.iter().all(|(service, name)| {
            spans
                .iter()
                .any(|s| s.trace_id == root.trace_id && &s.service == service && &s.name == name)
        });
        all.then(|| root.trace_id.clone())
    };
    let spans = collector
        .wait_for(Duration::from_secs(20), || {}, |spans| trace(spans).is_some())
        .await
        .context("the trace of POST /users did not reach the collector within 20 s")?;
    let id = trace(&spans).expect("checked");
    let root = spans
        .iter()
        .find(|s| s.name == expected[0].1 && s.trace_id == id)
        .expect("checked");
    ensure!(
        CALLER_TRACEPARENT == format!("00-{id}-{}-01", root.parent),
        "POST /users is not in its caller's trace under the caller's span: trace {id}, parent {}",
        root.parent
    );
    let tree = example_collector::render(&spans, &id, |k| k == "messaging.system");
    println!("{:>13} | one trace of POST /users ({id}):", "demo");
    for line in tree.lines() {
        println!("{:>13} |   {line}", "demo");
    }
    let users = spans
        .iter()
        .find(|s| s.name == expected[2].1 && s.trace_id == id)
        .expect("checked");
    let send = spans
        .iter()
        .find(|s| s.span_id == users.parent)
        .context("create_user's parent span")?;
    ensure!(
        send.service == "gateway" && send.name == expected[1].1,
        "create_user's parent is {send:?}, not the gateway's send"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let broker = match mode_arg()? {
        Mode::System { broker } => broker,
        Mode::Registry(registry) => {
            let logs = Logs::default();
            let collector = example_collector::Collector::start("127.0.0.1:0").await?;
            return discovery::run(&dir, &registry, &logs, &collector.endpoint).await;
        }
    };
    #[cfg(feature = "kafka-mock")]
    let (broker, _mock) = match broker.as_deref() {
        Some(url) if url.starts_with("kafka://mock") => {
            let mock = switchboard::transport::kafka::KafkaMock::start()?;
            let url = url.replacen("mock", mock.bootstrap(), 1);
            println!("{:>13} | librdkafka's mock cluster on {url}", "demo");
            (Some(url), Some(mock))
        }
        _ => (broker, None),
    };
    #[cfg(not(feature = "kafka-mock"))]
    if broker.as_deref().is_some_and(|url| url.starts_with("kafka://mock")) {
        bail!("kafka://mock needs the demo built with its `kafka-mock` feature (scripts/demo.sh does)");
    }
    let logs = Logs::default();
    // Every service exports its spans here; the demo prints the trace of `POST /users`.
    let collector = example_collector::Collector::start("127.0.0.1:0").await?;
    let [users, math, notifications, analytics, resilient, user_events, http_port] = [
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    ];
    let [inventory, payment, shipping, orders] = [free_port()?, free_port()?, free_port()?, free_port()?];
    let url = |port: u16, service: &str| match &broker {
        Some(b) => service_url(b, service),
        None => format!("tcp://127.0.0.1:{port}"),
    };
    // The user-events service's store: a new file each run, removed at the end.
    let db = std::env::temp_dir().join(format!("switchboard-demo-{}.db", std::process::id()));
    // The order orchestrator's saga log, the same file after its restart.
    let saga_log = std::env::temp_dir().join(format!("switchboard-demo-orders-{}.db", std::process::id()));
    // Its outbox publishes to analytics: a broker routes by pattern, RabbitMQ and TCP to one
    // service's queue or port.
    let publish = match &broker {
        Some(b) if !b.starts_with("amqp:") => b.clone(),
        _ => url(analytics, "analytics"),
    };
    let mut children = vec![
        spawn(
            &dir,
            "users",
            &["--listen".into(), url(users, "users")],
            &logs,
            &collector.endpoint,
        )?,
        spawn(
            &dir,
            "math",
            &["--listen".into(), url(math, "math")],
            &logs,
            &collector.endpoint,
        )?,
        spawn(
            &dir,
            "notifications",
            &["--listen".into(), url(notifications, "notifications")],
            &logs,
            &collector.endpoint,
        )?,
        spawn(
            &dir,
            "analytics",
            &[
                "--listen".into(),
                url(analytics, "analytics"),
                "--users".into(),
                url(users, "users"),
            ],
            &logs,
            &collector.endpoint,
        )?,
        spawn(
            &dir,
            "resilient",
            &resilient_args(url(resilient, "resilient"), url(math, "math")),
            &logs,
            &collector.endpoint,
        )?,
        spawn(
            &dir,
            "user-events",
            &[
                "--listen".into(),
                url(user_events, "user-events"),
                "--publish".into(),
                publish,
                "--db".into(),
                db.display().to_string(),
            ],
            &logs,
            &collector.endpoint,
        )?,
    ];
    if broker.is_none() {
        for port in [users, math, notifications, analytics, resilient, user_events] {
            wait_for_port(port).await?;
        }
    }
    // One emit reaches every listener on a pub/sub broker; RabbitMQ queues (like TCP) are
    // point to point, so each listening service gets its own emit.
    let events = match &broker {
        Some(b) if !b.starts_with("amqp:") => b.clone(),
        _ => format!(
            "{},{}",
            url(notifications, "notifications"),
            url(analytics, "analytics")
        ),
    };
    children.push(spawn(
        &dir,
        "gateway",
        &[
            "--http".into(),
            format!("127.0.0.1:{http_port}"),
            "--users".into(),
            url(users, "users"),
            "--math".into(),
            url(math, "math"),
            "--analytics".into(),
            url(analytics, "analytics"),
            "--resilient".into(),
            url(resilient, "resilient"),
            "--events".into(),
            events,
            "--header-timeout-ms".into(),
            "1000".into(),
        ],
        &logs,
        &collector.endpoint,
    )?);
    wait_for_port(http_port).await?;
    // The order saga's services: three participants and the orchestrator (the last child).
    let order_args = vec![
        "orchestrator".into(),
        "--listen".into(),
        url(orders, "orders"),
        "--log".into(),
        saga_log.display().to_string(),
        "--inventory".into(),
        url(inventory, "inventory"),
        "--payment".into(),
        url(payment, "payment"),
        "--shipping".into(),
        url(shipping, "shipping"),
    ];
    // Payment declines over 1000; shipping is slow for order-3, killed meanwhile.
    for (name, port, flag, value) in [
        ("inventory", inventory, "--stock", "widget=10"),
        ("payment", payment, "--limit", "1000"),
        ("shipping", shipping, "--slow-order", "order-3"),
    ] {
        let args = [
            name.into(),
            "--listen".into(),
            url(port, name),
            flag.into(),
            value.into(),
        ];
        children.push(spawn_as(&dir, "orders", name, &args, &logs, &collector.endpoint)?);
    }
    let orchestrator_at = children.len();
    children.push(spawn_as(
        &dir,
        "orders",
        "orders",
        &order_args,
        &logs,
        &collector.endpoint,
    )?);
    if broker.is_none() {
        for port in [inventory, payment, shipping, orders] {
            wait_for_port(port).await?;
        }
    }
    if broker.is_some() {
        // A service logs "listening" once its subscriptions are in place on the broker.
        for service in [
            "users",
            "math",
            "notifications",
            "analytics",
            "resilient",
            "user-events",
            "inventory",
            "payment",
            "shipping",
            "orders",
        ] {
            wait_for_log(&logs, service, "listening", "is not listening on the broker").await?;
        }
    }
    println!(
        "{:>13} | all services up; gateway on http://127.0.0.1:{http_port}",
        "demo"
    );

    let result = async {
        // Users are kept in the users service's store: the seed's user 42, then Ada.
        call(
            http_port,
            "GET",
            "/users/42",
            None,
            (
                200,
                json!({"id": "42", "name": "John Doe", "email": "john@example.com"}),
            ),
        )
        .await?;
        call(
            http_port,
            "GET",
            "/users/7",
            None,
            (
                404,
                json!({"status": "error", "message": "user 7 not found", "code": 404}),
            ),
        )
        .await?;
        // From a caller that traces, as a browser or an upstream service with OpenTelemetry
        // would: the gateway continues its trace.
        call_in_trace(
            http_port,
            "POST",
            "/users",
            Some(json!({"name": "Ada", "email": "ada@example.com"})),
            (201, json!({"id": "100", "name": "Ada", "email": "ada@example.com"})),
            Some(CALLER_TRACEPARENT),
        )
        .await?;
        call(
            http_port,
            "GET",
            "/users/100",
            None,
            (200, json!({"id": "100", "name": "Ada", "email": "ada@example.com"})),
        )
        .await?;
        // As NestJS writes it: `8`, not `8.0`.
        let (status, body) = http_raw(http_port, "GET", "/math/add?a=5&b=3", None, None).await?;
        ensure!(
            (status, body.as_str()) == (200, r#"{"result":8}"#),
            "GET /math/add?a=5&b=3: expected 200 {{\"result\":8}}, got {status} {body}"
        );
        println!("{:>13} | GET /math/add?a=5&b=3 -> {status} {body}", "demo");
        // The caller's mistakes are 400s; a body announced too large is refused unread.
        for query in ["a=NaN&b=1", "a=inf&b=1", "a=1e309&b=1"] {
            let (status, body) = http_raw(http_port, "GET", &format!("/math/add?{query}"), None, None).await?;
            ensure!(
                status == 400,
                "GET /math/add?{query}: expected 400, got {status} {body}"
            );
        }
        let (status, body) = http_head_only(http_port, "POST /users", 10_000_000_000).await?;
        ensure!(status == 413, "a 10 GB body: expected 413 at once, got {status} {body}");
        println!(
            "{:>13} | NaN, inf and 1e309 -> 400; a 10 GB Content-Length -> 413 unread",
            "demo"
        );
        // A half-sent request head is not kept (the gateway's header timeout is 1 s here).
        let mut half = TcpStream::connect(("127.0.0.1", http_port)).await?;
        half.write_all(b"GET /math/add?a=1&b=2 HTTP/1.1\r\nHost: loc").await?;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), half.read_to_end(&mut rest))
            .await
            .context("a half-sent request head was kept open for 10 s")??;
        println!("{:>13} | a half-sent request head: closed by the gateway", "demo");
        // The `user_created` emit of `POST /users` reached both listeners.
        for (service, says) in [
            ("notifications", "sending welcome e-mail to Ada"),
            ("analytics", "signup tracked"),
        ] {
            wait_for_log(&logs, service, says, "did not handle the user_created event").await?;
            println!("{:>13} | {service} handled the user_created event", "demo");
        }
        print_trace(&collector).await?;
        // Analytics' handler asks the users service for the newest signup.
        call(
            http_port,
            "GET",
            "/signups/latest",
            None,
            (200, json!({"id": "100", "name": "Ada", "email": "ada@example.com"})),
        )
        .await?;
        // The resilient service's call to math, through its breaker, while math is up.
        call(
            http_port,
            "GET",
            "/resilient/add?a=5&b=3",
            None,
            (200, json!({"result": 8})),
        )
        .await?;
        if broker.is_none() {
            degrade_and_recover(&dir, &mut children, math, http_port, &logs, &collector.endpoint).await?;
        }
        let user_events = Client::builder(&url(user_events, "user-events")).build()?;
        let analytics = Client::builder(&url(analytics, "analytics")).build()?;
        let done = event_sourcing(&user_events, &analytics).await;
        user_events.close().await;
        analytics.close().await;
        done?;
        let flow = OrderFlow {
            orders: Client::builder(&url(orders, "orders")).build()?,
            inventory: Client::builder(&url(inventory, "inventory")).build()?,
            payment: Client::builder(&url(payment, "payment")).build()?,
            shipping: Client::builder(&url(shipping, "shipping")).build()?,
            at: orchestrator_at,
            args: order_args,
            port: broker.is_none().then_some(orders),
            kill: !broker.as_deref().is_some_and(|b| b.starts_with("kafka:")),
        };
        let done = order_saga(&flow, &dir, &mut children, &logs, &collector.endpoint).await;
        for client in [&flow.orders, &flow.inventory, &flow.payment, &flow.shipping] {
            client.close().await;
        }
        done
    }
    .await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    for child in &children {
        terminate(child);
    }
    // Each service drains and exits 0 on SIGTERM.
    let mut result = result;
    for (child, name) in children.iter_mut().zip([
        "users",
        "math",
        "notifications",
        "analytics",
        "resilient",
        "user-events",
        "gateway",
        "inventory",
        "payment",
        "shipping",
        "orders",
    ]) {
        let exit = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        match exit {
            Ok(Ok(status)) if status.success() => {}
            other => {
                result = result.and(Err(anyhow::anyhow!(
                    "{name} did not shut down cleanly on SIGTERM: {other:?}"
                )));
            }
        }
    }
    for (file, suffix) in [&db, &saga_log]
        .into_iter()
        .flat_map(|f| ["", "-wal", "-shm", ".lock"].map(|s| (f, s)))
    {
        let mut file = file.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    match &result {
        Ok(()) => println!(
            "{:>13} | done: every answer was right; services shut down gracefully",
            "demo"
        ),
        Err(e) => println!("{:>13} | FAILED: {e:#}", "demo"),
    }
    result
}
