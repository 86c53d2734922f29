//! Switchboard: message-driven microservices for Rust, wire-compatible with NestJS.
//!
//! Handlers are plain `async fn`s keyed by message patterns; each gets a typed descriptor
//! (`ADD` for `add`) that serves it and that callers call it with:
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
//! #[message_pattern({ cmd = "add" })]
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
//! let server = Microservice::new().handler(ADD).handler(SEND_WELCOME).listen("mem://math").start().await?;
//! let client = Client::connect("mem://math").await?;
//! assert_eq!(client.send(ADD, AddRequest { a: 5, b: 3 }).await?, AddReply { result: 8 });
//! client.emit(SEND_WELCOME, "Ada".to_string()).await?;
//! server.shutdown().await
//! # }
//! ```
//!
//! The same handlers serve over every transport, chosen by URL (`mem://name`,
//! `tcp://host:port`, `tls://`, `redis://`, `nats://`, `mqtt://`, `amqp://`, `kafka://`,
//! `grpc://`); the bytes are NestJS's own, so NestJS clients and servers talk to Switchboard
//! ones. Handlers take state and extractors as axum's do ([`State`], [`Context`], headers),
//! group as a NestJS controller does ([`handlers`]), and every call on either side goes
//! through `tower` layers ([`Microservice::layer`], [`ClientBuilder::layer`]).
//!
//! The layers of the crate, and the NestJS protocol it speaks:
#![doc = include_str!("../docs/architecture.md")]
#![warn(missing_docs)]

pub mod client;
pub mod contract;
pub mod error;
pub mod json;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod middleware;
pub mod resilience;
pub mod server;
pub mod service;
mod signal;
#[cfg(feature = "telemetry")]
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
mod text;
pub mod transport;
pub mod wire;

#[doc(hidden)]
pub mod __private;

pub use client::call::{Call, Emit, Fallback};
pub use client::descriptor::{AsPayload, Event, EventDef, Message, MessageDef, PatternLit};
pub use client::{Client, ClientBuilder, Discover};
pub use contract::Contract;
pub use error::{Error, OrInternal, Result, RpcError, RpcResult};
pub use server::extract::{Deadline, Extension, FromRequest, IsPayload, NoPayload};
pub use server::group::Group;
pub use server::handler::{Handler, HandlerInfo, HandlerService, Layered, Serve};
pub use server::respond::{IntoReply, ReplyStream};
pub use server::state::{FromRef, State};
pub use server::{Microservice, RunningServer};
pub use service::{
    Address, Context, EventOrder, Extensions, Headers, Kind, Outbound, Overrides, POLICY_ENV, POLICY_FILE_ENV,
    PatternOptions, Payload, Replies, Reply, ReplyItem, Request, Route, RouteFuture, Router,
};
pub use switchboard_macros::{FromRef, event_pattern, handlers, message_pattern, pattern};

/// The names a service or caller usually needs.
pub mod prelude {
    pub use crate::{
        Client, Context, Deadline, Event, EventDef, Extension, FromRef, Handler, Headers, Message, MessageDef,
        Microservice, OrInternal, ReplyStream, RpcError, RpcResult, State, event_pattern, handlers, message_pattern,
        pattern,
    };
    pub use serde::{Deserialize, Serialize};
}
