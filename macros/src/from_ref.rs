//! `#[derive(FromRef)]`: `impl FromRef<State> for Field` for each field of a state struct, so
//! that handlers take `State<Field>`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields};

pub fn derive(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(e) => return e.to_compile_error(),
    };
    let name = &input.ident;
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(f) => f.named.iter().collect::<Vec<_>>(),
            Fields::Unnamed(f) => f.unnamed.iter().collect(),
            Fields::Unit => Vec::new(),
        },
        Data::Enum(e) => {
            let kw = e.enum_token;
            return syn::Error::new_spanned(
                quote!(#kw #name),
                format!(
                    "`#[derive(FromRef)]` goes on a state struct, whose fields are the parts a handler takes as \
                     `State<Part>`; `{name}` is an enum: implement `FromRef<{name}> for Part` by hand for each part"
                ),
            )
            .to_compile_error();
        }
        Data::Union(u) => {
            let kw = u.union_token;
            return syn::Error::new_spanned(
                quote!(#kw #name),
                "`#[derive(FromRef)]` goes on a state struct, whose fields are the parts a handler takes as `State<Part>`",
            )
            .to_compile_error();
        }
    };
    if !input.generics.params.is_empty() {
        return syn::Error::new_spanned(
            &input.generics,
            format!(
                "`#[derive(FromRef)]` needs a state type without generics (a service's state is one concrete \
                 type); implement `FromRef<{name}<..>> for Part` by hand for each part"
            ),
        )
        .to_compile_error();
    }
    let mut errors = TokenStream::new();
    let impls = fields.iter().enumerate().filter_map(|(i, field)| {
        let mut skip = false;
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("from_ref")) {
            match attr.parse_args::<syn::Ident>() {
                Ok(word) if word == "skip" => skip = true,
                _ => errors.extend(
                    syn::Error::new_spanned(attr, "the only `from_ref` option is `#[from_ref(skip)]`")
                        .to_compile_error(),
                ),
            }
        }
        if skip {
            return None;
        }
        let ty = &field.ty;
        let access = match &field.ident {
            Some(ident) => quote!(#ident),
            None => {
                let index = syn::Index::from(i);
                quote!(#index)
            }
        };
        Some(quote! {
            impl ::switchboard::FromRef<#name> for #ty {
                fn from_ref(state: &#name) -> Self {
                    ::core::clone::Clone::clone(&state.#access)
                }
            }
        })
    });
    let impls: Vec<_> = impls.collect();
    quote!(#(#impls)* #errors)
}
