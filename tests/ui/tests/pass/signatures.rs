// Every argument shape and return kind a handler may have, and the descriptor types they give.
use std::marker::PhantomData;

use futures_util::stream::{self, Stream};
use switchboard::prelude::*;
use switchboard::{FromRequest, NoPayload, Reply, Request};

#[derive(Serialize, Deserialize)]
pub struct User {
    pub id: String,
}

#[derive(Deserialize, Serialize)]
pub struct Wrapper(pub u32);

/// An extractor of the user's: the caller's tenant, from a header.
pub struct Tenant(pub String);

impl<S: Sync> FromRequest<S> for Tenant {
    type Payload = NoPayload;

    async fn from_request(req: &mut Request, _: &S) -> Result<Self, RpcError> {
        Ok(Tenant(req.headers().get("tenant").unwrap_or("-").to_owned()))
    }
}

#[message_pattern("no_args")]
async fn no_args() {}

#[message_pattern("unit")]
async fn explicit_unit(id: String) -> () {
    let _ = id;
}

#[message_pattern("context_only")]
async fn context_only(ctx: Context) -> String {
    ctx.route().to_owned()
}

#[message_pattern("context_first")]
async fn context_first(ctx: switchboard::Context, mut id: String) -> String {
    id.push_str(ctx.route());
    id
}

#[message_pattern("context_last")]
async fn context_last(Wrapper(n): Wrapper, _ctx: Context) -> u32 {
    n
}

#[message_pattern("extractors")]
async fn extractors(
    headers: Headers,
    id: String,
    Deadline(deadline): Deadline,
    Extension(n): Extension<u64>,
    State(()): State<()>,
    Tenant(tenant): Tenant,
) -> String {
    let _ = (headers, deadline, n);
    format!("{tenant}/{id}")
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

#[message_pattern("fallible_stream")]
async fn fallible_stream(n: u32) -> Result<ReplyStream<u32>, RpcError> {
    Ok(ReplyStream::iter(0..n))
}

#[message_pattern("impl_stream")]
async fn impl_stream(n: u32) -> impl Stream<Item = u32> + Send {
    stream::iter(0..n)
}

#[message_pattern("reply")]
async fn reply() -> Reply {
    Reply::value(&1u8)
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

#[message_pattern("camel")]
#[allow(non_snake_case)]
async fn getUserById(x: u8) -> u8 {
    x
}

mod nested {
    use switchboard::prelude::*;

    #[message_pattern({ cmd = "in_module" })]
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
    same(types(NO_ARGS).0, PhantomData::<()>);
    same(types(NO_ARGS).1, PhantomData::<()>);
    same(types(EXPLICIT_UNIT).0, PhantomData::<String>);
    same(types(CONTEXT_ONLY).0, PhantomData::<()>);
    same(types(CONTEXT_FIRST).0, PhantomData::<String>);
    same(types(CONTEXT_LAST).0, PhantomData::<Wrapper>);
    same(types(EXTRACTORS).0, PhantomData::<String>);
    same(types(TUPLE).0, PhantomData::<(i64, i64)>);
    same(types(VALUE).1, PhantomData::<User>);
    same(types(RESULT).1, PhantomData::<User>);
    same(types(RPC_RESULT).1, PhantomData::<User>);
    same(types(STRING_ERROR).1, PhantomData::<u32>);
    same(types(REPLY_STREAM).1, PhantomData::<u32>);
    same(types(IMPL_STREAM).1, PhantomData::<u32>);
    same(types(REPLY).1, PhantomData::<Reply>);
    same(types(OPTIONAL).1, PhantomData::<Option<User>>);
    same(types(MATCH).1, PhantomData::<u8>);
    same(types(GET_USER_BY_ID).1, PhantomData::<u8>);
    same(types(nested::IN_MODULE).0, PhantomData::<i32>);
    same(event_payload(USER_CREATED), PhantomData::<User>);
    same(event_payload(FALLIBLE_EVENT), PhantomData::<User>);
    same(types(HELLO).1, PhantomData::<&'static str>);
    let _ = OTHER_ATTRS;

    // Every one of them serves.
    let _ = Microservice::new()
        .handler(NO_ARGS)
        .handler(EXPLICIT_UNIT)
        .handler(CONTEXT_ONLY)
        .handler(CONTEXT_FIRST)
        .handler(CONTEXT_LAST)
        .handler(EXTRACTORS)
        .handler(TUPLE)
        .handler(VALUE)
        .handler(RESULT)
        .handler(RPC_RESULT)
        .handler(STRING_ERROR)
        .handler(REPLY_STREAM)
        .handler(FALLIBLE_STREAM)
        .handler(IMPL_STREAM)
        .handler(REPLY)
        .handler(OPTIONAL)
        .handler(HELLO)
        .handler(USER_CREATED)
        .handler(FALLIBLE_EVENT)
        .handler(MATCH)
        .handler(GET_USER_BY_ID)
        .handler(nested::IN_MODULE)
        .handler(OTHER_ATTRS);
}
