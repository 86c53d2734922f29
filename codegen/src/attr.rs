//! Parsing of a pattern attribute's arguments: the pattern, then options.
//!
//! ```text
//! "math.add"                          string pattern
//! 42 | -1.5                           number pattern
//! { cmd = "get", v = 2 }              object pattern (as NestJS's `{ cmd: 'get', v: 2 }`)
//! { cmd = "get" }, crate = path       options, each `name = value`, after the pattern
//! ```
//!
//! The pattern is always one value and comes first, and every option is a `name = value`
//! (or, for a flag, a bare `name`) after it, so that options can be added without ever being
//! read as a pattern's keys. Options: `crate = <path>` (where the `switchboard` crate is),
//! and the pattern's policy (see [`PolicyOptions`]): `timeout = "2s"`, `concurrency = 32`,
//! `rate = "200/s"`, `idempotent`, `retries = 2`; for events, `concurrent` or `key = "field"`.
//!
//! Values are literals only (strings, numbers, `true`, `false`, `null`), nested objects
//! `{ k = v, ... }` and arrays `[v, ...]`: the route is computed at compile time, so nothing
//! that needs evaluating can appear. Keys are identifiers or string literals.
//!
//! The input is split at top-level commas and every piece is parsed on its own, so one
//! mistake does not hide the next: all syntax errors come back combined in one [`syn::Error`].
//! Rules that need the whole pattern (duplicate keys, depth, key count) are checked by
//! [`crate::check::check_pattern`].

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use quote::ToTokens;
use switchboard_pattern::Pattern;
use switchboard_pattern::units::{parse_duration_ms, parse_rate};
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::{Lit, LitStr, Path};

use crate::Errors;

/// What a pattern value may be, said in every message about a value that is not one.
const VALUE_FORMS: &str = "a string, a number, `true`, `false`, `null`, an object `{ key = value, ... }` \
     or an array `[value, ...]`";

/// The options a pattern attribute takes, after its pattern.
pub const OPTIONS: &[&str] = &[
    "crate",
    "timeout",
    "concurrency",
    "rate",
    "idempotent",
    "retries",
    "concurrent",
    "key",
];

/// The options, as listed in messages.
const OPTION_LIST: &str = "`crate = <path>`, `timeout = \"2s\"`, `concurrency = 32`, `rate = \"200/s\"`, \
     `idempotent`, `retries = 2`, `concurrent`, `key = \"field\"`";

/// The policy options of a pattern attribute, each with where it was written.
#[derive(Debug, Clone, Default)]
pub struct PolicyOptions {
    /// `timeout = "2s"`: milliseconds.
    pub timeout: Option<(u64, Span)>,
    /// `concurrency = 32`.
    pub concurrency: Option<(u32, Span)>,
    /// `rate = "200/s"`: calls, and the period in milliseconds.
    pub rate: Option<(u32, u64, Span)>,
    /// `idempotent`.
    pub idempotent: Option<Span>,
    /// `retries = 2`.
    pub retries: Option<(u32, Span)>,
    /// `concurrent`: an event pattern's events all at once.
    pub concurrent: Option<Span>,
    /// `key = "orderId"`: an event pattern's events in order per value of this field.
    pub key: Option<(String, Span)>,
}

impl PolicyOptions {
    /// True when none is given.
    pub fn is_empty(&self) -> bool {
        self.timeout.is_none()
            && self.concurrency.is_none()
            && self.rate.is_none()
            && self.idempotent.is_none()
            && self.retries.is_none()
            && self.concurrent.is_none()
            && self.key.is_none()
    }

    /// An option given (the first in a fixed order), by name and place, for messages about
    /// where options may go.
    pub fn first(&self) -> Option<(&'static str, Span)> {
        [
            self.timeout.map(|(_, s)| ("timeout", s)),
            self.concurrency.map(|(_, s)| ("concurrency", s)),
            self.rate.map(|(_, _, s)| ("rate", s)),
            self.idempotent.map(|s| ("idempotent", s)),
            self.retries.map(|(_, s)| ("retries", s)),
            self.concurrent.map(|s| ("concurrent", s)),
            self.key.as_ref().map(|(_, s)| ("key", *s)),
        ]
        .into_iter()
        .flatten()
        .next()
    }
}

/// The arguments of `#[message_pattern(...)]`, `#[event_pattern(...)]` or `pattern!(...)`.
#[derive(Debug, Clone)]
pub struct PatternArgs {
    /// The pattern as written.
    pub value: PatValue,
    /// `crate = <path>`: where the `switchboard` crate is, when it is not `::switchboard`.
    pub crate_path: Option<Path>,
    /// The pattern's policy.
    pub policy: PolicyOptions,
}

