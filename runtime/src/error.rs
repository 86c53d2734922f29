//! Error types: [`Error`] for everything the framework reports, [`RpcError`] for the error
//! value a handler sends back over the wire.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The framework's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The result type of a fallible handler: `async fn f(..) -> RpcResult<User>`.
pub type RpcResult<T> = std::result::Result<T, RpcError>;

/// The error NestJS puts in a reply's `err` field.
///
/// On the wire it is a bare JSON value, exactly as NestJS's `RpcException` produces it:
/// [`RpcError::new("bad thing")`](RpcError::new) is `{"status":"error","message":"bad thing"}`,
/// [`RpcError::from_value`] sends any JSON verbatim, and [`RpcError::internal`] is what
/// NestJS sends for every other exception.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RpcError(Value);

/// The message NestJS sends for exceptions that are not `RpcException`s.
pub const INTERNAL_SERVER_ERROR: &str = "Internal server error";
/// The `err` text of NestJS's reply to a request nobody handles.
pub const NO_MESSAGE_HANDLER: &str = "There is no matching message handler defined in the remote service.";

/// Turns any error into NestJS's `Internal server error` for the caller, logging the error
/// itself here ([`RpcError::internal_from`]): `?` without sending internals over the wire.
///
/// ```
/// use switchboard::prelude::*;
///
/// #[message_pattern("user.name")]
/// async fn user_name(id: u32) -> RpcResult<String> {
///     let row: Result<String, std::io::Error> = Err(std::io::Error::other("db-7: disk full"));
///     let name = row.or_internal()?;
///     Ok(name)
/// }
/// # let _ = user_name;
/// ```
pub trait OrInternal<T> {
    /// `Ok` as it is; an error logged, and `Internal server error` for the caller.
    fn or_internal(self) -> Result<T, RpcError>;
}

impl<T, E: std::fmt::Display> OrInternal<T> for std::result::Result<T, E> {
    fn or_internal(self) -> Result<T, RpcError> {
        self.map_err(RpcError::internal_from)
    }
}

impl RpcError {
    /// `RpcException('text')`: `{"status":"error","message":"text"}`.
    pub fn new(message: impl Into<String>) -> Self {
        let mut map = serde_json::Map::with_capacity(2);
        map.insert("status".into(), Value::String("error".into()));
        map.insert("message".into(), Value::String(message.into()));
        RpcError(Value::Object(map))
    }

    /// `RpcException(value)`: the value goes on the wire as it is.
    pub fn from_value(value: Value) -> Self {
        RpcError(value)
    }

    /// What NestJS answers for an unexpected exception: `Internal server error`.
    pub fn internal() -> Self {
        Self::new(INTERNAL_SERVER_ERROR)
    }

    /// An internal failure, as NestJS answers an unexpected exception: the caller gets
    /// `Internal server error`; `error` itself (which may name tables, hosts or files) is only
    /// logged here. See [`OrInternal`] for the `?` form.
    ///
    /// ```
    /// use switchboard::RpcError;
    ///
    /// let e = RpcError::internal_from("connection to db-7.internal:5432 refused");
    /// assert_eq!(e.message(), Some("Internal server error"));
    /// ```
    pub fn internal_from(error: impl std::fmt::Display) -> Self {
        tracing::error!(error = %error, "a handler failed; the caller is told `Internal server error`");
        Self::internal()
    }

    /// The wire value.
    pub fn value(&self) -> &Value {
        &self.0
    }

    /// Consumes the error, returning the wire value.
    pub fn into_value(self) -> Value {
        self.0
    }

    /// The `message` field for object errors, or the text of a string error.
    pub fn message(&self) -> Option<&str> {
        match &self.0 {
            Value::String(s) => Some(s),
            Value::Object(map) => map.get("message").and_then(Value::as_str),
            _ => None,
        }
    }

    /// NestJS's "no matching message handler" error: the bare string it sends.
    pub fn no_handler() -> Self {
        RpcError(Value::String(NO_MESSAGE_HANDLER.into()))
    }

    /// True for NestJS's "no matching message handler" reply.
    pub fn is_no_handler(&self) -> bool {
        self.message() == Some(NO_MESSAGE_HANDLER)
    }

