//! The order events are handled in: by default one route's events run one after another, in
//! the order the router was called (the order they arrived), as a NestJS service with a
//! synchronous handler or a Kafka consumer behaves. A pattern may opt into concurrency, or
//! into order per key (a field of the payload).
//!
//! Each event takes its turn when the router is called, so the order is fixed before any
//! handler runs, whichever task polls it first. A turn is a oneshot the next event waits
//! on; dropping it (done, cancelled or panicked) lets the next one go.

use std::collections::HashMap;

use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use super::{Payload, Reply, Request};

/// How a pattern's events are handled, declared with the pattern
/// ([`PatternOptions::concurrent`](super::PatternOptions::concurrent),
/// [`PatternOptions::key`](super::PatternOptions::key); `concurrent` and `key = "..."` in
/// `#[event_pattern]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventOrder {
    /// One after another, in arrival order (the default).
    #[default]
    InOrder,
    /// All at once, as they arrive (within the transport's `max_in_flight`).
    Concurrent,
    /// In arrival order among the events whose payload has the same value in this top-level
    /// field; concurrently across values. A payload without the field counts as one key.
    ByKey(&'static str),
}

impl EventOrder {
    /// What a route's listeners together allow: concurrency only if every listener opts in,
    /// order per key if they name one key (and the rest are concurrent), else in order.
    pub(crate) fn of_listeners(orders: impl IntoIterator<Item = EventOrder>) -> EventOrder {
        let mut all = orders.into_iter().peekable();
        if all.peek().is_none() {
            return EventOrder::InOrder;
        }
        let mut key = None;
        for o in all {
            match o {
                EventOrder::InOrder => return EventOrder::InOrder,
                EventOrder::ByKey(k) => match key {
                    Some(other) if other != k => return EventOrder::InOrder,
                    _ => key = Some(k),
                },
                EventOrder::Concurrent => {}
            }
        }
        key.map_or(EventOrder::Concurrent, EventOrder::ByKey)
    }
}

/// The turns of one route's events.
pub(crate) enum Sequencer {
    Concurrent,
    InOrder(Mutex<Option<oneshot::Receiver<()>>>),
    ByKey(&'static str, Arc<Keyed>),
}

/// The last turn per key value (its number, and what the next waits on), kept only while
/// an event of that key is queued or running.
#[derive(Default)]
pub(crate) struct Keyed {
    last: Mutex<HashMap<Box<str>, LastTurn>>,
    next: std::sync::atomic::AtomicU64,
}

type LastTurn = (u64, oneshot::Receiver<()>);

/// An event's place: wait for `wait`, run, then drop `done` (which lets the next one go).
/// Dropped before its own wait is over (cancelled, refused, its connection closed), it hands
/// the wait on, so the next event still starts only after the one before this.
pub(crate) struct Turn {
    wait: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
    forget: Option<Forget>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (Some(wait), Some(done)) = (self.wait.take(), self.done.take()) else {
            return;
        };
        let forget = self.forget.take();
        let relay = async move {
            let _ = wait.await;
            drop((done, forget));
        };
        // Without a runtime (only at process exit) the next event goes at once.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(relay);
        }
    }
}

/// Removes a key's entry once its last queued event is over.
struct Forget {
    keyed: Arc<Keyed>,
    key: Box<str>,
    seq: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        let mut last = self.keyed.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.get(&self.key).is_some_and(|(seq, _)| *seq == self.seq) {
            last.remove(&self.key);
        }
    }
}

impl Sequencer {
    pub(crate) fn new(order: EventOrder) -> Self {
        match order {
            EventOrder::InOrder => Sequencer::InOrder(Mutex::new(None)),
            EventOrder::Concurrent => Sequencer::Concurrent,
            EventOrder::ByKey(field) => Sequencer::ByKey(field, Arc::default()),
        }
    }

