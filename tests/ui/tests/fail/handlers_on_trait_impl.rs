use switchboard::prelude::*;

pub trait Service {
    fn name(&self) -> &'static str;
}

pub struct Users;

#[handlers]
impl Service for Users {
    fn name(&self) -> &'static str {
        "users"
    }
}

fn main() {}
