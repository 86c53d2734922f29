//! `collector [--listen 127.0.0.1:4317]`: receives spans over OTLP/gRPC and prints each trace
//! as a tree once no span of it has arrived for a second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Address to receive OTLP/gRPC on.
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let collector = example_collector::Collector::start(&args.listen).await?;
    println!("collecting on {}", collector.endpoint);
    let mut seen: HashMap<String, (usize, Instant)> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let spans = collector.spans();
        for trace in collector.trace_ids() {
            let count = spans.iter().filter(|s| s.trace_id == trace).count();
            let entry = seen.entry(trace.clone()).or_insert((0, Instant::now()));
            if entry.0 != count {
                *entry = (count, Instant::now());
            } else if count > 0 && entry.1.elapsed() > Duration::from_secs(1) {
                println!(
                    "trace {trace}\n{}",
                    collector.tree(&trace, |k| k.starts_with("messaging."))
                );
                entry.0 = usize::MAX; // printed
            }
        }
    }
}
