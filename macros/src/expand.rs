//! Code generation for one handler: its descriptor (a type named like the function, in the
//! type namespace only, and a `SCREAMING_CASE` constant of it), the glue that serves it,
//! its registration and the spanned checks. The user's function itself is left as written.
//!
//! Everything generated reaches the runtime through `<crate>::__private` (imported as
//! `__sb`), and every generated local name starts with `__sb`, so nothing clashes with user code.
//!
//! The user's argument and return types are written once, in the descriptor's `Sig` impl,
//! whose `impl` token carries the span of the function's name: a type the compiler cannot
//! find is then reported once, with the same help as for the function itself. Everything
//! else names them through `ArgAt<D, N>` and `RetOf<D>`.

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use switchboard_codegen::{HandlerDef, HandlerSig, PatternArgs, PatternKind, ReturnKind, check_pattern};
use syn::ext::IdentExt;
use syn::{Attribute, Ident, Type};

/// `#[message_pattern]` / `#[event_pattern]` on a free function.
///
/// On any error the function is emitted unchanged next to the errors (as tokio's macros
/// do), and, when only the pattern is wrong, its descriptor too (as thiserror's fallback
/// does), so the rest of the crate still resolves both and only the real mistake is reported.
pub fn handler(kind: PatternKind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let err = not_a_function(kind, &item).to_compile_error();
            return quote!(#item #err);
        }
    };
    match HandlerDef::parse(kind, attr.clone(), &func) {
        Ok(def) => expand_free(&def, &func),
        Err(err) => {
            let err = err.to_compile_error();
            let fallback = match fallback_def(kind, attr, &func.sig, &func.vis, switchboard_codegen::Place::Free) {
                Some(def) => expand_free(&def, &func),
                None => quote!(#func),
            };
            quote!(#fallback #err)
        }
    }
}

/// The handler with an empty pattern, when its signature is right and only its pattern is
/// wrong: its descriptor is still emitted, so callers compile and only the pattern is
/// reported. `None` when the signature is wrong too (there is no descriptor to make).
pub fn fallback_def(
    kind: PatternKind,
    attr: TokenStream,
    signature: &syn::Signature,
    vis: &syn::Visibility,
    place: switchboard_codegen::Place,
) -> Option<HandlerDef> {
    let sig = HandlerSig::from_signature(signature, vis);
    switchboard_codegen::check_signature(kind, signature, &sig, place).ok()?;
    // A pattern that parses and checks means the error was elsewhere: emit nothing extra.
    if HandlerDef::pattern_only(attr.clone()).is_some() {
        return None;
    }
    // Keep a `crate = <path>` that parses, so that the descriptor reaches the runtime as the
    // handler would have.
    let krate = attr
        .into_iter()
        .collect::<Vec<_>>()
        .split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ','))
        .find(|seg| matches!(seg.first(), Some(TokenTree::Ident(i)) if i == "crate"))
        .map(|seg| seg.iter().cloned().collect::<TokenStream>());
    let pattern = krate
        .and_then(|opt| PatternArgs::parse(quote!("", #opt)).ok())
        .unwrap_or_else(|| PatternArgs::parse(quote!("")).expect("an empty string is a pattern"));
    Some(HandlerDef { kind, pattern, sig })
}

/// The error for an attribute on an item it does not go on: at the item's keyword and name
/// (`struct GetUser`), saying what the item is. `goes_on` completes "`#[attr]` goes on …",
/// and `advice` says what to do.
pub fn wrong_item(attr: &str, goes_on: &str, advice: &str, item: &TokenStream) -> syn::Error {
    let what = |kw: &dyn ToTokens, name: &dyn ToTokens, kind: &str| {
        syn::Error::new_spanned(
            quote!(#kw #name),
            format!("`{attr}` goes on {goes_on}, and this is {kind}: {advice}"),
        )
    };
    match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Struct(i)) => what(&i.struct_token, &i.ident, "a struct"),
        Ok(syn::Item::Enum(i)) => what(&i.enum_token, &i.ident, "an enum"),
        Ok(syn::Item::Union(i)) => what(&i.union_token, &i.ident, "a union"),
        Ok(syn::Item::Const(i)) => what(&i.const_token, &i.ident, "a constant"),
        Ok(syn::Item::Static(i)) => what(&i.static_token, &i.ident, "a static"),
        Ok(syn::Item::Mod(i)) => what(&i.mod_token, &i.ident, "a module"),
        Ok(syn::Item::Trait(i)) => what(&i.trait_token, &i.ident, "a trait"),
        Ok(syn::Item::Type(i)) => what(&i.type_token, &i.ident, "a type alias"),
        Ok(syn::Item::Impl(i)) => what(&i.impl_token, &i.self_ty, "an `impl` block"),
        Ok(syn::Item::Use(i)) => what(&i.use_token, &i.tree, "a `use`"),
        Ok(syn::Item::Fn(i)) => what(&i.sig.fn_token, &i.sig.ident, "a function"),
        _ => {
            let first = item
                .clone()
                .into_iter()
                .next()
                .map_or_else(Span::call_site, |t| t.span());
            syn::Error::new(first, format!("`{attr}` goes on {goes_on}: {advice}"))
        }
    }
}

/// `#[message_pattern]` or `#[event_pattern]` on something that is not a function.
pub fn not_a_function(kind: PatternKind, item: &TokenStream) -> syn::Error {
    let attr = format!("#[{}]", kind.attr_name());
    match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Impl(_)) => wrong_item(
            &attr,
            "an `async fn`",
            &format!("mark the block `#[handlers]` and each handler method `{attr}`"),
            item,
        ),
        _ => wrong_item(
            &attr,
            "an `async fn`",
            "put it on the function that handles the message",
            item,
        ),
    }
}

