//! Our client against our server, over the in-process and TCP transports: typed and raw
//! calls, multi-value replies, errors, deadlines, concurrency, big and unicode payloads.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard::{Client, Error, Microservice, RunningServer, pattern};

async fn serve(url: &str) -> RunningServer {
    Microservice::from_registry()
        .listen(url)
        .start()
        .await
        .expect("server starts")
}

/// The behaviour every transport must show, run against one server URL.
async fn suite(url: &str) {
    let client = Client::builder(url)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");

    // Typed calls: object and string patterns, payload and reply types checked at compile time.
    let user = client.send(get_user, "42".to_string()).await.unwrap();
    assert_eq!(
        user,
        User {
            id: "42".into(),
            name: "John Doe".into(),
            email: "john@example.com".into()
        }
    );
    assert_eq!(client.send(sum, vec![1.0, 2.5]).await.unwrap(), 3.5);
    assert_eq!(client.send(nested, ()).await.unwrap(), "nested-ok");
    client.send(void_ret, ()).await.unwrap();
    assert_eq!(client.send(null_ret, ()).await.unwrap(), None);

    // NestJS-style untyped calls, in any key order.
    let v: Value = client.send_raw(json!({"cmd": "sum"}), json!([5, 3])).await.unwrap();
    assert_eq!(v, json!(8), "numbers are written as JavaScript writes them");
    let v: String = client
        .send_raw(
            json!({"nested": {"a": "x", "b": 1}, "v": 2, "cmd": "get", "role": "user"}),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(v, "nested-ok");

    // Multi-value replies: `send` gives the last value, `.stream()` every one.
    assert_eq!(client.send(stream, ()).await.unwrap(), 3);
    let all: Vec<u32> = client
        .send(slow_stream, ())
        .stream()
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(all, [0, 1, 2]);
    let none: Vec<_> = client.send(empty_stream, ()).stream().await.unwrap().collect().await;
    assert!(none.is_empty());
    let mixed: Vec<_> = client.send(stream_err, ()).stream().await.unwrap().collect().await;
    assert_eq!(mixed.len(), 2);
    assert_eq!(*mixed[0].as_ref().unwrap(), 1);
    assert_eq!(
        mixed[1].as_ref().unwrap_err().as_rpc().unwrap().message(),
        Some("mid-stream")
    );

    // Errors keep NestJS's shapes.
    let err = client.send(rpc_string, ()).await.unwrap_err();
    assert_eq!(
        err.as_rpc().unwrap().value(),
        &json!({"status": "error", "message": "bad thing"})
    );
    let err = client.send(rpc_object, ()).await.unwrap_err();
    assert_eq!(
        err.as_rpc().unwrap().value(),
        &json!({"code": 42, "message": "custom msg", "extra": true})
    );
    let err = client.send(panics, 1).await.unwrap_err();
    assert_eq!(err.as_rpc().unwrap().message(), Some("Internal server error"));
    let err = client.send_raw::<Value>("sum_typo", json!(1)).await.unwrap_err();
    assert!(
        matches!(&err, Error::NoHandler { pattern, .. } if pattern == "sum_typo"),
        "{err}"
    );
    let err = client
        .send_raw::<Value>(json!({"cmd": "sum"}), json!("not numbers"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid payload for pattern"), "{err}");
    let err = client.send_raw::<u32>("echo", json!("text")).await.unwrap_err();
    assert!(
        matches!(err, Error::Codec { .. }),
        "a reply of the wrong type is a decode error: {err}"
    );

    // Deadlines.
    let err = client
        .with_timeout(Duration::from_millis(100))
        .send(delay, 2_000)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { pattern, .. } if pattern == "delay"),
        "{err}"
    );

    // Unicode and a 1 MiB payload.
    let text = "é😀 ünïcødé ".repeat(8);
    assert_eq!(
        client.send_raw::<Value>("echo", json!({"x": text})).await.unwrap(),
        json!({"x": text})
    );
    let big = "x".repeat(1 << 20);
    assert_eq!(client.send(len, big.clone()).await.unwrap(), 1 << 20);
    let big_unicode = "😀".repeat(1 << 18);
    assert_eq!(client.send(len, big_unicode).await.unwrap(), 1 << 19);

    // 200 concurrent requests on one client, each answered with its own value.
    let calls = (0..200).map(|i| {
        let client = client.clone();
        async move { client.send_raw::<Value>("echo", json!({"i": i})).await }
    });
    let replies = futures_util::future::join_all(calls).await;
    for (i, r) in replies.into_iter().enumerate() {
        assert_eq!(r.unwrap(), json!({"i": i}));
    }

    // Context and headers.
    let info: Value = client.send(ctx_info, json!(null)).await.unwrap();
    assert_eq!(info["pattern"], "ctx_info");
    assert_eq!(info["event"], false);
    let traced = client.with_metadata([("traceparent".to_string(), "00-abc-def-01".to_string())].into());
    let headers = traced.send(meta, ()).await.unwrap();
    assert_eq!(headers.get("traceparent").map(String::as_str), Some("00-abc-def-01"));

    // Events reach both listeners.
    let marker = format!("{url}-event");
    client.emit(evt_a, json!({"marker": marker})).await.unwrap();
    client.emit_raw("evt", json!({"marker": marker})).await.unwrap();
    let mut seen = 0;
    for _ in 0..50 {
        let events = client.send(events_seen, ()).await.unwrap();
        seen = events.iter().filter(|e| e["data"]["marker"] == json!(marker)).count();
        if seen == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 4, "two events × two listeners");

    // Descriptors for patterns served elsewhere.
    const ADD: switchboard::MessageDef<Vec<f64>, f64> = switchboard::MessageDef::new(pattern!(cmd = "sum"));
    assert_eq!(client.send(ADD, vec![2.0, 2.0]).await.unwrap(), 4.0);
}

#[tokio::test]
async fn in_process_transport() {
    let s = serve("mem://client-suite").await;
    suite("mem://client-suite").await;
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn tcp_transport() {
    let s = serve("tcp://127.0.0.1:0").await;
    suite(s.local_url()).await;
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn tls_transport() {
    let dir = std::env::temp_dir().join(format!("switchboard-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let s = serve(&format!(
        "tls://127.0.0.1:0?cert={}&key={}",
        cert_path.display(),
        key_path.display()
    ))
    .await;
    let port = s.local_url().rsplit(':').next().unwrap().to_owned();
    let url = format!(
        "tls://127.0.0.1:{port}?ca={}&server_name=localhost",
        cert_path.display()
    );
    suite(&url).await;

    // A client that does not trust the certificate cannot connect.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other_path = dir.join("other.pem");
    std::fs::write(&other_path, other.cert.pem()).unwrap();
    let err = Client::connect(&format!(
        "tls://127.0.0.1:{port}?ca={}&server_name=localhost",
        other_path.display()
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    // Plain TCP to a TLS server gets nothing back, and fails at its deadline.
    let plain = Client::builder(&format!("tcp://127.0.0.1:{port}"))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(plain.send(echo, json!(1)).await.is_err());
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn connection_loss_fails_in_flight_calls_at_once_and_the_client_reconnects() {
    let s = serve("tcp://127.0.0.1:0").await;
    let url = s.local_url().to_owned();
    let client = Client::builder(&url)
        .pool_size(1)
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    assert_eq!(client.send(echo, json!("before")).await.unwrap(), json!("before"));

    // Kill the server with a call in flight: the call fails at once, not at its deadline.
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.send(delay, 5_000).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    drop(s); // dropping a RunningServer aborts it: sockets close without draining
    let err = in_flight.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::ConnectionClosed { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // While the server is down, calls fail fast with a connect error.
    let err = client.send(echo, json!(1)).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");

    // Bring it back on the same port; the same client reconnects (after its backoff).
    let s = serve(&url).await;
    let mut ok = None;
    for _ in 0..50 {
        match client.send(echo, json!("after")).await {
            Ok(v) => {
                ok = Some(v);
                break;
            }
            Err(Error::Connect { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("unexpected error while reconnecting: {e}"),
        }
    }
    assert_eq!(ok, Some(json!("after")));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_urls_and_empty_services_are_clear_errors() {
    let err = Client::connect("carrier-pigeon://x").await.unwrap_err();
    assert!(err.to_string().contains("unknown transport `carrier-pigeon`"), "{err}");
    let err = Client::connect("127.0.0.1:3001").await.unwrap_err();
    assert!(err.to_string().contains("expected scheme://address"), "{err}");
    let err = Client::connect("tcp://127.0.0.1:9?pool=x").await.unwrap_err();
    assert!(err.to_string().contains("`pool`"), "{err}");
    let err = Client::connect("tcp://127.0.0.1:9").await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");

    let err = Microservice::new().listen("mem://empty").start().await.unwrap_err();
    assert!(err.to_string().contains("no handlers to serve"), "{err}");
    let err = Microservice::new().handler(echo).start().await.unwrap_err();
    assert!(err.to_string().contains("no transport"), "{err}");
    let err = Microservice::new()
        .handler(echo)
        .listen("tcp://127.0.0.1:0?frame=1")
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown query parameter `frame`"), "{err}");
}

#[tokio::test]
async fn dropping_an_in_process_server_frees_its_name() {
    let s = Microservice::new()
        .handler(echo)
        .listen("mem://dropped")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://dropped").await.unwrap();
    assert_eq!(client.send(echo, json!(1)).await.unwrap(), json!(1));
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(matches!(client.send(echo, json!(1)).await, Err(Error::Connect { .. })));
    let again = Microservice::new()
        .handler(echo)
        .listen("mem://dropped")
        .start()
        .await
        .unwrap();
    assert_eq!(client.send(echo, json!(2)).await.unwrap(), json!(2));
    again.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_garbled_reply_id_does_not_break_the_client() {
    // A hand-written server that first answers with a non-ASCII id, then correctly.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut first = true;
        loop {
            let n = sock.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            for part in text.split("\"id\":\"").skip(1) {
                let id = &part[..21];
                if first {
                    first = false;
                    let bad = common::raw::frame(r#"{"response":0,"id":"ééééééééééa"}"#);
                    sock.write_all(bad.as_bytes()).await.unwrap();
                }
                let good = common::raw::frame(&format!(r#"{{"response":"ok","isDisposed":true,"id":"{id}"}}"#));
                sock.write_all(good.as_bytes()).await.unwrap();
            }
        }
    });
    let client = Client::builder(&format!("tcp://127.0.0.1:{port}"))
        .pool_size(1)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(client.send_raw::<String>("x", 1).await.unwrap(), "ok");
    }
}

#[tokio::test]
async fn selected_handlers_only() {
    let s = Microservice::new()
        .handler(echo)
        .listen("mem://selected")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://selected").await.unwrap();
    assert_eq!(client.send(echo, json!(1)).await.unwrap(), json!(1));
    assert!(matches!(
        client.send(get_user, "1".to_string()).await,
        Err(Error::NoHandler { .. })
    ));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn handlers_are_still_plain_functions() {
    assert_eq!(get_user("7".to_string()).await.name, "John Doe");
    assert_eq!(sum(vec![1.0, 1.0]).await, 2.0);
}
