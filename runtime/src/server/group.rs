//! [`Group`]: handlers declared together as methods of one type, which carries their
//! dependencies (a NestJS controller, a tarpc service).

use std::sync::Arc;

use super::handler::{Bound, HandlerInfo};
use crate::service::Route;

/// A group of handlers: the methods of an `impl` block marked `#[handlers]`, served together
/// with `Microservice::group(value)`. The value is shared by every message (the methods take
/// `&self`), so its fields are the group's dependencies.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use switchboard::prelude::*;
///
/// /// A controller: its fields are its dependencies.
/// #[derive(Default)]
/// pub struct Counter {
///     total: AtomicU64,
/// }
///
/// #[handlers]
/// impl Counter {
///     #[event_pattern("add")]
///     async fn add(&self, n: u64) {
///         self.total.fetch_add(n, Ordering::Relaxed);
///     }
///
///     #[message_pattern("total")]
///     pub async fn total(&self) -> u64 {
///         self.total.load(Ordering::Relaxed)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// let server = Microservice::new().group(Counter::default()).listen("mem://counter-doc").start().await?;
/// let client = Client::connect("mem://counter-doc").await?;
/// client.send_raw::<()>("add", 2).await?; // a request to an event pattern runs its listeners
/// assert_eq!(client.send(Counter::TOTAL, ()).await?, 2);
/// # server.shutdown().await
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a group of handlers",
    label = "expected a value of a type whose `impl` block is marked `#[handlers]`",
    note = "mark the `impl` block that holds its handler methods with `#[switchboard::handlers]`",
    note = "a handler's descriptor (`GET_USER`) is served with `.handler(GET_USER)`"
)]
pub trait Group<S>: Send + Sync + Sized + 'static {
    /// Every handler of the group, bound to the shared value and the service's state.
    #[doc(hidden)]
    fn bind(this: Arc<Self>, state: &S) -> Vec<(&'static HandlerInfo, Route)>;
}

/// Binds every handler of a group.
pub(crate) fn bind<G: Group<S>, S>(group: G, state: &S) -> Vec<Bound> {
    G::bind(Arc::new(group), state)
        .into_iter()
        .map(|(info, route)| Bound::new(info, route))
        .collect()
}
