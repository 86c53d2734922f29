//! The users service: `{cmd: "get_user"}` and `{cmd: "create_user"}`.
//!
//! Its descriptors are what callers use: `client.send(get_user, id)`.

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

/// Looks a user up.
#[message_pattern(cmd = "get_user")]
pub async fn get_user(id: String) -> User {
    tracing::info!(%id, "get_user");
    User {
        id,
        name: "John Doe".into(),
        email: "john@example.com".into(),
    }
}

/// Creates a user: `{id: "123", ...data}`.
#[message_pattern(cmd = "create_user")]
pub async fn create_user(data: NewUser) -> User {
    tracing::info!(name = %data.name, "create_user");
    User {
        id: "123".into(),
        name: data.name,
        email: data.email,
    }
}
