//! `GET /api/v1/ping`: "Pong" while the store can write, 503 with the reason when it cannot.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrets_core::api::ErrorBody;

use crate::AppState;

/// Answers 200 "Pong" when the store is healthy, else 503 `{"error": "the store cannot write:
/// ..."}`. The reason names the store's failure (an I/O error), never a value.
pub async fn ping(State(s): State<AppState>) -> Response {
    match s.store.health().await {
        Ok(()) => "Pong".into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody {
                error: format!("the store cannot write: {why}"),
                ..Default::default()
            }),
        )
            .into_response(),
    }
}
