//! `events tail` and `events replay`: read an event store (SQLite file or PostgreSQL) from the
//! terminal, and publish its events again on any transport.
//!
//! A store is named `sqlite:PATH` (or a path ending in `.db`), or `postgres://…[?schema=NAME]`.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard::Client;
use switchboard_eventstore::{EventStore, IDEMPOTENCY_KEY, ReadStream, Recorded, SqliteStore};

use crate::input::{self, Database};
use crate::outcome::{Failure, Output};

/// Events read per round trip.
const PAGE: usize = 1024;

/// What to read.
pub struct Selection<'a> {
    /// One stream, or the whole store in global order.
    pub stream: Option<&'a str>,
    /// Only events with this name.
    pub name: Option<&'a str>,
    /// From this global position (or stream revision), inclusive.
    pub from: Option<u64>,
}

impl Selection<'_> {
    /// The next page from `at` (a revision with a stream, else a position; inclusive), the
    /// events of other names left out; moves `at` past the page. True if the page was full
    /// (more may follow at once).
    async fn page<S: EventStore>(&self, store: &S, at: &mut u64) -> Result<(Vec<Recorded>, bool), Failure> {
        let page = match self.stream {
            Some(stream) => store.read_stream(stream, ReadStream::forwards(*at, PAGE)).await,
            None => store.read_all(at.saturating_sub(1), PAGE).await,
        }
        .map_err(|e| Failure::other(e.to_string()))?;
        let full = page.len() == PAGE;
        if let Some(last) = page.last() {
            *at = if self.stream.is_some() {
                last.revision + 1
            } else {
                last.position + 1
            };
        }
        let page = page
            .into_iter()
            .filter(|e| self.name.is_none_or(|n| n == e.name))
            .collect();
        Ok((page, full))
    }
}

/// Opens the event store `url` names, refusing to create one.
async fn open(url: &str) -> Result<Store, Failure> {
    match input::database(url, "event store")? {
        Database::Sqlite(path) => SqliteStore::open(path)
            .map(Store::Sqlite)
            .map_err(|e| Failure::other(e.to_string())),
        Database::Postgres { url, schema } => postgres(url, schema).await,
    }
}

#[cfg(feature = "postgres")]
async fn postgres(url: &str, schema: Option<&str>) -> Result<Store, Failure> {
    let mut builder = switchboard_eventstore::PgStore::builder(url).max_connections(2);
    if let Some(schema) = schema {
        builder = builder.schema(schema);
    }
    // Its errors never quote the URL's password.
    builder
        .connect()
        .await
        .map(Store::Postgres)
        .map_err(|e| Failure::unreachable(e.to_string()))
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_url: &str, _schema: Option<&str>) -> Result<Store, Failure> {
    Err(Failure::usage(
        "this build has no PostgreSQL support (feature `postgres`)",
    ))
}

/// The backends the command line opens.
enum Store {
    Sqlite(SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(switchboard_eventstore::PgStore),
}

macro_rules! with_store {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            Store::Sqlite($s) => $body,
            #[cfg(feature = "postgres")]
            Store::Postgres($s) => $body,
        }
    };
}

/// Prints the selected events, the last `last` of them if given; with `follow`, then every new
/// one as it commits, until `count` were printed (or forever).
pub async fn tail(
    url: &str,
    sel: &Selection<'_>,
    last: Option<usize>,
    follow: bool,
    count: Option<u64>,
    out: &Output,
) -> Result<(), Failure> {
    let store = open(url).await?;
    with_store!(&store, s => tail_in(s, sel, last, follow, count, out).await)
}

async fn tail_in<S: EventStore>(
    store: &S,
    sel: &Selection<'_>,
    last: Option<usize>,
    follow: bool,
    count: Option<u64>,
    out: &Output,
) -> Result<(), Failure> {
    let fail = |e: switchboard_eventstore::Error| Failure::other(e.to_string());
    let mut at = match (sel.from, last, sel.stream) {
        (Some(from), _, _) => from,
        // The last N of a stream: read them backwards first.
        (None, Some(n), Some(stream)) => {
            let newest = store
                .read_stream(stream, ReadStream::backwards(n))
                .await
                .map_err(fail)?;
            newest.last().map_or(0, |e| e.revision)
        }
        (None, Some(n), None) => {
            let head = store.head().await.map_err(fail)?;
            head.saturating_sub(n as u64) + 1
        }
        (None, None, _) => 0,
    };
    let mut left = count;
    let mut head = store.watch_head();
    loop {
        head.mark_unchanged();
        let (page, full) = sel.page(store, &mut at).await?;
        for event in &page {
            print(event, out);
            if let Some(n) = &mut left {
                *n -= 1;
                if *n == 0 {
                    return Ok(());
                }
            }
        }
        if full {
            continue;
        }
        if !follow {
            return Ok(());
        }
        // Woken by this process's commits, polled for other processes' (SQLite) ones.
        tokio::select! {
            _ = head.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Publishes the selected events again through `to`, in order: the event's name as the
/// pattern, its data as the payload, its id in the `idempotency-key` header (so consumers with
/// an inbox skip what they already handled). Prints how many.
pub async fn replay(url: &str, sel: &Selection<'_>, to: &str, out: &Output) -> Result<(), Failure> {
    let store = open(url).await?;
    let client = Client::builder(to).build().map_err(Failure::from)?;
    let result = with_store!(&store, s => replay_in(s, sel, &client).await);
    client.close().await;
    let n = result?;
    if out.json {
        println!("{}", json!({ "replayed": n }));
    } else {
        eprintln!("replayed {n} events to {}", client.url());
    }
    Ok(())
}

async fn replay_in<S: EventStore>(store: &S, sel: &Selection<'_>, client: &Client) -> Result<u64, Failure> {
    let mut at = sel.from.unwrap_or(0);
    let mut n = 0;
    loop {
        let (page, full) = sel.page(store, &mut at).await?;
        for event in &page {
            let data: Value = serde_json::from_slice(&event.data).unwrap_or(Value::Null);
            client
                .emit_raw(&event.name, data)
                .header(IDEMPOTENCY_KEY, event.id.to_string())
                .await
                .map_err(Failure::from)?;
            n += 1;
        }
        if !full {
            client.flush().await.map_err(Failure::from)?;
            return Ok(n);
        }
    }
}

fn print(event: &Recorded, out: &Output) {
    let data = serde_json::from_slice::<Value>(&event.data).unwrap_or(Value::Null);
    if out.json {
        let metadata = serde_json::from_slice::<Value>(&event.metadata).unwrap_or(Value::Null);
        println!(
            "{}",
            json!({
                "position": event.position,
                "stream": event.stream,
                "revision": event.revision,
                "id": event.id.to_string(),
                "name": event.name,
                "version": event.version,
                "data": data,
                "metadata": metadata,
                "recorded_at": event.recorded_at,
            })
        );
    } else {
        println!(
            "#{} {}@{} {} v{} {data}",
            event.position, event.stream, event.revision, event.name, event.version
        );
    }
}
