//! The etcd store: any number of `secretd` replicas share one etcd cluster.
//!
//! Layout under `/PREFIX/`: `users/NAME`, `tokens/ID`, `grants/…`, `jobs/ID`, `sessions/…` and
//! `settings/NAME` (the plain tables); `secrets/OWNER/KEY` (the sealed value; its version is
//! the key's mod revision, etcd's revision of the write, so versions compare across replicas);
//! `deleted/OWNER/KEY` (an empty tombstone written in the same transaction as a secret's
//! deletion, so the change feed can tell a watcher that was away that it is gone); and
//! `markers/MARKER` (touched when someone's grants change). The change feed is the set of
//! those three kinds of keys ordered by mod revision: a watcher learns the newest state of
//! every secret that changed after its revision, wherever the change was made.
//!
//! Reads come from a copy of the whole prefix in memory, loaded at start and kept current by
//! one etcd watch. Before a request is served, `sync` proves the copy is current: a barrier
//! reads etcd's revision with a linearizable read and waits until the watch has applied it;
//! one barrier serves every request that arrived before it started. While etcd cannot
//! confirm (no quorum, no endpoint), requests are served for at most `max_staleness` after
//! the last confirmation, then refused with 503. Writes go to etcd and return once the watch
//! has applied them, so a replica reads its own writes at once.
//!
//! One client per endpoint: etcd-client's balancer keeps choosing a dead endpoint (upstream
//! issue 39), so on an unavailable endpoint the store moves to the next one itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KvClient, Txn, TxnOp,
    WatchOptions, WatchResponse,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{Change, Record, SecretMeta, Store, StoreError, StoredSecret, Table, unix_now};

mod config;

pub use config::{DEFAULT_PREFIX, EtcdOptions, EtcdTarget};

/// Records per page of the start-up load (a secret is at most ~1.4 MiB in etcd).
const PAGE: i64 = 32;
/// The largest gRPC message accepted from etcd (a page, a batch of watch events).
const MAX_MESSAGE: usize = 256 << 20;
/// One attempt of one etcd call, at most.
const ATTEMPT: Duration = Duration::from_secs(2);
/// All attempts of one call, endpoint after endpoint, at most: a write fails with 503 by then.
const DEADLINE: Duration = Duration::from_secs(4);
/// A barrier (linearizable read, then the watch catching up) must end within this.
const BARRIER: Duration = Duration::from_secs(1);
/// Without requests, a barrier still runs this often, so `health` knows.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a request waits for a barrier that started after it arrived.
const SYNC_WAIT: Duration = Duration::from_secs(3);
/// How long a request waits for a new barrier while the last one failed.
const SYNC_WAIT_FAILING: Duration = Duration::from_millis(300);

/// One etcd endpoint and its client, connected on first use.
struct Endpoint {
    url: String,
    options: ConnectOptions,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).finish()
    }
}

impl Endpoint {
    async fn client(&self) -> Result<Client, etcd_client::Error> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Client::connect([self.url.as_str()], Some(self.options.clone())).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn kv(&self) -> Result<KvClient, etcd_client::Error> {
        Ok(self
            .client()
            .await?
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE))
    }
}

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
enum Landed {
    Value { key: String, value: Vec<u8> },
    Absent { key: String },
    Unknown,
}

/// The outcome of a write transaction.
#[derive(Debug, Clone, Copy)]
struct Written {
    /// The transaction's condition held (always, without one).
    succeeded: bool,
    revision: u64,
    /// A delete removed something.
    deleted: bool,
}

impl From<&etcd_client::TxnResponse> for Written {
    fn from(r: &etcd_client::TxnResponse) -> Self {
        Written {
            succeeded: r.succeeded(),
            revision: r
                .header()
                .and_then(|h| u64::try_from(h.revision()).ok())
                .unwrap_or(0),
            deleted: r
                .op_responses()
                .iter()
                .any(|op| matches!(op, etcd_client::TxnOpResponse::Delete(d) if d.deleted() > 0)),
        }
    }
}

/// Marks a watch stream open (in `Inner::streaming_since`) for as long as it lives.
struct Streaming<'a>(&'a Mutex<Option<Instant>>);

impl<'a> Streaming<'a> {
    fn begin(slot: &'a Mutex<Option<Instant>>, at: Instant) -> Self {
        *lock(slot) = Some(at);
        Streaming(slot)
    }
}

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        *lock(self.0) = None;
    }
}

