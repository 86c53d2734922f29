// `impl Trait` where a handler needs a type it can name: arguments, a stream without its
// `Item`, other `impl Trait` returns, and `impl Trait` inside a reply type.
use futures_util::stream::Stream;
use switchboard::prelude::*;

#[message_pattern("arg")]
async fn arg(id: impl Into<String>) -> String {
    id.into()
}

#[message_pattern("stream")]
async fn stream(n: u32) -> impl Stream {
    futures_util::stream::iter(0..n)
}

#[message_pattern("serialize")]
async fn serialize(n: u32) -> impl Serialize {
    n
}

#[message_pattern("in_result")]
async fn in_result(n: u32) -> Result<impl Serialize, RpcError> {
    Ok(n)
}

fn main() {}
