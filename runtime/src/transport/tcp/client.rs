//! The TCP client: a small pool of connections, each multiplexing many requests by id.
//!
//! Callers encode their own frames and hand them to the connection's writer task, which
//! batches whatever is queued into one write. A reader task routes reply packets to the
//! waiting calls. A dropped connection fails its calls at once; the next call reconnects,
//! with exponential backoff between failed attempts. Events all travel on the first
//! connection, so that a server reads them in the order they were sent.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, FutureExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::frame::{FrameDecoder, encode_frame};
use super::{client_options, connect_socket};
use crate::error::{Error, Result};
use crate::service::{Outbound, Replies, ReplyItem};
use crate::transport::backoff::Backoff;
use crate::transport::{ClientOptions, ClientTransport, Endpoint};
use crate::wire::msgpack::{self, Codec, frame};
use crate::wire::nestjs::packet::encode_request;
use crate::wire::nestjs::pending::{CallRx, Pending};

/// Frames queued for one connection's writer before callers wait.
const WRITE_QUEUE: usize = 1024;
/// How long closing waits for what was queued to be written.
const FLUSH_ON_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);

/// The client side of the TCP transport.
pub struct TcpClient {
    url: String,
    addr: String,
    opts: ClientOptions,
    /// NestJS's JSON frames, or Switchboard's msgpack ones after a hello.
    codec: Codec,
    slots: Vec<Arc<Slot>>,
    next: AtomicUsize,
    #[cfg(feature = "tls")]
    tls: Option<super::tls::Connector>,
}

impl std::fmt::Debug for TcpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpClient")
            .field("url", &self.url)
            .field("pool", &self.slots.len())
            .finish()
    }
}

/// One pooled connection, (re)connected on demand.
#[derive(Default)]
struct Slot {
    current: RwLock<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<Backoff>,
    /// Set when a connection of this slot ended with frames it never wrote.
    lost: Arc<AtomicBool>,
}

impl TcpClient {
    /// A client for `tcp://host:port`; connects lazily.
    pub(crate) fn new(ep: &Endpoint, defaults: &ClientOptions, codec: Codec) -> Result<Self> {
        let opts = client_options(ep, defaults)?;
        Ok(TcpClient {
            codec,
            url: ep.redacted(),
            addr: ep.authority.clone(),
            slots: (0..opts.pool_size).map(|_| Arc::default()).collect(),
            opts,
            next: AtomicUsize::new(0),
            #[cfg(feature = "tls")]
            tls: if ep.scheme == "tls" {
                Some(super::tls::connector(ep)?)
            } else {
                None
            },
        })
    }

    /// The next connection of the pool, for a request.
    async fn conn(&self) -> Result<Arc<Conn>> {
        self.conn_at(self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len())
            .await
    }

    /// The pool's `i`th connection, (re)connected if need be.
    async fn conn_at(&self, i: usize) -> Result<Arc<Conn>> {
        let slot = &self.slots[i];
        if let Some(conn) = slot
            .current
            .read()
            .expect("slot lock")
            .as_ref()
            .filter(|c| !c.is_closed())
        {
            return Ok(conn.clone());
        }
        let mut backoff = slot.connecting.lock().await;
        // Someone else may have connected while we waited for the lock.
        if let Some(conn) = slot
            .current
            .read()
            .expect("slot lock")
            .as_ref()
            .filter(|c| !c.is_closed())
        {
            return Ok(conn.clone());
        }
        if let Some(reason) = backoff.wait_reason() {
            return Err(self.connect_error(reason));
        }
        match self.open(slot).await {
            Ok(conn) => {
                if backoff.succeeded() {
                    crate::signal::reconnected("tcp");
                }
                *slot.current.write().expect("slot lock") = Some(conn.clone());
                Ok(conn)
            }
            Err(reason) => Err(self.connect_error(backoff.failed(reason))),
        }
    }

    fn connect_error(&self, reason: String) -> Error {
        Error::Connect {
            addr: self.url.clone(),
            reason,
        }
    }

    async fn open(&self, slot: &Arc<Slot>) -> std::result::Result<Arc<Conn>, String> {
        let stream = connect_socket(&self.addr, self.opts.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let mut stream = tls.connect(stream, self.opts.connect_timeout).await?;
            self.hello(&mut stream).await?;
            let (r, w) = tokio::io::split(stream);
            return Ok(self.start(r, w, slot));
        }
        let mut stream = stream;
        self.hello(&mut stream).await?;
        let (r, w) = stream.into_split();
        Ok(self.start(r, w, slot))
    }

