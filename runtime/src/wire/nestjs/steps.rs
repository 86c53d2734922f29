//! A reply as the packets a server sends for it: each value, with completion merged into the
//! last one when it follows at once, or an error. Shared by every server transport.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt};

use super::packet::Outgoing;
use crate::error::RpcError;
use crate::service::{Reply, ReplyItem};

/// One step of a reply, ready to encode.
pub enum Step {
    /// A value (JSON text; MessagePack from [`Steps::packed`]); `last` merges completion into it.
    Value { json: Bytes, last: bool },
    /// Completion without a value.
    Done,
    /// An error (terminal).
    Error(RpcError),
    /// Nobody handles the pattern: NestJS's own reply for that (terminal).
    NoHandler,
}

impl Step {
    /// The packet to send for this step.
    pub(crate) fn outgoing(&self) -> Outgoing<'_> {
        match self {
            Step::Value { json, last } => Outgoing::Value { json, last: *last },
            Step::Done => Outgoing::Done,
            Step::Error(err) => Outgoing::Error(err),
            Step::NoHandler => Outgoing::NoHandler,
        }
    }
}

/// A request's reply as a stream of steps, with completion merged into the last value when
/// it follows at once, as NestJS does (`{"response":3,"isDisposed":true,…}`).
pub struct Steps {
    /// Values as MessagePack instead of JSON.
    packed: bool,
    no_handler: bool,
    reply: Reply,
    held: Option<Bytes>,
    error: Option<RpcError>,
    done: bool,
}

impl Steps {
    /// The steps of `reply`.
    pub(crate) fn new(reply: Reply) -> Self {
        Self::with(reply, false)
    }

    /// The steps of `reply`, its values as MessagePack (`?codec=msgpack`).
    pub(crate) fn packed(reply: Reply) -> Self {
        Self::with(reply, true)
    }

    fn with(reply: Reply, packed: bool) -> Self {
        Steps {
            packed,
            no_handler: reply.is_no_handler(),
            reply,
            held: None,
            error: None,
            done: false,
        }
    }

    /// The next step; polls the reply at most until it has one.
    pub(crate) fn poll_step(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Step>> {
        let this = self;
        if std::mem::take(&mut this.no_handler) {
            this.done = true;
            return Poll::Ready(Some(Step::NoHandler));
        }
        if let Some(err) = this.error.take() {
            this.done = true;
            return Poll::Ready(Some(Step::Error(err)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let packed = this.packed;
            let polled = this
                .reply
                .poll_next_unpin(cx)
                .map(|item| item.map(|item| if packed { item.packed() } else { item.encoded() }));
            match polled {
                Poll::Ready(Some(ReplyItem::Value(v) | ReplyItem::MsgPack(v)))
                    if this.held.is_none() && this.reply.is_done() =>
                {
                    this.done = true;
                    return Poll::Ready(Some(Step::Value { json: v, last: true }));
                }
                Poll::Ready(Some(ReplyItem::Value(v) | ReplyItem::MsgPack(v))) => {
                    if let Some(prev) = this.held.replace(v) {
                        return Poll::Ready(Some(Step::Value {
                            json: prev,
                            last: false,
                        }));
                    }
                }
                Poll::Ready(Some(ReplyItem::Local(_))) => unreachable!("encoded above"),
                Poll::Ready(Some(ReplyItem::Error(err))) => match this.held.take() {
                    Some(prev) => {
                        this.error = Some(err);
                        return Poll::Ready(Some(Step::Value {
                            json: prev,
                            last: false,
                        }));
                    }
                    None => {
                        this.done = true;
                        return Poll::Ready(Some(Step::Error(err)));
                    }
                },
                Poll::Ready(None) => {
                    this.done = true;
                    let step = match this.held.take() {
                        Some(json) => Step::Value { json, last: true },
                        None => Step::Done,
                    };
                    return Poll::Ready(Some(step));
                }
                Poll::Pending => {
                    return match this.held.take() {
                        Some(json) => Poll::Ready(Some(Step::Value { json, last: false })),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}

impl Stream for Steps {
    type Item = Step;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Step>> {
        self.get_mut().poll_step(cx)
    }
}
