//! Jobs: creating one (its URIs checked, its token issued) and deleting it (its token revoked).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrets_core::api::{JobCreated, JobSpec};

use super::extract::parse_job;
use super::{ApiJson, Caller};
use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn create_job(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<(StatusCode, Json<JobCreated>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.domain.create_job(&p, &spec).await?),
    ))
}

pub(super) async fn delete_job(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_job(&id)?;
    s.domain.delete_job(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
