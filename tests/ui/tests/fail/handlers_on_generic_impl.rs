use switchboard::prelude::*;

pub struct Repo<T>(T);

#[handlers]
impl<T: Send + Sync + 'static> Repo<T> {
    #[message_pattern({ cmd = "count" })]
    async fn count(&self) -> u32 {
        0
    }
}

fn main() {}
