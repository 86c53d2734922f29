//! TLS to the collector, for `https` endpoints over gRPC and HTTP alike: the CA certificates
//! and the client's own certificate and key (mutual TLS) come from the files the standard
//! variables name, `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`, `…_CLIENT_CERTIFICATE` and
//! `…_CLIENT_KEY`; without a CA file the system's roots are trusted.

use std::sync::Arc;

use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::{config, signal_var};
use crate::error::Result;

/// The PEM files of the collector's TLS, read. No `Debug`: it holds a private key.
pub(super) struct TlsFiles {
    /// CA certificates to trust instead of the system's.
    ca: Option<Vec<u8>>,
    /// The client's certificate chain and key.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads the files the variables name (the `_TRACES_` one first); an unreadable file, or a
    /// client certificate without its key (or the reverse), is an error naming the variable.
    pub(super) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<TlsFiles> {
        let read = |name: &str| -> Result<Option<Vec<u8>>> {
            let Some((var, path)) = signal_var(env, name) else {
                return Ok(None);
            };
            let path = path.trim();
            std::fs::read(path)
                .map(Some)
                .map_err(|e| config(format!("{var}: cannot read {path}: {e}")))
        };
        let ca = read("CERTIFICATE")?;
        let identity = match (read("CLIENT_CERTIFICATE")?, read("CLIENT_KEY")?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(config(
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE is set without OTEL_EXPORTER_OTLP_CLIENT_KEY".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(config(
                    "OTEL_EXPORTER_OTLP_CLIENT_KEY is set without OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE".into(),
                ));
            }
        };
        Ok(TlsFiles { ca, identity })
    }

    /// True when no variable named a file (the system's roots, no client certificate).
    pub(super) fn is_empty(&self) -> bool {
        self.ca.is_none() && self.identity.is_none()
    }

    /// For the gRPC exporter (tonic).
    pub(super) fn tonic(&self) -> ClientTlsConfig {
        let mut tls = match &self.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }

    /// For the HTTP exporter, and to check the files: tonic reads them only when it connects.
    pub(super) fn rustls(&self) -> Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in certs(ca, "OTEL_EXPORTER_OTLP_CERTIFICATE")? {
                    roots
                        .add(cert)
                        .map_err(|e| config(format!("OTEL_EXPORTER_OTLP_CERTIFICATE: {e}")))?;
                }
            }
            None => {
                // Unreadable system certificates are skipped, as browsers do; none at all is
                // an error when the handshake fails to find a root.
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config(e.to_string()))?
            .with_root_certificates(roots);
        let config = match &self.identity {
            Some((cert, key)) => {
                let chain = certs(cert, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")?;
                // The key's bytes never reach an error: only that it could not be read.
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
                    config("OTEL_EXPORTER_OTLP_CLIENT_KEY: no private key in PEM form in the file".into())
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| config(format!("the client certificate and key: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

fn certs(pem: &[u8], var: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| config(format!("{var}: {e}")))?;
    if certs.is_empty() {
        return Err(config(format!("{var}: no certificate in PEM form in the file")));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn pem(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn files_are_read_per_signal_first_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let client = rcgen::generate_simple_self_signed(vec!["client".into()]).unwrap();
        let ca_path = pem(&dir, "ca.pem", &ca.cert.pem());
        let cert_path = pem(&dir, "client.pem", &client.cert.pem());
        let key_text = client.signing_key.serialize_pem();
        let key_path = pem(&dir, "client-key.pem", &key_text);
        let junk = pem(&dir, "junk.pem", "not a certificate");

        // The per-signal variable wins: the generic one names a file that does not exist.
        let files = TlsFiles::from_env(&env_of(&[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem".into()),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca_path.clone()),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert_path.clone()),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key_path.clone()),
        ]))
        .unwrap();
        assert!(files.ca.is_some() && files.identity.is_some());
        files.rustls().unwrap();

        let err = TlsFiles::from_env(&env_of(&[(
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/ca.pem".into(),
        )]))
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.starts_with("invalid telemetry: OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read /nonexistent/ca.pem: "),
            "{err}"
        );

        let err = TlsFiles::from_env(&env_of(&[("OTEL_EXPORTER_OTLP_CLIENT_KEY", key_path.clone())]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("CLIENT_KEY is set without OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
            "{err}"
        );

        let files = TlsFiles::from_env(&env_of(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", junk.clone())])).unwrap();
        let err = files.rustls().err().unwrap().to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE: no certificate"), "{err}");

        // A key file that holds no key: the error says so and shows nothing of the file.
        let files = TlsFiles::from_env(&env_of(&[
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert_path),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", ca_path),
        ]))
        .unwrap();
        let err = files.rustls().err().unwrap().to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY: no private key"), "{err}");
        assert!(!err.contains("BEGIN"), "{err}");

        // Without a CA file the system's roots are trusted.
        TlsFiles::from_env(&env_of(&[])).unwrap().rustls().unwrap();
    }
}
