//! `switchboard repl` driven as a person would, through a real pseudo-terminal: keys in,
//! the screen out (colours stripped). Against a Switchboard service over TCP and the NestJS 12
//! peer (tests/nestjs).
//!
//! Every wait is an expect with a generous timeout, a guard against hangs, never a timed
//! assertion.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rexpect::process::WaitStatus;
use rexpect::reader::Options;
use rexpect::session::PtySession;
use switchboard::prelude::*;

mod common;
use common::missing;

/// How long any one expected output may take before the test fails as hung.
const HANG_GUARD_MS: u64 = 60_000;

#[message_pattern({ cmd = "sum" })]
async fn sum(numbers: Vec<f64>) -> f64 {
    numbers.iter().sum()
}

#[message_pattern("repl.count")]
async fn count(n: u32) -> ReplyStream<u32> {
    ReplyStream::iter(1..=n)
}

#[message_pattern("repl.headers")]
async fn headers(headers: Headers) -> std::collections::BTreeMap<String, String> {
    headers.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// Set once `repl.slow` is running: the call is in flight.
static SLOW_STARTED: AtomicBool = AtomicBool::new(false);
/// Lets `repl.slow` answer (once the REPL gave up on it), so the server stops at once.
static SLOW_RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[message_pattern("repl.slow")]
async fn slow() -> u32 {
    SLOW_STARTED.store(true, Ordering::SeqCst);
    SLOW_RELEASE.notified().await;
    0
}

#[event_pattern("repl.happened")]
async fn happened(_what: serde_json::Value) {}

/// A Switchboard service on TCP loopback, served by `rt`'s threads; its URL.
fn serve(rt: &tokio::runtime::Runtime) -> (switchboard::RunningServer, String) {
    let server = rt
        .block_on(Microservice::from_registry().listen("tcp://127.0.0.1:0").start())
        .expect("server starts");
    let url = server.local_url().to_owned();
    (server, url)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `switchboard repl <url>` with `extra` arguments on a new pseudo-terminal.
fn repl(url: &str, extra: &[&str]) -> PtySession {
    repl_with(url, extra, &[])
}

/// [`repl`] with the environment variables `env` set.
fn repl_with(url: &str, extra: &[&str], env: &[(&str, &str)]) -> PtySession {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.arg("repl").arg(url).args(extra).env("TERM", "xterm-256color");
    command.envs(env.iter().copied());
    let options = Options::new()
        .timeout_ms(Some(HANG_GUARD_MS))
        .strip_ansi_escape_codes(true);
    rexpect::spawn_with_options(command, options).expect("the REPL starts on a pseudo-terminal")
}

/// Waits for `text` on the screen; what came before it.
fn expect(p: &mut PtySession, text: &str) -> String {
    p.exp_string(text)
        .unwrap_or_else(|e| panic!("{text:?} never showed: {e}"))
}

/// Types `keys` (the writer is buffered: flushed, so they reach the terminal).
fn keys(p: &mut PtySession, keys: &str) {
    p.send(keys).unwrap();
    p.flush().unwrap();
}

/// Types `line` and Enter once the prompt shows.
fn enter(p: &mut PtySession, prompt: &str, line: &str) {
    expect(p, prompt);
    keys(p, &format!("{line}\r"));
}

fn exits_with(p: &mut PtySession, code: i32) {
    p.exp_eof().expect("the REPL ends");
    match p.process_mut().wait().unwrap() {
        WaitStatus::Exited(_, c) => assert_eq!(c, code, "exit status"),
        other => panic!("the REPL did not exit: {other:?}"),
    }
}

#[test]
fn calls_completes_and_goes_on_after_errors() {
    let rt = runtime();
    let (server, url) = serve(&rt);
    let prompt = format!("{url}> ");
    let mut p = repl(&url, &["--no-history"]);
    expect(&mut p, "patterns; `help` lists the commands");

    // A call prints the reply; the payload's JSON may have spaces.
    enter(&mut p, &prompt, r#"call {"cmd": "sum"} [1, 2, 3.5]"#);
    expect(&mut p, "\r\n6.5\r\n");

    // Tab completes the pattern known from describe, ...
    expect(&mut p, &prompt);
    keys(&mut p, "call repl.cou\t");
    let screen = expect(&mut p, "integer");
    assert!(screen.contains("call repl.count "), "the line completed: {screen:?}");
    // ... with the payload's type as a hint, then the reply.
    keys(&mut p, "3\r");
    expect(&mut p, "1\r\n2\r\n3\r\n");

    // A failure is printed and the REPL goes on.
    enter(&mut p, &prompt, "call repl.nobody 1");
    let screen = expect(&mut p, &prompt);
    assert!(
        screen.contains("error (no handler)") && screen.contains("repl.nobody"),
        "{screen:?}"
    );
    keys(&mut p, "call {\"cmd\":\"sum\"} [40, 2]\r");
    expect(&mut p, "\r\n42\r\n");

    // Sticky headers go with every call.
    enter(&mut p, &prompt, "header tenant=acme");
    enter(&mut p, &prompt, "call repl.headers -H region=eu");
    let screen = expect(&mut p, "}\r\n");
    assert!(
        screen.contains(r#""region":"eu""#) && screen.contains(r#""tenant":"acme""#),
        "{screen:?}"
    );
    enter(&mut p, &prompt, "emit repl.happened {\"at\": 1}");
    expect(&mut p, "emitted");

    // Ctrl-C cancels the call in flight, not the REPL.
    enter(&mut p, &prompt, "call repl.slow");
    wait_for(&SLOW_STARTED);
    p.send_control('c').unwrap();
    expect(&mut p, "call cancelled");
    SLOW_RELEASE.notify_one();
    enter(&mut p, &prompt, "call {\"cmd\":\"sum\"} [1, 1]");
    expect(&mut p, "\r\n2\r\n");

    enter(&mut p, &prompt, "exit");
    exits_with(&mut p, 0);
    rt.block_on(server.shutdown()).unwrap();
}

/// With an OTLP endpoint set, each command at the prompt is exported as a trace of its own,
/// or as part of the trace of a `traceparent` header set in the REPL, with its call's span as
/// its child.
#[cfg(feature = "telemetry")]
#[test]
fn exports_a_span_per_command_when_an_otlp_endpoint_is_set() {
    let rt = runtime();
    let (server, url) = serve(&rt);
    let collector = rt
        .block_on(example_collector::Collector::start("127.0.0.1:0"))
        .expect("the collector starts");
    let prompt = format!("{url}> ");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_SDK_DISABLED", "false"),
    ];
    let mut p = repl_with(&url, &["--no-history"], &env);
    expect(&mut p, "patterns; `help` lists the commands");
    enter(&mut p, &prompt, "call repl.count 2");
    expect(&mut p, "1\r\n2\r\n");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    enter(
        &mut p,
        &prompt,
        &format!("header traceparent=00-{trace}-00f067aa0ba902b7-01"),
    );
    enter(&mut p, &prompt, "emit repl.happened {}");
    expect(&mut p, "emitted");
    enter(&mut p, &prompt, "exit");
    exits_with(&mut p, 0);

    // Flushed before the REPL exited.
    let spans = collector.spans();
    let find = |name: &str| {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            panic!("no span {name:?} among {names:?}")
        })
    };
    let (call, send) = (find("switchboard call"), find("send repl.count"));
    assert_eq!(call.parent, "", "a trace of its own: {call:?}");
    assert_eq!(
        (send.trace_id.as_str(), send.parent.as_str()),
        (call.trace_id.as_str(), call.span_id.as_str())
    );
    assert_eq!(send.kind, "client");
    let (emit, produce) = (find("switchboard emit"), find("send repl.happened"));
    assert_eq!(
        (emit.trace_id.as_str(), emit.parent.as_str()),
        (trace, "00f067aa0ba902b7")
    );
    assert_eq!(
        (produce.trace_id.as_str(), produce.parent.as_str()),
        (trace, emit.span_id.as_str())
    );
    assert_eq!(produce.kind, "producer");
    assert!(spans.iter().all(|s| s.service == "switchboard-cli"), "{spans:?}");
    rt.block_on(server.shutdown()).unwrap();
}

/// Waits (bounded by the hang guard) until the handler says it runs.
fn wait_for(flag: &AtomicBool) {
    for _ in 0..HANG_GUARD_MS / 10 {
        if flag.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the call never reached its handler");
}

#[test]
fn history_is_kept_across_sessions() {
    let rt = runtime();
    let (server, url) = serve(&rt);
    let prompt = format!("{url}> ");
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("state/history");
    let history_arg = history.to_str().unwrap();

    let mut first = repl(&url, &["--history", history_arg]);
    enter(&mut first, &prompt, "call repl.count 2");
    expect(&mut first, "1\r\n2\r\n");
    expect(&mut first, &prompt);
    first.send_control('d').unwrap();
    exits_with(&mut first, 0);
    let kept = std::fs::read_to_string(&history).expect("the history file was written");
    assert!(kept.contains("call repl.count 2"), "{kept:?}");

    // The next session recalls the line with Up.
    let mut second = repl(&url, &["--history", history_arg]);
    expect(&mut second, &prompt);
    keys(&mut second, "\x1b[A\r");
    let screen = expect(&mut second, "1\r\n2\r\n");
    assert!(screen.contains("call repl.count 2"), "the line recalled: {screen:?}");
    enter(&mut second, &prompt, "exit");
    exits_with(&mut second, 0);

    // --no-history writes nothing.
    let mut third = repl(&url, &["--no-history"]);
    enter(&mut third, &prompt, "call repl.count 1");
    expect(&mut third, "\r\n1\r\n");
    enter(&mut third, &prompt, "exit");
    exits_with(&mut third, 0);
    assert_eq!(
        std::fs::read_to_string(&history).unwrap(),
        kept,
        "exit and --no-history sessions leave the history as it was"
    );
    rt.block_on(server.shutdown()).unwrap();
}

/// NestJS cannot describe itself: said once, and calls work without completion.
#[test]
fn works_against_a_nestjs_server() {
    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/nestjs");
    if !peer
        .join("v12/node_modules/@nestjs/microservices/package.json")
        .exists()
    {
        return missing("NestJS 12 (tests/nestjs/v12)", "run scripts/setup-nestjs.sh");
    }
    let mut node = Peer(
        std::process::Command::new("node")
            .arg(peer.join("server.mjs"))
            .args(["--nest", "12", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs"),
    );
    // One line, READY <port>, once it listens (or nothing, when it dies).
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(node.0.stdout.take().unwrap()), &mut ready).unwrap();
    let port = ready
        .trim()
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("the NestJS peer did not start: {ready:?}"));
    let url = format!("tcp://127.0.0.1:{port}");
    let prompt = format!("{url}> ");

    let mut p = repl(&url, &["--no-history"]);
    let screen = expect(&mut p, &prompt);
    assert!(
        screen.contains("this service cannot describe itself (NestJS?): no pattern completion"),
        "{screen:?}"
    );
    keys(&mut p, "call {\"cmd\":\"sum\"} [1, 2, 3]\r");
    expect(&mut p, "\r\n6\r\n");
    enter(&mut p, &prompt, "call meta {} -H tenant=acme");
    expect(&mut p, r#""tenant":"acme""#);
    enter(&mut p, &prompt, "exit");
    exits_with(&mut p, 0);
}

/// The NestJS peer, stopped however the test ends.
struct Peer(std::process::Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn help_has_examples() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["repl", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for shown in [
        "switchboard repl tcp://127.0.0.1:3001",
        r#"call {"cmd":"sum"} [1, 2, 3]"#,
        "emit user_created",
        "--history <FILE>",
        "--no-history",
        "Ctrl-C cancels",
    ] {
        assert!(help.contains(shown), "{shown:?} in:\n{help}");
    }
}
