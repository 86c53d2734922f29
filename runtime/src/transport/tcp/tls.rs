//! TLS for the TCP transport (`tls://`) and the HTTP endpoint (`https://`), with rustls and
//! the ring provider.
//!
//! The server reads its certificate chain and key from the PEM files named by the `cert`
//! and `key` URL parameters; the client trusts the CA certificates in the `ca` file and
//! checks the server's name (the URL's host, or `server_name`).

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::{Error, Result};
use crate::transport::Endpoint;

fn invalid(ep: &Endpoint, reason: impl std::fmt::Display) -> Error {
    Error::InvalidUrl {
        url: ep.redacted(),
        reason: reason.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn required<'a>(ep: &'a Endpoint, key: &str, what: &str) -> Result<&'a str> {
    ep.param(key)
        .ok_or_else(|| invalid(ep, format!("{}:// needs `{key}=<path to {what} PEM file>`", ep.scheme)))
}

fn certs(ep: &Endpoint, path: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| invalid(ep, format!("cannot read certificates from {path}: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(ep, format!("no certificate in {path}")));
    }
    Ok(certs)
}

/// The server's TLS acceptor (for `tls://`, and the HTTP endpoint's `https://`).
pub(crate) fn acceptor(ep: &Endpoint) -> Result<TlsAcceptor> {
    let chain = certs(ep, required(ep, "cert", "certificate")?)?;
    let key_path = required(ep, "key", "private key")?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| invalid(ep, format!("cannot read a private key from {key_path}: {e}")))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| invalid(ep, e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client's TLS connector and the name it checks.
pub(super) struct Connector {
    inner: TlsConnector,
    name: ServerName<'static>,
}

pub(super) fn connector(ep: &Endpoint) -> Result<Connector> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ep, required(ep, "ca", "CA certificate")?)? {
        roots.add(cert).map_err(|e| invalid(ep, e))?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(ep, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = match ep.param("server_name") {
        Some(name) => name.to_owned(),
        None => ep
            .authority
            .rsplit_once(':')
            .map_or(ep.authority.as_str(), |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_owned(),
    };
    let name = ServerName::try_from(host).map_err(|e| invalid(ep, format!("invalid server name: {e}")))?;
    Ok(Connector {
        inner: TlsConnector::from(Arc::new(config)),
        name,
    })
}

impl Connector {
    pub(super) async fn connect(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> std::result::Result<TlsStream<TcpStream>, String> {
        match tokio::time::timeout(timeout, self.inner.connect(self.name.clone(), stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
            Err(_) => Err(format!("TLS handshake timed out after {timeout:?}")),
        }
    }
}
