//! Parsing and validation of Switchboard handlers, on `syn` types.
//!
//! This is the one implementation of what `#[message_pattern]` and `#[event_pattern]` mean:
//! the proc-macro crate (`switchboard-macros`) calls it at expansion time, and build-time
//! client generation calls it on a service's source files. It is a plain library so that
//! every rule is unit-tested without a compiler in the loop.
//!
//! - [`attr`]: the attribute's arguments, a pattern and options → [`PatternArgs`].
//! - [`ast`]: a handler `fn` → [`HandlerSig`] (receiver, arguments, return kind).
//! - [`check`]: the rules, every violation spanned at the token at fault, all reported at once.
//!
//! ```
//! use switchboard_codegen::{HandlerDef, PatternKind};
//!
//! let item: syn::ItemFn = syn::parse_quote! {
//!     async fn get_user(id: String) -> Result<User, RpcError> { Err(RpcError::new(id)) }
//! };
//! let attr = quote::quote!({ cmd = "get_user" });
//! let def = HandlerDef::parse(PatternKind::Message, attr, &item).unwrap();
//! assert_eq!(def.pattern.route(), r#"{"cmd":"get_user"}"#);
//! assert_eq!(def.sig.args.len(), 1);
//! ```

#![warn(missing_docs)]

pub mod ast;
pub mod attr;
pub mod check;
#[cfg(feature = "build")]
pub mod client;
#[cfg(feature = "proto")]
pub mod proto;

pub use ast::{HandlerArg, HandlerSig, PatternKind, ReturnKind};
pub use attr::{PatValue, PatternArgs};
pub use check::{Place, check_pattern, check_signature};

use proc_macro2::TokenStream;

/// A handler: its kind, its pattern and its signature, all validated.
#[derive(Debug, Clone)]
pub struct HandlerDef {
    /// Message or event.
    pub kind: PatternKind,
    /// The pattern and options.
    pub pattern: PatternArgs,
    /// The signature.
    pub sig: HandlerSig,
}

impl HandlerDef {
    /// Parses and checks a free handler function from its attribute's arguments and its
    /// function. Pattern and signature errors come back together.
    pub fn parse(kind: PatternKind, attr: TokenStream, item: &syn::ItemFn) -> syn::Result<HandlerDef> {
        Self::parse_in(kind, attr, &item.sig, &item.vis, Place::Free)
    }

    /// Parses and checks a handler method of a `#[handlers]` group.
    pub fn parse_method(kind: PatternKind, attr: TokenStream, item: &syn::ImplItemFn) -> syn::Result<HandlerDef> {
        Self::parse_in(kind, attr, &item.sig, &item.vis, Place::Group)
    }

    /// The pattern alone, when it parses and checks; for emitting a best-effort descriptor
    /// next to signature errors.
    pub fn pattern_only(attr: TokenStream) -> Option<PatternArgs> {
        PatternArgs::parse(attr).ok().filter(|p| check_pattern(p).is_ok())
    }

