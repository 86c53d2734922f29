//! The service seam as a user meets it: state and extractors, groups, layers on both ends,
//! return types decided by traits, owned calls, in-process values.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use std::future::IntoFuture;
use switchboard::middleware::{self, ClientNext, Next};
use switchboard::prelude::*;

use switchboard::{Error, Outbound, Reply, Request};

// ---------------------------------------------------------------- state and extractors

#[derive(Clone, FromRef)]
struct App {
    greeting: Greeting,
    hits: Hits,
}

#[derive(Clone)]
struct Greeting(&'static str);

#[derive(Clone, Default)]
struct Hits(Arc<AtomicUsize>);

#[message_pattern("seam.greet")]
async fn greet(name: String, State(g): State<Greeting>, State(hits): State<Hits>, headers: Headers) -> String {
    hits.0.fetch_add(1, Ordering::SeqCst);
    format!("{} {name}{}", g.0, headers.get("punct").unwrap_or(""))
}

#[message_pattern("seam.whole_state")]
async fn whole_state(State(app): State<App>, Deadline(deadline): Deadline) -> (usize, bool) {
    (app.hits.0.load(Ordering::SeqCst), deadline.is_some())
}

#[tokio::test]
async fn handlers_take_state_parts_and_extractors() {
    let app = App {
        greeting: Greeting("hello"),
        hits: Hits::default(),
    };
    let server = Microservice::new()
        .with_state(app.clone())
        .handler(GREET)
        .handler(WHOLE_STATE)
        .listen("mem://seam-state")
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    for url in server.local_urls() {
        let client = Client::connect(url).await.unwrap();
        assert_eq!(
            client
                .send(GREET, "Ada".to_string())
                .header("punct", "!")
                .await
                .unwrap(),
            "hello Ada!"
        );
        // By reference too (encoded, even in-process).
        let name = "Bo".to_string();
        let reply = client.send(GREET, &name).await.unwrap();
        assert_eq!(reply, format!("hello {name}"));
    }
    assert_eq!(
        app.hits.0.load(Ordering::SeqCst),
        4,
        "the handlers share the service's state"
    );
    let client = Client::connect("mem://seam-state").await.unwrap();
    assert_eq!(
        client.send(WHOLE_STATE, ()).await.unwrap(),
        (4, true),
        "in-process calls carry their deadline"
    );
    server.shutdown().await.unwrap();
}

/// The caller's tenant, from a header, taken after a wait: the arguments after it are taken
/// in the handler's future, in order, with the service's state kept for them.
struct Tenant(String);

impl<S: Sync> switchboard::FromRequest<S> for Tenant {
    type Payload = switchboard::NoPayload;

    async fn from_request(req: &mut Request, _: &S) -> Result<Self, RpcError> {
        tokio::task::yield_now().await;
        match req.headers().get("tenant") {
            Some(t) => Ok(Tenant(t.to_owned())),
            None => Err(RpcError::new("no tenant")),
        }
    }
}

#[message_pattern("seam.tenant_greet")]
async fn tenant_greet(State(g): State<Greeting>, Tenant(t): Tenant, name: String, State(hits): State<Hits>) -> String {
    hits.0.fetch_add(1, Ordering::SeqCst);
    format!("{} {name} of {t}", g.0)
}

#[tokio::test]
async fn an_extractor_that_waits_is_taken_in_order_with_the_state_after_it() {
    let app = App {
        greeting: Greeting("hello"),
        hits: Hits::default(),
    };
    let server = Microservice::new()
        .with_state(app.clone())
        .handler(TENANT_GREET)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::connect(server.local_url()).await.unwrap();
    let reply = client
        .send(TENANT_GREET, "Ada".to_string())
        .header("tenant", "acme")
        .await;
    assert_eq!(reply.unwrap(), "hello Ada of acme");
    let err = client.send(TENANT_GREET, "Bo".to_string()).await.unwrap_err();
    assert_eq!(err.as_rpc().and_then(RpcError::message), Some("no tenant"));
    // A payload that is not a string fails at its own argument, after the tenant's.
    let err = client
        .send_raw::<String>("seam.tenant_greet", 7)
        .header("tenant", "acme")
        .await
        .unwrap_err();
    let message = err.as_rpc().and_then(RpcError::message).unwrap_or_default();
    assert!(
        message.contains("invalid payload for pattern seam.tenant_greet"),
        "{message}"
    );
    assert_eq!(
        app.hits.0.load(Ordering::SeqCst),
        1,
        "only the call that had every argument ran"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_registry_refuses_handlers_that_need_state_unless_added() {
    let err = Microservice::from_registry()
        .listen("mem://seam-registry")
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NeedsState { handlers } if handlers.iter().any(|h| h.contains("seam::greet"))),
        "{err}"
    );
    assert!(err.to_string().contains("with_state"), "{err}");
}

// ---------------------------------------------------------------- return types, by trait

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct DbError {
    code: u32,
}

impl From<DbError> for RpcError {
    fn from(e: DbError) -> Self {
        RpcError::from_value(json!({"status": "error", "message": "db", "code": e.code}))
    }
}

type DbResult<T> = Result<T, DbError>;

#[message_pattern("seam.lookup")]
async fn lookup(id: u32) -> DbResult<String> {
    if id == 0 {
        Err(DbError { code: 7 })
    } else {
        Ok(format!("row {id}"))
    }
}

/// A payload type of the user's that happens to be called `Context`.
mod user {
    #[derive(serde::Deserialize, serde::Serialize)]
    pub struct Context {
        pub tenant: String,
    }
}

#[message_pattern("seam.tenant")]
async fn tenant(ctx: user::Context, real: Context) -> String {
    format!("{}@{}", ctx.tenant, real.transport())
}

#[tokio::test]
async fn an_aliased_result_answers_its_value_or_its_error_on_the_wire() {
    let server = Microservice::new()
        .handler(LOOKUP)
        .handler(TENANT)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::connect(server.local_url()).await.unwrap();
    // What a NestJS caller sees: the value itself, not `{"Ok": ...}`.
    let v: Value = client.send_raw("seam.lookup", 3).await.unwrap();
    assert_eq!(v, json!("row 3"));
    let err = client.send_raw::<Value>("seam.lookup", 0).await.unwrap_err();
    assert_eq!(
        err.as_rpc().unwrap().value(),
        &json!({"status": "error", "message": "db", "code": 7})
    );
    // The typed descriptor of an alias replies the alias's type: its `Ok` from the value,
    // its `Err` from the error.
    assert_eq!(client.send(LOOKUP, 4).await.unwrap(), Ok("row 4".to_string()));
    assert_eq!(client.send(LOOKUP, 0).await.unwrap(), Err(DbError { code: 7 }));
    // A user type named `Context` is a payload; `switchboard::Context` is the extractor.
    let t = client
        .send(TENANT, user::Context { tenant: "acme".into() })
        .await
        .unwrap();
    assert_eq!(t, "acme@tcp");
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- a handler calling a service

#[message_pattern("seam.backend")]
async fn double_it(n: i64) -> RpcResult<i64> {
    if n < 0 {
        Err(RpcError::new("negative"))
    } else {
        Ok(n * 2)
    }
}

const BACKEND: MessageDef<i64, i64> = MessageDef::new(pattern!("seam.backend"));

#[message_pattern("seam.front")]
async fn front(n: i64, State(backend): State<Client>) -> RpcResult<i64> {
    // `?` answers this request with the failed call's error.
    Ok(backend.send(BACKEND, n).await? + 1)
}

#[tokio::test]
async fn a_handler_calls_another_service_with_the_question_mark() {
    let back = Microservice::new()
        .handler(DOUBLE_IT)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let back_addr = back.local_url().trim_start_matches("tcp://").to_owned();
    let backend_client = Client::connect(back.local_url()).await.unwrap();
    let front_server = Microservice::new()
        .with_state(backend_client)
        .handler(FRONT)
        .listen("mem://seam-front")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://seam-front").await.unwrap();
    assert_eq!(client.send(FRONT, 20).await.unwrap(), 41);
    // The backend's own error reaches the first caller unchanged.
    let err = client.send(FRONT, -1).await.unwrap_err();
    assert_eq!(err.as_rpc().and_then(RpcError::message), Some("negative"));
    // A transport failure becomes an error reply that says what failed, not `Internal
    // server error`.
    back.shutdown().await.unwrap();
    let err = client.send(FRONT, 1).await.unwrap_err();
    let message = err.as_rpc().and_then(RpcError::message).unwrap_or_default().to_owned();
    assert!(message.contains(&back_addr), "{message}");
    front_server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- groups

/// A controller: its fields are its dependencies.
struct Orders {
    prefix: String,
    placed: AtomicUsize,
}

#[handlers]
impl Orders {
    #[message_pattern({ cmd = "place_order" })]
    async fn place(&self, item: String, ctx: Context) -> String {
        let n = self.placed.fetch_add(1, Ordering::SeqCst) + 1;
        format!("{}-{n}:{item}:{}", self.prefix, ctx.route())
    }

    #[event_pattern("order.cancelled")]
    async fn cancelled(&self, _id: String) {
        self.placed.fetch_sub(1, Ordering::SeqCst);
    }

    #[message_pattern({ cmd = "order_count" })]
    async fn count(&self) -> usize {
        self.placed.load(Ordering::SeqCst)
    }

    /// Not a handler: a plain method stays a plain method.
    fn describe(&self) -> &str {
        &self.prefix
    }
}

#[tokio::test]
async fn a_group_serves_its_methods_with_its_own_dependencies() {
    let orders = Orders {
        prefix: "ord".into(),
        placed: AtomicUsize::new(0),
    };
    assert_eq!(orders.describe(), "ord");
    let server = Microservice::new()
        .group(orders)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::connect(server.local_url()).await.unwrap();
    assert_eq!(
        client.send(Orders::PLACE, "book".to_string()).await.unwrap(),
        r#"ord-1:book:{"cmd":"place_order"}"#
    );
    client.send(Orders::PLACE, "pen".to_string()).await.unwrap();
    client.emit(Orders::CANCELLED, "1".to_string()).await.unwrap();
    let mut count = 0;
    for _ in 0..100 {
        count = client.send(Orders::COUNT, ()).await.unwrap();
        if count == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count, 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_group_from_a_library_crate_is_served_and_called_by_its_descriptors() {
    use example_users::{NewUser, Users};
    let server = Microservice::new()
        .group(Users::new())
        .listen("mem://seam-users")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://seam-users").await.unwrap();
    let ada = client
        .send(
            Users::CREATE_USER,
            NewUser {
                name: "Ada".into(),
                email: "ada@example.com".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(client.send(Users::GET_USER, ada.id.clone()).await.unwrap(), ada);
    let missing = client.send(Users::GET_USER, "nope".to_string()).await.unwrap_err();
    assert_eq!(
        missing.as_rpc().and_then(RpcError::message),
        Some("user nope not found")
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- layers, server side

#[message_pattern("seam.secret")]
async fn secret() -> String {
    "42".into()
}

/// Refuses calls without the right token; records what it saw.
async fn guard(req: Request, next: Next) -> Reply {
    let seen = format!(
        "{} {} {}",
        req.context().route(),
        req.headers().get("token").unwrap_or("-"),
        req.context().deadline().is_some()
    );
    SEEN.lock().unwrap().push(seen);
    if req.headers().get("token") == Some("ok") {
        next.run(req).await
    } else {
        Reply::error(RpcError::new("unauthorized"))
    }
}

static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[tokio::test]
async fn a_service_layer_sees_route_headers_and_deadline_and_can_refuse() {
    let server = Microservice::new()
        .handler(SECRET)
        .layer(middleware::from_fn(guard))
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::connect(server.local_url()).await.unwrap();
    let err = client.send(SECRET, ()).await.unwrap_err();
    assert_eq!(err.as_rpc().and_then(RpcError::message), Some("unauthorized"));
    assert_eq!(client.send(SECRET, ()).header("token", "ok").await.unwrap(), "42");
    // Patterns nobody handles go through the layers too.
    let err = client
        .send_raw::<Value>("seam.nobody", ())
        .header("token", "ok")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoHandler { .. }), "{err}");
    let seen = SEEN.lock().unwrap().clone();
    // The caller's deadline travels over TCP (as `sb-timeout-ms`): layers see it.
    assert!(seen.contains(&"seam.secret - true".to_string()), "{seen:?}");
    assert!(seen.contains(&"seam.secret ok true".to_string()), "{seen:?}");
    assert!(seen.contains(&"seam.nobody ok true".to_string()), "{seen:?}");
    server.shutdown().await.unwrap();
}

#[message_pattern("seam.slow")]
async fn slow(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

/// `limited` handlers running now, and the most seen at once (this test's alone).
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static RUNNING_MAX: AtomicUsize = AtomicUsize::new(0);

#[message_pattern("seam.limited")]
async fn limited(ms: u64) -> u64 {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    RUNNING_MAX.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    ms
}

#[tokio::test]
async fn tower_layers_wrap_one_handler_or_all_of_them() {
    // tower's own timeout around one handler: its error becomes `Internal server error`.
    let server = Microservice::new()
        .handler(SLOW.layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(50))))
        .handler(LIMITED)
        .layer(tower::limit::ConcurrencyLimitLayer::new(1))
        .listen("mem://seam-tower")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://seam-tower").await.unwrap();
    assert_eq!(client.send(SLOW, 1).await.unwrap(), 1);
    let err = client.send(SLOW, 500).await.unwrap_err();
    assert_eq!(err.as_rpc(), Some(&RpcError::internal()));
    // The concurrency limit applies to the route: calls made together run one at a time.
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(client.send(LIMITED, 20).into_future()))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 20);
    }
    assert_eq!(RUNNING_MAX.load(Ordering::SeqCst), 1);
    server.shutdown().await.unwrap();
}

#[message_pattern("seam.gated")]
async fn gated(n: u32) -> u32 {
    n
}

/// A layer's service with a life of its own: it counts how often it is asked whether it is
/// ready, says "not yet" the first time any instance is asked, fails when asked the
/// `fail_at`-th time, and that instance stays broken (so it must not be called again).
#[derive(Clone)]
struct Gate<S> {
    inner: S,
    asked: Arc<AtomicUsize>,
    not_yet: Arc<std::sync::atomic::AtomicBool>,
    fail_at: usize,
    broken: bool,
}

impl<S: tower::Service<Request>> tower::Service<Request> for Gate<S> {
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = futures_util::future::MapErr<S::Future, fn(S::Error) -> tower::BoxError>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), tower::BoxError>> {
        if self.not_yet.swap(false, Ordering::SeqCst) {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        if self.broken {
            return std::task::Poll::Ready(Err(RpcError::new("called after it failed").into()));
        }
        if self.asked.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            self.broken = true;
            return std::task::Poll::Ready(Err(RpcError::new("gate failed").into()));
        }
        self.inner.poll_ready(cx).map_err(|_| "inner not ready".into())
    }

    fn call(&mut self, req: Request) -> Self::Future {
        use futures_util::TryFutureExt;
        self.inner.call(req).map_err(|_| unreachable!("a route does not fail"))
    }
}

#[tokio::test]
async fn a_layer_is_asked_before_every_call_and_an_instance_that_failed_is_not_called_again() {
    let asked = Arc::new(AtomicUsize::new(0));
    let layer = {
        let asked = asked.clone();
        tower::layer::layer_fn(move |inner| Gate {
            inner,
            asked: asked.clone(),
            not_yet: Arc::new(true.into()),
            fail_at: 4,
            broken: false,
        })
    };
    let server = Microservice::new()
        .handler(GATED)
        .layer(layer)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::connect(server.local_url()).await.unwrap();
    let mut answers = Vec::new();
    for n in 1..=8 {
        answers.push(client.send(GATED, n).await.map_err(|e| e.to_string()));
    }
    assert_eq!(answers[..3], [Ok(1), Ok(2), Ok(3)], "{answers:?}");
    let failed = answers[3].as_ref().unwrap_err();
    assert!(failed.contains("gate failed"), "{failed}");
    assert_eq!(answers[4..], [Ok(5), Ok(6), Ok(7), Ok(8)], "{answers:?}");
    // Asked once before each call that reached it (a "not yet" is asked again, not counted).
    assert_eq!(asked.load(Ordering::SeqCst), 8);
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- layers, client side

#[tokio::test]
async fn a_client_layer_sees_each_call_and_can_fail_it() {
    let server = Microservice::new()
        .handler(SECRET)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let client = Client::builder(server.local_url())
        .layer(middleware::client_fn(move |mut out: Outbound, next: ClientNext| {
            let calls = counted.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                assert!(out.deadline > tokio::time::Instant::now());
                if out.route == "seam.secret" && out.headers.get("token").is_none() {
                    out.headers.insert("token", "from-layer");
                }
                if out.headers.get("deny").is_some() {
                    return Err(Error::Rpc(RpcError::new("denied by the client")));
                }
                next.run(out).await
            }
        }))
        .connect()
        .await
        .unwrap();
    assert_eq!(client.send(SECRET, ()).await.unwrap(), "42");
    let err = client.send(SECRET, ()).header("deny", "1").await.unwrap_err();
    assert_eq!(err.as_rpc().and_then(RpcError::message), Some("denied by the client"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tower_client_layer_error_keeps_its_source() {
    let server = Microservice::new()
        .handler(SLOW)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::builder(server.local_url())
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(50)))
        .connect()
        .await
        .unwrap();
    let err = client.send(SLOW, 500).await.unwrap_err();
    assert!(matches!(err, Error::Layer(_)), "{err:?}");
    let source = std::error::Error::source(&err).expect("the layer's error is the source");
    assert!(source.is::<tower::timeout::error::Elapsed>(), "{source:?}");
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- calls own what they need

#[tokio::test]
async fn a_call_is_static_and_can_be_spawned_after_its_client_is_gone() {
    let server = Microservice::new()
        .handler(SLOW)
        .listen("mem://seam-spawn")
        .start()
        .await
        .unwrap();
    let call = {
        let client = Client::connect("mem://seam-spawn").await.unwrap();
        client.send(SLOW, 5)
    };
    assert_eq!(tokio::spawn(async move { call.await }).await.unwrap().unwrap(), 5);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_values_reach_handlers_of_another_type_through_json() {
    #[derive(Serialize)]
    struct Loose {
        name: &'static str,
    }
    const GREET_LOOSE: MessageDef<Loose, Value> = MessageDef::new(pattern!("seam.greet"));
    let server = Microservice::new()
        .with_state(App {
            greeting: Greeting("hi"),
            hits: Hits::default(),
        })
        .handler(GREET)
        .listen("mem://seam-loose")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://seam-loose").await.unwrap();
    // A struct where the handler takes a string: decoded from its JSON, and refused as such.
    let err = client.send(GREET_LOOSE, Loose { name: "x" }).await.unwrap_err();
    assert!(
        err.to_string().contains("invalid payload for pattern seam.greet"),
        "{err}"
    );
    // A reply of another type than the handler's: decoded from its JSON.
    const GREET_VALUE: MessageDef<String, Value> = MessageDef::new(pattern!("seam.greet"));
    assert_eq!(
        client.send(GREET_VALUE, "Cy".to_string()).await.unwrap(),
        json!("hi Cy")
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutting_a_service_down_stops_its_in_process_callers() {
    let server = Microservice::new()
        .handler(SECRET)
        .listen("mem://seam-stop")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://seam-stop").await.unwrap();
    assert_eq!(client.send(SECRET, ()).await.unwrap(), "42");
    server.shutdown().await.unwrap();
    let err = client.send(SECRET, ()).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    // A new service under the same name serves the same client again.
    let again = Microservice::new()
        .handler(SECRET)
        .listen("mem://seam-stop")
        .start()
        .await
        .unwrap();
    assert_eq!(client.send(SECRET, ()).await.unwrap(), "42");
    again.shutdown().await.unwrap();
}
