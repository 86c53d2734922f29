//! `saga list|show|retry|skip|abort`: a saga log (an SQLite file or PostgreSQL) from the
//! terminal. Operator commands are written to the log; the orchestrator running it picks the
//! saga up on its next claim.
//!
//! A log is named `sqlite:PATH` (or a path ending in `.db`), or `postgres://…[?schema=NAME]`.

use serde_json::{Value, json};
use switchboard_saga::log::{Record, SagaLog, SqliteLog, Summary, now_ms};
use switchboard_saga::{Error, Filter, Orchestrator, Status};

use crate::input::{self, Database};
use crate::outcome::{Failure, Output};

/// What to do.
pub enum Action<'a> {
    /// Sagas by status and definition, newest first.
    List {
        statuses: &'a [String],
        saga: Option<&'a str>,
        limit: usize,
    },
    /// One saga with its log.
    Show(&'a str),
    /// A stuck saga's failing work, again.
    Retry(&'a str),
    /// A stuck saga's failing work, counted as done.
    Skip(&'a str),
    /// A stuck saga, ended.
    Abort(&'a str, &'a str),
}

/// The backends the command line opens.
enum Log {
    Sqlite(SqliteLog),
    #[cfg(feature = "postgres")]
    Postgres(switchboard_saga::log::PgLog),
}

/// Opens the saga log `url` names, refusing to create one.
async fn open(url: &str) -> Result<Log, Failure> {
    match input::database(url, "saga log")? {
        Database::Sqlite(path) => SqliteLog::open(path)
            .map(Log::Sqlite)
            .map_err(|e| Failure::other(e.to_string())),
        Database::Postgres { url, schema } => postgres(url, schema).await,
    }
}

#[cfg(feature = "postgres")]
async fn postgres(url: &str, schema: Option<&str>) -> Result<Log, Failure> {
    let mut builder = switchboard_saga::log::PgLog::builder(url).max_connections(2);
    if let Some(schema) = schema {
        builder = builder.schema(schema);
    }
    // Its errors never quote the URL's password.
    builder
        .connect()
        .await
        .map(Log::Postgres)
        .map_err(|e| Failure::unreachable(e.to_string()))
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_url: &str, _schema: Option<&str>) -> Result<Log, Failure> {
    Err(Failure::usage(
        "this build has no PostgreSQL support (feature `postgres`)",
    ))
}

/// Runs `action` on the log `url` names.
pub async fn run(url: &str, action: Action<'_>, out: &Output) -> Result<(), Failure> {
    match open(url).await? {
        Log::Sqlite(log) => run_in(log, action, out).await,
        #[cfg(feature = "postgres")]
        Log::Postgres(log) => run_in(log, action, out).await,
    }
}

async fn run_in<L: SagaLog>(log: L, action: Action<'_>, out: &Output) -> Result<(), Failure> {
    let orchestrator = Orchestrator::builder(log)
        .owner(format!("switchboard-cli-{}", std::process::id()))
        .build();
    let (id, done) = match action {
        Action::List { statuses, saga, limit } => {
            let statuses = statuses
                .iter()
                .map(|s| Status::parse(s).ok_or_else(|| Failure::usage(format!("no saga status {s:?}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let filter = Filter {
                statuses,
                saga: saga.map(str::to_owned),
                limit,
            };
            for summary in orchestrator.list(filter).await.map_err(failure)? {
                print_summary(&summary, out);
            }
            return Ok(());
        }
        Action::Show(id) => {
            let record = orchestrator.show(id).await.map_err(failure)?;
            print_record(&record, out);
            return Ok(());
        }
        Action::Retry(id) => (id, orchestrator.retry(id).await),
        Action::Skip(id) => (id, orchestrator.skip(id).await),
        Action::Abort(id, reason) => (id, orchestrator.abort(id, reason).await),
    };
    done.map_err(failure)?;
    let status = orchestrator.show(id).await.map_err(failure)?.summary.status;
    if out.json {
        println!("{}", json!({ "id": id, "status": status }));
    } else {
        eprintln!("saga {id} is {status} now");
    }
    Ok(())
}

/// A missing saga or a command that does not apply is the user's mistake (exit 2).
fn failure(e: Error) -> Failure {
    match e {
        Error::NotFound(_) | Error::WrongStatus { .. } => Failure::usage(e.to_string()),
        e => Failure::other(e.to_string()),
    }
}

fn print_summary(s: &Summary, out: &Output) {
    if out.json {
        println!("{}", serde_json::to_value(s).unwrap_or(Value::Null));
    } else {
        println!(
            "{}  {}  {}  {} entries  updated {} ago",
            s.id,
            s.saga,
            s.status,
            s.seq,
            age(s.updated_at)
        );
    }
}

fn print_record(r: &Record, out: &Output) {
    if out.json {
        println!("{}", serde_json::to_value(r).unwrap_or(Value::Null));
        return;
    }
    print_summary(&r.summary, out);
    for entry in &r.entries {
        let mut details = serde_json::to_value(&entry.transition).unwrap_or(Value::Null);
        if let Value::Object(fields) = &mut details {
            fields.remove("kind");
        }
        let details = match details {
            Value::Object(fields) if fields.is_empty() => String::new(),
            details => details.to_string(),
        };
        println!(
            "  #{} {} ago  {} {details}",
            entry.seq,
            age(entry.at),
            entry.transition.kind()
        );
    }
}

/// How long ago `at` (ms since the epoch) was, roughly.
fn age(at: u64) -> String {
    let ms = now_ms().saturating_sub(at);
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1e3),
        60_000..3_600_000 => format!("{}m", ms / 60_000),
        _ => format!("{}h", ms / 3_600_000),
    }
}