/// A pattern value as written, with spans for error messages.
#[derive(Debug, Clone)]
pub enum PatValue {
    /// `"text"`
    Str(LitStr),
    /// `42`, `-1.5`, `1e21`.
    Num(PatNum),
    /// `true` / `false`
    Bool(bool, Span),
    /// `null`
    Null(Span),
    /// `{ k = v, ... }`, or the bare `k = v, ...` list of an attribute.
    Object(PatObject),
    /// `[v, ...]`
    Array(PatArray),
}

/// A number value.
#[derive(Debug, Clone)]
pub struct PatNum {
    /// Its value as a JavaScript number.
    pub value: f64,
    /// The tokens as written (a `-` and a literal, or a literal).
    pub tokens: TokenStream,
}

/// An object value.
#[derive(Debug, Clone)]
pub struct PatObject {
    /// The span of the braces, or of the first key for the bare attribute form.
    pub span: Span,
    /// Entries in written order.
    pub entries: Vec<PatEntry>,
}

/// One `key = value` entry.
#[derive(Debug, Clone)]
pub struct PatEntry {
    /// The key.
    pub key: PatKey,
    /// The value.
    pub value: PatValue,
}

/// An object key: an identifier (`cmd`, `r#type`) or a string literal (`"Zeta-1"`).
#[derive(Debug, Clone)]
pub struct PatKey {
    /// The key as it appears in the pattern (raw identifiers lose their `r#`).
    pub name: String,
    /// Where it was written.
    pub span: Span,
}

/// An array value.
#[derive(Debug, Clone)]
pub struct PatArray {
    /// The span of the brackets.
    pub span: Span,
    /// Items in order.
    pub items: Vec<PatValue>,
}

