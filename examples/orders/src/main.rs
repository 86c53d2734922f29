//! The seed's order flow as four services: inventory (`inventory.reserve`/`release`/`stock`),
//! payment (`payment.charge`/`refund`/`charges`; declines amounts over `--limit`), shipping
//! (`shipping.create`/`cancel`/`shipments`), each behind an inbox so a step sent again has its
//! effect once, and the order orchestrator: `orders.create` runs the order saga (reserve →
//! charge, the pivot → ship) and answers how it ended, `orders.get` reads it from the saga
//! log (an SQLite file), where a restarted orchestrator also finds the sagas a killed one left.
//!
//! ```text
//! orders inventory --listen tcp://127.0.0.1:3010 --stock widget=10
//! orders payment --listen tcp://127.0.0.1:3011 --limit 1000
//! orders shipping --listen tcp://127.0.0.1:3012 [--slow-order ID --slow-ms 3000]
//! orders orchestrator --listen tcp://127.0.0.1:3013 --log orders.db \
//!     --inventory tcp://127.0.0.1:3010 --payment tcp://127.0.0.1:3011 --shipping tcp://127.0.0.1:3012
//! ```

mod orders;
mod participants;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use example_common::Listen;
use switchboard::prelude::*;
use switchboard_saga::Inbox;
use switchboard_saga::log::SqliteLog;
use switchboard_saga::{Orchestrator, Status};

use crate::orders::{Orders, order_saga};
use crate::participants::{Inventory, Payment, Shipping};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Stock and reservations.
    Inventory {
        #[command(flatten)]
        listen: Listen,
        /// The stock on the shelves: `sku=count`, comma-separated or repeated.
        #[arg(long, value_delimiter = ',', default_values = ["widget=10", "gadget=5"], value_parser = parse_stock)]
        stock: Vec<(String, u32)>,
    },
    /// Charges, declined above a limit.
    Payment {
        #[command(flatten)]
        listen: Listen,
        /// Charges above this are declined (a business error: the saga compensates).
        #[arg(long, default_value_t = 1000)]
        limit: u64,
    },
    /// Shipments.
    Shipping {
        #[command(flatten)]
        listen: Listen,
        /// Ship this order slowly (repeatable): the demo kills the orchestrator meanwhile.
        #[arg(long = "slow-order")]
        slow: Vec<String>,
        /// How long a slow order takes to ship, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        slow_ms: u64,
    },
    /// The order orchestrator: `orders.create` and `orders.get`.
    Orchestrator {
        #[command(flatten)]
        listen: Listen,
        /// The saga log, an SQLite file (created when missing). One orchestrator at a time.
        #[arg(long, default_value = "orders.db")]
        log: PathBuf,
        /// Where the inventory service listens.
        #[arg(long, default_value = "tcp://127.0.0.1:3010")]
        inventory: String,
        /// Where the payment service listens.
        #[arg(long, default_value = "tcp://127.0.0.1:3011")]
        payment: String,
        /// Where the shipping service listens.
        #[arg(long, default_value = "tcp://127.0.0.1:3012")]
        shipping: String,
    },
}

fn parse_stock(item: &str) -> Result<(String, u32), String> {
    let (sku, count) = item.split_once('=').ok_or(format!("`{item}`: expected sku=count"))?;
    let count = count.parse().map_err(|e| format!("`{item}`: {e}"))?;
    Ok((sku.to_owned(), count))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Args::parse().role {
        Role::Inventory { listen, stock } => {
            let _telemetry = example_common::init("inventory");
            participant(Inventory::new(stock), listen.or("tcp://127.0.0.1:3010")).await
        }
        Role::Payment { listen, limit } => {
            let _telemetry = example_common::init("payment");
            participant(Payment::new(limit), listen.or("tcp://127.0.0.1:3011")).await
        }
        Role::Shipping { listen, slow, slow_ms } => {
            let _telemetry = example_common::init("shipping");
            let shipping = Shipping::new(slow, Duration::from_millis(slow_ms));
            participant(shipping, listen.or("tcp://127.0.0.1:3012")).await
        }
        Role::Orchestrator {
            listen,
            log,
            inventory,
            payment,
            shipping,
        } => {
            let _telemetry = example_common::init("orders");
            let saga = order_saga(
                &Client::builder(&inventory).build()?,
                &Client::builder(&payment).build()?,
                &Client::builder(&shipping).build()?,
            );
            let orchestrator = Orchestrator::builder(SqliteLog::open(&log)?).build();
            let orders = Orders::new(orchestrator.clone(), saga);
            // Resumes the sagas a killed orchestrator left running or compensating.
            orchestrator.start();
            let active = orchestrator
                .list(switchboard_saga::Filter {
                    statuses: vec![Status::Running, Status::Compensating],
                    ..Default::default()
                })
                .await?;
            tracing::info!(log = %log.display(), active = active.len(), "saga log opened");
            let served = Microservice::new()
                .group(orders)
                .listen_all(listen.or("tcp://127.0.0.1:3013"))
                .run()
                .await;
            orchestrator.shutdown();
            Ok(served?)
        }
    }
}

/// Serves a participant behind an inbox: a step the orchestrator sends again (its
/// `idempotency-key` seen) is answered with the first reply, its effect not repeated.
async fn participant<G: switchboard::Group<()>>(group: G, urls: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    Microservice::new()
        .group(group)
        .layer(Inbox::memory().layer())
        .listen_all(urls)
        .run()
        .await?;
    Ok(())
}
