//! Admission: every request with a bearer token is authenticated once, here, and counted
//! against two limits while it is in flight (its body being read, a watch waiting, the
//! handler running, its answer being sent): `PER_TOKEN` requests per token and `PER_USER` per
//! user, a user's jobs included. A client with a valid token can thus hold only so many of the service's
//! connections busy (a slow body, thousands of long polls), and the connection cap's eviction of
//! idle connections keeps room for everyone else.
//!
//! Requests without a valid token (the console's log-in and forms, a wrong token) that carry a
//! body have a budget of their own: `anonymous` places, a quarter of the cap in all and a
//! quarter of that per client address, so that nobody without a token can hold the slots that
//! users and jobs need while a body trickles in (`api::buffer_body` bounds how long it may).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth::Principal;
use crate::client_addr::client_bucket;
use crate::error::ApiError;

/// Requests one token may have in flight, at most.
pub const PER_TOKEN: usize = 64;
/// Requests one user may have in flight, its jobs' included, at most; and never more than a
/// quarter of the connection cap. Requests without a valid token that carry a body share as
/// many places.
pub const PER_USER: usize = 1024;
/// The user name under which requests without a valid token are counted (no user name starts
/// with '~'), and the prefix of their per-address keys.
const ANONYMOUS: &str = "~anonymous";
const ANONYMOUS_ADDR: &str = "~addr ";

/// The outcome of authenticating a request's bearer token, left for the `Caller` extractor.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Result<Principal, ApiError>);

/// Counts of requests in flight, by token and by user.
#[derive(Debug, Clone)]
pub struct InFlight {
    counts: Arc<Mutex<Counts>>,
    per_token: usize,
    per_user: usize,
}

/// Requests in flight by token id and by user name (`""`: the operator). Looked up without
/// allocating: a request allocates only for a token or user with nothing else in flight.
#[derive(Debug, Default)]
struct Counts {
    tokens: HashMap<Box<str>, usize>,
    users: HashMap<Box<str>, usize>,
}

fn take(map: &mut HashMap<Box<str>, usize>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.into(), 1);
        }
    }
}

fn give_back(map: &mut HashMap<Box<str>, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Default for InFlight {
    fn default() -> Self {
        Self::sized_for(4 * PER_USER)
    }
}

/// Holds a request's places until it is dropped.
#[derive(Debug)]
pub struct Admitted {
    counts: Arc<Mutex<Counts>>,
    token: Box<str>,
    user: Box<str>,
}

impl InFlight {
    /// Limits for a service that keeps at most `connections` open: a user a quarter of them
    /// (at most `PER_USER`), a token at most `PER_TOKEN` of those.
    pub fn sized_for(connections: usize) -> Self {
        let per_user = (connections / 4).clamp(1, PER_USER);
        Self {
            counts: Arc::default(),
            per_token: PER_TOKEN.min(per_user),
            per_user,
        }
    }

    /// The limits in force: `(per token, per user)`.
    pub fn limits(&self) -> (usize, usize) {
        (self.per_token, self.per_user)
    }

    /// Takes a place for `p`, speaking through token `token_id`, under both limits, or says
    /// which one is full.
    pub fn admit(&self, token_id: &str, p: &Principal) -> Result<Admitted, ApiError> {
        let user = p.user().map_or("", |u| u.as_str());
        self.admit_as(token_id, user, self.per_token, self.per_user, || {
            (
                format!(
                    "this token has {} requests in flight already; retry when one ends",
                    self.per_token
                ),
                format!(
                    "this user and its jobs have {} requests in flight already; retry when one ends",
                    self.per_user
                ),
            )
        })
    }

    /// Takes a place for a request without a valid token that carries a body, from client
    /// address `addr`: all such requests share `per_user` places, one address a quarter of
    /// them (an IPv6 client counts by its /64).
    pub fn admit_anonymous(&self, addr: Option<IpAddr>) -> Result<Admitted, ApiError> {
        let per_addr = (self.per_user / 4).max(1);
        let key = match addr {
            Some(a) => format!("{ANONYMOUS_ADDR}{}", client_bucket(a)),
            None => format!("{ANONYMOUS_ADDR}?"),
        };
        self.admit_as(&key, ANONYMOUS, per_addr, self.per_user, || {
            (
                format!(
                    "this address has {per_addr} requests without a token in flight already; \
                     retry when one ends"
                ),
                format!(
                    "{} requests without a token are in flight already; retry when one ends",
                    self.per_user
                ),
            )
        })
    }

    /// Takes a place under `token` (at most `per_token` in flight) and `user` (at most
    /// `per_user`); `why` words the refusals.
    fn admit_as(
        &self,
        token: &str,
        user: &str,
        per_token: usize,
        per_user: usize,
        why: impl FnOnce() -> (String, String),
    ) -> Result<Admitted, ApiError> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let token_full = counts.tokens.get(token).copied().unwrap_or(0) >= per_token;
        let user_full = counts.users.get(user).copied().unwrap_or(0) >= per_user;
        if token_full || user_full {
            let (t, u) = why();
            return Err(ApiError::TooManyRequests(if token_full { t } else { u }));
        }
        take(&mut counts.tokens, token);
        take(&mut counts.users, user);
        Ok(Admitted {
            counts: self.counts.clone(),
            token: token.into(),
            user: user.into(),
        })
    }

    /// Requests in flight under `key` (`token ACTOR` or `user NAME`), for tests.
    pub fn count(&self, key: &str) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (map, k) = match key.split_once(' ') {
            Some(("token", id)) => (&counts.tokens, id),
            Some(("user", name)) => (&counts.users, name),
            _ => return 0,
        };
        map.get(k).copied().unwrap_or(0)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        give_back(&mut counts.tokens, &self.token);
        give_back(&mut counts.users, &self.user);
    }
}

