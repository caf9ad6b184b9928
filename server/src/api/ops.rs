//! The operators' routes: health and metrics. `GET /api/v1/ping` ("Pong" while the store can write), `GET /healthz` (the process
//! answers; touches nothing) and `GET /readyz` (ready to serve: the store writable, the audit
//! log writable, the master key loaded; 503 with the reasons otherwise). None needs a token:
//! the answers name failures (an I/O error, the audit log's path), never a value or a name
//! from the store. `GET /metrics`: on the API port with the operator token, on
//! `--metrics-listen` for anyone who reaches that address.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use secrets_core::api::ErrorBody;

use crate::domain::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// Answers 200 "Pong" when the store is healthy, else 503 `{"error": "the store cannot write:
/// ..."}`. The reason names the store's failure (an I/O error), never a value.
pub async fn ping(State(s): State<AppState>) -> Response {
    match s.domain.store.health().await {
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

/// Liveness: 200 "ok" whenever the process answers HTTP; no store or file access.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// The answer of `/readyz`: `ready`, and one entry per check, `"ok"` or why not.
#[derive(Debug, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub store: String,
    pub audit: String,
    pub master_key: String,
}

/// The probe value sealed and opened by `/readyz`'s master key check.
const PROBE: &[u8] = b"readyz";

/// Readiness: 200 when the store can write (`Store::health`), the audit log takes lines and
/// the master key seals and opens; 503 otherwise, with each check's reason.
pub async fn readyz(State(s): State<AppState>) -> Response {
    let ok = || "ok".to_owned();
    let store = match s.domain.store.health().await {
        Ok(()) => ok(),
        Err(why) => format!("the store cannot write: {why}"),
    };
    let audit = match s.domain.audit.check() {
        Ok(()) => ok(),
        Err(e) => e.to_string(),
    };
    let sealed = s.domain.keys.seal("readyz/probe", PROBE);
    let master_key = match s.domain.keys.open("readyz/probe", &sealed) {
        Ok(p) if p.as_slice() == PROBE => ok(),
        _ => "the master key does not open what it sealed".to_owned(),
    };
    let ready = [&store, &audit, &master_key].iter().all(|c| *c == "ok");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        store,
        audit,
        master_key,
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics` on `--metrics-listen`: anyone who reaches that address reads them.
pub async fn scrape(State(s): State<AppState>) -> Response {
    let d = &s.domain;
    let body = crate::metrics::global().render(
        d.audit.queue_depth(),
        d.audit.check().is_ok(),
        d.values.held(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `GET /metrics` on the API port: the operator token only (401 without a token, 403 with
/// another one).
pub async fn scrape_operator(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let token = match crate::admit::bearer(&headers) {
        None => {
            return ApiError::Unauthenticated(
                "the metrics on the API port need the operator token (or use --metrics-listen)"
                    .into(),
            )
            .into_response();
        }
        Some(Err(e)) => return e.into_response(),
        Some(Ok(t)) => zeroize::Zeroizing::new(t.to_owned()),
    };
    match s.domain.authenticate(&token).await {
        Ok(Principal::Operator) => scrape(State(s)).await,
        Ok(_) => ApiError::forbidden("only the operator reads the metrics on the API port")
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
