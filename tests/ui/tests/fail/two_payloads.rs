// A handler takes one payload: two arguments that are both payloads are refused, whether the
// types are the same (said by the macro) or not (said by the traits, at the second one).
use switchboard::prelude::*;

#[derive(Deserialize)]
pub struct Filter {
    pub active: bool,
}

#[message_pattern("math.add")]
async fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[message_pattern("users.find")]
async fn find(name: String, ctx: Context, filter: Filter) -> String {
    let _ = (ctx, filter);
    name
}

fn main() {}

pub struct Users;

#[handlers]
impl Users {
    #[message_pattern("users.search")]
    async fn search(&self, filter: Filter, State(db): State<()>, page: u32) -> String {
        let _ = (filter, db, page);
        String::new()
    }
}