    /// A msgpack connection starts with Switchboard's hello, which a Switchboard server
    /// answers in kind; a NestJS server never does (it waits for the `#` of a length
    /// prefix, or closes the connection), so no answer within the connect timeout is an error.
    async fn hello<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: &mut S) -> std::result::Result<(), String> {
        if self.codec != Codec::MsgPack {
            return Ok(());
        }
        let timeout = self.opts.connect_timeout;
        let exchange = async {
            stream.write_all(&frame::HELLO).await?;
            // TLS holds what is written until flushed.
            stream.flush().await?;
            let mut answer = [0u8; frame::HELLO.len()];
            stream.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let why = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) if answer == frame::HELLO => return Ok(()),
            Ok(Ok(_)) => "it answered something else".to_owned(),
            Ok(Err(e)) => format!("the connection ended ({e})"),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        Err(format!(
            "the server did not take codec=msgpack ({why}): only a Switchboard server speaks it; \
             a NestJS server (or another peer) reads JSON only, so drop `codec=msgpack` from this URL"
        ))
    }

    fn start<R, W>(&self, r: R, w: W, slot: &Arc<Slot>) -> Arc<Conn>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let conn = Arc::new(Conn {
            url: self.url.clone(),
            tx,
            pending: Pending::new(self.url.clone()),
            closed: AtomicBool::new(false),
            close: watch::Sender::new(false),
            written: watch::Sender::new(false),
            markers: tokio::sync::Mutex::new(0),
            flushed: watch::Sender::new(0),
            lost: slot.lost.clone(),
        });
        tokio::spawn(writer(w, rx, conn.clone()));
        tokio::spawn(reader(
            r,
            conn.clone(),
            Arc::downgrade(slot),
            self.opts.max_frame_len,
            self.codec,
        ));
        conn
    }
}

impl ClientTransport for TcpClient {
    fn connect(&self) -> BoxFuture<'_, Result<()>> {
        self.conn().map(|c| c.map(drop)).boxed()
    }

    fn request(self: Arc<Self>, mut msg: Outbound) -> BoxFuture<'static, Result<Replies>> {
        async move {
            if self.codec == Codec::MsgPack {
                let data = packed_payload(&mut msg)?;
                let conn = self.conn().await?;
                let (id, rx) = conn.register(msg.route.clone())?;
                let mut frame = Vec::with_capacity(data.len() + msg.pattern.len() + 64);
                frame::encode_request(&mut frame, Some(&id), &msg.pattern, &msg.headers, &data);
                conn.send(frame).await?;
                return Replies::first_of(rx).await;
            }
            let conn = self.conn().await?;
            let (id, rx) = conn.register(msg.route.clone())?;
            let mut frame = Vec::with_capacity(msg.payload.len() + msg.pattern.len() + 64);
            let mut body = Vec::with_capacity(msg.payload.len() + msg.pattern.len() + 48);
            encode_request(
                &mut body,
                &msg.pattern,
                &msg.payload,
                msg.headers.iter(),
                Some(id.as_str()),
            );
            encode_frame(&mut frame, &body);
            conn.send(frame).await?;
            Replies::first_of(rx).await
        }
        .boxed()
    }

    fn emit(self: Arc<Self>, mut msg: Outbound) -> BoxFuture<'static, Result<()>> {
        async move {
            // Events all go on one connection, so the server reads them in the order sent.
            if self.codec == Codec::MsgPack {
                let data = packed_payload(&mut msg)?;
                let conn = self.conn_at(0).await?;
                let mut frame = Vec::with_capacity(data.len() + msg.pattern.len() + 32);
                frame::encode_request(&mut frame, None, &msg.pattern, &msg.headers, &data);
                return conn.send(frame).await;
            }
            let conn = self.conn_at(0).await?;
            let mut body = Vec::with_capacity(msg.payload.len() + msg.pattern.len() + 32);
            encode_request(&mut body, &msg.pattern, &msg.payload, msg.headers.iter(), None);
            let mut frame = Vec::with_capacity(body.len() + 12);
            encode_frame(&mut frame, &body);
            conn.send(frame).await
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            let slot = &self.slots[0];
            let conn = slot.current.read().expect("slot lock").clone();
            if let Some(conn) = conn {
                conn.flush().await?;
            }
            if slot.lost.swap(false, Ordering::AcqRel) {
                return Err(Error::ConnectionClosed { addr: self.url.clone() });
            }
            Ok(())
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let mut closing = Vec::new();
            for slot in &self.slots {
                if let Some(conn) = slot.current.write().expect("slot lock").take() {
                    conn.shut(|| Error::Closed);
                    closing.push(conn);
                }
            }
            // Returns once what was sent is written (events emitted just before included).
            for conn in closing {
                let mut written = conn.written.subscribe();
                let _ = tokio::time::timeout(FLUSH_ON_CLOSE, written.wait_for(|&w| w)).await;
            }
        }
        .boxed()
    }
}

