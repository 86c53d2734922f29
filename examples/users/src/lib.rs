//! The users service: `{cmd: "get_user"}` and `{cmd: "create_user"}`, answered by a group of
//! handlers ([`Users`]) that keeps the users in a store it owns.
//!
//! Callers in the same workspace use its descriptors (`client.send(Users::GET_USER, id)`);
//! callers elsewhere get a typed client generated from these sources (see the gateway).

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use switchboard::prelude::*;

/// A user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Identifier.
    pub id: String,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
}

/// What `create_user` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewUser {
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
}

/// Emitted by the gateway once a user has been created; notifications and analytics listen.
pub const USER_CREATED: EventDef<User> = EventDef::new(pattern!("user_created"));

/// The users controller: its store is its dependency, shared by every message.
#[derive(Debug)]
pub struct Users {
    store: RwLock<HashMap<String, User>>,
    next_id: AtomicU64,
}

impl Users {
    /// A store holding the seed's user `42`; new users get ids from 100 on.
    pub fn new() -> Self {
        let seed = User {
            id: "42".into(),
            name: "John Doe".into(),
            email: "john@example.com".into(),
        };
        Users {
            store: RwLock::new(HashMap::from([(seed.id.clone(), seed)])),
            next_id: AtomicU64::new(100),
        }
    }
}

impl Default for Users {
    fn default() -> Self {
        Self::new()
    }
}

#[handlers]
impl Users {
    /// Looks a user up; an unknown id is an error with `code: 404`. A read: callers may
    /// repeat it (on another instance, when one dies mid-call).
    #[message_pattern({ cmd = "get_user" }, idempotent, retries = 3)]
    pub async fn get_user(&self, id: String) -> RpcResult<User> {
        tracing::info!(%id, "get_user");
        let found = self.store.read().expect("users lock").get(&id).cloned();
        found.ok_or_else(|| {
            RpcError::from_value(serde_json::json!({
                "status": "error",
                "message": format!("user {id} not found"),
                "code": 404,
            }))
        })
    }

    /// Creates a user: `{id, ...data}`.
    #[message_pattern({ cmd = "create_user" })]
    pub async fn create_user(&self, data: NewUser) -> User {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        tracing::info!(%id, name = %data.name, "create_user");
        let user = User {
            id: id.clone(),
            name: data.name,
            email: data.email,
        };
        self.store.write().expect("users lock").insert(id, user.clone());
        user
    }
}
