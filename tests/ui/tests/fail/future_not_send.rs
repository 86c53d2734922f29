use std::rc::Rc;

use switchboard::prelude::*;

async fn audit() {}

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: String) -> String {
    let shared = Rc::new(id);
    audit().await;
    shared.to_string()
}

fn main() {}

pub struct Users;

#[handlers]
impl Users {
    #[message_pattern({ cmd = "find_user" })]
    async fn find(&self, id: String) -> String {
        let shared = Rc::new(id);
        audit().await;
        shared.to_string()
    }
}
