//! What the attribute macros expand to. Not public API: it changes with the macros.
//!
//! The macros only check and register; every rule about arguments and return types is a
//! trait here, so that an alias (`type DbResult<T> = Result<T, DbError>`) or a user type
//! named `Context` is what its traits say it is, not what its name suggests.

pub use crate::client::descriptor::{Event, Message, PatternLit};
pub use crate::contract::{Shape, Signature};
pub use crate::error::RpcError;
pub use crate::server::extract::{FromRequest, IsPayload, NoPayload};
pub use crate::server::group::Group;
pub use crate::server::handler::{Handler, HandlerInfo, Serve};
pub use crate::server::registry::Registration;
pub use crate::server::respond::{IntoReply, ReplyStream};
pub use crate::server::state::{AnyState, FromRef};
pub use crate::service::PatternOptions;
pub use crate::service::{Kind, Reply, Request, Route};
pub use futures_util::future::BoxFuture;
pub use inventory;
pub use std::sync::Arc;

use std::marker::PhantomData;

use futures_util::stream::{Stream, StreamExt};
use serde::Serialize;

/// Checks that a payload no argument took is JSON; the error is the reply.
pub fn check_unread_payload(req: &Request) -> Result<(), RpcError> {
    crate::server::extract::check_unread_payload(req)
}

/// Taking a handler's arguments at once: in order while they can be; the first that cannot
/// be and those after it are taken by the handler's future; the first that fails is the reply.
#[derive(Default)]
pub struct Taking {
    later: bool,
    failed: Option<RpcError>,
}

impl Taking {
    /// Argument `T`, if it and every argument before it could be taken at once.
    #[inline]
    pub fn now<T: FromRequest<St>, St>(&mut self, req: &mut Request, state: &St) -> Option<T> {
        if self.later || self.failed.is_some() {
            return None;
        }
        match T::from_request_now(req, state) {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                self.failed = Some(e);
                None
            }
            None => {
                self.later = true;
                None
            }
        }
    }

    /// The error of the argument that failed, if one did.
    #[inline]
    pub fn failed(&mut self) -> Option<RpcError> {
        self.failed.take()
    }
}

/// A handler's route: `serve` takes its arguments from the request it is lent.
pub fn serving(serve: impl Fn(&mut Request) -> BoxFuture<'static, Reply> + Send + Sync + 'static) -> Route {
    Route::serving(serve)
}

/// The request, for a handler's future that takes its arguments later (its caller keeps an
/// empty one).
pub fn take_request(req: &mut Request) -> Request {
    req.take()
}

/// The reply of a handler whose argument failed before its future ran.
pub fn failed(e: RpcError) -> BoxFuture<'static, Reply> {
    Box::pin(std::future::ready(Reply::error(e)))
}

/// An `impl Stream<Item = T>` reply.
pub fn stream_reply<S>(values: S) -> Reply
where
    S: Stream + Send + 'static,
    S::Item: Serialize,
{
    Reply::values(values.map(Ok))
}

// ---- A handler's signature, written once ----

/// A handler's argument and return types, as written. The macros write the user's types in
/// this one impl (spanned as the function is, so that a type the compiler cannot find is
/// reported once) and reach them everywhere else through [`ArgAt`] and [`RetOf`].
pub trait Sig {
    /// The arguments as a type list `(A0, (A1, ()))`, the receiver left out.
    type Args;
    /// The return type as written (`()` for none; the item type of an `impl Stream`).
    type Ret;
}

/// The index 0, for [`At`].
pub struct Z;
/// The index after `N`, for [`At`].
pub struct S<N>(PhantomData<N>);

/// The type at index `N` of a type list.
pub trait At<N> {
    /// The type.
    type Type;
}
impl<H, T> At<Z> for (H, T) {
    type Type = H;
}
impl<H, T: At<N>, N> At<S<N>> for (H, T) {
    type Type = T::Type;
}

/// The type of a handler's argument at index `N`.
pub type ArgAt<D, N> = <<D as Sig>::Args as At<N>>::Type;
/// A handler's return type.
pub type RetOf<D> = <D as Sig>::Ret;