impl Drop for TcpClient {
    fn drop(&mut self) {
        for slot in &self.slots {
            if let Some(conn) = slot.current.write().expect("slot lock").take() {
                conn.shut(|| Error::Closed);
            }
        }
    }
}

struct Conn {
    url: String,
    tx: mpsc::Sender<Vec<u8>>,
    pending: Arc<Pending>,
    closed: AtomicBool,
    /// Fired once when the connection is shut, so both tasks stop.
    close: watch::Sender<bool>,
    /// Raised by the writer once it has written what was queued and closed its half.
    written: watch::Sender<bool>,
    /// Flush markers (empty frames) queued, one flusher at a time so they count in order.
    markers: tokio::sync::Mutex<u64>,
    /// Flush markers the writer has written past.
    flushed: watch::Sender<u64>,
    lost: Arc<AtomicBool>,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn register(&self, route: Cow<'static, str>) -> Result<(String, CallRx)> {
        self.pending.register(route)
    }

    async fn send(&self, frame: Vec<u8>) -> Result<()> {
        self.tx
            .send(frame)
            .await
            .map_err(|_| Error::ConnectionClosed { addr: self.url.clone() })
    }

    /// Waits until everything queued before is written to the socket.
    async fn flush(&self) -> Result<()> {
        let closed = || Error::ConnectionClosed { addr: self.url.clone() };
        let mut flushed = self.flushed.subscribe();
        let marker = {
            let mut markers = self.markers.lock().await;
            self.send(Vec::new()).await?;
            *markers += 1;
            *markers
        };
        let mut shut = self.close.subscribe();
        tokio::select! {
            done = flushed.wait_for(|&f| f >= marker) => done.map(drop).map_err(|_| closed()),
            _ = shut.wait_for(|&c| c) => Err(closed()),
        }
    }

    /// Marks the connection dead and fails every call in flight.
    fn shut(&self, error: impl Fn() -> Error) {
        self.closed.store(true, Ordering::Release);
        self.pending.close(error);
        self.close.send_replace(true);
    }

    /// Routes one reply packet to its call.
    fn deliver(&self, body: &Bytes) {
        self.pending.deliver(body);
    }

    /// Routes one msgpack reply frame to its call; a frame that is not one is skipped.
    fn deliver_packed(&self, body: &Bytes) {
        let (id, tag, value) = match frame::parse_reply(body) {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "ignoring a reply frame");
                return;
            }
        };
        match tag {
            frame::Tag::Value | frame::Tag::Last => {
                let last = tag == frame::Tag::Last;
                self.pending.push(id, Ok(ReplyItem::MsgPack(body.slice(value))), last);
            }
            frame::Tag::Done => self.pending.finish(id),
            frame::Tag::NoHandler => self.pending.fail(id, crate::error::RpcError::no_handler()),
            frame::Tag::Error => match msgpack::from_msgpack::<serde_json::Value>(&body[value]) {
                Ok(err) => self.pending.fail(id, crate::error::RpcError::from_value(err)),
                Err(e) => self.pending.push(
                    id,
                    Err(Error::InvalidData {
                        peer: self.url.clone(),
                        reason: format!("an error reply that is not MessagePack: {e}"),
                    }),
                    true,
                ),
            },
        }
    }
}

/// The payload of `msg` as MessagePack: straight from the value when the call carries one,
/// converted from its JSON otherwise (a raw call, an event, a call through layers).
fn packed_payload(msg: &mut Outbound) -> Result<Bytes> {
    let packed = match msg.take_local() {
        Some(value) => value.to_msgpack(),
        None => msgpack::json_to_msgpack(&msg.payload),
    };
    packed.map_err(|source| Error::MsgPack {
        context: format!("cannot encode the payload for pattern {}", msg.route),
        source,
    })
}

