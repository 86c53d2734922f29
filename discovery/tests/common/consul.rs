//! A fake Consul agent in this process, on 127.0.0.1:0, for the tests of the Consul backend:
//! Consul itself cannot be installed where these tests run, so the endpoints the backend uses
//! are written here after Consul's HTTP API documentation (developer.hashicorp.com/consul/
//! api-docs: agent/service, agent/check, health, features/blocking, acl).
//!
//! Followed, as documented:
//! - `PUT /v1/agent/service/register`: `ID` (default `Name`), `Name` (required, else 400),
//!   `Tags`, `Address`, `Port`, `Meta` (at most 64 pairs, keys of at most 128 characters of
//!   letters, digits, `-` and `_`, not starting with `consul-`, values of at most 512; else
//!   400 "Invalid Service Meta"), and one `Check` with `CheckID` (default `service:<id>`),
//!   `Name`, `TTL`, `Status` (default `critical`) and `DeregisterCriticalServiceAfter`.
//!   Registering an existing ID replaces the service and its check.
//! - `PUT /v1/agent/service/deregister/<id>`: removes the service and its checks; 404 for an
//!   unknown ID.
//! - `PUT /v1/agent/check/{pass,warn,fail}/<check id>?note=`: sets the status and output and
//!   restarts the TTL; 404 for an unknown check.
//! - A TTL check not updated within its TTL turns critical ("TTL expired"); a service whose
//!   check has been critical for `DeregisterCriticalServiceAfter` is removed.
//! - `GET /v1/health/service/<name>?passing&index=&wait=`: the entries (`Node`, `Service`,
//!   `Checks` with the node's `serfHealth`) of the service, only those whose checks all pass
//!   with `passing`; the `X-Consul-Index` header; with `index`, a blocking query that answers
//!   once the index is past it or after `wait` (default 5 min, at most 10 min, plus up to
//!   wait/16 at random).
//! - ACLs when a token is configured: the token in `X-Consul-Token`, `Authorization: Bearer`
//!   or `?token=`; 403 without it ("Permission denied") or with another ("ACL not found").
//!
//! Left out: every other endpoint and field (lower-case and snake_case field names, `Checks`
//! lists, check types other than TTL, `replace-existing-checks`, `Weights`, namespaces, `dc`,
//! consistency modes, filters, ACL policies: one token may do everything); the catalog's
//! anti-entropy (the agent's state is the catalog here, so changes show at once); the index is
//! the agent's (every change wakes every blocked query: Consul narrows it to the service, and
//! a blocking query may always return without a change); Consul's 1 min floor on
//! `DeregisterCriticalServiceAfter` and its 30 s reaper (removal happens on time here, so the
//! tests can use short durations); node health (the node's `serfHealth` always passes).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const NODE: &str = "fake-agent";

/// A running fake agent; stopped when dropped.
pub struct FakeConsul {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    token: Option<String>,
    agent: Mutex<Agent>,
    /// The index, for blocked queries to wait on.
    index: watch::Sender<u64>,
    /// Health queries blocked now.
    blocked: AtomicUsize,
}

#[derive(Default)]
struct Agent {
    index: u64,
    services: BTreeMap<String, Service>,
    checks: BTreeMap<String, Check>,
    /// `METHOD /path?query` of every request, in order.
    requests: Vec<String>,
}

/// A registered service, as stored.
#[derive(Debug, Clone)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct Check {
    id: String,
    name: String,
    service_id: String,
    status: String,
    output: String,
    ttl: Duration,
    expires: Instant,
    deregister_after: Option<Duration>,
    critical_since: Option<Instant>,
}

impl FakeConsul {
    /// An agent without ACLs.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// An agent that requires `token`.
    pub async fn with_token(token: &str) -> Self {
        Self::start_with(Some(token.to_owned())).await
    }

