//! Calls to etcd: one attempt takes at most `ATTEMPT`, a transient failure moves the store to
//! the next endpoint, and every attempt of one call ends by `DEADLINE`. A write whose answer
//! was lost (the attempt timed out: the leader may have died after applying it) is checked
//! before it is sent again: did it land?
//!
//! One client per endpoint: etcd-client's balancer keeps choosing a dead endpoint (upstream
//! issue 39), so on an unavailable endpoint the store moves to the next one itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::kv::{Kv, Write, Written};
use crate::store::StoreError;
use crate::sync::lock;

/// One attempt of one etcd call, at most.
pub(super) const ATTEMPT: Duration = Duration::from_secs(2);
/// All attempts of one call, endpoint after endpoint, at most: a write fails with 503 by then.
pub(super) const DEADLINE: Duration = Duration::from_secs(4);

/// Failures after which another endpoint may do better.
fn transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Aborted
        ),
        _ => false,
    }
}

/// Whether a call may be sent again after an attempt that timed out (it may have been applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Always,
    UnlessTimedOut,
}

/// A failed call: timed out (the request may have been applied), or failed otherwise.
#[derive(Debug)]
enum CallError {
    TimedOut(String),
    Failed(StoreError),
}

impl CallError {
    fn into_store(self) -> StoreError {
        match self {
            CallError::TimedOut(why) => StoreError::Unavailable(why),
            CallError::Failed(e) => e,
        }
    }
}

/// What a write leaves behind if it was applied: a value no other write produces (sealed
/// values and token records hold random bytes), or the key's absence.
#[derive(Debug)]
pub(super) enum Landed {
    Value { key: String, value: Vec<u8> },
    Absent { key: String },
    Unknown,
}

/// The endpoints, the one in use, and the calls.
#[derive(Debug)]
pub(super) struct Rpc {
    endpoints: Vec<Arc<dyn Kv>>,
    current: AtomicUsize,
    /// Why the last write failed; `None` once one succeeds.
    write_failure: Mutex<Option<String>>,
}

impl Rpc {
    pub(super) fn new(endpoints: Vec<Arc<dyn Kv>>) -> Self {
        assert!(!endpoints.is_empty(), "an etcd target names an endpoint");
        Rpc {
            endpoints,
            current: AtomicUsize::new(0),
            write_failure: Mutex::new(None),
        }
    }