/// Why the watch gave up on replaying events and the copy is loaded again.
#[derive(Debug)]
enum Reload {
    /// etcd compacted past the copy's revision.
    Compacted,
    /// The stream did not deliver what etcd holds (a hung member, a replay larger than a
    /// message or too slow): the load pages through the prefix instead.
    Behind(String),
}

impl std::fmt::Display for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reload::Compacted => write!(f, "etcd compacted past this replica's copy"),
            Reload::Behind(why) => write!(f, "the watch cannot catch up: {why}"),
        }
    }
}

/// One cached record.
#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    revision: u64,
}

/// The in-memory copy of the prefix.
#[derive(Debug, Default)]
struct Cache {
    map: BTreeMap<String, Entry>,
    /// `(mod revision, key)` of every secret, tombstone and marker: the change feed.
    feed: BTreeSet<(u64, String)>,
    /// The revision up to which every event has been applied (after a load, etcd's revision
    /// then, which counts writes outside the prefix too): where the watch resumes.
    revision: u64,
    /// The newest mod revision in the prefix (the clock key's, as every write ticks it): the
    /// same number on every replica that has applied the same writes, whenever it loaded.
    newest: u64,
}

const SECRETS: &str = "secrets/";
const TOMBSTONES: &str = "deleted/";
const MARKERS: &str = "markers/";
/// `times/OWNER/KEY`: when the secret was written (Unix seconds, decimal).
const TIMES: &str = "times/";
/// The key every write transaction also writes (see `Inner::tick`).
const CLOCK: &str = "clock";

fn in_feed(key: &str) -> bool {
    key.starts_with(SECRETS) || key.starts_with(TOMBSTONES) || key.starts_with(MARKERS)
}

/// Keys whose change or removal may end a token's validity.
fn revokes(key: &str) -> bool {
    ["users/", "tokens/", "jobs/"]
        .iter()
        .any(|p| key.starts_with(p))
}

fn row_key(table: Table, key: &str) -> String {
    format!("{}/{key}", table.name())
}

impl Cache {
    fn put(&mut self, key: String, value: Vec<u8>, revision: u64) {
        self.newest = self.newest.max(revision);
        if in_feed(&key) {
            self.feed.insert((revision, key.clone()));
        }
        if let Some(old) = self.map.insert(key.clone(), Entry { value, revision })
            && old.revision != revision
        {
            self.feed.remove(&(old.revision, key));
        }
    }

    fn delete(&mut self, key: &str) {
        if let Some(old) = self.map.remove(key) {
            self.feed.remove(&(old.revision, key.to_owned()));
        }
    }

    /// When secret `OWNER/KEY` was written, if known.
    fn written_at(&self, key: &str) -> Option<u64> {
        let e = self.map.get(&format!("{TIMES}{key}"))?;
        std::str::from_utf8(&e.value).ok()?.parse().ok()
    }

    fn range(&self, prefix: &str) -> impl Iterator<Item = (&String, &Entry)> {
        self.map
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }
}

/// What the newest barrier found.
#[derive(Debug, Clone, Copy)]
struct Confirmed {
    /// When the newest successful barrier started: every write acknowledged before that
    /// instant is in the cache.
    at: Instant,
    /// The last barrier failed.
    failing: bool,
}

