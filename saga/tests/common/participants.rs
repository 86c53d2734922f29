//! The seed's order flow: inventory, payment and shipping participants that count their side
//! effects (once per idempotency key, through an inbox-like map) and fail on a script, and the
//! order saga over them.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard::prelude::*;
use switchboard::{Client, Headers, RpcResult, State};
use switchboard_saga::{AfterPivot, Saga, Step};

/// What a participant does on its next calls of one pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    /// Answers with a business error.
    Decline,
    /// Answers `unavailable` (retryable).
    Unavailable,
    /// Takes this long before answering normally.
    Slow(Duration),
}

/// The participants' shared books.
#[derive(Default)]
pub struct Books {
    /// Effects applied, in order, as `pattern key`: a duplicate here is an effect done twice
    /// (the participants' inbox should prevent it).
    pub applied: Mutex<Vec<String>>,
    /// Every delivery, retries included, by idempotency key.
    pub deliveries: Mutex<HashMap<String, u32>>,
    /// Attempt headers seen, by key.
    pub attempts: Mutex<HashMap<String, Vec<String>>>,
    /// Scripted acts, by pattern, used up in order.
    pub script: Mutex<HashMap<&'static str, VecDeque<Act>>>,
    /// Every request as it arrived, before the inbox: (idempotency key, attempt).
    pub raw: Mutex<Vec<(String, String)>>,
    /// Rules by payload, for many sagas at once: a charge of an amount ending in 7 is
    /// declined; a shipment's first delivery for an odd payment is unavailable.
    pub rules: bool,
}

/// True for an amount the rules decline.
pub fn declined(amount: u64) -> bool {
    amount % 10 == 7
}

impl Books {
    /// Makes the next calls of `pattern` act as `acts` say.
    pub fn script(&self, pattern: &'static str, acts: impl IntoIterator<Item = Act>) {
        self.script.lock().unwrap().entry(pattern).or_default().extend(acts);
    }

    /// Effects applied for `pattern`, in order.
    pub fn applied(&self, pattern: &str) -> Vec<String> {
        let prefix = format!("{pattern} ");
        self.applied
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Every applied effect, in order, as `pattern`.
    pub fn order(&self) -> Vec<String> {
        self.applied
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.split(' ').next().unwrap().to_owned())
            .collect()
    }

    async fn handle(&self, pattern: &'static str, headers: &Headers) -> RpcResult<()> {
        let key = headers.get("idempotency-key").unwrap_or("-").to_owned();
        *self.deliveries.lock().unwrap().entry(key.clone()).or_default() += 1;
        self.attempts
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .push(headers.get("sb-attempt").unwrap_or("-").to_owned());
        let act = self.script.lock().unwrap().get_mut(pattern).and_then(|q| q.pop_front());
        match act {
            Some(Act::Decline) => return Err(RpcError::new(format!("{pattern} declined"))),
            Some(Act::Unavailable) => return Err(RpcError::unavailable(format!("{pattern} is busy"))),
            Some(Act::Slow(d)) => tokio::time::sleep(d).await,
            None => {}
        }
        self.applied.lock().unwrap().push(format!("{pattern} {key}"));
        Ok(())
    }
}

pub type Shared = Arc<Books>;

#[message_pattern("inventory.reserve")]
pub async fn reserve(qty: u32, State(b): State<Shared>, headers: Headers) -> RpcResult<u64> {
    b.handle("inventory.reserve", &headers).await?;
    Ok(1000 + qty as u64)
}

#[message_pattern("inventory.release")]
pub async fn release(_reservation: u64, State(b): State<Shared>, headers: Headers) -> RpcResult<()> {
    b.handle("inventory.release", &headers).await
}

#[message_pattern("payment.charge")]
pub async fn charge(amount: u64, State(b): State<Shared>, headers: Headers) -> RpcResult<u64> {
    if b.rules && declined(amount) {
        return Err(RpcError::new("card declined"));
    }
    b.handle("payment.charge", &headers).await?;
    Ok(2000 + amount)
}

