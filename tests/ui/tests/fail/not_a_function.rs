use switchboard::prelude::*;

#[message_pattern(cmd = "get_user")]
pub struct GetUser;

fn main() {}
