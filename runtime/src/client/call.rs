//! [`Call`] and [`Emit`]: one request or event on its way, configurable before it is awaited.
//!
//! Like NestJS's `send`, a call is cold: nothing is sent until it is awaited. A call owns
//! what it needs (the client's service stack, its encoded payload), so it is `'static` and
//! can be spawned or stored.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, Sleep};

use tower::Layer;

use super::{Client, ClientService, Prepared};
use crate::error::{Error, Result};
use crate::resilience::policy::Held;
use crate::service::{Local, PatternOptions, Replies, ReplyItem, RouterFuture, deadline_after};
use crate::transport::mem::MemClient;

/// A request, sent when awaited; resolves to the reply (the last value of a multi-value
/// reply). Made by [`Client::send`] and [`Client::send_raw`].
#[must_use = "a call does nothing until it is awaited"]
pub struct Call<R> {
    service: ClientService,
    local: Option<Arc<MemClient>>,
    out: Result<Prepared>,
    timeout: Duration,
    _reply: PhantomData<fn() -> R>,
}

impl<R> Call<R> {
    pub(crate) fn new(client: &Client, out: Result<Prepared>) -> Self {
        Call {
            service: client.service().clone(),
            local: client.in_process().cloned(),
            out,
            timeout: client.timeout(),
            _reply: PhantomData,
        }
    }

    /// A typed call, under what its pattern declares: its deadline, idempotency and retries.
    pub(crate) fn declared(mut self, client: &Client, options: PatternOptions) -> Self {
        if options.is_empty() {
            return self;
        }
        if let Some(d) = options.get_timeout() {
            self.timeout = d;
        }
        if options.is_idempotent() {
            self = self.idempotent();
        }
        if options.get_retries() > 0 {
            let retry = client.retry().max_attempts(options.get_retries().saturating_add(1));
            self.service = ClientService::new(retry.layer(self.service));
            self.local = None;
        }
        self
    }

    /// This call's deadline, instead of the client's.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds a header (NestJS 12's `metadata`) to this call.
    pub fn header<N: AsRef<str> + Into<String>>(mut self, name: N, value: impl Into<String>) -> Self {
        if let Ok(out) = &mut self.out {
            out.header(name, value);
        }
        self
    }

    /// Marks the call as safe to repeat: a [`Retry`](crate::resilience::Retry) layer may
    /// try it again after a retryable failure.
    pub fn idempotent(mut self) -> Self {
        if let Ok(out) = &mut self.out {
            out.extensions.insert(crate::service::Idempotent);
        }
        self
    }

    /// Answers `value` instead of failing when the service could not answer: an open
    /// circuit, a refused or timed-out call, a transport error, an `UNAVAILABLE` reply
    /// ([`Error::is_unavailable`]). A remote handler's own error still comes back as an error.
    ///
    /// ```
    /// use switchboard::prelude::*;
    ///
    /// #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// struct Status { status: String }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> switchboard::Result<()> {
    /// const HEALTH: MessageDef<(), Status> = MessageDef::new(pattern!("health"));
    /// // Nothing listens on this port: the call fails to connect, and the fallback answers.
    /// let client = Client::builder("tcp://127.0.0.1:9").build()?;
    /// let status = client.send(HEALTH, ()).fallback(Status { status: "degraded".into() }).await?;
    /// assert_eq!(status.status, "degraded");
    /// # Ok(())
    /// # }
    /// ```
    pub fn fallback(self, value: R) -> Fallback<R>
    where
        R: Send + 'static,
    {
        self.fallback_with(move |_| value)
    }

    /// Like [`fallback`](Self::fallback), with the answer made from the error.
    pub fn fallback_with(self, f: impl FnOnce(&Error) -> R + Send + 'static) -> Fallback<R> {
        Fallback {
            call: self,
            fallback: Box::new(f),
        }
    }

