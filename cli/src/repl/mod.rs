//! `switchboard repl <url>`: the commands `call`, `emit`, `listen` and `describe` at a prompt,
//! against one service kept connected for the session.
//!
//! ```text
//! $ switchboard repl tcp://127.0.0.1:3001
//! shop 2.1.0 at tcp://127.0.0.1:3001: 2 patterns; `help` lists the commands, Tab completes, Ctrl-D leaves
//! tcp://127.0.0.1:3001> call {"cmd":"order.place"} {"id": "o-1", "lines": [["tea", 2]]}
//! 1
//! tcp://127.0.0.1:3001> header tenant=acme
//! tcp://127.0.0.1:3001> emit order.placed {"id": "o-1", "lines": []}
//! emitted
//! ```
//!
//! Lines are read with [`rustyline`]: editing, history (kept in a file across sessions), Tab
//! completion of command names, of the service's patterns as its describe pattern lists them
//! ([`complete`]) and of flags. A failure is printed and the REPL goes on; Ctrl-C cancels the
//! command running (a call, a `listen`), not the REPL. How a line is read: [`commands`].

mod commands;
mod complete;
mod style;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{CompletionType, Config, Editor};
use serde_json::Value;
use switchboard::Client;
use switchboard::transport::redact;

use crate::outcome::{Failure, Output};
use crate::{describe, input, listen};
use commands::{COMMANDS, Command, HeaderChange, Message};
use complete::{Patterns, ReplHelper};
use style::Style;

/// How many lines the history keeps.
const HISTORY_LINES: usize = 1000;

/// `switchboard repl`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  switchboard repl tcp://127.0.0.1:3001
  switchboard repl nats://127.0.0.1:4222 --name shop -H tenant=acme
  switchboard repl tcp://127.0.0.1:3001 --history ./calls.history

