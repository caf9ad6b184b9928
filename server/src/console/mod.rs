//! The web console at `/`: the seed page's Secrets tab, Shared view and Dashboard with the job
//! launch dialog, as server-rendered HTML and one small script, on the API's port.
//!
//! A browser holds a random session id in an HttpOnly cookie, never the token it logged in
//! with (`session`). Every page and action calls the domain layer with the session's user as
//! the caller: the same permissions, validation and audit as a bearer-token request. `pages`
//! renders, `actions` changes things.

mod actions;
mod html;
mod pages;
mod session;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::state::AppState;

/// The console's script and style sheet, embedded at build time.
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// Every console answer carries these: no inline script can run, no page frames it, nothing
/// is cached or sniffed, no URL leaks in a Referer.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; \
                   frame-ancestors 'none'";

/// What the console's handlers get: the service.
#[derive(Debug, Clone)]
pub(crate) struct Console {
    svc: AppState,
}

/// The console's routes, to merge into the API router.
pub fn routes(svc: AppState) -> Router<AppState> {
    let c = Console { svc };
    Router::new()
        .route("/", get(pages::root))
        .route("/login", post(session::login))
        .route("/logout", post(session::logout))
        .route("/secrets", get(pages::secrets))
        .route("/shared", get(pages::shared))
        .route("/dashboard", get(pages::dashboard))
        .route("/console/secrets", post(actions::add_secret))
        .route("/console/secrets/delete", post(actions::delete_secret))
        .route("/console/share", post(actions::share))
        .route("/console/revoke", post(actions::revoke_grant))
        .route("/console/jobs", post(actions::run_job))
        .route("/console/jobs/revoke", post(actions::revoke_job))
        .route("/assets/console.js", get(script))
        .route("/assets/console.css", get(style))
        .layer(axum::middleware::from_fn_with_state(c.clone(), headers))
        .with_state(c)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(kind: &'static str, text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], text).into_response()
}

/// Sets the security headers on every console answer, errors included; the answer to a
/// request with more than one session cookie (refused) expires them all.
async fn headers(
    axum::extract::State(c): axum::extract::State<Console>,
    req: Request,
    next: Next,
) -> Response {
    let duplicates = session::has_duplicate_cookies(req.headers(), c.svc.tls);
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if duplicates {
        for v in session::clear_cookies(c.svc.tls) {
            h.append(header::SET_COOKIE, v);
        }
    }
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

/// Refuses a state-changing request that a page of another origin may have sent: the
/// browser must say it is same-origin (`Sec-Fetch-Site: same-origin`), or, from a browser
/// without fetch metadata, send an `Origin` equal to this host. A page cannot forge either.
/// (`Origin` may be `null` from our own pages: they send no referrer.) Requests from tools
/// that send neither are refused too: the console is for browsers; tools have the API.
fn same_origin(h: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |why: String| ApiError::forbidden(format!("cross-origin request refused: {why}"));
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refuse("the request has no Host".into()))?;
    let origin = h.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("?"));
    if let Some(o) = origin.filter(|o| *o != "null") {
        let authority = o
            .strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
            .unwrap_or("");
        if !authority.eq_ignore_ascii_case(host) {
            return Err(refuse(format!(
                "Origin '{o}' is not this service ('{host}')"
            )));
        }
    }
    match h.get("sec-fetch-site").map(|v| v.as_bytes()) {
        Some(b"same-origin") => Ok(()),
        Some(other) => Err(refuse(format!(
            "Sec-Fetch-Site is '{}'",
            String::from_utf8_lossy(other)
        ))),
        None if origin.is_some_and(|o| o != "null") => Ok(()),
        None => Err(refuse(
            "the request has neither Sec-Fetch-Site nor an Origin of this service".into(),
        )),
    }
}

/// The console's answer for a failure: JSON for the script, with the service's message.
fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}
