//! The seed's users service, event-sourced: a user is an aggregate ([`UserAccount`]) of which
//! only the events are stored (`USER_CREATED`, `EMAIL_UPDATED`, `USER_DELETED`, in the SQLite
//! file `--db`), and `{cmd: "es.get_user"}` rebuilds it by replaying its stream. The stored
//! events are the outbox: a relay publishes each one (its name the pattern, its id the
//! `idempotency-key` header) to every `--publish` URL, where analytics counts it once.
//!
//! `user-events --listen tcp://127.0.0.1:3006 --publish tcp://127.0.0.1:3004 --db user-events.db`

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use example_common::Listen;
use switchboard::prelude::*;
use switchboard_eventstore::{
    Aggregate, EventStore, ExecuteError, ReadStream, Relay, Repository, SqliteStore, StoredEvent, aggregate, events,
};

/// A user signed up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserCreated {
    /// Identifier.
    pub id: String,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
}

impl StoredEvent for UserCreated {
    const NAME: &'static str = "USER_CREATED";
}

/// A user changed their e-mail address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmailUpdated {
    /// Identifier.
    pub id: String,
    /// The new address.
    pub email: String,
}

impl StoredEvent for EmailUpdated {
    const NAME: &'static str = "EMAIL_UPDATED";
}

/// A user was deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDeleted {
    /// Identifier.
    pub id: String,
}

impl StoredEvent for UserDeleted {
    const NAME: &'static str = "USER_DELETED";
}

events! {
    /// What happens to a user.
    #[derive(Debug, Clone)]
    pub enum UserEvent { Created(UserCreated), EmailUpdated(EmailUpdated), Deleted(UserDeleted) }
}

/// A user as its events made it: never stored, folded from its stream on every load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserAccount {
    id: String,
    name: String,
    email: String,
    created: bool,
    deleted: bool,
}

/// What a user account is asked to do.
#[derive(Debug, Clone)]
pub enum Command {
    /// Sign up (once per id, even after a delete).
    Create {
        /// Identifier.
        id: String,
        /// Display name.
        name: String,
        /// E-mail address.
        email: String,
    },
    /// Change the e-mail address of a live user.
    UpdateEmail(String),
    /// Delete a live user.
    Delete,
}

/// Why a command is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Created already (ids are not reused, not even a deleted user's).
    #[error("already exists")]
    Exists,
    /// Never created, or deleted.
    #[error("not found")]
    NotFound,
}

#[aggregate]
impl Aggregate for UserAccount {
    const TYPE: &'static str = "user";
    type Event = UserEvent;
    type Command = Command;
    type Error = Refused;

    fn apply(&mut self, event: UserEvent) {
        match event {
            UserEvent::Created(e) => {
                (self.id, self.name, self.email) = (e.id, e.name, e.email);
                self.created = true;
            }
            UserEvent::EmailUpdated(e) => self.email = e.email,
            UserEvent::Deleted(_) => self.deleted = true,
        }
    }

    fn handle(&self, command: Command) -> Result<Vec<UserEvent>, Refused> {
        match command {
            Command::Create { .. } if self.created => Err(Refused::Exists),
            Command::Create { id, name, email } => Ok(vec![UserCreated { id, name, email }.into()]),
            _ if !self.created || self.deleted => Err(Refused::NotFound),
            Command::UpdateEmail(email) => Ok(vec![
                EmailUpdated {
                    id: self.id.clone(),
                    email,
                }
                .into(),
            ]),
            Command::Delete => Ok(vec![UserDeleted { id: self.id.clone() }.into()]),
        }
    }
}

/// A user, as `es.*` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Identifier.
    pub id: String,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
}

/// What `es.create_user` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewUser {
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
}

/// What `es.update_email` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateEmail {
    /// Identifier.
    pub id: String,
    /// The new address.
    pub email: String,
}

/// One event of a user's stream, as `es.user_history` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The event's name.
    pub name: String,
    /// Its id: the `idempotency-key` header the outbox publishes it with.
    pub id: String,
    /// Its place in the user's stream, from 0.
    pub revision: u64,
    /// Its place in the whole store, from 1.
    pub position: u64,
}

/// The controller: the users' repository, and the next id to give.
pub struct UserEvents {
    users: Repository<UserAccount, SqliteStore>,
    next_id: AtomicU64,
}

impl UserEvents {
    /// Over `store`; new users get ids after the highest one stored (from 1 in a new file).
    pub async fn open(store: SqliteStore) -> switchboard_eventstore::Result<Self> {
        let prefix = format!("{}-", UserAccount::TYPE);
        let (mut after, mut highest) = (0, 0);
        loop {
            let events = store.read_all(after, 4096).await?;
            let Some(last) = events.last() else { break };
            after = last.position;
            for event in &events {
                if let Some(id) = event.stream.strip_prefix(&prefix).and_then(|id| id.parse::<u64>().ok()) {
                    highest = highest.max(id);
                }
            }
        }
        Ok(UserEvents {
            users: Repository::new(store),
            next_id: AtomicU64::new(highest + 1),
        })
    }

    /// The user as its stream's events make it, and how many there were; 404 when it never
    /// existed or was deleted.
    async fn replay(&self, id: &str) -> RpcResult<(User, u64)> {
        let loaded = self.users.load(id).await.map_err(RpcError::internal_from)?;
        let user = alive(id, &loaded.state)?;
        Ok((user, loaded.stream.next_revision()))
    }

    async fn execute(&self, id: &str, command: Command) -> RpcResult<UserAccount> {
        match self.users.execute(id, command).await {
            Ok(loaded) => Ok(loaded.state),
            Err(ExecuteError::Refused(Refused::Exists)) => Err(error(409, format!("user {id} already exists"))),
            Err(ExecuteError::Refused(Refused::NotFound)) => Err(not_found(id)),
            Err(ExecuteError::Store(e)) => Err(RpcError::internal_from(e)),
        }
    }
}

