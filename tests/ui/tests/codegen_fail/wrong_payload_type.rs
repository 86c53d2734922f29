// The users client, generated at test time from examples/users by switchboard-codegen.
mod users {
    include!("../generated/users_client.rs");
}

async fn caller(users: &users::UsersClient) -> switchboard::Result<()> {
    let _user = users.get_user(42).await?;
    let _created = users.create_user("Ada").await?;
    Ok(())
}

fn main() {}
