//! The one place where failures become HTTP answers (`{"error": ...}` bodies): the domain's
//! (`From<DomainError>`) and the transport's own (a method, a media type, a body too slow or
//! too large, too many requests in flight).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrets_core::api::{ErrorBody, MissingPermission};

use crate::domain::DomainError;

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

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid(m) => ApiError::BadRequest(m),
            DomainError::Unauthenticated(m) => ApiError::Unauthenticated(m),
            DomainError::Forbidden { message, missing } => ApiError::Forbidden { message, missing },
            DomainError::NotFound(m) => ApiError::NotFound(m),
            DomainError::Conflict(m) => ApiError::Conflict(m),
            DomainError::TooLarge(m) => ApiError::PayloadTooLarge(m),
            DomainError::Unavailable(m) => ApiError::Unavailable(m),
            DomainError::Internal(m) => ApiError::Internal(m),
        }
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
