//! Extractors and parsers of the request's edge: the caller (`Caller`), JSON bodies
//! (`ApiJson`), query maps and names in paths, each failure in the API's error shape.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use secrets_core::{JobId, SecretKey, UserName};
use serde::de::DeserializeOwned;

use crate::admit::{Authenticated, MAX_BODY};
use crate::domain::Principal;
use crate::error::ApiError;

/// The authenticated caller: `admit` checked the bearer token (and again once
/// the body was in); a request without a valid one stops here with 401.
#[derive(Debug)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.extensions.remove::<Authenticated>() {
            Some(Authenticated(outcome)) => outcome.map(Caller),
            None => Err(ApiError::Unauthenticated("missing bearer token".into())),
        }
    }
}

/// `Json<T>` whose rejections answer in the API's error shape.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(match rej {
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                    "expected a 'Content-Type: application/json' request body".into(),
                ),
                JsonRejection::JsonSyntaxError(e) => {
                    ApiError::BadRequest(format!("malformed JSON: {}", e.body_text()))
                }
                JsonRejection::JsonDataError(e) => {
                    ApiError::BadRequest(format!("invalid request: {}", e.body_text()))
                }
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge(format!(
                        "request body is larger than {MAX_BODY} bytes"
                    ))
                }
                other => ApiError::BadRequest(other.body_text()),
            }),
        }
    }
}

/// The query of a request as a map; a parameter given twice is refused rather than half
/// obeyed.
pub(super) fn query_map(q: Vec<(String, String)>) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for (k, v) in q {
        if out.contains_key(&k) {
            return Err(ApiError::BadRequest(format!(
                "query parameter '{k}' is given more than once; give it once per request"
            )));
        }
        out.insert(k, v);
    }
    Ok(out)
}

pub(super) fn parse_names(owner: &str, key: &str) -> Result<(UserName, SecretKey), ApiError> {
    let owner = parse_user(owner)?;
    let key = SecretKey::new(key).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok((owner, key))
}

pub(super) fn parse_user(user: &str) -> Result<UserName, ApiError> {
    UserName::new(user).map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub(super) fn parse_job(id: &str) -> Result<JobId, ApiError> {
    JobId::new(id).map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_parameter_given_twice_is_refused() {
        let q = |pairs: &[(&str, &str)]| {
            query_map(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(q(&[("a", "1"), ("b", "2")]).unwrap().len(), 2);
        let err = q(&[("uri", "x"), ("uri", "y")]).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains("'uri'"), "{err}");
    }
}
