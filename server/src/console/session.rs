//! Console sessions: log in with a user token, a random session id in an HttpOnly cookie, the
//! session's record in the store (`Table::Sessions`, keyed by the id's keyed hash as tokens
//! are), idle and absolute expiry, log out; and the per-address limit on failed log-ins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use super::{Console, pages, same_origin};
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::auth::{self, Principal, now_secs};
use crate::crypto::{hex, random_bytes};
use crate::error::ApiError;
use crate::serve::Peer;
use crate::store::Table;

/// A session unused this long ends.
pub const IDLE_TTL: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after log-in, used or not.
pub const ABSOLUTE_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed log-ins one client address may make within `FAILURE_WINDOW`.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// The session's last use is written back at most this often.
const TOUCH_EVERY_S: u64 = 60;
/// Addresses the limiter remembers at most; past that, the oldest windows are dropped.
const MAX_ADDRESSES: usize = 65_536;
const COOKIE: &str = "neuro_session";

/// What the store keeps of a session: never the token it was opened with.
#[derive(Debug, Serialize, Deserialize)]
struct SessionRecord {
    user: String,
    /// The id of the token it was opened with: revoking that token ends the session.
    token_id: String,
    created_at: u64,
    /// The log-in's time in microseconds: orders sessions opened within one second.
    #[serde(default)]
    created_us: u64,
    last_seen: u64,
    /// The per-session token every state-changing request carries (`X-CSRF-Token`).
    csrf: String,
}

/// A live session.
#[derive(Debug)]
pub(super) struct Session {
    pub principal: Principal,
    pub user: String,
    pub csrf: String,
    key: String,
    /// The id of the token the session was opened with (for the audit log).
    token_id: String,
}

impl Session {
    /// Checks the per-session CSRF token, in constant time.
    pub fn check_csrf(&self, presented: &str) -> Result<(), ApiError> {
        match bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes())) {
            true => Ok(()),
            false => Err(ApiError::forbidden(
                "cross-site request refused: the CSRF token does not match this session",
            )),
        }
    }
}

