//! [`State`]: the dependencies a service was built with, as a handler's argument.

use std::future::Future;

use super::extract::{FromRequest, NoPayload};
use crate::error::RpcError;
use crate::service::Request;

/// The service's state, or a part of it, as a handler's argument (axum's `State`).
///
/// A service is built with one state value (`Microservice::new().with_state(app)`); a handler takes
/// `State<App>` for all of it, or `State<T>` for a part when `T: FromRef<App>`
/// (`#[derive(FromRef)]` on `App` implements that for each field).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use switchboard::prelude::*;
///
/// #[derive(Clone, Default, FromRef)]
/// struct App {
///     names: Arc<Mutex<Vec<String>>>,
///     greeting: Greeting,
/// }
///
/// #[derive(Clone, Default)]
/// struct Greeting(&'static str);
///
/// #[message_pattern("hello")]
/// async fn hello(name: String, State(names): State<Arc<Mutex<Vec<String>>>>, State(g): State<Greeting>) -> String {
///     names.lock().unwrap().push(name.clone());
///     format!("{} {name}", g.0)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// let app = App { greeting: Greeting("hi"), ..App::default() };
/// let server = Microservice::new().with_state(app.clone()).handler(HELLO).listen("mem://state-doc").start().await?;
/// let client = Client::connect("mem://state-doc").await?;
/// assert_eq!(client.send(HELLO, "Ada".to_string()).await?, "hi Ada");
/// assert_eq!(*app.names.lock().unwrap(), ["Ada"]);
/// # server.shutdown().await
/// # }
/// ```
///
/// As in axum, a handler gets its own clone of what it takes, for each message: keep the
/// state cheap to clone. Cloning an `Arc` and dropping it are two atomic operations, a few
/// percent of a message's cost on a fast path; what lives as long as the process can be held
/// by `&'static` reference instead, which costs nothing to copy:
///
/// ```
/// use switchboard::prelude::*;
///
/// struct Config {
///     bias: i64,
/// }
///
/// #[derive(Clone, Copy)]
/// struct App {
///     config: &'static Config,
/// }
///
/// #[message_pattern("biased")]
/// async fn biased(n: i64, State(app): State<App>) -> i64 {
///     n + app.config.bias
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// let app = App { config: Box::leak(Box::new(Config { bias: 1 })) };
/// let server = Microservice::new().with_state(app).handler(BIASED).listen("mem://static-state-doc").start().await?;
/// let client = Client::connect("mem://static-state-doc").await?;
/// assert_eq!(client.send(BIASED, 41).await?, 42);
/// # server.shutdown().await
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct State<T>(pub T);

/// A part of a state `S` that a handler can take as `State<Self>`: `impl FromRef<App> for Pool`.
#[diagnostic::on_unimplemented(
    message = "the service's state `{S}` does not provide `{Self}`",
    label = "`State<{Self}>` needs `{Self}: FromRef<{S}>`",
    note = "implement `FromRef<{S}> for {Self}`, or add `#[derive(FromRef)]` to `{S}` when `{Self}` is one of its fields"
)]
pub trait FromRef<S> {
    /// The part, from the whole.
    fn from_ref(state: &S) -> Self;
}

impl<T: Clone> FromRef<T> for T {
    fn from_ref(state: &T) -> Self {
        state.clone()
    }
}

impl<S: Sync, T: FromRef<S> + Send> FromRequest<S> for State<T> {
    type Payload = NoPayload;

    fn from_request(req: &mut Request, state: &S) -> impl Future<Output = Result<Self, RpcError>> + Send {
        super::extract::at_once(req, state)
    }

    fn from_request_now(_: &mut Request, state: &S) -> Option<Result<Self, RpcError>> {
        Some(Ok(State(T::from_ref(state))))
    }
}

/// The state that descriptors are typed against, which provides every part: a handler's
/// payload type does not depend on the state it is served with.
#[doc(hidden)]
pub struct AnyState(());

impl<T> FromRef<AnyState> for T {
    fn from_ref(_: &AnyState) -> Self {
        unreachable!("descriptors are typed against AnyState; nothing is served with it")
    }
}
