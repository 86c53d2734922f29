//! A transport written outside the crate, on the public traits alone: an in-test channel,
//! served with `Microservice::serve_on` and called through with `Client::over`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use switchboard::prelude::*;
use switchboard::transport::{ClientTransport, Listener, Shutdown};
use switchboard::{Address, Error, Kind, Outbound, Payload, Replies, ReplyItem, Request, Router};
use tokio::sync::{Mutex, mpsc, oneshot};

/// What travels on the channel: a call, and where its reply goes (none for an event).
struct Frame {
    kind: Kind,
    pattern: String,
    payload: Bytes,
    headers: Headers,
    reply: Option<oneshot::Sender<Vec<ReplyItem>>>,
}

struct ChannelListener {
    frames: mpsc::Receiver<Frame>,
}

impl Listener for ChannelListener {
    fn local_url(&self) -> String {
        "chan://test".into()
    }

    fn serve(self: Box<Self>, router: Router, mut shutdown: Shutdown) -> BoxFuture<'static, switchboard::Result<()>> {
        let mut frames = self.frames;
        async move {
            loop {
                let frame = tokio::select! {
                    _ = shutdown.wait() => break,
                    frame = frames.recv() => match frame {
                        Some(frame) => frame,
                        None => break,
                    },
                };
                let ctx = Context::new("chan", frame.kind).with_headers(frame.headers);
                let req = Request::new(Address::pattern(frame.pattern), Payload::Json(frame.payload), ctx);
                let reply = router.call(req);
                tokio::spawn(async move {
                    let items: Vec<ReplyItem> = reply.await.collect().await;
                    if let Some(to) = frame.reply {
                        let _ = to.send(items);
                    }
                });
            }
            Ok(())
        }
        .boxed()
    }
}

struct ChannelClient {
    frames: mpsc::Sender<Frame>,
    sent: AtomicUsize,
}

impl ChannelClient {
    async fn send(&self, out: Outbound, reply: Option<oneshot::Sender<Vec<ReplyItem>>>) -> switchboard::Result<()> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        let frame = Frame {
            kind: out.kind,
            pattern: out.pattern.into_owned(),
            payload: out.payload,
            headers: out.headers,
            reply,
        };
        self.frames.send(frame).await.map_err(|_| Error::Closed)
    }
}

impl ClientTransport for ChannelClient {
    fn connect(&self) -> BoxFuture<'_, switchboard::Result<()>> {
        std::future::ready(Ok(())).boxed()
    }

    fn request(self: Arc<Self>, out: Outbound) -> BoxFuture<'static, switchboard::Result<Replies>> {
        async move {
            let (tx, rx) = oneshot::channel();
            self.send(out, Some(tx)).await?;
            let items = rx.await.map_err(|_| Error::Closed)?;
            Ok(Replies::new(futures_util::stream::iter(items.into_iter().map(Ok))))
        }
        .boxed()
    }

    fn emit(self: Arc<Self>, out: Outbound) -> BoxFuture<'static, switchboard::Result<()>> {
        async move { self.send(out, None).await }.boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        std::future::ready(()).boxed()
    }
}

#[message_pattern({ cmd = "sum" })]
async fn sum(numbers: Vec<i64>, headers: Headers) -> String {
    format!("{}{}", numbers.iter().sum::<i64>(), headers.get("unit").unwrap_or(""))
}

static EVENTS: Mutex<Vec<String>> = Mutex::const_new(Vec::new());

#[event_pattern("noted")]
async fn noted(text: String, ctx: Context) {
    EVENTS.lock().await.push(format!("{text} via {}", ctx.transport()));
}

#[tokio::test]
async fn a_transport_of_ones_own_serves_and_calls() {
    let (tx, rx) = mpsc::channel(16);
    let server = Microservice::new()
        .handler(SUM)
        .handler(NOTED)
        .serve_on(ChannelListener { frames: rx })
        .start()
        .await
        .unwrap();
    assert_eq!(server.local_url(), "chan://test");
    let transport = ChannelClient {
        frames: tx,
        sent: AtomicUsize::new(0),
    };
    let client = Client::over(transport).connect().await.unwrap();
    assert_eq!(
        client.send(SUM, vec![1, 2, 3]).header("unit", "kg").await.unwrap(),
        "6kg"
    );
    client.emit(NOTED, "hello".to_string()).await.unwrap();
    let err = client.send_raw::<serde_json::Value>("nobody", 1).await.unwrap_err();
    assert!(err.as_rpc().is_some_and(RpcError::is_no_handler), "{err}");
    for _ in 0..100 {
        if !EVENTS.lock().await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(*EVENTS.lock().await, ["hello via chan"]);
    server.shutdown().await.unwrap();
}