/// The name of a handler's descriptor constant: `get_user` → `GET_USER`.
pub fn const_name(fn_name: &Ident) -> Ident {
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

/// The visibility, inside a module generated next to an item of visibility `vis`, that makes
/// an item visible exactly where `vis` makes the outer item visible (`pub(super)` for a
/// private one). The descriptor has its function's visibility: a trait impl of a type more
/// visible than the types in it is refused by the compiler.
pub fn inner_vis(vis: &syn::Visibility) -> TokenStream {
    match vis {
        syn::Visibility::Public(_) => quote!(pub),
        syn::Visibility::Inherited => quote!(pub(super)),
        syn::Visibility::Restricted(r) => {
            let path = &r.path;
            let first = path.segments.first().map(|s| s.ident.to_string());
            match first.as_deref() {
                Some("self") => {
                    let rest = path.segments.iter().skip(1);
                    quote!(pub(in super #(::#rest)*))
                }
                Some("super") => quote!(pub(in super::#path)),
                _ => quote!(pub(in #path)),
            }
        }
    }
}

/// Where the names the attribute adds are reported: at the function's name, as made by the
/// attribute, so that a clash with an item of the user's points at the handler and says
/// that `#[message_pattern]` made the name.
pub fn made_at(ident: &Ident) -> Span {
    Span::call_site().located_at(ident.span())
}

fn expand_free(def: &HandlerDef, func: &syn::ItemFn) -> TokenStream {
    let sig = &def.sig;
    let krate = def.pattern.crate_path();
    let ident = &sig.ident;
    let at = made_at(ident);
    let vis = respan(sig.vis.to_token_stream(), at);
    let konst = Ident::new(&const_name(ident).to_string(), at);
    let module = Ident::new(&format!("__sb_{}", ident.unraw()), at);
    let mut ty_name = ident.clone();
    ty_name.set_span(at);
    let ty_vis = respan(inner_vis(&sig.vis), at);

    // Docs describe the handler, so the descriptor gets them too; `cfg`s go everywhere, so
    // a handler compiled out takes its descriptor with it.
    let docs: Vec<&Attribute> = func.attrs.iter().filter(|a| a.path().is_ident("doc")).collect();
    let cfgs: Vec<&Attribute> = func.attrs.iter().filter(|a| a.path().is_ident("cfg")).collect();
    let const_doc = format!(
        "The descriptor of [`{}`]: serve it with `Microservice::handler`, call it with `Client::{}`.",
        ident,
        if def.kind == PatternKind::Message {
            "send"
        } else {
            "emit"
        }
    );

    // The type lives in a module of its own, glob-imported next to the function: everything
    // generated names it by its module's path, and an item of the user's with its name (a
    // `mod get_user`) shadows the import instead of clashing with it.
    let desc: Type = syn::parse_quote!(#module::#ty_name);
    let target = Target {
        def,
        desc: &desc,
        impl_span: ident.span(),
        self_ty: None,
    };
    let sig_impl = target.sig_impl();
    let items = target.descriptor_items();
    let bounds = target.serve_bounds();
    let serve_fn = target.serve_fn(&quote!(#ident));
    let checks = target.checks(&quote!(#ident));
    let info = info_static(def, &desc);
    // The constant is placed at the function's name, attributes included, so that the
    // compiler points at the name, not the attribute, when it reports it (a clash with a
    // `const GET_USER` of the user's).
    let import = respan(quote!(#vis use #module::*;), at);
    let konst_item = respan(quote!(#vis const #konst: #desc = #desc {};), at);
    // The type too: the compiler shows where it is defined in messages about it.
    let type_item = respan(
        quote! {
            #[doc(hidden)]
            #[allow(non_snake_case)]
            #vis mod #module {
                #[allow(non_camel_case_types)]
                #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug)]
                #ty_vis struct #ty_name {}
            }
        },
        at,
    );
    let const_attrs = respan(
        quote! {
            #(#cfgs)*
            #(#docs)*
            #[doc = ""]
            #[doc = #const_doc]
        },
        at,
    );

    quote! {
        #[allow(clippy::unused_async)]
        #func

        #(#cfgs)*
        #type_item
        #(#cfgs)*
        #[doc(hidden)]
        #import

        #const_attrs
        #konst_item

        #(#cfgs)*
        const _: () = {
            use #krate::__private as __sb;

            #sig_impl
            #info
            impl __sb::Handler for #desc {
                fn info(&self) -> &'static __sb::HandlerInfo {
                    &__SB_INFO
                }
            }

            impl<S> __sb::Serve<S> for #desc
            where
                S: ::core::clone::Clone + ::core::marker::Send + ::core::marker::Sync + 'static,
                #bounds
            {
                fn call(self, __sb_req: &mut __sb::Request, __sb_state: &S) -> __sb::BoxFuture<'static, __sb::Reply> {
                    __sb_serve::<S>(__sb_req, __sb_state)
                }
            }
            #serve_fn

            #items

            fn __sb_stateless() -> ::core::option::Option<__sb::Route> {
                #[allow(unused_imports)]
                use __sb::probe::{StatefulFallback as _, Stateless as _};
                (&__sb::probe::ty::<#desc>()).sb_stateless(#desc {})
            }
            __sb::inventory::submit!(__sb::Registration { info: &__SB_INFO, stateless: __sb_stateless });

            #checks
        };
    }
}

/// One handler's generated items, for a free function or a method of a group.
pub struct Target<'a> {
    /// The handler.
    pub def: &'a HandlerDef,
    /// The path of its descriptor type.
    pub desc: &'a Type,
    /// The span of the `Sig` impl's `impl` token: the function's name for a free function,
    /// the `impl` token of its block for a method, so that the compiler reports a type it
    /// cannot find there as it does in the function.
    pub impl_span: Span,
    /// The group's type, for a method of a group: `Self` in its types means it.
    pub self_ty: Option<&'a Type>,
}

impl Target<'_> {
    /// `ArgAt<D, N>`: the type of the argument at `index`.
    fn arg(&self, index: usize) -> TokenStream {
        let desc = self.desc;
        let mut n = quote!(__sb::Z);
        for _ in 0..index {
            n = quote!(__sb::S<#n>);
        }
        quote!(__sb::ArgAt<#desc, #n>)
    }

    /// A type as the user wrote it, `Self` replaced by the group's type.
    fn written(&self, ty: &Type) -> Type {
        match self.self_ty {
            Some(self_ty) => replace_self(ty, self_ty),
            None => ty.clone(),
        }
    }

    /// `impl Sig for D { type Args = (A0, (A1, ())); type Ret = R; }`: the only place the
    /// user's types are written.
    pub fn sig_impl(&self) -> TokenStream {
        let desc = self.desc;
        let sig = &self.def.sig;
        let args: Vec<Type> = sig.args.iter().map(|a| self.written(&a.ty)).collect();
        let list = args.iter().rev().fold(quote!(()), |rest, ty| quote!((#ty, #rest)));
        let ret = match &sig.ret {
            ReturnKind::Unit => quote!(()),
            ReturnKind::Value(ty)
            | ReturnKind::Fallible { ty, .. }
            | ReturnKind::ReplyStream { ty, .. }
            | ReturnKind::ImplOther(ty) => self.written(ty).to_token_stream(),
            ReturnKind::ImplStream { item, .. } => match item {
                Some(item) => self.written(item).to_token_stream(),
                None => quote!(()),
            },
        };
        let impl_token = Ident::new("impl", self.impl_span);
        quote! {
            #impl_token __sb::Sig for #desc {
                type Args = #list;
                type Ret = #ret;
            }
        }
    }

    /// `ArgAt<D, N>: FromRequest<S>, …` for the `Serve`/`Group` impls.
    pub fn serve_bounds(&self) -> TokenStream {
        let args = (0..self.def.sig.args.len()).map(|i| self.arg(i));
        quote!(#(#args: __sb::FromRequest<S>,)*)
    }

    /// The descriptor's `Message` or `Event` impl. It holds only when the arguments hold at
    /// most one payload (the `for<'__sb>` keeps the compiler from checking that here): when
    /// they do not, the spanned checks say so at the argument, and a caller is told why the
    /// descriptor cannot be called, instead of the attribute being blamed for it.
    pub fn descriptor_items(&self) -> TokenStream {
        let def = self.def;
        let desc = self.desc;
        let route = def.pattern.route();
        let json = def.pattern.json();
        let request = quote!(__sb::RequestOf<<#desc as __sb::Sig>::Args>);
        let mut gate = quote!(for<'__sb> <#desc as __sb::Sig>::Args: __sb::RequestList,);
        match def.kind {
            PatternKind::Message => {
                let ret = quote!(__sb::RetOf<#desc>);
                let reply = match &def.sig.ret {
                    ReturnKind::Unit => quote!(()),
                    ReturnKind::Value(_) | ReturnKind::ImplStream { .. } | ReturnKind::ImplOther(_) => ret,
                    ReturnKind::Fallible { .. } => {
                        gate.extend(quote!(for<'__sb> #ret: __sb::Fallible,));
                        quote!(<#ret as __sb::Fallible>::Ok)
                    }
                    ReturnKind::ReplyStream { .. } => {
                        gate.extend(quote!(for<'__sb> #ret: __sb::Streamed,));
                        quote!(<#ret as __sb::Streamed>::Item)
                    }
                };
                quote! {
                    impl __sb::Message for #desc where #gate {
                        type Request = #request;
                        type Reply = #reply;
                        fn pattern_json(&self) -> &'static str { #json }
                        fn route(&self) -> &'static str { #route }
                        fn options(&self) -> __sb::PatternOptions { __SB_INFO.options() }
                        fn signature(&self) -> ::core::option::Option<&'static __sb::Signature> {
                            static __SB_SIGNATURE: ::std::sync::OnceLock<__sb::Signature> = ::std::sync::OnceLock::new();
                            #[allow(unused_imports)]
                            use __sb::probe::{Shaped as _, Unshaped as _};
                            ::core::option::Option::Some(__SB_SIGNATURE.get_or_init(|| __sb::Signature::new(
                                (&__sb::probe::ty::<<Self as __sb::Message>::Request>()).sb_shape(),
                                ::core::option::Option::Some((&__sb::probe::ty::<<Self as __sb::Message>::Reply>()).sb_shape()),
                            )))
                        }
                    }
                }
            }
            PatternKind::Event => quote! {
                impl __sb::Event for #desc where #gate {
                    type Payload = #request;
                    fn pattern_json(&self) -> &'static str { #json }
                    fn route(&self) -> &'static str { #route }
                    fn signature(&self) -> ::core::option::Option<&'static __sb::Signature> {
                        static __SB_SIGNATURE: ::std::sync::OnceLock<__sb::Signature> = ::std::sync::OnceLock::new();
                        #[allow(unused_imports)]
                        use __sb::probe::{Shaped as _, Unshaped as _};
                        ::core::option::Option::Some(__SB_SIGNATURE.get_or_init(|| __sb::Signature::new(
                            (&__sb::probe::ty::<<Self as __sb::Event>::Payload>()).sb_shape(),
                            ::core::option::Option::None,
                        )))
                    }
                }
            },
        }
    }

    /// `fn __sb_serve<S>(..) -> BoxFuture<Reply>`: the arguments taken in order, the function
    /// called, its value made a reply. Arguments that can be taken at once are (every
    /// extractor of the crate can), so the boxed future holds only them and the function's
    /// own future (`__sb_run`); from the first that cannot be, the rest are taken by a future
    /// that holds the message and a clone of the state (`__sb_later`). Each future is made by
    /// a function of its own, so that whether it is `Send` is known where it is boxed (a
    /// non-`Send` handler is reported once, by `assert_handler_future`, not again by the
    /// boxing).
    ///
    /// `callee` is the function's path; for a method, `this` is an `Arc` of the group.
    pub fn serve_fn(&self, callee: &TokenStream) -> TokenStream {
        let sig = &self.def.sig;
        let bounds = self.serve_bounds();
        let args: Vec<Ident> = sig.args.iter().map(|a| format_ident!("__sb_a{}", a.index)).collect();
        let now: Vec<Ident> = sig.args.iter().map(|a| format_ident!("__sb_n{}", a.index)).collect();
        let types: Vec<TokenStream> = (0..sig.args.len()).map(|i| self.arg(i)).collect();
        let later_params = now
            .iter()
            .zip(&types)
            .map(|(now, ty)| quote!(#now: ::core::option::Option<#ty>,));
        let extract = args.iter().zip(&now).zip(&types).map(|((name, now), ty)| {
            quote! {
                let #name = match #now {
                    ::core::option::Option::Some(v) => v,
                    ::core::option::Option::None => match <#ty as __sb::FromRequest<S>>::from_request(&mut __sb_req, &__sb_state).await {
                        ::core::result::Result::Ok(v) => v,
                        ::core::result::Result::Err(e) => return __sb::Reply::error(e),
                    },
                };
            }
        });
        let (this_param, this_arg, call) = match (self.self_ty, &sig.receiver) {
            (Some(self_ty), Some(_)) => {
                let method = &sig.ident;
                (
                    quote!(__sb_this: __sb::Arc<#self_ty>,),
                    quote!(__sb_this,),
                    quote!(__sb_this.#method(#(#args),*)),
                )
            }
            (Some(self_ty), None) => (
                quote!(__sb_this: __sb::Arc<#self_ty>,),
                quote!(__sb_this,),
                quote!(#callee(#(#args),*)),
            ),
            (None, _) => (quote!(), quote!(), quote!(#callee(#(#args),*))),
        };
        let respond = match &sig.ret {
            ReturnKind::ImplStream { .. } => quote! {
                #[allow(unused_imports)]
                use __sb::probe::{StreamFallback as _, StreamReply as _};
                (&__sb::probe::of(&__sb_out)).sb_stream_reply(__sb_out)
            },
            _ => quote! {
                #[allow(unused_imports)]
                use __sb::probe::{
                    RespondEncoded as _, RespondFallback as _, RespondOwn as _, RespondResult as _,
                    RespondResultEncoded as _, RespondValue as _,
                };
                (&&&&&__sb::probe::of(&__sb_out)).sb_respond(__sb_out, __sb_local)
            },
        };
        quote! {
            #[allow(unused_variables, clippy::manual_async_fn, clippy::too_many_arguments)]
            fn __sb_run(#this_param #(#args: #types,)* __sb_local: bool) -> impl ::core::future::Future<Output = __sb::Reply> {
                async move {
                    let __sb_out = #call.await;
                    #respond
                }
            }

            #[allow(unused_mut, unused_variables, clippy::manual_async_fn, clippy::too_many_arguments)]
            fn __sb_later<S>(#this_param mut __sb_req: __sb::Request, __sb_state: S, #(#later_params)*) -> impl ::core::future::Future<Output = __sb::Reply> + use<S>
            where
                S: ::core::clone::Clone + ::core::marker::Send + ::core::marker::Sync + 'static,
                #bounds
            {
                async move {
                    #(#extract)*
                    if let ::core::result::Result::Err(e) = __sb::check_unread_payload(&__sb_req) {
                        return __sb::Reply::error(e);
                    }
                    let __sb_local = __sb_req.context().takes_local_reply();
                    __sb_run(#this_arg #(#args,)* __sb_local).await
                }
            }

            #[allow(unused_mut, unused_variables, unreachable_patterns)]
            fn __sb_serve<S>(#this_param __sb_req: &mut __sb::Request, __sb_state: &S) -> __sb::BoxFuture<'static, __sb::Reply>
            where
                S: ::core::clone::Clone + ::core::marker::Send + ::core::marker::Sync + 'static,
                #bounds
            {
                #[allow(unused_imports)]
                use __sb::probe::{Boxed as _, BoxedFallback as _};
                let mut __sb_taking = __sb::Taking::default();
                #(let #now = __sb_taking.now::<#types, S>(__sb_req, __sb_state);)*
                if let ::core::option::Option::Some(e) = __sb_taking.failed() {
                    return __sb::failed(e);
                }
                match (#(#now,)*) {
                    (#(::core::option::Option::Some(#args),)*) => {
                        if let ::core::result::Result::Err(e) = __sb::check_unread_payload(__sb_req) {
                            return __sb::failed(e);
                        }
                        let __sb_local = __sb_req.context().takes_local_reply();
                        // The rest of the message stays with the caller, which drops it.
                        let __sb_fut = __sb_run(#this_arg #(#args,)* __sb_local);
                        (&__sb::probe::of(&__sb_fut)).sb_boxed(__sb_fut)
                    }
                    (#(#now,)*) => {
                        let __sb_fut = __sb_later::<S>(#this_arg __sb::take_request(__sb_req), ::core::clone::Clone::clone(__sb_state), #(#now,)*);
                        (&__sb::probe::of(&__sb_fut)).sb_boxed(__sb_fut)
                    }
                }
            }
        }
    }

    /// Spanned checks, axum-style: each requirement is asserted once, at the user's token, so
    /// the compiler's message points at the user's code. The generated glue does not repeat
    /// the bounds (see `__private::probe`), so each mistake is reported once.
    pub fn checks(&self, callee: &TokenStream) -> TokenStream {
        let sig = &self.def.sig;
        let desc = self.desc;
        let mut out = TokenStream::new();

        // Each argument is the payload or an extractor …
        for (i, arg) in sig.args.iter().enumerate() {
            let ty = self.arg(i);
            out.extend(respan(quote!(__sb::assert_arg::<#ty>();), first_span(&arg.ty)));
        }
        // … and at most one is the payload: counted in order, each argument after the
        // payload refused at its own type.
        out.extend(quote! {
            #[allow(unused_imports)]
            use __sb::probe::{ArgKnown as _, ArgUnknown as _};
            let __sb_m = __sb::no_payload();
        });
        for (i, arg) in sig.args.iter().enumerate() {
            let ty = self.arg(i);
            let span = first_span(&arg.ty);
            // `__sb_m` keeps the generated name's hygiene; the rest carries the user's span.
            let amp = respan(quote!(&), span);
            let probe = respan(quote!(__sb::probe::count::<#ty, _, _>), span);
            let mut count = Group::new(Delimiter::Parenthesis, quote!(&__sb_m));
            count.set_span(span);
            let mut receiver = Group::new(Delimiter::Parenthesis, quote!(#amp #probe #count));
            receiver.set_span(span);
            let method = respan(quote!(.sb_arg()), span);
            out.extend(quote!(let __sb_m = #receiver #method;));
        }

        let ret = quote!(__sb::RetOf<#desc>);
        let reply_check = |ty: TokenStream, at: &dyn ToTokens| {
            let call = respan(quote!((&&&&__sb::probe::ty::<#ty>()).sb_check_reply();), first_span(at));
            quote! {
                {
                    #[allow(unused_imports)]
                    use __sb::probe::{CheckBadResult as _, CheckFallback as _, CheckOwn as _, CheckResult as _, CheckValue as _};
                    #call
                }
            }
        };
        let assert_reply =
            |ty: TokenStream, at: &dyn ToTokens| respan(quote!(__sb::assert_reply::<#ty>();), first_span(at));
        match &sig.ret {
            ReturnKind::Unit | ReturnKind::ImplOther(_) => {}
            ReturnKind::Value(ty) => out.extend(reply_check(ret, ty)),
            ReturnKind::Fallible { ty, ok, err } => {
                let ok_ty = quote!(<#ret as __sb::Fallible>::Ok);
                let err_ty = quote!(<#ret as __sb::Fallible>::Err);
                match ok {
                    Some(ok) => out.extend(reply_check(ok_ty, ok)),
                    None => out.extend(assert_reply(ok_ty, ty)),
                }
                match err {
                    Some(err) => out.extend(respan(quote!(__sb::assert_rpc_error::<#err_ty>();), first_span(err))),
                    None => out.extend(reply_check(ret, ty)),
                }
            }
            ReturnKind::ReplyStream { ty, item } => {
                let item_ty = quote!(<#ret as __sb::Streamed>::Item);
                match item {
                    Some(item) => out.extend(assert_reply(item_ty, item)),
                    None => out.extend(assert_reply(item_ty, ty)),
                }
            }
            ReturnKind::ImplStream { ty, item } => {
                if let Some(item) = item {
                    out.extend(assert_reply(ret, item));
                }
                out.extend(spanned_call(quote!(__sb::assert_stream), ty));
            }
        }

        let args: Vec<Ident> = sig.args.iter().map(|a| format_ident!("__sb_a{}", a.index)).collect();
        let arg_tys: Vec<TokenStream> = (0..sig.args.len()).map(|i| self.arg(i)).collect();
        let fut = quote_spanned!(sig.ident.span()=> &__sb_fut);
        let (this_param, call, assert) = match (self.self_ty, &sig.receiver) {
            (Some(self_ty), Some(_)) => {
                let method = &sig.ident;
                (
                    quote!(__sb_this: &#self_ty,),
                    quote!(__sb_this.#method(#(#args),*)),
                    quote!(__sb::assert_send_future(#fut);),
                )
            }
            _ => (
                quote!(),
                quote!(#callee(#(#args),*)),
                quote!(__sb::assert_handler_future(#fut);),
            ),
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
}

/// `static __SB_INFO: HandlerInfo`.
pub fn info_static(def: &HandlerDef, desc: &Type) -> TokenStream {
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
    let options = policy_options(&def.pattern.policy);
    let signature = match def.kind {
        PatternKind::Message => quote!(MessageSignature),
        PatternKind::Event => quote!(EventSignature),
    };
    quote! {
        static __SB_INFO: __sb::HandlerInfo = __sb::HandlerInfo::new(
            __sb::Kind::#kind, #route, #json, #name, ::core::module_path!(), ::core::file!(), #line,
        ).with_options(#options).with_signature(__sb_signature);
        fn __sb_signature() -> ::core::option::Option<&'static __sb::Signature> {
            #[allow(unused_imports)]
            use __sb::probe::{#signature as _, NoSignature as _};
            (&__sb::probe::ty::<#desc>()).sb_signature(#desc {})
        }
    }
}

/// The `PatternOptions` constant of what the attribute declares.
fn policy_options(p: &switchboard_codegen::attr::PolicyOptions) -> TokenStream {
    let mut o = quote!(__sb::PatternOptions::new());
    if let Some((ms, _)) = p.timeout {
        o.extend(quote!(.timeout(::core::time::Duration::from_millis(#ms))));
    }
    if let Some((n, _)) = p.concurrency {
        o.extend(quote!(.concurrency(#n)));
    }
    if let Some((n, per, _)) = p.rate {
        o.extend(quote!(.rate(#n, ::core::time::Duration::from_millis(#per))));
    }
    if p.concurrent.is_some() {
        o.extend(quote!(.concurrent()));
    }
    if let Some((key, _)) = &p.key {
        o.extend(quote!(.key(#key)));
    }
    if p.idempotent.is_some() {
        o.extend(quote!(.idempotent()));
        if let Some((n, _)) = p.retries {
            o.extend(quote!(.retries(#n)));
        }
    }
    o
}

/// `ty` with every `Self` type replaced by `self_ty` (a group's method may write `Self`,
/// which means the group there and would mean the descriptor in generated impls).
fn replace_self(ty: &Type, self_ty: &Type) -> Type {
    use syn::visit_mut::VisitMut;
    struct Replace<'a>(&'a Type);
    impl VisitMut for Replace<'_> {
        fn visit_type_mut(&mut self, ty: &mut Type) {
            if let Type::Path(p) = ty
                && p.qself.is_none()
                && p.path.is_ident("Self")
            {
                *ty = self.0.clone();
                return;
            }
            syn::visit_mut::visit_type_mut(self, ty);
        }
    }
    let mut ty = ty.clone();
    Replace(self_ty).visit_type_mut(&mut ty);
    ty
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
    let mut args = Group::new(Delimiter::Parenthesis, quote!(#amp #name));
    args.set_span(last);
    quote!(#path #args;)
}

/// Every token of `tokens` given `span`.
pub fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut t| {
            if let TokenTree::Group(g) = &t {
                let mut inner = Group::new(g.delimiter(), respan(g.stream(), span));
                inner.set_span(span);
                return TokenTree::Group(inner);
            }
            t.set_span(span);
            t
        })
        .collect()
}

fn first_span(at: &dyn ToTokens) -> Span {
    at.to_token_stream()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span())
}

/// `pattern!(...)`: a `PatternLit` constant expression.
pub fn pattern(input: TokenStream) -> TokenStream {
    let args = PatternArgs::parse(input).and_then(|args| check_pattern(&args).map(|()| args));
    let args = args.and_then(|args| match args.policy.first() {
        None => Ok(args),
        Some((name, at)) => Err(syn::Error::new(
            at,
            format!(
                "`{name}` is declared where the pattern is served or called: on the handler \
                 (`#[message_pattern(\"...\", {name} = ...)]`) or on the descriptor \
                 (`MessageDef::new(pattern!(...)).with_options(PatternOptions::new().{name}(...))`), not in `pattern!`"
            ),
        )),
    });
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