impl PatternArgs {
    /// Parses the tokens inside the attribute's parentheses (or `pattern!`'s).
    ///
    /// Reports every syntax error it finds, combined. Duplicate keys, nesting depth and key
    /// counts are not checked here; see [`crate::check::check_pattern`].
    pub fn parse(tokens: TokenStream) -> syn::Result<PatternArgs> {
        let mut errors = Errors::default();
        let segments = split_commas(tokens, &mut errors);
        let Some(first) = segments.first() else {
            errors.push(syn::Error::new(
                Span::call_site(),
                "missing pattern: give a string (`\"math.add\"`), a number, or an object in braces \
                 (`{ cmd = \"get_user\" }`)",
            ));
            return Err(errors.finish().unwrap_err());
        };

        let (value, options) = match split_entry(first) {
            None if is_flag(first) => {
                errors.push(syn::Error::new_spanned(
                    tokens_of(first),
                    format!(
                        "missing pattern before `{}`: the pattern comes first and options follow it, \
                         as in `(\"math.add\", {})`",
                        tokens_of(first),
                        tokens_of(first)
                    ),
                ));
                (None, &segments[..])
            }
            Some((key, _)) if is_option(key) => {
                errors.push(syn::Error::new(
                    key.span(),
                    format!(
                        "missing pattern before `{key} = ...`: the pattern comes first and options \
                         follow it, as in `(\"math.add\", {key} = ...)` or `({{ cmd = \"get_user\" }}, {key} = ...)`"
                    ),
                ));
                (None, &segments[..])
            }
            Some(_) => {
                // `cmd = "x", role = "y"`: NestJS's `{ cmd: 'x', role: 'y' }` without its braces.
                let entries: Vec<&Vec<TokenTree>> = segments
                    .iter()
                    .take_while(|seg| split_entry(seg).is_some_and(|(k, _)| !is_option(k)))
                    .collect();
                let keys: TokenStream = entries.iter().flat_map(|seg| seg.iter().cloned()).collect();
                let written = entries
                    .iter()
                    .map(|seg| tokens_of(seg).to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                errors.push(syn::Error::new_spanned(
                    keys,
                    format!(
                        "an object pattern goes in braces, as NestJS writes `{{ cmd: '...' }}`: write \
                         `{{ {written} }}`; a `name = value` after the pattern is an option ({OPTION_LIST})"
                    ),
                ));
                let rest = segments
                    .iter()
                    .position(|seg| split_entry(seg).is_some_and(|(k, _)| is_option(k)))
                    .unwrap_or(segments.len());
                (None, &segments[rest..])
            }
            None => (parse_positional(first, &mut errors), &segments[1..]),
        };

        let pattern = value.is_some().then_some(first.as_slice());
        let mut crate_path: Option<Path> = None;
        let mut policy = PolicyOptions::default();
        for seg in options {
            if let Some(path) = parse_option(seg, pattern, &mut policy, crate_path.is_some(), &mut errors) {
                crate_path = Some(path);
            }
        }

        errors.finish()?;
        Ok(PatternArgs {
            value: value.expect("no error means a value was parsed"),
            crate_path,
            policy,
        })
    }

    /// The pattern, for route and JSON computation.
    pub fn pattern(&self) -> Pattern {
        self.value.to_pattern()
    }

    /// The NestJS route key (`transformPatternToRoute`).
    pub fn route(&self) -> String {
        self.pattern().route()
    }

    /// The pattern as JSON in written order: the `"pattern"` field of a request.
    pub fn json(&self) -> String {
        self.pattern().to_json()
    }

    /// The path to the `switchboard` crate: the `crate = ...` option, else `::switchboard`.
    pub fn crate_path(&self) -> Path {
        self.crate_path
            .clone()
            .unwrap_or_else(|| syn::parse_quote!(::switchboard))
    }
}

impl PatValue {
    /// The pattern this value denotes.
    pub fn to_pattern(&self) -> Pattern {
        match self {
            PatValue::Str(s) => Pattern::String(s.value()),
            PatValue::Num(n) => Pattern::Number(n.value),
            PatValue::Bool(b, _) => Pattern::Bool(*b),
            PatValue::Null(_) => Pattern::Null,
            PatValue::Object(o) => Pattern::Object(
                o.entries
                    .iter()
                    .map(|e| (e.key.name.clone(), e.value.to_pattern()))
                    .collect(),
            ),
            PatValue::Array(a) => Pattern::Array(a.items.iter().map(PatValue::to_pattern).collect()),
        }
    }
}

/// Splits at top-level commas. A trailing comma is fine; an empty piece in the middle is not.
fn split_commas(tokens: TokenStream, errors: &mut Errors) -> Vec<Vec<TokenTree>> {
    let mut segments = Vec::new();
    let mut current = Vec::new();
    for tt in tokens {
        match &tt {
            TokenTree::Punct(p) if p.as_char() == ',' => {
                if current.is_empty() {
                    errors.push(syn::Error::new(
                        p.span(),
                        "unexpected `,`: expected a pattern before it",
                    ));
                } else {
                    segments.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(tt),
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

/// `key = rest`, if the piece has that shape (a key token followed by a lone `=`).
fn split_entry(seg: &[TokenTree]) -> Option<(&TokenTree, &[TokenTree])> {
    match seg {
        [
            key @ (TokenTree::Ident(_) | TokenTree::Literal(_)),
            TokenTree::Punct(eq),
            rest @ ..,
        ] if eq.as_char() == '=' && !is_eq_continued(eq, rest) => Some((key, rest)),
        _ => None,
    }
}

/// `==` and `=>` are not `=`.
fn is_eq_continued(eq: &proc_macro2::Punct, rest: &[TokenTree]) -> bool {
    eq.spacing() == proc_macro2::Spacing::Joint && matches!(rest.first(), Some(TokenTree::Punct(_)))
}

/// A known option's name.
fn is_option(key: &TokenTree) -> bool {
    matches!(key, TokenTree::Ident(i) if OPTIONS.iter().any(|o| i == o))
}

/// The options written as a bare flag.
const FLAGS: &[&str] = &["idempotent", "concurrent"];

/// A bare flag option: `idempotent`, `concurrent`.
fn is_flag(seg: &[TokenTree]) -> bool {
    matches!(seg, [TokenTree::Ident(i)] if FLAGS.iter().any(|f| i == f))
}

fn tokens_of(seg: &[TokenTree]) -> TokenStream {
    seg.iter().cloned().collect()
}

/// One `key = value` piece of an object.
fn parse_entry(seg: &[TokenTree], errors: &mut Errors) -> Option<PatEntry> {
    let Some((key_tt, rest)) = split_entry(seg) else {
        errors.push(entry_shape_error(seg));
        return None;
    };
    let key = parse_key(key_tt, errors)?;
    if rest.is_empty() {
        errors.push(syn::Error::new_spanned(
            tokens_of(&seg[..2]),
            format!(
                "key `{}` has no value: write `{} = <value>`, where the value is {VALUE_FORMS}",
                key.name, key.name
            ),
        ));
        return None;
    }
    // `a = "x" b = "y"`: a forgotten comma, not a strange value.
    if let Some(i) = (1..rest.len()).find(|&i| split_entry(&rest[i..]).is_some()) {
        errors.push(syn::Error::new(
            rest[i].span(),
            format!(
                "expected `,` before `{}`: the entries of an object are separated by commas",
                tokens_of(&rest[i..i + 1])
            ),
        ));
        return None;
    }
    let value = parse_value(rest, errors)?;
    Some(PatEntry { key, value })
}

/// Explains a piece of an object that is not `key = value`.
fn entry_shape_error(seg: &[TokenTree]) -> syn::Error {
    match seg {
        [TokenTree::Ident(key)] => {
            let name = key.unraw();
            syn::Error::new(
                key.span(),
                format!("key `{name}` has no value: write `{name} = <value>`"),
            )
        }
        [TokenTree::Literal(lit)] if matches!(Lit::new(lit.clone()), Lit::Str(_)) => {
            syn::Error::new(lit.span(), format!("key {lit} has no value: write `{lit} = <value>`"))
        }
        [
            key @ (TokenTree::Ident(_) | TokenTree::Literal(_)),
            TokenTree::Punct(p),
            ..,
        ] if p.as_char() == ':' => syn::Error::new(p.span(), format!("write `{key} = value`, not `{key}: value`")),
        _ => syn::Error::new_spanned(
            tokens_of(seg),
            "expected `key = value`, where the key is an identifier or a string literal",
        ),
    }
}

fn parse_key(tt: &TokenTree, errors: &mut Errors) -> Option<PatKey> {
    match tt {
        TokenTree::Ident(ident) => Some(PatKey {
            name: ident.unraw().to_string(),
            span: ident.span(),
        }),
        TokenTree::Literal(lit) => match Lit::new(lit.clone()) {
            Lit::Str(s) => Some(PatKey {
                name: s.value(),
                span: s.span(),
            }),
            _ => {
                errors.push(syn::Error::new(
                    lit.span(),
                    format!(
                        "a key must be an identifier or a string literal: write `\"{}\"`",
                        lit_text_unquoted(lit)
                    ),
                ));
                None
            }
        },
        _ => unreachable!("split_entry only returns identifiers and literals as keys"),
    }
}

fn lit_text_unquoted(lit: &proc_macro2::Literal) -> String {
    lit.to_string().trim_matches('\'').to_owned()
}

/// The first piece when it is not a `key = value` pair: a string, number, `{...}`, ….
fn parse_positional(seg: &[TokenTree], errors: &mut Errors) -> Option<PatValue> {
    if let [TokenTree::Ident(ident)] = seg
        && !matches!(ident.to_string().as_str(), "true" | "false" | "null")
    {
        let name = ident.unraw();
        errors.push(syn::Error::new(
            ident.span(),
            format!(
                "`{name}` is not a pattern: write a string (`\"{name}\"`), or `{{ {name} = <value> }}` \
                 for an object pattern; constants cannot be used because the route is computed \
                 at compile time"
            ),
        ));
        return None;
    }
    parse_value(seg, errors)
}

/// An option after the pattern (`pattern`, as written, when it parsed): `crate = path` is
/// returned (`seen` says whether it was given before); a policy option goes into `policy`.
fn parse_option(
    seg: &[TokenTree],
    pattern: Option<&[TokenTree]>,
    policy: &mut PolicyOptions,
    seen: bool,
    errors: &mut Errors,
) -> Option<Path> {
    if let [TokenTree::Ident(flag)] = seg
        && is_flag(seg)
    {
        let slot = if flag == "idempotent" {
            &mut policy.idempotent
        } else {
            &mut policy.concurrent
        };
        if slot.replace(flag.span()).is_some() {
            errors.push(syn::Error::new(
                flag.span(),
                format!("`{flag}` is given twice: give it once"),
            ));
        }
        return None;
    }
    let Some((TokenTree::Ident(name), rest)) = split_entry(seg) else {
        errors.push(syn::Error::new_spanned(
            tokens_of(seg),
            format!(
                "unexpected argument after the pattern: only options may follow it ({OPTION_LIST}); \
                 an object pattern goes in braces: `{{ cmd = \"get_user\" }}`"
            ),
        ));
        return None;
    };
    if OPTIONS.iter().any(|o| name == o) && name != "crate" {
        parse_policy(name, rest, policy, errors);
        return None;
    }
    if name != "crate" {
        let name = name.unraw();
        let message = if looks_like_crate(&name.to_string()) {
            format!("unknown option `{name}`: did you mean `crate = <path>`, the path to the `switchboard` crate?")
        } else {
            let entry = format!("{name} = {}", tokens_of(rest));
            match pattern {
                Some([TokenTree::Group(g)]) if g.delimiter() == Delimiter::Brace => {
                    let inner = g.stream().to_string();
                    let keys = if inner.trim().is_empty() {
                        entry
                    } else {
                        format!("{}, {entry}", inner.trim())
                    };
                    format!(
                        "unknown option `{name}`: the options are {OPTION_LIST}; if `{name}` is a key \
                         of the pattern, it goes inside the pattern's braces: `{{ {keys} }}`"
                    )
                }
                _ => format!(
                    "unknown option `{name}`: the options are {OPTION_LIST}; to match a key `{name}`, \
                     the pattern is an object, with every key inside its braces: `{{ {entry} }}`"
                ),
            }
        };
        errors.push(syn::Error::new(name.span(), message));
        return None;
    }
    if seen {
        errors.push(syn::Error::new(name.span(), "`crate` is given twice: give it once"));
        return None;
    }
    if rest.is_empty() {
        errors.push(syn::Error::new_spanned(
            tokens_of(&seg[..2]),
            "`crate` needs a path: `crate = ::switchboard`",
        ));
        return None;
    }
    match Path::parse_mod_style.parse2(tokens_of(rest)) {
        Ok(path) => Some(path),
        Err(_) => {
            errors.push(syn::Error::new_spanned(
                tokens_of(rest),
                "expected the path to the `switchboard` crate, as in `crate = ::my_app::switchboard`",
            ));
            None
        }
    }
}

/// `timeout = "2s"`, `concurrency = 32`, `rate = "200/s"`, `idempotent = true`, `retries = 2`.
fn parse_policy(name: &proc_macro2::Ident, rest: &[TokenTree], policy: &mut PolicyOptions, errors: &mut Errors) {
    let at = name.span();
    let value = tokens_of(rest);
    let lit = match rest {
        [TokenTree::Literal(l)] => Some(Lit::new(l.clone())),
        [TokenTree::Ident(i)] if i == "true" || i == "false" => {
            Some(Lit::Bool(syn::LitBool::new(i == "true", i.span())))
        }
        _ => None,
    };
    let fail = |errors: &mut Errors, what: String| {
        let err = if value.is_empty() {
            syn::Error::new(at, what)
        } else {
            syn::Error::new_spanned(&value, what)
        };
        errors.push(err);
    };
    let twice =
        |errors: &mut Errors| errors.push(syn::Error::new(at, format!("`{name}` is given twice: give it once")));
    match name.to_string().as_str() {
        "timeout" => match lit.as_ref().and_then(|l| match l {
            Lit::Str(s) => Some(s.value()),
            _ => None,
        }) {
            Some(text) => match parse_duration_ms(&text) {
                Some(_) if policy.timeout.is_some() => twice(errors),
                Some(ms) => policy.timeout = Some((ms, at)),
                None => fail(
                    errors,
                    format!("`timeout` takes a duration such as \"2s\", \"500ms\" or \"1m30s\", not {value}"),
                ),
            },
            None => fail(
                errors,
                "`timeout` takes a duration in a string: `timeout = \"2s\"` (units: ms, s, m, h)".into(),
            ),
        },
        "concurrency" | "retries" => {
            let max = if name == "retries" { 10 } else { 1_000_000 };
            let n = match &lit {
                Some(Lit::Int(i)) => i.base10_parse::<u32>().ok().filter(|n| (1..=max).contains(n)),
                _ => None,
            };
            let slot = if name == "retries" {
                &mut policy.retries
            } else {
                &mut policy.concurrency
            };
            match n {
                Some(_) if slot.is_some() => twice(errors),
                Some(n) => *slot = Some((n, at)),
                None => fail(
                    errors,
                    format!("`{name}` takes a whole number from 1 to {max}: `{name} = 2`"),
                ),
            }
        }
        "rate" => {
            let parsed = match &lit {
                Some(Lit::Str(s)) => parse_rate(&s.value()),
                _ => None,
            };
            match parsed {
                Some(_) if policy.rate.is_some() => twice(errors),
                Some((n, per)) => policy.rate = Some((n, per, at)),
                None => fail(
                    errors,
                    "`rate` takes calls per period in a string: `rate = \"200/s\"` (per `s`, `m`, `h`, \
                     or a duration: `\"10/100ms\"`)"
                        .into(),
                ),
            }
        }
        "idempotent" | "concurrent" => {
            let slot = if name == "idempotent" {
                &mut policy.idempotent
            } else {
                &mut policy.concurrent
            };
            match lit {
                Some(Lit::Bool(_)) if slot.is_some() => twice(errors),
                Some(Lit::Bool(b)) => {
                    if b.value {
                        *slot = Some(at);
                    }
                }
                _ => fail(
                    errors,
                    format!("`{name}` is a flag: write `{name}` (or `{name} = true`)"),
                ),
            }
        }
        "key" => match &lit {
            Some(Lit::Str(_)) if policy.key.is_some() => twice(errors),
            Some(Lit::Str(k)) if !k.value().is_empty() && k.value().len() <= 256 => {
                policy.key = Some((k.value(), at));
            }
            _ => fail(
                errors,
                "`key` names the payload field whose value orders the events, in a string: \
                 `key = \"orderId\"`"
                    .into(),
            ),
        },
        _ => unreachable!("parse_policy is called for policy options only"),
    }
}

/// A misspelt `crate`: `krate`, `crate_`, `crates`, … (one letter off, five or more letters).
fn looks_like_crate(name: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (name.to_lowercase().chars().collect(), "crate".chars().collect());
    // Levenshtein distance, at most 2.
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    (prev[b.len()] <= 1 && a.len() >= 5) || name == "switchboard" || name == "path"
}

/// A value: literal, `-` literal, `{...}` or `[...]`.
fn parse_value(seg: &[TokenTree], errors: &mut Errors) -> Option<PatValue> {
    match seg {
        // Tokens passed through a `macro_rules!` fragment arrive in an invisible group.
        [TokenTree::Group(g)] if g.delimiter() == Delimiter::None => {
            let inner: Vec<TokenTree> = g.stream().into_iter().collect();
            parse_value(&inner, errors)
        }
        [TokenTree::Literal(lit)] => parse_literal(lit, false, tokens_of(seg), errors),
        [TokenTree::Punct(minus), TokenTree::Literal(lit)] if minus.as_char() == '-' => {
            parse_literal(lit, true, tokens_of(seg), errors)
        }
        [TokenTree::Ident(ident)] => match ident.to_string().as_str() {
            "true" => Some(PatValue::Bool(true, ident.span())),
            "false" => Some(PatValue::Bool(false, ident.span())),
            "null" => Some(PatValue::Null(ident.span())),
            _ => {
                errors.push(syn::Error::new(
                    ident.span(),
                    format!(
                        "`{ident}` is not a pattern value: the route is computed at compile time, \
                         so constants cannot be used; write the value itself: {VALUE_FORMS}"
                    ),
                ));
                None
            }
        },
        [TokenTree::Group(g)] if g.delimiter() == Delimiter::Brace => {
            let mut entries = Vec::new();
            for piece in split_commas(g.stream(), errors) {
                entries.extend(parse_entry(&piece, errors));
            }
            Some(PatValue::Object(PatObject {
                span: g.span(),
                entries,
            }))
        }
        [TokenTree::Group(g)] if g.delimiter() == Delimiter::Bracket => {
            let mut items = Vec::new();
            for piece in split_commas(g.stream(), errors) {
                items.extend(parse_value(&piece, errors));
            }
            Some(PatValue::Array(PatArray { span: g.span(), items }))
        }
        [TokenTree::Group(g)] if g.delimiter() == Delimiter::Parenthesis => {
            errors.push(syn::Error::new(
                g.span(),
                format!("unsupported pattern value: expected {VALUE_FORMS}; write arrays with `[...]`"),
            ));
            None
        }
        _ => {
            errors.push(syn::Error::new_spanned(
                tokens_of(seg),
                format!(
                    "unsupported pattern value: the route is computed at compile time, so \
                     expressions cannot be used; write {VALUE_FORMS}"
                ),
            ));
            None
        }
    }
}

fn parse_literal(
    lit: &proc_macro2::Literal,
    negative: bool,
    tokens: TokenStream,
    errors: &mut Errors,
) -> Option<PatValue> {
    let (digits, suffix) = match Lit::new(lit.clone()) {
        Lit::Str(s) if !negative => return Some(PatValue::Str(s)),
        Lit::Int(i) => (i.base10_digits().to_owned(), i.suffix().to_owned()),
        Lit::Float(f) => (f.base10_digits().to_owned(), f.suffix().to_owned()),
        _ => {
            errors.push(syn::Error::new_spanned(
                tokens,
                format!("unsupported pattern value: expected {VALUE_FORMS}"),
            ));
            return None;
        }
    };
    if !suffix.is_empty() {
        errors.push(syn::Error::new(
            lit.span(),
            format!("remove the `{suffix}` suffix: pattern numbers are JavaScript numbers and take no type"),
        ));
        return None;
    }
    let value: f64 = digits.parse().expect("syn gives base-10 digits");
    if !value.is_finite() {
        errors.push(syn::Error::new(
            lit.span(),
            "number out of range: JavaScript cannot represent it",
        ));
        return None;
    }
    Some(PatValue::Num(PatNum {
        value: if negative { -value } else { value },
        tokens,
    }))
}

impl ToTokens for PatKey {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        LitStr::new(&self.name, self.span).to_tokens(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(tokens: TokenStream) -> PatternArgs {
        PatternArgs::parse(tokens).unwrap_or_else(|e| panic!("parse failed: {e}"))
    }

    fn route(tokens: TokenStream) -> String {
        parse(tokens).route()
    }

    fn error(tokens: TokenStream) -> String {
        let err = PatternArgs::parse(tokens).expect_err("expected an error");
        err.into_iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn string_pattern() {
        let args = parse(quote!("math.add"));
        assert_eq!(args.route(), "math.add");
        assert_eq!(args.json(), r#""math.add""#);
        assert!(args.crate_path.is_none());
    }

    #[test]
    fn number_patterns() {
        assert_eq!(route(quote!(42)), "42");
        assert_eq!(route(quote!(-1.5)), "-1.5");
        assert_eq!(route(quote!(1e21)), "1e+21");
        assert_eq!(route(quote!(0x10)), "16");
        assert_eq!(parse(quote!(-7)).json(), "-7");
    }

    #[test]
    fn object_patterns() {
        let args = parse(quote!({ cmd = "get_user" }));
        assert_eq!(args.route(), r#"{"cmd":"get_user"}"#);
        assert_eq!(args.json(), r#"{"cmd":"get_user"}"#);
        let braced = parse(quote!({ cmd = "get_user" }));
        assert_eq!(braced.route(), r#"{"cmd":"get_user"}"#);
    }

    #[test]
    fn keys_sort_like_nestjs_and_json_keeps_written_order() {
        let args = parse(quote!({
            cmd = "get", role = "user", v = 2, nested = { b = 1, a = "x" }, Zeta = "z", _x = 1
        }));
        assert_eq!(
            args.route(),
            r#"{"_x":1,"cmd":"get","nested":{"a":"x","b":1},"role":"user","v":2,"Zeta":"z"}"#
        );
        assert_eq!(
            args.json(),
            r#"{"cmd":"get","role":"user","v":2,"nested":{"b":1,"a":"x"},"Zeta":"z","_x":1}"#
        );
    }

    #[test]
    fn every_value_form() {
        let args = parse(quote!({
            s = "x",
            i = 2,
            n = -3,
            f = 1.25,
            t = true,
            no = false,
            z = null,
            l = [1, "x", [true]],
            o = {}
        }));
        assert_eq!(
            args.json(),
            r#"{"s":"x","i":2,"n":-3,"f":1.25,"t":true,"no":false,"z":null,"l":[1,"x",[true]],"o":{}}"#
        );
        assert_eq!(
            args.route(),
            r#"{"f":1.25,"i":2,"l":{"0":1,"1":"x","2":{"0":true}},"n":-3,"no":false,"o":{},"s":"x","t":true,"z":null}"#
        );
    }

    #[test]
    fn string_keys_and_raw_identifiers() {
        let args = parse(quote!({ "Zeta" = "z", cmd = "x", r#type = 1, "with \"quote\"" = 2 }));
        assert_eq!(args.route(), r#"{"cmd":"x","type":1,"with \"quote\"":2,"Zeta":"z"}"#);
    }

    #[test]
    fn options_after_positional_patterns() {
        let args = parse(quote!("math.add", crate = ::my::reexport::switchboard));
        assert_eq!(args.route(), "math.add");
        assert_eq!(
            args.crate_path().to_token_stream().to_string(),
            ":: my :: reexport :: switchboard"
        );
        let braced = parse(quote!({ cmd = "get_user" }, crate = sb));
        assert_eq!(braced.route(), r#"{"cmd":"get_user"}"#);
        assert_eq!(braced.crate_path().to_token_stream().to_string(), "sb");
        assert_eq!(parse(quote!(42,)).route(), "42");
    }

    #[test]
    fn default_crate_path() {
        assert_eq!(
            parse(quote!("x")).crate_path().to_token_stream().to_string(),
            ":: switchboard"
        );
    }

    #[test]
    fn top_level_booleans_null_and_arrays_parse() {
        assert_eq!(route(quote!(true)), "true");
        assert_eq!(route(quote!(null)), "null");
        assert_eq!(route(quote!(["a", "b"])), r#"{"0":"a","1":"b"}"#);
    }

    #[test]
    fn empty_attribute() {
        assert!(error(quote!()).starts_with("missing pattern"));
    }

    #[test]
    fn key_without_value() {
        assert!(error(quote!({ cmd = "x", role })).contains("key `role` has no value"));
        assert!(error(quote!({ cmd = })).contains("key `cmd` has no value"));
        assert!(error(quote!({ "a" })).contains("key \"a\" has no value"));
        assert!(error(quote!(cmd)).contains("`cmd` is not a pattern"));
    }

    #[test]
    fn colon_instead_of_equals() {
        assert!(error(quote!({ cmd: "x" })).contains("write `cmd = value`, not `cmd: value`"));
    }

    #[test]
    fn unsupported_values() {
        assert!(error(quote!({ cmd = FOO })).contains("`FOO` is not a pattern value"));
        assert!(error(quote!({ cmd = 1 + 2 })).contains("unsupported pattern value"));
        assert!(error(quote!({ cmd = format!("x") })).contains("unsupported pattern value"));
        assert!(error(quote!({ cmd = (1, 2) })).contains("write arrays with `[...]`"));
        assert!(error(quote!({ cmd = 'c' })).contains("unsupported pattern value"));
        assert!(error(quote!({ cmd = -"x" })).contains("unsupported pattern value"));
        assert!(error(quote!({ v = 1u32 })).contains("remove the `u32` suffix"));
        assert!(error(quote!({ v = 1e400 })).contains("out of range"));
    }

    #[test]
    fn all_syntax_errors_are_reported_together() {
        let err = PatternArgs::parse(quote!({ a = FOO, b, c = 1 + 1 })).unwrap_err();
        assert_eq!(err.into_iter().count(), 3);
    }

    #[test]
    fn policy_options() {
        let p = PatternArgs::parse(quote!(
            "x",
            idempotent,
            retries = 2,
            timeout = "1s",
            concurrency = 4,
            rate = "3/s"
        ))
        .unwrap()
        .policy;
        assert!(p.idempotent.is_some());
        assert_eq!(p.retries.map(|r| r.0), Some(2));
        assert_eq!(p.timeout.map(|t| t.0), Some(1_000));
        assert_eq!(p.concurrency.map(|c| c.0), Some(4));
        assert_eq!(p.rate.map(|r| (r.0, r.1)), Some((3, 1_000)));
        assert!(
            PatternArgs::parse(quote!("x", idempotent = false))
                .unwrap()
                .policy
                .is_empty()
        );
    }

    #[test]
    fn option_errors() {
        let typo = error(quote!("x", krate = foo));
        assert!(
            typo.contains("unknown option `krate`: did you mean `crate = <path>`"),
            "{typo}"
        );
        let unknown = error(quote!("x", transport = "tcp"));
        assert!(
            unknown.contains("unknown option `transport`: the options are `crate = <path>`, `timeout = \"2s\"`"),
            "{unknown}"
        );
        let key = error(quote!("x", cmd = "y"));
        assert!(
            key.contains("the pattern is an object, with every key inside its braces: `{ cmd = \"y\" }`"),
            "{key}"
        );
        let key = error(quote!({ cmd = "x" }, role = "admin"));
        assert!(
            key.contains("it goes inside the pattern's braces: `{ cmd = \"x\", role = \"admin\" }`"),
            "{key}"
        );
        let bare = error(quote!(cmd = "x"));
        assert!(bare.contains("write `{ cmd = \"x\" }`"), "{bare}");
        assert!(error(quote!("x", crate = a, crate = b)).contains("`crate` is given twice"));
        assert!(error(quote!("x", crate = "a")).contains("expected the path"));
        assert!(error(quote!("x", crate =)).contains("`crate` needs a path"));
        let bare = error(quote!(cmd = "x", role = "y", crate = a));
        assert!(bare.contains("an object pattern goes in braces"), "{bare}");
        assert_eq!(
            PatternArgs::parse(quote!(cmd = "x", crate = a))
                .unwrap_err()
                .into_iter()
                .count(),
            1
        );
        assert!(error(quote!(crate = a)).contains("missing pattern before `crate = ...`"));
        assert!(error(quote!("x", "y")).contains("unexpected argument after the pattern"));
    }

    #[test]
    fn missing_commas() {
        assert!(error(quote!({ cmd = "x" role = "y" })).contains("expected `,` before `role`"));
        assert!(error(quote!({ a = { b = 1 c = 2 } })).contains("expected `,` before `c`"));
    }

    #[test]
    fn stray_commas() {
        assert!(error(quote!({ a = 1,, b = 2 })).contains("unexpected `,`"));
        assert!(error(quote!("a",, crate = b)).contains("unexpected `,`"));
    }

    #[test]
    fn bad_keys() {
        assert!(error(quote!({ 1 = "x" })).contains("a key must be an identifier or a string literal"));
    }

    #[test]
    fn invisible_groups_from_macro_rules_are_unwrapped() {
        let lit = TokenTree::Literal(proc_macro2::Literal::string("x"));
        let group = proc_macro2::Group::new(Delimiter::None, lit.into());
        let tokens: TokenStream = quote!({ cmd = #group });
        assert_eq!(route(tokens), r#"{"cmd":"x"}"#);
    }
}
