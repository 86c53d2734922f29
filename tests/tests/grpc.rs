//! The gRPC transport's generic service: the conformance suite over `grpc://`, plus what
//! only gRPC does: the deadline travels as `grpc-timeout`, a dropped call cancels its
//! handler, errors map to NestJS's status codes.

#![cfg(feature = "grpc")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::prelude::*;
use switchboard::transport::grpc::{tonic, tonic_prost};
use switchboard::{Error, Microservice};
use tonic::codegen::http;

switchboard_conformance!(url: "grpc://127.0.0.1:0", broker: "", fix: "");

/// `grpc_slow` handlers started and dropped before they finished.
static STARTED: AtomicUsize = AtomicUsize::new(0);
static CANCELLED: AtomicUsize = AtomicUsize::new(0);

struct OnDrop;
impl Drop for OnDrop {
    fn drop(&mut self) {
        CANCELLED.fetch_add(1, SeqCst);
    }
}

#[message_pattern("grpc_slow")]
async fn grpc_slow(ms: u64) -> u64 {
    STARTED.fetch_add(1, SeqCst);
    let guard = OnDrop;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    std::mem::forget(guard);
    ms
}

#[message_pattern("grpc_deadline_seen")]
async fn grpc_deadline_seen(ctx: Context) -> Option<String> {
    // gRPC's own headers are not handler headers; the caller's are.
    ctx.headers().get("grpc-timeout").map(str::to_owned)
}

async fn server() -> (switchboard::RunningServer, String) {
    let s = Microservice::from_registry()
        .listen("grpc://127.0.0.1:0")
        .start()
        .await
        .expect("gRPC server starts");
    let url = s.local_url().to_owned();
    (s, url)
}

#[tokio::test]
async fn dropped_call_cancels_the_handler() {
    let (s, url) = server().await;
    let c = Client::connect(&url).await.unwrap();
    let (started, cancelled) = (STARTED.load(SeqCst), CANCELLED.load(SeqCst));
    // The client's deadline passes: the call is dropped, its HTTP/2 stream reset.
    let err = c
        .with_timeout(Duration::from_millis(200))
        .send(GRPC_SLOW, 5_000)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // A call dropped by the caller (no deadline involved).
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.send(GRPC_SLOW, 5_000).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    call.abort();
    for _ in 0..100 {
        if CANCELLED.load(SeqCst) >= cancelled + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(STARTED.load(SeqCst) - started, 2);
    assert_eq!(CANCELLED.load(SeqCst) - cancelled, 2, "both handlers were dropped");
    assert_eq!(c.send(common::DELAY, 1).await.unwrap(), 1, "the connection still works");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn deadline_travels_as_grpc_timeout() {
    use switchboard::transport::grpc::wire::{Packet, SEND_PATH, Value as Reply};
    let (s, url) = server().await;
    let addr = url.trim_start_matches("grpc://").to_owned();
    // A plain tonic client that sends `grpc-timeout` and never gives up on its own: the
    // server ends the call with DEADLINE_EXCEEDED.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(Packet {
        pattern: r#""delay""#.into(),
        data: Some(b"3000".to_vec().into()),
        metadata: Default::default(),
    });
    req.metadata_mut().insert("grpc-timeout", "150m".parse().unwrap());
    let started = std::time::Instant::now();
    let resp = grpc
        .server_streaming(
            req,
            http::uri::PathAndQuery::from_static(SEND_PATH),
            tonic_prost::ProstCodec::<Packet, Reply>::default(),
        )
        .await;
    let status = match resp {
        Ok(r) => {
            use futures_util::StreamExt;
            let mut stream = r.into_inner();
            stream.next().await.expect("an item").unwrap_err()
        }
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_millis(2_000));
    // The handler does not see gRPC's own headers.
    let c = Client::connect(&url).await.unwrap();
    assert_eq!(c.send(GRPC_DEADLINE_SEEN, ()).await.unwrap(), None);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_carry_nestjs_status_codes() {
    use switchboard::transport::grpc::wire::{Packet, SEND_PATH, Value as Reply};
    let (s, url) = server().await;
    let addr = url.trim_start_matches("grpc://").to_owned();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let call = |pattern: &'static str| {
        let channel = channel.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            let req = tonic::Request::new(Packet {
                pattern: pattern.into(),
                data: Some(b"null".to_vec().into()),
                metadata: Default::default(),
            });
            let resp = grpc
                .server_streaming(
                    req,
                    http::uri::PathAndQuery::from_static(SEND_PATH),
                    tonic_prost::ProstCodec::<Packet, Reply>::default(),
                )
                .await;
            match resp {
                Ok(r) => {
                    use futures_util::StreamExt;
                    r.into_inner().next().await.expect("an item").unwrap_err()
                }
                Err(status) => status,
            }
        }
    };
    let st = call(r#""grpc_not_found""#).await;
    assert_eq!((st.code(), st.message()), (tonic::Code::NotFound, "hero not found"));
    let st = call(r#""panics""#).await;
    assert_eq!(st.code(), tonic::Code::Unknown);
    let st = call(r#""rpc_string""#).await;
    assert_eq!((st.code(), st.message()), (tonic::Code::Unknown, "bad thing"));
    let st = call(r#""no_such_pattern""#).await;
    assert_eq!(st.code(), tonic::Code::Unimplemented);
    // Through Switchboard's client the JSON value comes back as it was.
    let c = Client::connect(&url).await.unwrap();
    let err = c.send_raw::<Value>("grpc_not_found", json!(null)).await.unwrap_err();
    assert_eq!(
        err.as_rpc().unwrap().value(),
        &json!({"code": 5, "message": "hero not found"})
    );
    s.shutdown().await.unwrap();
}

#[message_pattern("grpc_not_found")]
async fn grpc_not_found() -> RpcResult<u32> {
    Err(RpcError::from_value(json!({"code": 5, "message": "hero not found"})))
}

#[tokio::test]
async fn unreachable_server_is_a_connect_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let err = Client::connect(&format!("grpc://127.0.0.1:{port}")).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish() {
    let (s, url) = server().await;
    let c = Client::connect(&url).await.unwrap();
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.send(common::DELAY, 300).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.shutdown().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), 300);
}
