// The attribute leaves the function as written: it is called directly, with its own
// arguments, and its future runs as the user's function does.
use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};

use futures_util::stream::Stream;
use switchboard::Kind;
use switchboard::prelude::*;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct User {
    pub id: String,
}

#[message_pattern({ cmd = "get_user" })]
pub async fn get_user(id: String, ctx: Context) -> Result<User, RpcError> {
    if id.is_empty() {
        return Err(RpcError::new("empty id"));
    }
    Ok(User {
        id: format!("{id}@{}", ctx.transport()),
    })
}

#[message_pattern("add")]
async fn add((a, b): (i64, i64)) -> i64 {
    a + b
}

#[message_pattern("ticks")]
async fn ticks(n: u32) -> impl Stream<Item = u32> + Send {
    futures_util::stream::iter(0..n)
}

#[event_pattern("user_created")]
async fn user_created(user: User) {
    let _ = user;
}

/// The handlers here never wait, so one poll finishes them.
fn run<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a handler here never waits"),
    }
}

async fn _in_async(ctx: Context) -> Result<User, RpcError> {
    get_user("1".into(), ctx).await
}

fn main() {
    let ctx = Context::new("test", Kind::Request);
    assert_eq!(
        run(get_user("1".into(), ctx.clone())).unwrap(),
        User { id: "1@test".into() }
    );
    assert!(run(get_user(String::new(), ctx)).is_err());
    assert_eq!(run(add((2, 3))), 5);
    let _stream = run(ticks(3));
    run(user_created(User { id: "1".into() }));

    // The function is an ordinary function item, next to its descriptor.
    let f: fn((i64, i64)) -> _ = add;
    assert_eq!(run(f((1, 1))), 2);
    let _descriptor = ADD;
}
