//! `#[message_pattern]`, `#[event_pattern]`, `#[handlers]`, `#[derive(FromRef)]` and
//! `pattern!` for Switchboard.
//!
//! Use them through the `switchboard` crate, which re-exports them. This crate is a thin
//! shim: parsing and validation live in `switchboard-codegen` (shared with build-time
//! client generation), code generation in `expand` and `group`.

#![warn(missing_docs)]

use proc_macro::TokenStream;
use switchboard_codegen::PatternKind;

mod expand;
mod from_ref;
mod group;

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
/// #[message_pattern({ cmd = "get_user" })] // object pattern {"cmd":"get_user"}
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
/// async fn callers(client: &Client) -> switchboard::Result<()> {
///     // Typed: the payload must be a `String` (or `&String`), the reply is a `User`.
///     let user: User = client.send(GET_USER, "42".to_string()).await?;
///     let sum = client.send(ADD, (2, 3)).await?;
///     // The function is still a plain function:
///     let seven = add((3, 4)).await;
///     # let _ = (user, sum, seven);
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// # The attribute
///
/// `#[message_pattern(<pattern>, <option> = <value>, ...)]`: the pattern first, options after.
///
/// - a string (`"math.add"`) or a number (`42`, `-1.5`);
/// - an object in braces, as NestJS writes it: `{ cmd = "get", v = 2 }`. Keys are identifiers
///   or string literals (`"Zeta-1" = 1`); values are strings, numbers, `true`, `false`,
///   `null`, nested objects `{ k = v, ... }` and arrays `[v, ...]`. Keys are sorted as NestJS
///   sorts them, so the route is the one a NestJS client sends.
/// - options: `crate = <path>` names the `switchboard` crate when it is re-exported elsewhere:
///   `#[message_pattern({ cmd = "x" }, crate = ::my::sb)]`.
///
/// # The function
///
/// An `async fn` whose arguments are, in any order, at most one payload (any
/// `Deserialize` type; wrap several values in a struct or tuple) and any extractors:
/// [`Context`](../switchboard/struct.Context.html), `Headers`, `Deadline`, `Extension<T>`,
/// `State<T>`, or a type of yours implementing `FromRequest`. Which argument is which is
/// decided by those traits, not by names. Its return type says how it answers:
///
/// | return type | reply |
/// |---|---|
/// | none, `()` | completion only |
/// | a `Result` (any alias: `RpcResult<T>`, `DbResult<T>`) | its `Ok` value, or its error (`E: Into<RpcError>`) |
/// | `ReplyStream<T>`, `impl Stream<Item = T>` | several values |
/// | `Reply` | itself |
/// | any other `T: Serialize` | one value |
///
/// The future must be `Send`.
///
/// # What it generates
///
/// The function stays as written. Next to it: the descriptor `GET_USER` (for
/// `async fn get_user`), a constant of a type named `get_user` (which lives in the type
/// namespace only, so it never shadows the function or a `let` binding; it is glob-imported,
/// so a module or type of yours with that name takes precedence over it). The descriptor
/// serves the handler (`Microservice::new().handler(GET_USER)`) and calls it
/// (`client.send(GET_USER, id)`: a `Message` with the payload and reply types, which are
/// checked at the call). The function is also registered for `Microservice::from_registry()`.
///
/// A mistake is reported at the token at fault and says what to do; when only the pattern is
/// wrong, the descriptor is still generated, so the code that uses it reports nothing more.
///
/// The reply type a caller decodes is the `Ok` type when the return type is written
/// `Result<T, E>` (or `RpcResult<T>`, `io::Result<T>`), and the return type itself otherwise:
/// a handler returning an alias such as `DbResult<User>` still answers `User` or its error
/// on the wire, and a caller asks for `User` with a `MessageDef`.
#[proc_macro_attribute]
pub fn message_pattern(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::handler(PatternKind::Message, attr.into(), item.into()).into()
}

/// Marks an `async fn` as a listener of a fire-and-forget event pattern.
///
/// Same patterns and function rules as [`macro@message_pattern`]; several listeners may share
/// one event, and all of them run. The descriptor implements `Event`, for
/// `client.emit(USER_CREATED, &user)`.
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
///     client.emit(USER_CREATED, user).await
/// }
/// # fn main() {}
/// ```
#[proc_macro_attribute]
pub fn event_pattern(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::handler(PatternKind::Event, attr.into(), item.into()).into()
}

/// Makes an `impl` block's `#[message_pattern]` and `#[event_pattern]` methods a group of
/// handlers (a NestJS controller, a tarpc service): the value carries their dependencies,
/// its methods take `&self`, and `Microservice::group(value)` serves them all. Each method's
/// descriptor is an associated constant (`Users::GET_USER`). A group in a library crate is
/// linked into any binary that serves it.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use switchboard::prelude::*;
///
/// #[derive(Default)]
/// pub struct Users {
///     names: Mutex<HashMap<u32, String>>,
/// }
///
/// #[handlers]
/// impl Users {
///     #[message_pattern({ cmd = "create_user" })]
///     pub async fn create(&self, (id, name): (u32, String)) {
///         self.names.lock().unwrap().insert(id, name);
///     }
///
///     #[message_pattern({ cmd = "get_user" })]
///     pub async fn get(&self, id: u32) -> Option<String> {
///         self.names.lock().unwrap().get(&id).cloned()
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// let server = Microservice::new().group(Users::default()).listen("mem://users-group").start().await?;
/// let client = Client::connect("mem://users-group").await?;
/// client.send(Users::CREATE, (7, "Ada".to_string())).await?;
/// assert_eq!(client.send(Users::GET, 7).await?.as_deref(), Some("Ada"));
/// # server.shutdown().await
/// # }
/// ```
#[proc_macro_attribute]
pub fn handlers(attr: TokenStream, item: TokenStream) -> TokenStream {
    group::handlers(attr.into(), item.into()).into()
}

/// Implements `FromRef<Self>` for the type of each field of a state struct, so that a
/// handler takes `State<Field>` of a service built with `with_state(value)`. A field marked
/// `#[from_ref(skip)]` is left out (two fields of one type need that).
#[proc_macro_derive(FromRef, attributes(from_ref))]
pub fn derive_from_ref(input: TokenStream) -> TokenStream {
    from_ref::derive(input.into()).into()
}

/// A pattern computed at compile time, as a `PatternLit` constant: its JSON as written
/// and its NestJS route. Same syntax as [`macro@message_pattern`].
///
/// ```
/// use switchboard::{MessageDef, PatternLit, pattern};
///
/// const ADD: PatternLit = pattern!({ cmd = "add", v = 2 });
/// assert_eq!(ADD.route, r#"{"cmd":"add","v":2}"#);
/// assert_eq!(pattern!({ role = "x", cmd = "y" }).route, r#"{"cmd":"y","role":"x"}"#);
///
/// // A pattern served by another service, called with typed payload and reply:
/// pub const SUM: MessageDef<Vec<i64>, i64> = MessageDef::new(pattern!({ cmd = "sum" }));
/// ```
#[proc_macro]
pub fn pattern(input: TokenStream) -> TokenStream {
    expand::pattern(input.into()).into()
}
