//! `switchboard`: call and emit against a running service — Switchboard or NestJS, the wire is
//! the same — on any transport, from a terminal or a script.
//!
//! ```text
//! switchboard call tcp://127.0.0.1:3001 '{"cmd":"sum"}' '[1,2,3]'
//! echo '{"id":1}' | switchboard emit nats://127.0.0.1:4222 user_created -H tenant=acme
//! switchboard listen redis://127.0.0.1:6379 user_created --json
//! switchboard describe tcp://127.0.0.1:3001 --schemas
//! switchboard repl tcp://127.0.0.1:3001          # the same at a prompt: history, Tab completion
//! switchboard events tail sqlite:users.db --stream user-42
//! switchboard events replay sqlite:users.db --name USER_CREATED --to nats://127.0.0.1:4222
//! switchboard saga list sqlite:orders.db --status stuck
//! switchboard saga retry sqlite:orders.db order-42
//! ```
//!
//! Exit codes (see [`outcome::Failure`]): 0 done, 2 bad usage or input, 3 no handler, 4 timeout,
//! 5 cannot reach the service (refused, lost), 6 the handler answered an error, 1 anything else.

mod bench;
mod describe;
mod events;
mod input;
mod listen;
mod outcome;
mod repl;
mod saga;
#[cfg(feature = "telemetry")]
mod trace;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::Value;
use switchboard::Client;

use outcome::{Failure, Output};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Call, emit, listen, describe, bench and a REPL against Switchboard and NestJS services on any transport; event stores and saga logs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sends a request and prints each value of the reply, one JSON value per line.
    ///
    /// switchboard call tcp://127.0.0.1:3001 '{"cmd":"sum"}' '[1,2,3]'
    ///
    /// echo '"42"' | switchboard call nats://127.0.0.1:4222 '{"cmd":"get_user"}' --timeout 2s --json
    Call(Target),
    /// Emits an event (nothing is printed once the transport took it).
    ///
    /// switchboard emit redis://127.0.0.1:6379 user_created '{"id":"42"}' -H tenant=acme
    Emit(Target),
    /// Prints the messages that pass on a broker (Redis, NATS, MQTT, Kafka) for the patterns
    /// given, or all (not on Kafka): events, requests and their replies, one per line
    /// (`channel message`).
    ///
    /// switchboard listen nats://127.0.0.1:4222 user_created '{"cmd":"get_user"}' --json
    Listen(Listening),
    /// Shows what a Switchboard service serves: each pattern's kind, policy, contract, and
    /// payload and reply types (its built-in describe pattern; a NestJS service cannot).
    ///
    /// switchboard describe tcp://127.0.0.1:3001 --schemas
    Describe(Describing),
    /// Reads an event store (an SQLite file or PostgreSQL) and publishes its events again.
    #[command(subcommand)]
    Events(Events),
    /// Lists, shows and operates the sagas of a saga log (an SQLite file or PostgreSQL).
    #[command(subcommand)]
    Saga(SagaCommand),
    /// Runs call, emit, listen and describe at a prompt, against one service kept connected: history, Tab
    /// completion of the service's patterns (from its describe pattern), colours.
    ///
    /// switchboard repl tcp://127.0.0.1:3001
    Repl(repl::Repl),
    /// Load on one pattern: calls/s and latency percentiles (closed loop with -c over -k
    /// connections, or open loop with --rate), as a table or JSON; --compare, --plot.
    ///
    /// switchboard bench tcp://127.0.0.1:3001 '{"cmd":"add"}' '{"a":1,"b":2}' -k 4 -c 256 -d 10s
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum SagaCommand {
    /// Lists sagas, newest first.
    ///
    /// switchboard saga list sqlite:orders.db --status stuck --status compensating
    List(SagaList),
    /// Shows a saga with every entry of its log: steps, attempts, errors.
    ///
    /// switchboard saga show sqlite:orders.db order-42
    Show(SagaOne),
    /// Tries a stuck saga's failing step or compensation again, with fresh attempts; the
    /// orchestrator running the log picks it up.
    ///
    /// switchboard saga retry sqlite:orders.db order-42
    Retry(SagaOne),
    /// Counts a stuck saga's failing step (past the pivot) or compensation as done, and lets
    /// the saga go on.
    ///
    /// switchboard saga skip sqlite:orders.db order-42
    Skip(SagaOne),
    /// Ends a stuck saga as it is.
    ///
    /// switchboard saga abort sqlite:orders.db order-42 --reason "refunded by hand"
    Abort(SagaAbort),
}