    async fn start_with(token: Option<String>) -> Self {
        let shared = Arc::new(Shared {
            token,
            agent: Mutex::new(Agent {
                // Consul's indexes are never 0 once it runs.
                index: 10,
                ..Agent::default()
            }),
            index: watch::channel(10).0,
            blocked: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/v1/agent/service/register", put(register))
            .route("/v1/agent/service/deregister/{id}", put(deregister))
            .route("/v1/agent/check/{verb}/{id}", put(update_check))
            .route("/v1/health/service/{name}", get(health))
            .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found") })
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        let reaper = tokio::spawn(reap(shared.clone()));
        FakeConsul {
            addr,
            shared,
            tasks: vec![server, reaper],
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `consul://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("consul://{}", self.addr)
    }

    /// The registered service `id`.
    pub fn service(&self, id: &str) -> Option<Service> {
        self.agent().services.get(id).cloned()
    }

    /// The ids of the registered services.
    pub fn service_ids(&self) -> Vec<String> {
        self.agent().services.keys().cloned().collect()
    }

    /// The status of check `id` (`passing`, `warning`, `critical`).
    pub fn check_status(&self, id: &str) -> Option<String> {
        self.agent().checks.get(id).map(|c| c.status.clone())
    }

    /// Registers a service as `PUT /v1/agent/service/register` with `definition` would.
    pub fn put_service(&self, definition: Value) {
        let mut agent = self.agent();
        put_service(&mut agent, &definition).unwrap();
        self.changed(&mut agent);
    }

    /// Forgets service `id` and its checks without a request (as an agent restarted without
    /// its state would).
    pub fn forget(&self, id: &str) {
        let mut agent = self.agent();
        agent.services.remove(id);
        agent.checks.retain(|_, c| c.service_id != id);
        self.changed(&mut agent);
    }

    /// Sets the index back to `index` (as a restore from a snapshot would).
    pub fn rewind_index(&self, index: u64) {
        let mut agent = self.agent();
        agent.index = index;
        self.shared.index.send_replace(index);
    }

    /// The health queries blocked now.
    pub fn blocked(&self) -> usize {
        self.shared.blocked.load(Ordering::SeqCst)
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.agent().requests.clone()
    }

    fn agent(&self) -> std::sync::MutexGuard<'_, Agent> {
        self.shared.agent.lock().unwrap()
    }

    fn changed(&self, agent: &mut Agent) {
        self.shared.changed(agent);
    }
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Shared {
    /// A change: the index moves on and blocked queries answer.
    fn changed(&self, agent: &mut Agent) {
        agent.index += 1;
        self.index.send_replace(agent.index);
    }

    /// Whether the request carries the token, if one is configured.
    fn authorize(
        &self,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
    ) -> Result<(), (StatusCode, &'static str)> {
        let Some(token) = &self.token else { return Ok(()) };
        let given = headers
            .get("x-consul-token")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            })
            .or(query.get("token").map(String::as_str));
        match given {
            Some(t) if t == token => Ok(()),
            Some(_) => Err((StatusCode::FORBIDDEN, "ACL not found")),
            None => Err((
                StatusCode::FORBIDDEN,
                "Permission denied: anonymous token lacks permission",
            )),
        }
    }

    fn log(&self, request: String) -> std::sync::MutexGuard<'_, Agent> {
        let mut agent = self.agent.lock().unwrap();
        agent.requests.push(request);
        agent
    }
}

fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, message.into()).into_response()
}

fn query_string(query: &HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    match pairs.is_empty() {
        true => String::new(),
        false => format!("?{}", pairs.join("&")),
    }
}

async fn register(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut agent = shared.log("PUT /v1/agent/service/register".into());
    if let Err(denied) = shared.authorize(&headers, &query) {
        return denied.into_response();
    }
    let definition: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("Request decode failed: {e}")),
    };
    match put_service(&mut agent, &definition) {
        Ok(()) => {
            shared.changed(&mut agent);
            StatusCode::OK.into_response()
        }
        Err(message) => bad_request(message),
    }
}

/// Stores a service definition (and its check), replacing one with its ID.
fn put_service(agent: &mut Agent, definition: &Value) -> Result<(), String> {
    let text = |key: &str| {
        definition
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let name = text("Name");
    if name.is_empty() {
        return Err("Missing service name".into());
    }
    let id = match text("ID") {
        id if id.is_empty() => name.clone(),
        id => id,
    };
    let mut meta = BTreeMap::new();
    if let Some(given) = definition.get("Meta").and_then(Value::as_object) {
        if given.len() > 64 {
            return Err("Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs".into());
        }
        for (k, v) in given {
            let v = v.as_str().ok_or("Invalid Service Meta: values are strings")?;
            if k.len() > 128 {
                return Err(format!(
                    "Invalid Service Meta: Key is too long (limit: 128 characters): {k}"
                ));
            }
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(format!("Invalid Service Meta: Key contains invalid characters: {k}"));
            }
            if k.starts_with("consul-") {
                return Err(format!("Invalid Service Meta: Key prefix 'consul-' is reserved: {k}"));
            }
            if v.len() > 512 {
                return Err(format!(
                    "Invalid Service Meta: Value is too long (limit: 512 characters): {k}"
                ));
            }
            meta.insert(k.clone(), v.to_owned());
        }
    }
    let tags = definition
        .get("Tags")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    let port = definition.get("Port").and_then(Value::as_u64).unwrap_or(0);
    let port = u16::try_from(port).map_err(|_| format!("Invalid port: {port}"))?;
    let mut check = None;
    if let Some(c) = definition.get("Check").filter(|c| !c.is_null()) {
        let field = |key: &str| c.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        let ttl =
            parse_go_duration(&field("TTL")).ok_or("Check types that are not TTL are not supported by this fake")?;
        let status = match field("Status").as_str() {
            "" => "critical".to_owned(),
            s @ ("passing" | "warning" | "critical") => s.to_owned(),
            s => return Err(format!("Invalid Check status: {s}")),
        };
        let deregister_after = match field("DeregisterCriticalServiceAfter").as_str() {
            "" => None,
            d => Some(parse_go_duration(d).ok_or(format!("Invalid DeregisterCriticalServiceAfter: {d}"))?),
        };
        let check_id = match field("CheckID") {
            c if c.is_empty() => format!("service:{id}"),
            c => c,
        };
        let now = Instant::now();
        check = Some(Check {
            name: match field("Name") {
                n if n.is_empty() => format!("Service '{name}' check"),
                n => n,
            },
            id: check_id,
            service_id: id.clone(),
            critical_since: (status == "critical").then_some(now),
            status,
            output: String::new(),
            ttl,
            expires: now + ttl,
            deregister_after,
        });
    }
    agent.checks.retain(|_, c| c.service_id != id);
    if let Some(check) = check {
        agent.checks.insert(check.id.clone(), check);
    }
    agent.services.insert(
        id.clone(),
        Service {
            id,
            name,
            tags,
            address: text("Address"),
            port,
            meta,
        },
    );
    Ok(())
}

async fn deregister(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut agent = shared.log(format!("PUT /v1/agent/service/deregister/{id}"));
    if let Err(denied) = shared.authorize(&headers, &query) {
        return denied.into_response();
    }
    if agent.services.remove(&id).is_none() {
        return (StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}")).into_response();
    }
    agent.checks.retain(|_, c| c.service_id != id);
    shared.changed(&mut agent);
    StatusCode::OK.into_response()
}

async fn update_check(
    State(shared): State<Arc<Shared>>,
    Path((verb, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut agent = shared.log(format!("PUT /v1/agent/check/{verb}/{id}"));
    if let Err(denied) = shared.authorize(&headers, &query) {
        return denied.into_response();
    }
    let status = match verb.as_str() {
        "pass" => "passing",
        "warn" => "warning",
        "fail" => "critical",
        _ => return (StatusCode::NOT_FOUND, "404 page not found").into_response(),
    };
    let now = Instant::now();
    let Some(check) = agent.checks.get_mut(&id) else {
        return (
            StatusCode::NOT_FOUND,
            format!("Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."),
        )
            .into_response();
    };
    let output = query.get("note").cloned().unwrap_or_default();
    check.expires = now + check.ttl;
    let changed = check.status != status || check.output != output;
    if check.status != status {
        check.critical_since = (status == "critical").then_some(now);
    }
    check.status = status.to_owned();
    check.output = output;
    if changed {
        shared.changed(&mut agent);
    }
    StatusCode::OK.into_response()
}

/// Counts a blocked query while it lives.
struct Blocked<'s>(&'s AtomicUsize);

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn health(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    drop(shared.log(format!("GET /v1/health/service/{name}{}", query_string(&query))));
    if let Err(denied) = shared.authorize(&headers, &query) {
        return denied.into_response();
    }
    let passing = query.get("passing").is_some_and(|v| v != "false");
    let index = match query.get("index").map(|i| i.parse::<u64>()) {
        None => 0,
        Some(Ok(i)) => i,
        Some(Err(_)) => return bad_request("Invalid index"),
    };
    if index > 0 {
        let wait = match query.get("wait") {
            None => Duration::from_secs(300),
            Some(w) => match parse_go_duration(w) {
                Some(w) => w.min(Duration::from_secs(600)),
                None => return bad_request(format!("Invalid wait time: {w}")),
            },
        };
        let wait = wait + Duration::from_nanos(fastrand::u64(..=(wait / 16).as_nanos() as u64));
        let deadline = Instant::now() + wait;
        let mut changes = shared.index.subscribe();
        shared.blocked.fetch_add(1, Ordering::SeqCst);
        let _blocked = Blocked(&shared.blocked);
        while *changes.borrow_and_update() <= index {
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    }
    let agent = shared.agent.lock().unwrap();
    let node_check = json!({
        "Node": NODE, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
        "Notes": "", "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
    });
    let mut entries = Vec::new();
    for service in agent.services.values().filter(|s| s.name == name) {
        let checks: Vec<&Check> = agent.checks.values().filter(|c| c.service_id == service.id).collect();
        if passing && checks.iter().any(|c| c.status != "passing") {
            continue;
        }
        let mut listed = vec![node_check.clone()];
        listed.extend(checks.iter().map(|c| {
            json!({
                "Node": NODE, "CheckID": c.id, "Name": c.name, "Status": c.status, "Notes": "",
                "Output": c.output, "ServiceID": service.id, "ServiceName": service.name,
                "ServiceTags": service.tags, "Type": "ttl",
            })
        }));
        entries.push(json!({
            "Node": {"ID": "00000000-0000-0000-0000-000000000001", "Node": NODE, "Address": "127.0.0.1", "Datacenter": "dc1", "Meta": {}},
            "Service": {
                "ID": service.id, "Service": service.name, "Tags": service.tags, "Address": service.address,
                "Meta": service.meta, "Port": service.port,
            },
            "Checks": listed,
        }));
    }
    let index = agent.index.max(1);
    drop(agent);
    (
        StatusCode::OK,
        [
            ("X-Consul-Index", index.to_string()),
            ("Content-Type", "application/json".to_owned()),
        ],
        serde_json::to_string(&entries).unwrap(),
    )
        .into_response()
}

/// Turns TTL checks not updated in time critical, and removes services critical for longer
/// than their `DeregisterCriticalServiceAfter`.
async fn reap(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = Instant::now();
        let mut agent = shared.agent.lock().unwrap();
        let mut changed = false;
        for check in agent.checks.values_mut() {
            if check.expires <= now && check.status != "critical" {
                check.status = "critical".into();
                check.output = "TTL expired".into();
                check.critical_since = Some(now);
                changed = true;
            }
        }
        let reaped: Vec<String> = agent
            .checks
            .values()
            .filter(|c| match (c.critical_since, c.deregister_after) {
                (Some(since), Some(after)) => since + after <= now,
                _ => false,
            })
            .map(|c| c.service_id.clone())
            .collect();
        for id in reaped {
            agent.services.remove(&id);
            agent.checks.retain(|_, c| c.service_id != id);
            changed = true;
        }
        if changed {
            shared.changed(&mut agent);
        }
    }
}

/// A Go duration of one unit: `10s`, `500ms`, `1m`, `1h`, `250us`, `0`.
fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}
