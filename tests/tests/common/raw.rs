//! A raw TCP peer that writes bytes by hand and reads NestJS frames, for checking exactly
//! what the server puts on the wire.

#![allow(dead_code)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// `<UTF-16 length>#<body>`.
pub fn frame(body: &str) -> String {
    format!("{}#{body}", body.encode_utf16().count())
}

impl Raw {
    pub async fn connect(url: &str) -> Raw {
        let addr = url.split_once("://").map_or(url, |(_, a)| a);
        let stream = TcpStream::connect(addr).await.expect("connect to the test server");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// A peer on an accepted connection (a hand-written server).
    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.expect("write");
    }

    pub async fn send_frame(&mut self, body: &str) {
        self.send(frame(body)).await;
    }

    /// The next frame's body, as text; panics after 5 s or on EOF.
    pub async fn recv(&mut self) -> String {
        self.try_recv(Duration::from_secs(5))
            .await
            .expect("a frame from the server")
    }

    /// The next frame, or `None` on EOF or when nothing comes within `wait`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(body) = self.take_frame() {
                return Some(body);
            }
            let mut chunk = [0u8; 65536];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn take_frame(&mut self) -> Option<String> {
        let hash = self.buf.iter().position(|&b| b == b'#')?;
        let len: usize = std::str::from_utf8(&self.buf[..hash])
            .ok()?
            .parse()
            .expect("numeric length prefix");
        let text = std::str::from_utf8(&self.buf[hash + 1..]).ok().or_else(|| {
            // Possibly a partial multibyte character at the end: decode the valid prefix.
            let valid = std::str::from_utf8(&self.buf[hash + 1..]).unwrap_err().valid_up_to();
            std::str::from_utf8(&self.buf[hash + 1..hash + 1 + valid]).ok()
        })?;
        let mut units = 0;
        let mut end = None;
        for (i, c) in text.char_indices() {
            if units == len {
                end = Some(i);
                break;
            }
            units += c.len_utf16();
        }
        let end = match end {
            Some(e) => e,
            None if units == len => text.len(),
            None => return None,
        };
        let body = text[..end].to_owned();
        self.buf.drain(..hash + 1 + end);
        Some(body)
    }

    /// True when the server closes the connection within `wait` (reading and dropping
    /// anything it sends first).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}
