//! What a [`Harness`](super::Harness) saw: every message its service handled ([`Handled`]),
//! and every request and event its clients sent ([`Sent`]).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use crate::client::ClientService;
use crate::error::{Error, RpcError};
use crate::service::{Headers, Kind, Outbound, Payload, Replies, Reply, ReplyItem, Request, Route};

/// Records kept of each kind; later ones are counted (so waits still see them), not kept.
const RECORD_LIMIT: usize = 100_000;

/// How a handled message ended (see [`Handled`] for an example).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// Answered with these values (none: completion only, as for `()` and every event that
    /// succeeded; several: a stream).
    Replied(Vec<Value>),
    /// Answered with an error (for an event: a listener failed), after any values.
    Failed(RpcError),
    /// No handler serves the pattern.
    NoHandler,
    /// The caller stopped waiting before the handler finished, and it was dropped.
    Cancelled,
}

/// One message the service received and its handlers ran on.
///
/// ```
/// use serde_json::json;
/// use switchboard::prelude::*;
/// use switchboard::testing::{Outcome, TestService};
/// use switchboard::Kind;
///
/// #[derive(Serialize, Deserialize)]
/// struct Order { id: u32, qty: u32 }
///
/// #[message_pattern({ cmd = "place" })]
/// async fn place(order: Order) -> RpcResult<u32> {
///     if order.qty == 0 { return Err(RpcError::new("empty order")) }
///     Ok(order.id)
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let shop = TestService::new(Microservice::new().handler(PLACE)).start().await?;
/// let client = shop.client();
/// client.send(PLACE, Order { id: 7, qty: 2 }).header("tenant", "acme").await?;
/// client.send(PLACE, Order { id: 8, qty: 0 }).await.unwrap_err();
///
/// let placed = shop.handled(r#"{"cmd":"place"}"#);
/// assert_eq!(placed[0].kind, Kind::Request);
/// assert_eq!(placed[0].payload, json!({"id": 7, "qty": 2}));
/// assert_eq!(placed[0].payload_as::<Order>()?.id, 7);
/// assert_eq!(placed[0].header("tenant"), Some("acme"));
/// assert_eq!(placed[0].outcome, Outcome::Replied(vec![json!(7)]));
/// assert_eq!(placed[1].error(), Some(&RpcError::new("empty order")));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Handled {
    /// The pattern's route (`math.add`, `{"cmd":"get_user"}`).
    pub route: String,
    /// Request or event.
    pub kind: Kind,
    /// The payload as JSON (`null` for a payload that has no JSON form).
    pub payload: Value,
    /// The headers it came with.
    pub headers: BTreeMap<String, String>,
    /// How it ended.
    pub outcome: Outcome,
    /// When it was handed to the service (after a fault's delay), counted from the harness's
    /// start on tokio's clock (virtual time under a paused clock).
    pub at: Duration,
}

impl Handled {
    /// The payload decoded as `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        T::deserialize(&self.payload)
    }

    /// The last value it was answered with.
    pub fn reply(&self) -> Option<&Value> {
        match &self.outcome {
            Outcome::Replied(values) => values.last(),
            _ => None,
        }
    }

    /// The error it was answered with.
    pub fn error(&self) -> Option<&RpcError> {
        match &self.outcome {
            Outcome::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// One header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// One request or event a client of the harness sent (each attempt of a retried call).
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard::testing::TestService;
///
/// #[event_pattern("user_created")]
/// async fn welcome(name: String) {}
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let svc = TestService::new(Microservice::new().handler(WELCOME)).start().await?;
/// svc.client().emit(WELCOME, "Ada".to_string()).header("tenant", "acme").await?;
/// let emitted = svc.emitted("user_created");
/// assert_eq!(emitted[0].payload_as::<String>()?, "Ada");
/// assert_eq!(emitted[0].header("tenant"), Some("acme"));
/// assert!(svc.sent("user_created").is_empty()); // requests only
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Sent {
    /// The pattern's route.
    pub route: String,
    /// Request (`send`) or event (`emit`).
    pub kind: Kind,
    /// The payload as JSON.
    pub payload: Value,
    /// The headers it was sent with (the client's layers' included: an attempt number, an
    /// idempotency key).
    pub headers: BTreeMap<String, String>,
    /// When it was sent, counted from the harness's start on tokio's clock.
    pub at: Duration,
}

impl Sent {
    /// The payload decoded as `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        T::deserialize(&self.payload)
    }

    /// One header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Header names only, as [`Headers`]' own `Debug`: a value may be a token.
struct Names<'a>(&'a BTreeMap<String, String>);

impl std::fmt::Debug for Names<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl std::fmt::Debug for Handled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handled")
            .field("route", &self.route)
            .field("kind", &self.kind)
            .field("payload", &self.payload)
            .field("headers", &Names(&self.headers))
            .field("outcome", &self.outcome)
            .field("at", &self.at)
            .finish()
    }
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sent")
            .field("route", &self.route)
            .field("kind", &self.kind)
            .field("payload", &self.payload)
            .field("headers", &Names(&self.headers))
            .field("at", &self.at)
            .finish()
    }
}

