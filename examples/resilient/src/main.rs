//! Runs the resilient service:
//! `resilient --listen tcp://127.0.0.1:PORT --math tcp://127.0.0.1:3002 [--half-open-after-ms 30000]`.

use clap::Parser;
use example_common::Listen;
use example_resilient::{BreakerSettings, ResilientService};
use switchboard::Microservice;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    listen: Listen,
    /// The math service.
    #[arg(long, default_value = "tcp://127.0.0.1:3002")]
    math: String,
    /// Failures in a row that open the circuit.
    #[arg(long, default_value_t = 5)]
    failures: u32,
    /// Milliseconds the circuit stays open before a probe.
    #[arg(long, default_value_t = 30_000)]
    half_open_after_ms: u64,
}

#[tokio::main]
async fn main() -> switchboard::Result<()> {
    let _telemetry = example_common::init("resilient");
    let args = Args::parse();
    let settings = BreakerSettings {
        failures: args.failures,
        half_open_after: std::time::Duration::from_millis(args.half_open_after_ms),
    };
    Microservice::new()
        .group(ResilientService::new(&args.math, settings)?)
        .policy_overrides(switchboard::Overrides::from_env()?)
        .listen_all(args.listen.or("tcp://127.0.0.1:3005"))
        .run()
        .await
}
