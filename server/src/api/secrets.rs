//! Secrets: write, list, read (the hand-written value body), delete, and resolve (many reads
//! in one request, for jobs). The answers that carry values hold a share of the answer budget
//! until they have been sent, and are wiped then.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrets_core::SecretUri;
use secrets_core::api::{PutSecret, ResolveRequest, ResolveResponse, SecretInfo, SecretVersion};

use super::extract::parse_names;
use super::{ApiJson, Caller};
use crate::error::ApiError;
use crate::state::AppState;
use crate::values::Opened;

/// Answers larger than this are encoded off the async workers.
const BLOCKING_ENCODE: usize = 64 * 1024;

pub(super) async fn put_secret(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiJson(body): ApiJson<PutSecret>,
) -> Result<(StatusCode, Json<SecretVersion>), ApiError> {
    let v = s
        .domain
        .put_secret(&p, body.owner, body.key, &body.value)
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// The caller's own secrets first, then those shared with it, each group by owner and key.
pub(super) async fn list_secrets(
    State(s): State<AppState>,
    Caller(p): Caller,
) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    Ok(Json(s.domain.list_secrets(&p).await?))
}

pub(super) async fn get_secret(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path((owner, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (owner, key) = parse_names(&owner, &key)?;
    let (uri, value) = s.domain.read_secret(&p, owner, key).await?;
    let share = s.answers.take(value.base64.len() + 256, &p)?;
    Ok(crate::limits::hold(value_response(&uri, &value), share))
}

/// The `SecretValue` body, written by hand: the hot path of every read. Names, URIs and base64
/// never need JSON escaping, so the opened value's base64 goes straight into the body.
fn value_response(uri: &SecretUri, value: &Opened) -> Response {
    use std::fmt::Write as _;
    let mut body = String::with_capacity(160 + value.base64.len());
    let _ = write!(
        body,
        r#"{{"key":"{}","owner":"{}","uri":"{uri}","version":{},"value":""#,
        uri.key, uri.owner, value.version
    );
    body.push_str(&value.base64);
    body.push_str("\"}");
    // Wiped once hyper has sent it.
    let body = axum::body::Bytes::from_owner(crate::crypto::Wiped(body.into_bytes()));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(super) async fn delete_secret(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path((owner, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (owner, key) = parse_names(&owner, &key)?;
    s.domain.delete_secret(&p, owner, key).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn resolve(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<ResolveRequest>,
) -> Result<Response, ApiError> {
    let found = s.domain.resolve(&p, req.uris).await?;
    let results = found.results;
    // The values, their base64 and the JSON around them stay in memory until a slow client
    // has read them all.
    let share = s
        .answers
        .take(found.value_bytes * 7 / 3 + 256 * results.len(), &p)?;
    let total = found.value_bytes;
    let answer = ResolveResponse { results };
    let body = if total > BLOCKING_ENCODE {
        tokio::task::spawn_blocking(move || serde_json::to_vec(&answer))
            .await
            .map_err(|e| ApiError::Internal(format!("encoding a resolve answer: {e}")))?
    } else {
        serde_json::to_vec(&answer)
    }
    .map_err(|e| ApiError::Internal(format!("encoding a resolve answer: {e}")))?;
    let body = axum::body::Bytes::from_owner(crate::crypto::Wiped(body));
    Ok(crate::limits::hold(
        ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        share,
    ))
}

#[cfg(test)]
mod tests {
    use secrets_core::api::SecretValue;
    use secrets_core::{ClusterName, MAX_VALUE_LEN, SecretBytes, SecretKey, UserName};

    use super::*;

    /// The hand-written body reads back through `SecretValue`'s serde as what was stored, for
    /// bytes that JSON or base64 could trip on.
    #[tokio::test]
    async fn value_body_round_trips_through_secret_value() {
        let uri = SecretUri {
            cluster: ClusterName::new("neuro-compute").unwrap(),
            owner: UserName::new("alice").unwrap(),
            key: SecretKey::new("db.pass-1_x").unwrap(),
        };
        let all: Vec<u8> = (0..=255).collect();
        let cases: Vec<Vec<u8>> = vec![
            b"x".to_vec(),
            b"\"}\\\n\r\t\0".to_vec(),
            "ünïcødé ✓ \u{2028}\u{feff}".as_bytes().to_vec(),
            vec![0xff, 0xfe, 0x80, 0xc0],
            b"ab".to_vec(),
            b"abc".to_vec(),
            all.clone(),
            all.repeat(4096),
            vec![0; MAX_VALUE_LEN],
        ];
        for value in cases {
            let opened = crate::values::ValueCache::new(0).insert(
                "alice/db.pass-1_x",
                7,
                &[],
                SecretBytes::new(value.clone()),
            );
            let resp = value_response(&uri, &opened);
            assert_eq!(
                resp.headers()[header::CONTENT_TYPE],
                "application/json",
                "content type"
            );
            let body = axum::body::to_bytes(resp.into_body(), 4 << 20)
                .await
                .unwrap();
            let v: SecretValue = serde_json::from_slice(&body).unwrap();
            assert_eq!(v.key, uri.key.as_str());
            assert_eq!(v.owner, uri.owner.as_str());
            assert_eq!(v.uri, uri.to_string());
            assert_eq!(v.version, 7);
            assert!(
                v.value.expose() == value.as_slice(),
                "{} bytes",
                value.len()
            );
        }
    }
}
