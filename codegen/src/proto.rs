//! Build-time generation from `.proto` files (feature `proto`), wrapping tonic-prost-build.
//!
//! One call in `build.rs` generates, per proto package, into `$OUT_DIR/<package>.rs`:
//! - prost message types, with serde derives: a handler takes its request message as it is,
//!   and its reply is serialised and decoded into the response message;
//! - tonic's client and server for each service;
//! - glue: `<Service>Handlers`, which implements tonic's server trait by calling the
//!   binary's handlers (method `M` of service `S` → the handler of
//!   `#[message_pattern({ service = "S", rpc = "M" })]`), registered so that every `grpc://`
//!   listener of the binary serves the service; `<SERVICE>_<METHOD>` pattern constants; and
//!   `connect_<service>(url)`, tonic's client on a `grpc://host:port` URL.
//!
//! ```no_run
//! // build.rs
//! switchboard_codegen::proto::compile(&["proto/hero.proto"], &["proto"])
//!     .unwrap_or_else(|e| e.fail_build());
//! ```
//! ```ignore
//! // src/lib.rs
//! pub mod hero { switchboard::transport::grpc::tonic::include_proto!("hero"); }
//! ```
//!
//! The consumer depends on `switchboard` (feature `grpc`), `tonic`, `tonic-prost`, `prost` and
//! `serde`. `protoc` is found through `PROTOC` or on `PATH` (Debian: `apt-get install
//! protobuf-compiler`, which `scripts/brokers.sh` does); with the `vendored-protoc` feature
//! the bundled one is used instead.

use std::path::{Path, PathBuf};

use prost_build::{Method, Service, ServiceGenerator};
use quote::{format_ident, quote};

use crate::client::GenError;

/// Compiles `.proto` files (looked up in `includes`) into `$OUT_DIR`, with Switchboard's glue.
pub fn compile(protos: &[impl AsRef<Path>], includes: &[impl AsRef<Path>]) -> Result<(), GenError> {
    ProtoGen::new().compile(protos, includes)
}

/// [`compile`] with settings.
#[derive(Debug, Default, Clone)]
pub struct ProtoGen {
    out_dir: Option<PathBuf>,
}

impl ProtoGen {
    /// Default settings: output to `$OUT_DIR`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes to `dir` instead of `$OUT_DIR`.
    pub fn out_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.out_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Runs protoc and writes the code.
    pub fn compile(&self, protos: &[impl AsRef<Path>], includes: &[impl AsRef<Path>]) -> Result<(), GenError> {
        let first = protos.first().map(|p| p.as_ref().to_owned()).unwrap_or_default();
        let fail = |message: String| GenError {
            file: first.clone(),
            line: 0,
            column: 0,
            message,
        };
        for p in protos {
            println!("cargo::rerun-if-changed={}", p.as_ref().display());
        }
        find_protoc().map_err(fail)?;
        let mut config = prost_build::Config::new();
        if let Some(dir) = &self.out_dir {
            config.out_dir(dir);
        }
        // Requests reach handlers as prost messages; replies come back as JSON, decoded into
        // the response message; and the generic service's callers send them as JSON.
        config.type_attribute(".", "#[derive(::serde::Serialize, ::serde::Deserialize)]");
        config.message_attribute(".", "#[serde(default)]");
        let tonic = tonic_prost_build::configure().service_generator();
        config.service_generator(Box::new(Glue { tonic }));
        config
            .compile_protos(protos, includes)
            .map_err(|e| fail(format!("protoc failed: {e}")))
    }
}

/// Finds protoc: `PROTOC`, the vendored one (feature `vendored-protoc`), or `protoc` on PATH.
fn find_protoc() -> Result<(), String> {
    if std::env::var_os("PROTOC").is_some() {
        return Ok(());
    }
    #[cfg(feature = "vendored-protoc")]
    {
        let path = protoc_bin_vendored::protoc_bin_path().map_err(|e| e.to_string())?;
        // SAFETY: build scripts are single-threaded when they call this.
        unsafe { std::env::set_var("PROTOC", path) };
        return Ok(());
    }
    #[allow(unreachable_code)]
    match std::process::Command::new("protoc").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(
            "`protoc` was not found: install it (Debian: `apt-get install protobuf-compiler`; \
                  scripts/brokers.sh does), set PROTOC to its path, or enable switchboard-codegen's \
                  `vendored-protoc` feature"
                .into(),
        ),
    }
}

