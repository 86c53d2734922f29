//! Validation of patterns and handler signatures.
//!
//! Every rule that fails adds an error spanned at the token at fault; all of them are
//! returned at once, combined, so the user fixes everything in one round.

use std::collections::HashMap;

use switchboard_pattern::{MAX_DEPTH, MAX_DEPTH_MARKER, MAX_KEYS, TOO_MANY_KEYS_MARKER};
use syn::visit::Visit;
use syn::{Signature, Type};

use crate::Errors;
use crate::ast::{HandlerSig, PatternKind, ReturnKind};
use crate::attr::{PatValue, PatternArgs};

/// Checks what the parser cannot see piece by piece: duplicate keys, nesting deeper than
/// NestJS routes, too many keys, and top-level patterns NestJS does not route by text.
pub fn check_pattern(args: &PatternArgs) -> syn::Result<()> {
    let mut errors = Errors::default();
    match &args.value {
        PatValue::Bool(b, span) => errors.push(syn::Error::new(
            *span,
            format!(
                "`{b}` cannot be a pattern on its own: NestJS keys handlers by text, and a boolean \
                 is not one; use a string (`\"{b}\"`) or `{{ key = {b} }}`"
            ),
        )),
        PatValue::Null(span) => errors.push(syn::Error::new(
            *span,
            "`null` cannot be a pattern on its own: NestJS keys handlers by text, and `null` is not \
             one; use a string or `{ key = null }`",
        )),
        value => check_value(value, 0, &mut errors),
    }
    errors.finish()
}

/// `depth` is NestJS's recursion depth: 0 for the top-level object, +1 per nested object
/// or array (string values are written inline and do not recurse).
fn check_value(value: &PatValue, depth: usize, errors: &mut Errors) {
    let (span, len, what) = match value {
        PatValue::Object(o) => (o.span, o.entries.len(), "keys"),
        PatValue::Array(a) => (a.span, a.items.len(), "items"),
        _ => return,
    };
    if depth > MAX_DEPTH {
        errors.push(syn::Error::new(
            span,
            format!(
                "pattern nested too deep: this object is {} levels below the top, and NestJS routes \
                 anything deeper than {MAX_DEPTH} as `{MAX_DEPTH_MARKER}`, which no message matches; \
                 flatten the pattern",
                depth
            ),
        ));
        return;
    }
    match value {
        PatValue::Object(o) => {
            if len > MAX_KEYS {
                errors.push(syn::Error::new(o.entries[MAX_KEYS].key.span, too_many(len, what)));
            }
            let mut seen: HashMap<&str, ()> = HashMap::new();
            for entry in &o.entries {
                if seen.insert(&entry.key.name, ()).is_some() {
                    errors.push(syn::Error::new(
                        entry.key.span,
                        format!(
                            "duplicate key `{}`: a key may appear once in an object; remove this one",
                            entry.key.name
                        ),
                    ));
                }
                check_value(&entry.value, depth + 1, errors);
            }
        }
        PatValue::Array(a) => {
            if len > MAX_KEYS {
                errors.push(syn::Error::new(value_span(&a.items[MAX_KEYS]), too_many(len, what)));
            }
            for item in &a.items {
                check_value(item, depth + 1, errors);
            }
        }
        _ => {}
    }
}

fn too_many(len: usize, what: &str) -> String {
    format!(
        "too many {what}: this one has {len}, and NestJS routes anything with more than {MAX_KEYS} \
         as `{TOO_MANY_KEYS_MARKER}`, which no message matches; use at most {MAX_KEYS}"
    )
}

fn value_span(value: &PatValue) -> proc_macro2::Span {
    match value {
        PatValue::Str(s) => s.span(),
        PatValue::Num(n) => n
            .tokens
            .clone()
            .into_iter()
            .next()
            .map_or_else(proc_macro2::Span::call_site, |t| t.span()),
        PatValue::Bool(_, span) | PatValue::Null(span) => *span,
        PatValue::Object(o) => o.span,
        PatValue::Array(a) => a.span,
    }
}