/// The records of one harness, shared by its server and client layers.
pub(crate) struct Record {
    start: Instant,
    log: Mutex<Log>,
    /// Bumped at every message handled, for waiters.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Log {
    handled: Vec<Handled>,
    sent: Vec<Sent>,
    /// Messages handled per route, past the limit too.
    counts: HashMap<String, usize>,
    warned: bool,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Record")
    }
}

impl Record {
    pub fn new() -> Arc<Self> {
        Arc::new(Record {
            start: Instant::now(),
            log: Mutex::new(Log::default()),
            changed: watch::Sender::new(0),
        })
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn handled_one(&self, handled: Handled) {
        let mut log = self.log.lock().expect("record lock");
        *log.counts.entry(handled.route.clone()).or_default() += 1;
        if log.handled.len() < RECORD_LIMIT {
            log.handled.push(handled);
        } else {
            log.warn_full();
        }
        drop(log);
        self.changed.send_modify(|n| *n += 1);
    }

    fn sent_one(&self, sent: Sent) {
        let mut log = self.log.lock().expect("record lock");
        if log.sent.len() < RECORD_LIMIT {
            log.sent.push(sent);
        } else {
            log.warn_full();
        }
    }

    pub fn handled(&self, route: Option<&str>) -> Vec<Handled> {
        let log = self.log.lock().expect("record lock");
        log.handled
            .iter()
            .filter(|h| route.is_none_or(|r| h.route == r))
            .cloned()
            .collect()
    }

    pub fn sent(&self, route: Option<&str>, kind: Option<Kind>) -> Vec<Sent> {
        let log = self.log.lock().expect("record lock");
        log.sent
            .iter()
            .filter(|s| route.is_none_or(|r| s.route == r) && kind.is_none_or(|k| s.kind == k))
            .cloned()
            .collect()
    }

    /// How many messages of `route` were handled.
    pub fn count(&self, route: &str) -> usize {
        self.log
            .lock()
            .expect("record lock")
            .counts
            .get(route)
            .copied()
            .unwrap_or(0)
    }

    /// Each route handled, with its count, busiest first: for a wait's error.
    pub fn summary(&self) -> String {
        let log = self.log.lock().expect("record lock");
        let mut counts: Vec<(&String, &usize)> = log.counts.iter().collect();
        counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        if counts.is_empty() {
            return "nothing".into();
        }
        let shown: Vec<String> = counts
            .iter()
            .take(20)
            .map(|(route, n)| format!("{} ×{n}", crate::text::for_log(route)))
            .collect();
        match counts.len() > 20 {
            true => format!("{}, and {} more patterns", shown.join(", "), counts.len() - 20),
            false => shown.join(", "),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

impl Log {
    fn warn_full(&mut self) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                "the test harness keeps {RECORD_LIMIT} records of each kind: later ones are counted, not kept"
            );
        }
    }
}

/// A payload's JSON as a value; text that is not JSON as a string, and a payload in another
/// form (a typed gRPC message) as `null`.
fn json_of(payload: Option<&Payload>) -> Value {
    match payload {
        Some(Payload::Json(b)) => parse(b),
        Some(Payload::Local(v)) => v.to_json().map_or(Value::Null, |b| parse(&b)),
        _ => Value::Null,
    }
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn headers_of(headers: &Headers) -> BTreeMap<String, String> {
    headers.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// The server side's layer: records each message as its handlers finish with it.
#[derive(Clone)]
pub(crate) struct RecordLayer(pub Arc<Record>);

impl<S> Layer<S> for RecordLayer
where
    S: Service<Request, Response = Reply> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Service = RecordService;

    fn layer(&self, inner: S) -> RecordService {
        RecordService {
            inner: Route::new(inner),
            record: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RecordService {
    inner: Route,
    record: Arc<Record>,
}

impl Service<Request> for RecordService {
    type Response = Reply;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Reply, Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Handled {
            route: req.context().route().to_owned(),
            kind: req.kind(),
            payload: json_of(req.payload()),
            headers: headers_of(req.headers()),
            outcome: Outcome::Cancelled,
            at: self.record.now(),
        };
        // Called now, not when the future is first polled: an event takes its turn in the
        // order the messages were handed on.
        let reply = self.inner.call(req);
        let mut pending = Pending {
            record: self.record.clone(),
            handled: Some(started),
        };
        async move { Ok(pending.finish(reply.await)) }.boxed()
    }
}

/// A message being handled; recorded as cancelled if dropped before its reply is done.
struct Pending {
    record: Arc<Record>,
    handled: Option<Handled>,
}

impl Pending {
    /// Records a reply that is complete already, or passes on a stream that records itself at
    /// its end.
    fn finish(&mut self, reply: Reply) -> Reply {
        let outcome = if reply.is_no_handler() {
            Outcome::NoHandler
        } else if let Some(e) = reply.as_error() {
            Outcome::Failed(e.clone())
        } else if let Some(json) = reply.as_json() {
            Outcome::Replied(vec![parse(json)])
        } else if reply.is_done() {
            Outcome::Replied(Vec::new())
        } else {
            let pending = Pending {
                record: self.record.clone(),
                handled: self.handled.take(),
            };
            return Reply::stream(Recording {
                reply,
                values: Vec::new(),
                pending,
            });
        };
        self.done(outcome);
        reply
    }

    fn done(&mut self, outcome: Outcome) {
        if let Some(mut handled) = self.handled.take() {
            handled.outcome = outcome;
            self.record.handled_one(handled);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.done(Outcome::Cancelled);
    }
}

/// A reply of several packets (or a value handed over in-process), recorded at its end.
struct Recording {
    reply: Reply,
    values: Vec<Value>,
    pending: Pending,
}

impl Stream for Recording {
    type Item = ReplyItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<ReplyItem>> {
        let this = &mut *self;
        let polled = this.reply.poll_next_unpin(cx);
        match &polled {
            Poll::Ready(Some(ReplyItem::Value(b))) => this.values.push(parse(b)),
            Poll::Ready(Some(ReplyItem::Local(v))) => this.values.push(v.to_json().map_or(Value::Null, |b| parse(&b))),
            Poll::Ready(Some(ReplyItem::Error(e))) => this.pending.done(Outcome::Failed(e.clone())),
            Poll::Ready(None) => this.pending.done(Outcome::Replied(std::mem::take(&mut this.values))),
            // A value in another encoding: counted, not shown.
            Poll::Ready(Some(_)) => this.values.push(Value::Null),
            Poll::Pending => {}
        }
        polled
    }
}

/// The client side's layer: records each request and event a harness client sends.
#[derive(Clone)]
pub(crate) struct RecordCalls(pub Arc<Record>);

impl Layer<ClientService> for RecordCalls {
    type Service = RecordCallsService;

    fn layer(&self, inner: ClientService) -> RecordCallsService {
        RecordCallsService {
            inner,
            record: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RecordCallsService {
    inner: ClientService,
    record: Arc<Record>,
}

impl Service<Outbound> for RecordCallsService {
    type Response = Replies;
    type Error = Error;
    type Future = BoxFuture<'static, crate::Result<Replies>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<crate::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        let payload = match &out.local {
            Some(v) => v.to_json().map_or(Value::Null, |b| parse(&b)),
            None => parse(&out.payload),
        };
        self.record.sent_one(Sent {
            route: out.route.to_string(),
            kind: out.kind,
            payload,
            headers: headers_of(&out.headers),
            at: self.record.now(),
        });
        self.inner.call(out)
    }
}
