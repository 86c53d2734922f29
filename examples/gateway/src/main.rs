//! The HTTP gateway: REST in front of the users and math services, events to the listeners.
//!
//! - `GET /users/{id}` sends `{cmd: "get_user"}`;
//! - `POST /users` sends `{cmd: "create_user"}`, then emits `user_created`;
//! - `GET /math/add?a=5&b=3` sends `{cmd: "add"}`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use example_gateway::users::{NewUser, USER_CREATED, UsersClient};
use example_math::{AddRequest, add};
use serde_json::json;
use switchboard::{Client, Error};

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
    /// Services that listen to `user_created` (point-to-point on TCP, so each gets its own emit).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tcp://127.0.0.1:3003,tcp://127.0.0.1:3004"
    )]
    events: Vec<String>,
}

struct Services {
    users: UsersClient,
    math: Client,
    listeners: Vec<Client>,
}

type Shared = State<Arc<Services>>;

/// A failed call as an HTTP response: remote errors keep their JSON.
struct CallError(Error);

impl IntoResponse for CallError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            Error::Rpc(_) => StatusCode::BAD_GATEWAY,
            Error::NoHandler { .. } => StatusCode::NOT_IMPLEMENTED,
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let body = match &self.0 {
            Error::Rpc(e) => e.value().clone(),
            e => json!({"status": "error", "message": e.to_string()}),
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
    Ok(Json(s.users.get_user(id).await?))
}

async fn new_user(State(s): Shared, Json(data): Json<NewUser>) -> Result<impl IntoResponse, CallError> {
    let user = s.users.create_user(data).await?;
    for listener in &s.listeners {
        if let Err(e) = listener.emit(USER_CREATED, &user).await {
            // The user exists; a listener that is down misses the event (TCP has no broker to keep it).
            tracing::warn!(listener = listener.url(), error = %e, "user_created not delivered");
        }
    }
    Ok((StatusCode::CREATED, Json(user)))
}

async fn math_add(State(s): Shared, Query(req): Query<AddRequest>) -> Result<impl IntoResponse, CallError> {
    Ok(Json(s.math.send(add, req).await?))
}

#[tokio::main]
async fn main() -> anyhow_free::Result {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let services = Services {
        users: UsersClient::new(Client::builder(&args.users).build()?),
        math: Client::builder(&args.math).build()?,
        listeners: args
            .events
            .iter()
            .map(|url| Client::builder(url).build())
            .collect::<Result<_, _>>()?,
    };
    let app = Router::new()
        .route("/users/{id}", get(user_by_id))
        .route("/users", axum::routing::post(new_user))
        .route("/math/add", get(math_add))
        .with_state(Arc::new(services));
    let listener = tokio::net::TcpListener::bind(args.http).await?;
    tracing::info!("gateway listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(switchboard::server::shutdown_signal())
        .await?;
    Ok(())
}

mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;
}
