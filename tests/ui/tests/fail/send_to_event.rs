use switchboard::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct User {
    pub id: String,
}

#[event_pattern("user_created")]
async fn user_created(user: User) {
    let _ = user;
}

async fn caller(client: &Client, user: User) -> switchboard::Result<()> {
    client.send(USER_CREATED, user).await?;
    Ok(())
}

fn main() {}
