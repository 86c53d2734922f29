//! The Switchboard side: the `add` handler served by `Microservice` over `tcp://`, exactly
//! as a user would write it; in three variants, each measured against the same ceiling.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use switchboard::Request;
use switchboard::prelude::*;

use crate::Kind;

#[derive(Deserialize)]
pub struct AddRequest {
    a: i64,
    b: i64,
}

#[derive(Serialize)]
pub struct AddReply {
    result: i64,
}

#[message_pattern({ cmd = "add" })]
async fn add(req: AddRequest) -> AddReply {
    AddReply {
        result: req.a.wrapping_add(req.b),
    }
}

/// What a real service keeps in its state (a pool, a config): shared, behind an `Arc`.
#[derive(Clone, Default)]
pub struct Config {
    bias: Arc<i64>,
}

/// The same handler, taking the service's state.
#[message_pattern({ cmd = "add" })]
async fn add_with_state(req: AddRequest, State(config): State<Config>) -> AddReply {
    AddReply {
        result: req.a.wrapping_add(req.b).wrapping_add(*config.bias),
    }
}

/// A layer that does nothing, to measure what wrapping every route costs.
#[derive(Clone, Copy)]
struct Noop;

impl<S> tower::Layer<S> for Noop {
    type Service = NoopService<S>;
    fn layer(&self, inner: S) -> NoopService<S> {
        NoopService(inner)
    }
}

#[derive(Clone)]
struct NoopService<S>(S);

impl<S: tower::Service<Request>> tower::Service<Request> for NoopService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: Request) -> S::Future {
        self.0.call(req)
    }
}

/// Starts the server variant `kind` on a free loopback port.
pub async fn start(kind: Kind) -> switchboard::Result<switchboard::RunningServer> {
    let url = "tcp://127.0.0.1:0";
    match kind {
        Kind::SwitchboardLayer => Microservice::new().handler(ADD).layer(Noop).listen(url).start().await,
        Kind::SwitchboardState => {
            Microservice::new()
                .with_state(Config::default())
                .handler(ADD_WITH_STATE)
                .listen(url)
                .start()
                .await
        }
        Kind::Traced | Kind::Unsampled | Kind::Metered => {
            observe(kind).await;
            Microservice::new().handler(ADD).listen(url).start().await
        }
        _ => Microservice::new().handler(ADD).listen(url).start().await,
    }
}

/// The variable that names the OTLP collector the `traced` server exports to (the benchmark
/// starts one in a process of its own); without it, a collector in the server's process.
pub const OTLP_ENDPOINT: &str = "SWITCHBOARD_BENCH_OTLP";

/// Turns on what `kind` measures (tracing exported to a collector, tracing that samples
/// nothing, or metrics); kept for the life of the process.
#[cfg(feature = "observability")]
async fn observe(kind: Kind) {
    if kind == Kind::Metered {
        switchboard::metrics::install().expect("the metrics recorder installs");
        return;
    }
    let endpoint = match std::env::var(OTLP_ENDPOINT) {
        Ok(endpoint) => endpoint,
        // In this process (`--profile traced`: one process under callgrind, decoding counted).
        Err(_) => {
            let collector = example_collector::Collector::counting("127.0.0.1:0")
                .await
                .expect("the collector starts");
            let endpoint = collector.endpoint.clone();
            std::mem::forget(collector);
            endpoint
        }
    };
    let telemetry = switchboard::telemetry::builder("bench")
        .endpoint(endpoint)
        .init()
        .expect("tracing starts");
    // A span dropped is a span not paid for: said, so that a run that drops is not read as
    // a cheap one.
    std::thread::spawn(move || {
        let mut said = 0;
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let dropped = telemetry.dropped();
            if dropped > said {
                eprintln!("traced server: {dropped} spans dropped so far (export queue full, or export failed)");
                said = dropped;
            }
        }
    });
}

/// Runs as the `traced` server's OTLP collector (counting the spans it receives) until the
/// parent closes stdin.
#[cfg(feature = "observability")]
pub fn collect_child() -> anyhow::Result<()> {
    crate::exit_with_parent();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let collector = example_collector::Collector::counting("127.0.0.1:0").await?;
        crate::announce_url(&collector.endpoint)?;
        std::future::pending::<()>().await;
        drop(collector);
        Ok(())
    })
}

#[cfg(not(feature = "observability"))]
pub fn collect_child() -> anyhow::Result<()> {
    anyhow::bail!("the collector needs the bench built with --features observability")
}

#[cfg(not(feature = "observability"))]
async fn observe(kind: Kind) {
    panic!(
        "the {} variant needs the bench built with --features observability",
        kind.label()
    );
}

/// Serves until the process exits; prints `port=<n>` on stdout once listening.
pub fn run(kind: Kind, threads: usize) -> anyhow::Result<()> {
    let rt = crate::server_runtime(threads)?;
    rt.block_on(async {
        let server = start(kind).await?;
        crate::announce_url(server.local_url())?;
        // The parent ends this process (stdin closes); until then, serve.
        std::future::pending::<()>().await;
        drop(server);
        Ok(())
    })
}

/// Serves `service` over `tcp://127.0.0.1:0` on a thread of its own pinned to `cpus`, in a
/// multi-threaded runtime; returns its URL once it listens.
pub fn spawn_tcp<S: Clone + Send + Sync + 'static>(
    service: Microservice<S>,
    cpus: Vec<usize>,
) -> anyhow::Result<String> {
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = crate::pin_current_thread(&cpus);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            match service.listen("tcp://127.0.0.1:0").start().await {
                Ok(s) => {
                    let _ = url_tx.send(Ok(s.local_url().to_owned()));
                    std::future::pending::<()>().await
                }
                Err(e) => {
                    let _ = url_tx.send(Err(e));
                }
            }
        })
    });
    Ok(url_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the TCP server thread ended"))??)
}
