//! The pipelined driver for `tcp://` in a closed loop: NestJS packets written straight on the
//! socket, as the repository's benchmark does, so that the tool is not what limits the rate.
//!
//! Per connection, one task keeps its share of `-c` calls in flight: it reads a batch of
//! replies, checks them, writes the replacement calls in one `write_all`, and takes one
//! timestamp per batch. Requests are the packet `Client` would send, encoded once with a
//! slot-and-sequence id spliced in; request ids say which slot a reply frees (no map).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard::error::NO_MESSAGE_HANDLER;
use switchboard::transport::tcp::frame::{FrameDecoder, utf16_len, write_length};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::load::Clock;
use super::tally::{Failed, Local, Shards};

/// The largest reply frame read (UTF-16 units), as the client's default.
const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Ids are 21 hex digits like NestJS's: connection (4), slot (4), sequence (13).
const ID_LEN: usize = 21;
/// Pause between attempts to reconnect a lost connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// A request packet with a hole for its id.
pub struct Template {
    /// `<len>#{"pattern":…,"data":…[,"metadata":…],"id":"`
    head: Vec<u8>,
}

impl Template {
    /// The packet for `pattern` (JSON) and `data` (JSON), with `metadata` headers if any.
    pub fn new(pattern: &str, data: &str, headers: &[(String, String)]) -> Self {
        let mut body = Vec::new();
        body.extend_from_slice(b"{\"pattern\":");
        body.extend_from_slice(pattern.as_bytes());
        body.extend_from_slice(b",\"data\":");
        body.extend_from_slice(data.as_bytes());
        if !headers.is_empty() {
            let map: serde_json::Map<String, serde_json::Value> =
                headers.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
            body.extend_from_slice(b",\"metadata\":");
            body.extend_from_slice(serde_json::Value::Object(map).to_string().as_bytes());
        }
        body.extend_from_slice(b",\"id\":\"");
        let mut head = Vec::with_capacity(body.len() + 24);
        // The id and the closing `"}` are ASCII: one UTF-16 unit a byte.
        write_length(&mut head, utf16_len(&body) + ID_LEN + 2);
        head.extend_from_slice(&body);
        Template { head }
    }

    /// Bytes of one request frame.
    pub fn len(&self) -> usize {
        self.head.len() + ID_LEN + 2
    }

    fn put(&self, out: &mut Vec<u8>, conn: u16, slot: u16, seq: u64) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.extend_from_slice(&self.head);
        let mut id = [0u8; ID_LEN];
        for (value, range) in [(u64::from(conn), 0..4), (u64::from(slot), 4..8), (seq, 8..21)] {
            let mut v = value;
            for at in range.rev() {
                id[at] = HEX[(v & 0xF) as usize];
                v >>= 4;
            }
        }
        out.extend_from_slice(&id);
        out.extend_from_slice(b"\"}");
    }
}

/// What one connection is asked to do.
pub struct Job {
    pub conn: u16,
    pub addr: String,
    /// Calls kept in flight.
    pub depth: usize,
    /// With `-n`: calls this connection makes once measuring.
    pub quota: Option<u64>,
    pub timeout: Duration,
}

#[derive(Clone, Copy)]
struct Slot {
    seq: u64,
    sent: Instant,
    busy: bool,
    /// Sent in the measured part: its outcome is recorded.
    measured: bool,
}

/// The outcome a reply packet gives its call.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// A value that is not the last: the call goes on.
    More,
    Ok,
    Failed(Failed),
}

