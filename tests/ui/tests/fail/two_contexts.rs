use switchboard::prelude::*;

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: String, ctx: Context, again: Context) -> String {
    let _ = (ctx, again);
    id
}

fn main() {}
