//! Aggregates on the SQLite store: load and save with optimistic concurrency, snapshots taken
//! and ignored when the code changed, stored old event versions upcast.

use serde::{Deserialize, Serialize};
use switchboard_eventstore::{
    Aggregate, Error, EventStore, ExecuteError, ExpectedVersion, MemoryStore, NewEvent, ReadStream, Repository,
    SqliteStore, StoredEvent, StreamState, events, schema_of, upcast,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct UserCreatedV1 {
    name: String,
}
impl StoredEvent for UserCreatedV1 {
    const NAME: &'static str = "USER_CREATED";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct UserCreated {
    name: String,
    email: String,
}
impl From<UserCreatedV1> for UserCreated {
    fn from(v1: UserCreatedV1) -> Self {
        UserCreated {
            email: format!("{}@unknown", v1.name.to_lowercase()),
            name: v1.name,
        }
    }
}
impl StoredEvent for UserCreated {
    const NAME: &'static str = "USER_CREATED";
    const VERSION: u32 = 2;
    fn upcast(version: u32, data: &[u8]) -> switchboard_eventstore::Result<Self> {
        upcast::from::<UserCreatedV1, Self>(version, data)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct EmailUpdated {
    email: String,
}
impl StoredEvent for EmailUpdated {
    const NAME: &'static str = "EMAIL_UPDATED";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct UserDeleted {}
impl StoredEvent for UserDeleted {
    const NAME: &'static str = "USER_DELETED";
}

events! {
    #[derive(Clone, Debug)]
    enum UserEvent { Created(UserCreated), EmailUpdated(EmailUpdated), Deleted(UserDeleted) }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    email: String,
    deleted: bool,
    changes: u32,
}

#[derive(Clone, Debug)]
enum Command {
    Create { name: String, email: String },
    UpdateEmail(String),
    Delete,
}

#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the user exists")]
    Exists,
    #[error("no such user")]
    Missing,
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    const SCHEMA: u64 = schema_of("User", 1);
    type Event = UserEvent;
    type Command = Command;
    type Error = Refused;

    fn apply(&mut self, event: UserEvent) {
        self.changes += 1;
        match event {
            UserEvent::Created(e) => (self.name, self.email) = (e.name, e.email),
            UserEvent::EmailUpdated(e) => self.email = e.email,
            UserEvent::Deleted(_) => self.deleted = true,
        }
    }

    fn handle(&self, command: Command) -> Result<Vec<UserEvent>, Refused> {
        let exists = !self.name.is_empty() && !self.deleted;
        match command {
            Command::Create { .. } if exists => Err(Refused::Exists),
            Command::Create { name, email } => Ok(vec![UserCreated { name, email }.into()]),
            _ if !exists => Err(Refused::Missing),
            Command::UpdateEmail(email) => Ok(vec![EmailUpdated { email }.into()]),
            Command::Delete => Ok(vec![UserDeleted {}.into()]),
        }
    }
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db")).unwrap();
    (dir, store)
}

fn create(name: &str) -> Command {
    Command::Create {
        name: name.into(),
        email: format!("{name}@example.com"),
    }
}

#[tokio::test]
async fn commands_become_events_and_replay_rebuilds_the_state() {
    let (_dir, store) = store();
    let users = Repository::<User, _>::new(store.clone());
    users.execute("1", create("Ada")).await.unwrap();
    users
        .execute("1", Command::UpdateEmail("ada@lovelace.org".into()))
        .await
        .unwrap();
    let user = users.load("1").await.unwrap();
    assert_eq!(user.state.email, "ada@lovelace.org");
    assert_eq!(user.stream, StreamState::At(1));
    let names: Vec<_> = store.read_stream("user-1", ReadStream::forwards(0, 10)).await.unwrap();
    let names: Vec<_> = names.iter().map(|e| (e.name.as_str(), e.version)).collect();
    assert_eq!(names, [("USER_CREATED", 2), ("EMAIL_UPDATED", 1)]);

    let refused = users.execute("1", create("Ada")).await.unwrap_err();
    assert!(matches!(refused, ExecuteError::Refused(Refused::Exists)), "{refused:?}");
    let refused = users.execute("2", Command::Delete).await.unwrap_err();
    assert!(
        matches!(refused, ExecuteError::Refused(Refused::Missing)),
        "{refused:?}"
    );
}

/// A stream truncated past everything it had, with no snapshot to start from, cannot be
/// rebuilt: loading says so (it used to reload forever), on SQLite and in memory.
#[tokio::test]
async fn a_stream_truncated_past_its_snapshot_is_an_error_not_a_loop() {
    let (_dir, sqlite) = store();
    truncated_past_everything(sqlite).await;
    truncated_past_everything(MemoryStore::new()).await;
}

async fn truncated_past_everything<S: EventStore + Clone + 'static>(store: S) {
    let users = Repository::<User, _>::new(store.clone());
    users.execute("1", create("Ada")).await.unwrap();
    users
        .execute("1", Command::UpdateEmail("ada@lovelace.org".into()))
        .await
        .unwrap();
    store.truncate_before("user-1", 2).await.unwrap();
    let err = users.load("1").await.unwrap_err().to_string();
    assert!(err.contains("truncated past its last usable snapshot"), "{err}");
}

#[tokio::test]
async fn a_stale_save_is_refused_and_execute_retries_on_the_new_state() {
    let (_dir, store) = store();
    let users = Repository::<User, _>::new(store.clone());
    users.execute("1", create("Ada")).await.unwrap();
    let mut first = users.load("1").await.unwrap();
    let mut second = users.load("1").await.unwrap();
    users
        .save(&mut first, vec![EmailUpdated { email: "a@1".into() }.into()])
        .await
        .unwrap();
    let stale = users
        .save(&mut second, vec![EmailUpdated { email: "a@2".into() }.into()])
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            Error::WrongExpectedVersion {
                expected: ExpectedVersion::Exact(0),
                actual: StreamState::At(1),
                ..
            }
        ),
        "{stale:?}"
    );

    // Many concurrent commands on one aggregate: each lands once, on the state before it.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let users = users.clone().retries(50);
            tokio::spawn(async move {
                users
                    .execute("1", Command::UpdateEmail(format!("{i}@x")))
                    .await
                    .map(drop)
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(users.load("1").await.unwrap().state.changes, 1 + 1 + 8);
}

#[tokio::test]
async fn snapshots_are_taken_every_n_events_and_loading_uses_them() {
    let (_dir, store) = store();
    let users = Repository::<User, _>::new(store.clone()).snapshot_every(10);
    users.execute("1", create("Ada")).await.unwrap();
    for i in 0..24 {
        users
            .execute("1", Command::UpdateEmail(format!("{i}@x")))
            .await
            .unwrap();
    }
    // Taken in the background: wait until the one at revision 19 is there.
    let snapshot = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match store.load_snapshot("user-1").await.unwrap() {
                Some(s) if s.revision == 19 => return s,
                _ => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    })
    .await
    .expect("a snapshot at revision 19");
    let at_snapshot: User = serde_json::from_slice(&snapshot.data).unwrap();
    assert_eq!(at_snapshot.changes, 20);

    // Loading folds only the tail into it: tamper with the snapshot to see it was used.
    let mut tampered = snapshot.clone();
    let mut state = at_snapshot;
    state.name = "from the snapshot".into();
    tampered.data = serde_json::to_vec(&state).unwrap().into();
    store.save_snapshot(tampered).await.unwrap();
    let user = users.load("1").await.unwrap();
    assert_eq!(user.state.name, "from the snapshot");
    assert_eq!(user.state.changes, 25);
    assert_eq!(user.state.email, "23@x");
}

/// The same stream read by code whose aggregate changed (a field added and `apply` counting
/// differently): the old snapshot is ignored, the state is rebuilt from the events.
#[tokio::test]
async fn a_snapshot_from_older_code_is_ignored() {
    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    struct UserV2 {
        name: String,
        email: String,
        deleted: bool,
        changes: u32,
        #[serde(default)]
        email_changes: u32,
    }
    impl Aggregate for UserV2 {
        const TYPE: &'static str = "user";
        const SCHEMA: u64 = schema_of("User", 1); // not bumped: the shape stamp still differs
        type Event = UserEvent;
        type Command = Command;
        type Error = Refused;
        fn apply(&mut self, event: UserEvent) {
            self.changes += 1;
            match event {
                UserEvent::Created(e) => (self.name, self.email) = (e.name, e.email),
                UserEvent::EmailUpdated(e) => {
                    self.email = e.email;
                    self.email_changes += 1;
                }
                UserEvent::Deleted(_) => self.deleted = true,
            }
        }
        fn handle(&self, _: Command) -> Result<Vec<UserEvent>, Refused> {
            Ok(Vec::new())
        }
    }

    let (_dir, store) = store();
    let v1 = Repository::<User, _>::new(store.clone()).snapshot_every(5);
    v1.execute("1", create("Ada")).await.unwrap();
    for i in 0..5 {
        v1.execute("1", Command::UpdateEmail(format!("{i}@x"))).await.unwrap();
    }
    let loaded = v1.load("1").await.unwrap();
    v1.snapshot(&loaded).await.unwrap();
    assert!(store.load_snapshot("user-1").await.unwrap().is_some());

    let v2 = Repository::<UserV2, _>::new(store.clone()).snapshot_every(5);
    let user = v2.load("1").await.unwrap();
    assert_eq!(
        user.state.email_changes, 5,
        "rebuilt from events, not from the v1 snapshot (which would say 0)"
    );

    // A bumped SCHEMA alone also changes the stamp.
    assert_ne!(schema_of("User", 1), schema_of("User", 2));
}

#[tokio::test]
async fn stored_old_versions_are_upcast_when_loading() {
    let (_dir, store) = store();
    // Written by older code: USER_CREATED version 1, without an email.
    store
        .append(
            "user-7",
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&UserCreatedV1 { name: "Grace".into() }).unwrap()],
        )
        .await
        .unwrap();
    let users = Repository::<User, _>::new(store.clone());
    let user = users.load("7").await.unwrap();
    assert_eq!(user.state.email, "grace@unknown");

    // A version newer than the code: a clear error, not a wrong state.
    store
        .append(
            "user-8",
            ExpectedVersion::NoStream,
            vec![NewEvent::raw("USER_CREATED", 3, r#"{"x":1}"#)],
        )
        .await
        .unwrap();
    let err = users.load("8").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnknownVersion {
                version: 3,
                current: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_snapshot_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        let users = Repository::<User, _>::new(store.clone()).snapshot_every(3);
        users.execute("1", create("Ada")).await.unwrap();
        let loaded = users.load("1").await.unwrap();
        users.snapshot(&loaded).await.unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let snapshot = store.load_snapshot("user-1").await.unwrap().expect("kept");
    assert_eq!(snapshot.revision, 0);
    let user = Repository::<User, _>::new(store)
        .snapshot_every(3)
        .load("1")
        .await
        .unwrap();
    assert_eq!(user.state.name, "Ada");
}

/// A snapshot written under an older `SCHEMA` is upcast by the aggregate's typed function
/// instead of being thrown away.
#[tokio::test]
async fn an_older_snapshot_is_upcast_when_the_aggregate_knows_how() {
    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    struct UserV3 {
        display: String,
        email: String,
        deleted: bool,
        changes: u32,
        from_snapshot: bool,
    }
    impl From<User> for UserV3 {
        fn from(old: User) -> Self {
            UserV3 {
                display: old.name,
                email: old.email,
                deleted: old.deleted,
                changes: old.changes,
                from_snapshot: true,
            }
        }
    }
    impl Aggregate for UserV3 {
        const TYPE: &'static str = "user";
        const SCHEMA: u64 = schema_of("User", 3);
        type Event = UserEvent;
        type Command = Command;
        type Error = Refused;
        fn apply(&mut self, event: UserEvent) {
            self.changes += 1;
            match event {
                UserEvent::Created(e) => (self.display, self.email) = (e.name, e.email),
                UserEvent::EmailUpdated(e) => self.email = e.email,
                UserEvent::Deleted(_) => self.deleted = true,
            }
        }
        fn handle(&self, _: Command) -> Result<Vec<UserEvent>, Refused> {
            Ok(Vec::new())
        }
        fn upcast_snapshot(schema: u64, data: &[u8]) -> Option<Self> {
            (schema == schema_of("User", 1)).then(|| serde_json::from_slice::<User>(data).ok().map(Self::from))?
        }
    }

    let (_dir, store) = store();
    let v1 = Repository::<User, _>::new(store.clone()).snapshot_every(100);
    v1.execute("1", create("Ada")).await.unwrap();
    v1.execute("1", Command::UpdateEmail("a@1".into())).await.unwrap();
    let loaded = v1.load("1").await.unwrap();
    v1.snapshot(&loaded).await.unwrap();
    v1.execute("1", Command::UpdateEmail("a@2".into())).await.unwrap();

    let user = Repository::<UserV3, _>::new(store.clone())
        .snapshot_every(100)
        .load("1")
        .await
        .unwrap();
    assert!(user.state.from_snapshot, "started from the upcast v1 snapshot");
    assert_eq!(
        (
            user.state.display.as_str(),
            user.state.email.as_str(),
            user.state.changes
        ),
        ("Ada", "a@2", 3)
    );
}

/// `#[aggregate]` hashes the impl block: a reworded doc comment keeps the stamp, a changed
/// `apply` changes it, and the snapshot of the old code is then ignored.
mod stamped {
    use super::*;
    use switchboard_eventstore::aggregate;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Added {
        pub n: u64,
    }
    impl StoredEvent for Added {
        const NAME: &'static str = "ADDED";
    }

    macro_rules! counter {
        ($module:ident, $doc:literal, |$state:ident, $event:ident| $apply:expr) => {
            pub mod $module {
                use super::*;
                #[derive(Clone, Debug, Default, Serialize, Deserialize)]
                pub struct Counter {
                    pub total: u64,
                }
                #[aggregate]
                impl Aggregate for Counter {
                    #[doc = $doc]
                    const TYPE: &'static str = "counter";
                    type Event = Added;
                    type Command = u64;
                    type Error = std::convert::Infallible;
                    fn apply(&mut self, $event: Added) {
                        let $state = self;
                        $apply
                    }
                    fn handle(&self, n: u64) -> Result<Vec<Added>, Self::Error> {
                        Ok(vec![Added { n }])
                    }
                }
            }
        };
    }
    counter!(v1, "Counts.", |state, event| state.total += event.n);
    counter!(v1_reworded, "Adds the numbers up.", |state, event| state.total +=
        event.n);
    counter!(v2, "Counts.", |state, event| state.total += 2 * event.n);

    #[tokio::test]
    async fn the_stamp_follows_the_code_not_the_comments() {
        assert_eq!(
            <v1::Counter as Aggregate>::SCHEMA,
            <v1_reworded::Counter as Aggregate>::SCHEMA
        );
        assert_ne!(<v1::Counter as Aggregate>::SCHEMA, <v2::Counter as Aggregate>::SCHEMA);

        let (_dir, store) = store();
        let old = Repository::<v1::Counter, _>::new(store.clone()).snapshot_every(1000);
        old.execute("c", 5).await.unwrap();
        let loaded = old.load("c").await.unwrap();
        old.snapshot(&loaded).await.unwrap();

        let same = Repository::<v1_reworded::Counter, _>::new(store.clone()).snapshot_every(1000);
        let mut tampered = store.load_snapshot("counter-c").await.unwrap().unwrap();
        tampered.data = br#"{"total":1000}"#.to_vec().into();
        store.save_snapshot(tampered).await.unwrap();
        assert_eq!(
            same.load("c").await.unwrap().state.total,
            1000,
            "same code: the snapshot is used"
        );

        let new = Repository::<v2::Counter, _>::new(store.clone()).snapshot_every(1000);
        assert_eq!(
            new.load("c").await.unwrap().state.total,
            10,
            "changed apply: rebuilt from the events"
        );
    }
}
