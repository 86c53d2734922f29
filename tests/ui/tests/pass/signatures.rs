// Every argument shape and return kind a handler may have, and the descriptor types they give.
use std::marker::PhantomData;

use futures_util::stream::{self, Stream};
use switchboard::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct User {
    pub id: String,
}

#[derive(Deserialize, Serialize)]
pub struct Wrapper(pub u32);

#[message_pattern("no_args")]
async fn no_args() {}

#[message_pattern("unit")]
async fn explicit_unit(id: String) -> () {
    let _ = id;
}

#[message_pattern("context_only")]
async fn context_only(ctx: Context) -> String {
    ctx.pattern().to_owned()
}

#[message_pattern("context_first")]
async fn context_first(ctx: switchboard::Context, mut id: String) -> String {
    id.push_str(ctx.pattern());
    id
}

#[message_pattern("context_last")]
async fn context_last(Wrapper(n): Wrapper, _ctx: Context) -> u32 {
    n
}

#[message_pattern("tuple")]
async fn tuple((a, b): (i64, i64)) -> i64 {
    a + b
}

#[message_pattern("value")]
async fn value(id: String) -> User {
    User { id }
}

#[message_pattern("result")]
async fn result(id: String) -> Result<User, RpcError> {
    Ok(User { id })
}

#[message_pattern("rpc_result")]
async fn rpc_result(id: String) -> RpcResult<User> {
    Ok(User { id })
}

#[message_pattern("string_error")]
async fn string_error(id: String) -> Result<u32, String> {
    id.parse().map_err(|_| format!("not a number: {id}"))
}

#[message_pattern("reply_stream")]
async fn reply_stream(n: u32) -> ReplyStream<u32> {
    ReplyStream::iter(0..n)
}

#[message_pattern("impl_stream")]
async fn impl_stream(n: u32) -> impl Stream<Item = u32> + Send {
    stream::iter(0..n)
}

#[message_pattern("optional")]
async fn optional(id: String) -> Option<User> {
    Some(User { id })
}

// A reply that is `Serialize` but not `Deserialize` serves; `Client::send` would refuse it.
#[message_pattern("hello")]
async fn hello() -> &'static str {
    "hello"
}

#[event_pattern("user_created")]
async fn user_created(user: User, ctx: Context) {
    let _ = (user, ctx);
}

#[event_pattern("fallible_event")]
async fn fallible_event(user: User) -> Result<(), RpcError> {
    let _ = user;
    Ok(())
}

/// Raw identifiers work as names.
#[message_pattern("raw")]
pub(crate) async fn r#match(x: u8) -> u8 {
    x
}

mod nested {
    use switchboard::prelude::*;

    #[message_pattern(cmd = "in_module")]
    pub async fn in_module(x: i32) -> i32 {
        x
    }
}

#[cfg(any())]
#[message_pattern("compiled_out")]
async fn compiled_out() {}

#[allow(clippy::unused_async)]
#[must_use]
#[message_pattern("other_attrs")]
async fn other_attrs() -> u8 {
    1
}

fn same<T>(_: PhantomData<T>, _: PhantomData<T>) {}

fn types<M: Message>(_: M) -> (PhantomData<M::Request>, PhantomData<M::Reply>) {
    (PhantomData, PhantomData)
}

fn event_payload<E: Event>(_: E) -> PhantomData<E::Payload> {
    PhantomData
}

fn main() {
    same(types(no_args).0, PhantomData::<()>);
    same(types(no_args).1, PhantomData::<()>);
    same(types(explicit_unit).0, PhantomData::<String>);
    same(types(context_only).0, PhantomData::<()>);
    same(types(context_first).0, PhantomData::<String>);
    same(types(context_last).0, PhantomData::<Wrapper>);
    same(types(tuple).0, PhantomData::<(i64, i64)>);
    same(types(value).1, PhantomData::<User>);
    same(types(result).1, PhantomData::<User>);
    same(types(rpc_result).1, PhantomData::<User>);
    same(types(string_error).1, PhantomData::<u32>);
    same(types(reply_stream).1, PhantomData::<u32>);
    same(types(impl_stream).1, PhantomData::<u32>);
    same(types(optional).1, PhantomData::<Option<User>>);
    same(types(r#match).1, PhantomData::<u8>);
    same(types(nested::in_module).0, PhantomData::<i32>);
    same(event_payload(user_created), PhantomData::<User>);
    same(event_payload(fallible_event), PhantomData::<User>);
    same(types(hello).1, PhantomData::<&'static str>);
    let _ = other_attrs;
}