    /// The turn of an event about to be handled, or `None` when it need not wait for others.
    pub(crate) fn turn(&self, req: &Request) -> Option<Turn> {
        if let Sequencer::Concurrent = self {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        match self {
            Sequencer::Concurrent => None,
            Sequencer::InOrder(last) => {
                let wait = last.lock().unwrap_or_else(|p| p.into_inner()).replace(rx);
                Some(Turn {
                    wait,
                    done: Some(tx),
                    forget: None,
                })
            }
            Sequencer::ByKey(field, keyed) => {
                let key = key_of(req.payload(), field);
                let seq = keyed.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let wait = keyed
                    .last
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone(), (seq, rx))
                    .map(|(_, rx)| rx);
                Some(Turn {
                    wait,
                    done: Some(tx),
                    forget: Some(Forget {
                        keyed: keyed.clone(),
                        key,
                        seq,
                    }),
                })
            }
        }
    }
}

impl Turn {
    /// Starts `run` (calls the route: a layer such as a bulkhead or a rate limit takes its
    /// slot then, not while the event queues) once the events before it are over; the turn
    /// ends with it.
    pub(crate) fn then(
        mut self,
        run: impl FnOnce() -> BoxFuture<'static, Reply> + Send + 'static,
    ) -> BoxFuture<'static, Reply> {
        async move {
            if let Some(wait) = self.wait.as_mut() {
                // An error is a turn given up without a relay (no runtime): go on.
                let _ = wait.await;
                self.wait = None;
            }
            let reply = run().await;
            drop(self);
            reply
        }
        .boxed()
    }
}

/// Longest key kept: a longer value is cut (the events still group by what is kept).
const MAX_KEY: usize = 256;

/// The value of `field` in a JSON object payload, as written (`"a"` and `1` differ); empty
/// when the payload is not an object or has no such field.
fn key_of(payload: Option<&Payload>, field: &str) -> Box<str> {
    let json = match payload {
        Some(Payload::Json(b)) => std::borrow::Cow::Borrowed(&b[..]),
        Some(Payload::Local(v)) => match v.to_json() {
            Ok(b) => std::borrow::Cow::Owned(b.to_vec()),
            Err(_) => return Box::from(""),
        },
        Some(Payload::MsgPack(b)) => match crate::wire::msgpack::msgpack_to_json(b) {
            Ok(b) => std::borrow::Cow::Owned(b.to_vec()),
            Err(_) => return Box::from(""),
        },
        _ => return Box::from(""),
    };
    let mut key = field_of(&json, field).unwrap_or_default();
    key.truncate(key.floor_char_boundary(MAX_KEY));
    key.into_boxed_str()
}

