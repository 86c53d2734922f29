//! librdkafka's mock cluster as the demo's Kafka broker: it speaks the Kafka protocol on a
//! random port of 127.0.0.1, so the service processes connect to it as to a real broker.

use std::sync::mpsc;

use anyhow::{Context, anyhow};
use rdkafka::mocking::MockCluster;

/// A one-broker mock cluster, alive until this is dropped.
pub struct KafkaMock {
    bootstrap: String,
    _stop: mpsc::Sender<()>,
}

impl KafkaMock {
    pub fn start() -> anyhow::Result<Self> {
        let (boot_tx, boot_rx) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        // The cluster handle is not `Send`: its own thread keeps it until `stop` is dropped.
        std::thread::Builder::new()
            .name("kafka-mock".into())
            .spawn(move || match MockCluster::new(1) {
                Ok(cluster) => {
                    let _ = boot_tx.send(Ok(cluster.bootstrap_servers()));
                    let _ = stopped.recv();
                }
                Err(e) => {
                    let _ = boot_tx.send(Err(e));
                }
            })?;
        let bootstrap = boot_rx
            .recv()
            .map_err(|_| anyhow!("the mock cluster's thread ended"))?
            .context("start librdkafka's mock cluster")?;
        Ok(KafkaMock { bootstrap, _stop: stop })
    }

    /// `host:port` of its broker.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}
