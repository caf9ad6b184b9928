//! The answer budget: how many bytes of answers (values, base64 and JSON) may wait to be sent
//! at once, in all and per user. A client that reads slowly keeps its answer in memory; many
//! of them must not exhaust it, and one user must not take it all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::Principal;
use crate::error::ApiError;
use crate::sync::lock;

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
        let mut users = lock(&self.users);
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
        let mut users = lock(&self.users);
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
    use super::*;

    use crate::limits::tests::{job, user};

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
}
