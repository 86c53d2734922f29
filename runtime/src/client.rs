//! [`Client`]: calls patterns on a remote (or in-process) service.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::call::{Call, Emit};
use crate::descriptor::{AsPayload, Event, Message};
use crate::error::{Error, Result};
use crate::transport::{self, ClientOptions, ClientTransport, Outbound};

/// Default deadline of a call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one service, chosen by URL. Cheap to clone; clones share connections.
///
/// ```ignore
/// let users = Client::connect("tcp://127.0.0.1:3001").await?;
/// let user = users.send(get_user, "42".to_string()).await?;      // typed
/// users.emit(user_created, &user).await?;
/// let v: serde_json::Value = users.send_raw(json!({"cmd": "add"}), json!({"a": 5, "b": 3})).await?;
/// ```
#[derive(Clone)]
pub struct Client {
    url: Arc<str>,
    pub(crate) transport: Arc<dyn ClientTransport>,
    pub(crate) timeout: Duration,
    metadata: Option<Arc<HashMap<String, String>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Configures a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    timeout: Duration,
    opts: ClientOptions,
}

impl ClientBuilder {
    /// The deadline of every call (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connections kept to the server (default 2); each multiplexes many calls.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.opts.pool_size = n.max(1);
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

    /// A client that connects on its first call.
    pub fn build(self) -> Result<Client> {
        let transport = transport::client(&self.url, &self.opts)?;
        Ok(Client {
            url: self.url.into(),
            transport,
            timeout: self.timeout,
            metadata: None,
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
        ClientBuilder {
            url: url.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            opts: ClientOptions {
                pool_size: 2,
                connect_timeout: Duration::from_secs(5),
                #[cfg(feature = "tcp")]
                max_frame_len: transport::tcp::DEFAULT_MAX_FRAME_LEN,
                #[cfg(not(feature = "tcp"))]
                max_frame_len: 64 * 1024 * 1024,
            },
        }
    }

    /// The URL this client calls.
    pub fn url(&self) -> &str {
        &self.url
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
    pub fn with_metadata(&self, metadata: HashMap<String, String>) -> Client {
        Client {
            metadata: Some(Arc::new(metadata)),
            ..self.clone()
        }
    }

    /// Calls a request/response pattern; await the [`Call`] for its reply (the last value,
    /// for multi-value replies), or use [`Call::stream`] for every value.
    ///
    /// ```ignore
    /// let user = client.send(get_user, "42".to_string()).await?;
    /// let user = client.send(get_user, &id).timeout(Duration::from_secs(1)).await?;
    /// ```
    pub fn send<M>(&self, pattern: M, payload: impl AsPayload<M::Request>) -> Call<'_, M::Reply>
    where
        M: Message<Request: Serialize, Reply: DeserializeOwned>,
    {
        // The payload is encoded now, so the call borrows nothing of the caller's.
        let out = self.outbound(
            Cow::Borrowed(pattern.pattern_json()),
            Cow::Borrowed(pattern.route()),
            payload.as_payload(),
        );
        Call::new(self, out)
    }

    /// Emits an event; the [`Emit`] resolves once the transport has accepted it.
    pub fn emit<E>(&self, pattern: E, payload: impl AsPayload<E::Payload>) -> Emit<'_>
    where
        E: Event<Payload: Serialize>,
    {
        // NestJS's `emit` sends the route, not the pattern object.
        let route = pattern.route();
        let json = match pattern.pattern_json() {
            json if json.starts_with('"') => Cow::Borrowed(json),
            _ => Cow::Owned(json_string(route)),
        };
        Emit::new(self, self.outbound(json, Cow::Borrowed(route), payload.as_payload()))
    }

    /// Calls a pattern given as JSON, NestJS style:
    /// `let v: Value = client.send_raw(json!({"cmd": "add"}), json!({"a": 1, "b": 2})).await?`.
    pub fn send_raw<R: DeserializeOwned>(&self, pattern: impl Serialize, data: impl Serialize) -> Call<'_, R> {
        let out =
            raw_pattern(&pattern).and_then(|(json, route)| self.outbound(Cow::Owned(json), Cow::Owned(route), &data));
        Call::new(self, out)
    }

    /// Emits an event to a pattern given as JSON.
    pub fn emit_raw(&self, pattern: impl Serialize, data: impl Serialize) -> Emit<'_> {
        let out = raw_pattern(&pattern)
            .and_then(|(_, route)| self.outbound(Cow::Owned(json_string(&route)), Cow::Owned(route), &data));
        Emit::new(self, out)
    }

    /// Closes the client's connections; calls in flight fail.
    pub async fn close(&self) {
        self.transport.close().await
    }

    pub(crate) fn outbound<T: Serialize + ?Sized>(
        &self,
        pattern: Cow<'static, str>,
        route: Cow<'static, str>,
        payload: &T,
    ) -> Result<Outbound> {
        let data = crate::json::to_vec(payload).map_err(|source| Error::Codec {
            context: format!("cannot encode the payload for pattern {route}"),
            source,
        })?;
        Ok(Outbound {
            pattern,
            route,
            data: Bytes::from(data),
            metadata: self.metadata.clone(),
            timeout: None,
        })
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