    /// Sends the call and yields each value of the reply as it arrives; the deadline covers
    /// the whole stream. The stream is boxed (`Unpin`): `.next().await` works on it as it is.
    /// On TCP and the brokers values arrive on a connection other calls share, which cannot
    /// wait for one caller: a caller that leaves more than 64 MiB of values unread gets
    /// [`Error::TooLarge`] instead of the rest (gRPC's flow control makes the server wait).
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// use switchboard::Client;
    ///
    /// # async fn run(client: Client) -> switchboard::Result<()> {
    /// let mut values = client.send_raw::<u32>("count_to", 3).stream().await?;
    /// while let Some(value) = values.next().await {
    ///     println!("{}", value?);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stream(self) -> Result<futures_util::stream::BoxStream<'static, Result<R>>>
    where
        R: DeserializeOwned + Send + 'static,
    {
        let out = self.out?;
        let Some((deadline, after)) = crate::service::deadline::of_call(self.timeout) else {
            return Err(Error::Rejected {
                pattern: out.route.to_string(),
                reason: crate::error::Rejection::DeadlineExceeded,
            });
        };
        let out = out.outbound(deadline);
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
                    Ok(Some(Ok(ReplyItem::Local(v)))) => return Some((take(v, &route), Some(replies))),
                    Ok(Some(Ok(ReplyItem::MsgPack(v)))) => return Some((unpack(&v, &route), Some(replies))),
                    Ok(Some(Ok(ReplyItem::Error(e)))) => decode_error(e, &route, after),
                    Ok(Some(Err(e))) => Err(e),
                    Err(_) => Err(timed_out()),
                };
                Some((item, None))
            }
        })
        .boxed())
    }

    /// The reply's one value: an error when the reply ends without one (completion only)
    /// or carries more than one, where awaiting the call would take the last or `null`.
    pub async fn one(self) -> Result<R>
    where
        R: DeserializeOwned + Send + 'static,
    {
        let route = match &self.out {
            Ok(out) => out.route.to_string(),
            Err(_) => String::new(),
        };
        let mut values = self.stream().await?;
        let first = values.next().await.transpose()?;
        let more = first.is_some() && values.next().await.transpose()?.is_some();
        match (first, more) {
            (Some(value), false) => Ok(value),
            (found, _) => Err(Error::InvalidData {
                peer: route,
                reason: match found {
                    None => "expected one value, the reply had none".into(),
                    Some(_) => "expected one value, the reply had more".into(),
                },
            }),
        }
    }
}

impl<R: DeserializeOwned + 'static> IntoFuture for Call<R> {
    type Output = Result<R>;
    type IntoFuture = CallFuture<R>;

    fn into_future(self) -> CallFuture<R> {
        let deadline = crate::service::deadline::of_call(self.timeout);
        let (state, route) = match self.out {
            Ok(out) if deadline.is_none() => {
                let late = Error::Rejected {
                    pattern: out.route.to_string(),
                    reason: crate::error::Rejection::DeadlineExceeded,
                };
                (State::Failed(Some(late)), out.route)
            }
            Ok(out) => {
                let (deadline, _) = deadline.expect("checked above");
                let route = out.route.clone();
                let state = match self.local {
                    // In-process, untraced: a function call into the service's router.
                    Some(mem) => match mem.call(out.outbound(deadline)) {
                        Ok(reply) => State::Answering { reply, mem },
                        Err(e) => State::Failed(Some(e)),
                    },
                    // Sent on the first poll, inside whatever span the future is polled in.
                    None => State::Start(Some(Box::new((self.service, out.outbound(deadline))))),
                };
                (state, route)
            }
            Err(e) => (State::Failed(Some(e)), "".into()),
        };
        CallFuture {
            sleep: None,
            deadline: deadline.map_or_else(Instant::now, |(d, _)| d),
            state,
            route,
            after: deadline.map_or(self.timeout, |(_, after)| after),
            _reply: PhantomData,
        }
    }
}

pin_project_lite::pin_project! {
    /// A [`Call`] being awaited.
    #[must_use = "futures do nothing unless polled"]
    pub struct CallFuture<R> {
        // Armed only when the reply is not there at once (an in-process call never needs it).
        #[pin]
        sleep: Option<Sleep>,
        deadline: Instant,
        state: State,
        route: std::borrow::Cow<'static, str>,
        after: Duration,
        _reply: PhantomData<fn() -> R>,
    }
}