/// Where a handler is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A free `async fn`.
    Free,
    /// A method in an `impl` block marked `#[handlers]`.
    Group,
}

/// Checks a handler function: an `async fn` without generics, `const`, `unsafe` or `extern`;
/// `&self` only in a group; arguments that own their data, each type taken once; a reply type
/// the descriptor can name.
pub fn check_signature(kind: PatternKind, sig: &Signature, handler: &HandlerSig, place: Place) -> syn::Result<()> {
    let attr = kind.attr_name();
    let mut errors = Errors::default();

    if let Some(c) = &sig.constness {
        errors.push(syn::Error::new(
            c.span,
            "a handler cannot be a `const fn`: remove `const`",
        ));
    }
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            format!("`#[{attr}]` handlers must be `async fn`: add `async` before `fn`"),
        ));
    }
    if let Some(u) = &sig.unsafety {
        errors.push(syn::Error::new(
            u.span,
            "a handler cannot be `unsafe`: the runtime calls it and cannot uphold a safety contract; \
             remove `unsafe` and use an `unsafe` block inside",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "a handler cannot be `extern`: remove the ABI",
        ));
    }
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "a handler cannot be generic: its payload and reply types must be concrete so that \
             they can be decoded and named by callers; remove the parameters and name the types",
        ));
    }
    if let Some(w) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(
            w,
            "a handler cannot have a `where` clause: remove it and name concrete types",
        ));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            v,
            "a handler cannot be variadic: take one payload argument",
        ));
    }

    if let Some(r) = &handler.receiver {
        match place {
            Place::Free => errors.push(syn::Error::new(
                r.self_token.span,
                "a handler that takes `self` is a method of a group of handlers: mark its `impl` block \
                 `#[handlers]` (the value then carries the handlers' dependencies, and is served with \
                 `.group(value)`), or make the handler a free function",
            )),
            Place::Group if r.reference.is_none() || r.colon_token.is_some() => errors.push(syn::Error::new_spanned(
                r,
                format!(
                    "a group's handler takes `&self`, not `{}`: the group is shared by every message, so \
                     its handlers borrow it; write `&self`",
                    quote::ToTokens::to_token_stream(r)
                        .to_string()
                        .replace(" :: ", "::")
                        .replace(" : ", ": ")
                        .replace(" <", "<")
                        .replace("< ", "<")
                        .replace(" >", ">")
                        .replace("& ", "&")
                ),
            )),
            Place::Group if r.mutability.is_some() => errors.push(syn::Error::new_spanned(
                r,
                "a group's handler takes `&self`, not `&mut self`: the group is shared by messages \
                 handled at the same time; keep what changes behind a `Mutex` or an atomic",
            )),
            Place::Group => {}
        }
    }

    let mut seen: Vec<String> = Vec::new();
    for arg in &handler.args {
        let typed = &sig.inputs[arg.index];
        let written = quote::ToTokens::to_token_stream(&arg.ty).to_string();
        if seen.contains(&written) {
            let ty = written.replace(' ', "");
            errors.push(syn::Error::new_spanned(
                typed,
                format!(
                    "`{ty}` is taken twice: a handler takes one payload, and each extractor once; to \
                     receive several values, wrap them in one tuple or struct: `(a, b): ({ty}, {ty})`"
                ),
            ));
        }
        seen.push(written);
        let found = find_in_type(&arg.ty);
        if let Some(imp) = found.impl_trait {
            errors.push(syn::Error::new_spanned(
                imp,
                "a handler's argument cannot be `impl Trait`: it is made from the message, so its type \
                 must be concrete; write the type itself (`String`, not `impl Into<String>`)",
            ));
        }
        if let Some(r) = found.reference {
            errors.push(syn::Error::new_spanned(
                r,
                "a handler's argument cannot be a reference: it is made from the message for this call, \
                 so it owns its data; remove the `&` (take `String`, not `&str`; `Context`, not `&Context`)",
            ));
        } else if let Some(lt) = found.lifetime {
            errors.push(syn::Error::new_spanned(
                lt,
                "a handler's argument cannot borrow: it is made from the message for this call, so it \
                 owns its data; use an owned type (or `'static`)",
            ));
        }
    }

    match &handler.ret {
        ReturnKind::ImplOther(ty) => errors.push(syn::Error::new_spanned(
            ty,
            "a handler cannot return `impl Trait` (other than `impl Stream<Item = T>`): its descriptor \
             names the reply type for callers; return the concrete type",
        )),
        ReturnKind::ImplStream { ty, item: None } => errors.push(syn::Error::new_spanned(
            ty,
            "name the stream's item type, as in `impl Stream<Item = u32>`: its descriptor names it for \
             callers, who decode each value as that type",
        )),
        ReturnKind::ImplStream { item: Some(item), .. } => check_nameable(item, &mut errors),
        ReturnKind::Value(ty) | ReturnKind::Fallible { ty, .. } | ReturnKind::ReplyStream { ty, .. } => {
            check_nameable(ty, &mut errors)
        }
        ReturnKind::Unit => {}
    }

    errors.finish()
}

