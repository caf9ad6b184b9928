//! The audit log: one JSON line per request that touches a secret, a grant, a job, a user or a
//! token.
//!
//! Events carry who, what, which URI or subject and the outcome; the type has no field that
//! could hold a value or a token. Lines are written by one background thread so request
//! handlers never wait on the log file, through a bounded queue. The log fails closed: when
//! the writer has failed, has been stuck in one write for `STALL`, or the queue is full,
//! `record` and `reserve` refuse, and the handlers answer 503 instead of serving or changing
//! anything. A request answered before the writer noticed a failure (at most `QUEUE` events,
//! or `STALL` of a stuck write) has its line queued; that line is lost only if the log never
//! becomes writable again before the process ends.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

/// How long the writer lets events gather before writing them out.
const BATCH_WAIT: Duration = Duration::from_millis(2);
/// Events waiting for the writer; more than one resolve's worth (`api::MAX_RESOLVE`).
pub const QUEUE: usize = 8192;
/// A write that has not returned after this long counts as a failed log.
pub const STALL: Duration = Duration::from_secs(2);
/// Bytes kept for a retry after a failed write; lines beyond are dropped (and counted).
const MAX_PENDING: usize = 4 * 1024 * 1024;
/// How often a failed writer tries again.
const RETRY: Duration = Duration::from_millis(500);

/// What an audit line records; serialized as the log has always spelled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AuditAction {
    #[serde(rename = "secret.read")]
    SecretRead,
    #[serde(rename = "secret.write")]
    SecretWrite,
    #[serde(rename = "secret.delete")]
    SecretDelete,
    #[serde(rename = "secret.list")]
    SecretList,
    #[serde(rename = "grant.add")]
    GrantAdd,
    #[serde(rename = "grant.revoke")]
    GrantRevoke,
    #[serde(rename = "grant.list")]
    GrantList,
    #[serde(rename = "job.create")]
    JobCreate,
    #[serde(rename = "job.delete")]
    JobDelete,
    #[serde(rename = "user.create")]
    UserCreate,
    #[serde(rename = "user.delete")]
    UserDelete,
    #[serde(rename = "token.issue")]
    TokenIssue,
    #[serde(rename = "token.revoke")]
    TokenRevoke,
    /// A console log-in opened a session (subject: the token it was opened with).
    #[serde(rename = "session.open")]
    SessionOpen,
    /// A console log-out ended a session.
    #[serde(rename = "session.close")]
    SessionClose,
}

/// How the recorded request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Denied,
    NotFound,
    /// The request itself was wrong (an empty value, another cluster's URI).
    Invalid,
    /// A resolve whose answer would pass `api::MAX_RESOLVE_BYTES`.
    TooLarge,
    /// The store failed while the change was made.
    Error,
}

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    pub time: String,
    /// `user:NAME`, `job:ID` or `operator`.
    pub actor: String,
    pub action: AuditAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    pub outcome: Outcome,
    /// What the action was done to, beside a URI: `user:NAME`, `token:ID`, `job:ID`. Last, so
    /// that lines without it read as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl AuditEvent {
    pub fn new(actor: String, action: AuditAction, uri: Option<String>, outcome: Outcome) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            actor,
            action,
            uri,
            outcome,
            subject: None,
        }
    }

    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }
}

/// Why an event cannot be recorded now.
#[derive(Debug, thiserror::Error)]
#[error(
    "the audit log '{}' cannot be written ({why}); secret reads and changes are refused until it can",
    path.display()
)]
pub struct AuditUnavailable {
    path: Arc<Path>,
    why: &'static str,
}

/// What the writer tells the handlers.
#[derive(Debug)]
struct Health {
    start: Instant,
    /// The last write failed, and no retry has succeeded since.
    failed: AtomicBool,
    /// Milliseconds since `start` (plus one) when the current write began; 0 when idle.
    busy_since: AtomicU64,
    /// A stall was reported to the service log and has not ended.
    stall_logged: AtomicBool,
    /// Lines handed to the queue (counted before they are sent).
    sent: AtomicU64,
    /// Lines written to the file, or dropped for good (`MAX_PENDING`).
    done: AtomicU64,
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }
}

/// A place in the queue, taken before a change so that its line cannot be refused after it.
#[derive(Debug)]
pub struct Slot(mpsc::OwnedPermit<AuditEvent>, Arc<Health>);

impl Slot {
    pub fn record(self, ev: AuditEvent) {
        self.1.sent.fetch_add(1, Ordering::AcqRel);
        self.0.send(ev);
    }
}

