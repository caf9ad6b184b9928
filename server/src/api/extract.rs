//! Extractors and parsers of the request's edge: the caller (`Caller`), JSON bodies (`ApiJson`,
//! `read_json`), query maps and names in paths, each failure in the API's error shape.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use secrets_core::{ResourceUri, SecretKey, UserName};
use serde::de::DeserializeOwned;

use super::{AppState, BODY_TIMEOUT, MAX_BODY, Service};
use crate::admit::Authenticated;
use crate::auth::Principal;
use crate::error::ApiError;

/// The authenticated caller; a request without a valid bearer token stops here with 401.
#[derive(Debug)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Authenticated once already by `admit::admit` (the router's outer layer).
        if let Some(Authenticated(outcome)) = parts.extensions.remove::<Authenticated>() {
            return outcome.map(Caller);
        }
        let token = crate::admit::bearer(&parts.headers)
            .ok_or_else(|| ApiError::Unauthenticated("missing bearer token".into()))??;
        state
            .auth
            .authenticate(state.store.as_ref(), &state.keys, token)
            .await
            .map(Caller)
    }
}

impl Caller {
    /// The user behind a user token; jobs and the operator are refused with `why`.
    pub(super) fn user(&self, why: &str) -> Result<&UserName, ApiError> {
        match &self.0 {
            Principal::User(u) => Ok(u),
            Principal::Job { .. } => Err(ApiError::forbidden(format!(
                "a job token may only read its job's secrets; {why}"
            ))),
            Principal::Operator => Err(ApiError::forbidden(format!(
                "the operator token manages users and tokens; {why}"
            ))),
        }
    }

    pub(super) fn operator(&self) -> Result<(), ApiError> {
        match self.0 {
            Principal::Operator => Ok(()),
            _ => Err(ApiError::forbidden(
                "only the operator may manage users and tokens",
            )),
        }
    }
}

/// `Json<T>` whose rejections answer in the API's error shape.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    /// Reads the body, then authenticates the caller again: a body may take up to
    /// `BODY_TIMEOUT` to arrive, and a user removed or a token revoked meanwhile must not
    /// get its request through (the first check was at the request's head).
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let presented = crate::admit::bearer(req.headers())
            .map(|b| b.map(|t| zeroize::Zeroizing::new(t.to_owned())));
        let v = read_json::<T, _>(req, state).await?;
        if let Some(Ok(token)) = presented {
            state
                .auth
                .authenticate(state.store.as_ref(), &state.keys, &token)
                .await?;
        }
        Ok(ApiJson(v))
    }
}

/// A JSON body within `BODY_TIMEOUT`, its rejections in the API's error shape.
pub async fn read_json<T: DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<T, ApiError> {
    let read = tokio::time::timeout(BODY_TIMEOUT, Json::<T>::from_request(req, state));
    let Ok(read) = read.await else {
        return Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        )));
    };
    match read {
        Ok(Json(v)) => Ok(v),
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
                ApiError::PayloadTooLarge(format!("request body is larger than {MAX_BODY} bytes"))
            }
            other => ApiError::BadRequest(other.body_text()),
        }),
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

/// A grant's target as `me` wrote it, on this service's cluster.
pub(super) fn parse_target(s: &Service, me: &UserName, uri: &str) -> Result<ResourceUri, ApiError> {
    let target =
        ResourceUri::parse(uri, &s.ctx(me)).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if target.cluster != s.cluster {
        return Err(ApiError::BadRequest(format!(
            "'{target}' names cluster '{}'; this service is cluster '{}'",
            target.cluster, s.cluster
        )));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use axum::http::header;

    use super::*;

    /// A body that starts and never ends (a client trickling, or gone silent) is cut off at
    /// `BODY_TIMEOUT` with 408, whatever its pace.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_times_out() {
        let never = futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        let req = Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from_stream(never))
            .unwrap();
        let t0 = tokio::time::Instant::now();
        let err = read_json::<serde_json::Value, _>(req, &())
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT, "{err}");
        assert_eq!(t0.elapsed(), BODY_TIMEOUT);
    }

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
