//! The HTTP gateway: REST in front of the users, math and analytics services, events to the
//! listeners.
//!
//! - `GET /users/{id}` sends `{cmd: "get_user"}`;
//! - `POST /users` sends `{cmd: "create_user"}`, then emits `user_created`;
//! - `GET /math/add?a=5&b=3` sends `{cmd: "add"}`;
//! - `GET /signups/latest` sends `{cmd: "latest_signup"}` to analytics, which asks users;
//! - `GET /resilient/add?a=5&b=3` sends `{cmd: "resilient_add"}` to the resilient service,
//!   which answers `{"status":"degraded"}` while math is down.
//!
//! Replies go out as JavaScript writes JSON (`{"result":8}`, not `8.0`), as a NestJS gateway's do.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use example_gateway::users::{NewUser, USER_CREATED, User, UsersClient};
use example_math::{ADD, AddRequest};
use example_resilient::ResilientService;
use serde::Serialize;
use switchboard::{Client, Error, MessageDef, pattern};

/// Analytics' `latest_signup`, as the gateway knows it.
const LATEST_SIGNUP: MessageDef<(), Option<User>> = MessageDef::new(pattern!({ cmd = "latest_signup" }));

#[derive(Parser)]
struct Args {
    /// Address of the HTTP server.
    #[arg(long, default_value = "127.0.0.1:3000")]
    http: SocketAddr,
    /// The users service.
    #[arg(long, default_value = "tcp://127.0.0.1:3001")]
    users: String,
    /// The math service.
    #[arg(long, default_value = "tcp://127.0.0.1:3002")]
    math: String,
    /// The analytics service.
    #[arg(long, default_value = "tcp://127.0.0.1:3004")]
    analytics: String,
    /// The resilient service.
    #[arg(long, default_value = "tcp://127.0.0.1:3005")]
    resilient: String,
    /// Services that listen to `user_created` (point-to-point on TCP, so each gets its own emit).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tcp://127.0.0.1:3003,tcp://127.0.0.1:3004"
    )]
    events: Vec<String>,
}

/// The clients the handlers share, as axum state.
struct Services {
    users: UsersClient,
    math: Client,
    analytics: Client,
    resilient: Client,
    listeners: Vec<Client>,
}

type Shared = State<Arc<Services>>;

/// A value as JavaScript writes JSON.
struct JsJson<T>(StatusCode, T);

impl<T: Serialize> IntoResponse for JsJson<T> {
    fn into_response(self) -> Response {
        match switchboard::json::to_vec(&self.1) {
            Ok(body) => (self.0, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => CallError(Error::Codec {
                context: "cannot encode the reply".into(),
                source: e,
            })
            .into_response(),
        }
    }
}

/// A failed call as an HTTP response: a remote error keeps its JSON, and its numeric `code`
/// (as NestJS's `RpcException` carries one) becomes the status.
struct CallError(Error);

impl IntoResponse for CallError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            Error::Rpc(e) => e
                .value()
                .get("code")
                .and_then(serde_json::Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            Error::NoHandler { .. } => StatusCode::NOT_IMPLEMENTED,
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let body = match &self.0 {
            Error::Rpc(e) => e.value().clone(),
            e => serde_json::json!({"status": "error", "message": e.to_string()}),
        };
        (status, Json(body)).into_response()
    }
}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        CallError(e)
    }
}

async fn user_by_id(State(s): Shared, Path(id): Path<String>) -> Result<impl IntoResponse, CallError> {
    Ok(JsJson(StatusCode::OK, s.users.get_user(id).await?))
}

async fn new_user(State(s): Shared, Json(data): Json<NewUser>) -> Result<impl IntoResponse, CallError> {
    let user = s.users.create_user(data).await?;
    for listener in &s.listeners {
        if let Err(e) = listener.emit(USER_CREATED, &user).await {
            // The user exists; a listener that is down misses the event (TCP has no broker to keep it).
            tracing::warn!(listener = listener.url(), error = %e, "user_created not delivered");
        }
    }
    Ok(JsJson(StatusCode::CREATED, user))
}

async fn math_add(State(s): Shared, Query(req): Query<AddRequest>) -> Result<impl IntoResponse, CallError> {
    Ok(JsJson(StatusCode::OK, s.math.send(ADD, req).await?))
}

async fn resilient_add(State(s): Shared, Query(req): Query<AddRequest>) -> Result<impl IntoResponse, CallError> {
    Ok(JsJson(
        StatusCode::OK,
        s.resilient.send(ResilientService::RESILIENT_ADD, req).await?,
    ))
}

async fn latest_signup(State(s): Shared) -> Result<impl IntoResponse, CallError> {
    Ok(JsJson(StatusCode::OK, s.analytics.send(LATEST_SIGNUP, ()).await?))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    example_common::init_logging();
    let args = Args::parse();
    let services = Services {
        users: UsersClient::new(Client::builder(&args.users).build()?),
        math: Client::builder(&args.math).build()?,
        analytics: Client::builder(&args.analytics).build()?,
        resilient: Client::builder(&args.resilient).build()?,
        listeners: args
            .events
            .iter()
            .map(|url| Client::builder(url).build())
            .collect::<Result<_, _>>()?,
    };
    let app = Router::new()
        .route("/users/{id}", get(user_by_id))
        .route("/users", post(new_user))
        .route("/math/add", get(math_add))
        .route("/signups/latest", get(latest_signup))
        .route("/resilient/add", get(resilient_add))
        .with_state(Arc::new(services));
    let listener = tokio::net::TcpListener::bind(args.http).await?;
    tracing::info!("gateway listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(switchboard::server::shutdown_signal())
        .await?;
    Ok(())
}
