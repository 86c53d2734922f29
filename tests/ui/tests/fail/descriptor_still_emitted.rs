// A mistake in the pattern is the only error: the descriptor is still emitted, so the code
// that serves and calls the handler compiles and adds no "cannot find value `GET_USER`".
use switchboard::prelude::*;

#[message_pattern({ cmd = "get_user", cmd = "find_user" })]
async fn get_user(id: String) -> String {
    id
}

#[event_pattern(user_created)]
async fn user_created(id: String) {
    let _ = id;
}

async fn caller(client: &Client) -> switchboard::Result<String> {
    client.emit(USER_CREATED, "42".to_string()).await?;
    client.send(GET_USER, "42".to_string()).await
}

fn main() {
    let _ = Microservice::new().handler(GET_USER).handler(USER_CREATED);
    let _ = caller;
}

// The same in a group: `Users::FIND` is still there, and `Users` is still a group.
pub struct Users;

#[handlers]
impl Users {
    #[message_pattern({ cmd = "find_user" }, krate = switchboard)]
    async fn find(&self, id: String) -> String {
        id
    }
}

async fn group_caller(client: &Client) -> switchboard::Result<String> {
    client.send(Users::FIND, "42".to_string()).await
}

fn serve_group() {
    let _ = Microservice::new().group(Users);
    let _ = group_caller;
}

// With the `switchboard` crate under another name, the descriptor reaches it by that name.
mod renamed {
    use ::switchboard as sb;

    #[sb::message_pattern({ cmd = "x" cmd = "y" }, crate = sb)]
    pub async fn broken(id: u32) -> u32 {
        id
    }

    pub fn serve() -> sb::Microservice {
        sb::Microservice::new().handler(BROKEN)
    }
}
