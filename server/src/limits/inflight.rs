//! Requests in flight, counted while they are (their body being read, a watch waiting, the
//! handler running, their answer being sent): `PER_TOKEN` per token and `PER_USER` per user,
//! a user's jobs included, so that a client with a valid token can hold only so many of the
//! service's connections busy (a slow body, thousands of long polls). Requests without a
//! valid token that carry a body have a budget of their own (`admit_anonymous`): as many
//! places as one user, a quarter of them per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::client_addr::client_bucket;
use crate::domain::Principal;
use crate::error::ApiError;
use crate::sync::lock;

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
        let mut counts = lock(&self.counts);
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
        let counts = lock(&self.counts);
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
        let mut counts = lock(&self.counts);
        give_back(&mut counts.tokens, &self.token);
        give_back(&mut counts.users, &self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::limits::tests::{job, user};

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
