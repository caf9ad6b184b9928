//! Admission: every request with a bearer token is authenticated once, here, and counted
//! against two limits while it is in flight (its body being read, a watch waiting, the
//! handler running): `PER_TOKEN` requests per token and `PER_USER` per user, a user's jobs
//! included. A client with a valid token can thus hold only so many of the service's
//! connections busy (a slow body, thousands of long polls), and the connection cap's eviction of
//! idle connections keeps room for everyone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;

/// Requests one token may have in flight, at most.
pub const PER_TOKEN: usize = 64;
/// Requests one user may have in flight, its jobs' included, at most; and never more than a
/// quarter of the connection cap.
pub const PER_USER: usize = 1024;

/// The outcome of authenticating a request's bearer token, left for the `Caller` extractor.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Result<Principal, ApiError>);

/// Counts of requests in flight, by token and by user.
#[derive(Debug, Clone)]
pub struct InFlight {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    per_token: usize,
    per_user: usize,
}

impl Default for InFlight {
    fn default() -> Self {
        Self::sized_for(4 * PER_USER)
    }
}

/// Holds a request's places until it is dropped.
#[derive(Debug)]
pub struct Admitted {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    keys: [String; 2],
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

    /// Takes a place for `p` under both limits, or says which one is full.
    pub fn admit(&self, p: &Principal) -> Result<Admitted, ApiError> {
        let token = format!("token {}", p.actor());
        let user = match p.user() {
            Some(u) => format!("user {u}"),
            None => "user (operator)".to_owned(),
        };
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let now = |k: &str| counts.get(k).copied().unwrap_or(0);
        if now(&token) >= self.per_token {
            return Err(ApiError::TooManyRequests(format!(
                "this token has {} requests in flight already; retry when one ends",
                self.per_token
            )));
        }
        if now(&user) >= self.per_user {
            return Err(ApiError::TooManyRequests(format!(
                "this user and its jobs have {} requests in flight already; retry when one ends",
                self.per_user
            )));
        }
        for k in [&token, &user] {
            *counts.entry(k.clone()).or_default() += 1;
        }
        Ok(Admitted {
            counts: self.counts.clone(),
            keys: [token, user],
        })
    }

    /// Requests in flight under `key` (`token ACTOR` or `user NAME`), for tests.
    pub fn count(&self, key: &str) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(key).copied().unwrap_or(0)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            if let Some(n) = counts.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(k);
                }
            }
        }
    }
}

/// The bearer token of a request: `None` without an Authorization header, `Err` when it is
/// not `Bearer TOKEN`.
pub fn bearer(req: &axum::http::request::Parts) -> Option<Result<&str, ApiError>> {
    let h = req.headers.get(header::AUTHORIZATION)?;
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

/// The middleware: authenticates, admits, and keeps the places until the response is ready.
pub async fn admit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let outcome = match bearer(&parts) {
        None => None,
        Some(Err(e)) => Some(Err(e)),
        Some(Ok(token)) => Some(s.auth.authenticate(s.store.as_ref(), &s.keys, token).await),
    };
    let mut place = None;
    if let Some(outcome) = outcome {
        if let Ok(p) = &outcome {
            match s.inflight.admit(p) {
                Ok(a) => place = Some(a),
                Err(e) => return e.into_response(),
            }
        }
        parts.extensions.insert(Authenticated(outcome));
    }
    let resp = next.run(Request::from_parts(parts, body)).await;
    drop(place);
    resp
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
        let held: Vec<Admitted> = (0..10).map(|_| f.admit(&user("alice")).unwrap()).collect();
        let e = f.admit(&user("alice")).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(e.to_string().contains("this token has 10"), "{e}");
        // alice's jobs count towards alice; bob is not affected.
        let e = f.admit(&job("alice", "job-1")).unwrap_err();
        assert!(
            e.to_string().contains("this user and its jobs have 10"),
            "{e}"
        );
        let bob = f.admit(&user("bob")).unwrap();
        drop(held);
        assert_eq!(f.count("user alice"), 0);
        let jobs: Vec<Admitted> = (0..10)
            .map(|i| f.admit(&job("alice", &format!("job-{i}"))).unwrap())
            .collect();
        assert!(f.admit(&user("alice")).is_err());
        drop(jobs);
        drop(bob);
        assert!(f.admit(&user("alice")).is_ok());
        assert_eq!(f.count("user alice"), 0, "released on drop");
        assert_eq!(f.count("user bob"), 0);
    }

    #[test]
    fn limits_follow_the_connection_cap() {
        assert_eq!(InFlight::sized_for(4096).limits(), (PER_TOKEN, PER_USER));
        assert_eq!(InFlight::sized_for(100_000).limits(), (PER_TOKEN, PER_USER));
        assert_eq!(InFlight::sized_for(448).limits(), (64, 112));
        assert_eq!(InFlight::sized_for(2).limits(), (1, 1));
    }
}
