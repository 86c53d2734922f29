//! Switchboard's spans on their way to the collector: a bounded queue filled by every thread
//! that ends a span, drained in batches by a thread of its own that encodes them
//! ([`Encoder`]) and sends them over OTLP (gRPC or HTTP), as the SDK's batch processor does for
//! the application's spans, without turning each span into the SDK's structures first.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::encode::Encoder;
use super::otlp_http::OtlpHttpClient;
use super::record::SpanRecord;
use super::sampler::Sampler;
use crate::error::{Error, Result};

/// The batch processor's settings: the `OTEL_BSP_*` variables, with the specification's
/// defaults.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    pub(crate) max_queue: usize,
    pub(crate) max_batch: usize,
    pub(crate) delay: Duration,
    /// Export each span as it ends (`export_each_span`).
    pub(crate) each: bool,
}

impl Batching {
    pub(crate) fn from_env(env: &dyn Fn(&str) -> Option<String>, each: bool) -> Batching {
        let num = |var: &str, default: u64| {
            env(var)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&n| n > 0)
                .unwrap_or(default)
        };
        let max_queue = num("OTEL_BSP_MAX_QUEUE_SIZE", 2048).min(1 << 20) as usize;
        Batching {
            max_queue,
            max_batch: (num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512) as usize).min(max_queue),
            delay: Duration::from_millis(num("OTEL_BSP_SCHEDULE_DELAY", 5000)),
            each,
        }
    }
}

/// Where ended spans go: read by every span, so it is `'static` (one per `init`, never freed).
pub(crate) struct Recorder {
    pub(crate) sampler: Sampler,
    batching: Batching,
    queue: Mutex<Queue>,
    /// Wakes the exporter's thread: a batch is full, a flush is asked for, or it should stop.
    wake: Condvar,
    /// Wakes those waiting for a flush.
    flushed: Condvar,
    /// Spans refused because the queue was full.
    dropped: AtomicU64,
    stopped: AtomicBool,
    /// The recorder that was active when this one started, active again when this one stops
    /// (a second `init` that fails must not turn off the first's spans).
    previous: Option<&'static Recorder>,
}

#[derive(Default)]
struct Queue {
    spans: Vec<SpanRecord>,
    /// Flushes asked for, and done: a flush waits until `done` reaches what it asked.
    asked: u64,
    done: u64,
    /// The last export's failure, for a flush to report.
    failure: Option<String>,
}

/// The recorder in use, null when nothing exports Switchboard's spans.
static ACTIVE: AtomicPtr<Recorder> = AtomicPtr::new(std::ptr::null_mut());

/// The recorder spans go to, if Switchboard's spans are exported and ever sampled.
#[inline]
pub(crate) fn recorder() -> Option<&'static Recorder> {
    let active = ACTIVE.load(Ordering::Acquire);
    // SAFETY: only ever set to a leaked `Box<Recorder>`, which lives as long as the process.
    unsafe { active.as_ref() }
}