#[handlers]
impl UserEvents {
    /// Signs a user up: stores `USER_CREATED` under the next id.
    #[message_pattern({ cmd = "es.create_user" })]
    pub async fn create_user(&self, data: NewUser) -> RpcResult<User> {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
            let command = Command::Create {
                id: id.clone(),
                name: data.name.clone(),
                email: data.email.clone(),
            };
            match self.users.execute(&id, command).await {
                Ok(loaded) => {
                    tracing::info!(%id, name = %data.name, "es.create_user: USER_CREATED stored");
                    return alive(&id, &loaded.state);
                }
                // Taken by another process writing the same file: the next one.
                Err(ExecuteError::Refused(Refused::Exists)) => continue,
                Err(ExecuteError::Refused(Refused::NotFound)) => unreachable!("a create is never refused as missing"),
                Err(ExecuteError::Store(e)) => return Err(RpcError::internal_from(e)),
            }
        }
    }

    /// Changes a live user's e-mail address: stores `EMAIL_UPDATED`.
    #[message_pattern({ cmd = "es.update_email" })]
    pub async fn update_email(&self, data: UpdateEmail) -> RpcResult<User> {
        let state = self.execute(&data.id, Command::UpdateEmail(data.email)).await?;
        tracing::info!(id = %data.id, "es.update_email: EMAIL_UPDATED stored");
        alive(&data.id, &state)
    }

    /// Deletes a user: stores `USER_DELETED`; `false` when there was no live user to delete.
    #[message_pattern({ cmd = "es.delete_user" })]
    pub async fn delete_user(&self, id: String) -> RpcResult<bool> {
        match self.users.execute(&id, Command::Delete).await {
            Ok(_) => {
                tracing::info!(%id, "es.delete_user: USER_DELETED stored");
                Ok(true)
            }
            Err(ExecuteError::Refused(_)) => Ok(false),
            Err(ExecuteError::Store(e)) => Err(RpcError::internal_from(e)),
        }
    }

    /// A user, rebuilt by replaying its stream; 404 when missing or deleted.
    #[message_pattern({ cmd = "es.get_user" })]
    pub async fn get_user(&self, id: String) -> RpcResult<User> {
        let (user, events) = self.replay(&id).await?;
        tracing::info!(%id, events, "es.get_user: rebuilt by replay");
        Ok(user)
    }

    /// The events of a user's stream, oldest first (a deleted user's too); 404 when none.
    #[message_pattern({ cmd = "es.user_history" })]
    pub async fn user_history(&self, id: String) -> RpcResult<Vec<HistoryEntry>> {
        const PAGE: usize = 1000;
        let stream = Repository::<UserAccount, SqliteStore>::stream_of(&id);
        let (mut history, mut from) = (Vec::new(), 0);
        loop {
            let events = self
                .users
                .store()
                .read_stream(&stream, ReadStream::forwards(from, PAGE))
                .await
                .map_err(RpcError::internal_from)?;
            let done = events.len() < PAGE;
            for event in events {
                from = event.revision + 1;
                history.push(HistoryEntry {
                    name: event.name,
                    id: event.id.to_string(),
                    revision: event.revision,
                    position: event.position,
                });
            }
            if done {
                break;
            }
        }
        if history.is_empty() {
            return Err(not_found(&id));
        }
        Ok(history)
    }
}

/// The user, if it exists and is not deleted.
fn alive(id: &str, state: &UserAccount) -> RpcResult<User> {
    if !state.created || state.deleted {
        return Err(not_found(id));
    }
    Ok(User {
        id: state.id.clone(),
        name: state.name.clone(),
        email: state.email.clone(),
    })
}

/// `{"status":"error","message":...,"code":...}`, as the users service answers.
fn error(code: u16, message: String) -> RpcError {
    RpcError::from_value(serde_json::json!({"status": "error", "message": message, "code": code}))
}

fn not_found(id: &str) -> RpcError {
    error(404, format!("user {id} not found"))
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    listen: Listen,
    /// The SQLite file of the events (created when missing).
    #[arg(long, default_value = "user-events.db")]
    db: PathBuf,
    /// Where the outbox publishes every stored event. Repeat it on TCP, which is point to
    /// point (one per listening service); on a broker one URL reaches every listener.
    #[arg(long = "publish", default_value = "tcp://127.0.0.1:3004")]
    publish: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _telemetry = example_common::init("user-events");
    let args = Args::parse();
    let store = SqliteStore::open(&args.db)?;
    let controller = UserEvents::open(store.clone()).await?;

    // One relay per destination, each with its own checkpoint (named after the URL, without
    // its password): each gets every event, at least once.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut relays = tokio::task::JoinSet::new();
    for url in &args.publish {
        let shown = switchboard::transport::redact(url);
        let checkpoint = format!("outbox {shown}");
        let relay = Relay::new(store.clone(), Client::builder(url).build()?).subscription(|s| s.named(checkpoint));
        let mut stopped = stopped.clone();
        relays.spawn(async move {
            tracing::info!(to = %shown, "outbox relay started");
            let stop = async move {
                let _ = stopped.wait_for(|&stop| stop).await;
            };
            if let Err(e) = relay.run(stop).await {
                tracing::error!(to = %shown, error = %e, "outbox relay stopped");
            }
        });
    }

    let served = Microservice::new()
        .group(controller)
        .listen_all(args.listen.or("tcp://127.0.0.1:3006"))
        .run()
        .await;
    stop.send_replace(true);
    while relays.join_next().await.is_some() {}
    Ok(served?)
}
