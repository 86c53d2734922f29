//! The saga's participants: inventory, payment and shipping, each its own service with its
//! books in memory. Each is served behind an [`Inbox`](switchboard_saga::Inbox) (see `main`),
//! so a step the orchestrator sends again (same `idempotency-key`) has its effect once and
//! gets the first reply again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use switchboard::prelude::*;
use switchboard::{Headers, RpcResult};

/// The attempt number the orchestrator sends, for the logs.
fn attempt(headers: &Headers) -> &str {
    headers.get("sb-attempt").unwrap_or("-")
}

/// What `inventory.reserve` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reserve {
    /// The order reserving.
    pub order: String,
    /// What.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

/// One article's stock, as `inventory.stock` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stock {
    /// The article.
    pub sku: String,
    /// Free to reserve.
    pub available: u32,
    /// Held by reservations.
    pub reserved: u32,
}

#[derive(Default)]
struct Shelves {
    available: BTreeMap<String, u32>,
    /// Reservation id → (sku, qty).
    reservations: HashMap<String, (String, u32)>,
    next: u64,
}

/// The inventory: stock per article, and reservations against it.
pub struct Inventory {
    shelves: Mutex<Shelves>,
}

impl Inventory {
    /// With `stock` (article, count) on the shelves.
    pub fn new(stock: impl IntoIterator<Item = (String, u32)>) -> Self {
        Inventory {
            shelves: Mutex::new(Shelves {
                available: stock.into_iter().collect(),
                ..Shelves::default()
            }),
        }
    }
}

#[handlers]
impl Inventory {
    /// Takes `qty` of `sku` off the shelf for an order; a business error when there is not
    /// enough. Answers the reservation's id.
    #[message_pattern("inventory.reserve")]
    pub async fn reserve(&self, r: Reserve, headers: Headers) -> RpcResult<String> {
        let mut shelves = self.shelves.lock().unwrap_or_else(|e| e.into_inner());
        let left = shelves.available.get(&r.sku).copied().unwrap_or(0);
        if left < r.qty {
            return Err(RpcError::new(format!(
                "out of stock: {left} {} left, {} asked",
                r.sku, r.qty
            )));
        }
        shelves.available.insert(r.sku.clone(), left - r.qty);
        shelves.next += 1;
        let id = format!("R-{}", shelves.next);
        shelves.reservations.insert(id.clone(), (r.sku.clone(), r.qty));
        tracing::info!(
            order = %r.order, attempt = attempt(&headers),
            "reserved {} {} as {id} ({} left)", r.qty, r.sku, left - r.qty
        );
        Ok(id)
    }

    /// Puts a reservation back on the shelf (a reservation not held: nothing to do).
    #[message_pattern("inventory.release")]
    pub async fn release(&self, reservation: String, headers: Headers) {
        let mut shelves = self.shelves.lock().unwrap_or_else(|e| e.into_inner());
        match shelves.reservations.remove(&reservation) {
            Some((sku, qty)) => {
                *shelves.available.entry(sku.clone()).or_default() += qty;
                tracing::info!(
                    attempt = attempt(&headers),
                    "released {reservation}: {qty} {sku} back on the shelf"
                );
            }
            None => tracing::info!("release {reservation}: not held, nothing to do"),
        }
    }

    /// One article's stock.
    #[message_pattern("inventory.stock")]
    pub async fn stock(&self, sku: String) -> Stock {
        let shelves = self.shelves.lock().unwrap_or_else(|e| e.into_inner());
        let reserved = shelves
            .reservations
            .values()
            .filter(|(s, _)| *s == sku)
            .map(|(_, qty)| qty)
            .sum();
        Stock {
            available: shelves.available.get(&sku).copied().unwrap_or(0),
            reserved,
            sku,
        }
    }
}

/// What `payment.charge` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charge {
    /// The order paid for.
    pub order: String,
    /// How much.
    pub amount: u64,
}

/// A charge, as `payment.charges` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charged {
    /// The payment's id.
    pub id: String,
    /// The order paid for.
    pub order: String,
    /// How much.
    pub amount: u64,
    /// Refunded since.
    pub refunded: bool,
}

/// The payment service: charges up to a limit.
pub struct Payment {
    limit: u64,
    charges: Mutex<Vec<Charged>>,
}

