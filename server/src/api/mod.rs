//! The HTTP API `/api/v1`: thin adapters over the domain layer. Each handler extracts its
//! arguments (`extract`), calls one `domain::Domain` operation and maps its error once
//! (`error::ApiError`); what is HTTP's own (the answer budget, the hand-written value body,
//! query parameters) stays here.
//!
//! Handlers live by resource: `secrets` (values, lists, resolve), `watch`, `grants`, `jobs`,
//! `admin` (users and tokens) and `ops` (ping, probes, metrics).

mod admin;
mod extract;
mod grants;
mod jobs;
pub mod ops;
mod secrets;
mod watch;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{delete, get, post};
use secrets_core::api::WhoAmI;

pub use extract::{ApiJson, Caller};

use crate::state::AppState;

async fn whoami(State(s): State<AppState>, Caller(p): Caller) -> Json<WhoAmI> {
    Json(s.domain.whoami(&p))
}

/// The API's routes, without layers or fallbacks (`router::app` adds them).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/ping", get(ops::ping))
        .route("/api/v1/whoami", get(whoami))
        .route(
            "/api/v1/secrets",
            post(secrets::put_secret).get(secrets::list_secrets),
        )
        .route("/api/v1/secrets/resolve", post(secrets::resolve))
        .route("/api/v1/secrets/watch", get(watch::watch))
        .route(
            "/api/v1/secrets/{owner}/{key}",
            get(secrets::get_secret).delete(secrets::delete_secret),
        )
        .route(
            "/api/v1/users/{user}/permissions",
            post(grants::grant)
                .get(grants::list_permissions)
                .delete(grants::revoke),
        )
        .route(
            "/api/v1/users/{user}/permissions/shared",
            get(grants::list_shared),
        )
        .route("/api/v1/jobs", post(jobs::create_job))
        .route("/api/v1/jobs/{id}", delete(jobs::delete_job))
        .route("/api/v1/admin/users", post(admin::create_user))
        .route("/api/v1/admin/users/{user}", delete(admin::remove_user))
        .route(
            "/api/v1/admin/users/{user}/tokens",
            post(admin::issue_token).get(admin::list_tokens),
        )
        .route("/api/v1/admin/tokens/{id}", delete(admin::revoke_token))
}