    fn parse_in(
        kind: PatternKind,
        attr: TokenStream,
        signature: &syn::Signature,
        vis: &syn::Visibility,
        place: Place,
    ) -> syn::Result<HandlerDef> {
        let mut errors = Errors::default();
        let pattern = if attr.is_empty() {
            // Said here rather than by the parser, to name the attribute in the example.
            let name = kind.attr_name();
            errors.push(syn::Error::new(
                proc_macro2::Span::call_site(),
                format!(
                    "missing pattern: write `#[{name}(\"name\")]` for a string pattern or \
                     `#[{name}({{ cmd = \"name\" }})]` for an object pattern"
                ),
            ));
            None
        } else {
            match PatternArgs::parse(attr) {
                Ok(p) => {
                    errors.result(check_pattern(&p));
                    errors.result(check_policy(kind, &p.policy));
                    Some(p)
                }
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        };
        let sig = HandlerSig::from_signature(signature, vis);
        errors.result(check_signature(kind, signature, &sig, place));
        errors.finish()?;
        Ok(HandlerDef {
            kind,
            pattern: pattern.expect("no errors means the pattern parsed"),
            sig,
        })
    }

    /// The handler marked on a function by `#[message_pattern(...)]` or
    /// `#[event_pattern(...)]` (matched by the attribute's last path segment), for tools that
    /// read source files; `None` when the function has neither.
    pub fn from_marked_fn(item: &syn::ItemFn) -> Option<syn::Result<HandlerDef>> {
        let attr = item.attrs.iter().find(|a| PatternKind::of_attr(a).is_some())?;
        let kind = PatternKind::of_attr(attr)?;
        Some(match &attr.meta {
            syn::Meta::List(list) => HandlerDef::parse(kind, list.tokens.clone(), item),
            other => Err(syn::Error::new_spanned(
                other,
                format!(
                    "`#[{}]` needs a pattern: `#[{}(\"name\")]`",
                    kind.attr_name(),
                    kind.attr_name()
                ),
            )),
        })
    }
}

/// The policy options that do not fit the handler: `retries` without `idempotent`, the
/// caller-side options on an event (which has no reply to retry), event ordering on a request
/// handler, and `concurrent` with `key`.
fn check_policy(kind: PatternKind, policy: &attr::PolicyOptions) -> syn::Result<()> {
    let mut errors = Errors::default();
    if kind == PatternKind::Event {
        for (name, at) in [
            ("idempotent", policy.idempotent),
            ("retries", policy.retries.map(|(_, s)| s)),
        ] {
            if let Some(at) = at {
                errors.push(syn::Error::new(
                    at,
                    format!(
                        "`{name}` is for a `#[message_pattern]`, whose callers wait for a reply and may retry \
                         it; an event's sender does not (a broker's redelivery covers a failed listener)"
                    ),
                ));
            }
        }
        if let (Some(_), Some((_, at))) = (policy.concurrent, &policy.key) {
            errors.push(syn::Error::new(
                *at,
                "`concurrent` and `key` disagree: `concurrent` handles every event at once, `key = \"...\"` \
                 keeps the order of events with the same key; give one",
            ));
        }
    } else if let Some((name, at)) = [
        policy.concurrent.map(|s| ("concurrent", s)),
        policy.key.as_ref().map(|(_, s)| ("key", *s)),
    ]
    .into_iter()
    .flatten()
    .next()
    {
        errors.push(syn::Error::new(
            at,
            format!(
                "`{name}` orders an `#[event_pattern]`'s events; a `#[message_pattern]`'s requests already run \
                 concurrently, each started as it arrives"
            ),
        ));
    }
    if kind != PatternKind::Event
        && let (Some((_, at)), None) = (policy.retries, policy.idempotent)
    {
        errors.push(syn::Error::new(
            at,
            "`retries` repeats a call, which is only safe when a repeat does no harm: mark the handler \
             `idempotent` (`#[message_pattern(\"...\", idempotent, retries = 2)]`) if it is, or drop `retries`",
        ));
    }
    errors.finish()
}

/// Collects errors into one [`syn::Error`].
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn result(&mut self, result: syn::Result<()>) {
        if let Err(e) = result {
            self.push(e);
        }
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn pattern_and_signature_errors_come_together() {
        let item: syn::ItemFn = syn::parse_quote!(
            fn f(a: u32, b: u32) {}
        );
        let err = HandlerDef::parse(PatternKind::Message, quote!({ cmd = "a", cmd = "b" }), &item).unwrap_err();
        let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:#?}");
    }

    #[test]
    fn syntax_errors_and_signature_errors_come_together() {
        let item: syn::ItemFn = syn::parse_quote!(
            fn f() {}
        );
        let err = HandlerDef::parse(PatternKind::Event, quote!(), &item).unwrap_err();
        assert_eq!(err.into_iter().count(), 2);
    }

    #[test]
    fn marked_functions_in_source() {
        let file: syn::File = syn::parse_quote! {
            #[switchboard::message_pattern({ cmd = "add" })]
            pub async fn add(p: (i64, i64)) -> i64 { p.0 + p.1 }

            #[event_pattern("user_created")]
            async fn welcome(user: User, ctx: Context) {}

            async fn helper() {}
        };
        let defs: Vec<HandlerDef> = file
            .items
            .iter()
            .filter_map(|i| match i {
                syn::Item::Fn(f) => HandlerDef::from_marked_fn(f),
                _ => None,
            })
            .collect::<syn::Result<_>>()
            .unwrap();
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[0].kind, PatternKind::Message);
        assert_eq!(defs[0].pattern.route(), r#"{"cmd":"add"}"#);
        assert_eq!(defs[1].kind, PatternKind::Event);
        assert_eq!(defs[1].pattern.route(), "user_created");
        assert_eq!(defs[1].sig.name(), "welcome");
    }
}