/// The etcd-backed store.
#[derive(Debug, Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    target: EtcdTarget,
    /// `/PREFIX/`
    root: String,
    endpoints: Vec<Endpoint>,
    current: AtomicUsize,
    cache: RwLock<Cache>,
    /// The cache's revision, after every applied batch.
    applied: watch::Sender<u64>,
    confirmed: watch::Sender<Confirmed>,
    /// Asks the barrier task for a barrier now.
    demand: Notify,
    /// Why the last write failed; `None` once one succeeds.
    write_failure: Mutex<Option<String>>,
    /// Why the last barrier failed.
    barrier_failure: Mutex<Option<String>>,
    revocations: AtomicU64,
    max_staleness: Duration,
    /// The prefix's revision etcd showed the last barrier that reached it, confirmed or not: a
    /// copy behind it is known to be stale. (The last, not the largest: an etcd restored from
    /// an older snapshot must not leave this replica refusing everything.)
    known: AtomicU64,
    /// Asks the watch to drop its stream and move: etcd answered a barrier, the watch did not
    /// follow (a hung member keeps its connection, and so the stream, open).
    watch_stuck: Notify,
    /// When the barrier that found the watch stuck started: a stream opened after it is not
    /// the stuck one (a reload can outlast several barriers).
    stuck_at: Mutex<Option<Instant>>,
    /// Since when the current watch stream has been open; `None` between streams.
    streaming_since: Mutex<Option<Instant>>,
    /// The endpoint the watch streams from.
    watching: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first key after every key that starts with `prefix`.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdStore {
    /// Connects, loads the prefix and starts the watch and barrier tasks. Fails when no
    /// endpoint answers within a few seconds.
    pub async fn open(target: EtcdTarget, opts: &EtcdOptions) -> Result<Self, StoreError> {
        let (options, tls) = opts.connect_options()?;
        let scheme = if tls { "https" } else { "http" };
        let endpoints = target
            .endpoints
            .iter()
            .map(|e| Endpoint {
                url: format!("{scheme}://{e}"),
                options: options.clone(),
                client: tokio::sync::Mutex::new(None),
            })
            .collect();
        let now = Instant::now();
        let inner = Arc::new(Inner {
            root: format!("/{}/", target.prefix),
            target,
            endpoints,
            current: AtomicUsize::new(0),
            cache: RwLock::new(Cache::default()),
            applied: watch::channel(0).0,
            confirmed: watch::channel(Confirmed {
                at: now,
                failing: false,
            })
            .0,
            demand: Notify::new(),
            write_failure: Mutex::new(None),
            barrier_failure: Mutex::new(None),
            revocations: AtomicU64::new(0),
            max_staleness: opts.max_staleness,
            known: AtomicU64::new(0),
            watch_stuck: Notify::new(),
            stuck_at: Mutex::new(None),
            streaming_since: Mutex::new(None),
            watching: AtomicUsize::new(0),
        });
        inner.reload().await?;
        inner.confirmed.send_replace(Confirmed {
            at: now,
            failing: false,
        });
        tokio::spawn(inner.clone().watch_loop());
        tokio::spawn(inner.clone().barrier_loop());
        Ok(Self { inner })
    }

    pub fn target(&self) -> &EtcdTarget {
        &self.inner.target
    }
}

