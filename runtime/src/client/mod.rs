//! The client side: [`Client`] calls patterns on a remote (or in-process) service.
//!
//! - [`descriptor`]: what a caller knows about a pattern (its payload and reply types);
//! - [`call`]: one request or event on its way, and its reply;
//! - [`stack`]: the transport as a `tower::Service`, and the layers over it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::{BoxError, Layer, Service};

use crate::contract::Contract;
use crate::error::{Error, Result};
use crate::service::{Extensions, Headers, Kind, Local, Outbound, Overrides, PatternOptions, Replies};
use crate::transport::mem::MemClient;
use crate::transport::{self, ClientOptions, ClientTransport};

pub mod call;
mod decode;
pub mod descriptor;
pub mod stack;

use call::{Call, Emit};
use descriptor::{AsPayload, Event, Message};
pub use stack::{ClientService, Transport};

/// Default deadline of a call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one service, chosen by URL. Cheap to clone; clones share connections.
///
/// ```
/// use switchboard::prelude::*;
///
/// #[message_pattern({ cmd = "get_user" })]
/// async fn get_user(id: String) -> RpcResult<String> {
///     Ok(format!("user {id}"))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// # let server = Microservice::new().handler(GET_USER).listen("mem://users-doc").start().await?;
/// let users = Client::connect("mem://users-doc").await?;
/// let user = users.send(GET_USER, "42".to_string()).await?;   // typed: a `String` in, a `String` out
/// assert_eq!(user, "user 42");
/// // NestJS style, any pattern as JSON:
/// let same: serde_json::Value = users.send_raw(serde_json::json!({"cmd": "get_user"}), "42").await?;
/// assert_eq!(same, "user 42");
/// # server.shutdown().await
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    label: Arc<str>,
    transport: Arc<dyn ClientTransport>,
    service: ClientService,
    timeout: Duration,
    headers: Headers,
    /// Retries for calls whose pattern declares them; one budget for the client.
    retry: Arc<crate::resilience::Retry>,
    /// Changes to what patterns declare for their callers.
    overrides: Overrides,
    /// An in-process transport with no layer in between: requests go straight to the
    /// service's router, and payloads given by value are handed over as they are.
    local: Option<Arc<MemClient>>,
    /// A transport that encodes payloads itself (`?codec=msgpack`), with no layer in between:
    /// a payload given by value is handed to it as it is, to be encoded once, in its codec.
    packs: bool,
    /// Found through discovery: each typed call carries its pattern's [`Contract`], so that
    /// instances serving another contract are skipped.
    discovered: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.label)
            .field("timeout", &self.timeout)
            .field("headers", &self.headers)
            .finish()
    }
}

type Wrap = Box<dyn FnOnce(ClientService) -> ClientService + Send>;

/// Configures a [`Client`].
pub struct ClientBuilder {
    target: Target,
    timeout: Duration,
    opts: ClientOptions,
    headers: Headers,
    layers: Vec<Wrap>,
    overrides: Overrides,
}

enum Target {
    Url(String),
    Custom(Arc<dyn ClientTransport>),
    Discovered {
        service: String,
        transport: Arc<dyn ClientTransport>,
    },
    /// Discovery could not make a transport: `build` says why.
    Failed(Error),
}

