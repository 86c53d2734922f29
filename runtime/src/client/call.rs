//! [`Call`] and [`Emit`]: one request or event on its way, configurable before it is awaited.
//!
//! Like NestJS's `send`, a call is cold: nothing is sent until it is awaited. A call owns
//! what it needs (the client's service stack, its encoded payload), so it is `'static` and
//! can be spawned or stored.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tokio::time::{Instant, Sleep};

use super::{Client, ClientService};
use crate::error::{Error, Result};
use crate::service::{Outbound, Replies, ReplyItem, deadline_after};

/// A request, sent when awaited; resolves to the reply (the last value of a multi-value
/// reply). Made by [`Client::send`] and [`Client::send_raw`].
#[must_use = "a call does nothing until it is awaited"]
pub struct Call<R> {
    service: ClientService,
    out: Result<Outbound>,
    timeout: Duration,
    _reply: PhantomData<fn() -> R>,
}

impl<R> Call<R> {
    pub(crate) fn new(client: &Client, out: Result<Outbound>) -> Self {
        Call {
            service: client.service().clone(),
            out,
            timeout: client.timeout(),
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
            out.headers.insert(name, value);
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
        let after = self.timeout;
        let deadline = deadline_after(after);
        out.deadline = deadline;
        let route: std::sync::Arc<str> = out.route.as_ref().into();
        let timed_out = {
            let route = route.clone();
            move || Error::Timeout {
                pattern: route.to_string(),
                after,
            }
        };
        let replies = match tokio::time::timeout_at(deadline, self.service.call(out)).await {
            Ok(r) => r?,
            Err(_) => return Err(timed_out()),
        };
        // Values until the reply ends, its first error, or the deadline.
        Ok(futures_util::stream::unfold(Some(replies), move |replies| {
            let (route, timed_out) = (route.clone(), timed_out.clone());
            async move {
                let mut replies = replies?;
                let item = match tokio::time::timeout_at(deadline, replies.next()).await {
                    Ok(None) => return None,
                    Ok(Some(Ok(ReplyItem::Value(v)))) => return Some((decode(&v, &route), Some(replies))),
                    Ok(Some(Ok(ReplyItem::Error(e)))) => Err(Error::Rpc(e)),
                    Ok(Some(Err(e))) => Err(e),
                    Err(_) => Err(timed_out()),
                };
                Some((item, None))
            }
        }))
    }
}

impl<R: DeserializeOwned> IntoFuture for Call<R> {
    type Output = Result<R>;
    type IntoFuture = CallFuture<R>;

    fn into_future(self) -> CallFuture<R> {
        let deadline = deadline_after(self.timeout);
        let (state, route) = match self.out {
            Ok(mut out) => {
                out.deadline = deadline;
                let route = out.route.clone();
                (State::Sending(self.service.call(out)), route)
            }
            Err(e) => (State::Failed(Some(e)), "".into()),
        };
        CallFuture {
            sleep: tokio::time::sleep_until(deadline),
            state,
            route,
            after: self.timeout,
            _reply: PhantomData,
        }
    }
}

pin_project_lite::pin_project! {
    /// A [`Call`] being awaited.
    #[must_use = "futures do nothing unless polled"]
    pub struct CallFuture<R> {
        #[pin]
        sleep: Sleep,
        state: State,
        route: std::borrow::Cow<'static, str>,
        after: Duration,
        _reply: PhantomData<fn() -> R>,
    }
}

enum State {
    Failed(Option<Error>),
    Sending(BoxFuture<'static, Result<Replies>>),
    Receiving { replies: Replies, last: Option<Bytes> },
    Done,
}

impl<R: DeserializeOwned> Future for CallFuture<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<R>> {
        let this = self.project();
        loop {
            match this.state {
                State::Failed(e) => {
                    let e = e.take().unwrap_or(Error::Closed);
                    *this.state = State::Done;
                    return Poll::Ready(Err(e));
                }
                State::Sending(fut) => match fut.as_mut().poll(cx) {
                    Poll::Ready(Ok(replies)) => *this.state = State::Receiving { replies, last: None },
                    Poll::Ready(Err(e)) => {
                        *this.state = State::Done;
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => break,
                },
                State::Receiving { replies, last } => match replies.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(ReplyItem::Value(v)))) => *last = Some(v),
                    Poll::Ready(Some(Ok(ReplyItem::Error(e)))) => {
                        *this.state = State::Done;
                        return Poll::Ready(Err(Error::Rpc(e)));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        *this.state = State::Done;
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(None) => {
                        // A completion-only reply decodes as `null`: `()`, `Option<T>`, `Value`.
                        let result = decode(last.as_deref().unwrap_or(b"null"), this.route);
                        *this.state = State::Done;
                        return Poll::Ready(result);
                    }
                    Poll::Pending => break,
                },
                State::Done => panic!("CallFuture polled after it completed"),
            }
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => {
                *this.state = State::Done;
                Poll::Ready(Err(Error::Timeout {
                    pattern: this.route.to_string(),
                    after: *this.after,
                }))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An event, sent when awaited; resolves once the transport has accepted it. Made by
/// [`Client::emit`] and [`Client::emit_raw`].
#[must_use = "an event is not sent until it is awaited"]
pub struct Emit {
    service: ClientService,
    out: Result<Outbound>,
    timeout: Duration,
}

impl Emit {
    pub(crate) fn new(client: &Client, out: Result<Outbound>) -> Self {
        Emit {
            service: client.service().clone(),
            out,
            timeout: client.timeout(),
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
            out.headers.insert(name, value);
        }
        self
    }
}

impl IntoFuture for Emit {
    type Output = Result<()>;
    type IntoFuture = BoxFuture<'static, Result<()>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let mut out = self.out?;
            let deadline: Instant = deadline_after(self.timeout);
            out.deadline = deadline;
            let route = out.route.clone();
            match tokio::time::timeout_at(deadline, self.service.call(out)).await {
                Ok(r) => r.map(drop),
                Err(_) => Err(Error::Timeout {
                    pattern: route.into_owned(),
                    after: self.timeout,
                }),
            }
        })
    }
}

fn decode<R: DeserializeOwned>(json: &[u8], route: &str) -> Result<R> {
    serde_json::from_slice(json).map_err(|source| Error::Codec {
        context: format!("cannot decode the reply of {route} as {}", std::any::type_name::<R>()),
        source,
    })
}