impl Inner {
    fn cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cache_mut(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn rotate(&self, from: usize) {
        let next = (from + 1) % self.endpoints.len();
        let _ = self
            .current
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Runs `f` against the current endpoint, moving on to the next one after a transient
    /// failure, until `DEADLINE`.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn(KvClient) -> Fut,
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
        F: Fn(KvClient) -> Fut,
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
            let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
            let ep = &self.endpoints[i];
            let attempt = async { f(ep.kv().await?).await };
            match tokio::time::timeout(left.min(ATTEMPT), attempt).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if transient(&e) => {
                    last = format!("{}: {e}", ep.url);
                    self.rotate(i);
                }
                Ok(Err(e)) => {
                    return Err(CallError::Failed(StoreError::Engine(format!(
                        "etcd {what} on {}: {e}",
                        ep.url
                    ))));
                }
                Err(_) => {
                    self.rotate(i);
                    last = format!(
                        "{} did not answer within {}ms",
                        ep.url,
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

    /// A write transaction (each writes the clock key, so it has an event in the prefix):
    /// remembered for `health`, and returned only once the watch applied it, so that this
    /// replica reads its own writes. When an attempt's answer is lost (the leader died under
    /// it), `landed` tells whether it was applied; if not, it is sent again.
    async fn txn(&self, what: &str, txn: Txn, landed: Landed) -> Result<Written, StoreError> {
        let deadline = Instant::now() + DEADLINE;
        let r = loop {
            let t = txn.clone();
            let sent = self
                .call_until(deadline, what, Retry::UnlessTimedOut, move |mut kv| {
                    let t = t.clone();
                    async move { kv.txn(t).await }
                })
                .await;
            match sent {
                Ok(resp) => break Ok(Written::from(&resp)),
                Err(CallError::TimedOut(why)) => match self.landed(&landed, deadline).await {
                    Ok(Some(w)) => break Ok(w),
                    Ok(None) => {
                        tracing::info!(what, %why, "an etcd write's answer was lost and it did not land; sending it again");
                    }
                    Err(e) => break Err(e),
                },
                Err(CallError::Failed(e)) => break Err(e),
            }
        };
        let w = match r {
            Ok(w) => {
                *lock(&self.write_failure) = None;
                w
            }
            Err(e) => {
                *lock(&self.write_failure) = Some(e.to_string());
                return Err(e);
            }
        };
        if let Err(e) = self.wait_applied(w.revision, DEADLINE).await {
            // The write is in etcd; only this replica's copy lags.
            tracing::warn!(revision = w.revision, error = %e, "a write is not in this replica's cache yet");
        }
        Ok(w)
    }

    /// Whether a write whose answer was lost was applied: `Some` with its outcome when it
    /// was, `None` when it was not (or cannot be told, for `Landed::Unknown`).
    async fn landed(
        &self,
        landed: &Landed,
        deadline: Instant,
    ) -> Result<Option<Written>, StoreError> {
        let (key, want) = match landed {
            Landed::Unknown => return Ok(None),
            Landed::Value { key, value } => (key.clone(), Some(value.clone())),
            Landed::Absent { key } => (key.clone(), None),
        };
        let clock = self.clock_key();
        let txn = Txn::new().and_then([TxnOp::get(key, None), TxnOp::get(clock, None)]);
        let resp = self
            .call_until(deadline, "check", Retry::Always, move |mut kv| {
                let t = txn.clone();
                async move { kv.txn(t).await }
            })
            .await
            .map_err(CallError::into_store)?;
        let gets: Vec<_> = resp
            .op_responses()
            .into_iter()
            .filter_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => Some(g),
                _ => None,
            })
            .collect();
        let [found, clock] = gets.as_slice() else {
            return Err(StoreError::Engine("etcd answered a check oddly".into()));
        };
        let now = found.kvs().first();
        let there = match (&want, now) {
            (Some(v), Some(kv)) => kv.value() == v.as_slice(),
            (None, None) => true,
            _ => false,
        };
        if !there {
            return Ok(None);
        }
        let revision = now
            .map(|kv| kv.mod_revision())
            .or_else(|| clock.kvs().first().map(|kv| kv.mod_revision()))
            .and_then(|r| u64::try_from(r).ok())
            .unwrap_or(0);
        Ok(Some(Written {
            succeeded: true,
            revision,
            deleted: want.is_none(),
        }))
    }

    /// Stores a sealed value with its write time (the time under `times/`, in the same
    /// transaction; none removes it).
    async fn put_secret_at(
        &self,
        key: &str,
        sealed: &[u8],
        updated_at: Option<u64>,
    ) -> Result<u64, StoreError> {
        let root = &self.root;
        let k = format!("{root}{SECRETS}{key}");
        let time_key = format!("{root}{TIMES}{key}");
        let time = match updated_at {
            Some(at) => TxnOp::put(time_key, at.to_string(), None),
            None => TxnOp::delete(time_key, None),
        };
        let txn = Txn::new().and_then([
            TxnOp::put(k.clone(), sealed.to_vec(), None),
            time,
            TxnOp::delete(format!("{root}{TOMBSTONES}{key}"), None),
            self.tick(),
        ]);
        let landed = Landed::Value {
            key: k,
            value: sealed.to_vec(),
        };
        Ok(self.txn("secret write", txn, landed).await?.revision)
    }

    /// Loads the whole prefix at one revision and replaces the cache.
    async fn reload(&self) -> Result<(), StoreError> {
        let end = range_end(&self.root);
        let mut map = Cache::default();
        let mut from = self.root.clone().into_bytes();
        let mut at = 0i64;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if at > 0 {
                opts = opts.with_revision(at);
            }
            let key = from.clone();
            let resp = self
                .call("load", move |mut kv| {
                    let (key, opts) = (key.clone(), opts.clone());
                    async move { kv.get(key, Some(opts)).await }
                })
                .await?;
            if at == 0 {
                at = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                let Some(k) = self.local_key(kv.key()) else {
                    continue;
                };
                map.put(
                    k,
                    kv.value().to_vec(),
                    u64::try_from(kv.mod_revision()).unwrap_or(0),
                );
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        map.revision = u64::try_from(at).unwrap_or(0);
        let rev = map.revision;
        *self.cache_mut() = map;
        self.revocations.fetch_add(1, Ordering::Relaxed);
        self.applied.send_replace(rev);
        Ok(())
    }

    fn local_key(&self, key: &[u8]) -> Option<String> {
        let k = key.strip_prefix(self.root.as_bytes())?;
        std::str::from_utf8(k).ok().map(str::to_owned)
    }

    fn apply(&self, resp: &WatchResponse) {
        let mut revoked = false;
        let rev = {
            let mut cache = self.cache_mut();
            let mut top = cache.revision;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let rev = u64::try_from(kv.mod_revision()).unwrap_or(0);
                top = top.max(rev);
                let Some(key) = self.local_key(kv.key()) else {
                    continue;
                };
                match ev.event_type() {
                    EventType::Put => {
                        revoked |= kv.version() > 1 && revokes(&key);
                        cache.put(key, kv.value().to_vec(), rev);
                    }
                    EventType::Delete => {
                        revoked |= revokes(&key);
                        cache.delete(&key);
                        cache.newest = cache.newest.max(rev);
                    }
                }
            }
            cache.revision = top;
            top
        };
        if revoked {
            self.revocations.fetch_add(1, Ordering::Relaxed);
        }
        self.applied.send_replace(rev);
    }

    /// Follows the prefix from the cache's revision, forever, moving to another endpoint when
    /// one fails and reloading everything when etcd compacted past the cache.
    async fn watch_loop(self: Arc<Self>) {
        let mut pause = Duration::from_millis(50);
        loop {
            let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
            let started = Instant::now();
            let outcome = self.watch_once(i).await;
            if started.elapsed() > Duration::from_secs(5) {
                // A stream that lived is no reason to wait long before the next one.
                pause = Duration::from_millis(50);
            }
            match outcome {
                Ok(why) => {
                    if let Reload::Behind(_) = why {
                        self.rotate(i);
                    }
                    tracing::warn!(endpoint = %self.endpoints[i].url, why = %why, "reloading this replica's copy from etcd");
                    if let Err(e) = self.reload().await {
                        tracing::error!(error = %e, "reloading from etcd failed");
                        tokio::time::sleep(pause).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.endpoints[i].url, error = %e, "the etcd watch failed; trying the next endpoint");
                    self.rotate(i);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
            pause = Duration::from_millis(50);
        }
    }

    /// One watch stream; `Ok` when the copy must be loaded again (etcd compacted past it, or
    /// replaying what it missed does not work), `Err` when the stream failed.
    async fn watch_once(&self, i: usize) -> Result<Reload, String> {
        self.watching.store(i, Ordering::Relaxed);
        // Connecting logs in when etcd wants a password: bounded, a hung member must not stop
        // the watch from moving on.
        let client = tokio::time::timeout(ATTEMPT, self.endpoints[i].client())
            .await
            .map_err(|_| format!("no connection within {}s", ATTEMPT.as_secs()))?
            .map_err(|e| e.to_string())?;
        let start = self.cache().revision + 1;
        let opts = WatchOptions::new()
            .with_range(range_end(&self.root))
            .with_start_revision(i64::try_from(start).unwrap_or(i64::MAX));
        let mut stream = tokio::time::timeout(
            ATTEMPT,
            client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE)
                .watch(self.root.clone(), Some(opts)),
        )
        .await
        .map_err(|_| format!("no watch within {}s", ATTEMPT.as_secs()))?
        .map_err(|e| e.to_string())?;
        let opened = Instant::now();
        let _streaming = Streaming::begin(&self.streaming_since, opened);
        loop {
            let resp = tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err("the watch stream ended".into()),
                    // etcd sends up to 1000 missed revisions in one message: over
                    // MAX_MESSAGE of values, replaying them can never work.
                    Err(etcd_client::Error::GRpcStatus(st))
                        if matches!(
                            st.code(),
                            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
                        ) =>
                    {
                        return Ok(Reload::Behind(st.message().to_owned()));
                    }
                    Err(e) => return Err(e.to_string()),
                },
                // A hung member, or a replay too slow to finish: the paged load is bounded.
                () = self.watch_stuck.notified() => {
                    if lock(&self.stuck_at).is_some_and(|at| at >= opened) {
                        return Ok(Reload::Behind(
                            "the watch fell behind a revision etcd confirmed".into(),
                        ));
                    }
                    // Meant for an earlier stream.
                    continue;
                }
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    return Ok(Reload::Compacted);
                }
                if resp.cancel_reason().contains("invalid auth token") {
                    // A restarted etcd forgot the token, and a stream is not refreshed by
                    // the client: authenticate again before the next stream.
                    client.refresh_token().await.map_err(|e| {
                        format!("authenticating to {} again: {e}", self.endpoints[i].url)
                    })?;
                }
                return Err(format!(
                    "etcd cancelled the watch: {}",
                    resp.cancel_reason()
                ));
            }
            // Progress reports are not used: etcd 3.4 sends them before an unsynced watcher
            // has caught up. The clock key gives every write of ours an event instead.
            if !resp.events().is_empty() {
                self.apply(&resp);
            }
        }
    }