// ---- The payload type of a handler, from its arguments' types ----

/// A handler's arguments as a type list `(A0, (A1, (A2, ())))`; `Found` is the payload
/// marker of the one argument that is the payload, or `NoPayload`.
pub trait ArgList {
    /// `IsPayload<T>` or `NoPayload`.
    type Found;
}

impl ArgList for () {
    type Found = NoPayload;
}

impl<A, R> ArgList for (A, R)
where
    A: FromRequest<AnyState>,
    R: ArgList,
    (A::Payload, R::Found): Merge,
{
    type Found = <(A::Payload, R::Found) as Merge>::Out;
}

/// Two payload markers into one: at most one of them is a payload. (A handler with two is
/// reported at its second payload argument by [`SecondPayload`]; a descriptor's `Message`
/// impl requires its arguments to fold, so it is not reported twice.)
pub trait Merge {
    /// The merged marker.
    type Out;
}

impl Merge for (NoPayload, NoPayload) {
    type Out = NoPayload;
}
impl<T> Merge for (IsPayload<T>, NoPayload) {
    type Out = IsPayload<T>;
}
impl<T> Merge for (NoPayload, IsPayload<T>) {
    type Out = IsPayload<T>;
}

/// The payload type a marker names: `()` when there is none.
pub trait PayloadType {
    /// The type.
    type Type;
}

impl PayloadType for NoPayload {
    type Type = ();
}
impl<T> PayloadType for IsPayload<T> {
    type Type = T;
}

/// The request type of a handler whose arguments are the list `Self`: its payload's type,
/// or `()`.
pub trait RequestList {
    /// The type.
    type Type;
}
impl<L> RequestList for L
where
    L: ArgList,
    L::Found: PayloadType,
{
    type Type = <L::Found as PayloadType>::Type;
}

/// The request type of a handler whose arguments are the list `L`.
pub type RequestOf<L> = <L as RequestList>::Type;

// ---- Reply types, for descriptors ----

/// The `Ok` and `Err` types of a return type written `Result<T, E>` (or `RpcResult<T>`,
/// `io::Result<T>`).
pub trait Fallible {
    /// The success type.
    type Ok;
    /// The error type.
    type Err;
}
impl<T, E> Fallible for Result<T, E> {
    type Ok = T;
    type Err = E;
}

/// The item type of a `ReplyStream<T>` return type.
pub trait Streamed {
    /// The value type.
    type Item;
}
impl<T> Streamed for ReplyStream<T> {
    type Item = T;
}

// ---- Spanned checks: each is called once at the user's token ----

/// `FromRequest`, as a handler's argument where it is declared (its state is not known
/// there; `AnyState` provides every `State<T>`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler's argument: it is neither the payload nor an extractor",
    label = "neither the payload nor an extractor",
    note = "the payload is decoded from the message: its type implements `serde::Deserialize` (for a type of yours, add `#[derive(serde::Deserialize)]`)",
    note = "an extractor implements `switchboard::FromRequest`: `Context`, `Headers`, `Deadline`, `Extension<T>`, `State<T>`; a dependency of the service (a pool, a client) is a part of its state: take `State<{Self}>`"
)]
pub trait HandlerArg {}
impl<A: FromRequest<AnyState>> HandlerArg for A {}

/// An argument is the payload (`Deserialize`) or an extractor (`FromRequest`).
pub fn assert_arg<A: HandlerArg>() {}

/// No payload among the arguments counted so far, in `__sb_checks` (see [`probe::ArgKnown`]).
pub enum NoneYet {}
/// A payload among the arguments counted so far.
pub enum Taken {}

/// The payload count of `__sb_checks`, as a type: [`NoneYet`] or [`Taken`], and the first
/// payload's type (`NoneYet` before there is one).
pub struct Payloads<Flag, First>(PhantomData<(Flag, First)>);

/// No argument yet.
pub fn no_payload() -> Payloads<NoneYet, NoneYet> {
    Payloads(PhantomData)
}

