//! Typed clients generated at build time from a service's Rust sources (feature `build`).
//!
//! In the consumer's `build.rs`:
//!
//! ```no_run
//! switchboard_codegen::client::ClientGen::new("Users")
//!     .crate_dir("../users")                // reads ../users/src/**/*.rs
//!     .write()                              // $OUT_DIR/users_client.rs
//!     .unwrap_or_else(|e| e.fail_build());  // file:line: what is wrong, and exit 1
//! ```
//!
//! and in its code `mod users { include!(concat!(env!("OUT_DIR"), "/users_client.rs")); }`.
//! The module holds `UsersClient` with one method per `#[message_pattern]` (`get_user(&self,
//! id) -> Call<User>`, awaited for `Result<User>`) and one `emit_*` per event pattern
//! (`#[event_pattern]` functions and `pub const X: EventDef<T>` descriptors), a
//! `MessageDef`/`EventDef` constant for each, and a serde copy of every payload and reply
//! type defined in the service's sources (say which come from a shared crate with
//! [`ClientGen::extern_type`]). The consumer does not depend on the service crate.
//!
//! Handlers are read by the same code the attribute macros use ([`HandlerDef`]), so a route
//! key computed here is the route key the service serves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::visit_mut::VisitMut;
use syn::{Attribute, Item, Type};

use crate::{HandlerDef, PatternArgs, PatternKind};

/// A build-time failure, naming the file and line at fault.
#[derive(Debug, Clone)]
pub struct GenError {
    /// The file, as given.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for GenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)
        }
    }
}

impl std::error::Error for GenError {}

impl GenError {
    fn at(file: &Path, span: Span, message: impl Into<String>) -> Self {
        let start = span.start();
        GenError {
            file: file.to_owned(),
            line: start.line,
            column: start.column + 1,
            message: message.into(),
        }
    }

    fn io(file: &Path, e: std::io::Error) -> Self {
        GenError {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }
    }

    /// For `build.rs`: prints the error as cargo shows it and exits with status 1.
    pub fn fail_build(self) -> ! {
        for line in self.to_string().lines() {
            println!("cargo::error=switchboard-codegen: {line}");
        }
        eprintln!("switchboard-codegen: {self}");
        std::process::exit(1)
    }
}

/// Generates one typed client from a service's sources.
#[derive(Debug, Clone)]
pub struct ClientGen {
    name: String,
    sources: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    extern_types: BTreeMap<String, String>,
    out_file: Option<String>,
}

impl ClientGen {
    /// A client named `{name}Client` (`"Users"` → `UsersClient`).
    pub fn new(name: &str) -> Self {
        ClientGen {
            name: name.to_owned(),
            sources: Vec::new(),
            dirs: Vec::new(),
            extern_types: BTreeMap::new(),
            out_file: None,
        }
    }

