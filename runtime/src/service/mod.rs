//! The seam between transports and handlers, on both sides of a call.
//!
//! Server side, a transport turns what it received into an owned [`Request`] and calls the
//! [`Router`], a `tower::Service` that answers with a [`Reply`]; every layer of a service
//! wraps a [`Route`]. Client side, a call is an [`Outbound`] that a transport (a `tower`
//! service too, see [`crate::client`]) answers with [`Replies`]. Nothing here knows a
//! socket or a handler.

mod context;
pub(crate) mod deadline;
mod extensions;
pub(crate) mod headers;
mod local;
mod options;
mod order;
mod outbound;
mod overrides;
mod reply;
mod request;
mod router;
mod tried;

pub use context::{Context, Kind};
pub use deadline::TIMEOUT_HEADER;
pub use extensions::Extensions;
pub use headers::Headers;
pub use local::Local;
pub use options::{Idempotent, PatternOptions};
pub use order::EventOrder;
pub(crate) use outbound::deadline_after;
pub use outbound::{Outbound, Replies};
pub use overrides::{Overrides, POLICY_ENV, POLICY_FILE_ENV};
pub(crate) use reply::to_json;
pub use reply::{Reply, ReplyItem};
pub use request::{Address, Payload, Request};
// The TCP server is the one transport that reads arrivals.
#[cfg_attr(not(feature = "tcp"), allow(unused_imports))]
pub(crate) use router::Arrival;
#[cfg(feature = "tcp")]
pub(crate) use router::ReadTogether;
pub(crate) use router::{Endpoint, RouterBuilder};
pub use router::{Route, RouteFuture, RouteInfo, Router, RouterFuture};
#[cfg(feature = "metrics")]
pub(crate) use router::{Watch, Watcher, Watching};
pub use tried::Tried;