/// A reply type must not contain `impl Trait`: the descriptor names it.
fn check_nameable(ty: &Type, errors: &mut Errors) {
    if let Some(imp) = find_in_type(ty).impl_trait {
        errors.push(syn::Error::new_spanned(
            imp,
            "a handler's reply type cannot contain `impl Trait`: its descriptor names the reply type \
             for callers; write the concrete type",
        ));
    }
}

#[derive(Default)]
struct Found<'a> {
    impl_trait: Option<&'a syn::TypeImplTrait>,
    reference: Option<&'a syn::TypeReference>,
    lifetime: Option<&'a syn::Lifetime>,
}

fn find_in_type(ty: &Type) -> Found<'_> {
    let mut found = Found::default();
    found.visit_type(ty);
    found
}

impl<'a> Visit<'a> for Found<'a> {
    fn visit_type_impl_trait(&mut self, i: &'a syn::TypeImplTrait) {
        self.impl_trait.get_or_insert(i);
    }
    fn visit_type_reference(&mut self, i: &'a syn::TypeReference) {
        self.reference.get_or_insert(i);
        syn::visit::visit_type_reference(self, i);
    }
    fn visit_lifetime(&mut self, i: &'a syn::Lifetime) {
        if i.ident != "static" {
            self.lifetime.get_or_insert(i);
        }
    }
    // Types inside a `fn(&str)` pointer are the callee's business, not a borrow of the payload.
    fn visit_type_bare_fn(&mut self, _: &'a syn::TypeBareFn) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn pattern_errors(tokens: proc_macro2::TokenStream) -> Vec<String> {
        let args = PatternArgs::parse(tokens).expect("parses");
        match check_pattern(&args) {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn sig_errors(tokens: proc_macro2::TokenStream) -> Vec<String> {
        let item: syn::ItemFn = syn::parse2(tokens).expect("a fn");
        let sig = HandlerSig::from_fn(&item);
        match check_signature(PatternKind::Message, &item.sig, &sig, Place::Free) {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn nested(levels: usize) -> proc_macro2::TokenStream {
        let mut inner = quote!(1);
        for _ in 0..levels {
            inner = quote!({ k = #inner });
        }
        quote!(#inner, crate = sb)
    }

    #[test]
    fn valid_patterns() {
        assert!(pattern_errors(quote!({ cmd = "x", nested = { a = 1 }, l = [1, 2] })).is_empty());
        assert!(pattern_errors(quote!("math.add")).is_empty());
    }

    #[test]
    fn duplicate_keys_name_the_second_key() {
        let errors = pattern_errors(quote!({ cmd = "a", role = "b", cmd = "c" }));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("duplicate key `cmd`"), "{errors:?}");
        assert_eq!(pattern_errors(quote!({ o = { a = 1, "a" = 2 } })).len(), 1);
    }

    #[test]
    fn depth_limit_matches_the_route_marker() {
        // The deepest pattern the checker accepts routes without the marker; one more level
        // is rejected, and indeed routes to the marker.
        let ok = nested(MAX_DEPTH + 1);
        assert!(pattern_errors(ok.clone()).is_empty());
        assert!(!PatternArgs::parse(ok).unwrap().route().contains(MAX_DEPTH_MARKER));

        let deep = nested(MAX_DEPTH + 2);
        let errors = pattern_errors(deep.clone());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("pattern nested too deep"), "{errors:?}");
        assert!(PatternArgs::parse(deep).unwrap().route().contains(MAX_DEPTH_MARKER));
    }

    #[test]
    fn key_limit_matches_the_route_marker() {
        let pairs = |n: usize| {
            let keys = (0..n).map(|i| quote::format_ident!("k{}", i));
            quote!({ #(#keys = 1),* })
        };
        assert!(pattern_errors(pairs(MAX_KEYS)).is_empty());
        let errors = pattern_errors(pairs(MAX_KEYS + 1));
        assert!(errors[0].starts_with("too many keys"), "{errors:?}");
        assert_eq!(
            PatternArgs::parse(pairs(MAX_KEYS + 1)).unwrap().route(),
            TOO_MANY_KEYS_MARKER
        );
        let items = (0..=MAX_KEYS).map(proc_macro2::Literal::usize_unsuffixed);
        assert!(pattern_errors(quote!({ l = [#(#items),*] }))[0].starts_with("too many items"));
    }

    #[test]
    fn top_level_booleans_and_null_are_rejected() {
        assert!(pattern_errors(quote!(true))[0].contains("cannot be a pattern on its own"));
        assert!(pattern_errors(quote!(null))[0].contains("cannot be a pattern on its own"));
    }

    #[test]
    fn valid_signatures() {
        assert!(
            sig_errors(quote!(
                async fn f() {}
            ))
            .is_empty()
        );
        assert!(
            sig_errors(quote!(
                pub async fn f(id: String, ctx: Context) -> Result<User, RpcError> {}
            ))
            .is_empty()
        );
        assert!(
            sig_errors(quote!(
                async fn f(ctx: Context, Wrapper(x): Wrapper) -> ReplyStream<u8> {}
            ))
            .is_empty()
        );
        assert!(
            sig_errors(quote!(
                async fn f(cb: Cow<'static, str>) -> impl Stream<Item = u8> {}
            ))
            .is_empty()
        );
    }

    #[test]
    fn every_signature_error_at_once() {
        let errors = sig_errors(quote!(
            unsafe extern "C" fn f<T>(
                &self,
                a: u32,
                b: u32,
                c: Context,
                d: Context,
                e: impl Send,
                r: &str,
            ) -> impl Serialize
            where
                T: Copy,
            {
            }
        ));
        let expected = [
            "must be `async fn`",
            "cannot be `unsafe`",
            "cannot be `extern`",
            "cannot be generic",
            "cannot have a `where` clause",
            "is a method of a group of handlers",
            "`u32` is taken twice",
            "`Context` is taken twice",
            "cannot be `impl Trait`",
            "cannot be a reference",
            "cannot return `impl Trait`",
        ];
        for want in expected {
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "missing {want:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    #[test]
    fn stream_item_must_be_named() {
        assert!(
            sig_errors(quote!(
                async fn f() -> impl Stream {}
            ))[0]
                .contains("name the stream's item type")
        );
        assert!(
            sig_errors(quote!(
                async fn f() -> Result<impl Serialize, E> {}
            ))[0]
                .contains("cannot contain `impl Trait`")
        );
    }

    #[test]
    fn borrowed_lifetimes_in_arguments() {
        assert!(
            sig_errors(quote!(
                async fn f(x: Cow<'_, str>) {}
            ))[0]
                .contains("cannot borrow")
        );
        assert!(
            sig_errors(quote!(
                async fn f(x: Cow<'static, str>) {}
            ))
            .is_empty()
        );
        assert_eq!(
            sig_errors(quote!(
                async fn f(x: &'static str) {}
            ))
            .len(),
            1
        );
    }

    #[test]
    fn context_by_reference() {
        assert!(
            sig_errors(quote!(
                async fn f(ctx: &Context) {}
            ))[0]
                .contains("`Context`, not `&Context`")
        );
    }
}
