//! TLS for the `https://` path of [`crate::http`]: the rustls client configuration, trusting
//! what `secrets_client::Client` trusts (the `--ca-file` / `NEURO_CA_FILE` certificates
//! and the built-in webpki roots, with the ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`),
//! and the same reasons and hints when a handshake fails.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use secrets_client::ClientError;

/// The certificates of a PEM CA file; an unreadable file, a malformed one or one without a
/// certificate is refused (`ClientError::CaFile`, as `Client::new` does).
pub fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let err = |detail: String| ClientError::CaFile {
        path: path.to_owned(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("invalid certificate encoding: {e}")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The client configuration: the CA file's certificates and the webpki roots.
pub fn config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        for c in read_ca(path)? {
            roots.add(c).map_err(|e| ClientError::CaFile {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        }
    }
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| ClientError::Protocol {
            url: String::new(),
            detail: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Why a TLS failure cannot be mended by trying again, as `Client` words it.
pub use secrets_client::tls_failure as incompatible;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files() {
        let dir = std::env::temp_dir().join(format!("inject-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ca.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let e = read_ca(&f).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate in it"), "{e}");
        assert!(e.contains(&f.display().to_string()), "{e}");
        std::fs::write(
            &f,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_ca(&f).unwrap_err().to_string();
        assert!(e.contains("invalid certificate encoding"), "{e}");
        let e = read_ca(&dir.join("missing")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read CA file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        // The built-in roots alone make a configuration.
        assert!(config(None).unwrap().alpn_protocols == [b"http/1.1".to_vec()]);
    }
}
