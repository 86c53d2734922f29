//! The model of a handler function as written: its receiver, arguments and return type.
//!
//! What an argument *is* (the payload, or an extractor such as `Context` or `State<T>`) and
//! how the value returned becomes a reply are decided by traits when the generated code
//! compiles, never by type names here. The return type is classified only to name the
//! descriptor's reply type for callers: `Result<T, E>` (or `RpcResult<T>`, `io::Result<T>`)
//! replies `T`, `ReplyStream<T>` and `impl Stream<Item = T>` reply `T`s, anything else
//! (aliases included) replies itself. [`HandlerSig::from_signature`] never fails: it records
//! what it sees, and [`crate::check::check_signature`] says what is not allowed.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, ItemFn, Pat, PathArguments, ReturnType, Signature, Type, TypeParamBound,
    Visibility,
};

/// Whether a handler answers requests or listens to events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternKind {
    /// `#[message_pattern]`
    Message,
    /// `#[event_pattern]`
    Event,
}

impl PatternKind {
    /// The attribute's name.
    pub fn attr_name(self) -> &'static str {
        match self {
            PatternKind::Message => "message_pattern",
            PatternKind::Event => "event_pattern",
        }
    }

    /// The kind named by an attribute (`#[message_pattern]`, `#[switchboard::event_pattern]`),
    /// judged by the last segment of its path.
    pub fn of_attr(attr: &Attribute) -> Option<PatternKind> {
        let last = attr.path().segments.last()?;
        if last.ident == "message_pattern" {
            Some(PatternKind::Message)
        } else if last.ident == "event_pattern" {
            Some(PatternKind::Event)
        } else {
            None
        }
    }
}

/// A handler function as the macros see it.
#[derive(Debug, Clone)]
pub struct HandlerSig {
    /// The function's name.
    pub ident: syn::Ident,
    /// Its visibility, given to the descriptor too.
    pub vis: Visibility,
    /// Its `self` receiver, if any (handlers of a group take `&self`).
    pub receiver: Option<syn::Receiver>,
    /// Its typed arguments, in order (a `self` receiver is not among them).
    pub args: Vec<HandlerArg>,
    /// What its return type means.
    pub ret: ReturnKind,
    /// Where a reply type is named: the return type, or the function name when there is none.
    pub ret_span: Span,
}

/// One typed argument.
#[derive(Debug, Clone)]
pub struct HandlerArg {
    /// Its position among the function's arguments.
    pub index: usize,
    /// The binding pattern as written (`id`, `mut id`, `Wrapper(x)`).
    pub pat: Pat,
    /// Its type.
    pub ty: Type,
}

/// How the return type becomes a reply.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per handler, at compile time
pub enum ReturnKind {
    /// No return type, or `()`: the reply is completion only.
    Unit,
    /// Any other type: one value, which must be `Serialize`.
    Value(Type),
    /// `Result<T, E>`, `RpcResult<T>`, or a path ending in `Result` (`io::Result<T>`).
    Fallible {
        /// The whole type.
        ty: Type,
        /// `T`, when written as the first type argument.
        ok: Option<Type>,
        /// `E`, when written as the second type argument.
        err: Option<Type>,
    },
    /// `ReplyStream<T>`: several values.
    ReplyStream {
        /// The whole type.
        ty: Type,
        /// `T`, when written.
        item: Option<Type>,
    },
    /// `impl Stream<Item = T>`: several values, that cannot fail.
    ImplStream {
        /// The whole type.
        ty: Type,
        /// `T`, when the `Item = T` binding is written.
        item: Option<Type>,
    },
    /// Any other `impl Trait`: not supported (the descriptor needs a nameable reply type).
    ImplOther(Type),
}

impl HandlerSig {
    /// Reads a handler's signature.
    pub fn from_fn(item: &ItemFn) -> HandlerSig {
        HandlerSig::from_signature(&item.sig, &item.vis)
    }

    /// Reads a handler's signature, for callers that hold the parts.
    pub fn from_signature(sig: &Signature, vis: &Visibility) -> HandlerSig {
        let args = sig
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(index, arg)| match arg {
                FnArg::Typed(t) => Some(HandlerArg {
                    index,
                    pat: (*t.pat).clone(),
                    ty: (*t.ty).clone(),
                }),
                FnArg::Receiver(_) => None,
            })
            .collect();
        let (ret, ret_span) = match &sig.output {
            ReturnType::Default => (ReturnKind::Unit, sig.ident.span()),
            ReturnType::Type(_, ty) => (classify_return(ty), ty.span()),
        };
        HandlerSig {
            ident: sig.ident.clone(),
            vis: vis.clone(),
            receiver: sig.receiver().cloned(),
            args,
            ret,
            ret_span,
        }
    }

    /// The function's name without `r#`: the handler's name in the registry.
    pub fn name(&self) -> String {
        use syn::ext::IdentExt;
        self.ident.unraw().to_string()
    }
}

