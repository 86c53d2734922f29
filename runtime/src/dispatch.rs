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
    /// `Routes::channel_pattern` of the channel).
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
        let is_request = msg.request;
        let (handlers, inbound) = match self.prepare(msg) {
            Ok(found) => found,
            Err(route) if is_request => {
                tracing::debug!(pattern = %route, "no matching message handler");
                return Dispatched::NoHandler { route };
            }
            Err(_) => return Dispatched::Ignored,
        };
        match (is_request, handlers.message) {
            (true, Some(entry)) => Dispatched::Reply(call(entry, inbound)),
            // NestJS runs event listeners for a request too, and answers with completion.
            (true, None) => Dispatched::Reply(Reply::from_unit(run_listeners(handlers, inbound).map(drop))),
            (false, _) => match run_event(handlers, inbound) {
                Some(run) => Dispatched::Event(run.map(drop).boxed()),
                None => Dispatched::Ignored,
            },
        }
    }

    /// Runs an event's listeners for transports that acknowledge an event only once it has
    /// been handled (durable consumers): the future resolves to `true` when every listener
    /// succeeded, `false` when one failed (an error or a panic). `None` when nobody listens
    /// (already logged). A route with only a request handler runs it, as [`dispatch`](Self::dispatch) does.
    pub fn dispatch_event(&self, msg: Incoming<'_>) -> Option<BoxFuture<'static, bool>> {
        let (handlers, inbound) = self.prepare(Incoming { request: false, ..msg }).ok()?;
        run_event(handlers, inbound).map(FutureExt::boxed)
    }

    /// Finds the handlers and builds their input; a miss is the route (an event miss is logged).
    fn prepare<'a>(&self, msg: Incoming<'a>) -> Result<(&RouteHandlers, Inbound<'a>), String> {
        let handlers = self.routes.resolve(msg.pattern).inspect_err(|route| {
            if !msg.request {
                tracing::warn!(
                    "There is no matching event handler defined in the remote service. Event pattern: {route}"
                );
            }
        })?;
        let mut ctx = Context::new(handlers.route, msg.transport);
        if msg.request {
            ctx = ctx.into_request();
        }
        if let Some(meta) = msg.metadata {
            ctx = ctx.with_metadata(meta);
        }
        Ok((handlers, Inbound::new(msg.data, ctx)))
    }
}

/// An event's work: its listeners, or, for a route with only a request handler, that handler
/// with its answer dropped (as NestJS does). Resolves to whether all of it succeeded.
fn run_event(handlers: &RouteHandlers, inbound: Inbound<'_>) -> Option<impl Future<Output = bool> + Send + 'static> {
    match handlers.message {
        _ if !handlers.events.is_empty() => Some(run_listeners(handlers, inbound).left_future()),
        Some(entry) => Some(drain(entry, call(entry, inbound)).right_future()),
        None => None,
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

/// Runs every listener of an event, each with its own copy of the message; resolves to
/// whether every one succeeded.
fn run_listeners(handlers: &RouteHandlers, inbound: Inbound<'_>) -> impl Future<Output = bool> + Send + 'static {
    let listeners: Vec<_> = handlers
        .events
        .iter()
        .map(|&entry| drain(entry, call(entry, inbound.clone())))
        .collect();
    join_all(listeners).map(|ok| ok.into_iter().all(|ok| ok))
}

/// Runs a reply nobody waits for; failures are logged and reported as `false`.
async fn drain(entry: &'static HandlerEntry, mut reply: Reply) -> bool {
    let mut ok = true;
    while let Some(item) = reply.next().await {
        if let ReplyItem::Error(err) = item {
            tracing::error!(handler = %entry.location(), error = %err, "event handler failed");
            ok = false;
        }
    }
    ok
}