/// tonic's generator, plus Switchboard's glue after each service.
struct Glue {
    tonic: Box<dyn ServiceGenerator>,
}

impl ServiceGenerator for Glue {
    fn generate(&mut self, service: Service, buf: &mut String) {
        let glue = glue(&service);
        self.tonic.generate(service, buf);
        buf.push_str(&glue);
    }

    fn finalize(&mut self, buf: &mut String) {
        self.tonic.finalize(buf);
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        self.tonic.finalize_package(package, buf);
    }
}

/// tonic's module naming: a `_` before every upper-case letter but the first.
fn tonic_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if i > 0 && c.is_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The pattern a method is served by: `{"service":"HeroesService","rpc":"FindOne"}`.
pub fn method_pattern(service: &str, rpc: &str) -> String {
    let pattern = switchboard_pattern::Pattern::Object(vec![
        ("service".into(), switchboard_pattern::Pattern::String(service.into())),
        ("rpc".into(), switchboard_pattern::Pattern::String(rpc.into())),
    ]);
    pattern.to_json()
}

fn glue(service: &Service) -> String {
    let snake = tonic_snake(&service.name);
    let server_mod = format_ident!("{}_server", snake);
    let client_mod = format_ident!("{}_client", snake);
    let trait_name = format_ident!("{}", service.name);
    let server = format_ident!("{}Server", service.name);
    let client = format_ident!("{}Client", service.name);
    let handlers = format_ident!("{}Handlers", service.name);
    let connect = format_ident!("connect_{}", snake);
    let full_name = if service.package.is_empty() {
        service.proto_name.clone()
    } else {
        format!("{}.{}", service.package, service.proto_name)
    };
    let g = quote!(::switchboard::transport::grpc);
    let methods = service.methods.iter().map(|m| method(service, m));
    let consts = service.methods.iter().map(|m| {
        let name = format_ident!("{}_{}", snake.to_uppercase(), tonic_snake(&m.proto_name).to_uppercase());
        let pattern = method_pattern(&service.proto_name, &m.proto_name);
        let doc = format!(" The pattern of `{full_name}/{}`.", m.proto_name);
        quote!(#[doc = #doc] pub const #name: &str = #pattern;)
    });
    let doc = format!(
        " Serves `{full_name}` with this binary's handlers: method `M` by \
         `#[message_pattern({{ service = \"{}\", rpc = \"M\" }})]`. Registered with every `grpc://` listener.",
        service.proto_name
    );
    let connect_doc = format!(" tonic's `{full_name}` client on a `grpc://host:port` URL.");
    let tokens = quote! {
        #(#consts)*

        #[doc = #doc]
        #[derive(Debug, Clone)]
        pub struct #handlers(#g::ProtoServer);

        #[::tonic::async_trait]
        impl #server_mod::#trait_name for #handlers {
            #(#methods)*
        }

        ::switchboard::__private::inventory::submit! {
            #g::ProtoService {
                name: #full_name,
                add: |routes, server| {
                    let limit = server.max_message_len();
                    routes.add_service(
                        #server_mod::#server::new(#handlers(server.clone()))
                            .max_decoding_message_size(limit)
                            .max_encoding_message_size(limit),
                    );
                },
            }
        }

        #[doc = #connect_doc]
        pub async fn #connect(url: &str) -> ::switchboard::Result<#client_mod::#client<::tonic::transport::Channel>> {
            Ok(#client_mod::#client::new(#g::channel(url).await?))
        }
    };
    let file: syn::File = syn::parse2(tokens).expect("generated glue parses");
    format!(
        "\n// Switchboard glue for `{full_name}`.\n{}",
        prettyplease::unparse(&file)
    )
}

