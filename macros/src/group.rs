//! `#[handlers]` on an `impl` block: its `#[message_pattern]` and `#[event_pattern]` methods
//! become a [`Group`]: each gets a descriptor (an associated constant, `Users::GET_USER`), and
//! the type serves them all with `Microservice::group(value)`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use switchboard_codegen::{HandlerDef, PatternArgs, PatternKind};
use syn::{ImplItem, ItemImpl, Type};

use crate::expand::{Receiver, checks, const_name, descriptor_items, glue, info_static, serve_bounds};

pub fn handlers(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut block: ItemImpl = match syn::parse2(item.clone()) {
        Ok(block) => block,
        Err(_) => {
            let span = item.clone().into_iter().next().map_or_else(Span::call_site, |t| t.span());
            let err = syn::Error::new(span, "`#[handlers]` goes on an `impl` block of handler methods")
                .to_compile_error();
            return quote!(#item #err);
        }
    };
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    let krate: syn::Path = if attr.is_empty() {
        syn::parse_quote!(::switchboard)
    } else {
        match PatternArgs::parse(quote!("", #attr)) {
            Ok(args) => args.crate_path(),
            Err(e) => {
                push(e);
                syn::parse_quote!(::switchboard)
            }
        }
    };
    if let Some((_, path, _)) = &block.trait_ {
        push(syn::Error::new_spanned(
            path,
            "`#[handlers]` goes on an inherent `impl` block (`impl Users { ... }`), not a trait impl",
        ));
    }
    if !block.generics.params.is_empty() {
        push(syn::Error::new_spanned(
            &block.generics,
            "a group of handlers cannot be generic: name its types",
        ));
    }

    // Take the pattern attributes off the methods, parsing each.
    let mut defs = Vec::new();
    for item in &mut block.items {
        let ImplItem::Fn(method) = item else { continue };
        let Some(at) = method.attrs.iter().position(|a| PatternKind::of_attr(a).is_some()) else {
            continue;
        };
        let attr = method.attrs.remove(at);
        let kind = PatternKind::of_attr(&attr).expect("found above");
        let tokens = match &attr.meta {
            syn::Meta::List(list) => list.tokens.clone(),
            _ => TokenStream::new(),
        };
        match HandlerDef::parse_method(kind, tokens, method) {
            Ok(def) => defs.push(def),
            Err(e) => push(e),
        }
        method.attrs.push(syn::parse_quote!(#[allow(clippy::unused_async)]));
    }

    let self_ty = &block.self_ty;
    let expansion = if errors.is_none() {
        expand(&defs, self_ty, &krate)
    } else {
        TokenStream::new()
    };
    let errors = errors.map(|e| e.to_compile_error());
    quote! {
        #block
        #expansion
        #errors
    }
}

/// The last segment of the group's type, for generated names.
fn type_name(ty: &Type) -> String {
    match ty {
        Type::Path(p) => p.path.segments.last().map_or_else(String::new, |s| s.ident.to_string()),
        _ => String::new(),
    }
}

fn expand(defs: &[HandlerDef], self_ty: &Type, krate: &syn::Path) -> TokenStream {
    let mut items = TokenStream::new();
    let mut consts = TokenStream::new();
    let mut binds = Vec::new();
    let mut bounds = TokenStream::new();
    for def in defs {
        let sig = &def.sig;
        let ident = &sig.ident;
        let vis = &sig.vis;
        let konst = const_name(ident);
        let module = format_ident!("__sb_{}_{}", type_name(self_ty), ident);
        let desc: Type = syn::parse_quote!(#module::#ident);
        let info = info_static(def);
        let descriptor = descriptor_items(def, krate, &desc);
        let receiver = match &sig.receiver {
            Some(_) => Receiver::Method,
            None => Receiver::None,
        };
        let callee = match &sig.receiver {
            Some(_) => quote!(#self_ty),
            None => quote!(<#self_ty>::#ident),
        };
        let body = glue(def, &callee, receiver);
        let fn_bounds = serve_bounds(sig);
        bounds.extend(fn_bounds.clone());
        let check = match &sig.receiver {
            Some(_) => checks(def, &quote!(#self_ty), Some(self_ty)),
            None => checks(def, &callee, None),
        };
        let doc = format!(
            "The descriptor of [`{ident}`](Self::{ident}): call it with `Client::{}`.",
            if def.kind == PatternKind::Message { "send" } else { "emit" }
        );
        items.extend(quote! {
            #[doc(hidden)]
            #[allow(non_snake_case)]
            pub mod #module {
                #[allow(non_camel_case_types)]
                #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug)]
                pub struct #ident {}
            }
            const _: () = {
                use #krate::__private as __sb;
                #info
                impl __sb::Handler for #desc {
                    fn info(&self) -> &'static __sb::HandlerInfo {
                        &__SB_INFO
                    }
                }
                #descriptor
                impl #module::#ident {
                    #[doc(hidden)]
                    pub fn __sb_bind<__SbS>(__sb_this: __sb::Arc<#self_ty>, __sb_state: &__SbS) -> (&'static __sb::HandlerInfo, __sb::Route)
                    where
                        __SbS: ::core::clone::Clone + ::core::marker::Send + ::core::marker::Sync + 'static,
                        #fn_bounds
                    {
                        let __sb_state = __sb_state.clone();
                        let __sb_route = __sb::Route::from_fn(move |mut __sb_req: __sb::Request| {
                            let __sb_this = __sb_this.clone();
                            let __sb_state = __sb_state.clone();
                            #body
                        });
                        (&__SB_INFO, __sb_route)
                    }
                }
                #check
            };
        });
        consts.extend(quote! {
            #[doc = #doc]
            #vis const #konst: #module::#ident = #module::#ident {};
        });
        binds.push(quote!(#module::#ident::__sb_bind(__sb_this.clone(), __sb_state)));
    }
    quote! {
        impl #self_ty {
            #consts
        }
        #items
        const _: () = {
            use #krate::__private as __sb;
            impl<__SbS> __sb::Group<__SbS> for #self_ty
            where
                __SbS: ::core::clone::Clone + ::core::marker::Send + ::core::marker::Sync + 'static,
                #bounds
            {
                fn bind(__sb_this: __sb::Arc<Self>, __sb_state: &__SbS) -> ::std::vec::Vec<(&'static __sb::HandlerInfo, __sb::Route)> {
                    ::std::vec![#(#binds),*]
                }
            }
        };
    }
}
