//! Interop with real NestJS (`@nestjs/microservices` 11 and 12 from npm, installed by
//! scripts/setup-nestjs.sh): a NestJS client against our server, and our client against a
//! NestJS server (tests/nestjs/).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard::{Client, Error, MessageDef, Microservice, pattern};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nestjs")
}

/// True when NestJS `version` is installed; otherwise fails under CI or skips loudly.
fn nest_installed(version: u8) -> bool {
    let ok = peer_dir()
        .join(format!("v{version}/node_modules/@nestjs/microservices/package.json"))
        .exists()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        missing(
            &format!("NestJS {version} (tests/nestjs/v{version}) or node"),
            "run scripts/setup-nestjs.sh",
        );
    }
    ok
}

/// Runs the NestJS client against `port` with a script of operations; returns one result each.
async fn nest_client(version: u8, port: u16, ops: &[Value]) -> Vec<Value> {
    let mut child = Command::new("node")
        .arg(peer_dir().join("client.mjs"))
        .args(["--nest", &version.to_string(), "--port", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(Value::from(ops.to_vec()).to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("NestJS client finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "NestJS client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "NestJS client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(results.len(), ops.len());
    results
}

fn send(pattern: Value, data: Value) -> Value {
    json!({"op": "send", "pattern": pattern, "data": data, "timeout_ms": 10000})
}

async fn nest_client_calls_our_server(version: u8) {
    if !nest_installed(version) {
        return;
    }
    let server = Microservice::from_registry()
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let port: u16 = server.local_url().rsplit(':').next().unwrap().parse().unwrap();
    let marker = format!("nest{version}-to-us");
    let big = "x".repeat(1 << 20);
    let mut ops = vec![
        send(json!({"cmd": "sum"}), json!([1, 2, 3])),
        send(json!("echo"), json!({"x": "é😀 ünïcødé"})),
        send(json!({"cmd": "get_user"}), json!("42")),
        send(
            json!({"nested": {"a": "x", "b": 1}, "v": 2, "role": "user", "cmd": "get"}),
            json!({}),
        ),
        send(json!("stream"), json!({})),
        send(json!("slow_stream"), json!({})),
        send(json!("empty_stream"), json!({})),
        send(json!("rpc_string"), json!({})),
        send(json!("rpc_object"), json!({})),
        send(json!("panics"), json!(1)),
        send(json!("nope"), json!({})),
        send(json!("void_ret"), json!({})),
        send(json!("null_ret"), json!({})),
        send(json!("len"), json!(big)),
        json!({"op": "emit", "pattern": "evt", "data": {"marker": marker}}),
        json!({"op": "emit", "pattern": {"evt": 1}, "data": {"ignored": true}}),
        json!({"op": "sleep", "ms": 100}),
        send(json!("events_seen"), json!({})),
        json!({"op": "send_many", "pattern": "echo", "data_list": (0..200).collect::<Vec<_>>(), "timeout_ms": 20000}),
        send(json!({"cmd": "sum"}), json!("not numbers")),
    ];
    if version >= 12 {
        ops.push(json!({"op": "set_metadata", "metadata": {"traceparent": "00-abc-def-01"}}));
        ops.push(send(json!("meta"), json!({})));
    }
    let r = nest_client(version, port, &ops).await;
    assert_eq!(r[0], json!({"ok": [6]}));
    assert_eq!(r[1], json!({"ok": [{"x": "é😀 ünïcødé"}]}));
    assert_eq!(
        r[2],
        json!({"ok": [{"id": "42", "name": "John Doe", "email": "john@example.com"}]})
    );
    assert_eq!(r[3], json!({"ok": ["nested-ok"]}));
    assert_eq!(r[4], json!({"ok": [1, 2, 3]}));
    assert_eq!(r[5], json!({"ok": [0, 1, 2]}));
    assert_eq!(r[6], json!({"ok": []}));
    assert_eq!(r[7], json!({"err": {"status": "error", "message": "bad thing"}}));
    assert_eq!(
        r[8],
        json!({"err": {"code": 42, "message": "custom msg", "extra": true}})
    );
    assert_eq!(
        r[9],
        json!({"err": {"status": "error", "message": "Internal server error"}})
    );
    assert_eq!(
        r[10],
        json!({"err": "There is no matching message handler defined in the remote service."})
    );
    assert_eq!(r[11], json!({"ok": []}));
    assert_eq!(r[12], json!({"ok": [null]}));
    assert_eq!(r[13], json!({"ok": [1 << 20]}));
    assert_eq!(r[14], json!({"ok": true}));
    let seen = r[17]["ok"][0].as_array().expect("events_seen returns a list");
    for handler in ["a", "b"] {
        assert!(
            seen.iter()
                .any(|e| e["handler"] == handler && e["data"]["marker"] == json!(marker)),
            "{handler}: {seen:?}"
        );
    }
    assert!(
        !seen.iter().any(|e| e["data"]["ignored"] == json!(true)),
        "an unknown event runs nothing"
    );
    let many = r[18]["ok"].as_array().expect("200 replies");
    assert_eq!(many.len(), 200);
    for (i, values) in many.iter().enumerate() {
        assert_eq!(values, &json!([i]));
    }
    assert!(
        r[19]["err"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid payload for pattern"),
        "{}",
        r[19]
    );
    if version >= 12 {
        assert_eq!(r[21], json!({"ok": [{"traceparent": "00-abc-def-01"}]}));
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn nestjs_11_client_calls_our_server() {
    nest_client_calls_our_server(11).await;
}

#[tokio::test]
async fn nestjs_12_client_calls_our_server() {
    nest_client_calls_our_server(12).await;
}

/// A NestJS server process, stopped when dropped.
struct NestServer {
    _child: Child,
    port: u16,
}

async fn nest_server(version: u8) -> NestServer {
    let mut child = Command::new("node")
        .arg(peer_dir().join("server.mjs"))
        .args(["--nest", &version.to_string(), "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("NestJS server starts within 30 s")
        .unwrap()
        .expect("NestJS server prints READY <port>");
    let port = line
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected line: {line}"));
    NestServer { _child: child, port }
}

#[derive(Debug, PartialEq, Deserialize)]
struct NestUser {
    id: String,
    name: String,
    email: String,
}

const NEST_GET_USER: MessageDef<String, NestUser> = MessageDef::new(pattern!(cmd = "get_user"));
const NEST_SUM: MessageDef<Vec<i64>, i64> = MessageDef::new(pattern!(cmd = "sum"));
const NEST_NESTED: MessageDef<Value, String> =
    MessageDef::new(pattern!(cmd = "get", role = "user", v = 2, nested = { b = 1, a = "x" }));

async fn our_client_calls_nest_server(version: u8) {
    if !nest_installed(version) {
        return;
    }
    let nest = nest_server(version).await;
    let client = Client::builder(&format!("tcp://127.0.0.1:{}", nest.port))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();

    assert_eq!(client.send(NEST_SUM, vec![1, 2, 3]).await.unwrap(), 6);
    assert_eq!(
        client.send(NEST_GET_USER, "42".to_string()).await.unwrap().name,
        "John Doe"
    );
    assert_eq!(client.send(NEST_NESTED, json!({})).await.unwrap(), "nested-ok");
    let unicode = json!({"x": "é😀 ünïcødé"});
    assert_eq!(client.send_raw::<Value>("echo", &unicode).await.unwrap(), unicode);

    // Multi-value replies, in both of NestJS's shapes (merged and separate completion).
    let values: Vec<u32> = client
        .send_raw::<u32>("stream", json!({}))
        .stream()
        .await
        .unwrap()
        .map(|v| v.unwrap())
        .collect()
        .await;
    assert_eq!(values, [1, 2, 3]);
    let values: Vec<u32> = client
        .send_raw::<u32>("slow_stream", json!({}))
        .stream()
        .await
        .unwrap()
        .map(|v| v.unwrap())
        .collect()
        .await;
    assert_eq!(values, [0, 1, 2]);
    assert_eq!(
        client.send_raw::<u32>("stream", json!({})).await.unwrap(),
        3,
        "send gives the last value"
    );
    let none: Vec<Result<u32, _>> = client
        .send_raw::<u32>("empty_stream", json!({}))
        .stream()
        .await
        .unwrap()
        .collect()
        .await;
    assert!(none.is_empty());
    client.send_raw::<()>("void_ret", json!({})).await.unwrap();
    assert_eq!(
        client.send_raw::<Option<u32>>("null_ret", json!({})).await.unwrap(),
        None
    );

    // Errors.
    let err = client.send_raw::<Value>("rpc_string", json!({})).await.unwrap_err();
    assert_eq!(
        err.as_rpc().unwrap().value(),
        &json!({"status": "error", "message": "bad thing"})
    );
    let err = client.send_raw::<Value>("rpc_object", json!({})).await.unwrap_err();
    assert_eq!(
        err.as_rpc().unwrap().value(),
        &json!({"code": 42, "message": "custom msg", "extra": true})
    );
    let err = client.send_raw::<Value>("plain_error", json!({})).await.unwrap_err();
    assert_eq!(err.as_rpc().unwrap().message(), Some("Internal server error"));
    let err = client.send_raw::<Value>("nope", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, Error::NoHandler { pattern, .. } if pattern == "nope"),
        "{err}"
    );
    let err = client
        .with_timeout(Duration::from_millis(200))
        .send_raw::<Value>("delay", 2000)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");

    // A 1 MiB payload, in ASCII and in characters outside the BMP.
    assert_eq!(
        client.send_raw::<usize>("len", "x".repeat(1 << 20)).await.unwrap(),
        1 << 20
    );
    assert_eq!(
        client.send_raw::<usize>("len", "😀".repeat(1 << 18)).await.unwrap(),
        1 << 19
    );

    // Events reach both NestJS listeners.
    let marker = format!("us-to-nest{version}");
    client.emit_raw("evt", json!({"marker": marker})).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = client.send_raw::<Vec<Value>>("events_seen", json!({})).await.unwrap();
        if seen.iter().filter(|e| e["data"]["marker"] == json!(marker)).count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for handler in ["a", "b"] {
        assert!(
            seen.iter()
                .any(|e| e["handler"] == handler && e["data"]["marker"] == json!(marker)),
            "{handler}: {seen:?}"
        );
    }

    // 200 concurrent requests over the client's pooled, multiplexed connections.
    let calls = (0..200).map(|i| {
        let client = client.clone();
        async move { client.send_raw::<Value>("echo", json!({"i": i})).await }
    });
    for (i, r) in futures_util::future::join_all(calls).await.into_iter().enumerate() {
        assert_eq!(r.unwrap(), json!({"i": i}));
    }

    // NestJS 12 reads our headers as packet metadata.
    if version >= 12 {
        let traced = client.with_metadata([("traceparent".to_string(), "00-abc-def-01".to_string())].into());
        // (`meta` names the handler descriptor in scope, so the binding gets another name.)
        let metadata: Value = traced.send_raw("meta", json!({})).await.unwrap();
        assert_eq!(metadata, json!({"traceparent": "00-abc-def-01"}));
    }
}

#[tokio::test]
async fn our_client_calls_nestjs_11_server() {
    our_client_calls_nest_server(11).await;
}

#[tokio::test]
async fn our_client_calls_nestjs_12_server() {
    our_client_calls_nest_server(12).await;
}
