//! [`Request`]: one message on its way to a handler, owned, as every layer and handler sees it.

use std::any::Any;
use std::fmt;

use bytes::Bytes;

use super::{Context, Headers, Kind, Local};

/// How the sender addressed the message.
#[derive(Clone, PartialEq, Eq)]
pub enum Address {
    /// A pattern as JSON text, as a NestJS packet carries it (`{"cmd":"sum"}`, `"math.add"`);
    /// resolved as a NestJS server resolves it.
    Pattern(Bytes),
    /// A route key itself: the channel, subject or topic a broker delivered the message on.
    Route(Bytes),
}

impl Address {
    /// The pattern JSON or route text.
    pub fn as_str(&self) -> &str {
        let (Address::Pattern(b) | Address::Route(b)) = self;
        // Built only from `&str`s (see the constructors); checking again would cost a UTF-8
        // scan on every message. Bytes put in by hand that are not UTF-8 read as empty.
        match b.is_ascii() {
            true => {
                // SAFETY: ASCII is UTF-8.
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            false => std::str::from_utf8(b).unwrap_or_default(),
        }
    }

    /// A pattern as JSON text, sliced from `frame` (it was read from it) without copying.
    pub fn pattern_in(frame: &Bytes, json: &str) -> Self {
        Address::Pattern(frame.slice_ref(json.as_bytes()))
    }

    /// A pattern as JSON text.
    pub fn pattern(json: impl Into<String>) -> Self {
        Address::Pattern(Bytes::from(json.into()))
    }

    /// A pattern JSON known at compile time.
    pub fn static_pattern(json: &'static str) -> Self {
        Address::Pattern(Bytes::from_static(json.as_bytes()))
    }

    /// A route key (a broker's channel or topic).
    pub fn route(route: impl Into<String>) -> Self {
        Address::Route(Bytes::from(route.into()))
    }

    /// A route key known at compile time.
    pub fn static_route(route: &'static str) -> Self {
        Address::Route(Bytes::from_static(route.as_bytes()))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message's payload: JSON text (every NestJS transport), or a value that travels as it is
/// (a prost message or a request stream on gRPC), which a handler's payload argument takes
/// by type.
pub enum Payload {
    /// JSON text.
    Json(Bytes),
    /// A value of the type the handler takes.
    Value(Box<dyn Any + Send>),
    /// A value sent in-process, not encoded: taken as it is by a handler whose payload has
    /// its type, decoded from its JSON by any other.
    Local(Local),
    /// One MessagePack value, from a Switchboard peer that asked for `?codec=msgpack`.
    MsgPack(Bytes),
}

impl Payload {
    /// `null`: what a NestJS packet without `data` carries.
    pub fn null() -> Self {
        Payload::Json(Bytes::from_static(b"null"))
    }

    /// The JSON text, if the payload is JSON.
    pub fn json(&self) -> Option<&[u8]> {
        match self {
            Payload::Json(b) => Some(b),
            Payload::Value(_) | Payload::Local(_) | Payload::MsgPack(_) => None,
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Json(b) => write!(f, "Json({} bytes)", b.len()),
            Payload::Value(_) => f.write_str("Value(..)"),
            Payload::Local(v) => v.fmt(f),
            Payload::MsgPack(b) => write!(f, "MsgPack({} bytes)", b.len()),
        }
    }
}

/// One request or event as it reaches the service: where it is addressed, its payload and
/// its [`Context`]. Owned and `'static`, so any `tower` layer can hold it across awaits.
///
/// ```
/// use switchboard::{Address, Context, Kind, Payload, Request};
///
/// let req = Request::new(Address::static_route("math.add"), Payload::Json("[5,3]".into()), Context::new("mem", Kind::Request));
/// assert_eq!(req.address().as_str(), "math.add");
/// assert!(!req.context().is_event());
/// ```
#[derive(Debug)]
pub struct Request {
    address: Address,
    payload: Option<Payload>,
    ctx: Context,
}

impl Request {
    /// A request for a handler.
    pub fn new(address: Address, payload: Payload, ctx: Context) -> Self {
        Request {
            address,
            payload: Some(payload),
            ctx,
        }
    }

    /// Where the sender addressed it.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Its context: route (once routed), transport, headers, deadline, extensions.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Its context, to change (a layer adding an extension or a header).
    pub fn context_mut(&mut self) -> &mut Context {
        &mut self.ctx
    }

    /// Its headers.
    pub fn headers(&self) -> &Headers {
        self.ctx.headers()
    }

    /// Request or event.
    pub fn kind(&self) -> Kind {
        self.ctx.kind()
    }

    /// The payload, unless a handler's argument took it already.
    pub fn payload(&self) -> Option<&Payload> {
        self.payload.as_ref()
    }

    /// Takes the payload out (the payload argument does this).
    pub fn take_payload(&mut self) -> Option<Payload> {
        self.payload.take()
    }

    /// Puts a payload back (or in).
    pub fn set_payload(&mut self, payload: Payload) {
        self.payload = Some(payload);
    }

    /// Takes the request out, leaving an empty one behind: for a holder of `&mut Request`
    /// that must pass it on by value (a handler that keeps it, a `tower` layer).
    pub(crate) fn take(&mut self) -> Request {
        let empty = Request {
            address: Address::Route(Bytes::new()),
            payload: None,
            ctx: Context::new("", Kind::Event),
        };
        std::mem::replace(self, empty)
    }

    /// A copy for another listener of the same event: an encoded payload is shared, a typed
    /// one is not copied (`None`).
    pub(crate) fn try_clone(&self) -> Option<Request> {
        let payload = match &self.payload {
            Some(Payload::Json(b)) => Some(Payload::Json(b.clone())),
            Some(Payload::MsgPack(b)) => Some(Payload::MsgPack(b.clone())),
            Some(Payload::Value(_) | Payload::Local(_)) => return None,
            None => None,
        };
        Some(Request {
            address: self.address.clone(),
            payload,
            ctx: self.ctx.clone(),
        })
    }
}
