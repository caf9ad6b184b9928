//! Failed console log-ins, in memory (each replica counts its own): per client address and
//! target user, and per target user. The target is the user of the token id presented, or
//! nobody (`""`) for an id that names no token; so failures from one address (a shared
//! proxy's, say) never refuse another user's correct token, and refuse anyone for the window
//! at most.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client_addr::client_bucket;
use crate::sync::lock;

/// Failed log-ins one client address may make against one user (or against tokens that do
/// not exist) within `FAILURE_WINDOW`; then that address waits, for that user only, until the
/// window ends.
pub const MAX_FAILURES: u32 = 10;
/// Failed log-ins against one user from all addresses together within `FAILURE_WINDOW`: a
/// guesser rotating addresses (one per try) is stopped here, and the user waits at most the
/// window.
pub const MAX_USER_FAILURES: u32 = 10 * MAX_FAILURES;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Windows the limiter remembers at most; past that, expired ones are dropped, then the oldest.
pub const MAX_WINDOWS: usize = 65_536;
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
    order: VecDeque<(Instant, Counted)>,
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
    pub fn check(&self, addr: Option<IpAddr>, target: &str) -> Result<(), u64> {
        let w = lock(&self.windows);
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

    pub fn failed(&self, addr: Option<IpAddr>, target: &str) {
        let mut w = lock(&self.windows);
        w.count(Counted::Pair(addr.map(client_bucket), target.into()));
        if !target.is_empty() {
            w.count(Counted::User(target.into()));
        }
    }

    /// Windows held, for tests.
    pub fn windows(&self) -> usize {
        lock(&self.windows).open.len()
    }
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
}