    /// The service could not take the call now (a limit, an open circuit, shutting down):
    /// `{"status":"error","message":"…","code":14}`, gRPC's `UNAVAILABLE` as NestJS's gRPC
    /// transport reads a numeric `code`. Callers may retry it.
    ///
    /// ```
    /// use switchboard::RpcError;
    ///
    /// let e = RpcError::unavailable("too many calls in flight");
    /// assert!(e.is_unavailable());
    /// assert_eq!(e.value()["code"], 14);
    /// assert!(!RpcError::new("no such user").is_unavailable());
    /// ```
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::with_code(message, UNAVAILABLE)
    }

    /// The caller's deadline had passed, or the handler ran out of time:
    /// `{"status":"error","message":"…","code":4}` (gRPC's `DEADLINE_EXCEEDED`).
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::with_code(message, DEADLINE_EXCEEDED)
    }

    fn with_code(message: impl Into<String>, code: i64) -> Self {
        let RpcError(Value::Object(mut map)) = Self::new(message) else {
            unreachable!("RpcError::new makes an object")
        };
        map.insert("code".into(), Value::from(code));
        RpcError(Value::Object(map))
    }

    /// The numeric `code` of an object error: a gRPC status code by NestJS's convention.
    pub fn code(&self) -> Option<i64> {
        match &self.0 {
            Value::Object(map) => map.get("code").and_then(Value::as_i64),
            _ => None,
        }
    }

    /// A short, stable name of the error for metrics and spans: `deadline_exceeded`,
    /// `unavailable`, or `rpc_error` for a handler's own.
    pub fn kind(&self) -> &'static str {
        if self.is_deadline_exceeded() {
            "deadline_exceeded"
        } else if self.is_unavailable() {
            "unavailable"
        } else {
            "rpc_error"
        }
    }

    /// True for [`RpcError::deadline_exceeded`] (code 4); a client reports it as [`Error::Timeout`].
    pub fn is_deadline_exceeded(&self) -> bool {
        self.code() == Some(DEADLINE_EXCEEDED)
    }

    /// True for [`RpcError::unavailable`] (code 14, from any server): worth retrying.
    pub fn is_unavailable(&self) -> bool {
        self.code() == Some(UNAVAILABLE)
    }
}

/// gRPC's status codes, which NestJS's `RpcException({ code, message })` uses.
const DEADLINE_EXCEEDED: i64 = 4;
const UNAVAILABLE: i64 = 14;

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(m) => f.write_str(m),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RpcError({})", self.0)
    }
}

impl std::error::Error for RpcError {}

impl From<String> for RpcError {
    fn from(message: String) -> Self {
        RpcError::new(message)
    }
}

impl From<&str> for RpcError {
    fn from(message: &str) -> Self {
        RpcError::new(message)
    }
}

impl From<Value> for RpcError {
    fn from(value: Value) -> Self {
        RpcError(value)
    }
}

impl From<std::convert::Infallible> for RpcError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// Why a resilience layer refused a call without trying it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The pattern's circuit is open: recent calls failed.
    #[error("the circuit is open (next probe in {retry_after:?})")]
    CircuitOpen {
        /// When the circuit lets a probe through.
        retry_after: Duration,
    },
    /// The bulkhead is full: too many calls in flight and waiting.
    #[error("too many calls in flight")]
    Overloaded,
    /// Over the rate limit.
    #[error("rate limit exceeded (next slot in {retry_after:?})")]
    RateLimited {
        /// When the next call would be let through.
        retry_after: Duration,
    },
    /// The deadline passed before the call could start.
    #[error("its deadline has passed")]
    DeadlineExceeded,
}

impl Error {
    /// A short, stable name of what went wrong, for metrics and spans: `rpc_error`,
    /// `unavailable`, `deadline_exceeded`, `no_handler`, `timeout`, `connect`,
    /// `connection_closed`, `rejected`, `incompatible`, `codec`, or `transport` for the rest.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Rpc(rpc) => rpc.kind(),
            Error::NoHandler { .. } => "no_handler",
            Error::Timeout { .. } => "timeout",
            Error::Connect { .. } => "connect",
            Error::ConnectionClosed { .. } => "connection_closed",
            Error::Rejected { .. } => "rejected",
            Error::Incompatible { .. } => "incompatible",
            Error::Codec { .. } | Error::MsgPack { .. } => "codec",
            _ => "transport",
        }
    }
}