/// Runs one connection's closed loop on `stream` until the job is done.
pub async fn connection(job: Job, mut stream: TcpStream, template: Arc<Template>, clock: Clock, shards: Arc<Shards>) {
    let mut local = Local::new(usize::from(job.conn), &shards);
    let now = Instant::now();
    let idle = Slot {
        seq: 0,
        sent: now,
        busy: false,
        measured: false,
    };
    let mut slots = vec![idle; job.depth];
    let mut seq = 0u64;
    let mut counted = 0u64;
    let mut wbuf = Vec::with_capacity(16 * 1024);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut issued: Vec<usize> = Vec::with_capacity(job.depth);
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    let check_every = (job.timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let tick = tokio::time::sleep(check_every);
    tokio::pin!(tick);

    // Whether slot `i` gets a new call now (and marks it busy).
    let mut issue = |i: usize, now: Instant, slots: &mut [Slot], wbuf: &mut Vec<u8>| -> bool {
        let measured = now >= clock.measured;
        if clock.end.is_some_and(|end| now >= end) || job.quota.is_some_and(|q| measured && counted >= q) {
            return false;
        }
        counted += u64::from(measured);
        seq += 1;
        slots[i] = Slot {
            seq,
            sent: now,
            busy: true,
            measured,
        };
        template.put(wbuf, job.conn, i as u16, seq);
        true
    };

    let now = Instant::now();
    for i in 0..slots.len() {
        if issue(i, now, &mut slots, &mut wbuf) {
            issued.push(i);
        }
    }
    loop {
        if !wbuf.is_empty() {
            let sent = Instant::now();
            for i in issued.drain(..) {
                slots[i].sent = sent;
            }
            // Bounded: a peer that stops reading must not hold the run (nor a reply stuck
            // behind our own unread ones).
            if !matches!(
                tokio::time::timeout(job.timeout, stream.write_all(&wbuf)).await,
                Ok(Ok(()))
            ) {
                wbuf.clear();
                match lost(&job, &mut slots, &mut local, &shards, clock).await {
                    Some(s) => stream = s,
                    None => break,
                }
                continue;
            }
            wbuf.clear();
        }
        if !slots.iter().any(|s| s.busy) {
            // Nothing in flight and nothing more to send.
            let now = Instant::now();
            let more = (0..slots.len())
                .filter(|&i| issue(i, now, &mut slots, &mut wbuf))
                .count();
            if more == 0 {
                break;
            }
            issued.extend((0..slots.len()).filter(|&i| slots[i].busy));
            continue;
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(64 * 1024);
        }
        let read = tokio::select! {
            biased;
            read = stream.read_buf(&mut rbuf) => read,
            () = &mut tick => {
                tick.as_mut().reset(tokio::time::Instant::now() + check_every);
                expire(&mut slots, job.timeout, &mut local, &shards, &mut issued);
                let now = Instant::now();
                issued.retain(|&i| issue(i, now, &mut slots, &mut wbuf));
                continue;
            }
        };
        if !matches!(read, Ok(n) if n > 0) {
            match lost(&job, &mut slots, &mut local, &shards, clock).await {
                Some(s) => {
                    stream = s;
                    rbuf.clear();
                    decoder = FrameDecoder::new(MAX_FRAME);
                }
                None => break,
            }
            continue;
        }
        let now = Instant::now();
        let mut broken = false;
        loop {
            let body = match decoder.decode(&mut rbuf) {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(_) => {
                    // Not NestJS framing: nothing more can be read on this connection.
                    broken = true;
                    break;
                }
            };
            let Some((i, outcome)) = reply(&body, job.conn, &slots) else {
                continue;
            };
            if outcome == Outcome::More {
                continue;
            }
            let slot = slots[i];
            slots[i].busy = false;
            if slot.measured {
                match outcome {
                    Outcome::Ok => local.ok(now.saturating_duration_since(slot.sent), now, &shards),
                    Outcome::Failed(why) => local.failed(why, now, &shards),
                    Outcome::More => {}
                }
            }
            if issue(i, now, &mut slots, &mut wbuf) {
                issued.push(i);
            }
        }
        if broken {
            wbuf.clear();
            issued.clear();
            match lost(&job, &mut slots, &mut local, &shards, clock).await {
                Some(s) => {
                    stream = s;
                    rbuf.clear();
                    decoder = FrameDecoder::new(MAX_FRAME);
                }
                None => break,
            }
        }
    }
    local.flush(&shards);
}

/// Calls in flight past their timeout: counted as timeouts, their slots freed (a late reply
/// carries an old sequence number and is ignored); returned in `freed`.
fn expire(slots: &mut [Slot], timeout: Duration, local: &mut Local, shards: &Shards, freed: &mut Vec<usize>) {
    let now = Instant::now();
    for (i, slot) in slots.iter_mut().enumerate() {
        if slot.busy && now.saturating_duration_since(slot.sent) >= timeout {
            slot.busy = false;
            if slot.measured {
                local.failed(Failed::Timeout, now, shards);
            }
            freed.push(i);
        }
    }
}

/// The connection broke: its calls in flight fail as connection errors, and it is opened
/// again (each failed attempt counting one more) until the run ends.
async fn lost(job: &Job, slots: &mut [Slot], local: &mut Local, shards: &Shards, clock: Clock) -> Option<TcpStream> {
    let now = Instant::now();
    for slot in slots.iter_mut().filter(|s| s.busy) {
        slot.busy = false;
        if slot.measured {
            local.failed(Failed::Connection, now, shards);
        }
    }
    loop {
        let now = Instant::now();
        // With -n, a broken connection ends this connection's part: its calls could not be made.
        if job.quota.is_some() || clock.end.is_none_or(|end| now >= end) {
            return None;
        }
        if let Ok(Ok(stream)) = tokio::time::timeout(job.timeout, TcpStream::connect(&job.addr)).await {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
        local.failed(Failed::Connection, Instant::now(), shards);
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

#[derive(Deserialize)]
struct Packet<'a> {
    #[serde(default, borrow)]
    id: Option<&'a str>,
    #[serde(default, borrow)]
    err: Option<&'a RawValue>,
    #[serde(default, rename = "isDisposed")]
    is_disposed: Option<bool>,
    #[serde(default)]
    response: Option<serde::de::IgnoredAny>,
}

/// Which slot a reply packet answers and what it says; `None` for a packet that is not for a
/// call in flight here (a late reply to a call that timed out, a stranger's id).
fn reply(body: &[u8], conn: u16, slots: &[Slot]) -> Option<(usize, Outcome)> {
    // The shape Switchboard writes a value in, checked without parsing the value.
    const LAST: &[u8] = br#","isDisposed":true,"id":""#;
    if body.starts_with(br#"{"response":"#) && body.len() > LAST.len() + ID_LEN + 2 {
        let (rest, tail) = body.split_at(body.len() - ID_LEN - 2);
        if rest.ends_with(LAST) && tail.ends_with(b"\"}") {
            let id = std::str::from_utf8(&tail[..ID_LEN]).ok()?;
            return Some((ours(id, conn, slots)?, Outcome::Ok));
        }
    }
    let packet: Packet<'_> = serde_json::from_slice(body).ok()?;
    let i = ours(packet.id?, conn, slots)?;
    let outcome = match (packet.err, packet.is_disposed) {
        (Some(err), _) => Outcome::Failed(error_kind(err)),
        (None, Some(true)) => Outcome::Ok,
        (None, _) if packet.response.is_some() => Outcome::More,
        // Neither a value nor the end nor an error: not a reply.
        (None, _) => Outcome::Failed(Failed::Other),
    };
    Some((i, outcome))
}

/// The slot of one of this connection's calls in flight named by `id`.
fn ours(id: &str, conn: u16, slots: &[Slot]) -> Option<usize> {
    if id.len() != ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&id[r], 16).ok();
    let (c, i, seq) = (hex(0..4)?, hex(4..8)? as usize, hex(8..21)?);
    let slot = slots.get(i)?;
    (c == u64::from(conn) && slot.busy && slot.seq == seq).then_some(i)
}

/// NestJS's no-handler text, a deadline error (gRPC code 4, as `RpcError::deadline_exceeded`
/// writes it), or the handler's own error.
fn error_kind(err: &RawValue) -> Failed {
    let value: serde_json::Value = serde_json::from_str(err.get()).unwrap_or_default();
    if value.as_str() == Some(NO_MESSAGE_HANDLER) {
        Failed::NoHandler
    } else if value.get("code").and_then(serde_json::Value::as_i64) == Some(4) {
        Failed::Timeout
    } else {
        Failed::Handler
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(seq: u64) -> Slot {
        Slot {
            seq,
            sent: Instant::now(),
            busy: true,
            measured: true,
        }
    }

    #[test]
    fn requests_are_nestjs_frames() {
        let t = Template::new(r#"{"cmd":"sum"}"#, "[1,2]", &[("tenant".into(), "acmé".into())]);
        let mut out = Vec::new();
        t.put(&mut out, 3, 7, 42);
        let mut buf = BytesMut::from(&out[..]);
        let body = FrameDecoder::new(MAX_FRAME).decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "the length prefix covers the packet exactly");
        let packet: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            packet,
            serde_json::json!({"pattern": {"cmd": "sum"}, "data": [1, 2], "metadata": {"tenant": "acmé"}, "id": "00030007000000000002a"})
        );
    }

    #[test]
    fn replies_free_their_slot_with_their_outcome() {
        let slots = [busy(1), busy(5)];
        let short = r#"{"response":1,"isDisposed":true,"id":"00020001000000000005"}"#;
        assert_eq!(
            reply(short.as_bytes(), 2, &slots),
            None,
            "20 digits: not one of our ids"
        );
        let id = "000200010000000000005";
        let ok = format!(r#"{{"response":{{"x":[1]}},"isDisposed":true,"id":"{id}"}}"#);
        assert_eq!(reply(ok.as_bytes(), 2, &slots), Some((1, Outcome::Ok)));
        assert_eq!(reply(ok.as_bytes(), 3, &slots), None, "another connection's id");
        let nest = format!(r#"{{"id":"{id}","response":3,"isDisposed":true}}"#);
        assert_eq!(reply(nest.as_bytes(), 2, &slots), Some((1, Outcome::Ok)));
        let more = format!(r#"{{"response":1,"id":"{id}"}}"#);
        assert_eq!(reply(more.as_bytes(), 2, &slots), Some((1, Outcome::More)));
        let failed = format!(r#"{{"err":{{"message":"no"}},"isDisposed":true,"id":"{id}"}}"#);
        assert_eq!(
            reply(failed.as_bytes(), 2, &slots),
            Some((1, Outcome::Failed(Failed::Handler)))
        );
        let none = format!(r#"{{"id":"{id}","status":"error","err":"{NO_MESSAGE_HANDLER}"}}"#);
        assert_eq!(
            reply(none.as_bytes(), 2, &slots),
            Some((1, Outcome::Failed(Failed::NoHandler)))
        );
        let late = format!(r#"{{"err":{{"code":4,"message":"deadline"}},"isDisposed":true,"id":"{id}"}}"#);
        assert_eq!(
            reply(late.as_bytes(), 2, &slots),
            Some((1, Outcome::Failed(Failed::Timeout)))
        );
        let stale = r#"{"response":1,"isDisposed":true,"id":"000200010000000000004"}"#;
        assert_eq!(reply(stale.as_bytes(), 2, &slots), None, "an old sequence number");
    }
}
