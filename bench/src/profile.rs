//! `--profile bare|switchboard --requests N`: a fixed, single-threaded workload for
//! instruction-count profiling (`valgrind --tool=callgrind`), where wall-clock numbers mean
//! nothing. One current-thread runtime runs the server and a client that writes 64
//! pipelined requests at a time and reads their 64 replies, so the work per request (and the
//! batching) is the same in every run.

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Kind;

const BATCH: usize = 64;

pub fn run(kind: Kind, requests: usize) -> anyhow::Result<()> {
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
            let body = format!(r#"{{"pattern":{{"cmd":"add"}},"data":{{"a":{i},"b":2}},"id":"{i:021x}"}}"#);
            batch.extend_from_slice(format!("{}#{body}", body.len()).as_bytes());
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut done = 0;
        while done < requests {
            stream.write_all(&batch).await?;
            // Each reply has two `}`: count them until the whole batch is answered.
            let mut braces = 0;
            while braces < 2 * BATCH {
                let n = stream.read(&mut buf).await?;
                anyhow::ensure!(n > 0, "server closed the connection");
                braces += buf[..n].iter().filter(|&&b| b == b'}').count();
            }
            done += BATCH;
        }
        println!("{done} requests");
        Ok(())
    })
}
