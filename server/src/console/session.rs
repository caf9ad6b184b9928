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
use crate::admit::ClientAddr;
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::auth::{self, Principal, now_secs};
use crate::client_addr::client_bucket;
use crate::crypto::{hex, random_bytes};
use crate::error::ApiError;
use crate::records::Subject;
use crate::store::Table;

/// A session unused this long ends.
pub const IDLE_TTL: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after log-in, used or not.
pub const ABSOLUTE_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed log-ins one client address may make against one user (or against tokens that do
/// not exist) within `FAILURE_WINDOW`; then that address waits, for that user only, until the
/// window ends.
pub const MAX_FAILURES: u32 = 10;
/// Failed log-ins against one user from all addresses together within `FAILURE_WINDOW`: a
/// guesser rotating addresses (one per try) is stopped here, and the user waits at most the
/// window.
pub const MAX_USER_FAILURES: u32 = 10 * MAX_FAILURES;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// The session's last use is written back at most this often.
const TOUCH_EVERY_S: u64 = 60;
/// Windows the limiter remembers at most; past that, expired ones are dropped, then the oldest.
pub const MAX_WINDOWS: usize = 65_536;
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

/// Failed log-ins, in memory (each replica counts its own): per client address and target
/// user, and per target user. The target is the user of the token id presented, or nobody
/// (`""`) for an id that names no token; so failures from one address (a shared proxy's, say)
/// never refuse another user's correct token, and refuse anyone for the window at most.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    windows: Mutex<Windows>,
}

/// Whose failures a window counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Counted {
    /// From one client address (or an unknown one) against one target.
    Pair(Option<IpAddr>, Box<str>),
    /// Against one target user, from anywhere.
    User(Box<str>),
}

#[derive(Debug, Default)]
struct Windows {
    open: HashMap<Counted, (u32, Instant)>,
    /// Windows by when they opened, oldest first; an entry whose window has since been
    /// reopened (its time differs) is stale and skipped.
    order: std::collections::VecDeque<(Instant, Counted)>,
}

impl Windows {
    fn failures(&self, k: &Counted) -> u32 {
        match self.open.get(k) {
            Some((n, since)) if since.elapsed() < FAILURE_WINDOW => *n,
            _ => 0,
        }
    }

    fn wait(&self, k: &Counted) -> u64 {
        self.open.get(k).map_or(1, |(_, since)| {
            FAILURE_WINDOW
                .saturating_sub(since.elapsed())
                .as_secs()
                .max(1)
        })
    }

    fn count(&mut self, k: Counted) {
        self.expire();
        let now = Instant::now();
        if let Some((n, since)) = self.open.get_mut(&k)
            && since.elapsed() < FAILURE_WINDOW
        {
            *n += 1;
            return;
        }
        while self.open.len() >= MAX_WINDOWS {
            self.drop_oldest();
        }
        self.open.insert(k.clone(), (1, now));
        self.order.push_back((now, k));
    }

    /// Drops the windows that have ended, oldest first.
    fn expire(&mut self) {
        while self
            .order
            .front()
            .is_some_and(|(t, _)| t.elapsed() >= FAILURE_WINDOW)
        {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        let Some((t, k)) = self.order.pop_front() else {
            // Every window is in `order`; this cannot leave the table full.
            self.open.clear();
            return;
        };
        if self.open.get(&k).is_some_and(|(_, since)| *since == t) {
            self.open.remove(&k);
        }
    }
}

impl LoginLimiter {
    /// `Err(seconds to wait)` while log-ins from `addr` against `target` are refused.
    fn check(&self, addr: Option<IpAddr>, target: &str) -> Result<(), u64> {
        let w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let pair = Counted::Pair(addr.map(client_bucket), target.into());
        if w.failures(&pair) >= MAX_FAILURES {
            return Err(w.wait(&pair));
        }
        let user = Counted::User(target.into());
        if !target.is_empty() && w.failures(&user) >= MAX_USER_FAILURES {
            return Err(w.wait(&user));
        }
        Ok(())
    }

    fn failed(&self, addr: Option<IpAddr>, target: &str) {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        w.count(Counted::Pair(addr.map(client_bucket), target.into()));
        if !target.is_empty() {
            w.count(Counted::User(target.into()));
        }
    }