/// The count after an argument whose marker is `Self`.
pub trait Count<Flag, First> {
    /// [`NoneYet`] or [`Taken`].
    type Flag;
    /// The first payload's type.
    type First;
}
impl<Fl, F> Count<Fl, F> for NoPayload {
    type Flag = Fl;
    type First = F;
}
impl<T, F> Count<NoneYet, F> for IsPayload<T> {
    type Flag = Taken;
    type First = T;
}
impl<T, F> Count<Taken, F> for IsPayload<T> {
    type Flag = Taken;
    type First = F;
}

/// The marker `Self` of an argument of type `A`, after arguments that hold a payload
/// (`Flag`) of type `First`: fine unless both are payloads. (On the marker, not on `A`, so
/// that the compiler works the marker out before it looks for an impl.)
#[diagnostic::on_unimplemented(
    message = "a handler takes one payload, and `{A}` would be a second: it already takes `{First}`",
    label = "a second payload",
    note = "the payload is the one argument decoded from the message; to receive several values, wrap them in one struct or tuple: `(a, b): ({First}, {A})`",
    note = "if `{A}` is not sent by the caller, make it an extractor: a part of the service's state is taken as `State<{A}>`; a type of yours can implement `switchboard::FromRequest`"
)]
pub trait SecondPayload<A, Flag, First> {}
#[diagnostic::do_not_recommend]
impl<A, Fl, F> SecondPayload<A, Fl, F> for NoPayload {}
#[diagnostic::do_not_recommend]
impl<A, T, Fl: Untaken, F> SecondPayload<A, Fl, F> for IsPayload<T> {}

/// [`NoneYet`]: no payload before. (A bound rather than a type in the impl above, so that
/// the compiler reports a second payload as [`SecondPayload`] says, not as a type mismatch.)
pub trait Untaken {}
impl Untaken for NoneYet {}

/// Spanned at the user's reply type.
pub fn assert_reply<T: ReplyType>() {}

/// Spanned at the user's error type.
pub fn assert_rpc_error<E>()
where
    RpcError: ErrorType<E>,
{
}

/// Spanned at the user's function: its future must be `Send` (and `'static`, which it is
/// when the arguments own their data).
pub fn assert_handler_future<F: std::future::Future + Send + 'static>(_: &F) {}

/// Spanned at a group method: its future must be `Send` (it borrows the group, which the
/// generated code owns).
pub fn assert_send_future<F: std::future::Future + Send>(_: &F) {}

/// Spanned at an `impl Stream<Item = T>` return type: the stream must be `Send` and own its data.
pub fn assert_stream<F>(_: &F)
where
    F: std::future::Future,
    F::Output: Stream + Send + 'static,
    <F::Output as Stream>::Item: Serialize + Send + 'static,
{
}

// The traits below are their bound and nothing more; they exist so that the compiler's
// first line tells a handler's author what is wrong in their terms.

/// `Serialize`, as a handler's reply.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler's reply: it does not implement `serde::Serialize`",
    label = "the reply is encoded from this type",
    note = "for a local type, add `#[derive(serde::Serialize)]` to it"
)]
pub trait ReplyType: Serialize {}
impl<T: Serialize + ?Sized> ReplyType for T {}

/// `E: Into<RpcError>`, as a handler's error. Implemented on `RpcError` so that the
/// compiler, whose failing bound is `RpcError: From<E>`, shows this message.
#[diagnostic::on_unimplemented(
    message = "`{E}` cannot be a handler's error type: it does not convert into `RpcError`",
    label = "errors are sent to the caller as `RpcError`",
    note = "implement `From<{E}> for switchboard::RpcError`, or map the error with `.map_err(...)` inside the handler"
)]
pub trait ErrorType<E> {}
impl<E: Into<RpcError>> ErrorType<E> for RpcError {}

/// Autoref-specialised dispatch for the code the macros generate.
///
/// `(&&&&Probe::<T>).method()` resolves to the impl with the most `&`s whose bounds hold:
/// that is how a handler's return value is told apart by traits (a `Result` through any
/// alias, a stream, any other `Serialize` value), which generic code cannot do. The last
/// level, on the `Never` that `Probe` derefs to, is reached only when every other failed;
/// for the runtime dispatches that means a spanned check has already failed, so it never runs.
pub mod probe {
    use std::future::Future;
    use std::marker::PhantomData;
    use std::ops::Deref;

