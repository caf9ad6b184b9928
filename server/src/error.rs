//! The one place where failures become HTTP answers (`{"error": ...}` bodies).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrets_core::api::{ErrorBody, MissingPermission};

use crate::audit::AuditUnavailable;
use crate::store::StoreError;

/// Every failure a handler can answer with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{message}")]
    Forbidden {
        message: String,
        missing: Vec<MissingPermission>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The service cannot do this safely now (the audit log cannot be written); retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The request body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// One token (or one user) has too many requests in flight; retry later.
    #[error("{0}")]
    TooManyRequests(String),
    /// Details go to the log only; the client gets a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::Forbidden {
            message: message.into(),
            missing: vec![],
        }
    }

    /// A 403 that lists what the caller lacks.
    pub fn missing(missing: Vec<MissingPermission>) -> Self {
        let list: Vec<String> = missing
            .iter()
            .map(|m| format!("{} on {}", m.action, m.uri))
            .collect();
        ApiError::Forbidden {
            message: format!("permission denied: missing {}", list.join(", ")),
            missing,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                tracing::warn!(%why, "the store is unavailable");
                ApiError::Unavailable(
                    "the store is unavailable (etcd cannot be reached or has no quorum); retry later"
                        .into(),
                )
            }
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<AuditUnavailable> for ApiError {
    fn from(e: AuditUnavailable) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "request failed");
                ErrorBody {
                    error: "internal error; see the service log".into(),
                    missing: vec![],
                }
            }
            ApiError::Forbidden { message, missing } => ErrorBody {
                error: message,
                missing,
            },
            other => ErrorBody {
                error: other.to_string(),
                missing: vec![],
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
