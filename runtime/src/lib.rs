//! Switchboard: message-driven microservices for Rust, wire-compatible with NestJS.
//!
//! Handlers are plain `async fn`s keyed by message patterns:
//!
//! ```
//! use switchboard::prelude::*;
//!
//! #[derive(Serialize, Deserialize)]
//! struct AddRequest { a: i64, b: i64 }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct AddReply { result: i64 }
//!
//! #[message_pattern(cmd = "add")]
//! async fn add(req: AddRequest) -> AddReply {
//!     AddReply { result: req.a + req.b }
//! }
//!
//! #[event_pattern("user_created")]
//! async fn send_welcome(name: String) {
//!     println!("welcome, {name}");
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> switchboard::Result<()> {
//! // A real service would `.listen("tcp://127.0.0.1:3001").run().await`.
//! let server = Microservice::from_registry().listen("mem://math").start().await?;
//! let client = Client::connect("mem://math").await?;
//! assert_eq!(client.send(add, AddRequest { a: 5, b: 3 }).await?, AddReply { result: 8 });
//! client.emit(send_welcome, "Ada".to_string()).await?;
//! server.shutdown().await
//! # }
//! ```
//!
//! and callers get compile-checked clients: `client.send(add, AddRequest { a: 1, b: 2 })`.
//! The same handlers serve over every transport, chosen by URL (`mem://name`,
//! `tcp://host:port`, `tls://host:port`); on TCP the bytes are NestJS's own, so NestJS
//! clients and servers talk to Switchboard ones.

#![warn(missing_docs)]

pub mod call;
pub mod client;
// Each transport uses its share of the codec; a build with only some of them leaves the rest idle.
#[cfg_attr(not(feature = "tcp"), allow(dead_code))]
mod codec;
pub mod context;
pub mod descriptor;
pub mod dispatch;
pub mod error;
pub mod handler;
mod json;
pub mod registry;
pub mod server;
pub mod transport;

pub use call::{Call, Emit};
pub use client::{Client, ClientBuilder};
pub use context::Context;
pub use descriptor::{AsPayload, Event, EventDef, Message, MessageDef, PatternLit};
pub use error::{Error, Result, RpcError, RpcResult};
pub use handler::{Reply, ReplyStream};
pub use registry::{Handler, HandlerEntry, HandlerKind, Registry};
pub use server::{Microservice, RunningServer};
pub use switchboard_macros::{event_pattern, message_pattern, pattern};

/// The names a service or caller usually needs.
pub mod prelude {
    pub use crate::{
        Client, Context, Event, EventDef, Message, MessageDef, Microservice, ReplyStream, RpcError, RpcResult,
        event_pattern, message_pattern, pattern,
    };
    pub use serde::{Deserialize, Serialize};
}

/// Items the attribute macros expand to. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::context::Context;
    pub use crate::descriptor::{Event, Message, PatternLit};
    pub use crate::error::RpcError;
    pub use crate::handler::{HandlerFn, Inbound, Reply, ReplyStream};
    pub use crate::registry::{Handler, HandlerEntry, HandlerKind, Registration};
    pub use futures_util::future::BoxFuture;
    pub use inventory;

    use futures_util::stream::{Stream, StreamExt};
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// The `Ok` type of a fallible handler's return type.
    pub trait Fallible {
        /// The success type.
        type Ok;
    }
    impl<T, E> Fallible for Result<T, E> {
        type Ok = T;
    }

    /// The item type of a multi-value handler's return type.
    pub trait Streamed {
        /// The value type.
        type Item;
    }
    impl<T> Streamed for ReplyStream<T> {
        type Item = T;
    }

    /// Spanned at the user's payload type.
    pub fn assert_payload<T: PayloadType>() {}
    /// Spanned at the user's return type.
    pub fn assert_reply<T: ReplyType>() {}
    /// Spanned at the user's error type.
    pub fn assert_rpc_error<E>()
    where
        RpcError: ErrorType<E>,
    {
    }

    // The three traits below are their bound and nothing more; they exist so that the
    // compiler's first line tells a handler's author what is wrong in their terms.

    /// `DeserializeOwned`, as a handler's payload.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a handler's payload: it does not implement `serde::Deserialize`",
        label = "the payload is decoded from the message into this type",
        note = "for a local type, add `#[derive(serde::Deserialize)]` to it"
    )]
    pub trait PayloadType: DeserializeOwned {}
    impl<T: DeserializeOwned> PayloadType for T {}

    /// `Serialize`, as a handler's reply.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a handler's reply: it does not implement `serde::Serialize`",
        label = "the reply is encoded from this type",
        note = "for a local type, add `#[derive(serde::Serialize)]` to it"
    )]
    pub trait ReplyType: Serialize {}
    impl<T: Serialize + ?Sized> ReplyType for T {}

    /// `E: Into<RpcError>`, as a handler's error. Implemented on `RpcError` so that the
    /// compiler, whose failing bound is `RpcError: From<E>`, shows this message.
    #[diagnostic::on_unimplemented(
        message = "`{E}` cannot be a handler's error type: it does not convert into `RpcError`",
        label = "errors are sent to the caller as `RpcError`",
        note = "implement `From<{E}> for switchboard::RpcError`, or map the error with `.map_err(...)` inside the handler"
    )]
    pub trait ErrorType<E> {}
    impl<E: Into<RpcError>> ErrorType<E> for RpcError {}

    /// An `impl Stream<Item = T>` reply as a stream of results.
    pub fn ok_stream<S, T>(values: S) -> impl Stream<Item = Result<T, RpcError>> + Send + 'static
    where
        S: Stream<Item = T> + Send + 'static,
        T: Send + 'static,
    {
        values.map(Ok)
    }

    // ---- Added for the attribute macros (switchboard-macros) ----

    /// The error type of a fallible handler's return type, written or implied by an alias
    /// (`RpcResult<T>`, `io::Result<T>`).
    pub trait FallibleError {
        /// The error type.
        type Err;
    }
    impl<T, E> FallibleError for Result<T, E> {
        type Err = E;
    }

    /// Spanned at the user's function: its future must be `Send` (and `'static`, which it
    /// is when the arguments own their data).
    pub fn assert_handler_future<F: std::future::Future + Send + 'static>(_: &F) {}

    /// Spanned at an `impl Stream<Item = T>` return type: the stream must be `Send` and own
    /// its data.
    pub fn assert_stream<F>(_: &F)
    where
        F: std::future::Future,
        F::Output: Stream + Send + 'static,
        <F::Output as Stream>::Item: Send + 'static,
    {
    }

    /// Autoref-specialised dispatch for the code the macros generate.
    ///
    /// Every property a handler needs (payload `Deserialize`, reply `Serialize`, future
    /// `Send`, …) is asserted once by an `assert_*` call spanned at the user's token. If the
    /// generated call sites required the same bounds, each mistake would be reported two or
    /// three times, the extra copies pointing at the attribute. So the call sites go through
    /// `Probe`: `(&Probe::<T>).method()` resolves to the real impl on `Probe<T>` when the
    /// bounds hold, and otherwise to a fallback on `&Probe<T>` that type-checks without them.
    /// A fallback is only ever chosen when an assertion fails, so it never runs; each
    /// fallback's bounds are covered by the assertions named on it.
    pub mod probe {
        use std::future::Future;
        use std::marker::PhantomData;

        use futures_util::future::BoxFuture;
        use futures_util::stream::Stream;
        use serde::Serialize;
        use serde::de::DeserializeOwned;

        use crate::error::RpcError;
        use crate::handler::{Inbound, Reply, ReplyItem, ReplyStream};

        const NEVER: &str = "switchboard: a handler check failed at compile time, yet the code was run";

        /// A type to dispatch on.
        pub struct Probe<T>(PhantomData<fn() -> T>);

        /// The probe of a value's type.
        pub fn of<T>(_: &T) -> Probe<T> {
            Probe(PhantomData)
        }

        /// The probe of a future's output type.
        pub fn output_of<F: Future>(_: &F) -> Probe<F::Output> {
            Probe(PhantomData)
        }

        /// The probe of a named type.
        pub fn ty<T>() -> Probe<T> {
            Probe(PhantomData)
        }

        /// Decodes the payload (asserted by `assert_payload`).
        pub trait Decode<T> {
            /// Decodes the payload into `T`.
            fn sb_decode(&self, inbound: &Inbound<'_>) -> Result<T, RpcError>;
        }
        impl<T: DeserializeOwned> Decode<T> for Probe<T> {
            fn sb_decode(&self, inbound: &Inbound<'_>) -> Result<T, RpcError> {
                inbound.decode()
            }
        }
        /// Fallback of [`Decode`].
        pub trait DecodeFallback<T> {
            /// Never runs.
            fn sb_decode(&self, inbound: &Inbound<'_>) -> Result<T, RpcError>;
        }
        impl<T> DecodeFallback<T> for &Probe<T> {
            fn sb_decode(&self, _: &Inbound<'_>) -> Result<T, RpcError> {
                unreachable!("{NEVER}")
            }
        }

        /// Boxes the handler's future (asserted by `assert_handler_future`).
        pub trait Boxed<F: Future> {
            /// The future, boxed.
            fn sb_boxed(&self, fut: F) -> BoxFuture<'static, F::Output>;
        }
        impl<F: Future + Send + 'static> Boxed<F> for Probe<F> {
            fn sb_boxed(&self, fut: F) -> BoxFuture<'static, F::Output> {
                Box::pin(fut)
            }
        }
        /// Fallback of [`Boxed`].
        pub trait BoxedFallback<F: Future> {
            /// Never runs.
            fn sb_boxed(&self, fut: F) -> BoxFuture<'static, F::Output>;
        }
        impl<F: Future> BoxedFallback<F> for &Probe<F> {
            fn sb_boxed(&self, _: F) -> BoxFuture<'static, F::Output> {
                unreachable!("{NEVER}")
            }
        }

        // The reply probes dispatch on the future's own type, so the handler's future is
        // boxed once, together with its encoding, and never on its own.

        /// A completion-only reply.
        pub trait UnitReply<F> {
            /// The reply.
            fn sb_unit(&self, fut: F) -> Reply;
        }
        impl<F> UnitReply<F> for Probe<F>
        where
            F: Future<Output = ()> + Send + 'static,
        {
            fn sb_unit(&self, fut: F) -> Reply {
                Reply::from_unit(fut)
            }
        }
        /// Fallback of [`UnitReply`].
        pub trait UnitReplyFallback<F> {
            /// Never runs.
            fn sb_unit(&self, fut: F) -> Reply;
        }
        impl<F> UnitReplyFallback<F> for &Probe<F> {
            fn sb_unit(&self, _: F) -> Reply {
                unreachable!("{NEVER}")
            }
        }

        /// A one-value reply (asserted by `assert_reply`).
        pub trait ValueReply<F> {
            /// The reply.
            fn sb_value(&self, fut: F) -> Reply;
        }
        impl<F> ValueReply<F> for Probe<F>
        where
            F: Future + Send + 'static,
            F::Output: Serialize,
        {
            fn sb_value(&self, fut: F) -> Reply {
                Reply::from_value(fut)
            }
        }
        /// Fallback of [`ValueReply`].
        pub trait ValueReplyFallback<F> {
            /// Never runs.
            fn sb_value(&self, fut: F) -> Reply;
        }
        impl<F> ValueReplyFallback<F> for &Probe<F> {
            fn sb_value(&self, _: F) -> Reply {
                unreachable!("{NEVER}")
            }
        }

        /// The output of a fallible handler.
        pub trait FallibleOutput {
            /// The reply item for this outcome.
            fn sb_item(self) -> ReplyItem;
        }
        impl<T: Serialize, E: Into<RpcError>> FallibleOutput for Result<T, E> {
            fn sb_item(self) -> ReplyItem {
                match self {
                    Ok(v) => crate::handler::encode(&v),
                    Err(e) => ReplyItem::Error(e.into()),
                }
            }
        }

        /// A fallible reply (asserted by `assert_reply` on the `Ok` type and
        /// `assert_rpc_error` on the error type).
        pub trait ResultReply<F> {
            /// The reply.
            fn sb_result(&self, fut: F) -> Reply;
        }
        impl<F> ResultReply<F> for Probe<F>
        where
            F: Future + Send + 'static,
            F::Output: FallibleOutput,
        {
            fn sb_result(&self, fut: F) -> Reply {
                Reply::one(async move { fut.await.sb_item() })
            }
        }
        /// Fallback of [`ResultReply`].
        pub trait ResultReplyFallback<F> {
            /// Never runs.
            fn sb_result(&self, fut: F) -> Reply;
        }
        impl<F> ResultReplyFallback<F> for &Probe<F> {
            fn sb_result(&self, _: F) -> Reply {
                unreachable!("{NEVER}")
            }
        }

        /// The output of a handler returning a `ReplyStream`.
        pub trait StreamOutput {
            /// Its items.
            fn sb_items(self) -> futures_util::stream::BoxStream<'static, ReplyItem>;
        }
        impl<T: Serialize + 'static> StreamOutput for ReplyStream<T> {
            fn sb_items(self) -> futures_util::stream::BoxStream<'static, ReplyItem> {
                use futures_util::stream::StreamExt;
                self.map(|item| match item {
                    Ok(v) => crate::handler::encode(&v),
                    Err(e) => ReplyItem::Error(e),
                })
                .boxed()
            }
        }

        /// A `ReplyStream<T>` reply (asserted by `assert_reply` on `T`).
        pub trait ReplyStreamReply<F> {
            /// The reply.
            fn sb_reply_stream(&self, fut: F) -> Reply;
        }
        impl<F> ReplyStreamReply<F> for Probe<F>
        where
            F: Future + Send + 'static,
            F::Output: StreamOutput,
        {
            fn sb_reply_stream(&self, fut: F) -> Reply {
                use futures_util::stream::StreamExt;
                Reply::from_items(futures_util::stream::once(async move { fut.await.sb_items() }).flatten())
            }
        }
        /// Fallback of [`ReplyStreamReply`].
        pub trait ReplyStreamReplyFallback<F> {
            /// Never runs.
            fn sb_reply_stream(&self, fut: F) -> Reply;
        }
        impl<F> ReplyStreamReplyFallback<F> for &Probe<F> {
            fn sb_reply_stream(&self, _: F) -> Reply {
                unreachable!("{NEVER}")
            }
        }

        /// An `impl Stream<Item = T>` reply (asserted by `assert_stream` and `assert_reply`).
        pub trait StreamReply<F> {
            /// The reply.
            fn sb_stream(&self, fut: F) -> Reply;
        }
        impl<F> StreamReply<F> for Probe<F>
        where
            F: Future + Send + 'static,
            F::Output: Stream + Send + 'static,
            <F::Output as Stream>::Item: Serialize + Send + 'static,
        {
            fn sb_stream(&self, fut: F) -> Reply {
                Reply::from_stream(async move { super::ok_stream(fut.await) })
            }
        }
        /// Fallback of [`StreamReply`].
        pub trait StreamReplyFallback<F> {
            /// Never runs.
            fn sb_stream(&self, fut: F) -> Reply;
        }
        impl<F> StreamReplyFallback<F> for &Probe<F> {
            fn sb_stream(&self, _: F) -> Reply {
                unreachable!("{NEVER}")
            }
        }

        /// An `impl Stream<Item = T>` as a `ReplyStream<T>`, for calling the handler directly
        /// (asserted by `assert_stream`).
        pub trait IntoReplyStream<S: Stream> {
            /// The stream, boxed.
            fn sb_into_reply_stream(&self, fut: BoxFuture<'static, S>) -> BoxFuture<'static, ReplyStream<S::Item>>;
        }
        impl<S> IntoReplyStream<S> for Probe<S>
        where
            S: Stream + Send + 'static,
            S::Item: Send + 'static,
        {
            fn sb_into_reply_stream(&self, fut: BoxFuture<'static, S>) -> BoxFuture<'static, ReplyStream<S::Item>> {
                Box::pin(async move { ReplyStream::from_stream(fut.await) })
            }
        }
        /// Fallback of [`IntoReplyStream`].
        pub trait IntoReplyStreamFallback<S: Stream> {
            /// Never runs.
            fn sb_into_reply_stream(&self, fut: BoxFuture<'static, S>) -> BoxFuture<'static, ReplyStream<S::Item>>;
        }
        impl<S: Stream> IntoReplyStreamFallback<S> for &Probe<S> {
            fn sb_into_reply_stream(&self, _: BoxFuture<'static, S>) -> BoxFuture<'static, ReplyStream<S::Item>> {
                unreachable!("{NEVER}")
            }
        }
    }
}