    /// Waits until the cache has applied `rev`.
    async fn wait_applied(&self, rev: u64, within: Duration) -> Result<(), StoreError> {
        let mut rx = self.applied.subscribe();
        let deadline = Instant::now() + within;
        loop {
            if self.cache().revision >= rev {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(StoreError::Unavailable(format!(
                    "the etcd watch has not reached revision {rev} within {}ms",
                    within.as_millis()
                )));
            }
        }
    }

    /// The revision of the newest write to the prefix: the clock key's mod revision, by a
    /// linearizable read on the current endpoint. (etcd's own revision would do only if
    /// nothing else wrote to this etcd: the watch never sees writes outside the prefix.)
    async fn current_revision(&self) -> Result<u64, StoreError> {
        let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        let ep = &self.endpoints[i];
        let key = self.clock_key();
        let r = async { ep.kv().await?.get(key, None).await }.await;
        match r {
            Ok(resp) => Ok(resp
                .kvs()
                .first()
                .and_then(|kv| u64::try_from(kv.mod_revision()).ok())
                .unwrap_or(0)),
            Err(e) => {
                if transient(&e) {
                    self.rotate(i);
                }
                Err(StoreError::Unavailable(format!("{}: {e}", ep.url)))
            }
        }
    }

    /// Written by every write transaction of the store, so that each has an event in the
    /// prefix and the newest one's revision can be read.
    fn clock_key(&self) -> String {
        format!("{}{CLOCK}", self.root)
    }