#[derive(Args)]
struct SagaList {
    /// The log: sqlite:PATH (or a path ending in .db), or postgres://…[?schema=NAME].
    log: String,
    /// Only sagas in this status (running, compensating, completed, compensated, stuck,
    /// aborted); repeatable.
    #[arg(long)]
    status: Vec<String>,
    /// Only sagas of this definition.
    #[arg(long)]
    saga: Option<String>,
    /// At most this many.
    #[arg(short = 'n', long, default_value_t = 100)]
    limit: usize,
    /// JSON lines.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SagaOne {
    /// The log: sqlite:PATH (or a path ending in .db), or postgres://…[?schema=NAME].
    log: String,
    /// The saga's id.
    id: String,
    /// JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SagaAbort {
    #[command(flatten)]
    one: SagaOne,
    /// Why, kept in the log.
    #[arg(long)]
    reason: String,
}

#[derive(Subcommand)]
enum Events {
    /// Prints a store's events in order (all of them, one stream's, one name's), then, with
    /// --follow, each new one as it is committed.
    ///
    /// switchboard events tail sqlite:users.db --last 20 --follow
    Tail(Tail),
    /// Publishes a store's events again on a transport, in order: the name as the pattern, the
    /// data as the payload, the id in the `idempotency-key` header.
    ///
    /// switchboard events replay sqlite:users.db --from 1 --to tcp://127.0.0.1:3004
    Replay(Replay),
}

#[derive(Args)]
struct Selected {
    /// The store: sqlite:PATH (or a path ending in .db), or postgres://…[?schema=NAME].
    store: String,
    /// One stream only.
    #[arg(long)]
    stream: Option<String>,
    /// Events with this name only.
    #[arg(long)]
    name: Option<String>,
    /// From this global position (with --stream: this revision), inclusive.
    #[arg(long)]
    from: Option<u64>,
    /// JSON lines.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct Tail {
    #[command(flatten)]
    selected: Selected,
    /// Start with the last N events.
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// Keep printing new events as they are committed.
    #[arg(short, long)]
    follow: bool,
    /// Stop after this many events (at least 1).
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

#[derive(Args)]
struct Replay {
    #[command(flatten)]
    selected: Selected,
    /// Where to publish: any transport URL.
    #[arg(long, value_name = "URL")]
    to: String,
}

impl Selected {
    fn selection(&self) -> events::Selection<'_> {
        events::Selection {
            stream: self.stream.as_deref(),
            name: self.name.as_deref(),
            from: self.from,
        }
    }
}

