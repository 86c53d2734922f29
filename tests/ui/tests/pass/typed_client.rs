// Descriptors with the typed client: payload and reply types are checked at the call, and
// the payload is given by value or by reference.
use switchboard::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
}

#[message_pattern({ cmd = "get_user" })]
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

pub struct Users;

#[handlers]
impl Users {
    #[message_pattern({ cmd = "find_user" })]
    pub async fn find(&self, id: String) -> Option<User> {
        let _ = id;
        None
    }
}

fn _typed(c: &Client, user: User) {
    let _ = c.send(GET_USER, "42".to_string());
    let _ = c.emit(USER_CREATED, &user);
    let _ = c.send(Users::FIND, "42".to_string());
}

async fn _awaited(c: &Client) -> switchboard::Result<()> {
    let id = "42".to_string();
    let user: User = c.send(GET_USER, &id).await?;
    c.emit(USER_CREATED, user).await?;
    let last: u32 = c.send(COUNT, 3).await?;
    let found: Option<User> = c.send(Users::FIND, id).await?;
    let _ = (last, found);
    Ok(())
}

fn main() {}
