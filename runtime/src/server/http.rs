//! The service's own HTTP endpoint (feature `http`), for load balancers, orchestrators and
//! service registries: [`Microservice::health_http`](super::Microservice::health_http).
//!
//! - `GET /health`: 200 with the [`HealthReport`](crate::server::HealthReport) JSON while the
//!   service is ready, 503 with it otherwise (a Consul HTTP check, a load balancer);
//! - `GET /health/ready`: the same (a Kubernetes readiness probe);
//! - `GET /health/live`: 200 while the service is live, 503 once a transport stopped on its
//!   own (a Kubernetes liveness probe);
//! - `GET /metrics` (feature `metrics`): every metric in Prometheus' text format, once
//!   [`metrics::install`](crate::metrics::install) set the recorder up (404 before).
//!
//! `HEAD` works as `GET`; another method on those paths is 405, any other path 404. It faces
//! whoever can reach its port, so it is bounded: HTTP/1.1 only, one request per connection
//! (no keep-alive), the request head within 10 s (a slow client is cut off), at most 32
//! headers in 4 KiB (431 beyond), request bodies never read, and at most 256 connections at
//! once (more are closed at once, as the TCP transport does). With the `tls` feature it
//! serves `https://` too, its certificate and key named as `tls://` names them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1::Builder;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{Error, Result};
use crate::transport::health::{Health, HealthReport};

/// How long a client has to send its request head.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection lives, whatever it does (its head, then one small response).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(15);
/// Connections served at once; more are closed at once.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// The request line and headers together, in bytes.
const MAX_HEADER_BYTES: usize = 4 * 1024;
/// Headers in one request.
const MAX_HEADERS: usize = 32;
/// The socket's listen queue.
const BACKLOG: u32 = 128;

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
/// The Prometheus text exposition format.
#[cfg(feature = "metrics")]
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `GET path` answers: its status, content type and body. One arm per path, so that
/// another path (`/metrics`) is one more arm.
fn respond(path: &str, health: &Health) -> (StatusCode, &'static str, Bytes) {
    match path {
        // Consul's check, a load balancer's, a readiness probe.
        "/health" | "/health/ready" => report(health.report(), |r| r.ready),
        "/health/live" => report(health.report(), |r| r.live),
        // Prometheus' scrape, once `metrics::install` set the recorder up.
        #[cfg(feature = "metrics")]
        "/metrics" => match crate::metrics::render() {
            Some(text) => (StatusCode::OK, PROMETHEUS, Bytes::from(text)),
            None => (
                StatusCode::NOT_FOUND,
                TEXT,
                Bytes::from_static(b"metrics::install was not called\n"),
            ),
        },
        _ => (StatusCode::NOT_FOUND, TEXT, Bytes::from_static(b"not found\n")),
    }
}

