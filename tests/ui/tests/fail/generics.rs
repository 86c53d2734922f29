use switchboard::prelude::*;

#[message_pattern({ cmd = "echo" })]
async fn echo<T: Serialize>(value: T) -> T {
    value
}

fn main() {}
