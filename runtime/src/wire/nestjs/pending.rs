//! The requests a client has in flight, by id: the correlation table every client transport
//! shares. A transport registers a call, sends the request with its id, and hands each reply
//! packet back here; the call's stream yields the values in order and ends with the final one.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use bytes::Bytes;
use futures_util::stream::Stream;

use super::packet::{Packet, ReplyPacket, rpc_error};
use crate::error::{Error, NO_MESSAGE_HANDLER, Result};
use crate::service::ReplyItem;

/// The calls in flight on one connection (or one broker client).
pub(crate) struct Pending {
    url: String,
    state: Mutex<State>,
    next_id: AtomicU64,
    prefix: u64,
}

/// An id is [`PREFIX_HEX`] hex digits of the table's random prefix, then the call's number
/// in the rest of NestJS's 21: 40 random bits, so that clients sharing a reply channel
/// (Redis, MQTT, Kafka) do not reuse each other's ids, and 44 bits of calls.
const PREFIX_HEX: usize = 10;
const PREFIX_MASK: u64 = (1 << (4 * PREFIX_HEX)) - 1;
const NUMBER_MASK: u64 = (1 << (4 * (21 - PREFIX_HEX))) - 1;

#[derive(Default)]
struct State {
    calls: HashMap<u64, Arc<Call>>,
    closed: bool,
}

impl Pending {
    /// An empty table; `url` names the peer in errors.
    pub(crate) fn new(url: impl Into<String>) -> Arc<Self> {
        Arc::new(Pending {
            url: url.into(),
            state: Mutex::default(),
            next_id: AtomicU64::new(0),
            prefix: id_prefix(),
        })
    }

    /// Reserves an id (21 lowercase hex characters, like NestJS's) and the stream its
    /// replies arrive on. `route` names the call in a no-handler error. Dropping the stream
    /// (a timeout, a cancelled caller) forgets the id.
    pub(crate) fn register(self: &Arc<Self>, route: Cow<'static, str>) -> Result<(String, CallRx)> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed) & NUMBER_MASK;
        let call = Arc::new(Call {
            route,
            inner: Mutex::default(),
        });
        let mut state = self.state.lock().expect("pending lock");
        if state.closed {
            return Err(Error::ConnectionClosed { addr: self.url.clone() });
        }
        state.calls.insert(n, call.clone());
        drop(state);
        let rx = CallRx {
            call,
            pending: self.clone(),
            id: n,
        };
        Ok((hex_id(self.prefix, n), rx))
    }

    /// Routes a NestJS reply packet (`{"response"|"err"|"isDisposed", "id"}`) to its call by
    /// the packet's `id`. Packets for unknown ids are ignored, as NestJS does.
    pub(crate) fn deliver(&self, body: &Bytes) {
        let Ok(packet) = Packet::parse(body) else {
            tracing::warn!(url = %self.url, "ignoring a reply that is not a JSON object");
            return;
        };
        if let Some(id) = packet.id.and_then(|raw| raw.strip_prefix('"')?.strip_suffix('"')) {
            self.deliver_packet(id, &packet, body);
        }
    }

    /// Routes a reply packet whose id travels outside the body (RabbitMQ's
    /// `correlation_id`); the body's own `id`, if any, is ignored.
    pub(crate) fn deliver_for(&self, id: &str, body: &Bytes) {
        match Packet::parse(body) {
            Ok(packet) => self.deliver_packet(id, &packet, body),
            Err(_) => tracing::warn!(url = %self.url, "ignoring a reply that is not a JSON object"),
        }
    }

    fn deliver_packet(&self, id: &str, packet: &Packet<'_>, body: &Bytes) {
        let (item, last) = match packet.reply() {
            ReplyPacket::Value(v) => (ReplyItem::Value(body.slice(Packet::range_in(body, v))), false),
            ReplyPacket::Last(v) => (ReplyItem::Value(body.slice(Packet::range_in(body, v))), true),
            ReplyPacket::External => (ReplyItem::Value(body.clone()), true),
            ReplyPacket::Done => return self.finish(id),
            ReplyPacket::Error(raw) => return self.fail(id, rpc_error(raw)),
        };
        self.push(id, Ok(item), last);
    }

