//! The notifications service: welcomes every new user (`user_created` events).
//!
//! It keeps its own copy of the user DTO, as a separately deployed service would.

use clap::Parser;
use switchboard::prelude::*;

#[derive(Debug, Deserialize)]
struct User {
    id: String,
    name: String,
    email: String,
}

#[event_pattern("user_created")]
async fn send_welcome(user: User) {
    tracing::info!(id = %user.id, "sending welcome e-mail to {} <{}>", user.name, user.email);
}

#[derive(Parser)]
struct Args {
    /// Transport URL to serve on; repeat for a hybrid service.
    #[arg(long, default_value = "tcp://127.0.0.1:3003")]
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