    /// Reads every `.rs` file under `dir/src` (a service crate's directory).
    pub fn crate_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dirs.push(dir.as_ref().join("src"));
        self
    }

    /// Reads one source file.
    pub fn source(mut self, file: impl AsRef<Path>) -> Self {
        self.sources.push(file.as_ref().to_owned());
        self
    }

    /// Uses `path` (e.g. `shared_models::User`) for the service's type `name` instead of
    /// generating a copy of it.
    pub fn extern_type(mut self, name: &str, path: &str) -> Self {
        self.extern_types.insert(name.to_owned(), path.to_owned());
        self
    }

    /// The output file's name in `OUT_DIR` (default `{name}_client.rs`, in snake case).
    pub fn out_file(mut self, name: &str) -> Self {
        self.out_file = Some(name.to_owned());
        self
    }

    /// The files that will be read, in order.
    pub fn files(&self) -> Result<Vec<PathBuf>, GenError> {
        let mut files = self.sources.clone();
        for dir in &self.dirs {
            let mut found = Vec::new();
            walk(dir, &mut found).map_err(|e| GenError::io(dir, e))?;
            found.sort();
            files.extend(found);
        }
        Ok(files)
    }

    /// Generates the module's source text.
    pub fn generate(&self) -> Result<String, GenError> {
        let mut inputs = Vec::new();
        for file in self.files()? {
            let text = std::fs::read_to_string(&file).map_err(|e| GenError::io(&file, e))?;
            inputs.push((file, text));
        }
        generate(&self.name, &inputs, &self.extern_types)
    }

    /// Writes the module to `$OUT_DIR/<out_file>` and tells cargo to run the build script
    /// again when a source changes. Returns the path written.
    pub fn write(&self) -> Result<PathBuf, GenError> {
        let files = self.files()?;
        for dir in &self.dirs {
            println!("cargo::rerun-if-changed={}", dir.display());
        }
        for file in &files {
            println!("cargo::rerun-if-changed={}", file.display());
        }
        let text = self.generate()?;
        let out_dir = std::env::var_os("OUT_DIR").map(PathBuf::from).ok_or_else(|| GenError {
            file: PathBuf::from("build.rs"),
            line: 0,
            column: 0,
            message: "OUT_DIR is not set: call switchboard-codegen from a build script".into(),
        })?;
        let name = self
            .out_file
            .clone()
            .unwrap_or_else(|| format!("{}_client.rs", snake(&self.name)));
        let path = out_dir.join(name);
        // Unchanged output keeps its timestamp, so dependents are not rebuilt for nothing.
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&path, text).map_err(|e| GenError::io(&path, e))?;
        }
        Ok(path)
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// A request/response pattern found in the sources.
struct MessageItem {
    method: syn::Ident,
    konst: syn::Ident,
    json: String,
    route: String,
    request: Type,
    reply: Type,
    stream: bool,
    docs: Vec<Attribute>,
    origin: String,
    /// What the handler declares for its callers: `.timeout(..)`, `.idempotent().retries(n)`.
    options: TokenStream,
}

/// An event pattern found in the sources.
struct EventItem {
    method: syn::Ident,
    konst: syn::Ident,
    json: String,
    route: String,
    payload: Type,
    origin: String,
}

/// What the sources define.
#[derive(Default)]
struct Model {
    messages: Vec<MessageItem>,
    events: Vec<EventItem>,
    /// Struct, enum and type-alias definitions by name (the first one wins).
    types: HashMap<String, (Item, String)>,
    /// `use` imports of other crates: name → absolute path.
    imports: HashMap<String, syn::Path>,
}

/// Generates a client module from `(file, source text)` pairs.
pub fn generate(
    name: &str,
    inputs: &[(PathBuf, String)],
    extern_types: &BTreeMap<String, String>,
) -> Result<String, GenError> {
    let mut model = Model::default();
    for (file, text) in inputs {
        let parsed = syn::parse_file(text).map_err(|e| GenError::at(file, e.span(), format!("cannot parse: {e}")))?;
        read_items(file, &parsed.items, &mut model)?;
    }
    if model.messages.is_empty() && model.events.is_empty() {
        let file = inputs.first().map(|(f, _)| f.clone()).unwrap_or_default();
        return Err(GenError {
            file,
            line: 0,
            column: 0,
            message: "no `#[message_pattern]`, `#[event_pattern]` or `EventDef`/`MessageDef` constant found".into(),
        });
    }
    Ok(render(name, inputs, model, extern_types))
}

