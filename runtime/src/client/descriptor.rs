//! Typed descriptors: what a caller needs to know about a pattern to call it with
//! compile-checked payload and reply types.
//!
//! Every `#[message_pattern]` function is a [`Message`] and every `#[event_pattern]` function
//! an [`Event`], so `client.send(get_user, id)` type-checks `id` against the handler's
//! argument and decodes the reply into its return type. [`MessageDef`] and [`EventDef`]
//! describe patterns served elsewhere (another service, a NestJS app) without a handler here.

use std::marker::PhantomData;

use crate::contract::{Contract, Signature};
use crate::service::PatternOptions;

/// A request/response pattern with its payload and reply types.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a request/response pattern",
    label = "expected a `#[message_pattern]` handler's descriptor or a `MessageDef`",
    note = "events are sent with `emit`; request/response patterns with `send`",
    note = "a handler is called through its descriptor: `client.send(GET_USER, ..)` for `#[message_pattern] async fn get_user`, not the function"
)]
pub trait Message: Copy + Send + Sync + 'static {
    /// What the caller sends. (Calls require `Serialize`; a handler whose payload is not
    /// serialisable can still be served, just not called with a typed client.)
    type Request;
    /// What the caller gets back, the last value for multi-value replies. (Calls require
    /// `DeserializeOwned`.)
    type Reply;
    /// The pattern as JSON, as written (what goes in the `"pattern"` field).
    fn pattern_json(&self) -> &'static str;
    /// The normalised route key.
    fn route(&self) -> &'static str;
    /// The policy typed callers apply: deadline, idempotency, retries.
    fn options(&self) -> PatternOptions {
        PatternOptions::new()
    }
    /// What its payload and reply types look like ([`Signature`]): a handler's descriptor
    /// has one; `None` for a [`MessageDef`], whose caller vouches for the types.
    fn signature(&self) -> Option<&'static Signature> {
        None
    }
    /// The fingerprint of its payload and reply types ([`Contract`]), from its signature.
    fn contract(&self) -> Option<Contract> {
        self.signature().map(Signature::contract)
    }
}

/// A fire-and-forget pattern with its payload type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event pattern",
    label = "expected an `#[event_pattern]` handler's descriptor or an `EventDef`",
    note = "request/response patterns are called with `send`; events are sent with `emit`",
    note = "a listener is called through its descriptor: `client.emit(USER_CREATED, ..)` for `#[event_pattern] async fn user_created`, not the function"
)]
pub trait Event: Copy + Send + Sync + 'static {
    /// What the emitter sends. (Emitting requires `Serialize`.)
    type Payload;
    /// The pattern as JSON, as written.
    fn pattern_json(&self) -> &'static str;
    /// The normalised route key.
    fn route(&self) -> &'static str;
    /// What its payload type looks like ([`Signature`]): a listener's descriptor has one;
    /// `None` for an [`EventDef`].
    fn signature(&self) -> Option<&'static Signature> {
        None
    }
    /// The fingerprint of its payload type ([`Contract`]), from its signature.
    fn contract(&self) -> Option<Contract> {
        self.signature().map(Signature::contract)
    }
}

/// A payload argument for a pattern whose payload type is `T`: `T` itself or `&T`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not the payload type of this pattern",
    label = "expected `{T}` (or `&{T}`) here",
    note = "the payload type is the handler's argument type"
)]
pub trait AsPayload<T> {
    /// The payload by reference.
    fn as_payload(&self) -> &T;

    /// The payload itself, when it was given by value (an in-process call hands it over
    /// without encoding it).
    fn into_owned(self) -> Result<T, Self>
    where
        Self: Sized;
}

impl<T> AsPayload<T> for T {
    fn as_payload(&self) -> &T {
        self
    }

    fn into_owned(self) -> Result<T, Self> {
        Ok(self)
    }
}

impl<T> AsPayload<T> for &T {
    fn as_payload(&self) -> &T {
        self
    }

    fn into_owned(self) -> Result<T, Self> {
        Err(self)
    }
}

/// A request/response pattern served elsewhere, described by hand.
///
/// ```
/// use switchboard::{MessageDef, pattern};
/// pub const ADD: MessageDef<(i64, i64), i64> = MessageDef::new(pattern!({ cmd = "add" }));
/// pub const ECHO: MessageDef<String, String> = MessageDef::new(pattern!("echo"));
/// ```
pub struct MessageDef<Req, Rep> {
    pattern: PatternLit,
    options: PatternOptions,
    _types: PhantomData<fn(Req) -> Rep>,
}

impl<Req, Rep> MessageDef<Req, Rep> {
    /// A descriptor for the pattern made by [`pattern!`](crate::pattern!).
    pub const fn new(pattern: PatternLit) -> Self {
        MessageDef {
            pattern,
            options: PatternOptions::new(),
            _types: PhantomData,
        }
    }

    /// With the policy its callers apply ([`PatternOptions`]).
    pub const fn with_options(mut self, options: PatternOptions) -> Self {
        self.options = options;
        self
    }
}

impl<Req, Rep> Clone for MessageDef<Req, Rep> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Req, Rep> Copy for MessageDef<Req, Rep> {}

impl<Req: 'static, Rep: 'static> Message for MessageDef<Req, Rep> {
    type Request = Req;
    type Reply = Rep;
    fn pattern_json(&self) -> &'static str {
        self.pattern.json
    }
    fn route(&self) -> &'static str {
        self.pattern.route
    }
    fn options(&self) -> PatternOptions {
        self.options
    }
}

/// An event pattern handled elsewhere, described by hand.
///
/// ```
/// use switchboard::{EventDef, pattern};
/// #[derive(serde::Serialize)]
/// pub struct User { pub id: String }
/// pub const USER_CREATED: EventDef<User> = EventDef::new(pattern!("user_created"));
/// ```
pub struct EventDef<T> {
    pattern: PatternLit,
    _types: PhantomData<fn(T)>,
}

impl<T> EventDef<T> {
    /// A descriptor for the pattern made by [`pattern!`](crate::pattern!).
    pub const fn new(pattern: PatternLit) -> Self {
        EventDef {
            pattern,
            _types: PhantomData,
        }
    }
}

impl<T> Clone for EventDef<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for EventDef<T> {}

impl<T: 'static> Event for EventDef<T> {
    type Payload = T;
    fn pattern_json(&self) -> &'static str {
        self.pattern.json
    }
    fn route(&self) -> &'static str {
        self.pattern.route
    }
}

/// A pattern computed at compile time by [`pattern!`](crate::pattern!): its JSON as written
/// and its NestJS route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatternLit {
    /// The pattern as JSON, as written.
    pub json: &'static str,
    /// The normalised route key.
    pub route: &'static str,
}
