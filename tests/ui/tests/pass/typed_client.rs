// Descriptors with the typed client: payload and reply types are checked at the call.
use switchboard::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
}

#[message_pattern(cmd = "get_user")]
pub async fn get_user(id: String) -> Result<User, RpcError> {
    Ok(User {
        name: format!("user {id}"),
        id,
    })
}

#[event_pattern("user_created")]
pub async fn user_created(user: User) {
    let _ = user;
}

#[message_pattern("count")]
pub async fn count(n: u32) -> ReplyStream<u32> {
    ReplyStream::iter(0..n)
}

fn _typed(c: &switchboard::Client, user: User) {
    let _ = c.send(get_user, "42".to_string());
    let _ = c.emit(user_created, &user);
}

async fn _awaited(c: &switchboard::Client) -> switchboard::Result<()> {
    let id = "42".to_string();
    let user: User = c.send(get_user, &id).await?;
    c.emit(user_created, user).await?;
    let last: u32 = c.send(count, 3).await?;
    let _ = last;
    Ok(())
}

fn main() {}
