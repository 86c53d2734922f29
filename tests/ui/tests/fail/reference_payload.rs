use switchboard::prelude::*;

#[message_pattern({ cmd = "greet" })]
async fn greet(name: &str) -> String {
    format!("hello {name}")
}

fn main() {}