#[derive(Args)]
struct Listening {
    /// The broker: redis://…, nats://…, mqtt://…, kafka://…
    url: String,
    /// Patterns to listen to, as for `call` (all when none is given).
    patterns: Vec<String>,
    /// Stop after this many messages.
    #[arg(short = 'n', long)]
    count: Option<usize>,
    /// JSON lines: `{"channel":…,"message":…,"headers":…}`.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct Describing {
    /// The service: tcp://host:port, tls://…, redis://…, nats://…, mqtt://…, amqp://…, kafka://…, grpc://…
    url: String,
    /// On a broker several services share: the one with this name (`Microservice::name`).
    #[arg(long)]
    name: Option<String>,
    /// The whole JSON Schemas of payloads and replies, not one-line summaries.
    #[arg(long)]
    schemas: bool,
    /// How long to wait: `500ms`, `5s`, `1m`.
    #[arg(short, long, default_value = "10s", value_name = "DURATION")]
    timeout: String,
    /// The description as JSON, as the service answered it.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct Target {
    /// The service: tcp://host:port, tls://…, redis://…, nats://…, mqtt://…, amqp://…, kafka://…, grpc://…
    url: String,
    /// The pattern: text (`sum`), or JSON for object and number patterns (`{"cmd":"sum"}`).
    pattern: String,
    /// The payload, as JSON; read from stdin when left out (or `-`), `null` on a terminal.
    payload: Option<String>,
    /// A header (NestJS 12 `metadata`), `name=value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// How long to wait: `500ms`, `5s`, `1m`.
    #[arg(short, long, default_value = "10s", value_name = "DURATION")]
    timeout: String,
    /// A W3C trace id (32 hex digits) for the call: sent as `traceparent` with a new span id (with
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` set, the command's exported spans join that trace).
    #[arg(long, value_name = "HEX32")]
    trace_id: Option<String>,
    /// JSON lines on stdout, errors included: `{"value":…}`, `{"ok":true}`, `{"error":{"kind":…,"message":…}}`.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = match &cli.command {
        Command::Call(t) | Command::Emit(t) => t.json,
        Command::Listen(l) => l.json,
        Command::Describe(d) => d.json,
        Command::Events(Events::Tail(t)) => t.selected.json,
        Command::Events(Events::Replay(r)) => r.selected.json,
        Command::Saga(SagaCommand::List(l)) => l.json,
        Command::Saga(SagaCommand::Show(o) | SagaCommand::Retry(o) | SagaCommand::Skip(o)) => o.json,
        Command::Saga(SagaCommand::Abort(a)) => a.one.json,
        Command::Repl(_) => false,
        Command::Bench(b) => b.json,
    };
    let out = Output { json };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return out.fail(&Failure::other(format!("cannot start the runtime: {e}"))),
    };
    let done = match &cli.command {
        Command::Call(t) => rt.block_on(traced(false, t, &out)),
        Command::Emit(t) => rt.block_on(traced(true, t, &out)),
        Command::Listen(l) => {
            let patterns: Vec<Value> = l.patterns.iter().map(|p| input::pattern(p)).collect();
            rt.block_on(listen::listen(&l.url, &patterns, l.count, &out))
        }
        Command::Describe(d) => rt.block_on(async {
            let timeout = input::duration(&d.timeout)?;
            describe::describe(&d.url, d.name.as_deref(), d.schemas, timeout, &out).await
        }),
        Command::Events(Events::Tail(t)) => rt.block_on(events::tail(
            &t.selected.store,
            &t.selected.selection(),
            t.last,
            t.follow,
            t.count,
            &out,
        )),
        Command::Events(Events::Replay(r)) => {
            rt.block_on(events::replay(&r.selected.store, &r.selected.selection(), &r.to, &out))
        }
        Command::Repl(r) => repl::run(r),
        Command::Bench(b) => bench::run(b, &out),
        Command::Saga(command) => {
            let (log, action) = match command {
                SagaCommand::List(l) => (
                    &l.log,
                    saga::Action::List {
                        statuses: &l.status,
                        saga: l.saga.as_deref(),
                        limit: l.limit,
                    },
                ),
                SagaCommand::Show(o) => (&o.log, saga::Action::Show(&o.id)),
                SagaCommand::Retry(o) => (&o.log, saga::Action::Retry(&o.id)),
                SagaCommand::Skip(o) => (&o.log, saga::Action::Skip(&o.id)),
                SagaCommand::Abort(a) => (&a.one.log, saga::Action::Abort(&a.one.id, &a.reason)),
            };
            rt.block_on(saga::run(log, action, &out))
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => out.fail(&failure),
    }
}

/// `call` or `emit`; with the feature `telemetry` and an OTLP endpoint configured, in a span
/// that is exported (see `trace`).
async fn traced(emit: bool, t: &Target, out: &Output) -> Result<(), Failure> {
    let traceparent = t.trace_id.as_deref().map(input::traceparent).transpose()?;
    #[cfg(feature = "telemetry")]
    {
        use tracing::Instrument as _;
        let exporter = trace::start();
        let name = if emit { "switchboard emit" } else { "switchboard call" };
        let span = trace::command(name, traceparent.as_deref());
        let done = run(emit, t, traceparent, out).instrument(span).await;
        exporter.finish().await;
        done
    }
    #[cfg(not(feature = "telemetry"))]
    run(emit, t, traceparent, out).await
}

async fn run(emit: bool, t: &Target, traceparent: Option<String>, out: &Output) -> Result<(), Failure> {
    let timeout = input::duration(&t.timeout)?;
    let pattern = input::pattern(&t.pattern);
    let payload = input::payload(t.payload.as_deref())?;
    let mut headers = t
        .headers
        .iter()
        .map(|h| input::header(h))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(traceparent) = traceparent {
        headers.push(("traceparent".to_owned(), traceparent));
    }
    let client = Client::builder(&t.url)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .build()
        .map_err(Failure::from)?;
    let result = if emit {
        send_event(&client, pattern, payload, headers).await
    } else {
        call(&client, pattern, payload, headers, out).await
    };
    client.close().await;
    result?;
    if emit || t.json {
        out.done(emit);
    }
    Ok(())
}

async fn call(
    client: &Client,
    pattern: Value,
    payload: Value,
    headers: Vec<(String, String)>,
    out: &Output,
) -> Result<(), Failure> {
    let mut call = client.send_raw::<Value>(pattern, payload);
    for (name, value) in headers {
        call = call.header(name, value);
    }
    let mut values = call.stream().await.map_err(Failure::from)?;
    while let Some(value) = values.next().await {
        out.value(&value.map_err(Failure::from)?);
    }
    Ok(())
}

async fn send_event(
    client: &Client,
    pattern: Value,
    payload: Value,
    headers: Vec<(String, String)>,
) -> Result<(), Failure> {
    let mut emit = client.emit_raw(pattern, payload);
    for (name, value) in headers {
        emit = emit.header(name, value);
    }
    emit.await.map_err(Failure::from)
}
