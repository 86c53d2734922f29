//! The in-process transport, `mem://name`: a call is a function call plus JSON encoding.
//!
//! For tests and single-binary apps. A server bound to `mem://orders` is reachable by any
//! client in the same process that connects to `mem://orders`.
//!
//! A client of `mem://orders?codec=msgpack` sends every payload and takes every reply through
//! MessagePack, as a `tcp://…?codec=msgpack` client does (values given by value are otherwise
//! handed over unencoded): a test over `mem://` then meets the encoding a TCP peer would, and
//! the benchmark measures the codec without a socket.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};

use super::{ClientTransport, Endpoint, Listener, Shutdown};
use crate::error::{Error, Result};
use crate::service::{Address, Context, Kind, Outbound, Payload, Replies, ReplyItem, Request, Router, RouterFuture};
use crate::wire::msgpack::{Codec, json_to_msgpack};

/// Servers bound in this process, by name.
static SERVERS: LazyLock<RwLock<HashMap<String, Router>>> = LazyLock::new(Default::default);

/// The server side of `mem://name`.
#[derive(Debug)]
pub struct MemListener {
    name: String,
}

impl MemListener {
    /// Reserves the name.
    pub fn bind(ep: &Endpoint) -> Result<Self> {
        ep.only_params(&[])?;
        let name = ep.authority.clone();
        if SERVERS.read().expect("mem registry lock").contains_key(&name) {
            return Err(Error::InvalidUrl {
                url: ep.redacted(),
                reason: "already bound in this process".into(),
            });
        }
        Ok(MemListener { name })
    }
}

impl Listener for MemListener {
    fn local_url(&self) -> String {
        format!("mem://{}", self.name)
    }

    fn serve(self: Box<Self>, router: Router, mut shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        // Registered before the future is first polled, so the name answers as soon as the
        // server has started; unregistered when the future ends or is dropped (aborted).
        let bound = {
            let mut servers = SERVERS.write().expect("mem registry lock");
            if servers.contains_key(&self.name) {
                Err(Error::InvalidUrl {
                    url: self.local_url(),
                    reason: "already bound in this process".into(),
                })
            } else {
                servers.insert(self.name.clone(), router);
                Ok(Bound(self.name.clone()))
            }
        };
        async move {
            let _bound = bound?;
            shutdown.wait().await;
            Ok(())
        }
        .boxed()
    }
}

/// A name in the in-process registry, released on drop.
struct Bound(String);

impl Drop for Bound {
    fn drop(&mut self) {
        if let Ok(mut servers) = SERVERS.write()
            && let Some(router) = servers.remove(&self.0)
        {
            // Clients that kept it look the name up again.
            router.close();
        }
    }
}

/// The client side of `mem://name`.
#[derive(Debug)]
pub struct MemClient {
    name: String,
    /// `Codec::MsgPack`: payloads and replies go through MessagePack.
    codec: Codec,
    /// The server's router, kept once found, until that server stops.
    router: RwLock<Option<Router>>,
}

impl MemClient {
    /// A client for the server named in `ep` (which may start later); `?codec=msgpack`
    /// encodes every payload and reply through MessagePack.
    pub fn new(ep: &Endpoint) -> Result<Self> {
        let mut ep = ep.clone();
        let codec = Codec::take(&mut ep)?;
        Self::with_codec(&ep, codec)
    }

    pub(crate) fn with_codec(ep: &Endpoint, codec: Codec) -> Result<Self> {
        ep.only_params(&[])?;
        Ok(MemClient {
            codec,
            name: ep.authority.clone(),
            router: RwLock::new(None),
        })
    }

    fn addr(&self) -> String {
        format!("mem://{}", self.name)
    }

    /// Hands a call to the server's router (in this process, a function call): the reply.
    pub(crate) fn call(&self, mut msg: Outbound) -> Result<RouterFuture> {
        let payload = match (self.codec, msg.take_local()) {
            (Codec::Json, Some(value)) => Payload::Local(value),
            (Codec::Json, None) => Payload::Json(msg.payload),
            (Codec::MsgPack, value) => {
                let packed = match value {
                    Some(value) => value.to_msgpack(),
                    None => json_to_msgpack(&msg.payload),
                };
                Payload::MsgPack(packed.map_err(|source| Error::MsgPack {
                    context: format!("cannot encode the payload for pattern {}", msg.route),
                    source,
                })?)
            }
        };
        // A msgpack reply is encoded here, from the value (see `replies`).
        let local = matches!(payload, Payload::Local(_) | Payload::MsgPack(_));
        let address = match msg.pattern {
            Cow::Borrowed(p) => Address::static_pattern(p),
            Cow::Owned(p) => Address::Pattern(Bytes::from(p)),
        };
        // A request's handler keeps to its caller's deadline; an event's deadline is only
        // how long the emitter waits for it to be accepted, as on a broker.
        let deadline = (msg.kind == Kind::Request).then_some(msg.deadline);
        let mut ctx = Context::new("mem", msg.kind)
            .with_headers(msg.headers)
            .with_deadline(deadline);
        // A caller that handed its payload over as a value takes its reply the same way.
        ctx.set_local(local);
        let req = Request::new(address, payload, ctx);
        if let Some(router) = &*self.router.read().expect("mem client lock")
            && !router.is_closed()
        {
            return Ok(router.call(req));
        }
        let router = SERVERS
            .read()
            .expect("mem registry lock")
            .get(&self.name)
            .cloned()
            .ok_or_else(|| Error::Connect {
                addr: self.addr(),
                reason: "no server is bound to this name in this process".into(),
            })?;
        let reply = router.call(req);
        *self.router.write().expect("mem client lock") = Some(router);
        Ok(reply)
    }

    /// A request's reply, as the client sees it: a pattern nobody handles is an error.
    pub(crate) fn replies(&self, route: &str, reply: crate::service::Reply) -> Result<Replies> {
        if reply.is_no_handler() {
            return Err(Error::NoHandler {
                pattern: route.to_owned(),
                addr: self.addr(),
            });
        }
        Ok(match self.codec {
            Codec::Json => Replies::from_reply(reply),
            Codec::MsgPack => Replies::new(futures_util::StreamExt::map(reply, |item| Ok(ReplyItem::packed(item)))),
        })
    }
}

impl ClientTransport for MemClient {
    fn connect(&self) -> BoxFuture<'_, Result<()>> {
        // The server may be started later in the same process; calls check then.
        std::future::ready(Ok(())).boxed()
    }

    fn request(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<Replies>> {
        let route = msg.route.clone();
        match self.call(msg) {
            Ok(reply) if self.codec == Codec::MsgPack => async move {
                // Resolved once the first packet is in, as over a socket.
                Replies::first_of(self.replies(&route, reply.await)?).await
            }
            .boxed(),
            Ok(reply) => async move { self.replies(&route, reply.await) }.boxed(),
            Err(e) => std::future::ready(Err(e)).boxed(),
        }
    }

    fn emit(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<()>> {
        debug_assert_eq!(msg.kind, Kind::Event);
        let result = self.call(msg).map(|run| {
            // Like a broker: accepted now, handled on its own.
            tokio::spawn(run);
        });
        std::future::ready(result).boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        std::future::ready(()).boxed()
    }

    fn takes_values(&self) -> bool {
        true
    }
}
