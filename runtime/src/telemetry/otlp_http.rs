//! The HTTP client of the OTLP/HTTP exporter: HTTP/1.1 over hyper, on a thread of its
//! own. The SDK exports from its batch thread (outside any runtime) or, with
//! `export_each_span`, from whichever thread ends a span (blocking it): a runtime of our own
//! serves both without depending on the application's. One kept-alive connection, over TLS
//! to an `https` endpoint.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;

/// A collector's answer is an `Export…ServiceResponse`: small. Past this it is refused.
const MAX_RESPONSE: usize = 1024 * 1024;

type Reply = Result<Response<Bytes>, HttpError>;
type Job = (Request<Bytes>, oneshot::Sender<Reply>);

/// Sends each request through the exporter's thread; the thread ends when this is dropped.
#[derive(Clone)]
pub(crate) struct OtlpHttpClient {
    jobs: mpsc::Sender<Job>,
}

// Requests carry `OTEL_EXPORTER_OTLP_HEADERS` (tokens): nothing of them is shown.
impl fmt::Debug for OtlpHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpHttpClient").finish_non_exhaustive()
    }
}

impl OtlpHttpClient {
    /// Starts the exporter's thread; each request may take `timeout` (connecting included).
    /// `tls`: how `https` endpoints are reached (an `https` request without it fails).
    pub(crate) fn start(timeout: Duration, tls: Option<Arc<ClientConfig>>) -> std::io::Result<Self> {
        let tls = tls.map(TlsConnector::from);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (jobs, mut rx) = mpsc::channel::<Job>(16);
        std::thread::Builder::new().name("otlp-http".into()).spawn(move || {
            runtime.block_on(async move {
                let mut conn = None;
                while let Some((request, reply)) = rx.recv().await {
                    let sent = match tokio::time::timeout(timeout, send(&mut conn, tls.as_ref(), request)).await {
                        Ok(sent) => sent,
                        Err(_) => {
                            conn = None; // its state is unknown
                            Err(format!("no answer from the OTLP collector within {timeout:?}").into())
                        }
                    };
                    let _ = reply.send(sent);
                }
            });
        })?;
        Ok(Self { jobs })
    }
}

impl HttpClient for OtlpHttpClient {
    fn send_bytes<'a, 'b>(&'a self, request: Request<Bytes>) -> Pin<Box<dyn Future<Output = Reply> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let gone = || HttpError::from("the OTLP/HTTP exporter's thread has stopped");
            self.jobs.send((request, tx)).await.map_err(|_| gone())?;
            rx.await.map_err(|_| gone())?
        })
    }
}

/// One request on the kept connection (opened first if there is none or it closed), the
/// answer's body read whole up to [`MAX_RESPONSE`].
async fn send(
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    tls: Option<&TlsConnector>,
    request: Request<Bytes>,
) -> Reply {
    let (mut parts, body) = request.into_parts();
    let authority = parts.uri.authority().ok_or("the OTLP endpoint has no host")?.clone();
    let tls = match parts.uri.scheme_str() {
        Some("https") => Some(tls.ok_or("an https endpoint, and no TLS set up for it")?),
        _ => None,
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = authority.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
    let to = Peer { host: &host, port, tls };
    // HTTP/1.1 wants the path in the request line and the host (never any user info) apart.
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = target.parse()?;
    let host_header = match authority.port() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    parts.headers.insert(hyper::header::HOST, host_header.parse()?);
    let request = Request::from_parts(parts, Full::new(body));

    let kept = match conn.take() {
        Some(mut kept) => kept.ready().await.is_ok().then_some(kept),
        None => None,
    };
    let mut sender = match kept {
        Some(kept) => kept,
        None => to.connect().await?,
    };
    let response = match sender.try_send_request(request).await {
        Ok(response) => response,
        Err(mut failed) => match failed.take_message() {
            // The kept connection closed before the request left: once more on a new one.
            Some(request) => {
                sender = to.connect().await?;
                sender.send_request(request).await?
            }
            None => return Err(failed.into_error().into()),
        },
    };
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_RESPONSE).collect().await?.to_bytes();
    *conn = Some(sender);
    Ok(Response::from_parts(parts, body))
}

/// Where requests go: the collector's host and port, and the TLS to reach it with, if any.
struct Peer<'a> {
    host: &'a str,
    port: u16,
    tls: Option<&'a TlsConnector>,
}

impl Peer<'_> {
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        let (host, port) = (self.host, self.port);
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connecting to the OTLP collector at {host}:{port}: {e}"))?;
        stream.set_nodelay(true)?;
        let Some(tls) = self.tls else {
            return handshake(stream).await;
        };
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| format!("the OTLP collector's host {host}: {e}"))?;
        let stream = tls
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with the OTLP collector at {host}:{port}: {e}"))?;
        handshake(stream).await
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the collector closes or the sender is dropped; an error only ends it.
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A collector that answers each request with `answer` and then closes the connection;
    /// each request's head as it came, in order.
    async fn closing_collector(answer: &'static [u8]) -> (u16, mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
                let _ = stream.write_all(answer).await;
                let _ = stream.shutdown().await;
            }
        });
        (port, rx)
    }

    fn post(url: &str) -> Request<Bytes> {
        Request::post(url)
            .header("authorization", "Bearer hunter2")
            .body(Bytes::new())
            .unwrap()
    }

    #[tokio::test]
    async fn a_new_connection_when_the_collector_closed_its_own() {
        let (port, mut heads) =
            closing_collector(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
        let client = OtlpHttpClient::start(Duration::from_secs(5), None).unwrap();
        for _ in 0..2 {
            let url = format!("http://user:pw@127.0.0.1:{port}/v1/traces");
            let response = client.send_bytes(post(&url)).await.unwrap();
            assert_eq!(response.body().as_ref(), b"ok");
            let head = heads.recv().await.unwrap();
            assert!(head.starts_with("POST /v1/traces HTTP/1.1\r\n"), "{head}");
            // The host alone: user info is not sent.
            assert!(
                head.contains(&format!("host: 127.0.0.1:{port}\r\n")) && !head.contains("user"),
                "{head}"
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_answer_is_an_error() {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", MAX_RESPONSE + 1);
        let mut answer = head.into_bytes();
        answer.resize(answer.len() + MAX_RESPONSE + 1, b'x');
        let (port, _heads) = closing_collector(answer.leak()).await;
        let client = OtlpHttpClient::start(Duration::from_secs(5), None).unwrap();
        let url = format!("http://127.0.0.1:{port}/v1/traces");
        assert!(client.send_bytes(post(&url)).await.is_err());
    }

    #[tokio::test]
    async fn an_unreachable_collector_is_an_error_without_the_headers() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = OtlpHttpClient::start(Duration::from_secs(5), None).unwrap();
        let err = client
            .send_bytes(post(&format!("http://127.0.0.1:{port}/v1/traces")))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("connecting to the OTLP collector at 127.0.0.1:{port}: ")),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(format!("{client:?}"), "OtlpHttpClient { .. }");
    }
}