impl Recorder {
    /// Queues an ended span for export; an unsampled span is dropped here, a span that finds
    /// the queue full is counted and dropped.
    pub(crate) fn record(&self, span: SpanRecord) {
        if !span.sampled() || self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.spans.len() >= self.batching.max_queue {
            drop(queue);
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    max_queue = self.batching.max_queue,
                    "switchboard's span queue is full: spans are dropped (OTEL_BSP_MAX_QUEUE_SIZE)"
                );
            }
            return;
        }
        queue.spans.push(span);
        let full = queue.spans.len() == self.batching.max_batch;
        drop(queue);
        if full || self.batching.each {
            self.wake.notify_one();
        }
    }

    /// Spans dropped so far: the queue was full, or their export failed.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Exports every span queued so far; the last export's failure if it failed.
    pub(crate) fn flush(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.asked += 1;
        let asked = queue.asked;
        self.wake.notify_one();
        while queue.done < asked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stopped.load(Ordering::Relaxed) {
                return Err(super::config(format!("the spans were not exported within {within:?}")));
            }
            queue = self
                .flushed
                .wait_timeout(queue, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        match queue.failure.take() {
            Some(failure) => Err(super::config(failure)),
            None => Ok(()),
        }
    }

    /// Flushes, then stops the exporter's thread; spans ended later are dropped.
    pub(crate) fn stop(&'static self, within: Duration) {
        if let Err(e) = self.flush(within) {
            tracing::debug!(error = %e, "telemetry shutdown");
        }
        let previous = self
            .previous
            .filter(|p| !p.stopped.load(Ordering::Relaxed))
            .map_or(std::ptr::null_mut(), |p| p as *const Recorder as *mut Recorder);
        let _ = ACTIVE.compare_exchange(
            self as *const Recorder as *mut Recorder,
            previous,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        // Under the lock: the exporter's thread cannot be between its check and its wait.
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.stopped.store(true, Ordering::Relaxed);
        drop(queue);
        self.wake.notify_one();
    }
}

/// Starts exporting Switchboard's spans with `sender` and makes the recorder the active one.
pub(crate) fn start(
    sampler: Sampler,
    batching: Batching,
    encoder: Encoder,
    sender: Sender,
) -> Result<&'static Recorder> {
    let recorder = spawn(sampler, batching, encoder, sender)?;
    ACTIVE.store(recorder as *const Recorder as *mut Recorder, Ordering::Release);
    Ok(recorder)
}

/// A recorder and its exporter's thread, not yet the active one.
fn spawn(sampler: Sampler, batching: Batching, encoder: Encoder, sender: Sender) -> Result<&'static Recorder> {
    super::record::warm_up();
    let recorder: &'static Recorder = Box::leak(Box::new(Recorder {
        sampler,
        batching,
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        flushed: Condvar::new(),
        dropped: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        previous: recorder(),
    }));
    // The runtime is made, used and dropped on the exporter's thread: dropping one on the
    // caller's (inside its own runtime) would panic.
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("switchboard-spans".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready.send(Err(super::config(format!("cannot start the span exporter: {e}"))));
                    return;
                }
            };
            let connected = {
                let _inside = runtime.enter();
                sender.connect()
            };
            match connected {
                Ok(sender) => {
                    let _ = ready.send(Ok(()));
                    drain(recorder, &runtime, &encoder, &sender);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })
        .map_err(|e| super::config(format!("cannot start the span exporter's thread: {e}")))?;
    started
        .recv()
        .unwrap_or_else(|_| Err(super::config("the span exporter's thread stopped".to_owned())))?;
    Ok(recorder)
}

/// The exporter's thread: waits for a full batch, a flush or the delay, then sends what is
/// queued in batches.
fn drain(recorder: &'static Recorder, runtime: &tokio::runtime::Runtime, encoder: &Encoder, sender: &Connected) {
    let mut spare = Vec::new();
    let mut failing = false;
    loop {
        let mut queue = recorder.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut waited = Duration::ZERO;
        let since = Instant::now();
        // Export each span as it ends, or wait for a full batch, a flush, a stop or the delay.
        let idle = |queue: &Queue| match recorder.batching.each {
            true => queue.spans.is_empty(),
            false => queue.spans.len() < recorder.batching.max_batch,
        };
        while idle(&queue)
            && queue.asked == queue.done
            && !recorder.stopped.load(Ordering::Relaxed)
            && waited < recorder.batching.delay
        {
            queue = recorder
                .wake
                .wait_timeout(queue, recorder.batching.delay - waited)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            waited = since.elapsed();
        }
        let asked = queue.asked;
        let stop = recorder.stopped.load(Ordering::Relaxed);
        super::record::anchor();
        // Everything queued is taken at once (draining a batch from the front would move the
        // rest each time), then sent in batches, a few at a time.
        let taken = std::mem::replace(&mut queue.spans, std::mem::take(&mut spare));
        drop(queue);
        let (failure, lost) = runtime.block_on(send_all(sender, encoder, &taken, recorder.batching.max_batch));
        recorder.dropped.fetch_add(lost, Ordering::Relaxed);
        if let Some(e) = &failure
            && !failing
        {
            tracing::warn!(error = %e, "cannot export spans");
        }
        failing = failure.is_some();
        spare = taken;
        spare.clear();
        let mut queue = recorder.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.done = asked;
        // What a flush reports: how the exports it waited for went.
        queue.failure = failure.map(|e| e.to_string());
        drop(queue);
        recorder.flushed.notify_all();
        if stop {
            return;
        }
    }
}

