//! What an operation of the domain layer can fail with, in its own words: no status codes.
//! `error::ApiError` maps each to HTTP in one place; the console words them for people.

use secrets_core::api::MissingPermission;

use crate::audit::AuditUnavailable;
use crate::store::StoreError;

/// A failed operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DomainError {
    /// The input names something impossible (a key, a URI, a size out of range).
    #[error("{0}")]
    Invalid(String),
    /// The caller is not who it claims, or no longer exists (a removed user, an ended job).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not; `missing` lists what it lacks, where that says something.
    #[error("{message}")]
    Forbidden {
        message: String,
        missing: Vec<MissingPermission>,
    },
    #[error("{0}")]
    NotFound(String),
    /// The thing exists already.
    #[error("{0}")]
    Conflict(String),
    /// The answer would be larger than the service gives in one.
    #[error("{0}")]
    TooLarge(String),
    /// Not now: the store or the audit log cannot do it safely; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A fault of the service; details go to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl DomainError {
    pub fn forbidden(message: impl Into<String>) -> Self {
        DomainError::Forbidden {
            message: message.into(),
            missing: vec![],
        }
    }

    /// A refusal that lists what the caller lacks.
    pub fn missing(missing: Vec<MissingPermission>) -> Self {
        let list: Vec<String> = missing
            .iter()
            .map(|m| format!("{} on {}", m.action, m.uri))
            .collect();
        DomainError::Forbidden {
            message: format!("permission denied: missing {}", list.join(", ")),
            missing,
        }
    }

    /// The one-word kind, for tables of expectations.
    pub fn kind(&self) -> &'static str {
        match self {
            DomainError::Invalid(_) => "invalid",
            DomainError::Unauthenticated(_) => "unauthenticated",
            DomainError::Forbidden { .. } => "forbidden",
            DomainError::NotFound(_) => "not found",
            DomainError::Conflict(_) => "conflict",
            DomainError::TooLarge(_) => "too large",
            DomainError::Unavailable(_) => "unavailable",
            DomainError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for DomainError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                tracing::warn!(%why, "the store is unavailable");
                DomainError::Unavailable(
                    "the store is unavailable (etcd cannot be reached or has no quorum); retry later"
                        .into(),
                )
            }
            e => DomainError::Internal(e.to_string()),
        }
    }
}

impl From<crate::records::Corrupt> for DomainError {
    fn from(e: crate::records::Corrupt) -> Self {
        DomainError::Internal(e.to_string())
    }
}

impl From<AuditUnavailable> for DomainError {
    fn from(e: AuditUnavailable) -> Self {
        DomainError::Unavailable(e.to_string())
    }
}