    fn tick(&self) -> TxnOp {
        TxnOp::put(self.clock_key(), Vec::new(), None)
    }

    /// Reads the prefix's revision from etcd, then waits for the watch to apply it, all within
    /// `BARRIER`. When etcd answered but the watch applied nothing meanwhile, the watch is
    /// told to move to another endpoint.
    async fn barrier(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let deadline = started + BARRIER;
        let rev = match tokio::time::timeout_at(deadline, self.current_revision()).await {
            Ok(rev) => rev?,
            Err(_) => {
                let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
                self.rotate(i);
                if self.watching.load(Ordering::Relaxed) == i {
                    // The endpoint hangs: so does the watch's stream from it.
                    self.stuck(started);
                }
                return Err(StoreError::Unavailable(format!(
                    "etcd did not confirm the current revision within {}ms",
                    BARRIER.as_millis()
                )));
            }
        };
        self.known.store(rev, Ordering::Relaxed);
        let before = self.cache().revision;
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = self.wait_applied(rev, left).await {
            if self.cache().revision == before {
                self.stuck(started);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Tells the watch its stream is stuck, if that stream was open when the barrier that
    /// found it so started (not while a load runs, nor a stream opened since).
    fn stuck(&self, barrier_started: Instant) {
        if lock(&self.streaming_since).is_some_and(|since| since <= barrier_started) {
            tracing::warn!("the etcd watch is stuck; loading the copy again");
            *lock(&self.stuck_at) = Some(barrier_started);
            self.watch_stuck.notify_one();
        }
    }

    /// Runs barriers on demand, and every `HEARTBEAT` without.
    async fn barrier_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.demand.notified() => {}
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
            let started = Instant::now();
            let outcome = self.barrier().await;
            match outcome {
                Ok(()) => {
                    if lock(&self.barrier_failure).take().is_some() {
                        tracing::info!("etcd confirms this replica's view again");
                    }
                    self.confirmed.send_replace(Confirmed {
                        at: started,
                        failing: false,
                    });
                }
                Err(e) => {
                    let first = lock(&self.barrier_failure).replace(e.to_string()).is_none();
                    if first {
                        tracing::warn!(error = %e, "etcd cannot confirm this replica's view");
                    }
                    self.confirmed.send_modify(|c| c.failing = true);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// `Ok` when a confirmation no older than `max_staleness` exists.
    fn within_staleness(&self, c: Confirmed) -> Result<(), StoreError> {
        let age = c.at.elapsed();
        if age <= self.max_staleness {
            return Ok(());
        }
        let why = lock(&self.barrier_failure)
            .clone()
            .unwrap_or_else(|| "no answer".into());
        Err(StoreError::Unavailable(format!(
            "etcd has not confirmed this replica's view for {:.1}s (--max-staleness {}s): {why}",
            age.as_secs_f64(),
            self.max_staleness.as_secs_f64()
        )))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .inner
            .cache()
            .map
            .get(&row_key(table, key))
            .map(|e| e.value.clone()))
    }

    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let p = row_key(table, prefix);
        let skip = table.name().len() + 1;
        Ok(self
            .inner
            .cache()
            .range(&p)
            .map(|(k, e)| (k[skip..].to_owned(), e.value.clone()))
            .collect())
    }

    async fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let k = format!("{}{}", self.inner.root, row_key(table, key));
        let txn = Txn::new().and_then([
            TxnOp::put(k.clone(), value.to_vec(), None),
            self.inner.tick(),
        ]);
        let landed = Landed::Value {
            key: k,
            value: value.to_vec(),
        };
        self.inner.txn("put", txn, landed).await?;
        Ok(())
    }

    async fn insert_new(&self, table: Table, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let k = format!("{}{}", self.inner.root, row_key(table, key));
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(k.clone(), value.to_vec(), None),
                self.inner.tick(),
            ])
            .or_else([self.inner.tick()]);
        let landed = Landed::Value {
            key: k,
            value: value.to_vec(),
        };
        Ok(self.inner.txn("insert", txn, landed).await?.succeeded)
    }

