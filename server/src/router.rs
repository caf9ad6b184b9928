//! The routers: the API and the console behind admission (`app`), and the operators' router
//! of `--metrics-listen` (`ops_app`).

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::admit::{self, MAX_BODY};
use crate::api::ops;
use crate::error::ApiError;
use crate::state::AppState;

async fn no_route(method: Method, uri: Uri) -> Response {
    ApiError::NotFound(format!("no route for {method} {}", uri.path())).into_response()
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    ApiError::MethodNotAllowed(format!("method {method} is not allowed on {}", uri.path()))
        .into_response()
}

/// Everything `secretd` serves on its API port, ready to serve or to drive in tests without a
/// socket.
pub fn app(state: AppState) -> Router {
    // Probes and metrics stay outside admission: they must answer without the store (healthz)
    // and without a store sync (an etcd without quorum makes readyz say so, not fail).
    let probes = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::scrape_operator));
    crate::api::routes()
        .merge(crate::console::routes(state.clone()))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admit::admit,
        ))
        .merge(probes)
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(state)
}

/// The router of `secretd --metrics-listen`: `/metrics` for anyone who reaches the address,
/// and the probes.
pub fn ops_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::scrape))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(no_route)
        .with_state(state)
}
