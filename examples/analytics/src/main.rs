//! The analytics service: counts signups (`user_created` events).

use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use switchboard::prelude::*;

#[derive(Debug, Deserialize)]
struct User {
    id: String,
}

static SIGNUPS: AtomicU64 = AtomicU64::new(0);

#[event_pattern("user_created")]
async fn track_signup(user: User, ctx: Context) {
    let total = SIGNUPS.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::info!(id = %user.id, transport = ctx.transport(), total, "signup tracked");
}

/// How many signups this instance has seen.
#[message_pattern(cmd = "signups")]
async fn signups() -> u64 {
    SIGNUPS.load(Ordering::Relaxed)
}

#[derive(Parser)]
struct Args {
    /// Transport URL to serve on; repeat for a hybrid service.
    #[arg(long, default_value = "tcp://127.0.0.1:3004")]
    listen: Vec<String>,
}

#[tokio::main]
async fn main() -> switchboard::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    args.listen
        .iter()
        .fold(Microservice::from_registry(), |m, url| m.listen(url))
        .run()
        .await
}
