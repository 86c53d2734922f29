//! A subscriber connection of our own (the server's subscription, the client's reply
//! channels): Redis's RESP2 pub/sub replies parsed in place from the read buffer, each
//! message's payload a slice of it.
//!
//! Not redis-rs's `aio::PubSub`, whose task reads the socket as fast as Redis writes into an
//! unbounded channel: a server that falls behind would hold its whole backlog in memory. Read
//! only when the serve loop has room for a message, the backlog stays in the socket and then in
//! Redis, whose `client-output-buffer-limit pubsub` disconnects a subscriber that falls too far
//! behind (the server then subscribes again). And a message crosses no task on its way: the
//! server's serve loop reads it, the client's reader task hands it to the call.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::connect_error;
use crate::error::{Error, Result};

/// Redis's own cap on a bulk string (`proto-max-bulk-len`'s default): a larger length is not
/// Redis talking.
const MAX_BULK: usize = 512 * 1024 * 1024;
/// A length or integer line: `$` or `*` or `:`, a sign and 19 digits, CRLF.
const MAX_LINE: usize = 24;
/// The longest pub/sub reply (`pmessage`: kind, pattern, channel, payload).
const MAX_ITEMS: usize = 4;

/// One message published on a subscribed channel.
pub(super) struct Published {
    pub(super) channel: Bytes,
    pub(super) payload: Bytes,
}

/// What a subscriber connection receives.
pub(super) enum Event {
    Message(Published),
    /// A channel's SUBSCRIBE or UNSUBSCRIBE confirmed (Redis answers them in order).
    Confirmed,
    /// The answer to a PING.
    Pong,
}

/// A connection in subscriber mode: its reading half, and its writing half for commands
/// (shared with the PINGs of [`Reader::next_alive`]).
pub(super) struct Subscriber {
    pub(super) reader: Reader,
    pub(super) writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
}

impl Subscriber {
    /// Connects to the server `info` names and authenticates, within `timeout`.
    pub(super) async fn connect(info: &::redis::ConnectionInfo, addr: &str, timeout: Duration) -> Result<Self> {
        let connected = async {
            let ::redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
                return Err(connect_error(addr, "only plain TCP is supported"));
            };
            let stream = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| connect_error(addr, e))?;
            let _ = stream.set_nodelay(true);
            crate::transport::keepalive::client(&stream).map_err(|e| connect_error(addr, e))?;
            let (rd, mut writer) = stream.into_split();
            let mut reader = Reader {
                rd,
                rbuf: BytesMut::with_capacity(16 * 1024),
                addr: addr.to_owned(),
            };
            // AUTH when the URL has a password, then PING: refused at once (NOAUTH) when Redis
            // wants a password the URL lacks, not later by SUBSCRIBE.
            let redis = info.redis_settings();
            if let Some(password) = redis.password() {
                let mut args = vec!["AUTH"];
                args.extend(redis.username());
                args.push(password);
                command(&mut writer, &args).await.map_err(|e| connect_error(addr, e))?;
                reader.expect_status("AUTH").await?;
            }
            command(&mut writer, &["PING"])
                .await
                .map_err(|e| connect_error(addr, e))?;
            reader.expect_status("PING").await?;
            Ok(Subscriber {
                reader,
                writer: Arc::new(tokio::sync::Mutex::new(writer)),
            })
        };
        match tokio::time::timeout(timeout, connected).await {
            Ok(sub) => sub,
            Err(_) => Err(connect_error(addr, format!("no answer within {timeout:?}"))),
        }
    }

    /// Subscribes to `channels` (one command, which Redis runs at once: no message comes
    /// before its confirmations) and waits for each confirmation.
    pub(super) async fn subscribe(&mut self, channels: &[&str]) -> Result<()> {
        let mut args = Vec::with_capacity(channels.len() + 1);
        args.push("SUBSCRIBE");
        args.extend_from_slice(channels);
        command(&mut *self.writer.lock().await, &args)
            .await
            .map_err(|e| self.reader.io_error(e))?;
        for channel in channels {
            match self.reader.reply().await.map_err(|e| self.reader.io_error(e))? {
                Reply::Items(items) if items.kind() == b"subscribe" && items.get(1) == channel.as_bytes() => {}
                Reply::Error(text) => {
                    return Err(Error::refused(format!(
                        "SUBSCRIBE on {} failed: {text}",
                        self.reader.addr
                    )));
                }
                _ => {
                    return Err(Error::refused(format!(
                        "unexpected answer to SUBSCRIBE from {}",
                        self.reader.addr
                    )));
                }
            }
        }
        Ok(())
    }

    /// The next message; `None` once the connection is closed, broken or silent (logged;
    /// see [`Reader::next_alive`]).
    pub(super) async fn next(&mut self, ping_every: Option<Duration>) -> Option<Published> {
        loop {
            if let Event::Message(m) = self.reader.next_alive(ping_every, &self.writer).await? {
                return Some(m);
            }
        }
    }
}

