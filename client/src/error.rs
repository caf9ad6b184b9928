//! What can go wrong talking to the service (`ClientError`) and its exit class, and the
//! pieces every client shares, whatever speaks HTTP for it: reading an answer (`answer`) and
//! naming a TLS failure (`tls_failure`).

use http::StatusCode;
use secrets_core::ExitClass;
use secrets_core::api::{ErrorBody, MissingPermission};
use serde::de::DeserializeOwned;

/// What went wrong talking to the service. Never carries a value or a token.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid service URL '{0}': expected http://HOST:PORT or https://HOST:PORT")]
    BadUrl(String),
    #[error("cannot read CA file '{path}': {detail}")]
    CaFile {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("service unavailable at {url}: {detail}")]
    Unavailable { url: String, detail: String },
    /// The service cannot be talked to as configured, and trying again cannot mend it: the
    /// TLS handshake failed (the certificate is not trusted, names another host, has expired,
    /// is a CA certificate...), or the URL's scheme is not what the service speaks.
    #[error("service unavailable at {url}: {detail}")]
    Incompatible { url: String, detail: String },
    #[error("{message}")]
    Status {
        status: u16,
        message: String,
        missing: Vec<MissingPermission>,
    },
    #[error("unexpected answer from {url}: {detail}")]
    Protocol { url: String, detail: String },
}

impl ClientError {
    /// Whether trying again later may succeed: connection errors, 408 (the request was not
    /// sent in time), 429 (too many requests in flight) and 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unavailable { .. } => true,
            ClientError::Status { status, .. } => matches!(*status, 408 | 429 | 500..),
            _ => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The class of a failed request: 401/403 forbidden, 404 not found, connection failures, 408, 429,
/// 5xx, a refused certificate or scheme and answers that are not the API's unavailable; a bad
/// URL or CA file and any other status invalid.
impl From<&ClientError> for ExitClass {
    fn from(e: &ClientError) -> Self {
        match e {
            ClientError::BadUrl(_) | ClientError::CaFile { .. } => ExitClass::Invalid,
            ClientError::Unavailable { .. }
            | ClientError::Incompatible { .. }
            | ClientError::Protocol { .. } => ExitClass::Unavailable,
            ClientError::Status { status, .. } => match status {
                401 | 403 => ExitClass::Forbidden,
                404 => ExitClass::NotFound,
                408 | 429 | 500.. => ExitClass::Unavailable,
                _ => ExitClass::Invalid,
            },
        }
    }
}

/// The outcome of an answer with HTTP status `status` and body `bytes` to a request to `url`:
/// the JSON body of a success (`null` when empty), else the service's error. Shared by
/// [`Client`] and by callers that speak HTTP themselves (secret-inject's plain-HTTP path), so
/// both read an answer the same way.
pub fn answer<T: DeserializeOwned>(url: &str, status: u16, bytes: &[u8]) -> Result<T, ClientError> {
    if (200..300).contains(&status) {
        let body: &[u8] = if status == StatusCode::NO_CONTENT.as_u16() || bytes.is_empty() {
            b"null"
        } else {
            bytes
        };
        return serde_json::from_slice(body).map_err(|e| ClientError::Protocol {
            url: url.to_owned(),
            detail: e.to_string(),
        });
    }
    let text = StatusCode::from_u16(status)
        .map(|s| s.to_string())
        .unwrap_or_else(|_| status.to_string());
    let err: ErrorBody = serde_json::from_slice(bytes).unwrap_or_else(|_| ErrorBody {
        error: format!("HTTP {text}"),
        missing: vec![],
    });
    if (500..600).contains(&status) {
        return Err(ClientError::Status {
            status,
            message: format!("service error (HTTP {status}): {}", err.error),
            missing: vec![],
        });
    }
    Err(ClientError::Status {
        status,
        message: err.error,
        missing: err.missing,
    })
}

/// The detail of an answer that is not HTTP at all (`what` says what was seen instead): most
/// often a TLS service behind an `http://` URL.
pub fn not_http(what: impl std::fmt::Display) -> String {
    format!("the answer is not HTTP ({what})\nhint: is the URL https://?")
}

/// Why a TLS failure cannot be mended by trying again, when that is so (the certificate, with
/// a hint for the common mistakes, or a service that does not speak TLS); `None` for anything
/// else. Shared with secret-inject's own TLS client.
pub fn tls_failure(t: &rustls::Error) -> Option<String> {
    let why = match t {
        rustls::Error::InvalidCertificate(ce) => certificate_hint(ce),
        // Not TLS at all: a plain HTTP service behind an https:// URL.
        rustls::Error::InvalidMessage(_) => {
            format!("{t}\nhint: the service does not speak TLS on this port; is the URL http://?")
        }
        rustls::Error::NoCertificatesPresented
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::AlertReceived(_)
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::InappropriateMessage { .. } => t.to_string(),
        _ => return None,
    };
    Some(format!("TLS handshake failed: {why}"))
}

fn certificate_hint(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    let hint = match e {
        C::UnknownIssuer => {
            "\nhint: the certificate is not signed by a CA this client trusts; pass --ca-file with \
             the CA certificate (or the self-signed certificate itself)"
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "\nhint: the certificate does not name the host of the URL; use a host name or IP \
             address listed in its subjectAltName"
        }
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            "\nhint: check the certificate's validity dates and this machine's clock"
        }
        C::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => {
            "\nhint: the service's certificate is a CA certificate (basicConstraints CA:TRUE); a \
             server certificate needs CA:FALSE (README: HTTPS tells how to make one)"
        }
        _ => "",
    };
    format!("invalid peer certificate: {e:?}{hint}")
}

#[cfg(test)]
mod tests {
    use secrets_core::ExitClass::{self, *};

    use super::ClientError;

    #[test]
    fn client_errors() {
        let status = |status| ClientError::Status {
            status,
            message: String::new(),
            missing: Vec::new(),
        };
        for (e, want) in [
            (status(401), Forbidden),
            (status(403), Forbidden),
            (status(404), NotFound),
            (status(400), Invalid),
            (status(408), Unavailable),
            (status(429), Unavailable),
            (status(503), Unavailable),
            (ClientError::BadUrl("x".into()), Invalid),
        ] {
            assert_eq!(ExitClass::from(&e), want, "{e:?}");
        }
    }
}