/// Where a client finds the instances of a service, and how it spreads calls over them: what
/// [`Client::discover`] takes. The registries of `switchboard-discovery` (etcd, Consul, DNS,
/// static lists) are ones.
pub trait Discover {
    /// A transport over the instances of `service`, balancing each call.
    fn transport(&self, service: &str) -> Result<Arc<dyn ClientTransport>>;
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Url(url) => transport::redact(url),
            Target::Custom(_) => "a custom transport".into(),
            Target::Discovered { service, .. } => format!("discovered {service}"),
            Target::Failed(e) => format!("failed: {e}"),
        };
        f.debug_struct("ClientBuilder")
            .field("target", &target)
            .field("timeout", &self.timeout)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The deadline of every call (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connections kept to the server (default 2, at most 1024); each multiplexes many calls.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.opts.pool_size = n.clamp(1, crate::transport::MAX_POOL);
        self
    }

    /// How long one connection attempt may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.opts.connect_timeout = timeout;
        self
    }

    /// The largest reply frame accepted, in UTF-16 units (default 64 Mi).
    pub fn max_frame_len(mut self, len: usize) -> Self {
        self.opts.max_frame_len = len;
        self
    }

    /// Headers sent with every call.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Changes what patterns declare for their typed callers (`timeout`, and `retries` of
    /// idempotent patterns) from configuration, without recompiling: [`Overrides::from_env`]
    /// reads them from `SWITCHBOARD_POLICY` or `SWITCHBOARD_POLICY_FILE`. Retries for a pattern
    /// not declared `idempotent` are ignored, with a warning.
    ///
    /// ```no_run
    /// use switchboard::{Client, Overrides};
    ///
    /// # async fn call() -> switchboard::Result<()> {
    /// let client = Client::builder("tcp://127.0.0.1:3001")
    ///     .policy_overrides(Overrides::from_env()?)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn policy_overrides(mut self, overrides: Overrides) -> Self {
        self.overrides = overrides;
        self
    }

    /// Wraps every call in a `tower` layer; the layer added last is the outermost. The
    /// innermost service is the transport ([`Transport`]); a request resolves once its
    /// first reply packet is in, so a layer sees the outcome of each call.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<ClientService> + Send + 'static,
        L::Service: Service<Outbound, Response = Replies> + Clone + Send + Sync + 'static,
        <L::Service as Service<Outbound>>::Error: Into<BoxError>,
        <L::Service as Service<Outbound>>::Future: Send,
    {
        self.layers.push(Box::new(move |inner: ClientService| {
            ClientService::new(layer.layer(inner))
        }));
        self
    }

    /// A client that connects on its first call.
    pub fn build(self) -> Result<Client> {
        let mut mem = None;
        let discovered = matches!(self.target, Target::Discovered { .. });
        let packs = match &self.target {
            Target::Url(url) => transport::Endpoint::parse(url)
                .and_then(|mut ep| crate::wire::msgpack::Codec::take(&mut ep))
                .is_ok_and(|codec| codec == crate::wire::msgpack::Codec::MsgPack),
            _ => false,
        };
        let (label, transport): (Arc<str>, Arc<dyn ClientTransport>) = match self.target {
            Target::Url(url) if url.starts_with("mem://") => {
                let client = Arc::new(MemClient::new(&transport::Endpoint::parse(&url)?)?);
                mem = Some(client.clone());
                (transport::redact(&url).into(), client)
            }
            Target::Url(url) => (transport::redact(&url).into(), transport::client(&url, &self.opts)?),
            Target::Custom(t) => ("custom".into(), t),
            Target::Discovered { service, transport } => (format!("discover://{service}").into(), transport),
            Target::Failed(e) => return Err(e),
        };
        let scheme = match &label.split_once("://") {
            Some((scheme, _)) => scheme.to_string(),
            None => "custom".to_owned(),
        };
        let local = mem.filter(|_| self.layers.is_empty());
        let packs = self.layers.is_empty() && packs;
        let service = self.layers.into_iter().fold(
            ClientService::transport(Transport::new(transport.clone(), &scheme)),
            |inner, wrap| wrap(inner),
        );
        Ok(Client {
            label,
            transport,
            service,
            timeout: self.timeout,
            headers: self.headers,
            retry: Arc::new(crate::resilience::Retry::new()),
            overrides: self.overrides,
            local,
            packs,
            discovered,
        })
    }

    /// A client connected now: an unreachable server is an error here, not on the first call.
    pub async fn connect(self) -> Result<Client> {
        let client = self.build()?;
        client.transport.connect().await?;
        Ok(client)
    }
}

impl Client {
    /// Connects to the service at `url` with default settings.
    pub async fn connect(url: &str) -> Result<Client> {
        Self::builder(url).connect().await
    }

    /// Starts configuring a client for `url`.
    pub fn builder(url: &str) -> ClientBuilder {
        Self::builder_for(Target::Url(url.to_owned()))
    }

    /// Starts configuring a client of the service named `service`, whose instances
    /// `registry` finds: each call goes to one of them, balanced, and a typed call skips the
    /// instances whose [`Contract`] for its pattern differs from the descriptor's. The
    /// registries of `switchboard-discovery` (etcd, Consul, DNS, static lists) are the usual
    /// ones; any [`Discover`] will do:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchboard::prelude::*;
    /// use switchboard::{Discover, transport::ClientTransport};
    ///
    /// #[message_pattern("ping")]
    /// async fn ping() -> String { "pong".into() }
    ///
    /// /// Every service at `mem://<name>`.
    /// struct InProcess;
    /// impl Discover for InProcess {
    ///     fn transport(&self, service: &str) -> switchboard::Result<Arc<dyn ClientTransport>> {
    ///         switchboard::transport::client_for(&format!("mem://{service}"))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> switchboard::Result<()> {
    /// let server = Microservice::new().handler(PING).listen("mem://pinger").start().await?;
    /// let pinger = Client::discover("pinger", &InProcess).connect().await?;
    /// assert_eq!(pinger.send(PING, ()).await?, "pong");
    /// assert_eq!(pinger.url(), "discover://pinger");
    /// # server.shutdown().await
    /// # }
    /// ```
    pub fn discover(service: &str, registry: &impl Discover) -> ClientBuilder {
        match registry.transport(service) {
            Ok(transport) => Self::builder_for(Target::Discovered {
                service: service.to_owned(),
                transport,
            }),
            Err(e) => Self::builder_for(Target::Failed(e)),
        }
    }