/// Failed log-ins per client address, in memory (each replica counts its own).
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginLimiter {
    /// `Err(seconds to wait)` while `addr` has used up its failures.
    fn check(&self, addr: Option<IpAddr>) -> Result<(), u64> {
        let Some(addr) = addr else { return Ok(()) };
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&addr) {
            Some((n, since)) if *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW => {
                Err((FAILURE_WINDOW - since.elapsed()).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    fn failed(&self, addr: Option<IpAddr>) {
        let Some(addr) = addr else { return };
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ADDRESSES {
            map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        if map.len() >= MAX_ADDRESSES {
            return;
        }
        let e = map.entry(addr).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

/// Sessions one user may have open at once; a log-in past it ends the one used the longest
/// ago, and expired ones are removed at every log-in.
pub const MAX_SESSIONS_PER_USER: usize = 16;

/// The store key of a session: `USER/` and the keyed hash of its id, so that a user's
/// sessions can be counted at log-in.
fn session_key(c: &Console, user: &str, id: &str) -> String {
    format!("{user}/{}", hex(&c.svc.keys.token_hash(id)))
}

/// The cookie's value: `USER.ID` (a user name holds no '.'; the id is 43 base64url
/// characters). `None` when it is not that shape.
fn parse_cookie(value: &str) -> Option<(&str, &str)> {
    let (user, id) = value.split_once('.')?;
    secrets_core::UserName::new(user).ok()?;
    (id.len() == 43).then_some((user, id))
}

/// At log-in: removes `user`'s expired sessions, then the least recently used ones until
/// one more fits under `MAX_SESSIONS_PER_USER`.
async fn make_room(store: &dyn crate::store::Store, user: &str) -> Result<(), ApiError> {
    let now = now_secs();
    let mut live = Vec::new();
    for (key, raw) in store.scan(Table::Sessions, &format!("{user}/")).await? {
        let rec: Option<SessionRecord> = crate::records::decode("console session", &raw).ok();
        match rec {
            Some(r) if !r.expired(now) => live.push((r.last_seen, r.created_us, key)),
            _ => {
                store.delete(Table::Sessions, &key).await?;
            }
        }
    }
    live.sort();
    let excess = (live.len() + 1).saturating_sub(MAX_SESSIONS_PER_USER);
    for (_, _, key) in live.into_iter().take(excess) {
        store.delete(Table::Sessions, &key).await?;
    }
    Ok(())
}

impl SessionRecord {
    fn expired(&self, now: u64) -> bool {
        now >= self.created_at + ABSOLUTE_TTL.as_secs()
            || now >= self.last_seen + IDLE_TTL.as_secs()
    }
}

fn cookie_id(h: &HeaderMap) -> Option<&str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

impl Console {
    /// The session the request's cookie names, if it is live; an ended or expired one is
    /// deleted.
    pub(super) async fn session(&self, h: &HeaderMap) -> Result<Option<Session>, ApiError> {
        let Some((user, id)) = cookie_id(h).and_then(parse_cookie) else {
            return Ok(None);
        };
        let key = session_key(self, user, id);
        let store = self.svc.store.as_ref();
        let Some(raw) = store.get(Table::Sessions, &key).await? else {
            return Ok(None);
        };
        let mut rec: SessionRecord = crate::records::decode("console session", &raw)?;
        let now = now_secs();
        let expired = rec.expired(now) || rec.user != user;
        // The token it was opened with must still be good, and its user the same user.
        let token_ok = match auth::load_token(store, &rec.token_id).await? {
            Some(t) => {
                !t.revoked
                    && t.expires_at.is_none_or(|e| e > now)
                    && t.incarnation.is_some()
                    && t.incarnation == auth::user_incarnation(store, &rec.user).await?
            }
            None => false,
        };
        let user = secrets_core::UserName::new(&rec.user).ok();
        let (false, true, Some(user)) = (expired, token_ok, user) else {
            store.delete(Table::Sessions, &key).await?;
            return Ok(None);
        };
        if now >= rec.last_seen + TOUCH_EVERY_S {
            rec.last_seen = now;
            store
                .put(Table::Sessions, &key, &crate::records::encode(&rec))
                .await?;
        }
        Ok(Some(Session {
            principal: Principal::User(user),
            user: rec.user,
            csrf: rec.csrf,
            key,
            token_id: rec.token_id,
        }))
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn cookie(value: &str, max_age: u64, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let c =
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /login`: a user token opens a session; anything else shows why, and counts against
/// the client's address.
pub(super) async fn login(
    State(c): State<Console>,
    peer: Option<Extension<Peer>>,
    h: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let token = zeroize::Zeroizing::new(form.token);
    let peer = peer.map(|Extension(p)| p);
    let addr = peer.and_then(|p| p.addr).map(|a| a.ip());
    let tls = peer.is_some_and(|p| p.tls);
    if let Err(e) = same_origin(&h) {
        return pages::login(StatusCode::FORBIDDEN, Some(&e.to_string()));
    }
    if let Err(wait) = c.svc.console.check(addr) {
        return pages::login(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "too many failed log-ins from this address; try again in {wait} s"
            )),
        );
    }
    let token = token.trim();
    let outcome = c
        .svc
        .auth
        .authenticate(c.svc.store.as_ref(), &c.svc.keys, token)
        .await;
    let user = match outcome {
        Ok(Principal::User(u)) => u,
        Ok(_) => {
            c.svc.console.failed(addr);
            return pages::login(
                StatusCode::FORBIDDEN,
                Some(
                    "the console is for users: log in with a user token (neuro admin token issue USER)",
                ),
            );
        }
        Err(e) => {
            c.svc.console.failed(addr);
            let status = e.status();
            return pages::login(status, Some(&format!("log-in refused: {e}")));
        }
    };
    let token_id = token.split('.').nth(1).unwrap_or_default().to_owned();
    // The audit log fails closed here too: no session it cannot record.
    let slot = match c.svc.audit.reserve() {
        Ok(slot) => slot,
        Err(e) => return pages::login(StatusCode::SERVICE_UNAVAILABLE, Some(&e.to_string())),
    };
    let event = AuditEvent::new(
        format!("user:{user}"),
        AuditAction::SessionOpen,
        None,
        Outcome::Ok,
    )
    .subject(format!("token:{token_id}"));
    let id = b64(&random_bytes::<32>());
    let now = now_secs();
    let rec = SessionRecord {
        user: user.to_string(),
        token_id,
        created_at: now,
        created_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        last_seen: now,
        csrf: b64(&random_bytes::<32>()),
    };
    if let Err(e) = make_room(c.svc.store.as_ref(), user.as_str()).await {
        return e.into_response();
    }
    let key = session_key(&c, user.as_str(), &id);
    let stored = c
        .svc
        .store
        .insert_new(Table::Sessions, &key, &crate::records::encode(&rec))
        .await;
    match stored {
        Ok(true) => {}
        Ok(false) => return pages::login(StatusCode::CONFLICT, Some("session id clash; retry")),
        Err(e) => return ApiError::from(e).into_response(),
    }
    slot.record(event);
    tracing::info!(user = %user, "console session opened");
    let mut resp = Redirect::to("/secrets").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&format!("{user}.{id}"), ABSOLUTE_TTL.as_secs(), tls),
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
    peer: Option<Extension<Peer>>,
    h: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    let tls = peer.is_some_and(|Extension(p)| p.tls);
    if let Err(e) = same_origin(&h) {
        return e.into_response();
    }
    match c.session(&h).await {
        Ok(Some(s)) => {
            if let Err(e) = s.check_csrf(&form.csrf) {
                return e.into_response();
            }
            let slot = match c.svc.audit.reserve() {
                Ok(slot) => slot,
                Err(e) => return ApiError::from(e).into_response(),
            };
            if let Err(e) = c.svc.store.delete(Table::Sessions, &s.key).await {
                return ApiError::from(e).into_response();
            }
            slot.record(
                AuditEvent::new(
                    format!("user:{}", s.user),
                    AuditAction::SessionClose,
                    None,
                    Outcome::Ok,
                )
                .subject(format!("token:{}", s.token_id)),
            );
            tracing::info!(user = %s.user, "console session closed");
        }
        Ok(None) => {}
        Err(e) => return e.into_response(),
    }
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, tls));
    resp
}
