//! The operator's routes: users (create, remove with everything that speaks for them) and
//! their tokens (issue, list, revoke).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use secrets_core::api::{CreateUser, TokenInfo, TokenIssued, UserRemoved};

use super::extract::{parse_user, query_map};
use super::{ApiJson, Caller};
use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn create_user(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    let issued = s.domain.create_user(&p, &body.name).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

pub(super) async fn issue_token(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(user): Path<String>,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    p.need_operator()?;
    let user = parse_user(&user)?;
    Ok((
        StatusCode::CREATED,
        Json(s.domain.issue_token(&p, &user).await?),
    ))
}

pub(super) async fn list_tokens(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(user): Path<String>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    p.need_operator()?;
    let user = parse_user(&user)?;
    Ok(Json(s.domain.list_tokens(&p, &user).await?))
}

pub(super) async fn revoke_token(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.domain.revoke_token(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Offboarding (`domain::Domain::remove_user`); `?secrets=keep|delete` is required.
pub(super) async fn remove_user(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(user): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<UserRemoved>, ApiError> {
    p.need_operator()?;
    let q = query_map(q)?;
    let user = parse_user(&user)?;
    let delete_secrets = match q.get("secrets").map(String::as_str) {
        Some("keep") => false,
        Some("delete") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "query parameter 'secrets' must be 'keep' or 'delete', not '{other}'"
            )));
        }
        None => {
            return Err(ApiError::BadRequest(format!(
                "missing query parameter 'secrets': say whether to 'keep' or 'delete' the \
                 secrets of user '{user}'"
            )));
        }
    };
    Ok(Json(s.domain.remove_user(&p, &user, delete_secrets).await?))
}
