//! The process-wide registry of `#[message_pattern]` and `#[event_pattern]` functions, for
//! `Microservice::from_registry()`.
//!
//! Each attribute submits a [`Registration`] through `inventory`. A handler that takes the
//! service's state cannot be served from here (the registry does not know the state's type):
//! it registers without a route, and `from_registry` asks for it to be added explicitly.

use super::handler::{Bound, HandlerInfo};
use crate::service::Route;

/// One registered handler. Made by the attribute macros.
#[doc(hidden)]
pub struct Registration {
    /// The handler.
    pub info: &'static HandlerInfo,
    /// Its route when it needs no state; `None` when it takes `State<T>`.
    pub stateless: fn() -> Option<Route>,
}

inventory::collect!(Registration);

/// Every registered handler: those that need no state, and those that do.
pub(crate) fn collect() -> (Vec<Bound>, Vec<&'static HandlerInfo>) {
    let mut regs: Vec<&Registration> = inventory::iter::<Registration>.into_iter().collect();
    // inventory's order is unspecified; sort so start-up errors are deterministic.
    regs.sort_by_key(|r| (r.info.route(), r.info.location()));
    let mut bound = Vec::new();
    let mut stateful = Vec::new();
    for r in regs {
        match (r.stateless)() {
            Some(route) => bound.push(Bound::new(r.info, route)),
            None => stateful.push(r.info),
        }
    }
    (bound, stateful)
}