At the prompt:
  call {\"cmd\":\"sum\"} [1, 2, 3]
  call math.add {\"a\": 5, \"b\": 3} -t 2s
  emit user_created {\"id\": 1} -H tenant=acme
  listen user_created            (a broker; until Ctrl-C)
  describe --schemas
  header tenant=acme             (sent with every call and event from then on)
  timeout 2s
  connect tcp://127.0.0.1:3002
  help

Tab completes commands, the service's patterns (from `describe`) and flags; Up and Down walk the
history (lines with a secret, a URL's password or an authorization header, are not kept in it);
Ctrl-C cancels a running call; Ctrl-D or `exit` leaves.")]
pub struct Repl {
    /// The service: tcp://host:port, tls://…, redis://…, nats://…, mqtt://…, amqp://…, kafka://…, grpc://…
    url: String,
    /// On a broker several services share: the one with this name (`Microservice::name`),
    /// whose patterns Tab completes.
    #[arg(long)]
    name: Option<String>,
    /// How long calls wait: `500ms`, `5s`, `1m` (`timeout` changes it at the prompt).
    #[arg(short, long, default_value = "10s", value_name = "DURATION")]
    timeout: String,
    /// A header sent with every call and event, `name=value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// The history file [default: $XDG_STATE_HOME/switchboard/history, else ~/.switchboard_history].
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// Keep no history file (Up and Down still walk this session's lines).
    #[arg(long, conflicts_with = "history")]
    no_history: bool,
}

/// Runs the REPL until `exit` or Ctrl-D. Only a bad start fails (a URL or an argument that
/// does not parse, no terminal to read); inside, failures are printed and the REPL goes on.
pub fn run(args: &Repl) -> Result<(), Failure> {
    let style = Style::detect();
    let timeout = input::duration(&args.timeout)?;
    let headers = args
        .headers
        .iter()
        .map(|h| input::header(h))
        .collect::<Result<Vec<_>, _>>()?;
    // A worker thread, so connections keep being served while the prompt waits.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Failure::other(format!("cannot start the runtime: {e}")))?;
    // Ctrl-C handled from now on, so that during a command it cancels the command instead of
    // ending the process (at the prompt the terminal is raw: Ctrl-C is a key there).
    let _ = rt.block_on(async { tokio::signal::ctrl_c().now_or_never() });

    let patterns = Arc::new(Mutex::new(Patterns::default()));
    let history = history_file(args);
    let mut editor = line_editor(
        ReplHelper::new(patterns.clone(), style.colored()),
        history.as_deref(),
        style,
    )?;

    let mut session = rt.block_on(Session::open(
        &args.url,
        args.name.clone(),
        timeout,
        headers,
        patterns,
        style,
    ))?;
    // Each command a trace of its own, exported while the REPL runs (see `trace`).
    #[cfg(feature = "telemetry")]
    let exporter = {
        let _runtime = rt.enter();
        crate::trace::start()
    };
    let mut history_failed = false;
    let outcome = loop {
        let prompt = style.prompt(&redact(&session.url));
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            // Ctrl-C at the prompt drops the line, as in a shell.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break Ok(()),
            Err(e) => break Err(Failure::other(format!("cannot read the terminal: {e}"))),
        };
        let command = commands::parse(&line);
        // `exit` left out of the history, so that Up and Enter never leaves by surprise; a line
        // with a secret too, so that the file holds none.
        let kept = !matches!(command, Ok(Command::Exit)) && !commands::holds_secret(&line);
        if !line.trim().is_empty() && kept {
            let _ = editor.add_history_entry(line.as_str());
            // Written line by line, so a killed terminal loses nothing; said once if it cannot be.
            if let Some(path) = &history
                && let Err(e) = save_history(&mut editor, path)
                && !history_failed
            {
                history_failed = true;
                style.notice(&format!("cannot write the history {}: {e}", path.display()));
            }
        }
        match command {
            Ok(Command::Exit) => break Ok(()),
            Ok(command) => {
                if let Err(failure) = session.execute(command, &rt) {
                    style.error(&failure);
                }
            }
            Err(failure) => style.error(&failure),
        }
    };
    rt.block_on(session.client.close());
    #[cfg(feature = "telemetry")]
    rt.block_on(exporter.finish());
    outcome
}

/// The line editor: completion and hints from `helper`, the history from `history`.
fn line_editor(
    helper: ReplHelper,
    history: Option<&std::path::Path>,
    style: Style,
) -> Result<Editor<ReplHelper, FileHistory>, Failure> {
    let broken = |e: ReadlineError| Failure::other(format!("cannot set up the line editor: {e}"));
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .max_history_size(HISTORY_LINES)
        .map_err(broken)?
        .auto_add_history(false)
        .build();
    let mut editor = Editor::with_config(config).map_err(broken)?;
    editor.set_helper(Some(helper));
    if let Some(path) = history {
        match editor.load_history(path) {
            Ok(()) => {}
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => style.notice(&format!("cannot read the history {}: {e}", path.display())),
        }
    }
    Ok(editor)
}

/// Where the history is kept: `--history`, else `$XDG_STATE_HOME/switchboard/history`, else
/// `~/.switchboard_history`; none with `--no-history` or without a home.
fn history_file(args: &Repl) -> Option<PathBuf> {
    if args.no_history {
        return None;
    }
    if let Some(path) = &args.history {
        return Some(path.clone());
    }
    let dir = |var: &str| std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(state) = dir("XDG_STATE_HOME") {
        return Some(state.join("switchboard").join("history"));
    }
    dir("HOME").map(|home| home.join(".switchboard_history"))
}

fn save_history(editor: &mut Editor<ReplHelper, FileHistory>, path: &std::path::Path) -> Result<(), String> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    editor.append_history(path).map_err(|e| e.to_string())
}

/// The service the REPL talks to, and what the session set.
struct Session {
    url: String,
    /// The service's name on a shared broker (`--name`), for `describe`.
    name: Option<String>,
    /// One client for the session, with the session's deadline.
    client: Client,
    timeout: Duration,
    /// Sent with every call and event (`header`, `-H` on the command line).
    headers: Vec<(String, String)>,
    /// What Tab completes, shared with the line editor.
    patterns: Arc<Mutex<Patterns>>,
    style: Style,
}

impl Session {
    async fn open(
        url: &str,
        name: Option<String>,
        timeout: Duration,
        headers: Vec<(String, String)>,
        patterns: Arc<Mutex<Patterns>>,
        style: Style,
    ) -> Result<Self, Failure> {
        let session = Session {
            url: url.to_owned(),
            name,
            client: client(url, timeout)?,
            timeout,
            headers,
            patterns,
            style,
        };
        session.learn().await;
        Ok(session)
    }

    /// Asks the service to describe itself, for Tab to complete its patterns, and greets.
    async fn learn(&self) {
        let url = redact(&self.url);
        // Not the whole deadline: on MQTT a service that does not describe itself answers
        // nothing, and the prompt should not wait long for that.
        let client = self.client.with_timeout(self.timeout.min(Duration::from_secs(3)));
        let learned = match describe::fetch(&client, self.name.as_deref()).await {
            Ok(value) => describe::parse(value, self.name.as_deref()).map(|d| {
                let name = d.name.clone().map(|n| format!("{n} ")).unwrap_or_default();
                let version = d.version.clone().map(|v| format!("{v} ")).unwrap_or_default();
                let patterns = Patterns::of(&d);
                let count = d.patterns.len();
                self.set_patterns(patterns);
                format!("{name}{version}at {url}: {count} patterns")
            }),
            Err(e) if describe::undescribed(&e) => {
                self.set_patterns(Patterns::default());
                self.style
                    .notice("this service cannot describe itself (NestJS?): no pattern completion");
                Ok(format!("at {url}"))
            }
            Err(e) => Err(Failure::from(e)),
        };
        match learned {
            Ok(greeting) => self.style.info(&format!(
                "{greeting}; `help` lists the commands, Tab completes, Ctrl-D leaves"
            )),
            Err(failure) => {
                self.set_patterns(Patterns::default());
                self.style.error(&failure);
                self.style
                    .info("`describe` tries again, `connect URL` goes elsewhere; `help` lists the commands");
            }
        }
    }

    fn set_patterns(&self, patterns: Patterns) {
        *self.patterns.lock().unwrap_or_else(PoisonError::into_inner) = patterns;
    }

    fn execute(&mut self, command: Command, rt: &tokio::runtime::Runtime) -> Result<(), Failure> {
        let out = Output { json: false };
        // Building a client may start its tasks.
        let _runtime = rt.enter();
        match command {
            Command::Nothing | Command::Exit => Ok(()),
            Command::Call(message) => {
                let (client, pattern, payload, headers) = self.prepare(message);
                let parent = traceparent(&headers);
                self.cancellable(rt, "call", parent.as_deref(), async {
                    crate::call(&client, pattern, payload, headers, &out).await
                })
            }
            Command::Emit(message) => {
                let (client, pattern, payload, headers) = self.prepare(message);
                let parent = traceparent(&headers);
                self.cancellable(rt, "emit", parent.as_deref(), async {
                    crate::send_event(&client, pattern, payload, headers).await?;
                    out.done(true);
                    Ok(())
                })
            }
            Command::Listen { patterns, count, json } => {
                let out = Output { json };
                self.cancellable(rt, "listen", None, listen::listen(&self.url, &patterns, count, &out))
            }
            Command::Describe { schemas, json } => self.cancellable(rt, "describe", None, async {
                let name = self.name.as_deref();
                let value = describe::fetch(&self.client, name)
                    .await
                    .map_err(|e| describe::failure(e, &redact(&self.url), name, self.timeout))?;
                if let Ok(description) = describe::parse(value.clone(), name) {
                    self.set_patterns(Patterns::of(&description));
                }
                describe::print(value, name, schemas, &Output { json })
            }),
            Command::Connect(url) => {
                let new = client(&url, self.timeout)?;
                let old = std::mem::replace(&mut self.client, new);
                self.url = url;
                rt.block_on(async {
                    old.close().await;
                    self.learn().await;
                });
                Ok(())
            }
            Command::Timeout(None) => {
                self.style.info(&format!("calls wait {:?}", self.timeout));
                Ok(())
            }
            Command::Timeout(Some(timeout)) => {
                self.timeout = timeout;
                self.client = self.client.with_timeout(timeout);
                Ok(())
            }
            Command::Header(change) => {
                self.header(change);
                Ok(())
            }
            Command::Help => {
                self.help();
                Ok(())
            }
        }
    }

    /// The client with the line's deadline, and the pattern, payload and headers to send.
    fn prepare(&self, m: Message) -> (Client, Value, Value, Vec<(String, String)>) {
        let client = match m.timeout {
            Some(timeout) => self.client.with_timeout(timeout),
            None => self.client.clone(),
        };
        let mut headers = self.headers.clone();
        // The line's own headers win over the sticky ones of the same name.
        headers.retain(|(name, _)| !m.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)));
        headers.extend(m.headers);
        (client, m.pattern, m.payload, headers)
    }

    /// Runs `command` until it ends or Ctrl-C is pressed (which cancels it: dropping a call
    /// forgets its reply); with the feature `telemetry`, in a span `switchboard <what>`, part
    /// of the trace of `traceparent` (a `traceparent` header the line sends) if given.
    fn cancellable(
        &self,
        rt: &tokio::runtime::Runtime,
        what: &str,
        traceparent: Option<&str>,
        command: impl Future<Output = Result<(), Failure>>,
    ) -> Result<(), Failure> {
        #[cfg(feature = "telemetry")]
        let command = tracing::Instrument::instrument(
            command,
            crate::trace::command(&format!("switchboard {what}"), traceparent),
        );
        #[cfg(not(feature = "telemetry"))]
        let _ = traceparent;
        rt.block_on(async {
            tokio::select! {
                // Listening first, so a Ctrl-C pressed as soon as the call is sent is seen.
                biased;
                _ = tokio::signal::ctrl_c() => None,
                done = command => Some(done),
            }
        })
        .unwrap_or_else(|| {
            self.style.notice(&format!("{what} cancelled"));
            Ok(())
        })
    }

    fn header(&mut self, change: HeaderChange) {
        match change {
            HeaderChange::Show if self.headers.is_empty() => self.style.info("no headers"),
            HeaderChange::Show => {
                for (name, value) in &self.headers {
                    println!("{name}={value}");
                }
            }
            HeaderChange::Set(name, value) => {
                self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                self.headers.push((name, value));
            }
            HeaderChange::Remove(name) => self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name)),
            HeaderChange::Clear => self.headers.clear(),
        }
    }

    fn help(&self) {
        let width = COMMANDS.iter().map(|(_, usage, _)| usage.len()).max().unwrap_or(0);
        for (_, usage, what) in COMMANDS {
            let pad = " ".repeat(width - usage.len());
            println!("  {}{pad}  {what}", self.style.bold(usage));
        }
        println!(
            "\nA pattern is text (`sum`) or JSON (`{{\"cmd\":\"sum\"}}`); the payload is the JSON after it (none: null)."
        );
        println!("Tab completes commands, patterns and flags; Up and Down walk the history; Ctrl-C cancels a call.");
    }
}

/// The `traceparent` among a line's headers, which its command's span continues.
fn traceparent(headers: &[(String, String)]) -> Option<String> {
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("traceparent"))
        .map(|(_, value)| value.clone())
}

/// One client for `url`, connected on first use.
fn client(url: &str, timeout: Duration) -> Result<Client, Failure> {
    Client::builder(url)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .build()
        .map_err(Failure::from)
}
