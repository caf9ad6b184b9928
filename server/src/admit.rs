//! Admission, the router's outer layer (`admit`): authenticates a request's bearer token (the
//! one place a bearer token is checked on the way in; the `Caller` extractor takes the
//! outcome) and counts the request in flight (`limits::InFlight`) until its answer has been
//! sent, per token and per user, or, for a request without a valid token that carries a body,
//! as anonymous, per client address; then reads the body within `BODY_TIMEOUT` and
//! `MAX_BODY` before the handler runs (`buffered`), and checks the caller again once the body
//! is in (a user removed or a token revoked while a body trickled in is refused).

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::domain::Principal;
use crate::error::ApiError;
use crate::limits::hold;
use crate::state::AppState;

/// Request bodies larger than this are refused with 413: a 1 MiB value is about 1.4 MiB of
/// base64 and JSON.
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// How long a request body may take to arrive, whatever its pace.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The outcome of authenticating a request's bearer token, left for the `Caller` extractor.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Result<Principal, ApiError>);

/// The client's address as the per-address limits see it (`client_addr`), in a request's
/// extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

/// The bearer token of a request: `None` without an Authorization header, `Err` when it is
/// not `Bearer TOKEN`.
pub fn bearer(headers: &HeaderMap) -> Option<Result<&str, ApiError>> {
    let h = headers.get(header::AUTHORIZATION)?;
    Some(
        h.to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthenticated("expected an 'Authorization: Bearer TOKEN' header".into())
            }),
    )
}

/// The id part of a well-formed token (`nst.ID.SECRET`); only authenticated tokens get here.
fn token_id(token: &str) -> &str {
    crate::domain::auth::token_parts(token).map_or("", |(id, _)| id)
}

/// The middleware: authenticates, admits, reads the body (`buffered`), and keeps the places
/// until the answer has been sent (or the connection dropped): a client that reads its answer
/// slowly still has its request in flight. A request without a valid token that has a body
/// takes an anonymous place; one without a body only runs its handler (nothing it sends can
/// hold it).
pub async fn admit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    use http_body::Body as _;
    // Reads in this request see every write acknowledged before it arrived, on any replica.
    if let Err(e) = s.domain.store.sync().await {
        return ApiError::from(crate::domain::DomainError::from(e)).into_response();
    }
    let (mut parts, body) = req.into_parts();
    let with_body = body.size_hint().exact() != Some(0);
    let presented =
        bearer(&parts.headers).map(|b| b.map(|t| zeroize::Zeroizing::new(t.to_owned())));
    let mut place = None;
    let outcome = match &presented {
        None => Err(ApiError::Unauthenticated("missing bearer token".into())),
        Some(Err(e)) => Err(e.clone()),
        Some(Ok(token)) => {
            let outcome = s.domain.authenticate(token).await.map_err(ApiError::from);
            if let Ok(p) = &outcome {
                match s.inflight.admit(token_id(token), p) {
                    Ok(a) => place = Some(a),
                    Err(e) => return e.into_response(),
                }
            }
            outcome
        }
    };
    if outcome.is_err() {
        // The client's address counts only for requests without a valid token: anonymous
        // places, and the console's log-in limit.
        let peer = parts
            .extensions
            .get::<crate::serve::Peer>()
            .and_then(|p| p.addr)
            .map(|a| a.ip());
        let client = crate::client_addr::client_addr(peer, &parts.headers, &s.trusted_proxies);
        parts.extensions.insert(ClientAddr(client));
        if with_body {
            match s.inflight.admit_anonymous(client) {
                Ok(a) => place = Some(a),
                Err(e) => return e.into_response(),
            }
        }
    }
    parts.extensions.insert(Authenticated(outcome));
    let req = match with_body {
        false => Request::from_parts(parts, body),
        true => match buffered(&s, parts, body, presented).await {
            Ok(req) => req,
            Err(resp) => return resp,
        },
    };
    let resp = next.run(req).await;
    match place {
        Some(place) => hold(resp, place),
        None => resp,
    }
}

/// The request with its whole body read, on every route (the console's included), before its
/// handler runs: at most `MAX_BODY` bytes (413), within `BODY_TIMEOUT` whatever its pace
/// (408). The request holds its place in flight meanwhile, so a client trickling bodies holds
/// at most its share of the connections, and only so long. Refused before the whole body was
/// read, hyper closes the connection after the answer rather than wait for the rest, so such
/// a connection holds no slot.
async fn buffered(
    s: &AppState,
    mut parts: axum::http::request::Parts,
    body: axum::body::Body,
    presented: Option<Result<zeroize::Zeroizing<String>, ApiError>>,
) -> Result<Request, Response> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > MAX_BODY as u64) {
        if n <= DRAIN_AT_MOST {
            drain(body).await;
        }
        return Err(too_large().into_response());
    }
    let bytes = read_body(body).await.map_err(IntoResponse::into_response)?;
    // The caller again, now that the body is in: it may have taken up to BODY_TIMEOUT.
    if let (Some(Authenticated(Ok(_))), Some(Ok(token))) =
        (parts.extensions.get::<Authenticated>(), presented)
        && let Err(e) = s.domain.authenticate(&token).await
    {
        parts
            .extensions
            .insert(Authenticated(Err(ApiError::from(e))));
    }
    Ok(Request::from_parts(parts, bytes.into()))
}

/// A body declared too large but not more than this is read and dropped before the 413, within
/// `BODY_TIMEOUT`: refused unread, hyper closes the connection while the client is still
/// sending, and the client's next write (or read) meets a reset instead of the answer.
const DRAIN_AT_MOST: u64 = 4 * MAX_BODY as u64;

/// Reads and drops `body`, for at most `BODY_TIMEOUT`.
async fn drain(mut body: axum::body::Body) {
    use http_body_util::BodyExt as _;
    let _ = tokio::time::timeout(BODY_TIMEOUT, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!("request body is larger than {MAX_BODY} bytes"))
}

/// All of `body`: at most `MAX_BODY` bytes (413), within `BODY_TIMEOUT` (408).
async fn read_body(body: axum::body::Body) -> Result<axum::body::Bytes, ApiError> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let limit = std::error::Error::source(&e)
                .is_some_and(|c| c.is::<http_body_util::LengthLimitError>());
            Err(match limit {
                true => too_large(),
                false => ApiError::BadRequest(format!("reading the request body: {e}")),
            })
        }
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    /// A body that starts and never ends (a client trickling, or gone silent) is cut off at
    /// `BODY_TIMEOUT` with 408, whatever its pace; one past `MAX_BODY` with 413. (That every
    /// route, the console's included, goes through it: the end-to-end trickle test.)
    #[tokio::test(start_paused = true)]
    async fn bodies_end_in_time_and_in_size() {
        let never = futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        let t0 = tokio::time::Instant::now();
        let err = read_body(axum::body::Body::from_stream(never))
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT, "{err}");
        assert_eq!(t0.elapsed(), BODY_TIMEOUT);
        let big = axum::body::Body::from(vec![b' '; MAX_BODY + 1]);
        let err = read_body(big).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE, "{err}");
        let ok = read_body(axum::body::Body::from(vec![b'x'; MAX_BODY]))
            .await
            .unwrap();
        assert_eq!(ok.len(), MAX_BODY);
    }
}
