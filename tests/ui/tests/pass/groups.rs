// `#[handlers]`: methods taking `&self` and associated functions of one `impl` block, served
// together with `.group(value)`, each with a descriptor `Type::NAME`.
use std::sync::atomic::{AtomicU64, Ordering};

use switchboard::prelude::*;

#[derive(Default)]
pub struct Counter {
    total: AtomicU64,
}

#[handlers]
impl Counter {
    /// Not a handler: left alone.
    pub fn new() -> Self {
        Self::default()
    }

    #[event_pattern("add")]
    async fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    #[message_pattern({ cmd = "total" })]
    pub async fn total(&self, ctx: Context) -> RpcResult<u64> {
        let _ = ctx;
        Ok(self.total.load(Ordering::Relaxed))
    }

    #[message_pattern("version")]
    pub async fn version() -> String {
        "1".into()
    }

    #[message_pattern("sum")]
    pub async fn sum_all(&self, values: Vec<u64>) -> u64 {
        values.iter().sum::<u64>() + self.total.load(Ordering::Relaxed)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(Counter::TOTAL.info().name(), "total");
    assert_eq!(Counter::SUM_ALL.info().route(), "sum");
    assert_eq!(Counter::version().await, "1");

    let server = Microservice::new()
        .group(Counter::new())
        .listen("mem://ui-groups")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://ui-groups").await.unwrap();
    client.send_raw::<()>("add", 2).await.unwrap();
    assert_eq!(client.send(Counter::TOTAL, ()).await.unwrap(), 2);
    assert_eq!(client.send(Counter::SUM_ALL, vec![1, 2]).await.unwrap(), 5);
    assert_eq!(client.send(Counter::VERSION, ()).await.unwrap(), "1");
    client.emit(Counter::ADD, 1).await.unwrap();
    server.shutdown().await.unwrap();
}
