//! [`FromRequest`]: how a handler's arguments are made from a message and the service's state.
//!
//! An argument is the payload when its type is decoded from the message (any
//! `serde::Deserialize` type), and an extractor otherwise: [`Context`], [`Headers`],
//! [`Deadline`], [`Extension`], [`State`](crate::State), or a type of your own.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;

use crate::error::RpcError;
use crate::service::{Context, Headers, Payload, Request};

/// Marks an extractor in [`FromRequest::Payload`]: it is not the message's payload.
#[derive(Debug)]
pub enum NoPayload {}

/// Marks the payload in [`FromRequest::Payload`].
#[derive(Debug)]
pub struct IsPayload<T>(std::marker::PhantomData<fn() -> T>);

/// A type a handler can take as an argument.
///
/// Every `serde::Deserialize` type is one: it is the payload, decoded from the message (a
/// handler takes at most one). An extractor implements it to take something else from the
/// message or from the service's state `S`:
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard::{FromRequest, NoPayload, Request};
///
/// /// The caller's tenant, from the `tenant` header.
/// struct Tenant(String);
///
/// impl<S: Sync> FromRequest<S> for Tenant {
///     type Payload = NoPayload;
///
///     async fn from_request(req: &mut Request, _: &S) -> Result<Self, RpcError> {
///         match req.headers().get("tenant") {
///             Some(t) => Ok(Tenant(t.to_owned())),
///             None => Err(RpcError::new("no tenant")),
///         }
///     }
/// }
///
/// #[message_pattern("whoami")]
/// async fn whoami(Tenant(tenant): Tenant) -> String {
///     tenant
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "the service's state `{S}` does not provide the handler's argument `{Self}`",
    label = "this handler takes a `{Self}`",
    note = "a `State<T>` argument needs the service's state to provide `T`: `T` is the state itself, or `impl FromRef<{S}> for T`; `#[derive(FromRef)]` on the state struct implements that for the type of each of its fields",
    note = "a service gets its state from `Microservice::new().with_state(state)`, before its handlers are added",
    note = "any other argument is the payload (a `serde::Deserialize` type) or an extractor that implements `FromRequest<{S}>`"
)]
pub trait FromRequest<S>: Sized + Send {
    /// [`NoPayload`] for an extractor; the payload type marks itself.
    type Payload;

    /// Takes the argument from the message (and the state); an error is the reply.
    fn from_request(req: &mut Request, state: &S) -> impl Future<Output = Result<Self, RpcError>> + Send;

    /// Takes the argument without waiting, if it can; `None` (the default) has it taken by
    /// [`from_request`](Self::from_request) instead, and must leave the request as it was.
    /// A handler whose arguments are all taken at once holds no clone of the service's
    /// state while it runs (every extractor of this crate is taken at once).
    fn from_request_now(req: &mut Request, state: &S) -> Option<Result<Self, RpcError>> {
        let _ = (req, state);
        None
    }
}

/// `from_request` of an extractor that is always taken at once: its `from_request_now`.
pub(crate) fn at_once<T: FromRequest<S>, S>(req: &mut Request, state: &S) -> std::future::Ready<Result<T, RpcError>> {
    std::future::ready(T::from_request_now(req, state).unwrap_or_else(|| Err(RpcError::internal())))
}

impl<S: Sync, T: DeserializeOwned + Send + 'static> FromRequest<S> for T {
    type Payload = IsPayload<T>;

    fn from_request(req: &mut Request, state: &S) -> impl Future<Output = Result<Self, RpcError>> + Send {
        at_once(req, state)
    }

    fn from_request_now(req: &mut Request, _: &S) -> Option<Result<Self, RpcError>> {
        Some(decode_payload(req))
    }
}

/// The payload as `T`: JSON or MessagePack decoded, or a value of that type taken as it is.
///
/// Only ASCII JSON that decodes is decoded here; every other case is a function of its own, so
/// that this, on every request's path, is short code with nothing cold between its steps.
pub(crate) fn decode_payload<T: DeserializeOwned + 'static>(req: &mut Request) -> Result<T, RpcError> {
    match req.take_payload() {
        Some(Payload::Json(json)) if json.is_ascii() => {
            // SAFETY: ASCII is UTF-8; read as a `str`, its strings are not checked again.
            match serde_json::from_str(unsafe { std::str::from_utf8_unchecked(&json) }) {
                Ok(v) => Ok(v),
                Err(e) => json_failed(req, &json, e),
            }
        }
        other => decode_other(req, other),
    }
}

