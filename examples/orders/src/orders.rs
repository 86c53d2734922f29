//! The order service: runs the seed's order saga (reserve → charge, the pivot → ship) from an
//! SQLite saga log, and answers `orders.create` and `orders.get`.

use switchboard::prelude::*;
use switchboard::{Client, RpcResult};
use switchboard_saga::log::SqliteLog;
use switchboard_saga::{AfterPivot, Error, Orchestrator, Saga, Sagas, Status, Step, Transition};

use crate::participants::{Charge, Inventory, Payment, Reserve, Ship, Shipping};

/// An order, and what its steps answered: the saga's state, logged after every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Its id, the saga's id too.
    pub id: String,
    /// What is ordered.
    pub sku: String,
    /// How many.
    pub qty: u32,
    /// What it costs.
    pub amount: u64,
    /// The inventory's reservation, once reserved.
    pub reservation: Option<String>,
    /// The payment, once charged.
    pub payment: Option<String>,
    /// The shipment, once shipped.
    pub shipment: Option<String>,
}

/// What `orders.create` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewOrder {
    /// The order's id (a retried create with the same id waits for the same saga).
    pub id: String,
    /// What.
    pub sku: String,
    /// How many.
    pub qty: u32,
    /// What it costs.
    pub amount: u64,
}

/// An order's saga as `orders.create` and `orders.get` answer it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderView {
    /// The order's id.
    pub id: String,
    /// `running`, `compensating`, `completed`, `compensated`, `stuck` or `aborted`.
    pub status: Status,
    /// The order after the last step that replied.
    pub order: Order,
    /// Why it compensated or is stuck.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its saga log, one line per transition (`orders.get` only).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub log: Vec<String>,
}

impl From<&Order> for Reserve {
    fn from(o: &Order) -> Self {
        Reserve {
            order: o.id.clone(),
            sku: o.sku.clone(),
            qty: o.qty,
        }
    }
}

impl From<&Order> for Charge {
    fn from(o: &Order) -> Self {
        Charge {
            order: o.id.clone(),
            amount: o.amount,
        }
    }
}

impl From<&Order> for Ship {
    fn from(o: &Order) -> Self {
        Ship {
            order: o.id.clone(),
            sku: o.sku.clone(),
            qty: o.qty,
        }
    }
}

/// reserve (undone by release) → charge, the pivot: a declined payment releases the
/// reservation, a charged one is never undone → ship, retried until it succeeds.
pub fn order_saga(inventory: &Client, payment: &Client, shipping: &Client) -> Saga<Order, AfterPivot> {
    Saga::<Order>::new("order")
        .step(
            Step::new("reserve", inventory, Inventory::RESERVE, |o: &Order| Reserve::from(o))
                .on_reply(|o, id| o.reservation = Some(id.clone()))
                .compensate(Inventory::RELEASE, |_, id| id.clone()),
        )
        .pivot(
            Step::new("charge", payment, Payment::CHARGE, |o: &Order| Charge::from(o))
                .on_reply(|o, id| o.payment = Some(id.clone())),
        )
        .step(
            Step::new("ship", shipping, Shipping::CREATE, |o: &Order| Ship::from(o))
                .on_reply(|o, id| o.shipment = Some(id.clone()))
                .retriable(),
        )
}

/// The order service: the orchestrator and the order saga's handle.
pub struct Orders {
    orchestrator: Orchestrator<SqliteLog>,
    orders: Sagas<Order, SqliteLog>,
    steps: Vec<&'static str>,
}

impl Orders {
    /// Registers `saga` with `orchestrator`.
    pub fn new(orchestrator: Orchestrator<SqliteLog>, saga: Saga<Order, AfterPivot>) -> Self {
        let steps = saga.steps().into_iter().map(|(name, _)| name).collect();
        let orders = orchestrator.register(saga);
        Orders {
            orchestrator,
            orders,
            steps,
        }
    }

    fn step(&self, i: u32) -> &'static str {
        self.steps.get(i as usize).copied().unwrap_or("?")
    }

    /// One line for a logged transition.
    fn line(&self, t: &Transition) -> String {
        match t {
            Transition::Started { .. } => "started".into(),
            Transition::StepSent { step, attempt, .. } => format!("{} sent #{attempt}", self.step(*step)),
            Transition::StepReplied { step, .. } => format!("{} replied", self.step(*step)),
            Transition::StepRetrying { step, error, .. } => format!("{} retrying: {error}", self.step(*step)),
            Transition::StepFailed { step, error } => format!("{} failed: {error}", self.step(*step)),
            Transition::CompensationSent { step, attempt } => format!("{} undo sent #{attempt}", self.step(*step)),
            Transition::CompensationRetrying { step, error, .. } => {
                format!("{} undo retrying: {error}", self.step(*step))
            }
            Transition::CompensationDone { step } => format!("{} undone", self.step(*step)),
            Transition::Stuck { step, error } => format!("stuck at {}: {error}", self.step(*step)),
            Transition::Skipped { step } => format!("{} skipped", self.step(*step)),
            Transition::Aborted { reason } => format!("aborted: {reason}"),
            other => other.kind().into(),
        }
    }
}

fn refused(e: Error) -> RpcError {
    match e {
        Error::NotFound(id) => RpcError::new(format!("order {id} not found")),
        Error::Exists(id) => RpcError::new(format!("{id} is the id of another saga")),
        Error::Invalid(why) => RpcError::new(why),
        e => RpcError::internal_from(e),
    }
}

#[handlers]
impl Orders {
    /// Starts the order's saga (its id the saga's id) and answers how it ended. Created again
    /// with the same id, it waits for the same saga.
    #[message_pattern("orders.create")]
    pub async fn create(&self, new: NewOrder) -> RpcResult<OrderView> {
        let order = Order {
            id: new.id.clone(),
            sku: new.sku,
            qty: new.qty,
            amount: new.amount,
            reservation: None,
            payment: None,
            shipment: None,
        };
        tracing::info!(order = %new.id, "orders.create: running its saga");
        let done = self.orders.run(new.id, order).await.map_err(refused)?;
        tracing::info!(order = %done.id, status = %done.status, "saga ended");
        Ok(OrderView {
            id: done.id,
            status: done.status,
            order: done.state,
            error: done.error,
            log: Vec::new(),
        })
    }

    /// The order's saga as its log says: status, the order so far, every transition.
    #[message_pattern("orders.get")]
    pub async fn get(&self, id: String) -> RpcResult<OrderView> {
        let record = self.orchestrator.show(&id).await.map_err(refused)?;
        let mut state = None;
        for entry in &record.entries {
            if let Transition::Started { state: s, .. } | Transition::StepReplied { state: s, .. } = &entry.transition {
                state = Some(s);
            }
        }
        let order = state
            .map(|s| serde_json::from_value(s.clone()))
            .transpose()
            .map_err(RpcError::internal_from)?
            .ok_or_else(|| RpcError::internal_from(format!("saga {id} has no state")))?;
        let error = match self.orders.outcome(&id).await.map_err(refused)? {
            Some(outcome) => outcome.error,
            None => None,
        };
        Ok(OrderView {
            id,
            status: record.summary.status,
            order,
            error,
            log: record.entries.iter().map(|e| self.line(&e.transition)).collect(),
        })
    }
}
