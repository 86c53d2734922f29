//! [`Call`] and [`Emit`]: one request or event on its way, configurable before it is awaited.
//!
//! Like NestJS's `send`, a call is cold: nothing is sent until it is awaited.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::handler::ReplyItem;
use crate::transport::Outbound;

/// A request, sent when awaited; resolves to the reply (the last value of a multi-value
/// reply). Made by [`Client::send`] and [`Client::send_raw`].
#[must_use = "a call does nothing until it is awaited"]
pub struct Call<'c, R> {
    client: &'c Client,
    out: Result<Outbound>,
    timeout: Duration,
    _reply: PhantomData<fn() -> R>,
}

impl<'c, R> Call<'c, R> {
    pub(crate) fn new(client: &'c Client, out: Result<Outbound>) -> Self {
        Call {
            client,
            out,
            timeout: client.timeout,
            _reply: PhantomData,
        }
    }

    /// This call's deadline, instead of the client's.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds a header (NestJS 12's `metadata`) to this call.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Ok(out) = &mut self.out {
            add_header(out, name.into(), value.into());
        }
        self
    }

    /// Sends the call and yields each value of the reply as it arrives; the deadline covers
    /// the whole stream.
    pub async fn stream(self) -> Result<impl Stream<Item = Result<R>> + Send + 'static>
    where
        R: DeserializeOwned + Send + 'static,
    {
        let mut out = self.out?;
        out.timeout = Some(self.timeout);
        let route: Arc<str> = out.route.as_ref().into();
        let after = self.timeout;
        let deadline = deadline_after(after);
        let replies = match tokio::time::timeout_at(deadline, self.client.transport.request(out)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Timeout {
                    pattern: route.to_string(),
                    after,
                });
            }
        };
        // Values until the reply ends, its first error, or the deadline.
        Ok(futures_util::stream::unfold(Some(replies), move |replies| {
            let route = route.clone();
            async move {
                let mut replies = replies?;
                let item = match tokio::time::timeout_at(deadline, replies.next()).await {
                    Ok(None) => return None,
                    Ok(Some(Ok(ReplyItem::Value(v)))) => return Some((decode(&v, &route), Some(replies))),
                    Ok(Some(Ok(ReplyItem::Error(e)))) => Err(Error::Rpc(e)),
                    Ok(Some(Err(e))) => Err(e),
                    Err(_) => Err(Error::Timeout {
                        pattern: route.to_string(),
                        after,
                    }),
                };
                Some((item, None))
            }
        }))
    }
}

impl<'c, R: DeserializeOwned + 'c> IntoFuture for Call<'c, R> {
    type Output = Result<R>;
    type IntoFuture = BoxFuture<'c, Result<R>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let mut out = self.out?;
            out.timeout = Some(self.timeout);
            let route = out.route.clone();
            let last = async {
                let mut replies = self.client.transport.request(out).await?;
                let mut last = None;
                while let Some(item) = replies.next().await {
                    match item? {
                        ReplyItem::Value(v) => last = Some(v),
                        ReplyItem::Error(e) => return Err(Error::Rpc(e)),
                    }
                }
                Ok(last)
            };
            let last = match tokio::time::timeout(self.timeout, last).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::Timeout {
                        pattern: route.into_owned(),
                        after: self.timeout,
                    });
                }
            };
            // A completion-only reply decodes as `null`: `()`, `Option<T>`, `Value`.
            decode(last.as_deref().unwrap_or(b"null"), &route)
        })
    }
}

/// An event, sent when awaited; resolves once the transport has accepted it. Made by
/// [`Client::emit`] and [`Client::emit_raw`].
#[must_use = "an event is not sent until it is awaited"]
pub struct Emit<'c> {
    client: &'c Client,
    out: Result<Outbound>,
    timeout: Duration,
}

impl<'c> Emit<'c> {
    pub(crate) fn new(client: &'c Client, out: Result<Outbound>) -> Self {
        Emit {
            client,
            out,
            timeout: client.timeout,
        }
    }

    /// How long the transport may take to accept the event, instead of the client's deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds a header (NestJS 12's `metadata`) to this event.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Ok(out) = &mut self.out {
            add_header(out, name.into(), value.into());
        }
        self
    }
}

impl<'c> IntoFuture for Emit<'c> {
    type Output = Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<()>> + Send + 'c>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let mut out = self.out?;
            out.timeout = Some(self.timeout);
            let route = out.route.clone();
            match tokio::time::timeout(self.timeout, self.client.transport.emit(out)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout {
                    pattern: route.into_owned(),
                    after: self.timeout,
                }),
            }
        })
    }
}

fn add_header(out: &mut Outbound, name: String, value: String) {
    let mut map: HashMap<String, String> = out.metadata.as_deref().cloned().unwrap_or_default();
    map.insert(name, value);
    out.metadata = Some(Arc::new(map));
}

/// `now + after`, saturating far in the future for "no deadline" durations.
fn deadline_after(after: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn decode<R: DeserializeOwned>(json: &[u8], route: &str) -> Result<R> {
    serde_json::from_slice(json).map_err(|source| Error::Codec {
        context: format!("cannot decode the reply of {route} as {}", std::any::type_name::<R>()),
        source,
    })
}
