//! `demo --registry etcd://127.0.0.1:2379`: the seed's service registry. Two users instances
//! register themselves in etcd; the gateway finds them by name and balances over them; one is
//! SIGKILLed while requests flow, and no request fails.

use std::path::Path;

use anyhow::ensure;
use serde_json::json;

use crate::{Logs, free_port, http, spawn_as, wait_for_log, wait_for_port};

/// Requests made through the gateway, and after how many of them one instance is killed.
const REQUESTS: usize = 200;
const KILL_AFTER: usize = 60;
/// Requests in flight at once, so that some are on the killed instance when it dies.
const CONCURRENCY: usize = 4;

pub async fn run(dir: &Path, registry: &str, logs: &Logs, traces: &str) -> anyhow::Result<()> {
    // Each run in a prefix of its own, so that runs never see each other's instances.
    let sep = if registry.contains('?') { '&' } else { '?' };
    let registry = format!("{registry}{sep}prefix=/switchboard-demo-{}", std::process::id());
    let service_url = match registry.split_once('?') {
        Some((base, query)) => format!("{}/users?{query}", base.trim_end_matches('/')),
        None => format!("{registry}/users"),
    };
    let mut instances = Vec::new();
    for name in ["users-1", "users-2"] {
        let port = free_port()?;
        let args = [
            "--listen".into(),
            format!("tcp://127.0.0.1:{port}"),
            "--register".into(),
            registry.clone(),
        ];
        instances.push(spawn_as(dir, "users", name, &args, logs, traces)?);
        wait_for_log(logs, name, "registered", "did not register in the registry").await?;
    }
    let http_port = free_port()?;
    let gateway = spawn_as(
        dir,
        "gateway",
        "gateway",
        &[
            "--http".into(),
            format!("127.0.0.1:{http_port}"),
            "--users".into(),
            service_url.clone(),
        ],
        logs,
        traces,
    )?;
    wait_for_port(http_port).await?;
    println!(
        "{:>13} | two users instances registered; the gateway finds them as {service_url}",
        "demo"
    );

    let answered = |name: &str| {
        logs.lock()
            .expect("logs lock")
            .iter()
            .filter(|(n, line)| *n == name && line.contains("get_user"))
            .count()
    };
    let mut failed = Vec::new();
    let mut killed = None;
    for wave in 0..REQUESTS / CONCURRENCY {
        if wave * CONCURRENCY >= KILL_AFTER && killed.is_none() {
            let before = (answered("users-1"), answered("users-2"));
            ensure!(
                before.0 > 0 && before.1 > 0,
                "both instances take requests before the kill: {before:?}"
            );
            println!(
                "{:>13} | SIGKILL users-1 (answered {} so far; users-2 {})",
                "demo", before.0, before.1
            );
            instances[0].start_kill()?;
            killed = Some(before);
        }
        let requests = (0..CONCURRENCY).map(|_| http(http_port, "GET", "/users/42", None, None));
        for outcome in futures_util::future::join_all(requests).await {
            match outcome {
                Ok((200, body)) if body["name"] == json!("John Doe") => {}
                other => failed.push(format!("{other:?}")),
            }
        }
    }
    let (at_kill_1, at_kill_2) = killed.expect("the kill happened");
    let after = (answered("users-1") - at_kill_1, answered("users-2") - at_kill_2);
    println!(
        "{:>13} | {REQUESTS} requests, {} failed; after the kill users-1 answered {}, users-2 {}",
        "demo",
        failed.len(),
        after.0,
        after.1
    );
    ensure!(failed.is_empty(), "requests failed while an instance died: {failed:?}");
    ensure!(
        after.0 == 0 && after.1 > 0,
        "the survivor took every request after the kill: {after:?}"
    );
    crate::terminate(&gateway);
    crate::terminate(&instances[1]);
    println!("{:>13} | discovery: ok", "demo");
    Ok(())
}
