//! Runs the users service: `users --listen tcp://127.0.0.1:PORT` (repeat --listen to serve several transports).

use clap::Parser;
use example_users::{create_user, get_user};
use switchboard::Microservice;

#[derive(Parser)]
struct Args {
    /// Transport URL to serve on; repeat for a hybrid service.
    #[arg(long, default_value = "tcp://127.0.0.1:3001")]
    listen: Vec<String>,
}

#[tokio::main]
async fn main() -> switchboard::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    // The handlers live in this package's library (so callers can name them); a library's
    // handlers are listed explicitly, as the linker keeps only what the binary uses.
    let service = Microservice::new().handler(get_user).handler(create_user);
    args.listen.iter().fold(service, |m, url| m.listen(url)).run().await
}
