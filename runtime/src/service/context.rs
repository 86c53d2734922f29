//! [`Context`]: what a handler (or a layer) may know about a message besides its payload.

use std::borrow::Cow;

use tokio::time::Instant;

use super::{Extensions, Headers};

/// Whether the sender of a message waits for a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request (`send`): the sender waits for a reply.
    Request,
    /// An event (`emit`): nobody waits.
    Event,
}

/// A message's details: its route, the transport it came on, its headers, its deadline and
/// the extensions layers attached. A handler receives it by taking a `Context` argument.
///
/// ```
/// use switchboard::prelude::*;
///
/// #[derive(Deserialize)]
/// struct User {
///     id: String,
/// }
///
/// #[event_pattern("user_created")]
/// async fn track_signup(user: User, ctx: Context) {
///     let trace = ctx.headers().get("traceparent").unwrap_or("-");
///     tracing::info!(id = user.id, route = ctx.route(), transport = ctx.transport(), trace, "signup");
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Context {
    route: Cow<'static, str>,
    transport: &'static str,
    kind: Kind,
    headers: Headers,
    deadline: Option<Instant>,
    extensions: Extensions,
    /// The reply is taken as a value, not encoded: the sender is in this process, or its
    /// connection encodes the value itself (`?codec=msgpack`).
    local: bool,
}

impl Context {
    /// A context for a message of `kind` received over `transport`; its route is set when
    /// the message is routed.
    pub fn new(transport: &'static str, kind: Kind) -> Self {
        Context {
            route: Cow::Borrowed(""),
            transport,
            kind,
            headers: Headers::new(),
            deadline: None,
            extensions: Extensions::new(),
            local: false,
        }
    }

    /// The normalised route of the message (`{"cmd":"get_user"}`, `math.add`).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The transport it came in on: `"tcp"`, `"mem"`, `"nats"`, …
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// Request or event.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// True when the sender expects no reply.
    pub fn is_event(&self) -> bool {
        self.kind == Kind::Event
    }

    /// The message's headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The message's headers, to change.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// When the caller stops waiting, if it said (a Switchboard client always does; see
    /// [`TIMEOUT_HEADER`](crate::service::TIMEOUT_HEADER)).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Values attached by layers.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Values attached by layers, to change.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// With these headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// With a deadline.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    pub(crate) fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    pub(crate) fn route_cow(&self) -> &Cow<'static, str> {
        &self.route
    }

    pub(crate) fn set_route(&mut self, route: Cow<'static, str>) {
        self.route = route;
    }

    /// True when the reply may be handed back as a value ([`Reply::local`](super::Reply)):
    /// the sender is in this process (or its connection encodes the value itself, as a
    /// `?codec=msgpack` one does), and no layer of the service looks at replies.
    pub fn takes_local_reply(&self) -> bool {
        self.local
    }

    pub(crate) fn set_local(&mut self, local: bool) {
        self.local = local;
    }
}
