use switchboard::prelude::*;

pub struct Users;

#[handlers]
impl Users {
    #[message_pattern({ cmd = "get_user" })]
    async fn get(self, id: String) -> String {
        id
    }

    #[message_pattern({ cmd = "find_user" })]
    async fn find(self: std::sync::Arc<Self>, id: String) -> String {
        id
    }
}

fn main() {}