enum State {
    /// Not sent yet (boxed: a network call's future stays small for the in-process ones).
    Start(Option<Box<(ClientService, crate::service::Outbound)>>),
    Failed(Option<Error>),
    /// In the stack; a single attempt through a policy with what it holds (counted here,
    /// its timeout kept by this future's timer).
    Sending(BoxFuture<'static, Result<Replies>>, Option<Held>),
    Answering {
        reply: RouterFuture,
        mem: Arc<MemClient>,
    },
    Receiving {
        replies: Replies,
        last: Option<Last>,
    },
    Done,
}

impl<R: DeserializeOwned + 'static> Future for CallFuture<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<R>> {
        let mut this = self.project();
        loop {
            match this.state {
                State::Start(start) => {
                    let (service, out) = *start.take().expect("started once");
                    let sent = service.send(out);
                    *this.state = State::Sending(sent.replies, sent.held);
                }
                State::Failed(e) => {
                    let e = e.take().unwrap_or(Error::Closed);
                    *this.state = State::Done;
                    return Poll::Ready(Err(e));
                }
                State::Sending(fut, held) => match fut.as_mut().poll(cx) {
                    Poll::Ready(outcome) => {
                        if let Some(held) = held.take() {
                            held.finish(&outcome);
                        }
                        match outcome {
                            Ok(replies) => *this.state = State::Receiving { replies, last: None },
                            Err(e) => {
                                *this.state = State::Done;
                                return Poll::Ready(Err(e));
                            }
                        }
                    }
                    Poll::Pending => break,
                },
                State::Answering { reply, mem } => match Pin::new(reply).poll(cx) {
                    Poll::Ready(reply) => match mem.replies(this.route, reply) {
                        Ok(replies) => *this.state = State::Receiving { replies, last: None },
                        Err(e) => {
                            *this.state = State::Done;
                            return Poll::Ready(Err(e));
                        }
                    },
                    Poll::Pending => break,
                },
                State::Receiving { replies, last } => match replies.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(ReplyItem::Value(v)))) => *last = Some(Last::Json(v)),
                    Poll::Ready(Some(Ok(ReplyItem::Local(v)))) => *last = Some(Last::Local(v)),
                    Poll::Ready(Some(Ok(ReplyItem::MsgPack(v)))) => *last = Some(Last::MsgPack(v)),
                    Poll::Ready(Some(Ok(ReplyItem::Error(e)))) => {
                        *this.state = State::Done;
                        return Poll::Ready(decode_error(e, this.route, *this.after));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        *this.state = State::Done;
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(None) => {
                        // A completion-only reply decodes as `null`: `()`, `Option<T>`, `Value`.
                        let result = match last.take() {
                            Some(Last::Json(v)) => decode(&v, this.route),
                            Some(Last::Local(v)) => take(v, this.route),
                            Some(Last::MsgPack(v)) => unpack(&v, this.route),
                            None => decode(b"null", this.route),
                        };
                        *this.state = State::Done;
                        return Poll::Ready(result);
                    }
                    Poll::Pending => break,
                },
                State::Done => panic!("CallFuture polled after it completed"),
            }
        }
        // One timer: at the attempt's timeout while that runs, then at the call's deadline.
        let attempt = match this.state {
            State::Sending(_, Some(held)) => held.due(),
            _ => None,
        };
        let due = attempt.unwrap_or(*this.deadline);
        match this.sleep.as_mut().as_pin_mut() {
            None => this.sleep.set(Some(tokio::time::sleep_until(due))),
            Some(sleep) if sleep.deadline() != due => sleep.reset(due),
            Some(_) => {}
        }
        let sleep = this.sleep.as_pin_mut().expect("armed above");
        match sleep.poll(cx) {
            Poll::Ready(()) => {
                let state = std::mem::replace(this.state, State::Done);
                Poll::Ready(match state {
                    State::Sending(_, Some(held)) if attempt.is_some() => Err(held.timed_out()),
                    _ => Err(Error::Timeout {
                        pattern: this.route.to_string(),
                        after: *this.after,
                    }),
                })
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A [`Call`] with an answer for when the service cannot give one ([`Call::fallback`]).
#[must_use = "a call does nothing until it is awaited"]
pub struct Fallback<R> {
    call: Call<R>,
    fallback: Box<dyn FnOnce(&Error) -> R + Send>,
}

impl<R: DeserializeOwned + Send + 'static> IntoFuture for Fallback<R> {
    type Output = Result<R>;
    type IntoFuture = BoxFuture<'static, Result<R>>;

    fn into_future(self) -> Self::IntoFuture {
        let route = match &self.call.out {
            Ok(out) => out.route.clone(),
            Err(_) => "".into(),
        };
        Box::pin(async move {
            match self.call.await {
                Err(e) if e.is_unavailable() => {
                    tracing::debug!(error = %e, "call failed; answering with its fallback");
                    crate::signal::fell_back(&route);
                    Ok((self.fallback)(&e))
                }
                outcome => outcome,
            }
        })
    }
}

/// An event, sent when awaited; resolves once the transport has accepted it. Made by
/// [`Client::emit`] and [`Client::emit_raw`].
#[must_use = "an event is not sent until it is awaited"]
pub struct Emit {
    service: ClientService,
    out: Result<Prepared>,
    timeout: Duration,
}

impl Emit {
    pub(crate) fn new(client: &Client, out: Result<Prepared>) -> Self {
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
    pub fn header<N: AsRef<str> + Into<String>>(mut self, name: N, value: impl Into<String>) -> Self {
        if let Ok(out) = &mut self.out {
            out.header(name, value);
        }
        self
    }
}

impl IntoFuture for Emit {
    type Output = Result<()>;
    type IntoFuture = BoxFuture<'static, Result<()>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let deadline: Instant = deadline_after(self.timeout);
            let out = self.out?.outbound(deadline);
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

/// The last value of a reply so far.
enum Last {
    Json(Bytes),
    Local(Local),
    MsgPack(Bytes),
}

/// A value handed back in-process: taken as it is when it is an `R`, decoded from its JSON
/// otherwise.
fn take<R: DeserializeOwned + 'static>(value: Local, route: &str) -> Result<R> {
    match value.take::<R>() {
        Ok(v) => Ok(v),
        Err(other) => {
            let json = other.to_json().map_err(|source| Error::Codec {
                context: format!("cannot encode the reply of {route}"),
                source,
            })?;
            decode(&json, route)
        }
    }
}

/// An error reply: the caller's `Err` when it asked for a `Result` that takes it, the call's
/// error otherwise.
/// A remote error as the call's outcome: a `DEADLINE_EXCEEDED` answer (the server dropped
/// the handler at this call's deadline, or a handler timed out) is this call timing out.
fn decode_error<R: DeserializeOwned>(e: crate::error::RpcError, route: &str, after: Duration) -> Result<R> {
    if e.is_deadline_exceeded() {
        return Err(Error::Timeout {
            pattern: route.to_owned(),
            after,
        });
    }
    match super::decode::error::<R>(&e) {
        Some(value) => Ok(value),
        None => Err(Error::Rpc(e)),
    }
}

/// A MessagePack reply value (`?codec=msgpack`) as `R`.
fn unpack<R: DeserializeOwned>(bytes: &[u8], route: &str) -> Result<R> {
    super::decode::packed(bytes).map_err(|source| Error::MsgPack {
        context: format!("cannot decode the reply of {route} as {}", std::any::type_name::<R>()),
        source,
    })
}

fn decode<R: DeserializeOwned>(json: &[u8], route: &str) -> Result<R> {
    super::decode::value(json).map_err(|source| Error::Codec {
        context: format!("cannot decode the reply of {route} as {}", std::any::type_name::<R>()),
        source,
    })
}
