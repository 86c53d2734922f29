//! librdkafka's mock cluster as a Kafka broker for tests and demos.

use std::sync::{Mutex, mpsc};

use rdkafka::mocking::MockCluster;

use crate::error::{Error, Result};

/// librdkafka's in-process mock cluster with one broker on a random port of 127.0.0.1: a
/// Kafka broker for tests and demos that needs nothing installed (consumer groups and
/// committed offsets included; topics are created on first use). It lives on a thread of
/// its own, because the cluster handle is not `Send`, until this is dropped.
///
/// Unlike a real broker it answers a fetch only once the consumer's `fetch.wait.max.ms`
/// has passed (`max_wait_ms` in the URL), so every hop costs that wait.
pub struct KafkaMock {
    bootstrap: String,
    commands: Mutex<mpsc::Sender<Command>>,
}

enum Command {
    Topic(String, i32, mpsc::Sender<Result<()>>),
    Up(bool, mpsc::Sender<Result<()>>),
}

impl std::fmt::Debug for KafkaMock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaMock").field("bootstrap", &self.bootstrap).finish()
    }
}

fn mock_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::broker(format!("librdkafka's mock cluster: {what}"), e)
}

/// The cluster's thread ended.
fn mock_gone(what: &str) -> Error {
    Error::refused(format!("librdkafka's mock cluster: {what}: its thread ended"))
}

impl KafkaMock {
    /// Starts the cluster.
    pub fn start() -> Result<Self> {
        let (boot_tx, boot_rx) = mpsc::channel();
        let (commands, rx) = mpsc::channel::<Command>();
        std::thread::Builder::new()
            .name("kafka-mock".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = boot_tx.send(Err(mock_error("cannot start", e)));
                        return;
                    }
                };
                let _ = boot_tx.send(Ok(cluster.bootstrap_servers()));
                for command in rx {
                    let _ = match command {
                        Command::Topic(name, partitions, done) => done.send(
                            cluster
                                .create_topic(&name, partitions, 1)
                                .map_err(|e| mock_error(&format!("cannot create topic `{name}`"), e)),
                        ),
                        Command::Up(up, done) => done.send(
                            if up {
                                cluster.broker_up(1)
                            } else {
                                cluster.broker_down(1)
                            }
                            .map_err(|e| mock_error("cannot switch the broker", e)),
                        ),
                    };
                }
            })
            .map_err(|e| mock_error("cannot start its thread", e))?;
        let bootstrap = boot_rx.recv().map_err(|_| mock_gone("cannot start"))??;
        Ok(KafkaMock {
            bootstrap,
            commands: Mutex::new(commands),
        })
    }

    /// `host:port` of its broker, for `kafka://host:port` URLs.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (consumers, unlike producers, do not create topics on first use).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        self.ask(|done| Command::Topic(name.to_owned(), partitions, done))
    }

    /// Takes the broker down (its port refuses connections; its data stays) or back up.
    pub fn set_up(&self, up: bool) -> Result<()> {
        self.ask(|done| Command::Up(up, done))
    }

    /// Sends a command to the cluster's thread and waits for its answer (blocking).
    fn ask(&self, command: impl FnOnce(mpsc::Sender<Result<()>>) -> Command) -> Result<()> {
        let (done, answer) = mpsc::channel();
        let gone = || mock_gone("cannot reach it");
        self.commands
            .lock()
            .expect("mock commands lock")
            .send(command(done))
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}