/// The bearer token of a request: `None` without an Authorization header, `Err` when it is
/// not `Bearer TOKEN`.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<Result<&str, ApiError>> {
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

/// The id part of a well-formed token (`nst.ID.SECRET`).
fn token_id(token: &str) -> &str {
    token.split('.').nth(1).unwrap_or("")
}

/// The client's address as the per-address limits see it (`client_addr`), in a request's
/// extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

/// Whether a request has a body to read (a length above 0, or chunked).
fn has_body(h: &axum::http::HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The middleware: authenticates, admits, and keeps the places until the answer has been
/// sent (or the connection dropped): a client that reads its answer slowly still has its
/// request in flight. A request without a valid token that has a body takes an anonymous
/// place; one without a body only runs its handler (nothing it sends can hold it).
pub async fn admit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    // Reads in this request see every write acknowledged before it arrived, on any replica.
    if let Err(e) = s.store.sync().await {
        return ApiError::from(e).into_response();
    }
    let (mut parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<crate::serve::Peer>()
        .and_then(|p| p.addr)
        .map(|a| a.ip());
    let client = crate::client_addr::client_addr(peer, &parts.headers, &s.trusted_proxies);
    parts.extensions.insert(ClientAddr(client));
    let presented =
        bearer(&parts.headers).map(|b| b.map(|t| zeroize::Zeroizing::new(t.to_owned())));
    let mut place = None;
    match presented {
        None => {}
        Some(Err(e)) => {
            parts.extensions.insert(Authenticated(Err(e)));
        }
        Some(Ok(token)) => {
            let outcome = s.auth.authenticate(s.store.as_ref(), &s.keys, &token).await;
            if let Ok(p) = &outcome {
                match s.inflight.admit(token_id(&token), p) {
                    Ok(a) => place = Some(a),
                    Err(e) => return e.into_response(),
                }
            }
            parts.extensions.insert(Authenticated(outcome));
        }
    }
    if place.is_none() && has_body(&parts.headers) {
        match s.inflight.admit_anonymous(client) {
            Ok(a) => place = Some(a),
            Err(e) => return e.into_response(),
        }
    }
    let resp = next.run(Request::from_parts(parts, body)).await;
    match place {
        Some(place) => hold(resp, place),
        None => resp,
    }
}

/// `resp` with `guard` kept alive until its body has been sent or dropped.
pub fn hold<G: Send + 'static>(resp: Response, guard: G) -> Response {
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        axum::body::Body::new(Held {
            inner: body,
            rest: axum::body::Bytes::new(),
            _guard: guard,
        }),
    )
}

/// A response body that holds something (a place in flight, a share of the answer budget)
/// for as long as it lives. It hands hyper its data in pieces of at most `PIECE`: hyper asks
/// for the next piece only once its write buffer has room, so the body (and what it holds)
/// lives until the answer is nearly all on the wire, not just until hyper has taken it.
struct Held<G> {
    inner: axum::body::Body,
    rest: axum::body::Bytes,
    _guard: G,
}

const PIECE: usize = 64 * 1024;