/// The report as JSON, 200 when `up` says so and 503 otherwise.
fn report(report: HealthReport, up: impl Fn(&HealthReport) -> bool) -> (StatusCode, &'static str, Bytes) {
    let status = match up(&report) {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    // Strings and booleans: serialising cannot fail.
    (
        status,
        JSON,
        Bytes::from(serde_json::to_vec(&report).unwrap_or_default()),
    )
}

/// The response to `method path`.
fn handle(method: &Method, path: &str, health: &Health) -> Response<Full<Bytes>> {
    let (mut status, mut content_type, mut body) = respond(path, health);
    let allowed = matches!(*method, Method::GET | Method::HEAD);
    if !allowed && status != StatusCode::NOT_FOUND {
        (status, content_type, body) = (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            Bytes::from_static(b"method not allowed\n"),
        );
    }
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// The running endpoint; dropped, it stops.
#[derive(Debug)]
pub(crate) struct HttpEndpoint {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpEndpoint {
    /// Binds `addr` (`host:port`, port 0 for any; `http://host:port`, or, with the `tls`
    /// feature, `https://host:port?cert=<PEM file>&key=<PEM file>`) and serves `health` on it.
    pub(crate) async fn start(addr: &str, health: Health) -> Result<Self> {
        let (scheme, authority, tls) = match addr.contains("://") {
            false => ("http", addr.trim_end_matches('/').to_owned(), None),
            true => {
                let ep = crate::transport::Endpoint::parse(addr)?;
                let tls = match ep.scheme.as_str() {
                    "http" => None,
                    #[cfg(feature = "tls")]
                    "https" => Some(crate::transport::tcp::tls::acceptor(&ep)?),
                    #[cfg(not(feature = "tls"))]
                    "https" => return Err(invalid(&ep, "https:// needs switchboard's `tls` feature")),
                    _ => return Err(invalid(&ep, "the health endpoint is http:// or https://")),
                };
                let scheme = if tls.is_some() { "https" } else { "http" };
                (scheme, ep.authority, tls)
            }
        };
        let shown = crate::transport::redact(&format!("{scheme}://{authority}"));
        let cannot = |e| Error::io(format!("cannot listen on {shown}"), e);
        let listener = crate::transport::listen(&authority, BACKLOG).await.map_err(cannot)?;
        let addr = listener.local_addr().map_err(cannot)?;
        let task = tokio::spawn(serve(listener, tls, health, MAX_CONNECTIONS));
        tracing::info!(url = %format_args!("{scheme}://{addr}"), "health endpoint listening");
        Ok(HttpEndpoint { addr, task })
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it, and returns once its port is closed.
    pub(crate) async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for HttpEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Warnings about refused connections, at most this many a second.
static REFUSED: crate::text::Throttle = crate::text::Throttle::new(10);

/// What answers `https://`; nothing can be one without the `tls` feature.
#[cfg(feature = "tls")]
type Acceptor = tokio_rustls::TlsAcceptor;
#[cfg(not(feature = "tls"))]
type Acceptor = Infallible;

fn invalid(ep: &crate::transport::Endpoint, reason: &str) -> Error {
    Error::InvalidUrl {
        url: ep.redacted(),
        reason: reason.to_owned(),
    }
}

/// Accepts connections until aborted; each answers one request.
async fn serve(listener: tokio::net::TcpListener, tls: Option<Acceptor>, health: Health, max_connections: usize) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEADER_BYTES)
        // hyper's least: the head is bounded by the line above, and bodies are never read.
        .max_buf_size(8 * 1024);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if conns.len() >= max_connections {
                        if let Some(held_back) = REFUSED.allow() {
                            tracing::warn!(%peer, max_connections, held_back, "refusing a health endpoint connection: it has as many as it takes");
                        }
                        continue;
                    }
                    let (http, health) = (http.clone(), health.clone());
                    let answered = match tls.clone() {
                        None => answer(http, stream, health).boxed(),
                        #[cfg(feature = "tls")]
                        Some(acceptor) => async move {
                            let stream = acceptor.accept(stream).await.map_err(|e| format!("TLS handshake failed: {e}"))?;
                            answer(http, stream, health).await
                        }
                        .boxed(),
                        #[cfg(not(feature = "tls"))]
                        Some(never) => match never {},
                    };
                    // The whole connection, its TLS handshake included, within the deadline.
                    conns.spawn(async move {
                        match tokio::time::timeout(CONNECTION_DEADLINE, answered).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "health endpoint connection failed"),
                            Err(_) => tracing::debug!(%peer, "health endpoint connection cut off after {CONNECTION_DEADLINE:?}"),
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "health endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Answers the one request of a connection.
async fn answer<I>(http: Builder, io: I, health: Health) -> std::result::Result<(), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        std::future::ready(Ok::<_, Infallible>(handle(req.method(), req.uri().path(), &health)))
    });
    http.serve_connection(TokioIo::new(io), service)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;

    use super::*;
    use crate::transport::Shutdown;

    fn status(path: &str, health: &Health) -> StatusCode {
        respond(path, health).0
    }

    #[test]
    fn each_path_answers_by_its_own_criterion() {
        let (stop, shutdown) = Shutdown::new();
        let health = Health::new(None, &shutdown);
        let (broker, ready) = watch::channel(true);
        let _serving = health.watch_transports(vec![("redis://127.0.0.1:1".into(), Some(ready))]);
        for path in ["/health", "/health/ready", "/health/live"] {
            assert_eq!(status(path, &health), StatusCode::OK, "{path}");
        }
        let (_, content_type, body) = respond("/health", &health);
        assert_eq!(content_type, JSON);
        let report: HealthReport = serde_json::from_slice(&body).unwrap();
        assert!(report.ready && report.transports[0].ready);

        broker.send_replace(false);
        assert_eq!(status("/health", &health), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status("/health/ready", &health), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status("/health/live", &health), StatusCode::OK);
        let report: HealthReport = serde_json::from_slice(&respond("/health", &health).2).unwrap();
        assert!(!report.ready && report.live, "the body says why: {report:?}");

        broker.send_replace(true);
        stop.send_replace(true);
        assert_eq!(status("/health", &health), StatusCode::SERVICE_UNAVAILABLE, "draining");
        assert_eq!(
            status("/health/live", &health),
            StatusCode::OK,
            "draining is still live"
        );

        for path in ["/", "/health/", "/healthz", "/health/ready/x", "/metrics"] {
            assert_eq!(status(path, &health), StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[test]
    fn only_get_and_head() {
        let (_stop, shutdown) = Shutdown::new();
        let health = Health::new(None, &shutdown);
        assert_eq!(handle(&Method::HEAD, "/health", &health).status(), StatusCode::OK);
        let post = handle(&Method::POST, "/health", &health);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
        assert_eq!(
            handle(&Method::DELETE, "/nope", &health).status(),
            StatusCode::NOT_FOUND
        );
    }

    /// Sends `request` on a new connection; everything the server writes back.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn endpoint(max_connections: usize) -> SocketAddr {
        let (_stop, shutdown) = Shutdown::new();
        let health = Health::new(None, &shutdown);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, None, health, max_connections));
        addr
    }

    #[tokio::test]
    async fn too_many_headers_or_too_large_a_head_is_refused() {
        let addr = endpoint(4).await;
        let many: String = (0..40).map(|i| format!("x-h{i}: 1\r\n")).collect();
        let answer = exchange(
            addr,
            format!("GET /health HTTP/1.1\r\nhost: a\r\n{many}\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        let big = "a".repeat(5000);
        let answer = exchange(
            addr,
            format!("GET /health HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        let answer = exchange(addr, b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains("connection: close"),
            "one request per connection: {answer}"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let addr = endpoint(1).await;
        // Holds the only place: connected, sending nothing.
        let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            exchange(addr, b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n").await,
            "",
            "closed unanswered"
        );
        drop(idle);
        // Once the server has seen the idle one go, the place is free again.
        let mut answer = String::new();
        for _ in 0..200 {
            answer = exchange(addr, b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n").await;
            if !answer.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn https_answers_over_tls_and_only_over_tls() {
        use rustls_pki_types::ServerName;
        use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};

        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
        let (_stop, shutdown) = Shutdown::new();
        let health = Health::new(None, &shutdown);
        let url = format!(
            "https://127.0.0.1:0?cert={}&key={}",
            cert_file.display(),
            key_file.display()
        );
        let endpoint = HttpEndpoint::start(&url, health.clone()).await.unwrap();

        let mut roots = RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let config = ClientConfig::builder_with_provider(std::sync::Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(endpoint.addr()).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        // The server closes after its one answer, perhaps without a TLS close_notify.
        let _ = tls.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(r#""ready":true"#), "{answer}");

        let plain = exchange(endpoint.addr(), b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n").await;
        assert!(!plain.contains("HTTP/1.1"), "no answer in plain HTTP: {plain}");

        let no_key = format!("https://127.0.0.1:0?cert={}", cert_file.display());
        let err = HttpEndpoint::start(&no_key, health.clone()).await.unwrap_err();
        assert!(err.to_string().contains("https:// needs `key="), "{err}");
        let err = HttpEndpoint::start("tcp://127.0.0.1:0", health).await.unwrap_err();
        assert!(err.to_string().contains("http:// or https://"), "{err}");
    }
}