/// Exports sent at once, each waiting for the collector's answer.
const IN_FLIGHT: usize = 4;

/// Sends `spans` in batches of `max_batch`, [`IN_FLIGHT`] at a time; after a failure the rest
/// is not tried (the collector is down or refusing). The failure and the spans not exported.
async fn send_all(
    sender: &Connected,
    encoder: &Encoder,
    spans: &[SpanRecord],
    max_batch: usize,
) -> (Option<Error>, u64) {
    use futures_util::StreamExt;
    let mut sending = futures_util::stream::FuturesUnordered::new();
    let mut failure = None;
    let mut lost = 0;
    let mut batches = spans.chunks(max_batch);
    loop {
        if failure.is_none()
            && sending.len() < IN_FLIGHT
            && let Some(batch) = batches.next()
        {
            let mut body = Vec::new();
            sender.encode(encoder, batch, &mut body);
            let n = batch.len() as u64;
            sending.push(async move { sender.send(Bytes::from(body)).await.map_err(|e| (e, n)) });
            continue;
        }
        match sending.next().await {
            Some(Ok(())) => {}
            Some(Err((e, n))) => {
                lost += n;
                failure = Some(e);
            }
            None => break,
        }
    }
    lost += batches.map(|b| b.len() as u64).sum::<u64>();
    (failure, lost)
}

/// Who sends: the collector tells Switchboard's exports from the SDK's.
const USER_AGENT: &str = concat!("switchboard/", env!("CARGO_PKG_VERSION"));

/// How a batch reaches the collector.
pub(crate) enum Sender {
    Grpc {
        endpoint: String,
        tls: Option<tonic::transport::ClientTlsConfig>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    },
    Http(Http),
}

/// OTLP/HTTP: the same whether configured or ready.
pub(crate) struct Http {
    pub(crate) url: String,
    pub(crate) json: bool,
    pub(crate) client: OtlpHttpClient,
    pub(crate) headers: Vec<(String, String)>,
}

/// A sender ready to send (the gRPC channel made, lazily connected).
pub(crate) enum Connected {
    Grpc {
        channel: tonic::transport::Channel,
        headers: tonic::metadata::MetadataMap,
    },
    Http(Http),
}

impl Sender {
    /// Inside the exporter's runtime: the gRPC channel's connection is driven there.
    fn connect(self) -> Result<Connected> {
        match self {
            Sender::Grpc {
                endpoint,
                tls,
                headers,
                timeout,
            } => {
                let bad = || super::config("the OTLP endpoint is not a URL".to_owned());
                let mut at = tonic::transport::Endpoint::from_shared(endpoint)
                    .map_err(|_| bad())?
                    .timeout(timeout)
                    .connect_timeout(timeout)
                    .user_agent(USER_AGENT)
                    .map_err(|_| bad())?;
                if let Some(tls) = tls {
                    at = at
                        .tls_config(tls)
                        .map_err(|e| super::config(format!("OTLP over TLS: {e}")))?;
                }
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (key, value) in headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes());
                    let value = tonic::metadata::MetadataValue::try_from(value.as_str());
                    match (key, value) {
                        (Ok(key), Ok(value)) => {
                            metadata.insert(key, value);
                        }
                        // Neither is quoted: a header may be a token.
                        _ => {
                            return Err(super::config(
                                "OTEL_EXPORTER_OTLP_HEADERS holds a header gRPC cannot carry".to_owned(),
                            ));
                        }
                    }
                }
                Ok(Connected::Grpc {
                    channel: at.connect_lazy(),
                    headers: metadata,
                })
            }
            Sender::Http(http) => Ok(Connected::Http(http)),
        }
    }
}