impl<G: Send + 'static> http_body::Body for Held<G> {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        // `Held` is Unpin: `Body` is, and the guard is never pinned.
        let this = self.get_mut();
        if this.rest.is_empty() {
            match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                std::task::Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(frame) => return std::task::Poll::Ready(Some(Ok(frame))),
                },
                other => return other,
            }
        }
        let n = this.rest.len().min(PIECE);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(this.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut h = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        h.set_lower(h.lower() + rest);
        if let Some(u) = h.upper() {
            h.set_upper(u + rest);
        }
        h
    }
}

impl<G> Unpin for Held<G> {}

/// How many bytes of answers (values, base64 and JSON) may wait to be sent at once, in all:
/// a client that reads slowly keeps its answer in memory, and many of them must not exhaust
/// it. Beyond, reads answer 503 until some have gone out.
pub const ANSWER_BUDGET: usize = 256 * 1024 * 1024;

/// The share of `ANSWER_BUDGET` one user's answers (its jobs' included) may hold at once: as
/// with connections, a quarter, so that one user reading big values slowly cannot make every
/// other user's reads fail.
pub const ANSWER_SHARE: usize = ANSWER_BUDGET / 4;

/// The answer budget, counted in KiB, in all and per user.
#[derive(Debug, Clone)]
pub struct AnswerBudget {
    all: Arc<tokio::sync::Semaphore>,
    users: Arc<Mutex<HashMap<Box<str>, usize>>>,
}

impl Default for AnswerBudget {
    fn default() -> Self {
        Self {
            all: Arc::new(tokio::sync::Semaphore::new(ANSWER_BUDGET / 1024)),
            users: Arc::default(),
        }
    }
}

/// A share of the answer budget, given back when dropped (the answer is sent, or dropped).
#[derive(Debug)]
pub struct AnswerShare {
    _all: tokio::sync::OwnedSemaphorePermit,
    users: Arc<Mutex<HashMap<Box<str>, usize>>>,
    user: Box<str>,
    kib: usize,
}

impl Drop for AnswerShare {
    fn drop(&mut self) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = users.get_mut(&*self.user) {
            *n = n.saturating_sub(self.kib);
            if *n == 0 {
                users.remove(&*self.user);
            }
        }
    }
}

impl AnswerBudget {
    /// A share for an answer of about `bytes` to `p` (counted against its user), held until
    /// the answer is sent (`hold`). 429 past the user's share, 503 past the whole budget.
    pub fn take(&self, bytes: usize, p: &Principal) -> Result<AnswerShare, ApiError> {
        let user = p.user().map_or("", |u| u.as_str());
        let kib = bytes.div_ceil(1024).max(1);
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let held = users.get(user).copied().unwrap_or(0);
        if held + kib > ANSWER_SHARE / 1024 {
            return Err(ApiError::TooManyRequests(format!(
                "answers to this user and its jobs already hold {} MiB, its share of the \
                 service's memory for answers being sent; retry shortly",
                held >> 10
            )));
        }
        let permits = u32::try_from(kib).unwrap_or(u32::MAX);
        let all = self
            .all
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| {
                ApiError::Unavailable(format!(
                    "the service is sending {} MiB of answers already; retry shortly",
                    ANSWER_BUDGET >> 20
                ))
            })?;
        take_n(&mut users, user, kib);
        Ok(AnswerShare {
            _all: all,
            users: self.users.clone(),
            user: user.into(),
            kib,
        })
    }

    /// KiB free, for tests.
    pub fn available_kib(&self) -> usize {
        self.all.available_permits()
    }
}