impl Payment {
    /// Declines charges above `limit`.
    pub fn new(limit: u64) -> Self {
        Payment {
            limit,
            charges: Mutex::default(),
        }
    }
}

#[handlers]
impl Payment {
    /// Charges an order; a business error above the limit. Answers the payment's id.
    #[message_pattern("payment.charge")]
    pub async fn charge(&self, c: Charge, headers: Headers) -> RpcResult<String> {
        if c.amount > self.limit {
            tracing::info!(order = %c.order, "declined {}: over the limit of {}", c.amount, self.limit);
            return Err(RpcError::new(format!(
                "payment declined: {} is over the limit of {}",
                c.amount, self.limit
            )));
        }
        let mut charges = self.charges.lock().unwrap_or_else(|e| e.into_inner());
        let id = format!("P-{}", charges.len() + 1);
        charges.push(Charged {
            id: id.clone(),
            order: c.order.clone(),
            amount: c.amount,
            refunded: false,
        });
        tracing::info!(order = %c.order, attempt = attempt(&headers), "charged {} as {id}", c.amount);
        Ok(id)
    }

    /// Refunds a payment (one refunded already, or unknown: nothing to do).
    #[message_pattern("payment.refund")]
    pub async fn refund(&self, payment: String) {
        let mut charges = self.charges.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = charges.iter_mut().find(|c| c.id == payment && !c.refunded) {
            c.refunded = true;
            tracing::info!(order = %c.order, "refunded {payment}: {}", c.amount);
        }
    }

    /// The charges made for an order.
    #[message_pattern("payment.charges")]
    pub async fn charges(&self, order: String) -> Vec<Charged> {
        let charges = self.charges.lock().unwrap_or_else(|e| e.into_inner());
        charges.iter().filter(|c| c.order == order).cloned().collect()
    }
}

/// What `shipping.create` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ship {
    /// The order shipped.
    pub order: String,
    /// What.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

/// A shipment, as `shipping.shipments` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shipment {
    /// The shipment's id.
    pub id: String,
    /// The order shipped.
    pub order: String,
    /// Cancelled since.
    pub cancelled: bool,
}

/// The shipping service. Orders named in `slow` take `slow_for` to ship (for the demo's
/// orchestrator crash).
pub struct Shipping {
    slow: HashSet<String>,
    slow_for: Duration,
    shipments: Mutex<Vec<Shipment>>,
}

impl Shipping {
    /// Ships the orders in `slow` after `slow_for`, the others at once.
    pub fn new(slow: impl IntoIterator<Item = String>, slow_for: Duration) -> Self {
        Shipping {
            slow: slow.into_iter().collect(),
            slow_for,
            shipments: Mutex::default(),
        }
    }
}

#[handlers]
impl Shipping {
    /// Creates a shipment for an order. Answers its id.
    #[message_pattern("shipping.create")]
    pub async fn create(&self, s: Ship, headers: Headers) -> String {
        if self.slow.contains(&s.order) {
            tracing::info!(order = %s.order, attempt = attempt(&headers), "shipping slowly: {:?}", self.slow_for);
            tokio::time::sleep(self.slow_for).await;
        }
        let mut shipments = self.shipments.lock().unwrap_or_else(|e| e.into_inner());
        let id = format!("S-{}", shipments.len() + 1);
        shipments.push(Shipment {
            id: id.clone(),
            order: s.order.clone(),
            cancelled: false,
        });
        tracing::info!(order = %s.order, attempt = attempt(&headers), "shipment {id}: {} {}", s.qty, s.sku);
        id
    }

    /// Cancels a shipment.
    #[message_pattern("shipping.cancel")]
    pub async fn cancel(&self, shipment: String) {
        let mut shipments = self.shipments.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shipments.iter_mut().find(|s| s.id == shipment && !s.cancelled) {
            s.cancelled = true;
            tracing::info!(order = %s.order, "cancelled {shipment}");
        }
    }

    /// The shipments of an order.
    #[message_pattern("shipping.shipments")]
    pub async fn shipments(&self, order: String) -> Vec<Shipment> {
        let shipments = self.shipments.lock().unwrap_or_else(|e| e.into_inner());
        shipments.iter().filter(|s| s.order == order).cloned().collect()
    }
}