/// [`decode_payload`] of anything but ASCII JSON.
#[inline(never)]
fn decode_other<T: DeserializeOwned + 'static>(req: &mut Request, payload: Option<Payload>) -> Result<T, RpcError> {
    match payload {
        Some(Payload::Json(json)) => serde_json::from_slice(&json).or_else(|e| json_failed(req, &json, e)),
        Some(Payload::MsgPack(bytes)) => crate::wire::msgpack::from_msgpack(&bytes).map_err(|e| invalid(req, &e)),
        Some(Payload::Local(value)) => match value.take::<T>() {
            Ok(v) => Ok(v),
            Err(other) => {
                let json = other.to_json().map_err(|e| invalid(req, &e))?;
                serde_json::from_slice(&json).map_err(|e| invalid(req, &e))
            }
        },
        Some(Payload::Value(value)) => match value.downcast::<T>() {
            Ok(v) => Ok(*v),
            Err(value) => {
                req.set_payload(Payload::Value(value));
                // The type's name is for our log, not for the caller.
                tracing::debug!(expected = std::any::type_name::<T>(), "a payload value of another type");
                Err(invalid(req, &"a value of another type"))
            }
        },
        None => Err(invalid(req, &"the payload was already taken")),
    }
}

/// A JSON payload that did not decode as `T`. JavaScript's `JSON.parse` keeps the last of
/// duplicate keys; so do we, by reading the object as a map first (only on this path).
#[cold]
#[inline(never)]
fn json_failed<T: DeserializeOwned>(req: &Request, json: &[u8], e: serde_json::Error) -> Result<T, RpcError> {
    if crate::text::starts_with(&e, "duplicate field") {
        return serde_json::from_slice::<Value>(json)
            .and_then(T::deserialize)
            .map_err(|e| invalid(req, &e));
    }
    Err(invalid(req, &e))
}

/// The error for a payload that is not what the handler takes.
#[cold]
fn invalid(req: &Request, why: &dyn std::fmt::Display) -> RpcError {
    RpcError::new(format!(
        "invalid payload for pattern {}: {}",
        req.context().route(),
        crate::text::payload_error(why)
    ))
}

/// A payload no argument took must still be JSON, as NestJS's `JSON.parse` of the packet
/// would have required (and MessagePack one value).
pub(crate) fn check_unread_payload(req: &Request) -> Result<(), RpcError> {
    match req.payload() {
        Some(Payload::Json(json)) => serde_json::from_slice::<serde::de::IgnoredAny>(json)
            .map(drop)
            .map_err(|e| invalid(req, &e)),
        Some(Payload::MsgPack(bytes)) => crate::wire::msgpack::from_msgpack::<serde::de::IgnoredAny>(bytes)
            .map(drop)
            .map_err(|e| invalid(req, &e)),
        _ => Ok(()),
    }
}

impl<S: Sync> FromRequest<S> for Context {
    type Payload = NoPayload;

    fn from_request(req: &mut Request, state: &S) -> impl Future<Output = Result<Self, RpcError>> + Send {
        at_once(req, state)
    }

    fn from_request_now(req: &mut Request, _: &S) -> Option<Result<Self, RpcError>> {
        Some(Ok(req.context().clone()))
    }
}

impl<S: Sync> FromRequest<S> for Headers {
    type Payload = NoPayload;

    fn from_request(req: &mut Request, state: &S) -> impl Future<Output = Result<Self, RpcError>> + Send {
        at_once(req, state)
    }

    fn from_request_now(req: &mut Request, _: &S) -> Option<Result<Self, RpcError>> {
        Some(Ok(req.headers().clone()))
    }
}

/// When the caller stops waiting, if its transport says (gRPC sends `grpc-timeout`), as a
/// handler's argument: `async fn report(req: Query, Deadline(deadline): Deadline)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Option<Instant>);

impl<S: Sync> FromRequest<S> for Deadline {
    type Payload = NoPayload;

    fn from_request(req: &mut Request, state: &S) -> impl Future<Output = Result<Self, RpcError>> + Send {
        at_once(req, state)
    }

    fn from_request_now(req: &mut Request, _: &S) -> Option<Result<Self, RpcError>> {
        Some(Ok(Deadline(req.context().deadline())))
    }
}

/// A value a layer attached to the message (see [`Extensions`](crate::Extensions)), as a
/// handler's argument. Missing, it is a bug in the service: logged, and answered with
/// `Internal server error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<T>(pub T);