fn take_n(map: &mut HashMap<Box<str>, usize>, key: &str, n: usize) {
    match map.get_mut(key) {
        Some(held) => *held += n,
        None => {
            map.insert(key.into(), n);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use secrets_core::UserName;

    use super::*;

    fn user(name: &str) -> Principal {
        Principal::User(UserName::new(name).unwrap())
    }

    fn job(owner: &str, id: &str) -> Principal {
        Principal::Job {
            id: id.into(),
            owner: UserName::new(owner).unwrap(),
            uris: Arc::new(HashSet::new()),
        }
    }

    #[test]
    fn a_token_and_a_user_with_its_jobs_have_their_limits() {
        // A cap of 40 connections: 10 per user, 10 per token.
        let f = InFlight::sized_for(40);
        assert_eq!(f.limits(), (10, 10));
        let held: Vec<Admitted> = (0..10)
            .map(|_| f.admit("t1", &user("alice")).unwrap())
            .collect();
        let e = f.admit("t1", &user("alice")).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(e.to_string().contains("this token has 10"), "{e}");
        // alice's jobs count towards alice; bob is not affected.
        let e = f.admit("t3", &job("alice", "job-1")).unwrap_err();
        assert!(
            e.to_string().contains("this user and its jobs have 10"),
            "{e}"
        );
        let bob = f.admit("t2", &user("bob")).unwrap();
        drop(held);
        assert_eq!(f.count("user alice"), 0);
        let jobs: Vec<Admitted> = (0..10)
            .map(|i| {
                f.admit(&format!("j{i}"), &job("alice", &format!("job-{i}")))
                    .unwrap()
            })
            .collect();
        // Another token of alice's is refused too: the user's limit.
        assert!(f.admit("t4", &user("alice")).is_err());
        drop(jobs);
        drop(bob);
        assert!(f.admit("t1", &user("alice")).is_ok());
        assert_eq!(f.count("user alice"), 0, "released on drop");
        assert_eq!(f.count("user bob"), 0);
    }

    #[test]
    fn each_token_has_its_own_share() {
        let f = InFlight::sized_for(4096);
        let held: Vec<Admitted> = (0..PER_TOKEN)
            .map(|_| f.admit("t1", &user("alice")).unwrap())
            .collect();
        assert!(f.admit("t1", &user("alice")).is_err());
        assert!(
            f.admit("t2", &user("alice")).is_ok(),
            "another token of alice's"
        );
        drop(held);
    }

    #[test]
    fn the_answer_budget_is_shared_and_given_back() {
        let b = AnswerBudget::default();
        let all = b.available_kib();
        assert_eq!(all, ANSWER_BUDGET / 1024);
        // Four users fill it, each with its whole share.
        let users = ["u1", "u2", "u3", "u4"].map(user);
        let big: Vec<AnswerShare> = users
            .iter()
            .map(|u| b.take(ANSWER_SHARE - 1024, u).unwrap())
            .collect();
        // 4 KiB are left.
        let e = b.take(5 * 1024, &user("u5")).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        let small = b.take(4 * 1024, &user("u5")).unwrap();
        drop((big, small));
        assert_eq!(b.available_kib(), all);
    }

    #[test]
    fn one_user_and_its_jobs_hold_only_their_share_of_answers() {
        let b = AnswerBudget::default();
        let alice = user("alice");
        let held: Vec<AnswerShare> = (0..3)
            .map(|_| b.take(ANSWER_SHARE / 4, &alice).unwrap())
            .collect();
        // alice's job counts as alice: the last quarter of her share, then no more.
        let j = b.take(ANSWER_SHARE / 4, &job("alice", "job-1")).unwrap();
        let e = b.take(1, &alice).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(e.to_string().contains("its share"), "{e}");
        // bob, meanwhile, reads as ever.
        let bob = b.take(1 << 20, &user("bob")).unwrap();
        drop(j);
        let again = b.take(ANSWER_SHARE / 4, &alice).unwrap();
        drop((held, again, bob));
        assert_eq!(b.available_kib(), ANSWER_BUDGET / 1024);
        assert!(b.users.lock().unwrap().is_empty(), "every share given back");
    }

    #[test]
    fn requests_without_a_token_have_a_budget_of_their_own() {
        // A cap of 64 connections: 16 anonymous places, 4 per address.
        let f = InFlight::sized_for(64);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<Admitted> = (0..4)
            .map(|_| f.admit_anonymous(Some(a)).unwrap())
            .collect();
        let e = f.admit_anonymous(Some(a)).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(e.to_string().contains("this address has 4"), "{e}");
        let others: Vec<Admitted> = (2..14)
            .map(|i| {
                f.admit_anonymous(Some(IpAddr::from([127, 0, 0, i])))
                    .unwrap()
            })
            .collect();
        let e = f
            .admit_anonymous(Some("10.0.0.1".parse().unwrap()))
            .unwrap_err();
        assert!(e.to_string().contains("16 requests without a token"), "{e}");
        // Users and their tokens are not counted among them.
        let alice = f.admit("t1", &user("alice")).unwrap();
        drop((held, others, alice));
        assert_eq!(f.count(&format!("user {ANONYMOUS}")), 0);
    }

    #[test]
    fn limits_follow_the_connection_cap() {
        assert_eq!(InFlight::sized_for(4096).limits(), (PER_TOKEN, PER_USER));
        assert_eq!(InFlight::sized_for(100_000).limits(), (PER_TOKEN, PER_USER));
        assert_eq!(InFlight::sized_for(448).limits(), (64, 112));
        assert_eq!(InFlight::sized_for(2).limits(), (1, 1));
    }
}