fn read_items(file: &Path, items: &[Item], model: &mut Model) -> Result<(), GenError> {
    let origin = |span: Span| format!("{}:{}", file.display(), span.start().line);
    for item in items {
        match item {
            Item::Fn(f) => {
                let Some(def) = HandlerDef::from_marked_fn(f) else {
                    continue;
                };
                read_handler(file, def, &f.attrs, model)?;
            }
            // A group of handlers: `#[handlers] impl Users { #[message_pattern(..)] async fn .. }`.
            Item::Impl(block)
                if block
                    .attrs
                    .iter()
                    .any(|a| a.path().segments.last().is_some_and(|s| s.ident == "handlers")) =>
            {
                for item in &block.items {
                    let syn::ImplItem::Fn(method) = item else { continue };
                    let Some(attr) = method.attrs.iter().find(|a| PatternKind::of_attr(a).is_some()) else {
                        continue;
                    };
                    let kind = PatternKind::of_attr(attr).expect("found above");
                    let tokens = match &attr.meta {
                        syn::Meta::List(list) => list.tokens.clone(),
                        _ => TokenStream::new(),
                    };
                    read_handler(
                        file,
                        HandlerDef::parse_method(kind, tokens, method),
                        &method.attrs,
                        model,
                    )?;
                }
            }
            Item::Const(c) => read_const(file, c, model)?,
            Item::Struct(s) => add_type(model, &s.ident, item, origin(s.ident.span())),
            Item::Enum(e) => add_type(model, &e.ident, item, origin(e.ident.span())),
            Item::Type(t) => add_type(model, &t.ident, item, origin(t.ident.span())),
            Item::Use(u) => read_use(&u.tree, &mut Vec::new(), &mut model.imports),
            Item::Mod(m) => {
                if let Some((_, items)) = &m.content {
                    read_items(file, items, model)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// One handler, read into the model.
fn read_handler(
    file: &Path,
    def: syn::Result<HandlerDef>,
    attrs: &[Attribute],
    model: &mut Model,
) -> Result<(), GenError> {
    let def = def.map_err(|e| {
        let all: Vec<String> = e.clone().into_iter().map(|e| e.to_string()).collect();
        GenError::at(file, e.span(), all.join("; "))
    })?;
    let origin = format!("{}:{}", file.display(), def.sig.ident.span().start().line);
    let request = payload_type(file, &def)?;
    let docs: Vec<Attribute> = attrs.iter().filter(|a| a.path().is_ident("doc")).cloned().collect();
    let fn_name = def.sig.name();
    match def.kind {
        PatternKind::Message => {
            let reply = def.sig.ret.reply_type().ok_or_else(|| {
                GenError::at(
                    file,
                    def.sig.ret_span,
                    format!(
                        "cannot tell the reply type of `{fn_name}`: write it out, e.g. \
                         `Result<User, RpcError>` or `ReplyStream<User>`"
                    ),
                )
            })?;
            model.messages.push(MessageItem {
                method: format_ident!("{}", fn_name),
                konst: format_ident!("{}", fn_name.to_uppercase()),
                json: def.pattern.json(),
                route: def.pattern.route(),
                request,
                reply,
                stream: def.sig.ret.is_stream(),
                docs,
                origin,
                options: caller_options(&def.pattern.policy),
            });
        }
        PatternKind::Event => push_event(model, &def.pattern, Some(&fn_name), request, origin),
    }
    Ok(())
}

/// What a handler's attribute declares for its callers, as `.with_options(..)` on its
/// descriptor: the deadline, and retries of an idempotent pattern (the server's own limits,
/// `concurrency` and `rate`, are not the caller's).
fn caller_options(p: &crate::attr::PolicyOptions) -> TokenStream {
    let mut o = TokenStream::new();
    if let Some((ms, _)) = p.timeout {
        o.extend(quote!(.timeout(::core::time::Duration::from_millis(#ms))));
    }
    if p.idempotent.is_some() {
        o.extend(quote!(.idempotent()));
        if let Some((n, _)) = p.retries {
            o.extend(quote!(.retries(#n)));
        }
    }
    match o.is_empty() {
        true => o,
        false => quote!(.with_options(::switchboard::PatternOptions::new()#o)),
    }
}

/// Switchboard's extractors, by name: reading sources, codegen cannot ask the compiler which
/// argument is the payload (the macros do, by trait), so it takes every argument whose type
/// is not one of these for the payload.
const EXTRACTORS: &[&str] = &["Context", "Headers", "Deadline", "Extension", "State"];

/// The payload type of a handler read from source: its one argument that is not an
/// extractor, or `()`.
fn payload_type(file: &Path, def: &HandlerDef) -> Result<Type, GenError> {
    let mut payloads = def
        .sig
        .args
        .iter()
        .filter(|a| !crate::ast::last_segment(&a.ty).is_some_and(|seg| EXTRACTORS.iter().any(|e| seg.ident == e)));
    let payload = payloads.next();
    if let Some(second) = payloads.next() {
        return Err(GenError::at(
            file,
            syn::spanned::Spanned::span(&second.ty),
            format!(
                "`{}` takes several arguments that are not Switchboard extractors ({}): codegen \
                 cannot tell which is the payload; wrap user extractors' types so that one payload is left",
                def.sig.name(),
                EXTRACTORS.join(", ")
            ),
        ));
    }
    Ok(payload.map_or_else(|| syn::parse_quote!(()), |p| p.ty.clone()))
}

fn add_type(model: &mut Model, ident: &syn::Ident, item: &Item, origin: String) {
    model
        .types
        .entry(ident.to_string())
        .or_insert_with(|| (item.clone(), origin));
}

fn push_event(model: &mut Model, pattern: &PatternArgs, fn_name: Option<&str>, payload: Type, origin: String) {
    let route = pattern.route();
    if model.events.iter().any(|e| e.route == route) {
        return; // several listeners of one event: one method
    }
    let base = match pattern.pattern() {
        switchboard_pattern::Pattern::String(s) if ident_like(&snake(&s)) => snake(&s),
        _ => fn_name
            .map(str::to_owned)
            .unwrap_or_else(|| format!("event{}", model.events.len())),
    };
    model.events.push(EventItem {
        method: format_ident!("emit_{}", base),
        konst: format_ident!("{}", base.to_uppercase()),
        json: pattern.json(),
        route,
        payload,
        origin,
    });
}

/// `pub const USER_CREATED: EventDef<User> = EventDef::new(pattern!("user_created"));` and
/// the same with `MessageDef<Req, Rep>`.
fn read_const(file: &Path, c: &syn::ItemConst, model: &mut Model) -> Result<(), GenError> {
    let Type::Path(tp) = &*c.ty else { return Ok(()) };
    let Some(seg) = tp.path.segments.last() else {
        return Ok(());
    };
    let kind = match seg.ident.to_string().as_str() {
        "EventDef" => PatternKind::Event,
        "MessageDef" => PatternKind::Message,
        _ => return Ok(()),
    };
    let args: Vec<Type> = match &seg.arguments {
        syn::PathArguments::AngleBracketed(a) => a
            .args
            .iter()
            .filter_map(|a| match a {
                syn::GenericArgument::Type(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let Some(tokens) = pattern_macro_tokens(&c.expr) else {
        return Err(GenError::at(
            file,
            syn::spanned::Spanned::span(&c.expr),
            format!(
                "`{}`: write the descriptor as `{}::new(pattern!(...))` so its pattern can be read",
                c.ident, seg.ident
            ),
        ));
    };
    let pattern = PatternArgs::parse(tokens)
        .and_then(|p| crate::check_pattern(&p).map(|()| p))
        .map_err(|e| GenError::at(file, e.span(), e.to_string()))?;
    let origin = format!("{}:{}", file.display(), c.ident.span().start().line);
    match (kind, args.as_slice()) {
        (PatternKind::Event, [payload]) => {
            let route = pattern.route();
            if let Some(existing) = model.events.iter_mut().find(|e| e.route == route) {
                existing.konst = c.ident.clone();
            } else {
                push_event(model, &pattern, None, payload.clone(), origin);
                model.events.last_mut().expect("just pushed").konst = c.ident.clone();
            }
        }
        (PatternKind::Message, [request, reply]) => {
            let name = c.ident.to_string().to_lowercase();
            model.messages.push(MessageItem {
                method: format_ident!("{}", name),
                konst: c.ident.clone(),
                json: pattern.json(),
                route: pattern.route(),
                request: request.clone(),
                reply: reply.clone(),
                stream: false,
                docs: c.attrs.iter().filter(|a| a.path().is_ident("doc")).cloned().collect(),
                origin,
                options: TokenStream::new(),
            });
        }
        _ => {
            return Err(GenError::at(
                file,
                seg.ident.span(),
                format!("`{}`: write the type arguments out, e.g. `EventDef<User>`", c.ident),
            ));
        }
    }
    Ok(())
}

fn pattern_macro_tokens(expr: &syn::Expr) -> Option<TokenStream> {
    match expr {
        syn::Expr::Call(call) => call.args.iter().find_map(pattern_macro_tokens),
        syn::Expr::Macro(m) if m.mac.path.segments.last().is_some_and(|s| s.ident == "pattern") => {
            Some(m.mac.tokens.clone())
        }
        _ => None,
    }
}

fn read_use(tree: &syn::UseTree, prefix: &mut Vec<syn::Ident>, out: &mut HashMap<String, syn::Path>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.clone());
            read_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => add_import(prefix, &n.ident, &n.ident, out),
        syn::UseTree::Rename(r) => add_import(prefix, &r.ident, &r.rename, out),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                read_use(t, prefix, out);
            }
        }
        syn::UseTree::Glob(_) => {}
    }
}

fn add_import(prefix: &[syn::Ident], ident: &syn::Ident, alias: &syn::Ident, out: &mut HashMap<String, syn::Path>) {
    // Paths inside the service crate are resolved by name instead.
    if prefix
        .first()
        .is_none_or(|first| first == "crate" || first == "self" || first == "super")
    {
        return;
    }
    let segs = prefix.iter().chain(std::iter::once(ident));
    let path: syn::Path = syn::parse_quote!(:: #(#segs)::*);
    out.insert(alias.to_string(), path);
}

/// Rewrites the service's type paths for the generated module: the service's own types by
/// bare name (queued for copying), imports of other crates as absolute paths.
struct Rewrite<'a> {
    model: &'a Model,
    extern_types: &'a BTreeMap<String, String>,
    wanted: Vec<String>,
    /// Service types that are used but for which a shared path was given.
    external: BTreeSet<String>,
}

impl VisitMut for Rewrite<'_> {
    fn visit_type_path_mut(&mut self, tp: &mut syn::TypePath) {
        syn::visit_mut::visit_type_path_mut(self, tp);
        if tp.qself.is_some() {
            return;
        }
        let segs = &tp.path.segments;
        let first = segs.first().map(|s| s.ident.to_string()).unwrap_or_default();
        let local = segs.len() == 1 || matches!(first.as_str(), "crate" | "self" | "super");
        if !local {
            return;
        }
        let last = segs.last().expect("a path has a segment").clone();
        let name = last.ident.to_string();
        if let Some(path) = self.extern_types.get(&name) {
            let path: syn::Path = syn::parse_str(path).expect("extern_type paths are Rust paths");
            let args = &last.arguments;
            tp.path = syn::parse_quote!(#path #args);
            self.external.insert(name);
        } else if self.model.types.contains_key(&name) {
            tp.path = syn::Path::from(last);
            self.wanted.push(name);
        } else if segs.len() == 1
            && let Some(path) = self.model.imports.get(&name)
        {
            let args = &last.arguments;
            tp.path = syn::parse_quote!(#path #args);
        }
    }
}

fn render(
    name: &str,
    inputs: &[(PathBuf, String)],
    mut model: Model,
    extern_types: &BTreeMap<String, String>,
) -> String {
    let mut messages = std::mem::take(&mut model.messages);
    let mut events = std::mem::take(&mut model.events);
    let mut rw = Rewrite {
        model: &model,
        extern_types,
        wanted: Vec::new(),
        external: BTreeSet::new(),
    };
    for m in &mut messages {
        rw.visit_type_mut(&mut m.request);
        rw.visit_type_mut(&mut m.reply);
    }
    for e in &mut events {
        rw.visit_type_mut(&mut e.payload);
    }
    // Copy every service type reachable from a payload or reply, fields included.
    let mut copied: BTreeMap<String, TokenStream> = BTreeMap::new();
    while let Some(name) = rw.wanted.pop() {
        if copied.contains_key(&name) {
            continue;
        }
        let (item, origin) = model.types[&name].clone();
        let item = copy_type(item, &mut rw);
        let note = format!(" Generated copy of `{name}` from {origin}: not reachable from a shared crate.");
        copied.insert(name, quote!(#[doc = #note] #item));
    }

    let client = format_ident!("{}Client", name);
    let files: Vec<String> = inputs.iter().map(|(f, _)| f.display().to_string()).collect();
    let client_doc = format!(
        " A typed client of the {name} service, generated at build time by switchboard-codegen from {}.",
        files.join(", ")
    );
    let consts = messages.iter().map(|m| {
        let (konst, json, route, req, rep, options) = (&m.konst, &m.json, &m.route, &m.request, &m.reply, &m.options);
        let doc = format!(" `{route}` ({}).", m.origin);
        quote! {
            #[doc = #doc]
            pub const #konst: ::switchboard::MessageDef<#req, #rep> =
                ::switchboard::MessageDef::new(::switchboard::PatternLit { json: #json, route: #route })#options;
        }
    });
    let event_consts = events.iter().map(|e| {
        let (konst, json, route, payload) = (&e.konst, &e.json, &e.route, &e.payload);
        let doc = format!(" Event `{route}` ({}).", e.origin);
        quote! {
            #[doc = #doc]
            pub const #konst: ::switchboard::EventDef<#payload> =
                ::switchboard::EventDef::new(::switchboard::PatternLit { json: #json, route: #route });
        }
    });
    let methods = messages.iter().map(|m| {
        let (method, konst, req, rep, docs) = (&m.method, &m.konst, &m.request, &m.reply, &m.docs);
        let extra = if m.stream {
            " Several values: await for the last, or `.stream()` for each."
        } else {
            " Awaiting the call sends it; `.timeout(..)` and `.header(..)` configure it first."
        };
        let sep = (!docs.is_empty()).then(|| quote!(#[doc = ""]));
        quote! {
            #(#docs)*
            #sep
            #[doc = #extra]
            pub fn #method(&self, payload: impl ::switchboard::AsPayload<#req>) -> ::switchboard::Call<#rep> {
                self.client.send(#konst, payload)
            }
        }
    });
    let emits = events.iter().map(|e| {
        let (method, konst, payload) = (&e.method, &e.konst, &e.payload);
        let doc = format!(" Emits `{}`; resolves once the transport has accepted it.", e.route);
        quote! {
            #[doc = #doc]
            pub fn #method(&self, payload: impl ::switchboard::AsPayload<#payload>) -> ::switchboard::Emit {
                self.client.emit(#konst, payload)
            }
        }
    });
    let types = copied.values();
    let tokens = quote! {
        #(#types)*
        #(#consts)*
        #(#event_consts)*

        #[doc = #client_doc]
        #[derive(Debug, Clone)]
        pub struct #client {
            client: ::switchboard::Client,
        }

        impl #client {
            /// Wraps a client of the service (any transport).
            pub fn new(client: ::switchboard::Client) -> Self {
                Self { client }
            }

            /// Connects to the service at `url`.
            pub async fn connect(url: &str) -> ::switchboard::Result<Self> {
                ::switchboard::Client::connect(url).await.map(Self::new)
            }

            /// The underlying client.
            pub fn client(&self) -> &::switchboard::Client {
                &self.client
            }

            #(#methods)*
            #(#emits)*
        }
    };
    let file: syn::File = syn::parse2(tokens).expect("generated code parses");
    let mut header =
        format!("// @generated by switchboard-codegen from the {name} service's sources. Do not edit.\n// Sources:\n");
    for f in &files {
        header.push_str(&format!("//   {f}\n"));
    }
    if !rw.external.is_empty() {
        header.push_str("// Types taken from shared crates: ");
        header.push_str(&rw.external.iter().cloned().collect::<Vec<_>>().join(", "));
        header.push('\n');
    }
    header.push('\n');
    header + &prettyplease::unparse(&file)
}

/// A service type as a plain serde type: public, its own derives and serde attributes kept,
/// everything else dropped.
fn copy_type(item: Item, rw: &mut Rewrite<'_>) -> TokenStream {
    const DERIVES: [&str; 9] = [
        "Debug",
        "Clone",
        "Copy",
        "PartialEq",
        "Eq",
        "Hash",
        "Default",
        "PartialOrd",
        "Ord",
    ];
    let derives = |attrs: &[Attribute]| -> Vec<syn::Ident> {
        let mut kept = Vec::new();
        for a in attrs.iter().filter(|a| a.path().is_ident("derive")) {
            let _ = a.parse_nested_meta(|m| {
                if let Some(last) = m.path.segments.last()
                    && DERIVES.contains(&last.ident.to_string().as_str())
                {
                    kept.push(last.ident.clone());
                }
                Ok(())
            });
        }
        kept
    };
    let keep = |attrs: &mut Vec<Attribute>| attrs.retain(|a| a.path().is_ident("serde") || a.path().is_ident("doc"));
    let public: syn::Visibility = syn::parse_quote!(pub);
    let fields = |fields: &mut syn::Fields, rw: &mut Rewrite<'_>, public_fields: bool| {
        for f in fields.iter_mut() {
            keep(&mut f.attrs);
            if public_fields {
                f.vis = public.clone();
            }
            rw.visit_type_mut(&mut f.ty);
        }
    };
    match item {
        Item::Struct(mut s) => {
            let d = derives(&s.attrs);
            keep(&mut s.attrs);
            s.vis = public.clone();
            fields(&mut s.fields, rw, true);
            quote!(#[derive(#(#d,)* ::serde::Serialize, ::serde::Deserialize)] #s)
        }
        Item::Enum(mut e) => {
            let d = derives(&e.attrs);
            keep(&mut e.attrs);
            e.vis = public.clone();
            for v in &mut e.variants {
                v.attrs
                    .retain(|a| a.path().is_ident("serde") || a.path().is_ident("doc"));
                fields(&mut v.fields, rw, false);
            }
            quote!(#[derive(#(#d,)* ::serde::Serialize, ::serde::Deserialize)] #e)
        }
        Item::Type(mut t) => {
            keep(&mut t.attrs);
            t.vis = public;
            rw.visit_type_mut(&mut t.ty);
            quote!(#t)
        }
        other => quote!(#other),
    }
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_owned()
}

fn ident_like(s: &str) -> bool {
    !s.is_empty() && !s.starts_with(|c: char| c.is_ascii_digit()) && syn::parse_str::<syn::Ident>(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users_gen(src: &str) -> Result<String, GenError> {
        generate(
            "Users",
            &[(PathBuf::from("src/lib.rs"), src.to_owned())],
            &BTreeMap::new(),
        )
    }

    const USERS: &str = r#"
        use switchboard::prelude::*;
        use serde_json::Value;

        /// A user.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct User { pub id: String, display_name: String, pub tags: Vec<Tag>, pub extra: Value }

        #[derive(Serialize, Deserialize)]
        pub enum Tag { Admin, Other(String) }

        pub const USER_CREATED: EventDef<User> = EventDef::new(pattern!("user_created"));

        /// Looks a user up.
        #[message_pattern({ cmd = "get_user" })]
        pub async fn get_user(id: String) -> Result<User, RpcError> { Err(RpcError::new(id)) }

        #[message_pattern("users.list")]
        async fn list(ctx: Context) -> ReplyStream<crate::User> { ReplyStream::empty() }

        pub struct Accounts { db: Db }

        #[switchboard::handlers]
        impl Accounts {
            /// An account's balance.
            #[message_pattern({ cmd = "balance" })]
            pub async fn balance(&self, State(rates): State<Rates>, account: u64, ctx: Context) -> f64 { 0.0 }

            #[event_pattern("account.closed")]
            async fn closed(&self, id: u64) {}

            fn helper(&self) {}
        }

        mod listeners {
            #[event_pattern("user_created")]
            async fn welcome(user: super::User) {}
            #[event_pattern("user.deleted")]
            async fn gone(id: String) {}
        }
    "#;

    #[test]
    fn client_from_sources() {
        let out = users_gen(USERS).unwrap();
        for want in [
            "pub struct UsersClient",
            "pub fn get_user(&self, payload: impl ::switchboard::AsPayload<String>",
            "-> ::switchboard::Call<User>",
            r#"json: "{\"cmd\":\"get_user\"}""#,
            "pub fn list(&self, payload: impl ::switchboard::AsPayload<()>",
            "pub fn emit_user_created(&self, payload: impl ::switchboard::AsPayload<User>",
            "pub fn emit_user_deleted(&self, payload: impl ::switchboard::AsPayload<String>",
            "pub fn balance(&self, payload: impl ::switchboard::AsPayload<u64>,) -> ::switchboard::Call<f64>",
            "pub fn emit_account_closed(&self, payload: impl ::switchboard::AsPayload<u64>",
            "pub const USER_CREATED: ::switchboard::EventDef<User>",
            "#[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]",
            "#[serde(rename_all = \"camelCase\")]",
            "pub display_name: String",
            "pub extra: ::serde_json::Value",
            "pub enum Tag",
            "Generated copy of `User` from src/lib.rs:",
        ] {
            let flat = |s: &str| s.split_whitespace().collect::<String>();
            assert!(flat(&out).contains(&flat(want)), "missing {want:?} in\n{out}");
        }
        assert_eq!(
            out.matches("pub fn emit_user_created").count(),
            1,
            "one method per event"
        );
        syn::parse_file(&out).expect("the output parses");
    }

    #[test]
    fn callers_keep_what_the_handler_declares_for_them() {
        let out = users_gen(
            "#[message_pattern(\"charge\", idempotent, retries = 2, timeout = \"2s\", concurrency = 8)]\n\
             async fn charge(cents: u64) -> u64 { cents }\n\
             #[message_pattern(\"plain\")]\nasync fn plain(x: u32) -> u32 { x }\n",
        )
        .unwrap();
        let squeezed: String = out.split_whitespace().collect();
        assert!(
            squeezed.contains(
                ".with_options(::switchboard::PatternOptions::new().timeout(::core::time::Duration::from_millis(2000u64)).idempotent().retries(2u32)"
            ),
            "{out}"
        );
        // The server's own limits are not the caller's; a plain pattern declares nothing.
        assert!(!squeezed.contains("concurrency"), "{out}");
        assert_eq!(squeezed.matches("with_options").count(), 1, "{out}");
    }

    #[test]
    fn extern_types_are_not_copied() {
        let mut ext = BTreeMap::new();
        ext.insert("User".to_owned(), "shared::User".to_owned());
        let out = generate("Users", &[(PathBuf::from("lib.rs"), USERS.to_owned())], &ext).unwrap();
        assert!(!out.contains("pub struct User "), "{out}");
        assert!(out.contains("::switchboard::Call<shared::User>"), "{out}");
    }

    #[test]
    fn errors_name_file_and_line() {
        let err = users_gen("\n#[message_pattern({ cmd = \"a\", cmd = \"b\" })]\nasync fn f(x: u32) -> u32 { x }\n")
            .unwrap_err();
        assert_eq!((err.line, err.file.to_str().unwrap()), (2, "src/lib.rs"), "{err}");
        assert!(err.to_string().starts_with("src/lib.rs:2:"), "{err}");
        assert!(err.message.contains("cmd"), "{err}");
        let err = users_gen("fn broken( {").unwrap_err();
        assert!(err.to_string().starts_with("src/lib.rs:1:"), "{err}");
        assert!(err.message.starts_with("cannot parse"), "{err}");
        let err = users_gen("#[message_pattern(\"x\")]\nfn not_async() {}").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        let err = users_gen("#[message_pattern(\"x\")]\nasync fn two(a: u32, b: Tenant) {}").unwrap_err();
        assert!(err.message.contains("cannot tell which is the payload"), "{err}");
    }
}