    /// Windows held, for tests.
    pub fn windows(&self) -> usize {
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .len()
    }
}

/// Whom a log-in with `token` tries to log in as: the user (or `~operator`, `~job`) of the
/// token id it names, `""` for an id that names no token or a token of the wrong shape.
async fn login_target(store: &dyn crate::store::Store, token: &str) -> Result<String, ApiError> {
    let id = token.split('.').nth(1).unwrap_or_default();
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(String::new());
    }
    Ok(
        match auth::load_token(store, id).await?.map(|t| t.subject) {
            Some(Subject::User { name }) => name,
            Some(Subject::Operator) => "~operator".into(),
            Some(Subject::Job { .. }) => "~job".into(),
            None => String::new(),
        },
    )
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
    /// The session the request's cookie names, if it is live; an ended or expired one is
    /// deleted.
    pub(super) async fn session(&self, h: &HeaderMap) -> Result<Option<Session>, ApiError> {
        let Some((user, id)) = cookie_id(h, self.svc.tls)?.and_then(parse_cookie) else {
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
/// the client's address.
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
    let target = match login_target(c.svc.store.as_ref(), token).await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    if let Err(wait) = c.svc.console.check(addr, &target) {
        return pages::login(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "too many failed log-ins with this token from this address; try again in {wait} s"
            )),
        );
    }
    let outcome = c
        .svc
        .auth
        .authenticate(c.svc.store.as_ref(), &c.svc.keys, token)
        .await;
    let user = match outcome {
        Ok(Principal::User(u)) => u,
        Ok(_) => {
            c.svc.console.failed(addr, &target);
            return pages::login(
                StatusCode::FORBIDDEN,
                Some(
                    "the console is for users: log in with a user token (the operator makes \
                     one with: neuro admin token add USER)",
                ),
            );
        }
        Err(e) => {
            c.svc.console.failed(addr, &target);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn fail(l: &LoginLimiter, addr: Option<IpAddr>, target: &str, times: u32) {
        for _ in 0..times {
            l.failed(addr, target);
        }
    }

    #[test]
    fn failures_refuse_one_address_for_one_target_only() {
        let l = LoginLimiter::default();
        let a = ip("127.0.0.1");
        // Ten guesses at tokens that do not exist, from a (a shared proxy, say)...
        fail(&l, a, "", MAX_FAILURES);
        assert!(l.check(a, "").is_err(), "more guesses from a");
        // ...refuse no real user's log-in from a.
        assert_eq!(l.check(a, "alice"), Ok(()));
        // Ten failures against alice from a refuse alice from a, for the window at most.
        fail(&l, a, "alice", MAX_FAILURES - 1);
        assert_eq!(l.check(a, "alice"), Ok(()));
        l.failed(a, "alice");
        let wait = l.check(a, "alice").unwrap_err();
        assert!(wait <= FAILURE_WINDOW.as_secs(), "{wait}");
        assert_eq!(l.check(ip("127.0.0.2"), "alice"), Ok(()), "another address");
        assert_eq!(l.check(a, "bob"), Ok(()), "another user");
        // An IPv6 client is one client across its /64.
        fail(&l, ip("2001:db8::1"), "bob", MAX_FAILURES);
        assert!(l.check(ip("2001:db8::ffff"), "bob").is_err());
        assert_eq!(l.check(ip("2001:db8:0:1::1"), "bob"), Ok(()));
    }

    #[test]
    fn a_guesser_rotating_addresses_is_stopped_per_user() {
        let l = LoginLimiter::default();
        for i in 0..MAX_USER_FAILURES {
            let addr = ip(&format!("127.0.{}.{}", i / 200, i % 200 + 1));
            assert_eq!(l.check(addr, "alice"), Ok(()), "try {i}");
            l.failed(addr, "alice");
        }
        assert!(l.check(ip("127.9.9.9"), "alice").is_err());
        assert_eq!(l.check(ip("127.9.9.9"), "bob"), Ok(()));
        // Tokens that name nobody are not pooled across addresses: nobody to protect.
        for i in 0..MAX_USER_FAILURES {
            l.failed(ip(&format!("10.0.{}.{}", i / 200, i % 200 + 1)), "");
        }
        assert_eq!(l.check(ip("10.9.9.9"), ""), Ok(()));
    }

    #[test]
    fn windows_end_and_a_full_table_drops_the_oldest() {
        let l = LoginLimiter::default();
        let a = ip("192.0.2.1");
        fail(&l, a, "alice", MAX_FAILURES);
        assert!(l.check(a, "alice").is_err());
        // The window opened longer ago than FAILURE_WINDOW: it is over.
        {
            let mut w = l.windows.lock().unwrap();
            let long_ago = Instant::now()
                .checked_sub(FAILURE_WINDOW + Duration::from_secs(1))
                .unwrap();
            for (_, since) in w.open.values_mut() {
                *since = long_ago;
            }
            for (t, _) in w.order.iter_mut() {
                *t = long_ago;
            }
        }
        assert_eq!(l.check(a, "alice"), Ok(()));
        l.failed(a, "alice");
        assert_eq!(l.windows(), 2, "the old windows went, the new ones stay");
        // Fill the table with other clients: it stays bounded, and a newcomer is still
        // counted (the oldest window makes room).
        for i in 0..MAX_WINDOWS as u32 {
            let b = i.to_be_bytes();
            l.failed(ip(&format!("10.{}.{}.{}", b[1], b[2], b[3])), "");
        }
        assert_eq!(l.windows(), MAX_WINDOWS);
        let newcomer = ip("198.51.100.7");
        fail(&l, newcomer, "", MAX_FAILURES);
        assert!(l.check(newcomer, "").is_err(), "a newcomer is limited");
        assert_eq!(l.windows(), MAX_WINDOWS);
        assert_eq!(l.check(a, "alice"), Ok(()), "the oldest window made room");
    }

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
