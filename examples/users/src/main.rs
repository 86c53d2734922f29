//! Runs the users service: `users --listen tcp://127.0.0.1:PORT` (repeat --listen to serve
//! several transports); with the `etcd` feature, `--register etcd://127.0.0.1:2379` registers
//! it as `users` so that callers find it by name.

use clap::Parser;
use example_common::Listen;
use example_users::Users;
use switchboard::Microservice;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    listen: Listen,
    /// A registry to register in (`etcd://127.0.0.1:2379`), as the service `users`.
    #[cfg(feature = "etcd")]
    #[arg(long)]
    register: Option<String>,
}

#[tokio::main]
async fn main() -> switchboard::Result<()> {
    let _telemetry = example_common::init("users");
    let args = Args::parse();
    let service = Microservice::new().group(Users::new());
    #[cfg(feature = "etcd")]
    let service = match &args.register {
        Some(url) => {
            let registry = switchboard_discovery::Registry::connect(url).await?;
            service.name("users").register(registry)
        }
        None => service,
    };
    service.listen_all(args.listen.or("tcp://127.0.0.1:3001")).run().await
}