impl Connected {
    fn encode(&self, encoder: &Encoder, spans: &[SpanRecord], out: &mut Vec<u8>) {
        match self {
            Connected::Http(Http { json: true, .. }) => encoder.json(spans, out),
            _ => encoder.protobuf(spans, out),
        }
    }

    async fn send(&self, body: Bytes) -> std::result::Result<(), Error> {
        let failed = |reason: String| Error::InvalidConfig {
            what: "telemetry",
            reason,
        };
        match self {
            Connected::Grpc { channel, headers } => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                grpc.ready()
                    .await
                    .map_err(|e| failed(format!("cannot reach the OTLP collector: {e}")))?;
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = headers.clone();
                let path =
                    http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
                grpc.unary::<_, (), _>(request, path, Raw)
                    .await
                    .map(drop)
                    .map_err(|status| failed(format!("the OTLP collector refused spans: {}", status.code())))
            }
            Connected::Http(Http {
                url,
                json,
                client,
                headers,
            }) => {
                use opentelemetry_http::HttpClient;
                let mut request = http::Request::post(url.as_str())
                    .header(http::header::USER_AGENT, USER_AGENT)
                    .header(
                        http::header::CONTENT_TYPE,
                        match json {
                            true => "application/json",
                            false => "application/x-protobuf",
                        },
                    );
                for (key, value) in headers {
                    request = request.header(key.as_str(), value.as_str());
                }
                let request = request
                    .body(body)
                    .map_err(|_| failed("OTEL_EXPORTER_OTLP_HEADERS holds a header HTTP cannot carry".to_owned()))?;
                let answer = client
                    .send_bytes(request)
                    .await
                    .map_err(|e| failed(format!("cannot export spans: {e}")))?;
                match answer.status().is_success() {
                    true => Ok(()),
                    false => Err(failed(format!("the OTLP collector answered {}", answer.status()))),
                }
            }
        }
    }
}

