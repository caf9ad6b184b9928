//! The console's side of sessions: the cookie that carries a session's id (`USER.ID`,
//! HttpOnly, SameSite=Strict, `__Host-` over TLS), log-in with its limit on failed attempts,
//! and log-out. The sessions themselves are the domain's (`domain::sessions`).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::{Console, pages, same_origin};
use crate::admit::ClientAddr;
use crate::domain::DomainError;
use crate::domain::sessions::{ABSOLUTE_TTL, Session};
use crate::error::ApiError;

/// The session cookie over plain HTTP, and over TLS: a `__Host-` cookie must be `Secure`, have
/// `Path=/` and no `Domain`, so no page of another port or subdomain over plain HTTP can set
/// one.
const COOKIE: &str = "neuro_session";
const COOKIE_TLS: &str = "__Host-neuro_session";
/// Every path a console route answers at, and their directories: a cookie planted with one of
/// these paths is sent with the console's requests, so refusing a request for a second
/// session cookie expires the cookie at each of them.
const COOKIE_PATHS: &[&str] = &[
    "/",
    "/login",
    "/logout",
    "/secrets",
    "/shared",
    "/dashboard",
    "/assets",
    "/assets/",
    "/console",
    "/console/",
    "/console/secrets",
    "/console/secrets/",
    "/console/secrets/delete",
    "/console/share",
    "/console/revoke",
    "/console/jobs",
    "/console/jobs/",
    "/console/jobs/revoke",
];

/// The cookie's value: `USER.ID` (a user name holds no '.'; the id is 43 base64url
/// characters). `None` when it is not that shape.
fn parse_cookie(value: &str) -> Option<(&str, &str)> {
    let (user, id) = value.split_once('.')?;
    secrets_core::UserName::new(user).ok()?;
    (id.len() == 43).then_some((user, id))
}

/// The session cookie's name on this service (`__Host-` over TLS).
fn cookie_name(tls: bool) -> &'static str {
    if tls { COOKIE_TLS } else { COOKIE }
}

/// The value of the request's one session cookie. Two or more are refused: a page on another
/// port of this host can set a cookie for it (cookies know no ports), and with two the
/// request's session would be whichever the browser sent first.
fn cookie_id(h: &HeaderMap, tls: bool) -> Result<Option<&str>, ApiError> {
    let name = cookie_name(tls);
    let mut found = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v);
    let first = found.next();
    if found.next().is_some() {
        return Err(ApiError::BadRequest(
            "the request carries more than one session cookie (another site on this host may \
             have set one); they have been cleared: log in again"
                .into(),
        ));
    }
    Ok(first)
}

/// Whether the request carries more than one session cookie (see `cookie_id`).
pub(super) fn has_duplicate_cookies(h: &HeaderMap, tls: bool) -> bool {
    cookie_id(h, tls).is_err()
}

/// `Set-Cookie` values that expire the session cookie at every console path: the answer to a
/// request with more than one, so that the planted one goes too (where it was set without a
/// `Domain`; else the browser's "clear site data" does it).
pub(super) fn clear_cookies(tls: bool) -> impl Iterator<Item = HeaderValue> {
    COOKIE_PATHS.iter().filter_map(move |path| {
        let secure = if tls { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict{secure}",
            cookie_name(tls)
        ))
        .ok()
    })
}

impl Console {
    /// The session the request's cookie names, if it is live.
    pub(super) async fn session(&self, h: &HeaderMap) -> Result<Option<Session>, ApiError> {
        let Some((user, id)) = cookie_id(h, self.svc.tls)?.and_then(parse_cookie) else {
            return Ok(None);
        };
        Ok(self.svc.domain.session(user, id).await?)
    }
}

fn cookie(value: &str, max_age: u64, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let name = cookie_name(tls);
    let c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /login`: a user token opens a session; anything else shows why, and counts against
/// the client's address and the user the token names.
pub(super) async fn login(
    State(c): State<Console>,
    client: Option<Extension<ClientAddr>>,
    h: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let token = zeroize::Zeroizing::new(form.token);
    let addr = client.and_then(|Extension(ClientAddr(a))| a);
    let tls = c.svc.tls;
    if let Err(e) = same_origin(&h) {
        return pages::login(StatusCode::FORBIDDEN, Some(&e.to_string()));
    }
    let token = token.trim();
    let domain = &c.svc.domain;
    let target = match domain.login_target(token).await {
        Ok(t) => t,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(wait) = c.svc.logins.check(addr, &target) {
        return pages::login(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "too many failed log-ins with this token from this address; try again in {wait} s"
            )),
        );
    }
    let opened = match domain.open_session(token).await {
        Ok(o) => o,
        Err(e) => {
            if matches!(
                e,
                DomainError::Unauthenticated(_) | DomainError::Forbidden { .. }
            ) {
                c.svc.logins.failed(addr, &target);
            }
            let e = ApiError::from(e);
            let message = match e {
                ApiError::Unauthenticated(_) => format!("log-in refused: {e}"),
                _ => e.to_string(),
            };
            return pages::login(e.status(), Some(&message));
        }
    };
    let mut resp = Redirect::to("/secrets").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        cookie(
            &format!("{}.{}", opened.user, opened.id),
            ABSOLUTE_TTL.as_secs(),
            tls,
        ),
    );
    resp
}

#[derive(Debug, Deserialize)]
pub(super) struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`: the session's record is deleted, so the cookie opens nothing any more.
pub(super) async fn logout(
    State(c): State<Console>,
    h: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    let tls = c.svc.tls;
    if let Err(e) = same_origin(&h) {
        return e.into_response();
    }
    match c.session(&h).await {
        Ok(Some(s)) => {
            if let Err(e) = s.check_csrf(&form.csrf) {
                return ApiError::from(e).into_response();
            }
            if let Err(e) = c.svc.domain.close_session(&s).await {
                return ApiError::from(e).into_response();
            }
        }
        Ok(None) => {}
        Err(e) => return e.into_response(),
    }
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, tls));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_two_session_cookies_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("neuro_session=a.x"),
        );
        assert_eq!(cookie_id(&h, false).unwrap(), Some("a.x"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("other=1; neuro_session=b.y"),
        );
        assert!(cookie_id(&h, false).is_err());
        assert!(has_duplicate_cookies(&h, false));
        // Over TLS only the __Host- cookie counts: a planted plain one is never used.
        assert_eq!(cookie_id(&h, true).unwrap(), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("neuro_session=b.y; __Host-neuro_session=a.x"),
        );
        assert_eq!(cookie_id(&h, true).unwrap(), Some("a.x"));
        let cleared: Vec<HeaderValue> = clear_cookies(true).collect();
        assert_eq!(cleared.len(), COOKIE_PATHS.len());
        assert!(
            cleared
                .iter()
                .all(|v| v.to_str().unwrap().starts_with("__Host-neuro_session=;")),
            "{cleared:?}"
        );
    }
}