    use futures_util::future::BoxFuture;
    use serde::Serialize;

    use super::{AnyState, Count, ErrorType, FromRequest, IntoReply, Payloads, ReplyType, SecondPayload, Serve};
    use crate::error::RpcError;
    use crate::service::{Reply, Route};

    const NEVER: &str = "switchboard: a handler check failed at compile time, yet the code was run";

    /// A type to dispatch on.
    pub struct Probe<T>(PhantomData<fn() -> T>);

    /// What `Probe` derefs to: the last resort of every dispatch.
    pub struct Never<T>(PhantomData<fn() -> T>);

    impl<T> Deref for Probe<T> {
        type Target = Never<T>;
        fn deref(&self) -> &Never<T> {
            &Never(PhantomData)
        }
    }

    /// The probe of a value's type.
    pub fn of<T>(_: &T) -> Probe<T> {
        Probe(PhantomData)
    }

    /// The probe of a named type.
    pub fn ty<T>() -> Probe<T> {
        Probe(PhantomData)
    }

    // -- The payload count of `__sb_checks`: `(&probe::count::<A, _, _>(&before)).sb_arg()` --

    /// The probe of argument type `A` after the count `before` (whose types are then known
    /// when the method's bounds are checked, rather than inferred from them).
    pub fn count<A, Fl, F>(before: &Payloads<Fl, F>) -> Probe<(A, Fl, F)> {
        let _ = before;
        Probe(PhantomData)
    }

    /// An argument that is the payload or an extractor: counted, and refused as a second
    /// payload (the method's bound is checked at the call, spanned at the user's type).
    #[allow(clippy::type_complexity)]
    pub trait ArgKnown<A: FromRequest<AnyState>, Fl, F> {
        /// The count after this argument.
        fn sb_arg(&self) -> Payloads<<A::Payload as Count<Fl, F>>::Flag, <A::Payload as Count<Fl, F>>::First>
        where
            A::Payload: Count<Fl, F> + SecondPayload<A, Fl, F>,
        {
            Payloads(PhantomData)
        }
    }
    impl<A: FromRequest<AnyState>, Fl, F> ArgKnown<A, Fl, F> for Probe<(A, Fl, F)> {}
    /// Any other argument: `assert_arg` has said what is wrong with it; not counted.
    pub trait ArgUnknown<Fl, F> {
        /// The count, unchanged.
        fn sb_arg(&self) -> Payloads<Fl, F> {
            Payloads(PhantomData)
        }
    }
    impl<A, Fl, F> ArgUnknown<Fl, F> for Never<(A, Fl, F)> {}

    // -- A descriptor's signature: `(&probe::ty::<D>()).sb_signature(D {})` --

