//! The in-process transport, `mem://name`: a call is a function call plus JSON encoding.
//!
//! For tests and single-binary apps. A server bound to `mem://orders` is reachable by any
//! client in the same process that connects to `mem://orders`.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;

use super::{ClientTransport, Endpoint, Listener, Outbound, Replies, Shutdown};
use crate::dispatch::{Dispatched, Dispatcher, Incoming};
use crate::error::{Error, Result};

/// Servers bound in this process, by name.
static SERVERS: LazyLock<Mutex<HashMap<String, Dispatcher>>> = LazyLock::new(Default::default);

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
        if SERVERS.lock().expect("mem registry lock").contains_key(&name) {
            return Err(Error::InvalidUrl {
                url: ep.as_str().into(),
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

    fn serve(self: Box<Self>, dispatcher: Dispatcher, mut shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        // Registered before the future is first polled, so the name answers as soon as the
        // server has started; unregistered when the future ends or is dropped (aborted).
        let bound = {
            let mut servers = SERVERS.lock().expect("mem registry lock");
            if servers.contains_key(&self.name) {
                Err(Error::Registry(format!(
                    "mem://{} is already bound in this process",
                    self.name
                )))
            } else {
                servers.insert(self.name.clone(), dispatcher);
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
        if let Ok(mut servers) = SERVERS.lock() {
            servers.remove(&self.0);
        }
    }
}

/// The client side of `mem://name`.
#[derive(Debug)]
pub struct MemClient {
    name: String,
}

impl MemClient {
    /// A client for the server named in `ep` (which may start later).
    pub fn new(ep: &Endpoint) -> Result<Self> {
        ep.only_params(&[])?;
        Ok(MemClient {
            name: ep.authority.clone(),
        })
    }

    fn dispatch(&self, msg: &Outbound, request: bool) -> Result<Dispatched> {
        let dispatcher = SERVERS
            .lock()
            .expect("mem registry lock")
            .get(&self.name)
            .cloned()
            .ok_or_else(|| Error::Connect {
                addr: format!("mem://{}", self.name),
                reason: "no server is bound to this name in this process".into(),
            })?;
        Ok(dispatcher.dispatch(Incoming {
            pattern: &msg.pattern,
            data: Some(&msg.data),
            request,
            metadata: msg.metadata.as_deref().cloned(),
            transport: "mem",
        }))
    }
}

impl ClientTransport for MemClient {
    fn connect(&self) -> BoxFuture<'_, Result<()>> {
        // The server may be started later in the same process; calls check then.
        std::future::ready(Ok(())).boxed()
    }

    fn request(&self, msg: Outbound) -> BoxFuture<'_, Result<Replies>> {
        let result = self.dispatch(&msg, true).and_then(|d| match d {
            Dispatched::Reply(reply) => Ok(reply.map(Ok).boxed()),
            Dispatched::NoHandler { route } => Err(Error::NoHandler {
                pattern: route,
                addr: format!("mem://{}", self.name),
            }),
            Dispatched::Event(_) | Dispatched::Ignored => unreachable!("a request always gets a reply"),
        });
        std::future::ready(result).boxed()
    }

    fn emit(&self, msg: Outbound) -> BoxFuture<'_, Result<()>> {
        let result = self.dispatch(&msg, false).map(|d| {
            if let Dispatched::Event(run) = d {
                tokio::spawn(run);
            }
        });
        std::future::ready(result).boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        std::future::ready(()).boxed()
    }
}
