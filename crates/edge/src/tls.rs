//! TLS for the edge's listeners.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::server::EdgeError;

/// A server configuration from PEM files (certificate chain and private key).
pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, EdgeError> {
    let tls_err =
        |what: &Path, e: &dyn std::fmt::Display| EdgeError::Tls(format!("{}: {e}", what.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(cert, &e))?;
    if certs.is_empty() {
        return Err(EdgeError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, &e))?;
    build(certs, key)
}

/// A self-signed certificate for `hostname`, localhost, 127.0.0.1 and the `extra` names or IP
/// addresses (the listeners'), generated now. Returns the configuration and the certificate in
/// PEM (for clients that want to trust it).
pub fn self_signed(
    hostname: &str,
    extra: &[String],
) -> Result<(Arc<ServerConfig>, String), EdgeError> {
    let mut names = vec![
        hostname.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| EdgeError::Tls(e.to_string()))?;
    let pem = ck.cert.pem();
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
        .map_err(|e| EdgeError::Tls(e.to_string()))?;
    Ok((build(vec![ck.cert.der().clone()], key)?, pem))
}

fn build(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, EdgeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EdgeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| EdgeError::Tls(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// The negotiated version and cipher of an established connection, as `Received:` names them.
pub fn describe(conn: &rustls::ServerConnection) -> skein_smtp::TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "unknown".to_string(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_else(|| "unknown".into());
    skein_smtp::TlsInfo { version, cipher }
}