/// Writes one command as an array of bulk strings.
pub(super) async fn command(w: &mut OwnedWriteHalf, args: &[&str]) -> io::Result<()> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    w.write_all(&out).await
}

/// A subscriber connection's reading half.
pub(super) struct Reader {
    rd: OwnedReadHalf,
    rbuf: BytesMut,
    /// `redis://host:port`, for errors.
    addr: String,
}

impl Reader {
    /// The next message or confirmation; `None` once the connection is closed or broken
    /// (logged).
    pub(super) async fn next(&mut self) -> Option<Event> {
        loop {
            let reply = match self.reply().await {
                Ok(reply) => reply,
                Err(e) => {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::warn!(addr = %self.addr, error = %e, "redis subscriber connection failed");
                    }
                    return None;
                }
            };
            match reply {
                Reply::Items(items) if items.kind() == b"message" && items.len == 3 => {
                    return Some(Event::Message(Published {
                        channel: items.take(1),
                        payload: items.take(2),
                    }));
                }
                Reply::Items(items) if matches!(items.kind(), b"subscribe" | b"unsubscribe") => {
                    return Some(Event::Confirmed);
                }
                Reply::Items(items) if items.kind() == b"pong" => return Some(Event::Pong),
                Reply::Items(_) | Reply::Status => {}
                Reply::Error(text) => {
                    tracing::warn!(addr = %self.addr, error = %text, "redis subscriber connection answered an error");
                    return None;
                }
            }
        }
    }

    /// [`next`](Self::next), or `None` once the connection is silent: after `every` without a
    /// word from Redis, it is sent a PING through `writer`, and without a word in as long again the
    /// connection is taken for dead (logged). A half-open connection (behind a NAT or a proxy
    /// that lost it) or a hung Redis never fails by itself, and a subscriber only reads:
    /// without this it would wait for ever. Silence counts only while waiting here, not while
    /// the caller is busy elsewhere. `every` of `None`: never pinged.
    pub(super) async fn next_alive(
        &mut self,
        every: Option<Duration>,
        writer: &tokio::sync::Mutex<OwnedWriteHalf>,
    ) -> Option<Event> {
        let Some(every) = every else {
            return self.next().await;
        };
        let mut pinged = false;
        loop {
            // What is read already needs no timer (most messages, under load): the timer's
            // setup would be a good part of a message's cost.
            let waited = {
                let mut next = std::pin::pin!(self.next());
                match std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await {
                    Poll::Ready(event) => Ok(event),
                    Poll::Pending => tokio::time::timeout(every, next).await,
                }
            };
            match waited {
                Ok(Some(Event::Pong)) => pinged = false,
                Ok(event) => return event,
                Err(_) if !pinged => {
                    pinged = true;
                    let ping = async { command(&mut *writer.lock().await, &["PING"]).await };
                    if !matches!(tokio::time::timeout(every, ping).await, Ok(Ok(()))) {
                        tracing::warn!(addr = %self.addr, "cannot write a PING to redis; taking the subscriber connection for dead");
                        return None;
                    }
                }
                Err(_) => {
                    tracing::warn!(addr = %self.addr, waited = ?every, "redis did not answer a PING; taking the subscriber connection for dead");
                    return None;
                }
            }
        }
    }

    /// Reads a status reply (`+OK`, `+PONG`); an error reply fails the connection with
    /// Redis's text, which names no password (`WRONGPASS invalid username-password pair`).
    async fn expect_status(&mut self, command: &str) -> Result<()> {
        match self.reply().await.map_err(|e| connect_error(&self.addr, e))? {
            Reply::Status => Ok(()),
            Reply::Error(text) => Err(connect_error(&self.addr, text)),
            Reply::Items(_) => Err(connect_error(&self.addr, format!("unexpected answer to {command}"))),
        }
    }

    fn io_error(&self, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::ConnectionClosed {
                addr: self.addr.clone(),
            }
        } else {
            Error::io(format!("redis subscriber connection to {}", self.addr), e)
        }
    }

    /// Reads one whole reply (cancel safe: what was read stays in the buffer).
    async fn reply(&mut self) -> io::Result<Reply> {
        loop {
            match parse(&self.rbuf)? {
                Parsed::Whole(len, shape) => {
                    let frame = self.rbuf.split_to(len).freeze();
                    return Ok(shape.with(frame));
                }
                Parsed::Partial(need) => {
                    self.rbuf.reserve(need.saturating_sub(self.rbuf.len()).max(4096));
                    if self.rd.read_buf(&mut self.rbuf).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
    }
}

/// A reply, as much of RESP2 as a subscriber connection receives.
enum Reply {
    /// `+OK`, `+PONG`.
    Status,
    /// `-ERR …`, escaped and bounded for logs and errors.
    Error(String),
    /// An array of bulk strings and integers (`message`, `subscribe`, `pong` …).
    Items(Items),
}

/// An array's items, as ranges of its frame.
struct Items {
    frame: Bytes,
    ranges: [Range<usize>; MAX_ITEMS],
    len: usize,
}

impl Items {
    /// The first item, lowercase in Redis's replies: which reply this is.
    fn kind(&self) -> &[u8] {
        self.get(0)
    }

    fn get(&self, i: usize) -> &[u8] {
        match i < self.len {
            true => &self.frame[self.ranges[i].clone()],
            false => &[],
        }
    }

    fn take(&self, i: usize) -> Bytes {
        self.frame.slice(self.ranges[i].clone())
    }
}

/// What a frame holds, as ranges, before it is split off the buffer.
enum Shape {
    Status,
    Error(Range<usize>),
    Items([Range<usize>; MAX_ITEMS], usize),
}

impl Shape {
    fn with(self, frame: Bytes) -> Reply {
        match self {
            Shape::Status => Reply::Status,
            Shape::Error(r) => Reply::Error(crate::text::for_log(&String::from_utf8_lossy(&frame[r])).to_string()),
            Shape::Items(ranges, len) => Reply::Items(Items { frame, ranges, len }),
        }
    }
}

enum Parsed {
    /// A whole reply of this many bytes.
    Whole(usize, Shape),
    /// Not yet: the buffer needs at least this many bytes.
    Partial(usize),
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("not a Redis pub/sub reply: {what}"))
}

/// The line starting at `at` (without its CRLF) and where the next begins; `None` when the
/// buffer does not hold it whole yet. Redis's lines hold no CR.
fn line(buf: &[u8], at: usize) -> Option<(Range<usize>, usize)> {
    let end = at + buf[at..].iter().position(|&b| b == b'\r')?;
    (buf.len() > end + 1).then_some((at..end, end + 2))
}

/// A length or integer line's number.
fn number(buf: &[u8], r: Range<usize>) -> io::Result<i64> {
    if r.len() > MAX_LINE {
        return Err(invalid("a number too long"));
    }
    std::str::from_utf8(&buf[r])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("a malformed number"))
}

