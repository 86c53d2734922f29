//! Runs the users service: `users --listen tcp://127.0.0.1:PORT` (repeat --listen to serve several transports).

use clap::Parser;
use example_common::Listen;
use example_users::Users;
use switchboard::Microservice;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    listen: Listen,
}

#[tokio::main]
async fn main() -> switchboard::Result<()> {
    let _telemetry = example_common::init("users");
    let args = Args::parse();
    Microservice::new()
        .group(Users::new())
        .listen_all(args.listen.or("tcp://127.0.0.1:3001"))
        .run()
        .await
}