    /// The endpoint calls go to now.
    pub(super) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.endpoints.len()
    }

    pub(super) fn endpoint(&self, i: usize) -> &Arc<dyn Kv> {
        &self.endpoints[i]
    }

    /// Moves calls to the endpoint after `from`, unless someone moved them already.
    pub(super) fn rotate(&self, from: usize) {
        let next = (from + 1) % self.endpoints.len();
        let _ = self
            .current
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Why the last write failed, while no write has succeeded since.
    pub(super) fn write_failure(&self) -> Option<String> {
        lock(&self.write_failure).clone()
    }

    /// Runs `f` against the current endpoint, moving on to the next one after a transient
    /// failure, until `DEADLINE`.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<dyn Kv>) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + DEADLINE;
        self.call_until(deadline, what, Retry::Always, f)
            .await
            .map_err(CallError::into_store)
    }

    /// `call` until `deadline`; with `Retry::UnlessTimedOut`, an attempt that timed out ends
    /// it (the request may have been applied).
    async fn call_until<T, F, Fut>(
        &self,
        deadline: Instant,
        what: &str,
        retry: Retry,
        f: F,
    ) -> Result<T, CallError>
    where
        F: Fn(Arc<dyn Kv>) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut pause = Duration::from_millis(20);
        let mut last = String::from("no attempt");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CallError::Failed(StoreError::Unavailable(format!(
                    "etcd {what} failed on every endpoint until its deadline; last: {last}"
                ))));
            }
            let i = self.current();
            let ep = &self.endpoints[i];
            match tokio::time::timeout(left.min(ATTEMPT), f(ep.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if transient(&e) => {
                    last = format!("{}: {e}", ep.url());
                    self.rotate(i);
                }
                Ok(Err(e)) => {
                    return Err(CallError::Failed(StoreError::Engine(format!(
                        "etcd {what} on {}: {e}",
                        ep.url()
                    ))));
                }
                Err(_) => {
                    self.rotate(i);
                    last = format!(
                        "{} did not answer within {}ms",
                        ep.url(),
                        left.min(ATTEMPT).as_millis()
                    );
                    if retry == Retry::UnlessTimedOut {
                        return Err(CallError::TimedOut(last));
                    }
                }
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// A write transaction, remembered for `health`. When an attempt's answer is lost (the
    /// leader died under it), `landed` tells whether it was applied; if not, it is sent again.
    pub(super) async fn write(
        &self,
        what: &str,
        write: &Write,
        landed: &Landed,
    ) -> Result<Written, StoreError> {
        let deadline = Instant::now() + DEADLINE;
        let r = loop {
            let sent = self
                .call_until(
                    deadline,
                    what,
                    Retry::UnlessTimedOut,
                    move |kv| async move { kv.txn(write).await },
                )
                .await;
            match sent {
                Ok(w) => break Ok(w),
                Err(CallError::TimedOut(why)) => {
                    match self.landed(landed, &write.clock, deadline).await {
                        Ok(Some(w)) => break Ok(w),
                        Ok(None) => {
                            tracing::info!(what, %why, "an etcd write's answer was lost and it did not land; sending it again");
                        }
                        Err(e) => break Err(e),
                    }
                }
                Err(CallError::Failed(e)) => break Err(e),
            }
        };
        *lock(&self.write_failure) = r.as_ref().err().map(ToString::to_string);
        r
    }

    /// Whether a write whose answer was lost was applied: `Some` with its outcome when it
    /// was, `None` when it was not (or cannot be told, for `Landed::Unknown`).
    async fn landed(
        &self,
        landed: &Landed,
        clock: &str,
        deadline: Instant,
    ) -> Result<Option<Written>, StoreError> {
        let (key, want) = match landed {
            Landed::Unknown => return Ok(None),
            Landed::Value { key, value } => (key, Some(value)),
            Landed::Absent { key } => (key, None),
        };
        let keys = [key.clone(), clock.to_owned()];
        let keys = &keys;
        let gets = self
            .call_until(deadline, "check", Retry::Always, move |kv| async move {
                kv.get_all(keys).await
            })
            .await
            .map_err(CallError::into_store)?;
        let [found, clock] = gets.as_slice() else {
            return Err(StoreError::Engine("etcd answered a check oddly".into()));
        };
        let there = match (want, found) {
            (Some(v), Some(kv)) => kv.value == *v,
            (None, None) => true,
            _ => false,
        };
        if !there {
            return Ok(None);
        }
        let revision = found
            .as_ref()
            .map(|kv| kv.mod_revision)
            .or_else(|| clock.as_ref().map(|kv| kv.mod_revision))
            .and_then(|r| u64::try_from(r).ok())
            .unwrap_or(0);
        Ok(Some(Written {
            succeeded: true,
            revision,
            deleted: want.is_none(),
        }))
    }

    /// The mod revision of `key`, by a linearizable read on the current endpoint (once, no
    /// retry: the barrier has its own deadline); 0 when the key is absent.
    pub(super) async fn mod_revision(&self, key: &str) -> Result<u64, StoreError> {
        let i = self.current();
        let ep = &self.endpoints[i];
        match ep.get(key).await {
            Ok(kv) => Ok(kv
                .and_then(|kv| u64::try_from(kv.mod_revision).ok())
                .unwrap_or(0)),
            Err(e) => {
                if transient(&e) {
                    self.rotate(i);
                }
                Err(StoreError::Unavailable(format!("{}: {e}", ep.url())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Call, Etcd, Fault};
    use super::super::tests::{run, said};
    use super::*;

    /// A read through three members, after scripting `faults` for reads: its answer, the
    /// members it went to, and how long it took (on a clock that jumps to the next timer).
    #[track_caller]
    fn check(faults: &[(usize, Fault)], answer: &str, tried: &[usize], took_ms: u128) {
        let got = run(async {
            let etcd = Etcd::new(3);
            let rpc = Rpc::new(etcd.members());
            for &(member, fault) in faults {
                etcd.script(member, Call::Get, fault);
            }
            let t0 = Instant::now();
            let r = rpc
                .call("read", |kv| async move { kv.get("/k").await.map(drop) })
                .await;
            (said(r), etcd.calls(Call::Get), t0.elapsed().as_millis())
        });
        assert_eq!(
            got,
            (answer.to_owned(), tried.to_vec(), took_ms),
            "after {faults:?}"
        );
    }

    #[test]
    fn calls_move_to_the_next_endpoint_until_their_deadline() {
        use Fault::{Hang, Refused, Unavailable};
        check(&[], "()", &[0], 0);
        // Transient failures: the next endpoint, after a pause that doubles.
        check(&[(0, Unavailable)], "()", &[0, 1], 20);
        check(
            &[(0, Unavailable), (1, Unavailable), (2, Unavailable)],
            "()",
            &[0, 1, 2, 0],
            20 + 40 + 80,
        );
        // A read that timed out is sent again, elsewhere.
        check(&[(0, Hang)], "()", &[0, 1], 2000 + 20);
        // A failure another endpoint would not cure ends the call.
        check(&[(0, Refused)], "engine", &[0], 0);
        // Two attempts use up the 4 s deadline (and the pause after the second, measured
        // against what was left before it: 40 ms over).
        check(&[(0, Hang), (1, Hang)], "unavailable", &[0, 1], 4040);
    }
}
