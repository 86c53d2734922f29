//! The analytics service: counts signups (`user_created` events) in its state, and answers
//! `{cmd: "latest_signup"}` by asking the users service for the newest user (a handler
//! calling another service, with `?`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use example_common::Listen;
use switchboard::prelude::*;

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
    users: Client,
}

/// Signups seen so far, and the newest user's id.
#[derive(Clone, Default)]
struct Signups {
    total: Arc<AtomicU64>,
    latest: Arc<Mutex<Option<String>>>,
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
        users: Client::builder(&args.users).build()?,
    };
    Microservice::new()
        .with_state(app)
        .handler(TRACK_SIGNUP)
        .handler(SIGNUPS)
        .handler(LATEST_SIGNUP)
        .listen_all(args.listen.or("tcp://127.0.0.1:3004"))
        .run()
        .await
}
