//! The TCP server: accepts connections and runs one task per connection that reads frames,
//! dispatches them, and writes replies, batching writes and bounding in-flight work.
//!
//! A connection speaks NestJS's JSON frames, or Switchboard's msgpack ones when it opens with
//! their hello (`wire::msgpack`): told apart by its first byte, so one port serves both.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::FutureExt;
use futures_util::stream::{SelectAll, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::budget::{Budget, Share};
use super::frame::{FrameDecoder, encode_frame, utf16_len, write_length};
use super::gate::Gated;
use super::{ServerOptions, TcpListener};
use crate::error::Result;
use crate::service::{Address, Arrival, Context, Kind, Payload, ReadTogether, Reply, Request, Router, RouterFuture};
use crate::transport::Shutdown;
use crate::wire::msgpack::{self, Codec, frame};
use crate::wire::nestjs::packet::{Outgoing, Packet, PacketError};
use crate::wire::nestjs::steps::{Step, Steps};

pub(super) async fn serve(l: TcpListener, router: Router, mut shutdown: Shutdown) -> Result<()> {
    let mut conns = JoinSet::new();
    let budget = Budget::new(l.opts.max_buffered_bytes);
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = l.listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if conns.len() >= l.opts.max_connections {
                        if let Some(held_back) = REFUSED.allow() {
                            tracing::warn!(%peer, max_connections = l.opts.max_connections, held_back, "refusing a connection: the server has as many as it takes");
                        }
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let _ = crate::transport::keepalive::server(&stream);
                    let (router, opts, shutdown) = (router.clone(), l.opts.clone(), shutdown.clone());
                    let share = Share::new(budget.clone());
                    #[cfg(feature = "tls")]
                    if let Some(acceptor) = l.tls.clone() {
                        conns.spawn(async move {
                            match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    let (r, w) = tokio::io::split(tls);
                                    connection(r, w, peer, router, opts, shutdown, share).await
                                }
                                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                            }
                        });
                        continue;
                    }
                    let (r, w) = stream.into_split();
                    conns.spawn(connection(r, w, peer, router, opts, shutdown, share));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Stop accepting; each connection stops reading, finishes its in-flight requests, and closes.
    drop(l);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Warnings about refused connections, at most this many a second.
static REFUSED: crate::text::Throttle = crate::text::Throttle::new(10);
/// Warnings about connections closed for want of buffer budget, at most this many a second.
static OVER_BUDGET: crate::text::Throttle = crate::text::Throttle::new(10);
/// Warnings about invalid msgpack packets, at most this many a second.
static INVALID: crate::text::Throttle = crate::text::Throttle::new(10);

/// Work in flight on a connection: a request whose handler has not answered yet, a reply
/// being streamed, or an event's listeners.
enum Work {
    Answering {
        id: Bytes,
        reply: RouterFuture,
        codec: Codec,
    },
    Replying {
        id: Bytes,
        steps: Steps,
    },
    Event(EventTask),
}

/// An event that waits (for its turn, or in its listener) runs as a task of its own: a peer
/// that stops reading its replies stalls its own connection, and so would hold up every
/// later event of the pattern, on every connection, if its events ran on it. Still counted
/// in the connection's `max_in_flight`; cancelled if the connection is dropped.
struct EventTask(tokio::task::JoinHandle<Reply>);

impl Drop for EventTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Stream for Work {
    type Item = (Bytes, Step);

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this {
                Work::Answering { id, reply, codec } => {
                    let reply = std::task::ready!(reply.poll_unpin(cx));
                    let id = std::mem::take(id);
                    let steps = match codec {
                        Codec::Json => Steps::new(reply),
                        Codec::MsgPack => Steps::packed(reply),
                    };
                    *this = Work::Replying { id, steps };
                }
                Work::Replying { id, steps } => {
                    return steps.poll_step(cx).map(|step| step.map(|step| (id.clone(), step)));
                }
                Work::Event(run) => return run.0.poll_unpin(cx).map(|_| None),
            }
        }
    }
}