    /// Hands one reply item to call `id`; `last` ends the call.
    pub(crate) fn push(&self, id: &str, item: Result<ReplyItem>, last: bool) {
        let Some(n) = self.parse_id(id) else { return };
        let mut state = self.state.lock().expect("pending lock");
        let call = if last {
            state.calls.remove(&n)
        } else {
            state.calls.get(&n).cloned()
        };
        drop(state);
        if let Some(call) = call {
            call.push(&self.url, item, last);
        }
    }

    /// Ends call `id` without a further value.
    pub(crate) fn finish(&self, id: &str) {
        let Some(n) = self.parse_id(id) else { return };
        let call = self.state.lock().expect("pending lock").calls.remove(&n);
        if let Some(call) = call {
            call.end();
        }
    }

    /// Ends call `id` with an error reply; NestJS's no-handler text becomes
    /// [`Error::NoHandler`] naming the call's pattern, which the packet does not carry.
    pub(crate) fn fail(&self, id: &str, err: crate::error::RpcError) {
        let Some(n) = self.parse_id(id) else { return };
        let Some(call) = self.state.lock().expect("pending lock").calls.remove(&n) else {
            return;
        };
        let item = if err.value().as_str() == Some(NO_MESSAGE_HANDLER) {
            Err(Error::NoHandler {
                pattern: call.route.to_string(),
                addr: self.url.clone(),
            })
        } else {
            Ok(ReplyItem::Error(err))
        };
        call.push(&self.url, item, true);
    }

    /// Fails every call in flight (the connection dropped); new calls are still taken.
    pub(crate) fn fail_all(&self, error: impl Fn() -> Error) {
        let calls = std::mem::take(&mut self.state.lock().expect("pending lock").calls);
        for call in calls.into_values() {
            call.push(&self.url, Err(error()), true);
        }
    }

    /// Fails every call in flight and refuses new ones.
    pub(crate) fn close(&self, error: impl Fn() -> Error) {
        self.state.lock().expect("pending lock").closed = true;
        self.fail_all(error);
    }

    /// Number of calls in flight.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().expect("pending lock").calls.len()
    }

    /// Our own ids only: a reply meant for another client on a shared channel is skipped.
    fn parse_id(&self, hex: &str) -> Option<u64> {
        if hex.len() != 21 || !hex.is_ascii() || u64::from_str_radix(&hex[..PREFIX_HEX], 16).ok()? != self.prefix {
            return None;
        }
        u64::from_str_radix(&hex[PREFIX_HEX..], 16).ok()
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("url", &self.url)
            .field("calls", &self.len())
            .finish()
    }
}

/// `prefix` in [`PREFIX_HEX`] lowercase hex digits, then `n` in the rest of 21.
fn hex_id(prefix: u64, n: u64) -> String {
    let mut id = [0u8; 21];
    for (i, digit) in id.iter_mut().enumerate() {
        let (value, shift) = match i < PREFIX_HEX {
            true => (prefix, 4 * (PREFIX_HEX - 1 - i)),
            false => (n, 4 * (20 - i)),
        };
        *digit = b"0123456789abcdef"[((value >> shift) & 0xF) as usize];
    }
    String::from_utf8(id.to_vec()).expect("hex digits")
}

/// A random 40-bit prefix, so that ids of clients sharing a reply channel differ: every
/// table numbers its calls from 0, so two tables with the same prefix would make the same ids
/// and take each other's replies.
fn id_prefix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() & PREFIX_MASK
}

