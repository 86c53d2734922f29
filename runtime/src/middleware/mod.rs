//! Layers that wrap a call, on either side.
//!
//! Any `tower` layer works on both ends: `Microservice::layer` wraps every route of a
//! service (the handlers of a pattern, and the answer to patterns nobody handles),
//! `Handler::layer` one handler, and `ClientBuilder::layer` every call a client makes. The
//! functions here write a layer from an `async fn`, as axum's `from_fn` does:
//!
//! ```
//! use switchboard::middleware::{self, Next};
//! use switchboard::prelude::*;
//! use switchboard::{Reply, Request};
//!
//! /// Refuses messages without a `token` header.
//! async fn auth(req: Request, next: Next) -> Reply {
//!     match req.headers().get("token") {
//!         Some("let-me-in") => next.run(req).await,
//!         _ => Reply::error(RpcError::new("unauthorized")),
//!     }
//! }
//!
//! #[message_pattern("secret")]
//! async fn secret() -> String {
//!     "42".into()
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> switchboard::Result<()> {
//! let server = Microservice::new()
//!     .handler(SECRET)
//!     .layer(middleware::from_fn(auth))
//!     .listen("mem://auth-doc")
//!     .start()
//!     .await?;
//! let client = Client::connect("mem://auth-doc").await?;
//! assert!(client.send(SECRET, ()).await.is_err());
//! assert_eq!(client.send(SECRET, ()).header("token", "let-me-in").await?, "42");
//! # server.shutdown().await
//! # }
//! ```

mod from_fn;

pub use from_fn::{ClientFn, ClientFnLayer, ClientNext, FromFn, FromFnLayer, Next, client_fn, from_fn};
