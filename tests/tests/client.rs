//! The client's own behaviour over the in-process and TCP transports: reconnects, bad URLs,
//! selected handlers, garbled replies. The shared transport behaviour is in conformance.rs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard::{Client, Error, Microservice, RunningServer};

async fn serve(url: &str) -> RunningServer {
    Microservice::from_registry()
        .listen(url)
        .start()
        .await
        .expect("server starts")
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
    assert_eq!(client.send(ECHO, json!("before")).await.unwrap(), json!("before"));

    // Kill the server with a call in flight: the call fails at once, not at its deadline.
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.send(DELAY, 5_000).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    drop(s); // dropping a RunningServer aborts it: sockets close without draining
    let err = in_flight.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::ConnectionClosed { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // While the server is down, calls fail fast with a connect error.
    let err = client.send(ECHO, json!(1)).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");

    // Bring it back on the same port; the same client reconnects (after its backoff).
    let s = serve(&url).await;
    let mut ok = None;
    for _ in 0..50 {
        match client.send(ECHO, json!("after")).await {
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
    // A pool is allocated up front: a huge one (a registry's entry, say) is refused, not tried.
    let err = Client::connect("tcp://127.0.0.1:9?pool=2305843009213693952")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`pool` is at most 1024"), "{err}");
    let err = Client::connect("tcp://127.0.0.1:9").await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");

    let err = Microservice::new().listen("mem://empty").start().await.unwrap_err();
    assert!(err.to_string().contains("no handlers to serve"), "{err}");
    let err = Microservice::new().handler(ECHO).start().await.unwrap_err();
    assert!(err.to_string().contains("no transport"), "{err}");
    let err = Microservice::new()
        .handler(ECHO)
        .listen("tcp://127.0.0.1:0?frame=1")
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown query parameter `frame`"), "{err}");
}

#[tokio::test]
async fn dropping_an_in_process_server_frees_its_name() {
    let s = Microservice::new()
        .handler(ECHO)
        .listen("mem://dropped")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://dropped").await.unwrap();
    assert_eq!(client.send(ECHO, json!(1)).await.unwrap(), json!(1));
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(matches!(client.send(ECHO, json!(1)).await, Err(Error::Connect { .. })));
    let again = Microservice::new()
        .handler(ECHO)
        .listen("mem://dropped")
        .start()
        .await
        .unwrap();
    assert_eq!(client.send(ECHO, json!(2)).await.unwrap(), json!(2));
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
        .handler(ECHO)
        .listen("mem://selected")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://selected").await.unwrap();
    assert_eq!(client.send(ECHO, json!(1)).await.unwrap(), json!(1));
    assert!(matches!(
        client.send(GET_USER, "1".to_string()).await,
        Err(Error::NoHandler { .. })
    ));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn handlers_are_still_plain_functions() {
    assert_eq!(get_user("7".to_string()).await.name, "John Doe");
    assert_eq!(sum(vec![1.0, 1.0]).await, 2.0);
}

// ---------------------------------------------------------------- ergonomics
#[switchboard::message_pattern("client.hidden_failure")]
async fn hidden_failure() -> switchboard::RpcResult<u32> {
    use switchboard::OrInternal;
    let row: Result<u32, std::io::Error> = Err(std::io::Error::other("db-7.internal:5432: disk full"));
    row.or_internal()
}

/// `stream()` is usable as it comes (`.next()` without pinning), `one()` insists on exactly
/// one value, `or_internal()` tells the caller nothing of the error, and `on_ready` is called
/// with the URL to use once the service takes messages.
#[tokio::test]
async fn stream_one_or_internal_and_on_ready() {
    use futures_util::StreamExt;

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = Microservice::from_registry()
        .listen("tcp://127.0.0.1:0")
        .on_ready(move |urls| {
            let _ = ready_tx.send(urls[0].clone());
        })
        .run_until(async move {
            let _ = stop_rx.await;
        });
    let checks = async move {
        let url = tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("ready within 10 s")
            .unwrap();
        let c = Client::connect(&url).await.unwrap();

        let mut values = c.send_raw::<u64>("count_to", 3).stream().await.unwrap();
        let mut seen = Vec::new();
        while let Some(v) = values.next().await {
            seen.push(v.unwrap());
        }
        assert_eq!(seen, [1, 2, 3]);

        assert_eq!(c.send_raw::<u64>("count_to", 1).one().await.unwrap(), 1);
        let many = c.send_raw::<u64>("count_to", 2).one().await.unwrap_err();
        assert!(
            many.to_string().contains("expected one value, the reply had more"),
            "{many}"
        );
        let none = c
            .send_raw::<Option<u64>>("void_ret", json!({}))
            .one()
            .await
            .unwrap_err();
        assert!(none.to_string().contains("the reply had none"), "{none}");

        let hidden = c.send(HIDDEN_FAILURE, ()).await.unwrap_err();
        assert_eq!(hidden.as_rpc().and_then(|e| e.message()), Some("Internal server error"));
        assert!(!hidden.to_string().contains("db-7"), "{hidden}");

        stop_tx.send(()).unwrap();
    };
    let (served, ()) = tokio::join!(service, checks);
    served.unwrap();
}