impl<S: Sync, T: Clone + Send + Sync + 'static> FromRequest<S> for Extension<T> {
    type Payload = NoPayload;

    fn from_request(req: &mut Request, state: &S) -> impl Future<Output = Result<Self, RpcError>> + Send {
        at_once(req, state)
    }

    fn from_request_now(req: &mut Request, _: &S) -> Option<Result<Self, RpcError>> {
        Some(match req.context().extensions().get::<T>() {
            Some(v) => Ok(Extension(v.clone())),
            None => {
                tracing::error!(
                    extension = std::any::type_name::<T>(),
                    route = req.context().route(),
                    "a handler takes an extension that no layer added"
                );
                Err(RpcError::internal())
            }
        })
    }
}

/// A client- or bidirectional-streaming gRPC call's request stream, taken like a payload.
#[cfg(feature = "grpc")]
impl<S: Sync, T: Send + 'static> FromRequest<S> for crate::transport::grpc::GrpcStream<T> {
    type Payload = IsPayload<Self>;

    fn from_request(req: &mut Request, state: &S) -> impl Future<Output = Result<Self, RpcError>> + Send {
        at_once(req, state)
    }

    fn from_request_now(req: &mut Request, _: &S) -> Option<Result<Self, RpcError>> {
        Some(crate::transport::grpc::proto::take_stream(req))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::decode_payload;
    use crate::service::{Address, Context, Kind, Local, Payload, Request};

    #[derive(Debug, PartialEq, Deserialize, serde::Serialize)]
    struct Point {
        x: i64,
        label: String,
    }

    fn req(payload: Payload) -> Request {
        let mut req = Request::new(Address::static_route("p"), payload, Context::new("mem", Kind::Request));
        req.context_mut().set_route("p".into());
        req
    }

    fn decode(payload: Payload) -> Result<Point, String> {
        decode_payload::<Point>(&mut req(payload)).map_err(|e| e.message().unwrap_or_default().to_owned())
    }

    fn point(x: i64, label: &str) -> Point {
        Point { x, label: label.into() }
    }

    #[test]
    fn json_decodes_ascii_or_not_and_keeps_the_last_of_duplicate_keys() {
        let json = |s: &str| Payload::Json(s.to_owned().into());
        assert_eq!(decode(json(r#"{"x":1,"label":"a"}"#)), Ok(point(1, "a")));
        assert_eq!(decode(json(r#"{"x":1,"label":"é"}"#)), Ok(point(1, "é")));
        assert_eq!(decode(json(r#"{"x":1,"label":"a","x":2}"#)), Ok(point(2, "a")));
        assert_eq!(decode(json(r#"{"x":1,"label":"é","x":3}"#)), Ok(point(3, "é")));
        let bad = decode(json(r#"{"x":"one","label":"é"}"#)).unwrap_err();
        assert!(bad.starts_with("invalid payload for pattern p: "), "{bad}");
        let bad = decode(json(r#"{"x":1}"#)).unwrap_err();
        assert!(bad.contains("missing field `label`"), "{bad}");
    }

    #[test]
    fn msgpack_local_and_value_payloads_decode_or_say_why_not() {
        let packed = crate::wire::msgpack::to_msgpack(&point(4, "m")).unwrap();
        assert_eq!(decode(Payload::MsgPack(packed)), Ok(point(4, "m")));
        // A value of the handler's type is taken as it is; another one goes through JSON.
        assert_eq!(decode(Payload::Local(Local::new(point(5, "l")))), Ok(point(5, "l")));
        let other = serde_json::json!({"x": 6, "label": "j"});
        assert_eq!(decode(Payload::Local(Local::new(other))), Ok(point(6, "j")));
        assert_eq!(decode(Payload::Value(Box::new(point(7, "v")))), Ok(point(7, "v")));
        let mut wrong = req(Payload::Value(Box::new(7u8)));
        let e = decode_payload::<Point>(&mut wrong).unwrap_err();
        assert_eq!(
            e.message(),
            Some("invalid payload for pattern p: a value of another type")
        );
        assert!(wrong.payload().is_some(), "a value of another type is put back");
        let mut taken = req(Payload::null());
        taken.take_payload();
        let e = decode_payload::<Point>(&mut taken).unwrap_err();
        assert_eq!(
            e.message(),
            Some("invalid payload for pattern p: the payload was already taken")
        );
    }
}