async fn writer<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Vec<u8>>, conn: Arc<Conn>) {
    let mut batch = Vec::with_capacity(64);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut closed = conn.close.subscribe();
    // False once a write failed or was cut off: nothing more can go on this socket.
    let mut writable = true;
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, 256) => n,
            _ = closed.wait_for(|&c| c) => 0,
        };
        if n == 0 || conn.is_closed() {
            break;
        }
        let mut markers = 0;
        for frame in batch.drain(..) {
            markers += frame.is_empty() as u64;
            buf.extend_from_slice(&frame);
        }
        let written = tokio::select! {
            written = w.write_all(&buf) => written,
            // A peer that does not read must not keep a closed client's socket open.
            _ = closed.wait_for(|&c| c) => {
                writable = false;
                break;
            }
        };
        if let Err(e) = written {
            tracing::debug!(url = %conn.url, error = %e, "write failed");
            conn.shut(|| Error::ConnectionClosed { addr: conn.url.clone() });
            writable = false;
            break;
        }
        if markers > 0 {
            conn.flushed.send_modify(|f| *f += markers);
        }
        buf.clear();
    }
    if !writable || !rx.is_empty() || !batch.is_empty() {
        // Events that resolved may not have gone out: the next flush says so.
        conn.lost.store(true, Ordering::Release);
    }
    if writable {
        // Closing: what was queued before still goes out (an emit that resolved must reach
        // the server), within a bound.
        for frame in batch.drain(..) {
            buf.extend_from_slice(&frame);
        }
        while let Ok(frame) = rx.try_recv() {
            buf.extend_from_slice(&frame);
        }
        if !buf.is_empty() {
            let _ = tokio::time::timeout(FLUSH_ON_CLOSE, w.write_all(&buf)).await;
        }
    }
    let _ = tokio::time::timeout(FLUSH_ON_CLOSE, w.shutdown()).await;
    conn.written.send_replace(true);
}

/// Shuts the connection and frees its slot however the reader ends, a panic included.
struct ReaderGuard {
    conn: Arc<Conn>,
    slot: std::sync::Weak<Slot>,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.conn.shut(|| Error::ConnectionClosed {
            addr: self.conn.url.clone(),
        });
        forget(&self.slot, &self.conn);
    }
}

async fn reader<R: AsyncRead + Unpin>(
    mut r: R,
    conn: Arc<Conn>,
    slot: std::sync::Weak<Slot>,
    max_frame_len: usize,
    codec: Codec,
) {
    let _guard = ReaderGuard {
        conn: conn.clone(),
        slot: slot.clone(),
    };
    let mut decoder = Frames::new(codec, max_frame_len);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut closed = conn.close.subscribe();
    let reason = loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let read = tokio::select! {
            read = r.read_buf(&mut buf) => read,
            _ = closed.wait_for(|&c| c) => break None,
        };
        match read {
            Ok(0) => break Some("closed by the server".to_owned()),
            Ok(_) => loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(body)) if codec == Codec::MsgPack => conn.deliver_packed(&body),
                    Ok(Some(body)) => conn.deliver(&body),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(url = %conn.url, error = %e, "invalid frame from server; closing");
                        conn.shut(|| Error::InvalidData {
                            peer: conn.url.clone(),
                            reason: format!("invalid frame: {e}"),
                        });
                        return forget(&slot, &conn);
                    }
                }
            },
            Err(e) => break Some(e.to_string()),
        }
    };
    if let Some(reason) = reason {
        tracing::debug!(url = %conn.url, %reason, "connection lost");
    }
    conn.shut(|| Error::ConnectionClosed { addr: conn.url.clone() });
    forget(&slot, &conn);
}

/// A connection's frame decoder, for its codec.
enum Frames {
    Json(FrameDecoder),
    Packed(frame::FrameDecoder),
}

impl Frames {
    fn new(codec: Codec, max_frame_len: usize) -> Self {
        match codec {
            Codec::Json => Frames::Json(FrameDecoder::new(max_frame_len)),
            Codec::MsgPack => Frames::Packed(frame::FrameDecoder::new(max_frame_len)),
        }
    }

    fn decode(&mut self, buf: &mut BytesMut) -> std::result::Result<Option<Bytes>, String> {
        match self {
            Frames::Json(d) => d.decode(buf).map_err(|e| e.to_string()),
            Frames::Packed(d) => d.decode(buf).map_err(|e| e.to_string()),
        }
    }
}

/// Clears the slot so the next call reconnects.
fn forget(slot: &std::sync::Weak<Slot>, conn: &Arc<Conn>) {
    if let Some(slot) = slot.upgrade() {
        let mut current = slot.current.write().expect("slot lock");
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *current = None;
        }
    }
}