    /// Starts configuring a client over a transport of your own.
    pub fn over(transport: impl ClientTransport) -> ClientBuilder {
        Self::builder_for(Target::Custom(Arc::new(transport)))
    }

    fn builder_for(target: Target) -> ClientBuilder {
        ClientBuilder {
            target,
            timeout: DEFAULT_TIMEOUT,
            opts: ClientOptions::default(),
            headers: Headers::new(),
            layers: Vec::new(),
            overrides: Overrides::new(),
        }
    }

    /// The URL this client calls (without its password).
    pub fn url(&self) -> &str {
        &self.label
    }

    /// The deadline of this client's calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same client with another deadline for its calls.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            timeout,
            ..self.clone()
        }
    }

    /// The same client, sending these headers with every call (NestJS 12's `metadata`,
    /// e.g. `traceparent`).
    pub fn with_headers(&self, headers: Headers) -> Client {
        Client {
            headers,
            ..self.clone()
        }
    }

    /// Calls a request/response pattern; await the [`Call`] for its reply (the last value,
    /// for multi-value replies), or use [`Call::stream`] for every value.
    pub fn send<M>(&self, pattern: M, payload: impl AsPayload<M::Request>) -> Call<M::Reply>
    where
        M: Message<Request: Serialize + Send + 'static, Reply: DeserializeOwned>,
    {
        let options = pattern.options();
        let options = match self.overrides.is_empty() {
            true => options,
            false => self.overridden(pattern.route(), options),
        };
        self.call(pattern, payload).declared(self, options)
    }

    /// What `route` declares, changed by this client's overrides.
    fn overridden(&self, route: &str, declared: PatternOptions) -> PatternOptions {
        static REFUSED: crate::text::Throttle = crate::text::Throttle::new(1);
        if self.overrides.retries_refused(route, declared)
            && let Some(held_back) = REFUSED.allow()
        {
            tracing::warn!(
                route = %crate::text::for_log(route),
                held_back,
                "policy overrides give retries to a pattern not declared `idempotent`; not retrying it"
            );
        }
        self.overrides.apply(route, declared)
    }

    fn call<M>(&self, pattern: M, payload: impl AsPayload<M::Request>) -> Call<M::Reply>
    where
        M: Message<Request: Serialize + Send + 'static, Reply: DeserializeOwned>,
    {
        let (json, route) = (pattern.pattern_json().into(), pattern.route().into());
        if self.local.is_some() || self.packs {
            match payload.into_owned() {
                // In-process, a payload given by value is handed over as it is; a msgpack
                // transport encodes it straight from the value.
                Ok(value) => {
                    return Call::new(
                        self,
                        Ok(self.prepared(Kind::Request, json, route, Body::Local(Local::new(value)))),
                    );
                }
                Err(payload) => {
                    return Call::new(self, self.outbound(Kind::Request, json, route, payload.as_payload()));
                }
            }
        }
        // The payload is encoded now, so the call borrows nothing of the caller's.
        let mut out = self.outbound(Kind::Request, json, route, payload.as_payload());
        if self.discovered {
            contracted(&mut out, pattern.contract());
        }
        Call::new(self, out)
    }

    /// Emits an event; the [`Emit`] resolves once the transport has accepted it.
    pub fn emit<E>(&self, pattern: E, payload: impl AsPayload<E::Payload>) -> Emit
    where
        E: Event<Payload: Serialize>,
    {
        // NestJS's `emit` sends the route, not the pattern object.
        let route = pattern.route();
        let json = match pattern.pattern_json() {
            json if json.starts_with('"') => json.into(),
            _ => json_string(route).into(),
        };
        let mut out = self.outbound(Kind::Event, json, route.into(), payload.as_payload());
        if self.discovered {
            contracted(&mut out, pattern.contract());
        }
        Emit::new(self, out)
    }

    /// Calls a pattern given as JSON, NestJS style:
    /// `let v: Value = client.send_raw(json!({"cmd": "add"}), json!({"a": 1, "b": 2})).await?`.
    pub fn send_raw<R: DeserializeOwned>(&self, pattern: impl Serialize, data: impl Serialize) -> Call<R> {
        let out = raw_pattern(&pattern)
            .and_then(|(json, route)| self.outbound(Kind::Request, json.into(), route.into(), &data));
        Call::new(self, out)
    }

    /// Emits an event to a pattern given as JSON.
    pub fn emit_raw(&self, pattern: impl Serialize, data: impl Serialize) -> Emit {
        let out = raw_pattern(&pattern)
            .and_then(|(_, route)| self.outbound(Kind::Event, json_string(&route).into(), route.into(), &data));
        Emit::new(self, out)
    }

    /// Resolves once every event emitted before has left this process (written to the socket,
    /// or taken by the broker); fails if one may have been lost on a broken connection.
    /// What an outbox waits for before it marks events as published.
    pub async fn flush(&self) -> Result<()> {
        self.transport.flush().await
    }

    /// Closes the client's connections; calls in flight fail. Returns once what was already
    /// sent (events emitted just before included) is written, within a few seconds.
    pub async fn close(&self) {
        self.transport.close().await
    }

    /// The retry a typed call declaring `retries` gets (with this client's budget).
    pub(crate) fn retry(&self) -> crate::resilience::Retry {
        (*self.retry).clone()
    }

    pub(crate) fn service(&self) -> &ClientService {
        &self.service
    }

    pub(crate) fn in_process(&self) -> Option<&Arc<MemClient>> {
        // A call that is traced goes through the transport, where its span is made.
        #[cfg(feature = "telemetry")]
        if crate::telemetry::span::recording() {
            return None;
        }
        self.local.as_ref()
    }

    fn outbound<T: Serialize + ?Sized>(
        &self,
        kind: Kind,
        pattern: std::borrow::Cow<'static, str>,
        route: std::borrow::Cow<'static, str>,
        payload: &T,
    ) -> Result<Prepared> {
        let payload = crate::service::to_json(payload).map_err(|source| Error::Codec {
            context: format!("cannot encode the payload for pattern {route}"),
            source,
        })?;
        Ok(self.prepared(kind, pattern, route, Body::Json(payload)))
    }

    fn prepared(
        &self,
        kind: Kind,
        pattern: std::borrow::Cow<'static, str>,
        route: std::borrow::Cow<'static, str>,
        body: Body,
    ) -> Prepared {
        Prepared {
            kind,
            pattern,
            route,
            body,
            headers: self.headers.clone(),
            extensions: Extensions::new(),
        }
    }
}