/// A gRPC codec for bodies already encoded; the collector's answer is not read.
#[derive(Debug, Clone, Copy)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> std::result::Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> std::result::Result<Option<()>, tonic::Status> {
        use bytes::Buf;
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs
/// separated by commas, values %-decoded, as the specification writes them.
pub(crate) fn headers(env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let Some((_, list)) = super::signal_var(env, "HEADERS") else {
        return Vec::new();
    };
    list.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then(|| {
                // A value whose escapes do not decode is taken as written.
                let value = value.trim();
                (
                    key.to_owned(),
                    crate::transport::percent_decode(value).unwrap_or_else(|| value.to_owned()),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn headers_are_pairs_with_decoded_values() {
        let vars = [("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b%2Cc, x=1,broken,=v")];
        let env = crate::telemetry::tests::env(&vars);
        assert_eq!(
            headers(&env),
            [
                ("api-key".to_owned(), "a b,c".to_owned()),
                ("x".to_owned(), "1".to_owned())
            ]
        );
    }

    fn span(n: u8, flags: u8) -> SpanRecord {
        SpanRecord {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: [0; 8],
            parent_is_remote: false,
            flags,
            trace_state: None,
            kind: super::super::record::SpanKind::Server,
            name: "r".into(),
            destination: "r".into(),
            system: "tcp",
            body_size: None,
            error_type: None,
            link: None,
            start: 1,
            end: 2,
        }
    }

    /// A collector on 127.0.0.1 that answers each POST with `status` and counts the spans.
    async fn collector(status: u16) -> (String, Arc<AtomicU64>) {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let spans = Arc::new(AtomicU64::new(0));
        let counted = spans.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let counted = counted.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let counted = counted.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await?.to_bytes();
                        let request = ExportTraceServiceRequest::decode(body).expect("protobuf");
                        let n: usize = request
                            .resource_spans
                            .iter()
                            .flat_map(|r| &r.scope_spans)
                            .map(|s| s.spans.len())
                            .sum();
                        counted.fetch_add(n as u64, Ordering::Relaxed);
                        let mut answer = hyper::Response::new(http_body_util::Full::new(Bytes::new()));
                        *answer.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, hyper::Error>(answer)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (url, spans)
    }

    fn sender(url: String) -> Sender {
        Sender::Http(Http {
            url,
            json: false,
            client: OtlpHttpClient::start(Duration::from_secs(5), None).unwrap(),
            headers: vec![("authorization".into(), "Bearer hunter2".into())],
        })
    }

    fn batching(max_queue: usize) -> Batching {
        Batching {
            max_queue,
            max_batch: 3,
            delay: Duration::from_secs(3600),
            each: false,
        }
    }

    #[tokio::test]
    async fn sampled_spans_are_exported_in_batches_and_flushed() {
        let (url, received) = collector(200).await;
        let encoder = Encoder::new(&[("service.name".into(), "t".into())]);
        let recorder = spawn(Sampler::AlwaysOn, batching(100), encoder, sender(url)).unwrap();
        for n in 0..10 {
            recorder.record(span(n, if n == 4 { 0 } else { super::super::record::SAMPLED }));
        }
        tokio::task::spawn_blocking(move || recorder.flush(Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
        // The unsampled span is not exported.
        assert_eq!(received.load(Ordering::Relaxed), 9);
        assert_eq!(recorder.dropped(), 0);
        recorder.stop(Duration::from_secs(5));
        recorder.record(span(1, super::super::record::SAMPLED));
        assert_eq!(
            recorder.queue.lock().unwrap().spans.len(),
            0,
            "stopped: nothing is queued"
        );
    }

    #[tokio::test]
    async fn a_refused_export_fails_the_flush_without_the_headers() {
        let (url, _) = collector(503).await;
        let encoder = Encoder::new(&[]);
        let recorder = spawn(Sampler::AlwaysOn, batching(100), encoder, sender(url)).unwrap();
        recorder.record(span(1, super::super::record::SAMPLED));
        let flushed = tokio::task::spawn_blocking(move || recorder.flush(Duration::from_secs(10)))
            .await
            .unwrap();
        let err = flushed.unwrap_err().to_string();
        assert!(err.contains("503") && !err.contains("hunter2"), "{err}");
    }

    /// Past the queue's bound, spans are counted and dropped, not kept.
    #[tokio::test]
    async fn a_full_queue_drops_spans() {
        let encoder = Encoder::new(&[]);
        // Nothing listens at port 9: exports fail, and the queue is not drained faster.
        let recorder = spawn(
            Sampler::AlwaysOn,
            batching(2),
            encoder,
            sender("http://127.0.0.1:9/v1/traces".into()),
        )
        .unwrap();
        for n in 0..1000 {
            recorder.record(span(n as u8, super::super::record::SAMPLED));
        }
        assert!(recorder.dropped() > 0);
        assert!(recorder.queue.lock().unwrap().spans.len() <= 2);
    }

    #[test]
    fn batching_from_the_environment() {
        let vars = [
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
        ];
        let env = crate::telemetry::tests::env(&vars);
        let b = Batching::from_env(&env, false);
        assert_eq!((b.max_queue, b.max_batch, b.delay), (100, 100, Duration::from_secs(5)));
        let none = |_: &str| None;
        let b = Batching::from_env(&none, true);
        assert_eq!((b.max_queue, b.max_batch, b.each), (2048, 512, true));
    }
}