/// A cheap handle to the audit writer.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<AuditEvent>,
    health: Arc<Health>,
    path: Arc<Path>,
}

impl Audit {
    /// Opens `path` for appending (created mode 0600) and starts the writer.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let (tx, rx) = mpsc::channel::<AuditEvent>(QUEUE);
        let health = Arc::new(Health {
            start: Instant::now(),
            failed: AtomicBool::new(false),
            busy_since: AtomicU64::new(0),
            stall_logged: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            done: AtomicU64::new(0),
        });
        let h = health.clone();
        let rt = tokio::runtime::Handle::current();
        let shown = path.to_owned();
        tokio::task::spawn_blocking(move || writer(file, rx, &h, &rt, &shown));
        Ok(Self {
            tx,
            health,
            path: Arc::from(path),
        })
    }

    fn unavailable(&self, why: &'static str) -> AuditUnavailable {
        AuditUnavailable {
            path: self.path.clone(),
            why,
        }
    }

    /// Whether a line may be queued now.
    pub fn check(&self) -> Result<(), AuditUnavailable> {
        let h = &self.health;
        if h.failed.load(Ordering::Acquire) {
            return Err(self.unavailable("writing it failed"));
        }
        let busy = h.busy_since.load(Ordering::Acquire);
        if busy != 0 && h.now_ms().saturating_sub(busy) > STALL.as_millis() as u64 {
            if !h.stall_logged.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    path = %self.path.display(),
                    "a write to the audit log has been stuck for more than {} s; refusing secret reads and changes until it returns",
                    STALL.as_secs()
                );
            }
            return Err(self.unavailable("a write is stuck"));
        }
        Ok(())
    }

    /// Takes a place for one line, or refuses.
    pub fn reserve(&self) -> Result<Slot, AuditUnavailable> {
        self.check()?;
        self.tx
            .clone()
            .try_reserve_owned()
            .map(|p| Slot(p, self.health.clone()))
            .map_err(|_| self.queue_full())
    }

    /// Takes places for `n` lines, or refuses (and holds none).
    pub fn reserve_many(&self, n: usize) -> Result<Vec<Slot>, AuditUnavailable> {
        (0..n).map(|_| self.reserve()).collect()
    }

    fn queue_full(&self) -> AuditUnavailable {
        tracing::error!(path = %self.path.display(), "the audit queue is full; refusing");
        self.unavailable("its queue is full")
    }

    /// Queues a line, or refuses: a read must not be answered when this fails.
    pub fn record(&self, ev: AuditEvent) -> Result<(), AuditUnavailable> {
        self.check()?;
        self.health.sent.fetch_add(1, Ordering::AcqRel);
        self.tx.try_send(ev).map_err(|_| {
            self.health.sent.fetch_sub(1, Ordering::AcqRel);
            self.queue_full()
        })
    }

    /// Lines queued or reserved and not yet taken by the writer.
    pub fn queue_depth(&self) -> usize {
        QUEUE - self.tx.capacity()
    }

    /// Waits until every line queued before the call has been written to the file (then
    /// syncs a regular file to disk), at most `within`. `false` when some are not written.
    pub async fn flush(&self, within: Duration) -> bool {
        let want = self.health.sent.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + within;
        while self.health.done.load(Ordering::Acquire) < want {
            if tokio::time::Instant::now() >= deadline {
                let left = want - self.health.done.load(Ordering::Acquire);
                tracing::error!(path = %self.path.display(), lines = left, "audit lines not written at shutdown");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Only a regular file: opening a FIFO would wait for a writer.
        let path = self.path.clone();
        let synced = tokio::task::spawn_blocking(move || {
            if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                return Ok(());
            }
            std::fs::File::open(&path)?.sync_data()
        });
        match tokio::time::timeout_at(deadline, synced).await {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(e))) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot sync the audit log");
                false
            }
            _ => false,
        }
    }

    /// Queues a line when it can; for requests that are refused anyway.
    pub fn record_best_effort(&self, ev: AuditEvent) {
        if let Err(e) = self.record(ev) {
            tracing::warn!(error = %e, "audit line dropped");
        }
    }
}

