//! Grants: sharing (`grant`), revoking, and listing what a user holds and what it shared.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use secrets_core::api::{Grant, SharedGrant};

use super::extract::{parse_user, query_map};
use super::{ApiJson, Caller};
use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn grant(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(user): Path<String>,
    ApiJson(grants): ApiJson<Vec<Grant>>,
) -> Result<(StatusCode, Json<Vec<Grant>>), ApiError> {
    let grantee = parse_user(&user)?;
    let out = s.domain.grant(&p, &grantee, &grants).await?;
    Ok((StatusCode::CREATED, Json(out)))
}

/// What `user` holds: its own namespace (manage), then its grants by URI.
pub(super) async fn list_permissions(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(user): Path<String>,
) -> Result<Json<Vec<Grant>>, ApiError> {
    let user = parse_user(&user)?;
    Ok(Json(s.domain.list_permissions(&p, &user).await?))
}

/// The grants on `user`'s secrets and those it gave, by URI then grantee.
pub(super) async fn list_shared(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(user): Path<String>,
) -> Result<Json<Vec<SharedGrant>>, ApiError> {
    let user = parse_user(&user)?;
    Ok(Json(s.domain.list_shared(&p, &user).await?))
}

pub(super) async fn revoke(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(user): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<StatusCode, ApiError> {
    let q = query_map(q)?;
    let grantee = parse_user(&user)?;
    let uri = q
        .get("uri")
        .ok_or_else(|| ApiError::BadRequest("missing query parameter 'uri'".into()))?;
    s.domain.revoke(&p, &grantee, uri).await?;
    Ok(StatusCode::NO_CONTENT)
}
