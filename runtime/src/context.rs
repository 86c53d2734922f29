//! [`Context`]: what a handler may know about the message besides its payload.

use std::collections::HashMap;
use std::sync::Arc;

/// Request or event details, passed to handlers that take a `Context` argument.
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
///     let trace = ctx.traceparent().unwrap_or("-");
///     tracing::info!(id = user.id, pattern = ctx.pattern(), transport = ctx.transport(), trace, "signup");
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Context {
    route: &'static str,
    transport: &'static str,
    request: bool,
    metadata: Option<Arc<HashMap<String, String>>>,
}

impl Context {
    /// A context for `route` received over `transport`.
    pub fn new(route: &'static str, transport: &'static str) -> Self {
        Context {
            route,
            transport,
            request: false,
            metadata: None,
        }
    }

    /// Marks the message as a request (the sender waits for a reply).
    pub fn into_request(mut self) -> Self {
        self.request = true;
        self
    }

    /// Attaches the message's headers (NestJS 12's `metadata` object on TCP).
    pub fn with_metadata(mut self, metadata: HashMap<String, String>) -> Self {
        if !metadata.is_empty() {
            self.metadata = Some(Arc::new(metadata));
        }
        self
    }

    /// The normalised route of the message (`{"cmd":"get_user"}`, `math.add`).
    pub fn pattern(&self) -> &'static str {
        self.route
    }

    /// The transport it came in on: `"tcp"`, `"mem"`, …
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// True when the sender expects no reply.
    pub fn is_event(&self) -> bool {
        !self.request
    }

    /// One header / metadata entry.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.metadata.as_ref()?.get(name).map(String::as_str)
    }

    /// All headers / metadata entries.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.metadata
            .iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// The W3C trace context (`traceparent` header), when the caller sent one.
    pub fn traceparent(&self) -> Option<&str> {
        self.header("traceparent")
    }
}
