//! The analytics service: counts signups (`user_created` events) in its state, and answers
//! `{cmd: "latest_signup"}` by asking the users service for the newest user (a handler
//! calling another service, with `?`). It also counts the user-events service's stored
//! events (`USER_CREATED`, `EMAIL_UPDATED`, `USER_DELETED`, published by its outbox) behind an
//! inbox, so an event delivered again counts once; `{cmd: "es_events"}` answers the counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use example_common::Listen;
use switchboard::prelude::*;
use switchboard_eventstore::Inbox;

/// The users service's `get_user`, as this service knows it (it does not link the users crate).
const GET_USER: MessageDef<String, User> = MessageDef::new(pattern!({ cmd = "get_user" }));

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: String,
    name: String,
    email: String,
}

/// What the handlers share: the counts, and a client of the users service.
#[derive(Clone, FromRef)]
struct App {
    signups: Signups,
    stored: StoredEvents,
    users: Client,
}

/// Signups seen so far, and the newest user's id.
#[derive(Clone, Default)]
struct Signups {
    total: Arc<AtomicU64>,
    latest: Arc<Mutex<Option<String>>>,
}

/// The user-events service's events seen so far, by kind.
#[derive(Clone, Default)]
struct StoredEvents {
    created: Arc<AtomicU64>,
    email_updated: Arc<AtomicU64>,
    deleted: Arc<AtomicU64>,
}

/// What `es_events` answers.
#[derive(Debug, Serialize)]
struct StoredEventCounts {
    created: u64,
    email_updated: u64,
    deleted: u64,
}

/// The user-events service's events, as its outbox publishes them: only the id is read.
#[derive(Debug, Deserialize)]
struct UserRef {
    id: String,
}

fn count(kind: &AtomicU64, event: &str, user: &UserRef) {
    let total = kind.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::info!(id = %user.id, total, "{event} counted");
}

#[event_pattern("USER_CREATED")]
async fn count_created(user: UserRef, State(stored): State<StoredEvents>) {
    count(&stored.created, "USER_CREATED", &user);
}

#[event_pattern("EMAIL_UPDATED")]
async fn count_email_updated(user: UserRef, State(stored): State<StoredEvents>) {
    count(&stored.email_updated, "EMAIL_UPDATED", &user);
}

#[event_pattern("USER_DELETED")]
async fn count_deleted(user: UserRef, State(stored): State<StoredEvents>) {
    count(&stored.deleted, "USER_DELETED", &user);
}

/// How many of the user-events service's events this instance has counted.
#[message_pattern({ cmd = "es_events" })]
async fn es_events(State(stored): State<StoredEvents>) -> StoredEventCounts {
    StoredEventCounts {
        created: stored.created.load(Ordering::Relaxed),
        email_updated: stored.email_updated.load(Ordering::Relaxed),
        deleted: stored.deleted.load(Ordering::Relaxed),
    }
}

#[event_pattern("user_created")]
async fn track_signup(user: User, ctx: Context, State(signups): State<Signups>) {
    let total = signups.total.fetch_add(1, Ordering::Relaxed) + 1;
    *signups.latest.lock().expect("signups lock") = Some(user.id.clone());
    tracing::info!(id = %user.id, transport = ctx.transport(), total, "signup tracked");
}

/// How many signups this instance has seen.
#[message_pattern({ cmd = "signups" })]
async fn signups(State(signups): State<Signups>) -> u64 {
    signups.total.load(Ordering::Relaxed)
}

/// The newest user who signed up, as the users service has it now.
#[message_pattern({ cmd = "latest_signup" })]
async fn latest_signup(State(signups): State<Signups>, State(users): State<Client>) -> RpcResult<Option<User>> {
    let Some(id) = signups.latest.lock().expect("signups lock").clone() else {
        return Ok(None);
    };
    // A failed call (users down, or an error of its own) answers this request with it.
    Ok(Some(users.send(GET_USER, id).await?))
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    listen: Listen,
    /// The users service.
    #[arg(long, default_value = "tcp://127.0.0.1:3001")]
    users: String,
}

#[tokio::main]
async fn main() -> switchboard::Result<()> {
    let _telemetry = example_common::init("analytics");
    let args = Args::parse();
    let app = App {
        signups: Signups::default(),
        stored: StoredEvents::default(),
        users: Client::builder(&args.users).build()?,
    };
    Microservice::new()
        .with_state(app)
        .handler(TRACK_SIGNUP)
        .handler(SIGNUPS)
        .handler(LATEST_SIGNUP)
        .handler(COUNT_CREATED)
        .handler(COUNT_EMAIL_UPDATED)
        .handler(COUNT_DELETED)
        .handler(ES_EVENTS)
        // An event the outbox publishes again (its `idempotency-key` seen) is counted once.
        .layer(Inbox::memory().layer())
        .listen_all(args.listen.or("tcp://127.0.0.1:3004"))
        .run()
        .await
}