/// Why a connection is being closed by us.
#[derive(Debug, thiserror::Error)]
enum Close {
    #[error(transparent)]
    Frame(#[from] super::frame::FrameError),
    #[error("could not parse JSON: {0}")]
    Json(serde_json::Error),
    #[error("the pattern is not JSON")]
    Pattern,
    #[error(transparent)]
    Packed(#[from] frame::FrameError),
    #[error("the connection opened with neither a NestJS frame nor Switchboard's msgpack hello")]
    Hello,
}

struct Conn {
    peer: SocketAddr,
    router: Router,
    opts: ServerOptions,
    decoder: FrameDecoder,
    /// The connection's codec, once its first bytes have told (`None` before).
    codec: Option<Codec>,
    packed: frame::FrameDecoder,
    rbuf: BytesMut,
    /// Small frames' payloads, copied ([`copy_payload`]).
    payloads: BytesMut,
    wbuf: Vec<u8>,
    scratch: Vec<u8>,
    inflight: SelectAll<Work>,
    /// Complete frames may still be in `rbuf`, not dispatched for lack of room.
    backlog: bool,
    /// Frames taken off `rbuf` so far: the deadline of a partial frame is armed once per frame.
    frames: u64,
    /// When the last read came in (metrics on): the arrival of every message it brought.
    arrival: Option<Arrival>,
    /// The clock as the frames being dispatched are, read once for all their deadlines.
    now: Option<Instant>,
}

/// Replies buffered before they are written out, at most (one reply may exceed it).
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// The block small payloads are copied into: small, so that a request that waits holds
/// little besides its own bytes (at most `max_in_flight` blocks a connection).
const PAYLOAD_BLOCK: usize = 2 * 1024;
/// Frames longer than this are taken off the read buffer and their payloads shared with it;
/// shorter ones' payloads are copied.
const SHARED_OVER: usize = 16 * 1024;

async fn connection<R, W>(
    mut rd: R,
    mut wr: W,
    peer: SocketAddr,
    router: Router,
    opts: ServerOptions,
    mut shutdown: Shutdown,
    mut share: Share,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tracing::debug!(%peer, "connection opened");
    let mut c = Conn {
        peer,
        router,
        decoder: FrameDecoder::new(opts.max_frame_len),
        codec: None,
        packed: frame::FrameDecoder::new(opts.max_frame_len),
        opts,
        rbuf: BytesMut::with_capacity(16 * 1024),
        payloads: BytesMut::with_capacity(PAYLOAD_BLOCK),
        wbuf: Vec::with_capacity(16 * 1024),
        scratch: Vec::with_capacity(1024),
        inflight: SelectAll::new(),
        backlog: false,
        frames: 0,
        arrival: None,
        now: None,
    };
    let mut reading = !shutdown.is_down();
    // A partial frame must arrive whole by this deadline, counted from its first byte (a
    // peer trickling a byte at a time cannot hold its buffer forever).
    let whole = tokio::time::sleep(c.opts.incomplete_timeout);
    tokio::pin!(whole);
    let mut armed_for: Option<u64> = None;
    // An idle connection is closed. Reads and finished work (a long request is activity too)
    // are counted, not timed, and the timer looks at the count every eighth of the timeout:
    // a connection goes between one and one and an eighth timeouts after its last activity.
    let idle_after = c.opts.idle_timeout.unwrap_or(std::time::Duration::MAX);
    let look_every = idle_after / 8;
    let next_look = |now: Instant| now.checked_add(look_every).unwrap_or_else(far_future);
    let mut quiet_since = Instant::now();
    let mut idle = Gated::new(tokio::time::sleep_until(next_look(quiet_since)));
    let (mut activity, mut activity_seen) = (0u64, 0u64);
    // One wait for the whole connection: a new one each turn would join and leave the
    // signal's waiter list around every request.
    let mut down = Gated::new(shutdown.wait());
    loop {
        if !c.wbuf.is_empty() {
            // While the peer does not read, we neither read nor poll handlers: backpressure.
            if let Err(e) = write_out(&mut wr, &c.wbuf, idle_after).await {
                tracing::debug!(%peer, error = %e, "write failed; closing");
                return;
            }
            c.wbuf.clear();
            // Time spent waiting on the peer to read is not the partial frame's.
            armed_for = None;
        }
        // Frames left in the buffer while the in-flight set was full or replies piled up.
        if reading && c.backlog && c.inflight.len() < c.opts.max_in_flight {
            if let Err(e) = c.frames() {
                tracing::warn!(%peer, error = %e, "invalid data received; closing the connection");
                break;
            }
            if !c.wbuf.is_empty() {
                continue;
            }
        }
        if !reading && c.inflight.is_empty() {
            break;
        }
        let can_read = reading && !c.backlog;
        let mid_frame = c.decoder.is_mid_frame(&c.rbuf);
        // A partial frame's deadline runs while we read: armed when it starts, and again
        // when reading resumes after a pause of ours (a full in-flight set, a blocked write).
        if !can_read {
            armed_for = None;
        } else if mid_frame && armed_for != Some(c.frames) {
            armed_for = Some(c.frames);
            whole.as_mut().reset(Instant::now() + c.opts.incomplete_timeout);
        }
        if c.rbuf.capacity() - c.rbuf.len() < 4096 {
            c.rbuf.reserve(16 * 1024);
        }
        if !share.cover(c.rbuf.capacity()) {
            if let Some(held_back) = OVER_BUDGET.allow() {
                tracing::warn!(%peer, max_buffered_bytes = c.opts.max_buffered_bytes, held_back, "closing a connection: the server's buffers are full (partial frames of other peers)");
            }
            break;
        }
        tokio::select! {
            biased;
            item = c.inflight.next(), if !c.inflight.is_empty() => {
                activity += 1;
                // `None` when the last work was an event: nothing to write.
                if let Some((id, step)) = item {
                    c.encode(&id, step);
                }
                while c.wbuf.len() < WRITE_HIGH_WATER {
                    match c.inflight.next().now_or_never() {
                        Some(Some((id, step))) => c.encode(&id, step),
                        _ => break,
                    }
                }
            }
            read = rd.read_buf(&mut c.rbuf), if can_read => match read {
                Ok(0) => reading = false,
                Ok(_) => {
                    c.arrival = Arrival::now();
                    if let Err(e) = c.frames() {
                        tracing::warn!(%peer, error = %e, "invalid data received; closing the connection");
                        break;
                    }
                    // A partial frame's deadline is armed once, when it starts.
                    if !c.decoder.is_mid_frame(&c.rbuf) {
                        armed_for = None;
                    } else if armed_for != Some(c.frames) {
                        armed_for = Some(c.frames);
                        whole.as_mut().reset(Instant::now() + c.opts.incomplete_timeout);
                    }
                    activity += 1;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "read failed; closing");
                    return;
                }
            },
            _ = &mut whole, if can_read && mid_frame => {
                tracing::warn!(%peer, timeout = ?c.opts.incomplete_timeout, "a frame did not arrive whole in time; closing");
                break;
            }
            _ = &mut idle, if can_read && !mid_frame && c.inflight.is_empty() => {
                let now = Instant::now();
                if activity != activity_seen {
                    activity_seen = activity;
                    quiet_since = now;
                }
                if now.saturating_duration_since(quiet_since) >= idle_after {
                    tracing::debug!(%peer, timeout = ?idle_after, "idle connection; closing");
                    break;
                }
                idle.get_mut().reset(next_look(now));
            }
            _ = &mut down, if reading => reading = false,
        }
    }
    if !c.wbuf.is_empty() {
        let _ = write_out(&mut wr, &c.wbuf, idle_after).await;
    }
    let _ = wr.shutdown().await;
    tracing::debug!(%peer, "connection closed");
}

/// Writes `buf` whole. A peer that takes none of it for `stall` (the idle timeout) has
/// stopped reading: the write fails, so that the peer cannot hold its connection, its
/// requests' replies and a drain open for ever. A peer that reads slowly keeps it going.
async fn write_out<W: AsyncWrite + Unpin>(wr: &mut W, buf: &[u8], stall: std::time::Duration) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        // The socket usually takes it at once: the timer is only set when it does not.
        let written = match wr.write(&buf[at..]).now_or_never() {
            Some(written) => Ok(written),
            None => tokio::time::timeout(stall, wr.write(&buf[at..])).await,
        };
        match written {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => at += n,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the peer read nothing for {stall:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// A small frame's payload, copied into the block of a connection's payloads and taken off
/// it: one allocation for many requests rather than one each.
fn copy_payload(block: &mut BytesMut, data: &[u8]) -> Bytes {
    // Reclaimed in place once the requests before have let go of it, else a new block.
    block.reserve(data.len());
    block.extend_from_slice(data);
    block.split().freeze()
}

/// A packet that is JSON but not an object: NestJS reads it as an event with an undefined
/// pattern, which nothing handles.
#[cold]
fn not_an_object(peer: &SocketAddr) {
    tracing::warn!(%peer, "There is no matching event handler defined in the remote service. Event pattern: undefined");
}

/// An instant no timer reaches.
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(100 * 365 * 24 * 3600)
}

impl Conn {
    /// Handles every complete frame in the read buffer.
    fn frames(&mut self) -> std::result::Result<(), Close> {
        // The replies ready by the time this returns are written together.
        #[cfg(feature = "metrics")]
        let _together = crate::metrics::Together::open();
        // Not the clock of an earlier batch: one that waited must not seem to have had time.
        self.now = None;
        self.backlog = false;
        match self.codec {
            Some(Codec::Json) => {}
            Some(Codec::MsgPack) => return self.packed_frames(),
            None => match self.rbuf.first() {
                None => return Ok(()),
                Some(&first) if first == frame::HELLO[0] => {
                    let Some(hello) = self.rbuf.get(..frame::HELLO.len()) else {
                        return Ok(());
                    };
                    if hello != frame::HELLO {
                        return Err(Close::Hello);
                    }
                    self.rbuf.advance(frame::HELLO.len());
                    self.wbuf.extend_from_slice(&frame::HELLO);
                    self.codec = Some(Codec::MsgPack);
                    tracing::debug!(peer = %self.peer, "msgpack connection");
                    return self.packed_frames();
                }
                Some(_) => self.codec = Some(Codec::Json),
            },
        }
        // The frames are read where they lie in the buffer, taken out for the while.
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let handled = self.json_frames(&mut rbuf);
        self.rbuf = rbuf;
        handled
    }

    /// [`frames`](Self::frames) on a NestJS connection.
    fn json_frames(&mut self, rbuf: &mut BytesMut) -> std::result::Result<(), Close> {
        loop {
            if self.inflight.len() >= self.opts.max_in_flight || self.wbuf.len() >= WRITE_HIGH_WATER {
                // Leave the rest in the buffer until work completes or the replies are written.
                self.backlog = true;
                return Ok(());
            }
            let Some(framed) = self.decoder.next_in(rbuf)? else {
                return Ok(());
            };
            self.frames += 1;
            if framed.body.len() > SHARED_OVER {
                rbuf.advance(framed.body.start);
                let frame = rbuf.split_to(framed.body.len()).freeze();
                self.json_frame(&frame, Some(&frame), framed.ascii)?;
            } else {
                let handled = self.json_frame(&rbuf[framed.body.clone()], None, framed.ascii);
                rbuf.advance(framed.body.end);
                handled?;
            }
        }
    }

    /// Handles one NestJS packet. A small one is read where it lies in the read buffer and its
    /// payload copied into the connection's payload block (a request that waits holds that
    /// small block, not the read buffer); a larger one comes `shared`, taken off the buffer,
    /// and its payload is a slice of it.
    fn json_frame(&mut self, body: &[u8], shared: Option<&Bytes>, ascii: bool) -> std::result::Result<(), Close> {
        let text = match ascii {
            // SAFETY: ASCII is UTF-8; the decoder saw every byte.
            true => Ok(unsafe { std::str::from_utf8_unchecked(body) }),
            false => std::str::from_utf8(body),
        };
        let mut packet = match text.map(Packet::parse_text) {
            Ok(Ok(p)) => p,
            Err(_) | Ok(Err(PacketError::InvalidUtf8)) => {
                return Err(Close::Frame(super::frame::FrameError::InvalidUtf8));
            }
            Ok(Err(PacketError::NotAnObject)) => {
                not_an_object(&self.peer);
                return Ok(());
            }
            Ok(Err(PacketError::InvalidJson(e))) => return Err(Close::Json(e)),
        };
        if packet.pattern.is_none() && packet.data.is_none() {
            // NestJS reads such a packet as an event with no pattern: nothing handles it.
            return Ok(());
        }
        let id = packet.id.map(str::as_bytes);
        let kind = if id.is_some() { Kind::Request } else { Kind::Event };
        let (address, found) = self.router.find_pattern(packet.pattern_or_undefined());
        let payload = match (shared, packet.data) {
            (Some(frame), _) => packet.payload(frame),
            (None, Some(data)) => Payload::Json(copy_payload(&mut self.payloads, data.as_bytes())),
            (None, None) => Payload::null(),
        };
        let mut req = ReadTogether {
            slot: Some(Request::new(address, payload, Context::new("tcp", kind))),
            now: &mut self.now,
        };
        if let Some(req) = &mut req.slot {
            // Set in place: a context built with its headers and then moved stalls on the move.
            *req.context_mut().headers_mut() = packet.headers();
        }
        let mut reply = self.router.call_found(found, &mut req, self.arrival);
        // Most handlers finish without waiting: polled right away, their reply is written
        // straight from the received frame, without a trip through the in-flight set.
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        let ready = reply.poll_unpin(&mut cx);
        if let Poll::Ready(r) = &ready
            && r.is_no_handler()
            && packet.pattern.is_some_and(|p| !Packet::check_pattern(p))
        {
            // The hand-split fast path does not parse patterns; a miss checks it here.
            return Err(Close::Pattern);
        }
        if let Poll::Ready(r) = &ready
            && r.is_error()
            && let Some(data) = packet.data
            && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(data)
        {
            // NestJS closes the connection on malformed JSON anywhere in a packet; the hand
            // split leaves `data` unchecked, so a failed handler's input is checked here.
            return Err(Close::Json(e));
        }
        self.dispatched(id, ready, reply, Codec::Json);
        Ok(())
    }

    /// Writes a ready reply: one value, completion or an error at once; a stream's steps
    /// as far as they are ready, the rest from the in-flight set.
    fn start_reply(&mut self, id: &[u8], reply: Reply) {
        if reply.is_no_handler() {
            return self.write(id, Outgoing::NoHandler);
        }
        if let Some(json) = reply.as_json() {
            return self.write(id, Outgoing::Value { json, last: true });
        }
        if let Some(e) = reply.as_error() {
            return self.write(id, Outgoing::Error(e));
        }
        if reply.is_done() {
            return self.write(id, Outgoing::Done);
        }
        self.stream_reply(id, Steps::new(reply));
    }

    /// A routed message, polled once: a ready reply written now, a pending one or an
    /// event's listeners left to the in-flight set.
    fn dispatched(&mut self, id: Option<&[u8]>, ready: Poll<Reply>, reply: RouterFuture, codec: Codec) {
        match (ready, id, codec) {
            (Poll::Ready(reply), Some(id), Codec::Json) => self.start_reply(id, reply),
            (Poll::Ready(reply), Some(id), Codec::MsgPack) => self.stream_reply(id, Steps::packed(reply)),
            (Poll::Pending, Some(id), codec) => self.inflight.push(Work::Answering {
                id: Bytes::copy_from_slice(id),
                reply,
                codec,
            }),
            (Poll::Pending, None, _) => self.inflight.push(Work::Event(EventTask(tokio::spawn(reply)))),
            (Poll::Ready(_), None, _) => {}
        }
    }

    /// Writes a reply's steps as far as they are ready, the rest from the in-flight set.
    fn stream_reply(&mut self, id: &[u8], mut steps: Steps) {
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        loop {
            // A long ready stream: write what we have first, poll the rest later.
            let step = match steps.poll_step(&mut cx) {
                Poll::Ready(Some(step)) if self.wbuf.len() < WRITE_HIGH_WATER => step,
                Poll::Ready(None) => return,
                polled => {
                    if let Poll::Ready(Some(step)) = polled {
                        self.encode(id, step);
                    }
                    let id = Bytes::copy_from_slice(id);
                    return self.inflight.push(Work::Replying { id, steps });
                }
            };
            self.encode(id, step);
        }
    }

    fn encode(&mut self, id: &[u8], step: Step) {
        if self.codec == Some(Codec::MsgPack) {
            return self.encode_packed(id, step);
        }
        self.write(id, step.outgoing());
    }

    /// [`frames`](Self::frames) on a msgpack connection. A frame that is not a packet is
    /// answered with an error when its id could be read, skipped otherwise: the length
    /// prefix still says where the next frame starts, so the connection goes on.
    fn packed_frames(&mut self) -> std::result::Result<(), Close> {
        loop {
            if self.inflight.len() >= self.opts.max_in_flight || self.wbuf.len() >= WRITE_HIGH_WATER {
                self.backlog = true;
                return Ok(());
            }
            let Some(body) = self.packed.decode(&mut self.rbuf)? else {
                return Ok(());
            };
            self.frames += 1;
            let packet = match frame::parse_request(&body) {
                Ok(packet) => packet,
                Err((id, e)) => {
                    if let Some(held_back) = INVALID.allow() {
                        tracing::warn!(peer = %self.peer, error = %e, held_back, "invalid msgpack packet");
                    }
                    if let Some(id) = id {
                        let err = crate::error::RpcError::new(e.to_string());
                        self.encode_packed(&body[id], Step::Error(err));
                    }
                    continue;
                }
            };
            let kind = if packet.id.is_some() {
                Kind::Request
            } else {
                Kind::Event
            };
            let address = Address::Pattern(body.slice(packet.pattern));
            let payload = Payload::MsgPack(body.slice(packet.data));
            let mut ctx = Context::new("tcp", kind).with_headers(packet.headers);
            // Replies as values, encoded once, straight to MessagePack (see `Steps::packed`).
            ctx.set_local(true);
            let mut reply = self
                .router
                .call_arrived(Request::new(address, payload, ctx), self.arrival);
            let ready = reply.poll_unpin(&mut TaskContext::from_waker(std::task::Waker::noop()));
            self.dispatched(packet.id.map(|id| &body[id]), ready, reply, Codec::MsgPack);
        }
    }

    fn encode_packed(&mut self, id: &[u8], step: Step) {
        use frame::Tag;
        match step {
            Step::Value { json: value, last } => {
                let tag = if last { Tag::Last } else { Tag::Value };
                frame::encode_reply(&mut self.wbuf, id, tag, Some(&value));
            }
            Step::Done => frame::encode_reply(&mut self.wbuf, id, Tag::Done, None),
            Step::NoHandler => frame::encode_reply(&mut self.wbuf, id, Tag::NoHandler, None),
            Step::Error(err) => match msgpack::to_msgpack(err.value()) {
                Ok(value) => frame::encode_reply(&mut self.wbuf, id, Tag::Error, Some(&value)),
                Err(e) => {
                    tracing::error!(error = %e, "an error reply could not be serialised");
                    let value = msgpack::to_msgpack(crate::error::RpcError::internal().value())
                        .expect("a JSON value serialises");
                    frame::encode_reply(&mut self.wbuf, id, Tag::Error, Some(&value));
                }
            },
        }
    }

    fn write(&mut self, id: &[u8], what: Outgoing<'_>) {
        if let Outgoing::Value { json, last } = what {
            // The common reply: its length is known up front, so it is written in place.
            let fixed = if last {
                r#"{"response":,"isDisposed":true,"id":}"#.len()
            } else {
                r#"{"response":,"id":}"#.len()
            };
            write_length(&mut self.wbuf, fixed + utf16_len(json) + utf16_len(id));
            crate::wire::nestjs::packet::encode_reply(&mut self.wbuf, id, what);
            return;
        }
        self.scratch.clear();
        crate::wire::nestjs::packet::encode_reply(&mut self.scratch, id, what);
        encode_frame(&mut self.wbuf, &self.scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_share_a_block_that_is_reused_once_let_go() {
        let mut block = BytesMut::with_capacity(PAYLOAD_BLOCK);
        let first = copy_payload(&mut block, b"{\"a\":1}");
        let second = copy_payload(&mut block, b"[2]");
        assert_eq!((&first[..], &second[..]), (&b"{\"a\":1}"[..], &b"[2]"[..]));
        assert_eq!(second.as_ptr(), first[first.len()..].as_ptr(), "not in one block");
        let start = first.as_ptr();
        drop((first, second));
        // Payloads let go of at once, to the end of the block: the next one starts it over.
        let fill = |block: &mut BytesMut| {
            while block.capacity() >= 100 {
                drop(copy_payload(block, &[b'1'; 100]));
            }
        };
        fill(&mut block);
        let held = copy_payload(&mut block, &[b'2'; 100]);
        assert_eq!(held.as_ptr(), start, "the block let go of was not reused");
        // One still held keeps its bytes; the next payloads go to a new block.
        fill(&mut block);
        let next = copy_payload(&mut block, &[b'3'; 100]);
        assert_ne!(next.as_ptr(), start);
        assert_eq!((&held[..], &next[..]), (&[b'2'; 100][..], &[b'3'; 100][..]));
    }
}
