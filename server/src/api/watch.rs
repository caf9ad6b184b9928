//! The change feed: a long poll (`domain::Domain::watch`) with its query parsed.

use axum::Json;
use axum::extract::{Query, State};
use secrets_core::api::WatchResponse;

use super::Caller;
use super::extract::query_map;
use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn watch(
    State(s): State<AppState>,
    Caller(p): Caller,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<WatchResponse>, ApiError> {
    let q = query_map(q)?;
    p.need_user_or_job("watching needs a user or job token")?;
    let num = |name: &str, default: u64| -> Result<u64, ApiError> {
        q.get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "query parameter '{name}' must be a whole number, not '{v}'"
                ))
            })
        })
    };
    let wait = std::time::Duration::from_secs(num("timeout_s", 30)?);
    let since = q.get("since").map(|_| num("since", 0)).transpose()?;
    Ok(Json(s.domain.watch(&p, since, wait).await?))
}
