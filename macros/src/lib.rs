//! `#[message_pattern]`, `#[event_pattern]` and `pattern!` for Switchboard.
//!
//! Use them through the `switchboard` crate, which re-exports them. This crate is a thin
//! shim: parsing and validation live in `switchboard-codegen` (shared with build-time
//! client generation), code generation in `expand`.

#![warn(missing_docs)]

use proc_macro::TokenStream;
use switchboard_codegen::PatternKind;

mod expand;

/// Marks an `async fn` as the handler of a request/response pattern.
///
/// ```
/// use switchboard::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// pub struct User {
///     pub id: String,
///     pub name: String,
/// }
///
/// /// Looks a user up.
/// #[message_pattern(cmd = "get_user")] // object pattern {"cmd":"get_user"}
/// pub async fn get_user(id: String, ctx: Context) -> Result<User, RpcError> {
///     if id.is_empty() {
///         return Err(RpcError::new("no id"));
///     }
///     Ok(User { name: format!("user {id} ({})", ctx.transport()), id })
/// }
///
/// #[message_pattern("math.add")] // string pattern
/// async fn add((a, b): (i64, i64)) -> i64 {
///     a + b
/// }
///
/// async fn callers(client: &Client, ctx: Context) -> switchboard::Result<()> {
///     // Typed: the payload must be a `String` (or `&String`), the reply is a `User`.
///     let user: User = client.send(get_user, "42".to_string()).await?;
///     let sum = client.send(add, (2, 3)).await?;
///     // Still a function, too:
///     let same = get_user(user.id, ctx).await;
///     # let _ = (sum, same);
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// # Patterns
///
/// - a string (`"math.add"`) or a number (`42`, `-1.5`);
/// - an object, as `key = value` pairs: `cmd = "get", v = 2`. Keys are identifiers or string
///   literals (`"Zeta-1" = 1`); values are strings, numbers, `true`, `false`, `null`, nested
///   objects `{ k = v, ... }` and arrays `[v, ...]`. Keys are sorted as NestJS sorts them, so
///   the route is the one a NestJS client sends.
/// - after a positional pattern, options: `crate = <path>` names the `switchboard` crate
///   when it is re-exported elsewhere: `#[message_pattern({ cmd = "x" }, crate = ::my::sb)]`.
///
/// # The function
///
/// An `async fn` with at most one payload argument (any `Deserialize` type; wrap several
/// values in a struct or tuple) and at most one `Context` argument, in any order. Its return
/// type says how it answers:
///
/// | return type | reply |
/// |---|---|
/// | none, `()` | completion only |
/// | `Result<T, E>`, `RpcResult<T>` | `T`, or the error (`E: Into<RpcError>`) |
/// | `ReplyStream<T>`, `impl Stream<Item = T>` | several values |
/// | any other `T: Serialize` | one value |
///
/// The future must be `Send`.
///
/// # What it generates
///
/// The function is registered in the process-wide registry (so `Microservice::from_registry()`
/// serves it), and its name becomes a typed descriptor: a unit struct that implements
/// `Message` (for `client.send(get_user, id)`) and `Handler`, and that can still be called as
/// the function: `get_user(id, ctx).await`.
///
/// A descriptor is a value in its module, so a `let` binding with the handler's name in the
/// same module (`let get_user = ...`) is read as a pattern against it; use another name.
#[proc_macro_attribute]
pub fn message_pattern(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::handler(PatternKind::Message, attr.into(), item.into()).into()
}

/// Marks an `async fn` as a listener of a fire-and-forget event pattern.
///
/// Same patterns and function rules as [`macro@message_pattern`]; several listeners may share
/// one event, and all of them run. The descriptor implements `Event`, for
/// `client.emit(user_created, &user)`.
///
/// ```
/// use switchboard::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// pub struct User {
///     pub id: String,
/// }
///
/// #[event_pattern("user_created")]
/// async fn user_created(user: User) {
///     # let _ = user;
///     /* send a welcome mail */
/// }
///
/// #[event_pattern("user_created")]
/// async fn track_signup(user: User, ctx: Context) {
///     # let _ = (user, ctx);
///     /* count it */
/// }
///
/// async fn caller(client: &Client, user: &User) -> switchboard::Result<()> {
///     client.emit(user_created, user).await
/// }
/// # fn main() {}
/// ```
#[proc_macro_attribute]
pub fn event_pattern(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::handler(PatternKind::Event, attr.into(), item.into()).into()
}

/// A pattern computed at compile time, as a `PatternLit` constant: its JSON as written
/// and its NestJS route. Same syntax as [`macro@message_pattern`].
///
/// ```
/// use switchboard::{MessageDef, PatternLit, pattern};
///
/// const ADD: PatternLit = pattern!(cmd = "add", v = 2);
/// assert_eq!(ADD.route, r#"{"cmd":"add","v":2}"#);
/// assert_eq!(pattern!(role = "x", cmd = "y").route, r#"{"cmd":"y","role":"x"}"#);
///
/// // A pattern served by another service, called with typed payload and reply:
/// pub const SUM: MessageDef<Vec<i64>, i64> = MessageDef::new(pattern!(cmd = "sum"));
/// ```
#[proc_macro]
pub fn pattern(input: TokenStream) -> TokenStream {
    expand::pattern(input.into()).into()
}
