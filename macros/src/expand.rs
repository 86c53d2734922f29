//! Code generation for one handler: its descriptor (a type named like the function, in the
//! type namespace only, and a `SCREAMING_CASE` constant of it), the glue that serves it,
//! its registration and the spanned checks. The user's function itself is left as written.
//!
//! Everything generated reaches the runtime through `<crate>::__private` (imported as
//! `__sb`), and every generated local name starts with `__sb`, so nothing clashes with user code.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use switchboard_codegen::{HandlerDef, HandlerSig, PatternArgs, PatternKind, ReturnKind, check_pattern};
use syn::{Attribute, Ident, Path, Type};

/// `#[message_pattern]` / `#[event_pattern]` on a free function.
///
/// On any error the function is emitted unchanged next to the errors (as tokio's macros
/// do), and, when only the pattern is wrong, its descriptor too (as thiserror's fallback
/// does), so the rest of the crate still resolves both and only the real mistake is reported.
pub fn handler(kind: PatternKind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let span = item.clone().into_iter().next().map_or_else(Span::call_site, |t| t.span());
            let err = syn::Error::new(
                span,
                format!("`#[{}]` can only be used on an `async fn`", kind.attr_name()),
            )
            .to_compile_error();
            return quote!(#item #err);
        }
    };
    match HandlerDef::parse(kind, attr.clone(), &func) {
        Ok(def) => expand_free(&def, &func),
        Err(err) => {
            let err = err.to_compile_error();
            let sig = HandlerSig::from_fn(&func);
            // A valid signature with a wrong pattern: still a descriptor, with no route.
            let fallback = match (switchboard_codegen::check_signature(kind, &func.sig, &sig, switchboard_codegen::Place::Free), HandlerDef::pattern_only(attr)) {
                (Ok(()), None) => {
                    let pattern = PatternArgs::parse(quote!("")).expect("an empty string is a pattern");
                    expand_free(&HandlerDef { kind, pattern, sig }, &func)
                }
                _ => quote!(#func),
            };
            quote!(#fallback #err)
        }
    }
}

/// The name of a handler's descriptor constant: `get_user` → `GET_USER`.
pub fn const_name(fn_name: &Ident) -> Ident {
    use syn::ext::IdentExt;
    let name = fn_name.unraw().to_string();
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_uppercase() && prev_lower {
            out.push('_');
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        out.extend(c.to_uppercase());
    }
    Ident::new(&out, fn_name.span())
}

fn expand_free(def: &HandlerDef, func: &syn::ItemFn) -> TokenStream {
    let sig = &def.sig;
    let krate = def.pattern.crate_path();
    let ident = &sig.ident;
    let vis = &sig.vis;
    let konst = const_name(ident);

    // Docs describe the handler, so the descriptor gets them too; `cfg`s go everywhere, so
    // a handler compiled out takes its descriptor with it.
    let docs: Vec<&Attribute> = func.attrs.iter().filter(|a| a.path().is_ident("doc")).collect();
    let cfgs: Vec<&Attribute> = func.attrs.iter().filter(|a| a.path().is_ident("cfg")).collect();
    let const_doc = format!(
        "The descriptor of [`{}`]: serve it with `Microservice::handler`, call it with `Client::{}`.",
        ident,
        if def.kind == PatternKind::Message { "send" } else { "emit" }
    );

    let desc: Type = syn::parse_quote!(#ident);
    let items = descriptor_items(def, &krate, &desc);
    let glue = glue(def, &quote!(#ident), Receiver::None);
    let serve_bounds = serve_bounds(sig);
    let checks = checks(def, &quote!(#ident), None);
    let info = info_static(def);

    quote! {
        #[allow(clippy::unused_async)]
        #func

        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug)]
        #vis struct #ident {}

        #(#cfgs)*
        #(#docs)*
        #[doc = ""]
        #[doc = #const_doc]
        #vis const #konst: #ident = #ident {};

        #(#cfgs)*
        const _: () = {
            use #krate::__private as __sb;

            #info
            impl __sb::Handler for #desc {
                fn info(&self) -> &'static __sb::HandlerInfo {
                    &__SB_INFO
                }
            }

            impl<__SbS> __sb::Serve<__SbS> for #desc
            where
                __SbS: ::core::clone::Clone + ::core::marker::Send + ::core::marker::Sync + 'static,
                #serve_bounds
            {
                fn call(self, mut __sb_req: __sb::Request, __sb_state: __SbS) -> __sb::BoxFuture<'static, __sb::Reply> {
                    #glue
                }
            }

            #items

            fn __sb_stateless() -> ::core::option::Option<__sb::Route> {
                #[allow(unused_imports)]
                use __sb::probe::{StatefulFallback as _, Stateless as _};
                (&__sb::probe::ty::<#desc>()).sb_stateless(#ident {})
            }
            __sb::inventory::submit!(__sb::Registration { info: &__SB_INFO, stateless: __sb_stateless });

            #checks
        };
    }
}

/// How the generated glue calls the user's function.
pub enum Receiver {
    /// A free function, or an associated function of a group.
    None,
    /// A method taking `&self`, called on `this` (an `Arc` of the group).
    Method,
}

/// `static __SB_INFO: HandlerInfo`.
pub fn info_static(def: &HandlerDef) -> TokenStream {
    let ident = &def.sig.ident;
    let name = def.sig.name();
    let route = def.pattern.route();
    let json = def.pattern.json();
    let kind = match def.kind {
        PatternKind::Message => quote!(Request),
        PatternKind::Event => quote!(Event),
    };
    // `line!()` spanned at the name reports the name's line.
    let line = quote_spanned!(ident.span()=> ::core::line!());
    quote! {
        static __SB_INFO: __sb::HandlerInfo = __sb::HandlerInfo::new(
            __sb::Kind::#kind, #route, #json, #name, ::core::module_path!(), ::core::file!(), #line,
        );
    }
}

/// `A0: FromRequest<__SbS>, …` for the `Serve`/`Group` impls.
pub fn serve_bounds(sig: &HandlerSig) -> TokenStream {
    let tys = sig.args.iter().map(|a| &a.ty);
    quote!(#(#tys: __sb::FromRequest<__SbS>,)*)
}

/// The descriptor's `Message` or `Event` impl.
pub fn descriptor_items(def: &HandlerDef, krate: &Path, desc: &Type) -> TokenStream {
    let _ = krate;
    let sig = &def.sig;
    let route = def.pattern.route();
    let json = def.pattern.json();
    let list = arg_list(sig.args.iter().map(|a| &a.ty));
    let request = quote!(__sb::RequestOf<#list>);
    match def.kind {
        PatternKind::Message => {
            let reply = reply_type(&sig.ret);
            quote! {
                impl __sb::Message for #desc {
                    type Request = #request;
                    type Reply = #reply;
                    fn pattern_json(&self) -> &'static str { #json }
                    fn route(&self) -> &'static str { #route }
                }
            }
        }
        PatternKind::Event => quote! {
            impl __sb::Event for #desc {
                type Payload = #request;
                fn pattern_json(&self) -> &'static str { #json }
                fn route(&self) -> &'static str { #route }
            }
        },
    }
}

/// `(A0, (A1, ()))`.
fn arg_list<'a>(tys: impl DoubleEndedIterator<Item = &'a Type>) -> TokenStream {
    tys.rev().fold(quote!(()), |rest, ty| quote!((#ty, #rest)))
}

/// The reply type callers decode, as the return type is written.
fn reply_type(ret: &ReturnKind) -> TokenStream {
    match ret {
        ReturnKind::Unit => quote!(()),
        ReturnKind::Value(ty) | ReturnKind::ImplOther(ty) => quote!(#ty),
        ReturnKind::Fallible { ty, .. } => quote!(<#ty as __sb::Fallible>::Ok),
        ReturnKind::ReplyStream { ty, .. } => quote!(<#ty as __sb::Streamed>::Item),
        ReturnKind::ImplStream { item, .. } => {
            let item = item.as_ref().expect("checked: `impl Stream` names its item");
            quote!(#item)
        }
    }
}

/// The body of `call`: the arguments extracted in order, the function called, its value
/// made a reply; the whole boxed once.
pub fn glue(def: &HandlerDef, callee: &TokenStream, receiver: Receiver) -> TokenStream {
    let sig = &def.sig;
    let args: Vec<Ident> = sig.args.iter().map(|a| format_ident!("__sb_a{}", a.index)).collect();
    let extract = sig.args.iter().zip(&args).map(|(a, name)| {
        let ty = &a.ty;
        quote! {
            let #name = match <#ty as __sb::FromRequest<__SbS>>::from_request(&mut __sb_req, &__sb_state).await {
                ::core::result::Result::Ok(v) => v,
                ::core::result::Result::Err(e) => return __sb::Reply::error(e),
            };
        }
    });
    let call = match receiver {
        Receiver::None => quote!(#callee(#(#args),*)),
        Receiver::Method => {
            let method = &sig.ident;
            quote!(__sb_this.#method(#(#args),*))
        }
    };
    let respond = match &sig.ret {
        ReturnKind::ImplStream { .. } => quote! {
            #[allow(unused_imports)]
            use __sb::probe::{StreamFallback as _, StreamReply as _};
            (&__sb::probe::of(&__sb_out)).sb_stream_reply(__sb_out)
        },
        _ => quote! {
            #[allow(unused_imports)]
            use __sb::probe::{RespondFallback as _, RespondOwn as _, RespondResult as _, RespondValue as _};
            (&&&__sb::probe::of(&__sb_out)).sb_respond(__sb_out)
        },
    };
    quote! {
        #[allow(unused_imports)]
        use __sb::probe::{Boxed as _, BoxedFallback as _};
        #[allow(unused_mut, unused_variables)]
        let __sb_fut = async move {
            #(#extract)*
            if let ::core::result::Result::Err(e) = __sb::check_unread_payload(&__sb_req) {
                return __sb::Reply::error(e);
            }
            let __sb_out = #call.await;
            #respond
        };
        (&__sb::probe::of(&__sb_fut)).sb_boxed(__sb_fut)
    }
}

/// Spanned checks, axum-style: each requirement is asserted once, at the user's token, so
/// the compiler's message points at the user's code. The generated glue does not repeat the
/// bounds (see `__private::probe`), so each mistake is reported once.
pub fn checks(def: &HandlerDef, callee: &TokenStream, method_of: Option<&Type>) -> TokenStream {
    let sig = &def.sig;
    let mut out = TokenStream::new();

    for (i, arg) in sig.args.iter().enumerate() {
        let ty = &arg.ty;
        out.extend(quote_spanned!(first_span(ty)=> __sb::assert_arg::<#ty>();));
        if i > 0 {
            let before = arg_list(sig.args[..i].iter().map(|a| &a.ty));
            out.extend(quote_spanned!(first_span(ty)=> __sb::assert_one_payload::<#before, #ty>();));
        }
    }

    let reply_check = |ty: &Type| {
        let call = quote!((&&&&__sb::probe::ty::<#ty>()).sb_check_reply(););
        let call = respan(call, first_span(ty));
        quote! {
            {
                #[allow(unused_imports)]
                use __sb::probe::{CheckBadResult as _, CheckFallback as _, CheckOwn as _, CheckResult as _, CheckValue as _};
                #call
            }
        }
    };
    match &sig.ret {
        ReturnKind::Unit | ReturnKind::ImplOther(_) => {}
        ReturnKind::Value(ty) => out.extend(reply_check(ty)),
        ReturnKind::Fallible { ty, ok, err } => {
            match ok {
                Some(ok) => out.extend(reply_check(ok)),
                None => out.extend(assert_reply(quote!(<#ty as __sb::Fallible>::Ok), ty)),
            }
            match err {
                Some(err) => out.extend(quote_spanned!(first_span(err)=> __sb::assert_rpc_error::<#err>();)),
                None => out.extend(reply_check(ty)),
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

    let args: Vec<Ident> = sig.args.iter().map(|a| format_ident!("__sb_a{}", a.index)).collect();
    let arg_tys: Vec<&Type> = sig.args.iter().map(|a| &a.ty).collect();
    let fut = quote_spanned!(sig.ident.span()=> &__sb_fut);
    let (this_param, call, assert) = if let Some(self_ty) = method_of {
        let method = &sig.ident;
        (
            quote!(__sb_this: &#self_ty,),
            quote!(__sb_this.#method(#(#args),*)),
            quote!(__sb::assert_send_future(#fut);),
        )
    } else {
        (quote!(), quote!(#callee(#(#args),*)), quote!(__sb::assert_handler_future(#fut);))
    };
    quote! {
        #[allow(dead_code, unused_variables, clippy::all)]
        fn __sb_checks(#this_param #(#args: #arg_tys),*) {
            let __sb_fut = #call;
            #assert
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
            if let TokenTree::Group(g) = &t {
                let mut inner = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                inner.set_span(span);
                return TokenTree::Group(inner);
            }
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
