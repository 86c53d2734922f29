use std::rc::Rc;

use futures_util::stream::{self, Stream, StreamExt};
use switchboard::prelude::*;

#[message_pattern("ticks")]
async fn ticks(n: u32) -> impl Stream<Item = u32> {
    let shared = Rc::new(n);
    stream::iter(0..n).map(move |i| i + *shared)
}

fn main() {}