/// The writer: batches queued events into `pending` and writes it out; after a failure it
/// keeps the unwritten bytes (up to `MAX_PENDING`) and tries again every `RETRY`.
fn writer(
    mut file: std::fs::File,
    mut rx: mpsc::Receiver<AuditEvent>,
    h: &Health,
    rt: &tokio::runtime::Handle,
    path: &Path,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut pending_lines: u64 = 0;
    let mut dropped: u64 = 0;
    let mut open = true;
    while open || !pending.is_empty() {
        let first = if h.failed.load(Ordering::Acquire) || !open {
            rt.block_on(async { tokio::time::timeout(RETRY, rx.recv()).await })
                .unwrap_or_default()
        } else {
            rx.blocking_recv()
        };
        let mut add = |ev: AuditEvent| {
            if pending.len() >= MAX_PENDING {
                dropped += 1;
                h.done.fetch_add(1, Ordering::AcqRel);
                return;
            }
            if serde_json::to_writer(&mut pending, &ev).is_ok() {
                pending.push(b'\n');
            }
            pending_lines += 1;
        };
        match first {
            Some(ev) => {
                add(ev);
                // Under load, let events gather for a moment so that one wake-up and one
                // write serve many requests instead of one each.
                std::thread::sleep(BATCH_WAIT);
                while let Ok(ev) = rx.try_recv() {
                    add(ev);
                }
            }
            None if rx.is_closed() && rx.is_empty() => {
                open = false;
                if h.failed.load(Ordering::Acquire) {
                    // Shutting down with a failed log: one last try, then give up.
                    let _ = write_pending(&mut file, &mut pending, h);
                    if !pending.is_empty() {
                        tracing::error!(path = %path.display(), bytes = pending.len(), "audit lines lost at shutdown");
                    }
                    return;
                }
            }
            None => {}
        }
        if pending.is_empty() {
            continue;
        }
        match write_pending(&mut file, &mut pending, h) {
            Ok(()) => {
                h.done.fetch_add(pending_lines, Ordering::AcqRel);
                crate::metrics::global().audit_written(pending_lines);
                pending_lines = 0;
                if h.failed.swap(false, Ordering::AcqRel) {
                    tracing::warn!(path = %path.display(), dropped, "the audit log is writable again; serving secret reads and changes");
                    dropped = 0;
                }
            }
            Err(e) => {
                if !h.failed.swap(true, Ordering::AcqRel) {
                    tracing::error!(path = %path.display(), error = %e, "cannot write the audit log; refusing secret reads and changes until it can");
                }
            }
        }
    }
}

/// Writes as much of `pending` as the file takes, removing what was written.
fn write_pending(
    file: &mut std::fs::File,
    pending: &mut Vec<u8>,
    h: &Health,
) -> std::io::Result<()> {
    h.busy_since.store(h.now_ms(), Ordering::Release);
    let mut done = 0;
    let res = loop {
        if done == pending.len() {
            break file.flush();
        }
        match file.write(&pending[done..]) {
            Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    pending.drain(..done);
    h.busy_since.store(0, Ordering::Release);
    h.stall_logged.store(false, Ordering::Release);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's spelling of every action and outcome: tests and operators grep these.
    #[test]
    fn actions_and_outcomes_keep_their_spelling() {
        use AuditAction as A;
        let line = |a, o| {
            let mut ev = AuditEvent::new("user:alice".into(), a, Some("secret://c/a/k".into()), o)
                .subject("job:j");
            ev.time = "T".into();
            serde_json::to_string(&ev).unwrap()
        };
        for (action, text) in [
            (A::SecretRead, "secret.read"),
            (A::SecretWrite, "secret.write"),
            (A::SecretDelete, "secret.delete"),
            (A::SecretList, "secret.list"),
            (A::GrantAdd, "grant.add"),
            (A::GrantRevoke, "grant.revoke"),
            (A::GrantList, "grant.list"),
            (A::JobCreate, "job.create"),
            (A::JobDelete, "job.delete"),
            (A::UserCreate, "user.create"),
            (A::UserDelete, "user.delete"),
            (A::TokenIssue, "token.issue"),
            (A::TokenRevoke, "token.revoke"),
        ] {
            assert_eq!(
                line(action, Outcome::Ok),
                format!(
                    r#"{{"time":"T","actor":"user:alice","action":"{text}","uri":"secret://c/a/k","outcome":"ok","subject":"job:j"}}"#
                )
            );
        }
        for (outcome, text) in [
            (Outcome::Ok, "ok"),
            (Outcome::Denied, "denied"),
            (Outcome::NotFound, "not_found"),
            (Outcome::Invalid, "invalid"),
            (Outcome::TooLarge, "too_large"),
            (Outcome::Error, "error"),
        ] {
            assert!(
                line(AuditAction::SecretRead, outcome).contains(&format!(r#""outcome":"{text}""#)),
                "{text}"
            );
        }
    }
}