    async fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        let k = format!("{}{}", self.inner.root, row_key(table, key));
        let txn = Txn::new().and_then([TxnOp::delete(k.clone(), None), self.inner.tick()]);
        let landed = Landed::Absent { key: k };
        Ok(self.inner.txn("delete", txn, landed).await?.deleted)
    }

    async fn get_secret(&self, key: &str) -> Result<Option<StoredSecret>, StoreError> {
        let cache = self.inner.cache();
        Ok(cache
            .map
            .get(&format!("{SECRETS}{key}"))
            .map(|e| StoredSecret {
                version: e.revision,
                sealed: e.value.clone(),
                updated_at: cache.written_at(key),
            }))
    }

    async fn get_sealed(&self, key: &str) -> Result<Option<StoredSecret>, StoreError> {
        // The write time is in memory too: nothing to save on the read path.
        self.get_secret(key).await
    }

    async fn list_secrets(&self, prefix: &str) -> Result<Vec<SecretMeta>, StoreError> {
        let cache = self.inner.cache();
        Ok(cache
            .range(&format!("{SECRETS}{prefix}"))
            .map(|(k, e)| {
                let key = &k[SECRETS.len()..];
                SecretMeta {
                    key: key.to_owned(),
                    version: e.revision,
                    updated_at: cache.written_at(key),
                }
            })
            .collect())
    }

    async fn put_secret(&self, key: &str, sealed: &[u8]) -> Result<u64, StoreError> {
        self.inner
            .put_secret_at(key, sealed, Some(unix_now()))
            .await
    }

    async fn delete_secret(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let root = &self.inner.root;
        let k = format!("{root}{SECRETS}{key}");
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Greater, 0)])
            .and_then([
                TxnOp::delete(k.clone(), None),
                TxnOp::delete(format!("{root}{TIMES}{key}"), None),
                TxnOp::put(format!("{root}{TOMBSTONES}{key}"), Vec::new(), None),
                self.inner.tick(),
            ])
            .or_else([self.inner.tick()]);
        let w = self
            .inner
            .txn("secret delete", txn, Landed::Absent { key: k })
            .await?;
        Ok(w.succeeded.then_some(w.revision))
    }

    async fn changes_since(&self, revision: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let cache = self.inner.cache();
        Ok(cache
            .feed
            .range((revision.saturating_add(1), String::new())..)
            .take(limit)
            .filter_map(|(rev, k)| {
                let (key, deleted) = if let Some(k) = k.strip_prefix(SECRETS) {
                    (k, false)
                } else if let Some(k) = k.strip_prefix(TOMBSTONES) {
                    (k, true)
                } else {
                    (k.strip_prefix(MARKERS)?, false)
                };
                Some(Change {
                    revision: *rev,
                    key: key.to_owned(),
                    deleted,
                })
            })
            .collect())
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        // Not `revision`: after a load that is etcd's revision, which writes outside the prefix
        // move too, so a replica that loaded later would name a revision the others never
        // reach, and a `since` learned on it would be refused on them.
        Ok(self.inner.cache().newest)
    }

    async fn touch(&self, marker: &str) -> Result<u64, StoreError> {
        let k = format!("{}{MARKERS}{marker}", self.inner.root);
        let txn = Txn::new().and_then([TxnOp::put(k, Vec::new(), None), self.inner.tick()]);
        // Sending a marker twice does no harm.
        Ok(self
            .inner
            .txn("marker write", txn, Landed::Unknown)
            .await?
            .revision)
    }

    async fn health(&self) -> Result<(), String> {
        if let Some(why) = lock(&self.inner.barrier_failure).clone() {
            return Err(format!("etcd is unavailable: {why}"));
        }
        if let Some(why) = lock(&self.inner.write_failure).clone() {
            return Err(why);
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let t0 = Instant::now();
        let mut rx = inner.confirmed.subscribe();
        inner.demand.notify_one();
        let mut deadline = None;
        loop {
            let c = *rx.borrow_and_update();
            if c.at >= t0 {
                return Ok(());
            }
            if c.failing {
                // The next barrier (on the next endpoint) now, not at the heartbeat.
                inner.demand.notify_one();
            }
            let d = *deadline.get_or_insert_with(|| {
                t0 + if c.failing {
                    SYNC_WAIT_FAILING
                } else {
                    SYNC_WAIT
                }
            });
            match tokio::time::timeout_at(d, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    // Never serve a copy etcd has shown to be behind: wait for the watch (a
                    // short delay while it moves off a hung member), or refuse.
                    let known = inner.known.load(Ordering::Relaxed);
                    if inner.cache().revision < known {
                        let left = (t0 + SYNC_WAIT).saturating_duration_since(Instant::now());
                        inner.wait_applied(known, left).await?;
                    }
                    return inner.within_staleness(*rx.borrow());
                }
            }
        }
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.applied.subscribe())
    }

    fn revocation_epoch(&self) -> u64 {
        self.inner.revocations.load(Ordering::Relaxed)
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.inner.cache().map.keys().all(|k| k == CLOCK))
    }

    async fn export(&self) -> Result<Vec<Record>, StoreError> {
        let cache = self.inner.cache();
        let mut out = Vec::new();
        for (k, e) in &cache.map {
            if let Some(key) = k.strip_prefix(SECRETS) {
                out.push(Record::Secret {
                    key: key.to_owned(),
                    sealed: e.value.clone(),
                    updated_at: cache.written_at(key),
                });
                continue;
            }
            let Some((table, key)) = k.split_once('/') else {
                continue;
            };
            if let Some(table) = Table::ALL.iter().find(|t| t.name() == table) {
                out.push(Record::Row {
                    table: *table,
                    key: key.to_owned(),
                    value: e.value.clone(),
                });
            }
        }
        Ok(out)
    }

    async fn import(&self, records: Vec<Record>) -> Result<(), StoreError> {
        for r in records {
            match r {
                Record::Row { table, key, value } => {
                    if !self.insert_new(table, &key, &value).await? {
                        return Err(StoreError::Engine(format!(
                            "{}/{key} appeared in the target during the copy",
                            table.name()
                        )));
                    }
                }
                Record::Secret {
                    key,
                    sealed,
                    updated_at,
                } => {
                    self.inner.put_secret_at(&key, &sealed, updated_at).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_keeps_the_newest_state_of_each_key() {
        let mut c = Cache::default();
        c.put("secrets/alice/k".into(), vec![1], 5);
        c.put("users/alice".into(), vec![2], 6);
        c.put("secrets/alice/k".into(), vec![3], 7);
        c.put("deleted/bob/x".into(), vec![], 8);
        assert_eq!(
            c.feed.iter().cloned().collect::<Vec<_>>(),
            [(7, "secrets/alice/k".into()), (8, "deleted/bob/x".into())]
        );
        c.delete("secrets/alice/k");
        assert_eq!(c.feed.len(), 1);
        assert_eq!(c.range("secrets/").count(), 0);
        assert_eq!(c.range("users/").count(), 1);
        assert_eq!(range_end("/p/"), b"/p0".to_vec());
    }
}
