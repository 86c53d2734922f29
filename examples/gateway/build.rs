//! Generates the typed users client from the users service's sources: `UsersClient` in
//! `$OUT_DIR/users_client.rs`, included by `src/lib.rs`. Rebuilt when those sources change.

fn main() {
    switchboard_codegen::client::ClientGen::new("Users")
        .crate_dir("../users")
        .write()
        .unwrap_or_else(|e| e.fail_build());
}