/// Parses the reply at the start of `buf`.
fn parse(buf: &[u8]) -> io::Result<Parsed> {
    // A line that has not ended within a bound is not Redis's (status lines are short; an
    // error's text is at most a few hundred bytes).
    const MAX_STATUS: usize = 64 * 1024;
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Partial(1));
    };
    let bounded = |at: usize| -> io::Result<Option<(Range<usize>, usize)>> {
        match line(buf, at) {
            Some(found) => Ok(Some(found)),
            None if buf.len() - at > MAX_STATUS => Err(invalid("a line without an end")),
            None => Ok(None),
        }
    };
    let Some((head, mut at)) = bounded(1)? else {
        return Ok(Parsed::Partial(buf.len() + 1));
    };
    match first {
        b'+' => return Ok(Parsed::Whole(at, Shape::Status)),
        b'-' => return Ok(Parsed::Whole(at, Shape::Error(head))),
        b'*' => {}
        _ => return Err(invalid("an unexpected type")),
    }
    let count = number(buf, head)?;
    if !(1..=MAX_ITEMS as i64).contains(&count) {
        return Err(invalid("an array of an unexpected size"));
    }
    let mut ranges: [Range<usize>; MAX_ITEMS] = Default::default();
    for range in ranges.iter_mut().take(count as usize) {
        let Some(&kind) = buf.get(at) else {
            return Ok(Parsed::Partial(at + 1));
        };
        let Some((head, next)) = bounded(at + 1)? else {
            return Ok(Parsed::Partial(buf.len() + 1));
        };
        match kind {
            b':' => {
                number(buf, head.clone())?;
                *range = head;
                at = next;
            }
            b'$' => {
                let len = number(buf, head)?;
                if !(0..=MAX_BULK as i64).contains(&len) {
                    return Err(invalid("a bulk string of an unexpected length"));
                }
                let end = next + len as usize;
                if buf.len() < end + 2 {
                    return Ok(Parsed::Partial(end + 2));
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(invalid("a bulk string longer than its length"));
                }
                *range = next..end;
                at = end + 2;
            }
            _ => return Err(invalid("an unexpected item in an array")),
        }
    }
    Ok(Parsed::Whole(at, Shape::Items(ranges, count as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(buf: &[u8]) -> (usize, Vec<Vec<u8>>) {
        match parse(buf).unwrap() {
            Parsed::Whole(len, Shape::Items(ranges, n)) => {
                (len, ranges[..n].iter().map(|r| buf[r.clone()].to_vec()).collect())
            }
            _ => panic!("not a whole array"),
        }
    }

    #[test]
    fn a_message_is_parsed_in_place() {
        let frame = b"*3\r\n$7\r\nmessage\r\n$3\r\nsum\r\n$11\r\n{\"data\":1}\n\r\nrest";
        let (len, got) = items(frame);
        assert_eq!(len, frame.len() - 4);
        assert_eq!(got, [&b"message"[..], b"sum", b"{\"data\":1}\n"]);
    }

    #[test]
    fn confirmations_statuses_and_errors() {
        let (_, got) = items(b"*3\r\n$9\r\nsubscribe\r\n$3\r\nsum\r\n:1\r\n");
        assert_eq!(got, [&b"subscribe"[..], b"sum", b"1"]);
        assert!(matches!(parse(b"+OK\r\n").unwrap(), Parsed::Whole(5, Shape::Status)));
        assert!(matches!(
            parse(b"-WRONGPASS x\r\n").unwrap(),
            Parsed::Whole(14, Shape::Error(_))
        ));
        // An empty payload is a message too.
        let (_, got) = items(b"*3\r\n$7\r\nmessage\r\n$1\r\nx\r\n$0\r\n\r\n");
        assert_eq!(got[2], b"");
    }

    #[test]
    fn every_prefix_of_a_reply_asks_for_more() {
        let frame = b"*3\r\n$7\r\nmessage\r\n$3\r\nsum\r\n$5\r\nhello\r\n";
        for cut in 0..frame.len() {
            match parse(&frame[..cut]).unwrap() {
                Parsed::Partial(need) => assert!(need > cut, "cut at {cut} asked for {need}"),
                Parsed::Whole(..) => panic!("whole at {cut}"),
            }
        }
        assert!(matches!(parse(frame).unwrap(), Parsed::Whole(n, _) if n == frame.len()));
    }

    #[test]
    fn a_large_bulk_asks_for_all_of_it_at_once() {
        let head = b"*3\r\n$7\r\nmessage\r\n$3\r\nsum\r\n$1000000\r\n";
        match parse(head).unwrap() {
            Parsed::Partial(need) => assert_eq!(need, head.len() + 1_000_000 + 2),
            Parsed::Whole(..) => panic!("whole"),
        }
    }

    #[test]
    fn what_redis_does_not_send_is_refused() {
        for bad in [
            &b"$3\r\nabc\r\n"[..],                    // not an array
            b"*9\r\n",                                // too many items
            b"*0\r\n",                                // an empty array
            b"*1\r\n*1\r\n",                          // nested
            b"*1\r\n$-1\r\n",                         // a null
            b"*1\r\n$600000000\r\n",                  // past proto-max-bulk-len
            b"*1\r\n$3\r\nabcdef\r\n",                // longer than said
            b"*1\r\n$99999999999999999999999999\r\n", // a number too long
            b"*1\r\n:x\r\n",                          // not a number
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // A line that never ends is refused once past its bound, not buffered for ever.
        let mut endless = b"+".to_vec();
        endless.resize(70 * 1024, b'a');
        assert!(parse(&endless).is_err());
    }
}
