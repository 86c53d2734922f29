//! Code generation: a checked [`HandlerDef`] → the renamed function, its descriptor struct,
//! the registry entry and the spanned checks.
//!
//! Everything generated reaches the runtime through `<crate>::__private` (imported as
//! `__sb`), and every generated name starts with `__sb`, so nothing clashes with user code.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use switchboard_codegen::{HandlerDef, PatternArgs, PatternKind, ReturnKind, check_pattern};
use syn::{Attribute, Ident, ItemFn, Type};

/// `#[message_pattern]` / `#[event_pattern]`.
///
/// On any error the function is emitted unchanged next to the errors (as tokio's macros
/// do), so the rest of the crate still resolves it and only the real mistake is reported.
pub fn handler(kind: PatternKind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let err = syn::Error::new(
                Span::call_site(),
                format!("`#[{}]` can only be used on an `async fn`", kind.attr_name()),
            )
            .to_compile_error();
            return quote!(#item #err);
        }
    };
    match HandlerDef::parse(kind, attr, &func) {
        Ok(def) => expand_handler(&def, func),
        Err(err) => {
            let err = err.to_compile_error();
            quote!(#item #err)
        }
    }
}

/// `pattern!(...)`: a `PatternLit` constant expression.
pub fn pattern(input: TokenStream) -> TokenStream {
    let args = PatternArgs::parse(input).and_then(|args| check_pattern(&args).map(|()| args));
    match args {
        Ok(args) => {
            let krate = args.crate_path();
            let json = args.json();
            let route = args.route();
            quote!(#krate::PatternLit { json: #json, route: #route })
        }
        Err(err) => {
            // A block, so that several errors still form one expression.
            let err = err.to_compile_error();
            quote!({ #err })
        }
    }
}

fn expand_handler(def: &HandlerDef, mut func: ItemFn) -> TokenStream {
    let sig = &def.sig;
    let krate = def.pattern.crate_path();
    let ident = &sig.ident;
    let vis = &sig.vis;
    let name = sig.name();
    let inner = format_ident!("__sb_handler_{}", name, span = ident.span());
    let route = def.pattern.route();
    let json = def.pattern.json();

    // Docs describe the handler, so they go to the descriptor (the name users see);
    // `cfg`s go everywhere, so a handler compiled out takes its descriptor with it.
    let docs: Vec<&Attribute> = func.attrs.iter().filter(|a| a.path().is_ident("doc")).collect();
    let cfgs: Vec<&Attribute> = func.attrs.iter().filter(|a| a.path().is_ident("cfg")).collect();
    let docs = quote!(#(#docs)*);
    let cfgs = quote!(#(#cfgs)*);
    func.attrs.retain(|a| !a.path().is_ident("doc"));
    func.attrs.insert(0, syn::parse_quote!(#[doc(hidden)]));
    // Handlers must be `async` even when they never wait; do not let clippy say otherwise.
    func.attrs.insert(1, syn::parse_quote!(#[allow(clippy::unused_async)]));
    func.sig.ident = inner.clone();

    // Arguments are bound by position: the user's patterns (`mut id`, `Wrapper(x)`) stay in
    // the user's function.
    let arg_tys: Vec<&Type> = sig.args.iter().map(|a| &a.ty).collect();
    let args: Vec<Ident> = sig.args.iter().map(|a| format_ident!("__sb_a{}", a.index)).collect();
    let payload = sig.payload();
    let request = match payload {
        Some(p) => p.ty.to_token_stream(),
        None => quote!(()),
    };

    let (deref_out, reply_ty) = reply_types(&sig.ret);
    let deref_body = match &sig.ret {
        ReturnKind::ImplStream { .. } => quote! {
            let __sb_fut = (&__sb::probe::of(&__sb_fut)).sb_boxed(__sb_fut);
            (&__sb::probe::output_of(&__sb_fut)).sb_into_reply_stream(__sb_fut)
        },
        _ => quote!((&__sb::probe::of(&__sb_fut)).sb_boxed(__sb_fut)),
    };

    let decode = match payload {
        Some(p) => {
            let a = format_ident!("__sb_a{}", p.index);
            let ty = &p.ty;
            quote! {
                let #a: #ty = match (&__sb::probe::ty::<#ty>()).sb_decode(&__sb_inbound) {
                    ::core::result::Result::Ok(v) => v,
                    ::core::result::Result::Err(e) => return __sb::Reply::error(e),
                };
            }
        }
        // No payload to decode, but it must still be JSON.
        None => quote! {
            if let ::core::result::Result::Err(e) = __sb_inbound.check_payload() {
                return __sb::Reply::error(e);
            }
        },
    };
    let context = sig.context().map(|c| {
        let a = format_ident!("__sb_a{}", c.index);
        quote!(let #a = __sb_inbound.into_context();)
    });
    let reply = match &sig.ret {
        ReturnKind::Unit => quote!((&__sb::probe::of(&__sb_fut)).sb_unit(__sb_fut)),
        ReturnKind::Value(_) | ReturnKind::ImplOther(_) => {
            quote!((&__sb::probe::of(&__sb_fut)).sb_value(__sb_fut))
        }
        ReturnKind::Fallible { .. } => {
            quote!((&__sb::probe::of(&__sb_fut)).sb_result(__sb_fut))
        }
        ReturnKind::ReplyStream { .. } => {
            quote!((&__sb::probe::of(&__sb_fut)).sb_reply_stream(__sb_fut))
        }
        ReturnKind::ImplStream { .. } => {
            quote!((&__sb::probe::of(&__sb_fut)).sb_stream(__sb_fut))
        }
    };

    let handler_kind = match def.kind {
        PatternKind::Message => quote!(Message),
        PatternKind::Event => quote!(Event),
    };
    // `line!()` spanned at the name reports the name's line.
    let line = quote_spanned!(ident.span()=> ::core::line!());

    // No bounds here: `Client::send` and `emit` require `Serialize` / `DeserializeOwned` at
    // the call, so a handler whose types lack them still serves and is still a descriptor.
    let descriptor_impl = match def.kind {
        PatternKind::Message => quote! {
            impl __sb::Message for #ident {
                type Request = #request;
                type Reply = #reply_ty;
                fn pattern_json(&self) -> &'static str { #json }
                fn route(&self) -> &'static str { #route }
            }
        },
        PatternKind::Event => quote! {
            impl __sb::Event for #ident {
                type Payload = #request;
                fn pattern_json(&self) -> &'static str { #json }
                fn route(&self) -> &'static str { #route }
            }
        },
    };

    let checks = checks(def, &inner, &args, &arg_tys);

    quote! {
        #func

        #cfgs
        #docs
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug)]
        #vis struct #ident;

        #cfgs
        const _: () = {
            use #krate::__private as __sb;

            // Keeps `get_user(id).await` working: the descriptor derefs to a function pointer.
            impl ::core::ops::Deref for #ident {
                type Target = fn(#(#arg_tys),*) -> __sb::BoxFuture<'static, #deref_out>;
                fn deref(&self) -> &Self::Target {
                    const __SB_F: fn(#(#arg_tys),*) -> __sb::BoxFuture<'static, #deref_out> = |#(#args),*| {
                        #[allow(unused_imports)]
                        use __sb::probe::{
                            Boxed as _, BoxedFallback as _, IntoReplyStream as _, IntoReplyStreamFallback as _,
                        };
                        let __sb_fut = #inner(#(#args),*);
                        #deref_body
                    };
                    &__SB_F
                }
            }

            #[allow(unused_variables)]
            fn __sb_call(__sb_inbound: __sb::Inbound<'_>) -> __sb::Reply {
                #[allow(unused_imports)]
                use __sb::probe::{
                    Boxed as _, BoxedFallback as _, Decode as _, DecodeFallback as _,
                    ResultReply as _, ResultReplyFallback as _, ReplyStreamReply as _,
                    ReplyStreamReplyFallback as _, StreamReply as _, StreamReplyFallback as _,
                    UnitReply as _, UnitReplyFallback as _, ValueReply as _, ValueReplyFallback as _,
                };
                #decode
                #context
                // Not boxed on its own: the reply boxes it together with its encoding.
                let __sb_fut = #inner(#(#args),*);
                #reply
            }

            static __SB_ENTRY: __sb::HandlerEntry = __sb::HandlerEntry {
                kind: __sb::HandlerKind::#handler_kind,
                route: #route,
                pattern: #json,
                name: #name,
                module: ::core::module_path!(),
                file: ::core::file!(),
                line: #line,
                call: __sb_call,
            };
            __sb::inventory::submit!(__sb::Registration(&__SB_ENTRY));

            impl __sb::Handler for #ident {
                fn entry(&self) -> &'static __sb::HandlerEntry {
                    &__SB_ENTRY
                }
            }

            #descriptor_impl

            #checks
        };
    }
}

/// The output type of the `Deref` function pointer, and the descriptor's reply type.
fn reply_types(ret: &ReturnKind) -> (TokenStream, TokenStream) {
    match ret {
        ReturnKind::Unit => (quote!(()), quote!(())),
        ReturnKind::Value(ty) | ReturnKind::ImplOther(ty) => (quote!(#ty), quote!(#ty)),
        ReturnKind::Fallible { ty, .. } => (quote!(#ty), quote!(<#ty as __sb::Fallible>::Ok)),
        ReturnKind::ReplyStream { ty, .. } => (quote!(#ty), quote!(<#ty as __sb::Streamed>::Item)),
        ReturnKind::ImplStream { item, .. } => {
            let item = item.as_ref().expect("checked: `impl Stream` names its item");
            (quote!(__sb::ReplyStream<#item>), quote!(#item))
        }
    }
}

/// Spanned checks, axum-style: each requirement is asserted once, at the user's token, so
/// the compiler's message points at the user's code. The generated call sites do not
/// repeat the bounds (see `__private::probe`), so each mistake is reported once.
fn checks(def: &HandlerDef, inner: &Ident, args: &[Ident], arg_tys: &[&Type]) -> TokenStream {
    let sig = &def.sig;
    let mut out = TokenStream::new();

    if let Some(p) = sig.payload() {
        let ty = &p.ty;
        out.extend(quote_spanned!(first_span(ty)=> __sb::assert_payload::<#ty>();));
    }

    match &sig.ret {
        ReturnKind::Unit | ReturnKind::ImplOther(_) => {}
        ReturnKind::Value(ty) => out.extend(assert_reply(ty.to_token_stream(), ty)),
        ReturnKind::Fallible { ty, ok, err } => {
            match ok {
                Some(ok) => out.extend(assert_reply(ok.to_token_stream(), ok)),
                None => out.extend(assert_reply(quote!(<#ty as __sb::Fallible>::Ok), ty)),
            }
            match err {
                Some(err) => out.extend(quote_spanned!(first_span(err)=> __sb::assert_rpc_error::<#err>();)),
                None => out.extend(quote_spanned!(first_span(ty)=>
                    __sb::assert_rpc_error::<<#ty as __sb::FallibleError>::Err>();
                )),
            }
        }
        ReturnKind::ReplyStream { ty, item } => match item {
            Some(item) => out.extend(assert_reply(item.to_token_stream(), item)),
            None => out.extend(assert_reply(quote!(<#ty as __sb::Streamed>::Item), ty)),
        },
        ReturnKind::ImplStream { ty, item } => {
            if let Some(item) = item {
                out.extend(assert_reply(item.to_token_stream(), item));
            }
            out.extend(spanned_call(quote!(__sb::assert_stream), ty));
        }
    }

    let fut = quote_spanned!(sig.ident.span()=> &__sb_fut);
    quote! {
        #[allow(dead_code, unused_variables, clippy::all)]
        fn __sb_checks(#(#args: #arg_tys),*) {
            let __sb_fut = #inner(#(#args),*);
            __sb::assert_handler_future(#fut);
            #out
        }
    }
}

/// `assert_reply::<T>()`, with the compiler's caret on the user's `T`.
fn assert_reply(ty: TokenStream, at: &impl ToTokens) -> TokenStream {
    quote_spanned!(first_span(at)=> __sb::assert_reply::<#ty>();)
}

/// `path(&__sb_fut);`, spanned from the first to the last token of `at`. The compiler
/// reports a failed bound on an expression from its first to its last token, so this puts
/// the caret under the whole type on stable Rust, where a proc macro cannot join spans.
fn spanned_call(path: TokenStream, at: &impl ToTokens) -> TokenStream {
    let tokens: Vec<TokenTree> = at.to_token_stream().into_iter().collect();
    let first = tokens.first().map_or_else(Span::call_site, TokenTree::span);
    let last = tokens.last().map_or_else(Span::call_site, TokenTree::span);
    let path = respan(path, first);
    let amp = quote_spanned!(first=> &);
    let name = Ident::new("__sb_fut", last);
    let mut args = proc_macro2::Group::new(proc_macro2::Delimiter::Parenthesis, quote!(#amp #name));
    args.set_span(last);
    quote!(#path #args;)
}

fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut t| {
            t.set_span(span);
            t
        })
        .collect()
}

fn first_span(at: &impl ToTokens) -> Span {
    at.to_token_stream()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span())
}
