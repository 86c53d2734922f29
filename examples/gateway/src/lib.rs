//! The gateway's clients of other services.

/// The users service's typed client (`UsersClient`), its patterns and its types, generated at
/// build time from the users service's sources by `switchboard-codegen` (see `build.rs`).
pub mod users {
    include!(concat!(env!("OUT_DIR"), "/users_client.rs"));
}
