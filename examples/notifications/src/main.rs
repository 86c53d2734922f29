//! The notifications service: welcomes every new user (`user_created` events).
//!
//! It keeps its own copy of the user DTO, as a separately deployed service would.

use clap::Parser;
use example_common::Listen;
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
    #[command(flatten)]
    listen: Listen,
}

#[tokio::main]
async fn main() -> switchboard::Result<()> {
    let _telemetry = example_common::init("notifications");
    let args = Args::parse();
    // Its one handler is in this binary, so the registry has it.
    Microservice::from_registry()
        .listen_all(args.listen.or("tcp://127.0.0.1:3003"))
        .run()
        .await
}
