//! The ceiling: the fastest reasonable hand-written NestJS-TCP `add` server.
//!
//! It does the work any correct server must do — split frames by UTF-16 length, parse
//! each body as JSON into a typed struct, check the pattern, compute, write the framed
//! reply with the id echoed verbatim — and nothing else: one task per connection, no
//! handler registry, no boxing, one write per read. It is what Switchboard's TCP server
//! is measured against, so it must not cheat (no skipping the JSON parse, no canned replies).

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::frame::{next_frame, put_frame, put_int};

/// The pattern this server answers, in the form a NestJS client writes it.
const ADD_PATTERN: &str = r#"{"cmd":"add"}"#;
const NO_HANDLER: &str = "There is no matching message handler defined in the remote service.";

/// A request, borrowed from the frame: pattern and id stay raw (the id is echoed as is).
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    pattern: &'a RawValue,
    data: AddRequest,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AddRequest {
    a: i64,
    b: i64,
}

/// Serves until the process exits; prints `port=<n>` on stdout once listening.
pub fn run(threads: usize) -> anyhow::Result<()> {
    let rt = crate::server_runtime(threads)?;
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind 127.0.0.1:0")?;
        crate::announce_port(listener.local_addr()?.port());
        loop {
            let (stream, _) = listener.accept().await.context("accept")?;
            tokio::spawn(async move {
                if let Err(e) = connection(stream).await {
                    eprintln!("ceiling: connection closed: {e:#}");
                }
            });
        }
    })
}

pub(crate) async fn connection(mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut body: Vec<u8> = Vec::with_capacity(256);
    loop {
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(16 * 1024);
        }
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Ok(());
        }
        let mut used = 0;
        while let Some((range, len)) = next_frame(&rbuf[used..])? {
            let frame = &rbuf[used + range.start..used + range.end];
            answer(frame, &mut body, &mut wbuf)?;
            used += len;
        }
        // Keep an incomplete trailing frame for the next read.
        rbuf.drain(..used);
        // All replies to one read go out in one write.
        if !wbuf.is_empty() {
            stream.write_all(&wbuf).await?;
            wbuf.clear();
        }
    }
}

/// Parses one request and appends its framed reply to `out`.
fn answer(frame: &[u8], body: &mut Vec<u8>, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let req: Request<'_> = serde_json::from_slice(frame)
        .with_context(|| format!("invalid request {:?}", String::from_utf8_lossy(frame)))?;
    let Some(id) = req.id else {
        return Ok(()); // an event: nothing to answer
    };
    body.clear();
    if req.pattern.get() == ADD_PATTERN {
        body.extend_from_slice(br#"{"response":{"result":"#);
        put_int(body, req.data.a.wrapping_add(req.data.b));
        body.extend_from_slice(br#"},"isDisposed":true,"id":"#);
        body.extend_from_slice(id.get().as_bytes());
        body.push(b'}');
    } else {
        body.extend_from_slice(br#"{"id":"#);
        body.extend_from_slice(id.get().as_bytes());
        body.extend_from_slice(br#","status":"error","err":""#);
        body.extend_from_slice(NO_HANDLER.as_bytes());
        body.extend_from_slice(br#""}"#);
    }
    put_frame(out, body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_like_nestjs() {
        let (mut body, mut out) = (Vec::new(), Vec::new());
        answer(
            br#"{"pattern":{"cmd":"add"},"data":{"a":1,"b":2},"id":"x1"}"#,
            &mut body,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"53#{"response":{"result":3},"isDisposed":true,"id":"x1"}"#
        );
        out.clear();
        answer(
            br#"{"pattern":"nope","data":{"a":1,"b":2},"id":7}"#,
            &mut body,
            &mut out,
        )
        .unwrap();
        assert!(String::from_utf8_lossy(&out).contains(r#"{"id":7,"status":"error""#));
        // NestJS 12's `metadata` (the `+sb` and `+meta` scenarios) is skipped, not refused.
        out.clear();
        answer(
            br#"{"pattern":{"cmd":"add"},"data":{"a":1,"b":2},"metadata":{"sb-timeout-ms":"5000"},"id":"x2"}"#,
            &mut body,
            &mut out,
        )
        .unwrap();
        assert!(String::from_utf8_lossy(&out).ends_with(r#"{"response":{"result":3},"isDisposed":true,"id":"x2"}"#));
    }
}
