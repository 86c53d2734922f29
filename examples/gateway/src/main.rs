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
//!
//! Facing the public: a request's head must arrive within 10 s (`--header-timeout-ms`), a request body over 64 KiB is
//! refused (413) before it is read, a request gets 30 s in all, a caller's mistake is a 400, and a failure of the services behind is told
//! as a status and a word (503 "service unavailable"), never their addresses or OS errors,
//! which go to the log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
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
    /// The users service: a transport URL, or (feature `etcd`) a registry URL naming it,
    /// `etcd://127.0.0.1:2379/users`, to balance over its instances.
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
    /// How long a request's head may take to arrive (a half-sent request line is not kept).
    #[arg(long, default_value_t = 10_000)]
    header_timeout_ms: u64,
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

/// The largest request body taken.
const MAX_BODY: usize = 64 * 1024;
/// A request's whole time, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections get to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed call as an HTTP response: a remote error keeps its JSON, and its numeric `code`
/// (as NestJS's `RpcException` carries one, if it is an HTTP status) becomes the status.
/// Anything else is logged and answered with its status and a word.
struct CallError(Error);

impl IntoResponse for CallError {
    fn into_response(self) -> Response {
        if let Error::Rpc(e) = &self.0 {
            let status = e
                .value()
                .get("code")
                .and_then(serde_json::Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (400..600).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            return (status, Json(e.value().clone())).into_response();
        }
        let (status, message) = match &self.0 {
            Error::NoHandler { .. } => (StatusCode::NOT_IMPLEMENTED, "not implemented"),
            Error::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timed out"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "service unavailable"),
        };
        tracing::warn!(error = %self.0, "a call failed");
        error(status, message)
    }
}

/// `{"status":"error","message":...}` with `status`.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({"status": "error", "message": message}))).into_response()
}

/// Refuses a body announced as too large before reading it, and gives the request its time.
async fn bounded(req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "timed out"),
    }
}

/// Operands a caller may send: finite numbers (`NaN`, `inf` and `1e309` are the caller's
/// mistake, not the math service's).
fn finite(req: &AddRequest) -> Option<Response> {
    (!(req.a.is_finite() && req.b.is_finite()))
        .then(|| error(StatusCode::BAD_REQUEST, "a and b must be finite numbers"))
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

async fn math_add(State(s): Shared, Query(req): Query<AddRequest>) -> Response {
    if let Some(bad) = finite(&req) {
        return bad;
    }
    match s.math.send(ADD, req).await {
        Ok(sum) => JsJson(StatusCode::OK, sum).into_response(),
        Err(e) => CallError(e).into_response(),
    }
}

async fn resilient_add(State(s): Shared, Query(req): Query<AddRequest>) -> Response {
    if let Some(bad) = finite(&req) {
        return bad;
    }
    match s.resilient.send(ResilientService::RESILIENT_ADD, req).await {
        Ok(answer) => JsJson(StatusCode::OK, answer).into_response(),
        Err(e) => CallError(e).into_response(),
    }
}

async fn latest_signup(State(s): Shared) -> Result<impl IntoResponse, CallError> {
    Ok(JsJson(StatusCode::OK, s.analytics.send(LATEST_SIGNUP, ()).await?))
}

/// Each request in a server span named for its route (`POST /users`): the calls and events
/// it makes are one trace under it, inside the caller's trace when it sent one (`traceparent`).
async fn traced(req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "http",
        otel.name = format!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let mut caller = switchboard::Headers::new();
    for name in ["traceparent", "tracestate", "baggage"] {
        if let Some(value) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
            caller.insert(name, value);
        }
    }
    switchboard::telemetry::continue_trace(&span, &caller);
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// A client of the service at `url`: a transport, or a registry naming the service.
async fn client(url: &str) -> switchboard::Result<Client> {
    #[cfg(feature = "etcd")]
    if switchboard_discovery::is_registry_url(url) {
        return switchboard_discovery::builder(url).await?.build();
    }
    Client::builder(url).build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _telemetry = example_common::init("gateway");
    let args = Args::parse();
    let services = Services {
        users: UsersClient::new(client(&args.users).await?),
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
        .route_layer(middleware::from_fn(traced))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(bounded))
        .with_state(Arc::new(services));
    let listener = tokio::net::TcpListener::bind(args.http).await?;
    tracing::info!("gateway listening on http://{}", listener.local_addr()?);
    serve(listener, app, Duration::from_millis(args.header_timeout_ms)).await;
    Ok(())
}

/// Serves HTTP/1.1 on `listener` with a header read timeout, until Ctrl-C or SIGTERM; then
/// lets open connections finish (up to [`DRAIN_TIMEOUT`]).
async fn serve(listener: tokio::net::TcpListener, app: Router, header_timeout: Duration) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stop = switchboard::server::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
    // New connections are refused at once while the open ones finish.
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}
