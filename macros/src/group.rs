//! `#[handlers]` on an `impl` block: its `#[message_pattern]` and `#[event_pattern]` methods
//! become a [`Group`]: each gets a descriptor (an associated constant, `Users::GET_USER`), and
//! the type serves them all with `Microservice::group(value)`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use switchboard_codegen::{HandlerDef, PatternKind, Place};
use syn::ext::IdentExt;
use syn::{Ident, ImplItem, ItemImpl, Type};

use crate::expand::{Target, const_name, fallback_def, info_static, inner_vis, made_at, respan, wrong_item};

pub fn handlers(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut block: ItemImpl = match syn::parse2(item.clone()) {
        Ok(block) => block,
        Err(_) => {
            let advice = match syn::parse2::<syn::Item>(item.clone()) {
                Ok(syn::Item::Fn(_)) => "mark the function itself `#[message_pattern(...)]` or `#[event_pattern(...)]`",
                _ => "put it on the `impl` block that holds the handler methods (`#[handlers] impl Users { ... }`)",
            };
            let err = wrong_item("#[handlers]", "an `impl` block of handler methods", advice, &item);
            let err = err.to_compile_error();
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
        match syn::parse2::<CrateOption>(attr.clone()) {
            Ok(CrateOption(path)) => path,
            Err(_) => {
                push(syn::Error::new_spanned(
                    attr,
                    "`#[handlers]` takes one option, `crate = <path>` (the path to the `switchboard` crate); \
                     patterns go on the methods: `#[message_pattern(...)]`",
                ));
                syn::parse_quote!(::switchboard)
            }
        }
    };
    let mut block_ok = true;
    if let Some((_, path, _)) = &block.trait_ {
        block_ok = false;
        push(syn::Error::new_spanned(
            path,
            "`#[handlers]` goes on an inherent `impl` block (`impl Users { ... }`), not on a trait impl: \
             move the handler methods into `impl Users { ... }`",
        ));
    }
    if !block.generics.params.is_empty() {
        block_ok = false;
        push(syn::Error::new_spanned(
            &block.generics,
            "a group of handlers cannot be generic: its handlers' payload and reply types must be \
             concrete; write the `impl` block for a concrete type (`impl Repo<Postgres> { ... }`)",
        ));
    }

    // Take the pattern attributes off the methods, parsing each. A method whose pattern is
    // wrong but whose signature is right still gets its descriptor (with an empty pattern),
    // so that the code using it reports nothing more.
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
        match HandlerDef::parse_method(kind, tokens.clone(), method) {
            Ok(def) => defs.push(def),
            Err(e) => {
                push(e);
                defs.extend(fallback_def(kind, tokens, &method.sig, &method.vis, Place::Group));
            }
        }
        method.attrs.push(syn::parse_quote!(#[allow(clippy::unused_async)]));
    }

    let self_ty = &block.self_ty;
    let expansion = if block_ok {
        expand(&defs, self_ty, &krate, block.impl_token.span)
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

/// `crate = <path>`, the only option of `#[handlers]`.
struct CrateOption(syn::Path);

impl syn::parse::Parse for CrateOption {
    fn parse(input: syn::parse::ParseStream) -> syn::Result<Self> {
        input.parse::<syn::Token![crate]>()?;
        input.parse::<syn::Token![=]>()?;
        let path = syn::Path::parse_mod_style(input)?;
        input.parse::<Option<syn::Token![,]>>()?;
        Ok(CrateOption(path))
    }
}

/// The last segment of the group's type, for generated names.
fn type_name(ty: &Type) -> String {
    match ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .map_or_else(String::new, |s| s.ident.unraw().to_string()),
        _ => String::new(),
    }
}

fn expand(defs: &[HandlerDef], self_ty: &Type, krate: &syn::Path, impl_span: Span) -> TokenStream {
    let mut items = TokenStream::new();
    let mut consts = TokenStream::new();
    let mut binds = Vec::new();
    let mut bounds = TokenStream::new();
    for def in defs {
        let sig = &def.sig;
        let ident = &sig.ident;
        let at = made_at(ident);
        let vis = respan(quote::ToTokens::to_token_stream(&sig.vis), at);
        let konst = Ident::new(&const_name(ident).to_string(), at);
        let module = Ident::new(&format!("__sb_{}_{}", type_name(self_ty), ident.unraw()), at);
        let desc: Type = syn::parse_quote!(#module::#ident);
        let ty_vis = respan(inner_vis(&sig.vis), at);
        let target = Target {
            def,
            desc: &desc,
            impl_span,
            self_ty: Some(self_ty),
        };
        let info = info_static(def, &desc);
        let sig_impl = target.sig_impl();
        let descriptor = target.descriptor_items();
        let fn_bounds = target.serve_bounds();
        let callee = quote!(<#self_ty>::#ident);
        let serve_fn = target.serve_fn(&callee);
        let check = target.checks(&callee);
        bounds.extend(fn_bounds.clone());
        let doc = format!(
            "The descriptor of [`{ident}`](Self::{ident}): call it with `Client::{}`.",
            if def.kind == PatternKind::Message {
                "send"
            } else {
                "emit"
            }
        );
        // At the method's name, as a free function's descriptor is at the function's.
        let type_item = respan(
            quote! {
                #[doc(hidden)]
                #[allow(non_snake_case)]
                pub mod #module {
                    #[allow(non_camel_case_types)]
                    #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug)]
                    #ty_vis struct #ident {}
                }
            },
            at,
        );
        items.extend(quote! {
            #type_item
            const _: () = {
                use #krate::__private as __sb;
                #sig_impl
                #info
                impl __sb::Handler for #desc {
                    fn info(&self) -> &'static __sb::HandlerInfo {
                        &__SB_INFO
                    }
                }
                #descriptor
                #serve_fn
                impl #desc {
                    #[doc(hidden)]
                    pub fn __sb_bind<S>(__sb_this: __sb::Arc<#self_ty>, __sb_state: &S) -> (&'static __sb::HandlerInfo, __sb::Route)
                    where
                        S: ::core::clone::Clone + ::core::marker::Send + ::core::marker::Sync + 'static,
                        #fn_bounds
                    {
                        let __sb_state = __sb_state.clone();
                        let __sb_route = __sb::serving(move |__sb_req: &mut __sb::Request| {
                            __sb_serve::<S>(__sb_this.clone(), __sb_req, &__sb_state)
                        });
                        (&__SB_INFO, __sb_route)
                    }
                }
                #check
            };
        });
        let konst_item = respan(
            quote! {
                #[doc = #doc]
                #vis const #konst: #desc = #desc {};
            },
            at,
        );
        consts.extend(konst_item);
        binds.push(quote!(#desc::__sb_bind(__sb_this.clone(), __sb_state)));
    }
    quote! {
        impl #self_ty {
            #consts
        }
        #items
        const _: () = {
            use #krate::__private as __sb;
            impl<S> __sb::Group<S> for #self_ty
            where
                S: ::core::clone::Clone + ::core::marker::Send + ::core::marker::Sync + 'static,
                #bounds
            {
                fn bind(__sb_this: __sb::Arc<Self>, __sb_state: &S) -> ::std::vec::Vec<(&'static __sb::HandlerInfo, __sb::Route)> {
                    ::std::vec![#(#binds),*]
                }
            }
        };
    }
}