impl Rejection {
    /// A short name of the reason: `circuit_open`, `overloaded`, `rate_limited`,
    /// `deadline_exceeded` (a metric's label).
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::CircuitOpen { .. } => "circuit_open",
            Rejection::Overloaded => "overloaded",
            Rejection::RateLimited { .. } => "rate_limited",
            Rejection::DeadlineExceeded => "deadline_exceeded",
        }
    }
}

/// Everything that can go wrong in a call, a server or a transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The remote handler answered with an error.
    #[error("remote error: {0}")]
    Rpc(RpcError),
    /// The server has no handler for the pattern (NestJS's "no matching message handler").
    #[error("no handler for pattern `{pattern}` at {addr}")]
    NoHandler {
        /// The route of the call.
        pattern: String,
        /// The server.
        addr: String,
    },
    /// No reply within the call's deadline.
    #[error("request to pattern `{pattern}` timed out after {after:?}")]
    Timeout {
        /// The route of the call.
        pattern: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The connection closed while the call was in flight.
    #[error("connection to {addr} closed while the request was in flight")]
    ConnectionClosed {
        /// The peer.
        addr: String,
    },
    /// Could not connect (or reconnect) to the peer.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The peer.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A transport URL that does not parse or names a transport not compiled in.
    #[error("invalid transport url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given (without its password).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Configuration read at start-up that does not parse or does not fit the service.
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// What was being read (`policy overrides`).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A payload that could not be serialised, or a reply that could not be decoded.
    #[error("{context}: {source}")]
    Codec {
        /// What was being encoded or decoded.
        context: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A payload or reply that could not be encoded or decoded as MessagePack
    /// (`?codec=msgpack`).
    #[error("{context}: {source}")]
    MsgPack {
        /// What was being encoded or decoded.
        context: String,
        /// The MessagePack error.
        #[source]
        source: crate::wire::msgpack::MsgPackError,
    },
    /// The peer sent bytes that break the protocol.
    #[error("invalid data from {peer}: {reason}")]
    InvalidData {
        /// The peer.
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// A broker refused or failed an operation (subscribe, publish, create a stream or a
    /// topic); `source` is the broker client's own error, when there is one.
    #[error("{context}")]
    Broker {
        /// What was being done, where.
        context: String,
        /// The broker client's error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A message larger than the transport or broker takes.
    #[error("{context}: {size} bytes is more than the limit of {limit}")]
    TooLarge {
        /// What was being sent, where.
        context: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A service with no handler to serve.
    #[error(
        "no handlers to serve: mark async fns with #[message_pattern] or #[event_pattern] and add them with \
         `.handler(GET_USER)` or `.group(...)`, or use `Microservice::from_registry()`"
    )]
    NoHandlers,
    /// Two request handlers for one pattern.
    #[error("pattern {route} has two request handlers: {first} and {second}")]
    DuplicateHandler {
        /// The route.
        route: String,
        /// The first handler.
        first: String,
        /// The second.
        second: String,
    },
    /// Handlers found in the registry that take the service's state, which the registry
    /// cannot give them: they must be added explicitly.
    #[error(
        "from_registry() cannot serve handlers that take `State<T>` (it does not know the state): \
         add them with `.handler(...)` on `Microservice::new().with_state(...)`: {}",
        handlers.join(", ")
    )]
    NeedsState {
        /// The handlers, `module::name (file:line)`.
        handlers: Vec<String>,
    },
    /// A service with no transport to listen on.
    #[error("no transport to serve on: call .listen(\"tcp://127.0.0.1:3001\") or similar")]
    NoTransport,
    /// The client has been closed.
    #[error("client is closed")]
    Closed,
    /// A resilience layer refused the call before it was sent: an open circuit, a full
    /// bulkhead, a rate limit, a deadline already past.
    #[error("call to pattern `{pattern}` refused: {reason}")]
    Rejected {
        /// The route of the call.
        pattern: String,
        /// Why.
        reason: Rejection,
    },
    /// No instance of a discovered service serves the pattern with the caller's contract: the
    /// instances were built from other payload or reply types (a mixed-version deploy).
    #[error("no instance of `{service}` serves pattern `{pattern}` as this client was built to call it: {reason}")]
    Incompatible {
        /// The route of the call.
        pattern: String,
        /// The service.
        service: String,
        /// What the instances serve instead.
        reason: String,
    },
    /// A client layer failed the call with an error of its own.
    #[error("a client layer failed the call: {0}")]
    Layer(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A server's transport stopped serving before it was asked to (it panicked, say).
    #[error("the transport at {url} stopped: {reason}")]
    TransportStopped {
        /// The URL it served.
        url: String,
        /// Why, as far as it is known.
        reason: String,
    },
    /// An I/O error from a socket or listener.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    #[cfg_attr(not(feature = "tcp"), allow(dead_code))]
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A broker's failure, keeping the broker client's error as the `source`.
    #[allow(dead_code)] // only the broker transports use it
    pub(crate) fn broker(context: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Broker {
            context: context.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A broker's refusal, with no error of the broker client's to keep.
    #[allow(dead_code)] // only the broker transports use it
    pub(crate) fn refused(context: impl Into<String>) -> Self {
        Error::Broker {
            context: context.into(),
            source: None,
        }
    }

    /// True when trying the same call again may succeed: the connection failed or closed,
    /// the call timed out, or the service answered [`RpcError::unavailable`]. A remote
    /// handler's own error is not retryable, nor is a call this client refused itself.
    ///
    /// ```
    /// use switchboard::{Error, RpcError};
    ///
    /// assert!(Error::Rpc(RpcError::unavailable("busy")).is_retryable());
    /// assert!(!Error::Rpc(RpcError::new("no such user")).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::ConnectionClosed { .. } | Error::Timeout { .. } => true,
            Error::Rpc(e) => e.is_unavailable(),
            _ => false,
        }
    }

    /// True when the service could not answer (as opposed to answering with its own error):
    /// what a fallback and a circuit breaker count. Every error but a remote handler's own
    /// ([`Error::Rpc`] other than [`RpcError::unavailable`]) and a payload this side could
    /// not encode or decode.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Rpc(e) => e.is_unavailable(),
            Error::Codec { .. } | Error::MsgPack { .. } => false,
            _ => true,
        }
    }

    /// The remote error value, when the remote handler answered with one.
    pub fn as_rpc(&self) -> Option<&RpcError> {
        match self {
            Error::Rpc(e) => Some(e),
            _ => None,
        }
    }
}

