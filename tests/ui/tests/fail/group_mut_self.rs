use switchboard::prelude::*;

#[derive(Default)]
pub struct Counter {
    total: u64,
}

#[handlers]
impl Counter {
    #[event_pattern("add")]
    async fn add(&mut self, n: u64) {
        self.total += n;
    }
}

fn main() {}
