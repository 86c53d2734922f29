//! `#[aggregate]`: computes `Aggregate::SCHEMA` from the code of the `impl Aggregate` block, so
//! a snapshot written before `apply` (or anything else in the block) changed is not trusted.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{ToTokens, quote};
use syn::visit_mut::VisitMut;
use syn::{ImplItem, ItemImpl, parse_quote};

/// Put on `impl Aggregate for T { … }` (without `const SCHEMA`): adds
/// `const SCHEMA: u64`, a hash of the block's code (doc comments left out). Snapshots taken by
/// a build whose block differed are then ignored, or given to `upcast_snapshot`.
#[proc_macro_attribute]
pub fn aggregate(args: TokenStream, input: TokenStream) -> TokenStream {
    let args = Tokens::from(args);
    let input = Tokens::from(input);
    match expand(args, input.clone()) {
        Ok(tokens) => tokens.into(),
        // The user's code is still emitted, so one mistake is one error.
        Err(errors) => quote!(#input #errors).into(),
    }
}

fn expand(args: Tokens, input: Tokens) -> Result<Tokens, Tokens> {
    let mut errors = Vec::new();
    if !args.is_empty() {
        errors.push(syn::Error::new_spanned(&args, "`#[aggregate]` takes no arguments"));
    }
    let mut item: ItemImpl = match syn::parse2(input) {
        Ok(item) => item,
        Err(e) => {
            let span = e.span();
            return Err(syn::Error::new(
                span,
                "`#[aggregate]` goes on an `impl Aggregate for YourType { … }` block",
            )
            .to_compile_error());
        }
    };
    if item.trait_.is_none() {
        errors.push(syn::Error::new_spanned(
            &item.self_ty,
            "`#[aggregate]` goes on the `impl Aggregate for …` block, not on an inherent `impl`",
        ));
    }
    for it in &item.items {
        if let ImplItem::Const(c) = it
            && c.ident == "SCHEMA"
        {
            errors.push(syn::Error::new_spanned(
                &c.ident,
                "`#[aggregate]` computes `SCHEMA` from this block: remove this constant, or remove `#[aggregate]` to set it by hand",
            ));
        }
    }
    if let Some(first) = errors.into_iter().reduce(|mut a, b| {
        a.combine(b);
        a
    }) {
        return Err(first.to_compile_error());
    }
    let hash = hash_of(&item);
    item.items.push(parse_quote! {
        const SCHEMA: u64 = #hash;
    });
    Ok(item.into_token_stream())
}

/// FNV-1a of the block's tokens, doc comments removed (rewording one is not a change).
fn hash_of(item: &ItemImpl) -> u64 {
    struct NoDocs;
    impl VisitMut for NoDocs {
        fn visit_attributes_mut(&mut self, attrs: &mut Vec<syn::Attribute>) {
            attrs.retain(|a| !a.path().is_ident("doc"));
            for a in attrs {
                self.visit_attribute_mut(a);
            }
        }
    }
    let mut copy = item.clone();
    NoDocs.visit_item_impl_mut(&mut copy);
    let text = copy.into_token_stream().to_string();
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