/// The raw JSON of one top-level field, without reading the others into values.
fn field_of(json: &[u8], field: &str) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Find<'f>(&'f str);
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if found.is_none() && k == self.0 {
                    let v: Box<serde_json::value::RawValue> = map.next_value()?;
                    found = Some(v.get().to_owned());
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    de.deserialize_map(Find(field)).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Address, Context, Kind};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn event(json: &'static str) -> Request {
        Request::new(
            Address::route("r"),
            Payload::Json(bytes::Bytes::from_static(json.as_bytes())),
            Context::new("test", Kind::Event),
        )
    }

    #[test]
    fn a_key_is_the_field_as_written() {
        assert_eq!(
            field_of(br#"{"a":1,"id":"x\"y","b":[1,{"id":2}]}"#, "id").as_deref(),
            Some(r#""x\"y""#)
        );
        assert_eq!(field_of(br#"{"id": 12 }"#, "id").as_deref(), Some("12"));
        assert_eq!(field_of(br#"[1,2]"#, "id"), None);
        assert_eq!(field_of(br#"{"a":1}"#, "id"), None);
        assert_eq!(field_of(b"not json", "id"), None);
        let long = format!(r#"{{"id":"{}"}}"#, "é".repeat(500));
        let req = Request::new(
            Address::route("r"),
            Payload::Json(long.into()),
            Context::new("test", Kind::Event),
        );
        assert!(key_of(req.payload(), "id").len() <= MAX_KEY);
    }

    #[test]
    fn listeners_agree_on_an_order() {
        use EventOrder::*;
        assert_eq!(EventOrder::of_listeners([]), InOrder);
        assert_eq!(EventOrder::of_listeners([Concurrent, Concurrent]), Concurrent);
        assert_eq!(EventOrder::of_listeners([Concurrent, InOrder]), InOrder);
        assert_eq!(EventOrder::of_listeners([Concurrent, ByKey("k")]), ByKey("k"));
        assert_eq!(EventOrder::of_listeners([ByKey("k"), InOrder]), InOrder);
        assert_eq!(EventOrder::of_listeners([ByKey("k"), ByKey("j")]), InOrder);
    }

    /// Three events whose handlers would finish in reverse order run one after another.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn turns_run_in_call_order_and_one_at_a_time() {
        let seq = Sequencer::new(EventOrder::InOrder);
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..3u64 {
            let (log, running) = (log.clone(), running.clone());
            let run = async move {
                assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "one at a time");
                tokio::time::sleep(std::time::Duration::from_millis(30 - 10 * i)).await;
                log.lock().unwrap().push(i);
                running.fetch_sub(1, Ordering::SeqCst);
                Reply::empty()
            }
            .boxed();
            let fut = seq.turn(&event("{}")).unwrap().then(move || run);
            tasks.push(tokio::spawn(fut));
        }
        for t in tasks.into_iter().rev() {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_dropped_turn_lets_the_next_one_go_and_keys_are_forgotten() {
        let seq = Sequencer::new(EventOrder::ByKey("id"));
        let first = seq
            .turn(&event(r#"{"id":1}"#))
            .unwrap()
            .then(|| std::future::pending().boxed());
        let other_key = seq
            .turn(&event(r#"{"id":2}"#))
            .unwrap()
            .then(|| async { Reply::empty() }.boxed());
        let second = seq
            .turn(&event(r#"{"id":1}"#))
            .unwrap()
            .then(|| async { Reply::empty() }.boxed());
        // Another key does not wait for key 1.
        assert!(other_key.now_or_never().is_some());
        let mut second = second;
        assert!((&mut second).now_or_never().is_none(), "waits for the first of its key");
        drop(first);
        assert!(second.now_or_never().is_some());
        let Sequencer::ByKey(_, keyed) = &seq else {
            unreachable!()
        };
        assert!(
            keyed.last.lock().unwrap().is_empty(),
            "no key kept once its events are over"
        );
    }

    /// An event given up while it queues (its connection closed, its deadline passed) does not
    /// let the one after it start before the one before it is over; nor is the route called
    /// for an event before its turn.
    #[tokio::test]
    async fn a_turn_given_up_in_the_queue_hands_its_wait_on() {
        let seq = Sequencer::new(EventOrder::InOrder);
        let (release, released) = oneshot::channel::<()>();
        let first = seq.turn(&event("{}")).unwrap().then(move || {
            async move {
                let _ = released.await;
                Reply::empty()
            }
            .boxed()
        });
        let called = Arc::new(AtomicUsize::new(0));
        let second = {
            let called = called.clone();
            seq.turn(&event("{}")).unwrap().then(move || {
                called.fetch_add(1, Ordering::SeqCst);
                async { Reply::empty() }.boxed()
            })
        };
        let third = seq
            .turn(&event("{}"))
            .unwrap()
            .then(|| async { Reply::empty() }.boxed());
        let first = tokio::spawn(first);
        drop(second);
        let mut third = tokio::spawn(third);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            (&mut third).now_or_never().is_none(),
            "waits for the first, not the second"
        );
        assert_eq!(
            called.load(Ordering::SeqCst),
            0,
            "a dropped event's route is never called"
        );
        release.send(()).unwrap();
        first.await.unwrap();
        third.await.unwrap();
    }
}
