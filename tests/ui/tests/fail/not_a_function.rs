// A pattern attribute or `#[handlers]` on an item it does not go on: reported at the item.
use switchboard::prelude::*;

#[message_pattern({ cmd = "get_user" })]
pub struct GetUser;

fn main() {}

#[handlers]
pub struct Users;

#[handlers]
pub async fn find(id: String) -> String {
    id
}

pub struct Orders;

#[event_pattern("order_created")]
impl Orders {}