impl From<RpcError> for Error {
    fn from(e: RpcError) -> Self {
        Error::Rpc(e)
    }
}

/// A failed call inside a handler, answered to that handler's caller: a remote handler's
/// error as it is (so `?` passes it on unchanged); a timeout as
/// [`RpcError::deadline_exceeded`] and a call refused by a resilience layer as
/// [`RpcError::unavailable`] (so the caller's caller times out or may retry in turn);
/// anything else as `{"status":"error","message":"<what failed>"}`.
///
/// ```
/// use switchboard::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// struct User { id: String }
///
/// #[message_pattern("profile")]
/// async fn profile(id: String, State(users): State<Client>) -> RpcResult<User> {
///     const GET_USER: MessageDef<String, User> = MessageDef::new(pattern!("get_user"));
///     let user = users.send(GET_USER, id).await?; // a failed call answers this request
///     Ok(user)
/// }
/// ```
impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        match e {
            Error::Rpc(e) => e,
            // Kept recognisable, so the caller's caller can time out or retry in turn.
            Error::Timeout { .. }
            | Error::Rejected {
                reason: Rejection::DeadlineExceeded,
                ..
            } => RpcError::deadline_exceeded(e.to_string()),
            Error::Rejected { .. } => RpcError::unavailable(e.to_string()),
            other => RpcError::new(other.to_string()),
        }
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}
