//! What the CLI's test binaries share: the NestJS 12 peer, and failing (under `CI`) or
//! skipping when a service is missing.

// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

/// A service this test needs is missing: fails under CI, else says so and skips.
pub fn missing(what: &str, fix: &str) {
    assert!(std::env::var_os("CI").is_none(), "{what} is missing (CI is set): {fix}");
    eprintln!("SKIPPED: {what} is missing: {fix}");
    if let Some(log) = std::env::var_os("SB_SKIP_LOG") {
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(log).unwrap();
        let _ = std::io::Write::write_all(&mut f, format!("cli: {what}\n").as_bytes());
    }
}

/// NestJS 12's own server (tests/nestjs/server.mjs) with `args` (`--port 0` or `--url …`),
/// and the port it printed; `None` (after [`missing`]) when the peer is not installed.
pub async fn nestjs(args: &[&str]) -> Option<(tokio::process::Child, String)> {
    let peer = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/nestjs");
    if !peer
        .join("v12/node_modules/@nestjs/microservices/package.json")
        .exists()
    {
        missing("NestJS 12 (tests/nestjs/v12)", "run scripts/setup-nestjs.sh");
        return None;
    }
    let mut node = tokio::process::Command::new("node")
        .arg(peer.join("server.mjs"))
        .args(["--nest", "12"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(node.stdout.take().unwrap()));
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the NestJS peer starts within 30 s")
        .unwrap()
        .unwrap_or_default();
    let port = ready.strip_prefix("READY ").expect("READY <port>").to_owned();
    Some((node, port))
}