fn method(service: &Service, m: &Method) -> proc_macro2::TokenStream {
    let name = format_ident!("{}", m.name);
    let pattern = method_pattern(&service.proto_name, &m.proto_name);
    let req: syn::Type = syn::parse_str(&m.input_type).expect("prost type paths parse");
    let resp: syn::Type = syn::parse_str(&m.output_type).expect("prost type paths parse");
    let stream = format_ident!("{}Stream", m.proto_name);
    let g = quote!(::switchboard::transport::grpc);
    type R = proc_macro2::TokenStream;
    let result = |ok: R| -> R { quote!(::std::result::Result<::tonic::Response<#ok>, ::tonic::Status>) };
    match (m.client_streaming, m.server_streaming) {
        (false, false) => {
            let ret = result(quote!(#resp));
            quote! {
                async fn #name(&self, request: ::tonic::Request<#req>) -> #ret {
                    self.0.unary(#pattern, request).await
                }
            }
        }
        (false, true) => {
            let ret = result(quote!(Self::#stream));
            quote! {
                type #stream = #g::proto::ResponseStream<#resp>;
                async fn #name(&self, request: ::tonic::Request<#req>) -> #ret {
                    self.0.server_streaming(#pattern, request).await
                }
            }
        }
        (true, false) => {
            let ret = result(quote!(#resp));
            quote! {
                async fn #name(&self, request: ::tonic::Request<::tonic::Streaming<#req>>) -> #ret {
                    self.0.client_streaming(#pattern, request).await
                }
            }
        }
        (true, true) => {
            let ret = result(quote!(Self::#stream));
            quote! {
                type #stream = #g::proto::ResponseStream<#resp>;
                async fn #name(&self, request: ::tonic::Request<::tonic::Streaming<#req>>) -> #ret {
                    self.0.streaming(#pattern, request).await
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_patterns() {
        assert_eq!(tonic_snake("HeroesService"), "heroes_service");
        assert_eq!(
            method_pattern("HeroesService", "FindOne"),
            r#"{"service":"HeroesService","rpc":"FindOne"}"#
        );
    }

    #[test]
    fn compiles_a_proto_with_glue() {
        let dir = std::env::temp_dir().join(format!("sb-codegen-proto-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let proto = dir.join("hero.proto");
        std::fs::write(
            &proto,
            r#"syntax = "proto3";
package hero;
service HeroesService {
  rpc FindOne (HeroById) returns (Hero);
  rpc ListAll (HeroById) returns (stream Hero);
  rpc Count (stream HeroById) returns (Hero);
  rpc FindMany (stream HeroById) returns (stream Hero);
}
message HeroById { int32 id = 1; }
message Hero { int32 id = 1; string name = 2; }
"#,
        )
        .unwrap();
        ProtoGen::new().out_dir(&dir).compile(&[&proto], &[&dir]).unwrap();
        let out = std::fs::read_to_string(dir.join("hero.rs")).unwrap();
        for want in [
            "derive(::serde::Serialize, ::serde::Deserialize)",
            "pub struct HeroesServiceHandlers",
            "impl heroes_service_server::HeroesService for HeroesServiceHandlers",
            r#"self.0.unary("{\"service\":\"HeroesService\",\"rpc\":\"FindOne\"}", request)"#,
            "type ListAllStream = ::switchboard::transport::grpc::proto::ResponseStream<Hero>;",
            "self.0.client_streaming(",
            "self.0.streaming(",
            "pub const HEROES_SERVICE_FIND_ONE: &str",
            "pub async fn connect_heroes_service(",
            r#"`#[message_pattern({ service = "HeroesService", rpc = "M" })]`"#,
            "name: \"hero.HeroesService\"",
        ] {
            let flat = |s: &str| s.split_whitespace().collect::<String>();
            assert!(flat(&out).contains(&flat(want)), "missing {want:?} in\n{out}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