#[message_pattern("payment.refund")]
pub async fn refund(_payment: u64, State(b): State<Shared>, headers: Headers) -> RpcResult<()> {
    b.handle("payment.refund", &headers).await
}

#[message_pattern("shipping.ship")]
pub async fn ship(payment: u64, State(b): State<Shared>, headers: Headers) -> RpcResult<u64> {
    if b.rules && payment % 2 == 1 && headers.get("sb-attempt") == Some("1") {
        return Err(RpcError::unavailable("shipping is busy"));
    }
    b.handle("shipping.ship", &headers).await?;
    Ok(3000)
}

/// A microservice serving every participant over `url`, behind an inbox that answers a
/// repeated idempotency key with its first reply.
pub fn participants(books: Shared, url: &str) -> Microservice<Shared> {
    let seen = books.clone();
    let record =
        switchboard::middleware::from_fn(move |req: switchboard::Request, next: switchboard::middleware::Next| {
            let headers = req.headers();
            let key = headers.get("idempotency-key").unwrap_or("-").to_owned();
            let attempt = headers.get("sb-attempt").unwrap_or("-").to_owned();
            seen.raw.lock().unwrap().push((key, attempt));
            next.run(req)
        });
    Microservice::new()
        .layer(switchboard_saga::Inbox::memory().layer())
        .layer(record)
        .with_state(books)
        .handler(RESERVE)
        .handler(RELEASE)
        .handler(CHARGE)
        .handler(REFUND)
        .handler(SHIP)
        .listen(url)
}

/// The order's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub qty: u32,
    pub amount: u64,
    pub reservation: Option<u64>,
    pub payment: Option<u64>,
    pub shipment: Option<u64>,
}

impl Order {
    pub fn new(qty: u32, amount: u64) -> Self {
        Order {
            qty,
            amount,
            ..Order::default()
        }
    }
}

/// Fast retries for tests.
pub const QUICK: Duration = Duration::from_millis(20);

/// reserve (compensated by release) → charge (compensated by refund) → ship (pivot), or with
/// `pivot_at_charge`, charge as the pivot and ship retriable after it.
pub fn compensating_order(c: &Client) -> Saga<Order> {
    Saga::<Order>::new("order")
        .step(
            Step::new("reserve", c, RESERVE, |o: &Order| o.qty)
                .on_reply(|o, r| o.reservation = Some(*r))
                .backoff(QUICK, QUICK * 4)
                .compensate(RELEASE, |_, r| *r),
        )
        .step(
            Step::new("charge", c, CHARGE, |o: &Order| o.amount)
                .on_reply(|o, p| o.payment = Some(*p))
                .backoff(QUICK, QUICK * 4)
                .compensate(REFUND, |_, p| *p),
        )
        .compensation_retry(5, QUICK, QUICK * 4, Duration::from_secs(5))
}

/// The seed's order flow: reserve (release) → charge, the pivot → ship, retriable.
pub fn order_saga(c: &Client) -> Saga<Order, AfterPivot> {
    Saga::<Order>::new("order")
        .step(
            Step::new("reserve", c, RESERVE, |o: &Order| o.qty)
                .on_reply(|o, r| o.reservation = Some(*r))
                .backoff(QUICK, QUICK * 4)
                .compensate(RELEASE, |_, r| *r),
        )
        .pivot(
            Step::new("charge", c, CHARGE, |o: &Order| o.amount)
                .on_reply(|o, p| o.payment = Some(*p))
                .backoff(QUICK, QUICK * 4),
        )
        .step(
            Step::new("ship", c, SHIP, |o: &Order| o.payment.unwrap_or(0))
                .on_reply(|o, s| o.shipment = Some(*s))
                .backoff(QUICK, QUICK * 4)
                .retriable(),
        )
        .compensation_retry(5, QUICK, QUICK * 4, Duration::from_secs(5))
}