impl ReturnKind {
    /// The reply type a caller decodes, when the signature names it: `()` for unit, `T` for a
    /// value, the written `T` of `Result<T, E>`, `ReplyStream<T>` and `impl Stream<Item = T>`.
    /// `None` when it is implied (an alias like `fmt::Result`) or not supported.
    pub fn reply_type(&self) -> Option<Type> {
        match self {
            ReturnKind::Unit => Some(syn::parse_quote!(())),
            ReturnKind::Value(ty) => Some(ty.clone()),
            ReturnKind::Fallible { ok, .. } => ok.clone(),
            ReturnKind::ReplyStream { item, .. } | ReturnKind::ImplStream { item, .. } => item.clone(),
            ReturnKind::ImplOther(_) => None,
        }
    }

    /// True for kinds that answer with several values.
    pub fn is_stream(&self) -> bool {
        matches!(self, ReturnKind::ReplyStream { .. } | ReturnKind::ImplStream { .. })
    }
}

/// The last segment of a type's path (`Context` for `sb::Context`), if it is a path.
pub fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        Type::Group(g) => last_segment(&g.elem),
        Type::Paren(p) => last_segment(&p.elem),
        _ => None,
    }
}

/// The type arguments of a path segment (`Result<T, E>` → `[T, E]`).
fn type_args(seg: &syn::PathSegment) -> Vec<Type> {
    match &seg.arguments {
        PathArguments::AngleBracketed(a) => a
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Classifies a written return type.
pub fn classify_return(ty: &Type) -> ReturnKind {
    match ty {
        Type::Tuple(t) if t.elems.is_empty() => return ReturnKind::Unit,
        Type::Group(g) => return classify_return(&g.elem),
        Type::Paren(p) => return classify_return(&p.elem),
        Type::ImplTrait(imp) => {
            return match stream_bound(&imp.bounds) {
                Some(item) => ReturnKind::ImplStream { ty: ty.clone(), item },
                None => ReturnKind::ImplOther(ty.clone()),
            };
        }
        _ => {}
    }
    let Some(seg) = last_segment(ty) else {
        return ReturnKind::Value(ty.clone());
    };
    let args = type_args(seg);
    if seg.ident == "Result" || seg.ident == "RpcResult" {
        ReturnKind::Fallible {
            ty: ty.clone(),
            ok: args.first().cloned(),
            err: args.get(1).cloned(),
        }
    } else if seg.ident == "ReplyStream" {
        ReturnKind::ReplyStream {
            ty: ty.clone(),
            item: args.first().cloned(),
        }
    } else {
        ReturnKind::Value(ty.clone())
    }
}

/// For `impl Stream<Item = T> + Send`: `Some(Some(T))`; `Some(None)` when the `Item` binding
/// is missing; `None` when no bound is a `Stream`.
fn stream_bound(bounds: &syn::punctuated::Punctuated<TypeParamBound, syn::Token![+]>) -> Option<Option<Type>> {
    bounds.iter().find_map(|b| {
        let TypeParamBound::Trait(t) = b else {
            return None;
        };
        let seg = t.path.segments.last()?;
        if seg.ident != "Stream" {
            return None;
        }
        let item = match &seg.arguments {
            PathArguments::AngleBracketed(a) => a.args.iter().find_map(|arg| match arg {
                GenericArgument::AssocType(assoc) if assoc.ident == "Item" => Some(assoc.ty.clone()),
                _ => None,
            }),
            _ => None,
        };
        Some(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::{ToTokens, quote};

    fn sig(tokens: proc_macro2::TokenStream) -> HandlerSig {
        HandlerSig::from_fn(&syn::parse2(tokens).expect("a fn"))
    }

    fn text(t: &impl ToTokens) -> String {
        t.to_token_stream().to_string()
    }

    #[test]
    fn arguments_as_written() {
        let s = sig(quote!(
            pub async fn get_user(id: String, ctx: Context) -> User {}
        ));
        assert_eq!(s.name(), "get_user");
        assert_eq!(text(&s.args[0].ty), "String");
        assert_eq!(text(&s.args[1].ty), "Context");
        let s = sig(quote!(
            async fn f(ctx: switchboard::Context, mut p: Req) {}
        ));
        assert_eq!(s.args[1].index, 1);
        assert_eq!(text(&s.args[1].pat), "mut p");
    }

    #[test]
    fn no_arguments() {
        let s = sig(quote!(
            async fn ping() {}
        ));
        assert!(s.args.is_empty() && s.receiver.is_none());
        assert!(matches!(s.ret, ReturnKind::Unit));
    }

    #[test]
    fn receivers_are_not_arguments() {
        let s = sig(quote!(
            async fn f(&self, x: u32) {}
        ));
        assert_eq!(s.args.len(), 1);
        assert_eq!(s.args[0].index, 1);
        assert!(s.receiver.is_some());
    }

    #[test]
    fn return_kinds() {
        assert!(matches!(
            sig(quote!(
                async fn f() -> () {}
            ))
            .ret,
            ReturnKind::Unit
        ));
        assert!(matches!(
            sig(quote!(
                async fn f() -> User {}
            ))
            .ret,
            ReturnKind::Value(_)
        ));
        assert!(matches!(
            sig(quote!(
                async fn f() -> Option<User> {}
            ))
            .ret,
            ReturnKind::Value(_)
        ));

        let ReturnKind::Fallible { ok, err, .. } = sig(quote!(
            async fn f() -> Result<User, RpcError> {}
        ))
        .ret
        else {
            panic!("fallible")
        };
        assert_eq!(text(&ok.unwrap()), "User");
        assert_eq!(text(&err.unwrap()), "RpcError");

        let ReturnKind::Fallible { ok, err, .. } = sig(quote!(
            async fn f() -> sb::RpcResult<u32> {}
        ))
        .ret
        else {
            panic!("fallible")
        };
        assert_eq!(text(&ok.unwrap()), "u32");
        assert!(err.is_none());

        let ReturnKind::Fallible { ok, .. } = sig(quote!(
            async fn f() -> std::fmt::Result {}
        ))
        .ret
        else {
            panic!("fallible")
        };
        assert!(ok.is_none());

        let ReturnKind::ReplyStream { item, .. } = sig(quote!(
            async fn f() -> ReplyStream<u32> {}
        ))
        .ret
        else {
            panic!("stream")
        };
        assert_eq!(text(&item.unwrap()), "u32");

        let ReturnKind::ImplStream { item, .. } = sig(quote!(
            async fn f() -> impl futures::Stream<Item = Tick> + Send {}
        ))
        .ret
        else {
            panic!("impl stream")
        };
        assert_eq!(text(&item.unwrap()), "Tick");

        let ReturnKind::ImplStream { item, .. } = sig(quote!(
            async fn f() -> impl Stream {}
        ))
        .ret
        else {
            panic!("impl stream")
        };
        assert!(item.is_none());

        assert!(matches!(
            sig(quote!(
                async fn f() -> impl Serialize {}
            ))
            .ret,
            ReturnKind::ImplOther(_)
        ));
    }

    #[test]
    fn reply_types() {
        let reply = |tokens| sig(tokens).ret.reply_type().map(|t| text(&t));
        assert_eq!(
            reply(quote!(
                async fn f() {}
            ))
            .as_deref(),
            Some("()")
        );
        assert_eq!(
            reply(quote!(
                async fn f() -> User {}
            ))
            .as_deref(),
            Some("User")
        );
        assert_eq!(
            reply(quote!(
                async fn f() -> Result<User, E> {}
            ))
            .as_deref(),
            Some("User")
        );
        assert_eq!(
            reply(quote!(
                async fn f() -> ReplyStream<u8> {}
            ))
            .as_deref(),
            Some("u8")
        );
        assert_eq!(
            reply(quote!(
                async fn f() -> impl Stream<Item = u8> {}
            ))
            .as_deref(),
            Some("u8")
        );
        assert_eq!(
            reply(quote!(
                async fn f() -> io::Result {}
            )),
            None
        );
    }

    #[test]
    fn kinds_of_attributes() {
        let f: ItemFn = syn::parse_quote! {
            #[doc = "x"]
            #[switchboard::event_pattern("e")]
            async fn f() {}
        };
        assert_eq!(PatternKind::of_attr(&f.attrs[0]), None);
        assert_eq!(PatternKind::of_attr(&f.attrs[1]), Some(PatternKind::Event));
    }
}
