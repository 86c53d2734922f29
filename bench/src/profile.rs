//! `--profile bare|switchboard --requests N`: a fixed, single-threaded workload for
//! instruction-count profiling (`valgrind --tool=callgrind`), where wall-clock numbers mean
//! nothing. One current-thread runtime runs the server and a client that writes 64
//! pipelined requests at a time and reads their 64 replies, so the work per request (and the
//! batching) is the same in every run. Every reply is checked against the bytes expected.
//! `--profile-meta` sends NestJS 12 packets with a `metadata` trace context.

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Kind;
use crate::frame::next_frame;

const BATCH: usize = 64;

pub fn run(kind: Kind, requests: usize, meta: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let port = match kind {
            Kind::Ceiling => {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let port = listener.local_addr()?.port();
                tokio::spawn(async move {
                    if let Ok((stream, _)) = listener.accept().await {
                        let _ = crate::ceiling::connection(stream).await;
                    }
                });
                port
            }
            _ => {
                let server = crate::serve::start(kind).await?;
                let port = server.local_url().rsplit(':').next().unwrap_or_default().parse()?;
                std::mem::forget(server);
                port
            }
        };
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.context("connect")?;
        stream.set_nodelay(true)?;
        let mut batch = Vec::new();
        for i in 0..BATCH {
            // With `meta`, as a NestJS 12 client with a tracing hook writes it.
            let metadata = match meta {
                true => r#","metadata":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#,
                false => "",
            };
            let body = format!(r#"{{"pattern":{{"cmd":"add"}},"data":{{"a":{i},"b":2}}{metadata},"id":"{i:021x}"}}"#);
            batch.extend_from_slice(format!("{}#{body}", body.len()).as_bytes());
        }
        // Every reply is checked: the exact bytes NestJS would write for its request.
        let expected: Vec<Vec<u8>> = (0..BATCH)
            .map(|i| {
                format!(
                    r#"{{"response":{{"result":{}}},"isDisposed":true,"id":"{i:021x}"}}"#,
                    i + 2
                )
                .into_bytes()
            })
            .collect();
        let mut rbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut done = 0;
        while done < requests {
            stream.write_all(&batch).await?;
            let mut seen = [false; BATCH];
            let mut answered = 0;
            while answered < BATCH {
                rbuf.reserve(16 * 1024);
                let n = stream.read_buf(&mut rbuf).await?;
                anyhow::ensure!(n > 0, "server closed the connection");
                let mut used = 0;
                while let Some((range, len)) = next_frame(&rbuf[used..])? {
                    let body = &rbuf[used + range.start..used + range.end];
                    let i = reply_index(body).filter(|&i| i < BATCH && !seen[i] && expected[i] == body);
                    let Some(i) = i else {
                        anyhow::bail!("wrong or repeated reply: {}", String::from_utf8_lossy(body));
                    };
                    seen[i] = true;
                    answered += 1;
                    used += len;
                }
                rbuf.drain(..used);
            }
            done += BATCH;
        }
        println!("{done} requests");
        Ok(())
    })
}

/// The request index a reply's id (21 hex digits at its end) stands for.
fn reply_index(body: &[u8]) -> Option<usize> {
    let id = body.strip_suffix(b"\"}")?;
    let hex = std::str::from_utf8(id.get(id.len().checked_sub(21)?..)?).ok()?;
    usize::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_ids_name_their_request() {
        let body = format!(r#"{{"response":{{"result":9}},"isDisposed":true,"id":"{:021x}"}}"#, 7);
        assert_eq!(reply_index(body.as_bytes()), Some(7));
        assert_eq!(reply_index(b"{}"), None);
        assert_eq!(reply_index(br#"{"id":"zzzzzzzzzzzzzzzzzzzzz"}"#), None);
    }
}