/// A prepared call's payload.
enum Body {
    Json(Bytes),
    Local(Local),
}

/// A call, encoded, before it is sent: it becomes an [`Outbound`] with its deadline when
/// awaited.
pub(crate) struct Prepared {
    kind: Kind,
    pattern: std::borrow::Cow<'static, str>,
    pub(crate) route: std::borrow::Cow<'static, str>,
    body: Body,
    pub(crate) headers: Headers,
    pub(crate) extensions: Extensions,
}

impl Prepared {
    /// The call, due at `deadline`.
    pub(crate) fn outbound(self, deadline: tokio::time::Instant) -> Outbound {
        let (payload, local) = match self.body {
            Body::Json(json) => (json, None),
            Body::Local(value) => (Bytes::new(), Some(value)),
        };
        let mut out = Outbound::new(self.kind, self.pattern, self.route, payload, deadline);
        out.headers = self.headers;
        out.extensions = self.extensions;
        out.local = local;
        out
    }

    /// Adds a header.
    pub(crate) fn header<N: AsRef<str> + Into<String>>(&mut self, name: N, value: impl Into<String>) {
        self.headers.insert(name, value);
    }
}

/// Adds the pattern's contract to a call for a discovered service's balancer.
fn contracted(out: &mut Result<Prepared>, contract: Option<Contract>) {
    if let (Ok(out), Some(contract)) = (out, contract) {
        out.extensions.insert(contract);
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// The JSON and route of a pattern given as any serialisable value.
fn raw_pattern(pattern: &impl Serialize) -> Result<(String, String)> {
    let value = serde_json::to_value(pattern).map_err(|source| Error::Codec {
        context: "cannot encode the pattern".into(),
        source,
    })?;
    let route = match &value {
        serde_json::Value::String(s) => switchboard_pattern::route_of_str(s.clone()),
        other => switchboard_pattern::Pattern::from_json_value(other).route(),
    };
    Ok((value.to_string(), route))
}