/// Bytes of reply values a call may hold that its caller has not taken yet. A stream's
/// values arrive on a connection that other calls share, so its reader cannot wait for one
/// slow caller: past this the call fails instead of holding more.
const MAX_QUEUED: usize = 64 * 1024 * 1024;

/// The reply packets of one call, pushed by the transport's reader.
struct Call {
    route: Cow<'static, str>,
    inner: Mutex<CallState>,
}

#[derive(Default)]
struct CallState {
    /// The first item waiting, then the rest: most replies are one packet, which then costs
    /// no queue.
    first: Option<Result<ReplyItem>>,
    items: VecDeque<Result<ReplyItem>>,
    /// Bytes of the values waiting.
    queued: usize,
    done: bool,
    waker: Option<Waker>,
}

/// The bytes a waiting item holds.
fn size(item: &Result<ReplyItem>) -> usize {
    match item {
        Ok(ReplyItem::Value(b) | ReplyItem::MsgPack(b)) => b.len(),
        _ => 0,
    }
}

impl Call {
    /// `url` names the peer in an error.
    fn push(&self, url: &str, item: Result<ReplyItem>, last: bool) {
        let mut s = self.inner.lock().expect("call lock");
        if s.done {
            return;
        }
        let queued = s.queued + size(&item);
        let waiting = s.first.is_some() || !s.items.is_empty();
        if waiting && queued > MAX_QUEUED {
            // What was taken stays taken; what waits goes, and the call ends with the reason.
            tracing::warn!(%url, pattern = %self.route, "a reply stream's caller does not keep up; failing the call");
            s.first = Some(Err(Error::TooLarge {
                context: format!("replies to `{}` from {url} waiting for the caller", self.route),
                size: queued,
                limit: MAX_QUEUED,
            }));
            s.items = VecDeque::new();
            s.queued = 0;
            s.done = true;
        } else {
            s.queued = queued;
            match s.first {
                None if s.items.is_empty() => s.first = Some(item),
                _ => s.items.push_back(item),
            }
            s.done = last;
        }
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    fn end(&self) {
        let mut s = self.inner.lock().expect("call lock");
        s.done = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

/// The receiving end of a call.
pub(crate) struct CallRx {
    call: Arc<Call>,
    pending: Arc<Pending>,
    id: u64,
}

impl Stream for CallRx {
    type Item = Result<ReplyItem>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let mut s = self.call.inner.lock().expect("call lock");
        if let Some(item) = s.first.take().or_else(|| s.items.pop_front()) {
            s.queued -= size(&item);
            return Poll::Ready(Some(item));
        }
        if s.done {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for CallRx {
    fn drop(&mut self) {
        if let Ok(mut state) = self.pending.state.lock() {
            state.calls.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    async fn collect(rx: CallRx) -> Vec<String> {
        rx.map(|item| match item {
            Ok(ReplyItem::Value(v)) => String::from_utf8(v.to_vec()).unwrap(),
            Ok(ReplyItem::Error(e)) => format!("err {}", e.value()),
            Ok(ReplyItem::Local(v)) => format!("local {v:?}"),
            Ok(ReplyItem::MsgPack(v)) => format!("msgpack {v:?}"),
            Err(e) => format!("error {e}"),
        })
        .collect()
        .await
    }

    #[tokio::test]
    async fn routes_packets_by_id_and_ends_on_the_last() {
        let p = Pending::new("test://x");
        let (id, rx) = p.register("r".into()).unwrap();
        let (other, rx2) = p.register("r2".into()).unwrap();
        p.deliver(&Bytes::from(format!(r#"{{"response":1,"id":"{id}"}}"#)));
        p.deliver(&Bytes::from(format!(r#"{{"response":"x","id":"{other}"}}"#)));
        p.deliver(&Bytes::from(r#"{"response":9,"id":"not-ours"}"#));
        p.deliver_for(&id, &Bytes::from(r#"{"response":2,"isDisposed":true}"#));
        p.fail(&other, crate::error::RpcError::from_value(NO_MESSAGE_HANDLER.into()));
        assert_eq!(collect(rx).await, ["1", "2"]);
        let got = collect(rx2).await;
        assert_eq!(got[0], r#""x""#);
        assert!(got[1].starts_with("error") && got[1].contains("r2"), "{got:?}");
        assert_eq!(p.len(), 0);
    }

    #[tokio::test]
    async fn a_stream_its_caller_does_not_read_fails_instead_of_growing() {
        let p = Pending::new("test://x");
        let (id, mut rx) = p.register("feed".into()).unwrap();
        let value = Bytes::from(vec![b'1'; 20 << 20]);
        p.push(&id, Ok(ReplyItem::Value(value.clone())), false);
        // Taken as it comes: no limit on a stream's length.
        for _ in 0..8 {
            p.push(&id, Ok(ReplyItem::Value(value.clone())), false);
            assert!(matches!(rx.next().await, Some(Ok(ReplyItem::Value(_)))));
        }
        // Left waiting: past 64 MiB the call ends with the reason.
        for _ in 0..4 {
            p.push(&id, Ok(ReplyItem::Value(value.clone())), false);
        }
        match rx.next().await {
            Some(Err(Error::TooLarge { context, limit, .. })) => {
                assert_eq!(limit, MAX_QUEUED);
                assert!(context.contains("`feed`") && context.contains("test://x"), "{context}");
            }
            other => panic!("{:?}", other.map(|r| r.map(|_| ()))),
        }
        assert!(rx.next().await.is_none(), "the call has ended");
        drop(rx);
        assert_eq!(p.len(), 0);
    }

    #[tokio::test]
    async fn fail_all_keeps_taking_calls_and_close_does_not() {
        let p = Pending::new("test://x");
        let (_, rx) = p.register("r".into()).unwrap();
        p.fail_all(|| Error::ConnectionClosed {
            addr: "test://x".into(),
        });
        assert_eq!(collect(rx).await.len(), 1);
        assert!(p.register("r".into()).is_ok());
        p.close(|| Error::Closed);
        assert!(p.register("r".into()).is_err());
    }

    #[test]
    fn tables_do_not_share_id_prefixes() {
        // Clients on a shared reply channel tell their replies apart by the id prefix alone
        // (each numbers its calls from 0): among a few thousand tables, no two may share one.
        let n = 4096;
        let prefixes: std::collections::HashSet<String> = (0..n)
            .map(|_| {
                let (id, _rx) = Pending::new("test://x").register("r".into()).unwrap();
                assert_eq!(id.len(), 21);
                assert!(
                    id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                    "{id}"
                );
                id[..PREFIX_HEX].to_owned()
            })
            .collect();
        assert_eq!(prefixes.len(), n, "two tables made the same ids");
    }

    #[tokio::test]
    async fn ids_stay_21_hex_digits_when_the_counter_wraps() {
        let p = Pending::new("test://x");
        p.next_id.store(NUMBER_MASK, Ordering::Relaxed);
        let (last, rx1) = p.register("r".into()).unwrap();
        let (wrapped, rx2) = p.register("r".into()).unwrap();
        assert_eq!((last.len(), wrapped.len()), (21, 21));
        p.deliver(&Bytes::from(format!(
            r#"{{"response":1,"isDisposed":true,"id":"{last}"}}"#
        )));
        p.deliver(&Bytes::from(format!(
            r#"{{"response":2,"isDisposed":true,"id":"{wrapped}"}}"#
        )));
        assert_eq!(collect(rx1).await, ["1"]);
        assert_eq!(collect(rx2).await, ["2"]);
    }

    #[test]
    fn dropping_a_call_forgets_it() {
        let p = Pending::new("test://x");
        let (_, rx) = p.register("r".into()).unwrap();
        assert_eq!(p.len(), 1);
        drop(rx);
        assert_eq!(p.len(), 0);
    }
}
