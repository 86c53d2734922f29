//! `?codec=msgpack`, Switchboard's own codec between Switchboard peers: one TCP server serves
//! NestJS JSON clients and msgpack clients at once; a NestJS server, a broker URL and an
//! unknown codec are refused with a clear error; a malformed msgpack frame gets an error reply
//! and the connection goes on. (The conformance suite runs over msgpack too, on TCP and
//! in-process: tests/conformance.rs.)

mod common;

use std::time::Duration;

use common::nest::{NestServer, nest_installed, serve};
use common::raw::Raw;
use common::{ECHO, GET_USER, STREAM, User};
use serde_json::{Value, json};
use switchboard::{Client, Error, Microservice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Switchboard's msgpack hello (and the server's answer).
const HELLO: [u8; 4] = [0xC1, b'S', b'B', 1];

#[tokio::test]
async fn one_tcp_server_serves_json_and_msgpack_clients_at_once() {
    let (server, url) = serve("tcp://127.0.0.1:0").await;
    let json = Client::connect(&url).await.unwrap();
    let packed = Client::connect(&format!("{url}?codec=msgpack")).await.unwrap();
    // A NestJS peer's bytes, written by hand, on a connection of its own.
    let mut nest = Raw::connect(&url).await;

    for i in 0..20 {
        let (a, b) = tokio::join!(
            json.send_raw::<Value>("echo", json!({"i": i, "via": "json"})),
            packed.send_raw::<Value>("echo", json!({"i": i, "via": "msgpack"})),
        );
        assert_eq!(a.unwrap(), json!({"i": i, "via": "json"}));
        assert_eq!(b.unwrap(), json!({"i": i, "via": "msgpack"}));
        nest.send_frame(&format!(r#"{{"pattern":"echo","data":{i},"id":"n{i}"}}"#))
            .await;
        assert_eq!(
            nest.recv().await,
            format!(r#"{{"response":{i},"isDisposed":true,"id":"n{i}"}}"#)
        );
    }
    // Typed values and streams over msgpack.
    let user = packed.send(GET_USER, "7".to_string()).await.unwrap();
    assert_eq!(
        user,
        User {
            id: "7".into(),
            name: "John Doe".into(),
            email: "john@example.com".into()
        }
    );
    assert_eq!(packed.send(STREAM, ()).await.unwrap(), 3);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_nestjs_tcp_server_refuses_msgpack_with_a_clear_error() {
    let url = "tcp://127.0.0.1:0";
    if !nest_installed(12, url) {
        return;
    }
    let nest = NestServer::start(12, url).await;
    let err = Client::connect(&format!("{}?codec=msgpack&connect_timeout_ms=2000", nest.url()))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        text.contains("did not take codec=msgpack") && text.contains("NestJS"),
        "{text}"
    );
    // JSON still works against it.
    let json = Client::connect(nest.url()).await.unwrap();
    assert_eq!(json.send(ECHO, json!("hi")).await.unwrap(), json!("hi"));
}

#[tokio::test]
async fn msgpack_is_refused_where_nestjs_peers_share_the_channel() {
    for url in [
        "redis://127.0.0.1:6379?codec=msgpack",
        "nats://127.0.0.1:4222?codec=msgpack",
        "mqtt://127.0.0.1:1883?codec=msgpack",
        "amqp://guest:secret@127.0.0.1:5672?codec=msgpack",
        "kafka://127.0.0.1:9092?codec=msgpack",
        "grpc://127.0.0.1:50051?codec=msgpack",
    ] {
        let err = Client::builder(url).build().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
        assert!(
            text.contains("codec=msgpack is only spoken between Switchboard peers"),
            "{url}: {text}"
        );
        assert!(!text.contains("secret"), "a password reached the error: {text}");
        let err = Microservice::from_registry().listen(url).start().await.unwrap_err();
        assert!(
            err.to_string()
                .contains("codec=msgpack is only spoken between Switchboard peers"),
            "{url}: {err}"
        );
    }
    // codec=json is NestJS's own, accepted everywhere the transport is built in.
    assert!(Client::builder("tcp://127.0.0.1:1?codec=json").build().is_ok());
}

#[tokio::test]
async fn unknown_codecs_are_refused_by_name() {
    for url in [
        "tcp://127.0.0.1:1?codec=cbor",
        "mem://x?codec=cbor",
        "redis://127.0.0.1:6379?codec=cbor",
    ] {
        let err = Client::builder(url).build().unwrap_err();
        assert!(err.to_string().contains("unknown codec `cbor`"), "{url}: {err}");
    }
    let err = Microservice::from_registry()
        .listen("tcp://127.0.0.1:0?codec=MsgPack")
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown codec `MsgPack`"), "{err}");
}

/// A hand-written msgpack peer: the hello, then `u32` length-prefixed frames.
struct Packed(tokio::net::TcpStream);

impl Packed {
    async fn connect(url: &str) -> Packed {
        let mut s = tokio::net::TcpStream::connect(url.trim_start_matches("tcp://"))
            .await
            .unwrap();
        s.write_all(&HELLO).await.unwrap();
        let mut ack = [0; 4];
        s.read_exact(&mut ack).await.unwrap();
        assert_eq!(ack, HELLO, "the server answers the hello");
        Packed(s)
    }

    async fn send(&mut self, body: &[u8]) {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.0.write_all(&frame).await.unwrap();
    }

    /// The next frame's body, or `None` when the server closed the connection.
    async fn recv(&mut self) -> Option<Vec<u8>> {
        let mut len = [0; 4];
        tokio::time::timeout(Duration::from_secs(5), self.0.read_exact(&mut len))
            .await
            .expect("a frame within 5 s")
            .ok()?;
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut body).await.ok()?;
        Some(body)
    }
}

/// A request body: `[id, "\"echo\"", {}]` then `payload`.
fn echo_request(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0x93, 0xA1, id, 0xA6];
    body.extend_from_slice(b"\"echo\"");
    body.push(0x80);
    body.extend_from_slice(payload);
    body
}

/// `[id, tag]` of a reply, and its value's bytes.
fn reply(body: &[u8]) -> (u8, u8, &[u8]) {
    assert_eq!(&body[..2], [0x92, 0xA1], "{body:?}");
    (body[2], body[3], &body[4..])
}

#[tokio::test]
async fn malformed_msgpack_gets_a_bounded_error_and_the_connection_goes_on() {
    let (server, url) = serve("tcp://127.0.0.1:0?max_frame_len=4096").await;
    let mut peer = Packed::connect(&url).await;

    // A payload that is not MessagePack (0xC1 is never used): an error reply for that id.
    peer.send(&echo_request(b'a', &[0xC1])).await;
    let body = peer.recv().await.unwrap();
    let (id, tag, value) = reply(&body);
    assert_eq!((id, tag), (b'a', 3), "an error reply");
    assert!(
        String::from_utf8_lossy(value).contains("invalid payload for pattern echo"),
        "{}",
        String::from_utf8_lossy(value)
    );
    // Garbage after a readable id: an error reply too. No readable id: skipped.
    peer.send(&[0x93, 0xA1, b'b', 0x07]).await;
    let body = peer.recv().await.unwrap();
    let (id, tag, value) = reply(&body);
    assert_eq!((id, tag), (b'b', 3));
    assert!(String::from_utf8_lossy(value).contains("invalid msgpack packet"));
    peer.send(&[0xFF, 0x00]).await;
    // The same connection still answers.
    peer.send(&echo_request(b'c', &[0x2A])).await;
    let body = peer.recv().await.unwrap();
    assert_eq!(reply(&body), (b'c', 1, &[0x2A][..]), "42, the last value");

    // A frame over the cap closes this connection (as an oversized JSON frame does) …
    peer.send(&vec![0xC0; 5000]).await;
    assert_eq!(peer.recv().await, None, "closed");
    // … and the server goes on serving.
    let client = Client::connect(&format!("{url}?codec=msgpack")).await.unwrap();
    assert_eq!(client.send(ECHO, json!("ok")).await.unwrap(), json!("ok"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn msgpack_over_tls() {
    let dir = std::env::temp_dir().join(format!("switchboard-msgpack-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = Microservice::from_registry()
        .listen(format!(
            "tls://127.0.0.1:0?cert={}&key={}",
            cert_path.display(),
            key_path.display()
        ))
        .start()
        .await
        .unwrap();
    let port = server.local_url().rsplit(':').next().unwrap().to_owned();
    let client = Client::connect(&format!(
        "tls://127.0.0.1:{port}?ca={}&server_name=localhost&codec=msgpack",
        cert_path.display()
    ))
    .await
    .unwrap();
    assert_eq!(client.send(STREAM, ()).await.unwrap(), 3);
    assert_eq!(
        client
            .send_raw::<Value>(json!({"cmd": "sum"}), json!([5, 3]))
            .await
            .unwrap(),
        json!(8.0),
        "a float stays a float between Switchboard peers"
    );
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn in_process_msgpack_encodes_both_ways() {
    let server = Microservice::from_registry()
        .listen("mem://msgpack-both-ways")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://msgpack-both-ways?codec=msgpack").await.unwrap();
    // A reply that does not survive MessagePack would fail here, as over TCP.
    assert_eq!(client.send(STREAM, ()).await.unwrap(), 3);
    let user = client.send(GET_USER, "1".to_string()).await.unwrap();
    assert_eq!(user.id, "1");
    let err = client.send_raw::<Value>("stream_err", ()).await.unwrap_err();
    assert_eq!(err.as_rpc().and_then(|e| e.message()), Some("mid-stream"));
    server.shutdown().await.unwrap();
}
