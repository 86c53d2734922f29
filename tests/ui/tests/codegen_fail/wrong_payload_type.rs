// The users client, generated at test time from examples/users by switchboard-codegen (see
// tests/codegen.rs, which says where it is).
mod users {
    include!(concat!(env!("SWITCHBOARD_UI_GENERATED"), "/users_client.rs"));
}

async fn caller(users: &users::UsersClient) -> switchboard::Result<()> {
    let _user = users.get_user(42).await?;
    let _created = users.create_user("Ada").await?;
    Ok(())
}

fn main() {}