    /// A request handler's descriptor: its `Message` impl traces the types.
    pub trait MessageSignature<M> {
        /// The signature.
        fn sb_signature(&self, desc: M) -> Option<&'static crate::contract::Signature>;
    }
    impl<M: crate::Message> MessageSignature<M> for Probe<M> {
        fn sb_signature(&self, desc: M) -> Option<&'static crate::contract::Signature> {
            desc.signature()
        }
    }
    /// A listener's descriptor: its `Event` impl traces the type.
    pub trait EventSignature<E> {
        /// The signature.
        fn sb_signature(&self, desc: E) -> Option<&'static crate::contract::Signature>;
    }
    impl<E: crate::Event> EventSignature<E> for Probe<E> {
        fn sb_signature(&self, desc: E) -> Option<&'static crate::contract::Signature> {
            desc.signature()
        }
    }
    /// A descriptor whose arguments were refused (reported at them): no signature.
    pub trait NoSignature<D> {
        /// None.
        fn sb_signature(&self, desc: D) -> Option<&'static crate::contract::Signature> {
            let _ = desc;
            None
        }
    }
    impl<D> NoSignature<D> for Never<D> {}

    // -- A type's shape: `(&probe::ty::<T>()).sb_shape()` --

    /// A `Deserialize` type: traced ([`Shape::of`](crate::contract::Shape::of)).
    pub trait Shaped {
        /// The shape.
        fn sb_shape(&self) -> crate::contract::Shape;
    }
    // `'static`, not any lifetime: a probe cannot fall back on a lifetime (`&'static str`
    // is `Deserialize<'static>` only), it would fail instead.
    impl<T: serde::Deserialize<'static>> Shaped for Probe<T> {
        fn sb_shape(&self) -> crate::contract::Shape {
            crate::contract::Shape::of::<T>()
        }
    }
    /// Any other type (a reply only serialised): known by its name.
    pub trait Unshaped {
        /// The shape.
        fn sb_shape(&self) -> crate::contract::Shape;
    }
    impl<T> Unshaped for Never<T> {
        fn sb_shape(&self) -> crate::contract::Shape {
            crate::contract::Shape::Named(std::any::type_name::<T>().to_owned())
        }
    }

    // -- A handler's future, boxed (asserted `Send` by `assert_handler_future`) --

    /// Boxes the future.
    pub trait Boxed<F: Future> {
        /// The future, boxed.
        fn sb_boxed(&self, fut: F) -> BoxFuture<'static, F::Output>;
    }
    impl<F: Future + Send + 'static> Boxed<F> for Probe<F> {
        fn sb_boxed(&self, fut: F) -> BoxFuture<'static, F::Output> {
            Box::pin(fut)
        }
    }
    /// Fallback of [`Boxed`].
    pub trait BoxedFallback<F: Future> {
        /// Never runs.
        fn sb_boxed(&self, fut: F) -> BoxFuture<'static, F::Output>;
    }
    impl<F: Future> BoxedFallback<F> for Never<F> {
        fn sb_boxed(&self, _: F) -> BoxFuture<'static, F::Output> {
            unreachable!("{NEVER}")
        }
    }

    // -- A handler's return value as a reply: `(&&&&&probe).sb_respond(value, local)` --
    // `local`: the sender takes the value as it is (an in-process call), when its type allows.

    /// A return type with a reply shape of its own.
    pub trait RespondOwn<O> {
        /// The reply.
        fn sb_respond(&self, out: O, local: bool) -> Reply;
    }
    impl<O: IntoReply> RespondOwn<O> for &&&&Probe<O> {
        fn sb_respond(&self, out: O, _: bool) -> Reply {
            out.into_reply()
        }
    }
    /// A `Result` of a plain value that can be handed over in-process.
    pub trait RespondResult<O> {
        /// The reply.
        fn sb_respond(&self, out: O, local: bool) -> Reply;
    }
    impl<T, E> RespondResult<Result<T, E>> for &&&Probe<Result<T, E>>
    where
        T: Serialize + Send + 'static,
        E: Into<RpcError>,
    {
        fn sb_respond(&self, out: Result<T, E>, local: bool) -> Reply {
            match out {
                Ok(v) if local => Reply::local(v),
                Ok(v) => Reply::value(&v),
                Err(e) => Reply::error(e.into()),
            }
        }
    }
    /// A `Result` of a plain value that cannot: encoded.
    pub trait RespondResultEncoded<O> {
        /// The reply.
        fn sb_respond(&self, out: O, local: bool) -> Reply;
    }
    impl<T: Serialize, E: Into<RpcError>> RespondResultEncoded<Result<T, E>> for &&Probe<Result<T, E>> {
        fn sb_respond(&self, out: Result<T, E>, _: bool) -> Reply {
            match out {
                Ok(v) => Reply::value(&v),
                Err(e) => Reply::error(e.into()),
            }
        }
    }
    /// Any other serialisable value that can be handed over in-process.
    pub trait RespondValue<O> {
        /// The reply.
        fn sb_respond(&self, out: O, local: bool) -> Reply;
    }
    impl<O: Serialize + Send + 'static> RespondValue<O> for &Probe<O> {
        fn sb_respond(&self, out: O, local: bool) -> Reply {
            if local { Reply::local(out) } else { Reply::value(&out) }
        }
    }
    /// Any other serialisable value: encoded.
    pub trait RespondEncoded<O> {
        /// The reply.
        fn sb_respond(&self, out: O, local: bool) -> Reply;
    }
    impl<O: Serialize> RespondEncoded<O> for Probe<O> {
        fn sb_respond(&self, out: O, _: bool) -> Reply {
            Reply::value(&out)
        }
    }
    /// Fallback of the reply dispatch.
    pub trait RespondFallback<O> {
        /// Never runs.
        fn sb_respond(&self, out: O, local: bool) -> Reply;
    }
    impl<O> RespondFallback<O> for Never<O> {
        fn sb_respond(&self, _: O, _: bool) -> Reply {
            unreachable!("{NEVER}")
        }
    }

    // -- An `impl Stream<Item = T>` reply (asserted by `assert_stream`) --

    /// The stream's values as a reply.
    pub trait StreamReply<S> {
        /// The reply.
        fn sb_stream_reply(&self, out: S) -> Reply;
    }
    impl<S> StreamReply<S> for Probe<S>
    where
        S: futures_util::stream::Stream + Send + 'static,
        S::Item: Serialize,
    {
        fn sb_stream_reply(&self, out: S) -> Reply {
            super::stream_reply(out)
        }
    }
    /// Fallback of [`StreamReply`].
    pub trait StreamFallback<S> {
        /// Never runs.
        fn sb_stream_reply(&self, out: S) -> Reply;
    }
    impl<S> StreamFallback<S> for Never<S> {
        fn sb_stream_reply(&self, _: S) -> Reply {
            unreachable!("{NEVER}")
        }
    }

    // -- The same ladder as a check, spanned at the return type: `(&&&&probe).sb_check_reply()` --

    /// A return type with a reply shape of its own: fine.
    pub trait CheckOwn {
        /// Checks nothing more.
        fn sb_check_reply(&self) {}
    }
    impl<O: IntoReply> CheckOwn for &&&Probe<O> {}
    /// A `Result` whose value serialises and whose error converts: fine.
    pub trait CheckResult {
        /// Checks nothing more.
        fn sb_check_reply(&self) {}
    }
    impl<T: Serialize, E: Into<RpcError>> CheckResult for &&Probe<Result<T, E>> {}
    /// Any other `Result`: says what is wrong with it (the method's bounds are checked at
    /// the call, in the user's code).
    pub trait CheckBadResult<T, E> {
        /// Fails to compile, saying why.
        fn sb_check_reply(&self)
        where
            T: ReplyType,
            RpcError: ErrorType<E>,
        {
        }
    }
    impl<T, E> CheckBadResult<T, E> for &Probe<Result<T, E>> {}
    /// Any other serialisable value: fine.
    pub trait CheckValue {
        /// Checks nothing more.
        fn sb_check_reply(&self) {}
    }
    impl<O: Serialize> CheckValue for Probe<O> {}
    /// Anything else: says it does not serialise.
    pub trait CheckFallback<O> {
        /// Fails to compile, saying why.
        fn sb_check_reply(&self)
        where
            O: ReplyType,
        {
        }
    }
    impl<O> CheckFallback<O> for Never<O> {}

    // -- A handler that needs no state, for the registry: `(&probe).sb_stateless(h)` --

    /// A handler served without state.
    pub trait Stateless<H> {
        /// Its route.
        fn sb_stateless(&self, handler: H) -> Option<Route>;
    }
    impl<H: Serve<()>> Stateless<H> for Probe<H> {
        fn sb_stateless(&self, handler: H) -> Option<Route> {
            Some(handler.into_route(()))
        }
    }
    /// A handler that needs state.
    pub trait StatefulFallback<H> {
        /// `None`: it is added explicitly.
        fn sb_stateless(&self, handler: H) -> Option<Route>;
    }
    impl<H> StatefulFallback<H> for Never<H> {
        fn sb_stateless(&self, _: H) -> Option<Route> {
            None
        }
    }
}
