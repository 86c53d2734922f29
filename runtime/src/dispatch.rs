//! The server's side of every transport: from a decoded packet to the handlers' reply.
//!
//! A transport decodes bytes into an [`Incoming`] and hands it to the [`Dispatcher`]; it
//! never sees handlers. The dispatcher resolves the pattern as NestJS does, runs the
//! handler (or every listener of an event) and catches panics, so one bad handler cannot
//! take a connection down.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt, join_all};
use futures_util::stream::StreamExt;

use crate::context::Context;
use crate::error::RpcError;
use crate::handler::{Inbound, Reply, ReplyItem};
use crate::registry::{HandlerEntry, RouteHandlers, Routes};

/// A request or event as a transport decoded it.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// Raw JSON of the packet's `pattern` field (or, for brokers that route by channel,
    /// the channel name as a JSON string).
    pub pattern: &'a str,
    /// The payload's JSON text; `None` when the packet had no `data`.
    pub data: Option<&'a [u8]>,
    /// True for a request (the packet had an `id`), false for an event.
    pub request: bool,
    /// Headers (NestJS 12's `metadata`).
    pub metadata: Option<HashMap<String, String>>,
    /// The transport's name, for [`Context::transport`].
    pub transport: &'static str,
}

/// What to do with an incoming packet.
pub enum Dispatched {
    /// A request: send this reply.
    Reply(Reply),
    /// A request nobody handles: send NestJS's no-handler reply.
    NoHandler {
        /// The route that missed.
        route: String,
    },
    /// An event: run this to completion; nothing is sent back.
    Event(BoxFuture<'static, ()>),
    /// An event nobody listens to (already logged).
    Ignored,
}

impl std::fmt::Debug for Dispatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dispatched::Reply(_) => "Reply",
            Dispatched::NoHandler { .. } => "NoHandler",
            Dispatched::Event(_) => "Event",
            Dispatched::Ignored => "Ignored",
        })
    }
}

/// Routes incoming packets to handlers. Cheap to clone; shared by all connections.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    routes: Arc<Routes>,
}

impl Dispatcher {
    /// A dispatcher over a route table.
    pub fn new(routes: Routes) -> Self {
        Dispatcher {
            routes: Arc::new(routes),
        }
    }

    /// The route table.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Runs the handlers for one packet.
    pub fn dispatch(&self, msg: Incoming<'_>) -> Dispatched {
        let handlers = match self.routes.resolve(msg.pattern) {
            Ok(h) => h,
            Err(route) => {
                if msg.request {
                    tracing::debug!(pattern = %route, "no matching message handler");
                    return Dispatched::NoHandler { route };
                }
                tracing::warn!(
                    "There is no matching event handler defined in the remote service. Event pattern: {route}"
                );
                return Dispatched::Ignored;
            }
        };
        let is_request = msg.request;
        let mut ctx = Context::new(handlers.route, msg.transport);
        if is_request {
            ctx = ctx.into_request();
        }
        if let Some(meta) = msg.metadata {
            ctx = ctx.with_metadata(meta);
        }
        let inbound = Inbound::new(msg.data, ctx);
        match (is_request, handlers.message) {
            (true, Some(entry)) => Dispatched::Reply(call(entry, inbound)),
            // NestJS runs event listeners for a request too, and answers with completion.
            (true, None) => Dispatched::Reply(Reply::from_unit(run_listeners(handlers, inbound))),
            (false, _) if !handlers.events.is_empty() => Dispatched::Event(run_listeners(handlers, inbound).boxed()),
            // An event for a route with only a request handler: NestJS runs that handler and
            // drops its answer.
            (false, Some(entry)) => Dispatched::Event(drain(entry, call(entry, inbound)).boxed()),
            (false, None) => Dispatched::Ignored,
        }
    }
}

/// Calls a handler; a panic while decoding or calling becomes NestJS's `Internal server
/// error` (the [`Reply`] itself catches panics while the handler runs).
fn call(entry: &'static HandlerEntry, inbound: Inbound<'_>) -> Reply {
    match std::panic::catch_unwind(AssertUnwindSafe(|| (entry.call)(inbound))) {
        Ok(reply) => reply.of_handler(entry),
        Err(_) => {
            tracing::error!(handler = %entry.location(), "handler panicked");
            Reply::error(RpcError::internal())
        }
    }
}

/// Runs every listener of an event, each with its own copy of the message.
fn run_listeners(handlers: &RouteHandlers, inbound: Inbound<'_>) -> impl Future<Output = ()> + Send + 'static {
    let listeners: Vec<_> = handlers
        .events
        .iter()
        .map(|&entry| drain(entry, call(entry, inbound.clone())))
        .collect();
    join_all(listeners).map(|_| ())
}

/// Runs a reply nobody waits for; failures are logged, never sent.
async fn drain(entry: &'static HandlerEntry, mut reply: Reply) {
    while let Some(item) = reply.next().await {
        if let ReplyItem::Error(err) = item {
            tracing::error!(handler = %entry.location(), error = %err, "event handler failed");
        }
    }
}
