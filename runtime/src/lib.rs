//! Switchboard: message-driven microservices for Rust, wire-compatible with NestJS.
//!
//! Handlers are plain `async fn`s keyed by message patterns:
//!
//! ```ignore
//! use switchboard::prelude::*;
//!
//! #[message_pattern(cmd = "add")]
//! async fn add(req: AddRequest) -> AddReply { AddReply { result: req.a + req.b } }
//!
//! #[event_pattern("user_created")]
//! async fn send_welcome(user: User) { /* … */ }
//!
//! #[tokio::main]
//! async fn main() -> switchboard::Result<()> {
//!     Microservice::from_registry().listen("tcp://127.0.0.1:3001").run().await
//! }
//! ```
//!
//! and callers get compile-checked clients: `client.send(add, AddRequest { a: 1, b: 2 })`.
//! The same handlers serve over every transport, chosen by URL (`mem://name`,
//! `tcp://host:port`, `tls://host:port`); on TCP the bytes are NestJS's own, so NestJS
//! clients and servers talk to Switchboard ones.

#![warn(missing_docs)]

pub mod client;
mod codec;
pub mod context;
pub mod descriptor;
pub mod dispatch;
pub mod error;
pub mod handler;
pub mod registry;
pub mod server;
pub mod transport;

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
        Client, Context, Event, EventDef, Message, MessageDef, Microservice, ReplyStream, RpcError,
        RpcResult, event_pattern, message_pattern, pattern,
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
    pub fn assert_payload<T: DeserializeOwned>() {}
    /// Spanned at the user's return type.
    pub fn assert_reply<T: Serialize>() {}
    /// Spanned at the user's error type.
    pub fn assert_rpc_error<E: Into<RpcError>>() {}
    /// Spanned at the user's function: its future must be `Send`.
    pub fn assert_send<T: Send>(_: &T) {}

    /// An `impl Stream<Item = T>` reply as a stream of results.
    pub fn ok_stream<S, T>(values: S) -> impl Stream<Item = Result<T, RpcError>> + Send + 'static
    where
        S: Stream<Item = T> + Send + 'static,
        T: Send + 'static,
    {
        values.map(Ok)
    }
}
