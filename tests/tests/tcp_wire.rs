//! The TCP server against a hand-written peer: NestJS's exact bytes for every reply shape
//! (nestjs-wire-examples/tcp-server-responses.txt), and malformed input.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::raw::{Raw, frame};
use serde_json::{Value, json};
use switchboard::prelude::*;
use switchboard::{Client, Microservice, RunningServer};

async fn server(query: &str) -> RunningServer {
    Microservice::from_registry()
        .listen(format!("tcp://127.0.0.1:0{query}"))
        .start()
        .await
        .expect("server starts")
}

/// Markers of the `wire.slow*` handlers: started, and (events) finished.
static STARTED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static FINISHED: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[message_pattern("wire.slow")]
async fn wire_slow(marker: String) -> String {
    STARTED.lock().unwrap().push(marker.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    marker
}

#[event_pattern("wire.slow_evt")]
async fn wire_slow_evt(marker: String) {
    STARTED.lock().unwrap().push(marker.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    FINISHED.lock().unwrap().push(marker);
}

/// Waits (up to 5 s) until a `wire.slow*` handler started with `marker`.
async fn started(marker: &str) {
    for _ in 0..500 {
        if STARTED.lock().unwrap().iter().any(|m| m == marker) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{marker} did not start within 5 s");
}

async fn exchange(raw: &mut Raw, body: &str) -> String {
    raw.send_frame(body).await;
    raw.recv().await
}

#[tokio::test]
async fn replies_are_byte_identical_to_nestjs() {
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    let cases = [
        (
            r#"{"pattern":{"cmd":"sum"},"data":[1,2,3],"id":"abc1"}"#,
            r#"{"response":6,"isDisposed":true,"id":"abc1"}"#,
        ),
        (
            r#"{"pattern":"{\"cmd\":\"sum\"}","data":[1,2],"id":"abc2"}"#,
            r#"{"response":3,"isDisposed":true,"id":"abc2"}"#,
        ),
        (
            r#"{"pattern":"echo","data":{"x":"é😀"},"id":"u1"}"#,
            r#"{"response":{"x":"é😀"},"isDisposed":true,"id":"u1"}"#,
        ),
        (
            r#"{"pattern":"empty_stream","data":{},"id":"s3"}"#,
            r#"{"isDisposed":true,"id":"s3"}"#,
        ),
        (
            r#"{"pattern":"rpc_string","data":{},"id":"e1"}"#,
            r#"{"err":{"status":"error","message":"bad thing"},"isDisposed":true,"id":"e1"}"#,
        ),
        (
            r#"{"pattern":"rpc_object","data":{},"id":"e2"}"#,
            r#"{"err":{"code":42,"message":"custom msg","extra":true},"isDisposed":true,"id":"e2"}"#,
        ),
        (
            r#"{"pattern":"nope","data":{},"id":"n1"}"#,
            r#"{"id":"n1","status":"error","err":"There is no matching message handler defined in the remote service."}"#,
        ),
        (
            r#"{"pattern":"void_ret","data":{},"id":"v1"}"#,
            r#"{"isDisposed":true,"id":"v1"}"#,
        ),
        (
            r#"{"pattern":"null_ret","data":{},"id":"v2"}"#,
            r#"{"response":null,"isDisposed":true,"id":"v2"}"#,
        ),
        (
            r#"{"pattern":{"v":2,"role":"user","nested":{"b":1,"a":"x"},"cmd":"get","Zeta":"z","_x":1},"data":{},"id":"k0"}"#,
            r#"{"id":"k0","status":"error","err":"There is no matching message handler defined in the remote service."}"#,
        ),
        (
            r#"{"pattern":{"v":2,"role":"user","nested":{"b":1,"a":"x"},"cmd":"get"},"data":{},"id":"k1"}"#,
            r#"{"response":"nested-ok","isDisposed":true,"id":"k1"}"#,
        ),
        (
            r#"{"pattern":"evt","data":{"x":1},"id":"ev1"}"#,
            r#"{"isDisposed":true,"id":"ev1"}"#,
        ),
        // Ids are echoed verbatim, whatever their JSON type; `null` still makes a request.
        (
            r#"{"pattern":"echo","data":1,"id":7}"#,
            r#"{"response":1,"isDisposed":true,"id":7}"#,
        ),
        (
            r#"{"pattern":"echo","data":1,"id":null}"#,
            r#"{"response":1,"isDisposed":true,"id":null}"#,
        ),
        // v12's metadata reaches the handler's Context.
        (
            r#"{"pattern":"meta","data":{},"metadata":{"traceparent":"00-abc-def-01"},"id":"m1"}"#,
            r#"{"response":{"traceparent":"00-abc-def-01"},"isDisposed":true,"id":"m1"}"#,
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(exchange(&mut raw, request).await, expected, "reply to {request}");
    }
    // The length prefix counts UTF-16 units: 52, not the 55 bytes on the wire.
    raw.send_frame(r#"{"pattern":"echo","data":{"x":"é😀"},"id":"u2"}"#)
        .await;
    let mut head = [0u8; 3];
    tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut head)
        .await
        .unwrap();
    assert_eq!(&head, b"52#");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn multi_value_replies_merge_completion_into_the_last_value() {
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    raw.send_frame(r#"{"pattern":"stream","data":{},"id":"s1"}"#).await;
    assert_eq!(raw.recv().await, r#"{"response":1,"id":"s1"}"#);
    assert_eq!(raw.recv().await, r#"{"response":2,"id":"s1"}"#);
    assert_eq!(raw.recv().await, r#"{"response":3,"isDisposed":true,"id":"s1"}"#);

    // Values that arrive over time, the last one completing at once (interval().pipe(take(3))).
    raw.send_frame(r#"{"pattern":"slow_stream","data":{},"id":"s2"}"#).await;
    assert_eq!(raw.recv().await, r#"{"response":0,"id":"s2"}"#);
    assert_eq!(raw.recv().await, r#"{"response":1,"id":"s2"}"#);
    assert_eq!(raw.recv().await, r#"{"response":2,"isDisposed":true,"id":"s2"}"#);

    // Completion that comes later than the last value is a packet of its own.
    raw.send_frame(r#"{"pattern":"late_complete","data":{},"id":"s4"}"#)
        .await;
    assert_eq!(raw.recv().await, r#"{"response":"first","id":"s4"}"#);
    assert_eq!(raw.recv().await, r#"{"isDisposed":true,"id":"s4"}"#);

    // An error ends the stream, after the values before it.
    raw.send_frame(r#"{"pattern":"stream_err","data":{},"id":"e5"}"#).await;
    assert_eq!(raw.recv().await, r#"{"response":1,"id":"e5"}"#);
    assert_eq!(
        raw.recv().await,
        r#"{"err":{"status":"error","message":"mid-stream"},"isDisposed":true,"id":"e5"}"#
    );
    assert_eq!(raw.try_recv(Duration::from_millis(200)).await, None);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn pipelined_split_and_multibyte_frames() {
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    let three = [
        frame(r#"{"pattern":"echo","data":1,"id":"p1"}"#),
        frame(r#"{"pattern":"echo","data":2,"id":"p2"}"#),
        frame(r#"{"pattern":"stream","data":0,"id":"p3"}"#),
    ]
    .concat();
    raw.send(three).await;
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.push(raw.recv().await);
    }
    for expected in [
        r#"{"response":1,"isDisposed":true,"id":"p1"}"#,
        r#"{"response":2,"isDisposed":true,"id":"p2"}"#,
        r#"{"response":3,"isDisposed":true,"id":"p3"}"#,
    ] {
        assert!(replies.iter().any(|r| r == expected), "{expected} in {replies:?}");
    }

    // One frame in three writes, split inside a two-byte character (the pauses put each part
    // in a read of its own; nothing waits on them).
    let bytes = frame(r#"{"pattern":"echo","data":"é","id":"mb"}"#).into_bytes();
    let cut = bytes.iter().position(|&b| b == 0xC3).unwrap() + 1;
    raw.send(&bytes[..5]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.send(&bytes[5..cut]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.send(&bytes[cut..]).await;
    assert_eq!(raw.recv().await, r#"{"response":"é","isDisposed":true,"id":"mb"}"#);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_reach_every_listener_and_get_no_reply() {
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    raw.send_frame(r#"{"pattern":"evt","data":{"hello":"world"}}"#).await;
    // NestJS's emit sends the route as a string: the same listeners run.
    raw.send_frame(r#"{"pattern":"evt","data":{"hello":"again"}}"#).await;
    assert_eq!(
        raw.try_recv(Duration::from_millis(200)).await,
        None,
        "events get no reply"
    );
    let seen = exchange(&mut raw, r#"{"pattern":"events_seen","data":null,"id":"q"}"#).await;
    let seen: Value = serde_json::from_str(&seen).unwrap();
    let seen = seen["response"].as_array().unwrap();
    for hello in ["world", "again"] {
        for handler in ["a", "b"] {
            assert!(
                seen.iter()
                    .any(|e| e["handler"] == handler && e["data"]["hello"] == hello),
                "listener {handler} saw {hello}: {seen:?}"
            );
        }
    }
    assert!(seen.iter().any(|e| e["event"] == json!(true)));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_payload_shape_is_a_clear_error_and_the_connection_stays() {
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    let reply: Value =
        serde_json::from_str(&exchange(&mut raw, r#"{"pattern":{"cmd":"sum"},"data":"not numbers","id":"w1"}"#).await)
            .unwrap();
    assert_eq!(reply["id"], "w1");
    assert_eq!(reply["isDisposed"], true);
    let message = reply["err"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(r#"invalid payload for pattern {"cmd":"sum"}: invalid type: string"#),
        "{message}"
    );
    assert_eq!(
        exchange(&mut raw, r#"{"pattern":"echo","data":"still here","id":"w2"}"#).await,
        r#"{"response":"still here","isDisposed":true,"id":"w2"}"#
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_utf8_that_passes_the_framing_still_closes_the_connection() {
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    // A UTF-8-encoded surrogate: well-formed bytes for the framing, not UTF-8 all the same.
    let body = b"{\"pattern\":\"echo\",\"data\":\"a\xed\xa0\x80b\",\"id\":\"bad\"}";
    raw.send(format!("{}#", body.len() - 2)).await;
    raw.send(body).await;
    assert!(raw.closed_within(Duration::from_secs(2)).await);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panicking_handler_answers_internal_server_error_and_the_server_keeps_serving() {
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    assert_eq!(
        exchange(&mut raw, r#"{"pattern":"panics","data":1,"id":"x1"}"#).await,
        r#"{"err":{"status":"error","message":"Internal server error"},"isDisposed":true,"id":"x1"}"#
    );
    assert_eq!(
        exchange(&mut raw, r#"{"pattern":"panics","data":0,"id":"x2"}"#).await,
        r#"{"response":0,"isDisposed":true,"id":"x2"}"#
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn non_object_bodies_are_ignored_like_nestjs() {
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    raw.send(r#"5#"abc""#).await;
    raw.send_frame(r#"{"id":"x"}"#).await;
    assert_eq!(raw.try_recv(Duration::from_millis(200)).await, None);
    assert_eq!(
        exchange(&mut raw, r#"{"pattern":"echo","data":1,"id":"ok"}"#).await,
        r#"{"response":1,"isDisposed":true,"id":"ok"}"#
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_frames_close_the_connection_but_not_the_server() {
    let s = server("?max_frame_len=1000").await;
    let bad: [&[u8]; 6] = [
        b"abc#{}",                          // non-numeric length
        b"0#",                              // empty body is invalid JSON
        b"8#{nope:1}",                      // invalid JSON
        b"5#\"a\xffb\"",                    // invalid UTF-8
        b"1001#",                           // over the frame cap, refused before buffering
        b"123456789012345678901234567890#", // absurd prefix
    ];
    for bytes in bad {
        let mut raw = Raw::connect(s.local_url()).await;
        raw.send(bytes).await;
        assert!(
            raw.closed_within(Duration::from_secs(2)).await,
            "closed after {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // Inside a well-shaped packet, broken JSON anywhere closes, as NestJS's `JSON.parse` of
    // the whole packet does: the pattern, the payload, the id.
    let mut raw = Raw::connect(s.local_url()).await;
    raw.send_frame(r#"{"pattern":{"cmd":,},"data":1,"id":"v"}"#).await;
    assert!(raw.closed_within(Duration::from_secs(2)).await, "broken pattern");
    let mut raw = Raw::connect(s.local_url()).await;
    raw.send_frame(r#"{"pattern":"void_ret","data":[1},"id":"v"}"#).await;
    assert!(raw.closed_within(Duration::from_secs(2)).await, "broken payload");
    let mut raw = Raw::connect(s.local_url()).await;
    raw.send_frame(r#"{"pattern":"echo","data":1,"id":"\q"}"#).await;
    assert!(
        raw.closed_within(Duration::from_secs(2)).await,
        "an id that is not JSON"
    );
    // A byte-length prefix over non-ASCII text eats into the next frame: invalid JSON, closed.
    let mut raw = Raw::connect(s.local_url()).await;
    raw.send(format!("50#{}", r#"{"pattern":"echo","data":{"x":"é😀"},"id":"u1"}"#))
        .await;
    raw.send_frame(r#"{"pattern":"echo","data":1,"id":"u2"}"#).await;
    assert!(raw.closed_within(Duration::from_secs(2)).await);
    // The server still serves.
    let mut raw = Raw::connect(s.local_url()).await;
    assert_eq!(
        exchange(&mut raw, r#"{"pattern":"echo","data":1,"id":"ok"}"#).await,
        r#"{"response":1,"isDisposed":true,"id":"ok"}"#
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_peer_silent_mid_frame_is_dropped() {
    let s = server("?incomplete_timeout_ms=300").await;
    let mut raw = Raw::connect(s.local_url()).await;
    raw.send(r#"50#{"pattern":"echo""#).await;
    let started = std::time::Instant::now();
    assert!(raw.closed_within(Duration::from_secs(3)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the timeout"
    );
    // An idle connection between frames is not mid-frame and stays open.
    let mut idle = Raw::connect(s.local_url()).await;
    assert!(!idle.closed_within(Duration::from_millis(600)).await);
    assert_eq!(
        exchange(&mut idle, r#"{"pattern":"echo","data":1,"id":"i"}"#).await,
        r#"{"response":1,"isDisposed":true,"id":"i"}"#
    );
    s.shutdown().await.unwrap();
}

/// A frame must arrive whole within the timeout from its first byte: a peer trickling one
/// byte at a time cannot keep a partial frame (and its buffer) alive.
#[tokio::test]
async fn a_peer_trickling_a_frame_is_dropped() {
    let s = server("?incomplete_timeout_ms=500").await;
    let mut raw = Raw::connect(s.local_url()).await;
    raw.send("5000#").await;
    let mut closed = false;
    // Up to 8 s of one byte every 100 ms: far past the frame's 500 ms.
    for _ in 0..80 {
        raw.send("x").await;
        if raw.closed_within(Duration::from_millis(100)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "still open while the frame trickled in");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_others_are_served() {
    let s = server("?idle_timeout_ms=300").await;
    let mut idle = Raw::connect(s.local_url()).await;
    assert_eq!(
        exchange(&mut idle, r#"{"pattern":"echo","data":1,"id":"a"}"#).await,
        r#"{"response":1,"isDisposed":true,"id":"a"}"#
    );
    assert!(idle.closed_within(Duration::from_secs(10)).await, "idle, yet kept open");
    // A client reconnects by itself.
    let client = Client::connect(s.local_url()).await.unwrap();
    assert_eq!(client.send_raw::<u32>("echo", 1).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(client.send_raw::<u32>("echo", 2).await.unwrap(), 2);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_connection_in_use_is_kept_and_closed_once_quiet_for_the_idle_timeout() {
    let s = server("?idle_timeout_ms=400").await;
    let mut raw = Raw::connect(s.local_url()).await;
    // A request every 100 ms for three timeouts keeps it open.
    for i in 0..12 {
        assert_eq!(
            exchange(&mut raw, &format!(r#"{{"pattern":"echo","data":{i},"id":"{i}"}}"#)).await,
            format!(r#"{{"response":{i},"isDisposed":true,"id":"{i}"}}"#)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quiet = std::time::Instant::now();
    assert!(raw.closed_within(Duration::from_secs(10)).await, "idle, yet kept open");
    // The last request was 100 ms before `quiet`: closing sooner than this is too early.
    assert!(
        quiet.elapsed() >= Duration::from_millis(300),
        "closed {:?} after its last request, before its idle timeout of 400 ms",
        quiet.elapsed() + Duration::from_millis(100)
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_closed_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server("?idle_timeout_ms=300").await;
    let addr = s.local_url().trim_start_matches("tcp://").to_owned();
    let (mut rd, mut wr) = tokio::net::TcpStream::connect(addr).await.unwrap().into_split();
    // 32 echoes of 1 MiB, more than the socket buffers hold: the server's writes block, and
    // then its reads, so this write blocks too until the server gives up.
    let n = 32;
    let big = "x".repeat(1 << 20);
    let requests: String = (0..n)
        .map(|i| frame(&format!(r#"{{"pattern":"echo","data":"{big}","id":"{i}"}}"#)))
        .collect();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(requests.as_bytes()).await;
        wr
    });
    // Longer than the idle timeout without reading a byte.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut bytes = 0;
    let mut chunk = vec![0; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rd.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(got)) => bytes += got,
            Err(_) => panic!("the connection is still open after 20 s"),
        }
    }
    assert!(
        bytes < n * (1 << 20),
        "all {n} replies were written ({bytes} bytes): the server waited for a peer that had stopped reading"
    );
    drop(writer.await.unwrap());
    // The server serves on, and shuts down without waiting for that peer.
    let client = Client::connect(s.local_url()).await.unwrap();
    assert_eq!(client.send_raw::<u32>("echo", 1).await.unwrap(), 1);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn connections_past_the_maximum_are_refused() {
    let s = server("?max_connections=2").await;
    let mut first = Raw::connect(s.local_url()).await;
    let mut second = Raw::connect(s.local_url()).await;
    let mut third = Raw::connect(s.local_url()).await;
    assert!(third.closed_within(Duration::from_secs(10)).await, "a third connection");
    for (raw, id) in [(&mut first, "1"), (&mut second, "2")] {
        assert_eq!(
            exchange(raw, &format!(r#"{{"pattern":"echo","data":1,"id":"{id}"}}"#)).await,
            format!(r#"{{"response":1,"isDisposed":true,"id":"{id}"}}"#)
        );
    }
    drop(first);
    // Once one closes, a new one is taken (the server notices the close first).
    let mut served = false;
    for _ in 0..50 {
        let mut next = Raw::connect(s.local_url()).await;
        next.send_frame(r#"{"pattern":"echo","data":1,"id":"n"}"#).await;
        if next.try_recv(Duration::from_millis(200)).await.is_some() {
            served = true;
            break;
        }
    }
    assert!(served, "a connection is taken again below the maximum");
    s.shutdown().await.unwrap();
}

/// The listen queue is 1024 by default (the kernel's 128 drops connects in a burst), as the
/// kernel reports it for the listening socket.
#[tokio::test]
async fn the_listen_queue_is_deep() {
    for (query, want) in [("", 1024), ("?backlog=4096", 4096)] {
        let s = server(query).await;
        let port = s.local_url().rsplit(':').next().unwrap().to_owned();
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        // LISTEN  0  <backlog>  127.0.0.1:port ...: the third column is the queue's size.
        let backlog: u32 = text
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no listening socket in: {text}"));
        // The kernel caps it at net.core.somaxconn.
        let cap: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(u32::MAX);
        assert_eq!(backlog, want.min(cap), "{query}");
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn in_flight_work_per_connection_is_bounded_yet_everything_is_answered() {
    let s = server("?max_in_flight=4").await;
    let mut raw = Raw::connect(s.local_url()).await;
    let n = 200;
    let frames: String = (0..n)
        .map(|i| frame(&format!(r#"{{"pattern":"tracked","data":1,"id":"d{i}"}}"#)))
        .collect();
    raw.send(frames).await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..n {
        let reply: Value = serde_json::from_str(&raw.recv().await).unwrap();
        assert_eq!(reply["response"], 1);
        ids.insert(reply["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), n);
    // One write carried all 200 frames; still no more than 4 handlers ran at once.
    let most = exchange(&mut raw, r#"{"pattern":"most_running","data":null,"id":"m"}"#).await;
    let most: Value = serde_json::from_str(&most).unwrap();
    let most = most["response"].as_u64().unwrap();
    assert!((1..=4).contains(&most), "{most} handlers ran at once");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn many_pipelined_requests_with_big_replies_are_all_answered() {
    // More reply bytes than the write high-water mark, all ready at once.
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    // A big frame first, so the server's read buffer grows and later reads take many frames.
    let big = "z".repeat(300 * 1024);
    let reply = exchange(&mut raw, &format!(r#"{{"pattern":"echo","data":"{big}","id":"big"}}"#)).await;
    assert!(reply.ends_with(r#","isDisposed":true,"id":"big"}"#));
    let n = 2000;
    let payload = "y".repeat(1024);
    let frames: String = (0..n)
        .map(|i| frame(&format!(r#"{{"pattern":"echo","data":"{payload}","id":"b{i}"}}"#)))
        .collect();
    raw.send(frames).await;
    for i in 0..n {
        let reply: Value = serde_json::from_str(&raw.recv().await).unwrap();
        assert_eq!(reply["id"], format!("b{i}"));
        assert_eq!(reply["response"].as_str().unwrap().len(), 1024);
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn requests_that_wait_keep_their_payload_and_id_while_the_read_buffer_is_reused() {
    // A small frame's payload is copied off the read buffer, a big one's shared with it:
    // either way a handler that waits must still see its own bytes after the buffer has
    // taken many more frames.
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    let markers = [
        format!("small-{}", "s".repeat(20)),
        format!("big-{}", "b".repeat(40 * 1024)),
    ];
    let mut frames = String::new();
    for (i, marker) in markers.iter().enumerate() {
        frames += &frame(&format!(
            r#"{{"pattern":"wire.slow","data":"{marker}","id":"slow{i}"}}"#
        ));
        for j in 0..500 {
            frames += &frame(&format!(
                r#"{{"pattern":"echo","data":"{i}-{j:0>64}","id":"f{i}-{j}"}}"#
            ));
        }
    }
    raw.send(frames).await;
    let mut slow = std::collections::HashMap::new();
    for _ in 0..1002 {
        let reply: Value = serde_json::from_str(&raw.recv().await).unwrap();
        let id = reply["id"].as_str().unwrap().to_owned();
        let response = reply["response"]
            .as_str()
            .unwrap_or_else(|| panic!("{reply}"))
            .to_owned();
        match id.strip_prefix('f').and_then(|f| f.split_once('-')) {
            Some((i, j)) => assert_eq!(response, format!("{i}-{j:0>64}"), "{id}"),
            None => assert!(slow.insert(id, response).is_none(), "one reply each"),
        }
    }
    assert_eq!(slow.get("slow0"), Some(&markers[0]));
    assert_eq!(slow.get("slow1"), Some(&markers[1]));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_long_ready_stream_is_written_as_it_goes() {
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    let n = 100_000;
    raw.send_frame(&format!(r#"{{"pattern":"count_to","data":{n},"id":"c"}}"#))
        .await;
    for i in 1..n {
        assert_eq!(raw.recv().await, format!(r#"{{"response":{i},"id":"c"}}"#));
    }
    assert_eq!(
        raw.recv().await,
        format!(r#"{{"response":{n},"isDisposed":true,"id":"c"}}"#)
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_event_in_flight_when_the_peer_half_closes_still_runs() {
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    raw.send_frame(r#"{"pattern":"wire.slow_evt","data":"half-close"}"#)
        .await;
    tokio::io::AsyncWriteExt::shutdown(&mut raw.stream).await.unwrap();
    assert!(
        raw.closed_within(Duration::from_secs(2)).await,
        "closed once the event has run"
    );
    assert!(
        FINISHED.lock().unwrap().iter().any(|m| m == "half-close"),
        "ran to its end"
    );
    // And during a graceful shutdown.
    let mut other = Raw::connect(s.local_url()).await;
    other
        .send_frame(r#"{"pattern":"wire.slow_evt","data":"at-shutdown"}"#)
        .await;
    started("at-shutdown").await;
    s.shutdown().await.unwrap();
    assert!(FINISHED.lock().unwrap().iter().any(|m| m == "at-shutdown"), "drained");
}

#[tokio::test]
async fn an_event_to_a_request_handler_runs_it_like_nestjs() {
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    raw.send_frame(r#"{"pattern":"record","data":{"marker":"emitted-to-record"}}"#)
        .await;
    assert_eq!(
        raw.try_recv(Duration::from_millis(200)).await,
        None,
        "no reply to an event"
    );
    let seen = exchange(&mut raw, r#"{"pattern":"events_seen","data":null,"id":"q"}"#).await;
    assert!(seen.contains("emitted-to-record"), "{seen}");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let s = server("").await;
    let url = s.local_url().to_owned();
    let mut raw = Raw::connect(&url).await;
    raw.send_frame(r#"{"pattern":"wire.slow","data":"drained","id":"slow"}"#)
        .await;
    started("drained").await;
    let shutdown = tokio::spawn(s.shutdown());
    assert_eq!(
        raw.recv().await,
        r#"{"response":"drained","isDisposed":true,"id":"slow"}"#
    );
    assert!(raw.closed_within(Duration::from_secs(2)).await, "closed once drained");
    shutdown.await.unwrap().unwrap();
    let addr = url.trim_start_matches("tcp://");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

/// As NestJS reads a packet: the last of duplicate keys wins, and the length prefix is read
/// by `parseInt` (a plus sign is taken).
#[tokio::test]
async fn duplicate_keys_and_a_signed_length_read_as_nestjs_reads_them() {
    let s = server("").await;
    let mut raw = Raw::connect(s.local_url()).await;
    assert_eq!(
        exchange(
            &mut raw,
            r#"{"pattern":"add_point","data":{"x":100,"y":3,"x":2},"id":"d"}"#
        )
        .await,
        r#"{"response":5,"isDisposed":true,"id":"d"}"#
    );
    let body = r#"{"pattern":"echo","data":7,"id":"p"}"#;
    raw.send(format!("+{}#{body}", body.len())).await;
    assert_eq!(raw.recv().await, r#"{"response":7,"isDisposed":true,"id":"p"}"#);
    s.shutdown().await.unwrap();
}

/// Partial frames of all connections together are bounded: past `max_buffered_bytes`, the
/// connection that needs more is closed, and the server goes on serving.
#[tokio::test]
async fn buffered_partial_frames_are_bounded_across_connections() {
    let s = server("?max_buffered_bytes=1000000").await;
    let part = format!("900000#{}", "x".repeat(700_000));
    let mut a = Raw::connect(s.local_url()).await;
    a.send(&part).await;
    // Let the server take in the first before the second comes.
    assert!(!a.closed_within(Duration::from_millis(300)).await, "within the budget");
    let mut b = Raw::connect(s.local_url()).await;
    b.send(&part).await;
    assert!(b.closed_within(Duration::from_secs(10)).await, "past the budget");
    assert!(
        !a.closed_within(Duration::from_millis(200)).await,
        "the first keeps its share"
    );
    drop(a);
    let mut c = Raw::connect(s.local_url()).await;
    assert_eq!(
        exchange(&mut c, r#"{"pattern":"echo","data":1,"id":"c"}"#).await,
        r#"{"response":1,"isDisposed":true,"id":"c"}"#
    );
    s.shutdown().await.unwrap();
}

/// Malformed JSON in `data` closes the connection, as NestJS does, whether the packet takes
/// the hand-split path or serde's (one space apart); valid JSON of the wrong shape is an error
/// reply on both.
#[tokio::test]
async fn malformed_data_closes_the_connection_on_either_path() {
    let s = server("").await;
    for packet in [
        r#"{"pattern":{"cmd":"sum"},"data":[1,,2],"id":"1"}"#,
        r#"{"pattern":{"cmd":"sum"}, "data":[1,,2],"id":"1"}"#,
    ] {
        let mut raw = Raw::connect(s.local_url()).await;
        raw.send_frame(packet).await;
        assert!(raw.closed_within(Duration::from_secs(5)).await, "{packet}");
    }
    for packet in [
        r#"{"pattern":{"cmd":"sum"},"data":"x","id":"1"}"#,
        r#"{"pattern":{"cmd":"sum"}, "data":"x","id":"1"}"#,
    ] {
        let mut raw = Raw::connect(s.local_url()).await;
        let reply = exchange(&mut raw, packet).await;
        assert!(reply.contains("invalid payload for pattern"), "{packet}: {reply}");
    }
    s.shutdown().await.unwrap();
}

/// A peer that stops reading its replies stalls only itself: its event, which later events of
/// the pattern wait for, still runs, so another connection's events are handled.
#[tokio::test]
async fn a_peer_that_stops_reading_does_not_hold_up_others_events() {
    let s = server("").await;
    let mut stuck = Raw::connect(s.local_url()).await;
    let marker = format!("stuck-{}", std::process::id());
    stuck
        .send_frame(&format!(
            r#"{{"pattern":"ordered_evt","data":{{"marker":"{marker}-a","seq":0}}}}"#
        ))
        .await;
    // Eight 1 MiB replies it never reads: the server's writes to it block. (The pause lets
    // them fill the socket first; were it too short, the test would pass without the stall.)
    let big = "x".repeat(1 << 20);
    for i in 0..8 {
        stuck
            .send_frame(&format!(r#"{{"pattern":"echo","data":"{big}","id":"{i}"}}"#))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = Client::connect(s.local_url()).await.unwrap();
    let other = format!("{marker}-b");
    client
        .emit_raw("ordered_evt", json!({"marker": other, "seq": 0}))
        .await
        .unwrap();
    let (seqs, _) = common::conformance::await_order(&client, &other, 1).await;
    assert_eq!(seqs.get("").map(Vec::len), Some(1), "the other connection's event ran");
    drop(stuck);
    s.shutdown().await.unwrap();
}

/// The client's frame cap holds against a server: a reply announced longer than
/// `max_frame_len`, or longer in bytes, fails the call at once as invalid data (nothing
/// buffered, no wait for the deadline), and the next call reconnects. A reply just under the
/// cap is read.
#[tokio::test]
async fn the_client_caps_the_frames_a_server_sends() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut raw = Raw::from_stream(stream);
                while let Some(body) = raw.try_recv(Duration::from_secs(30)).await {
                    let packet: Value = serde_json::from_str(&body).unwrap();
                    let id = packet["id"].as_str().unwrap().to_owned();
                    let reply = |v: Value| {
                        frame(&json!({"err": null, "response": v, "isDisposed": true, "id": id}).to_string())
                    };
                    match packet["data"].as_str().unwrap() {
                        // The prefix alone, and a body that never comes.
                        "announced" => raw.send("5000#{\"err\":null,").await,
                        // 600 UTF-16 units, 1,800 bytes.
                        "wide" => raw.send(reply(json!("€".repeat(600)))).await,
                        "fits" => raw.send(reply(json!("x".repeat(900)))).await,
                        other => raw.send(reply(json!(other))).await,
                    }
                }
            });
        }
    });
    let c = Client::builder(&format!("tcp://{addr}?max_frame_len=1024&pool=1"))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    let fits: String = c.send_raw("echo", "fits").await.unwrap();
    assert_eq!(fits.len(), 900, "a reply under the cap is read");
    for over in ["announced", "wide"] {
        let err = c.send_raw::<Value>("echo", over).await.unwrap_err();
        assert!(
            matches!(&err, switchboard::Error::InvalidData { reason, .. } if reason.contains("invalid frame")),
            "{over}: {err:?}"
        );
        let again: String = c.send_raw("echo", "again").await.unwrap();
        assert_eq!(again, "again", "after {over}: the next call reconnects");
    }
}
