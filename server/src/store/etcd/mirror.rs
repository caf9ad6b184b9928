//! The replica's copy of the prefix: loaded at start (pages at one revision), kept current by
//! one etcd watch, and proven current by the barrier (`sync`) before a request is served.
//!
//! The barrier reads the clock key's revision with a linearizable read and waits until the
//! watch has applied it; one barrier serves every request that arrived before it started.
//! While etcd cannot confirm (no quorum, no endpoint), requests are served for at most
//! `max_staleness` after the last confirmation, then refused with 503. A watch that does not
//! follow what etcd confirmed (a hung member keeps its stream open) drops its stream, and
//! one that cannot catch up loads the copy again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use etcd_client::EventType;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::kv::{Event, range_end};
use super::rpc::{ATTEMPT, Rpc};
use super::{TIMES, clock_key, in_feed, revokes};
use crate::store::StoreError;
use crate::sync::lock;

/// Records per page of the start-up load (a secret is at most ~1.4 MiB in etcd).
const PAGE: i64 = 32;
/// A barrier (linearizable read, then the watch catching up) must end within this.
const BARRIER: Duration = Duration::from_secs(1);
/// Without requests, a barrier still runs this often, so `health` knows.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a request waits for a barrier that started after it arrived.
const SYNC_WAIT: Duration = Duration::from_secs(3);
/// How long a request waits for a new barrier while the last one failed.
const SYNC_WAIT_FAILING: Duration = Duration::from_millis(300);

/// Marks a watch stream open (in `Mirror::streaming_since`) for as long as it lives.
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
pub(super) struct Entry {
    pub(super) value: Vec<u8>,
    pub(super) revision: u64,
}

/// The in-memory copy of the prefix.
#[derive(Debug, Default)]
pub(super) struct Cache {
    pub(super) map: BTreeMap<String, Entry>,
    /// `(mod revision, key)` of every secret, tombstone and marker: the change feed.
    pub(super) feed: BTreeSet<(u64, String)>,
    /// The revision up to which every event has been applied (after a load, etcd's revision
    /// then, which counts writes outside the prefix too): where the watch resumes.
    pub(super) revision: u64,
    /// The newest mod revision in the prefix (the clock key's, as every write ticks it): the
    /// same number on every replica that has applied the same writes, whenever it loaded.
    pub(super) newest: u64,
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
    pub(super) fn written_at(&self, key: &str) -> Option<u64> {
        let e = self.map.get(&format!("{TIMES}{key}"))?;
        std::str::from_utf8(&e.value).ok()?.parse().ok()
    }

    pub(super) fn range(&self, prefix: &str) -> impl Iterator<Item = (&String, &Entry)> {
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

/// The copy, and what the watch and the barrier tasks share about it.
#[derive(Debug)]
pub(super) struct Mirror {
    rpc: Arc<Rpc>,
    /// `/PREFIX/`
    root: String,
    cache: RwLock<Cache>,
    /// The cache's revision, after every applied batch.
    applied: watch::Sender<u64>,
    confirmed: watch::Sender<Confirmed>,
    /// Asks the barrier task for a barrier now.
    demand: Notify,
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

impl Mirror {
    /// Loads the prefix and starts the watch and barrier tasks.
    pub(super) async fn open(
        rpc: Arc<Rpc>,
        root: String,
        max_staleness: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        let now = Instant::now();
        let mirror = Arc::new(Mirror {
            rpc,
            root,
            cache: RwLock::new(Cache::default()),
            applied: watch::channel(0).0,
            confirmed: watch::channel(Confirmed {
                at: now,
                failing: false,
            })
            .0,
            demand: Notify::new(),
            barrier_failure: Mutex::new(None),
            revocations: AtomicU64::new(0),
            max_staleness,
            known: AtomicU64::new(0),
            watch_stuck: Notify::new(),
            stuck_at: Mutex::new(None),
            streaming_since: Mutex::new(None),
            watching: AtomicUsize::new(0),
        });
        mirror.reload().await?;
        mirror.confirmed.send_replace(Confirmed {
            at: now,
            failing: false,
        });
        tokio::spawn(mirror.clone().watch_loop());
        tokio::spawn(mirror.clone().barrier_loop());
        Ok(mirror)
    }

    pub(super) fn cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cache_mut(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Revisions applied, for waking watchers.
    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    pub(super) fn revocation_epoch(&self) -> u64 {
        self.revocations.load(Ordering::Relaxed)
    }

    /// Why the last barrier failed, while none has succeeded since.
    pub(super) fn barrier_failure(&self) -> Option<String> {
        lock(&self.barrier_failure).clone()
    }

    /// Loads the whole prefix at one revision and replaces the cache.
    async fn reload(&self) -> Result<(), StoreError> {
        let end = range_end(&self.root);
        let mut map = Cache::default();
        let mut from = self.root.clone().into_bytes();
        let mut at = 0i64;
        loop {
            let (key, end) = (&from, &end);
            let page = self
                .rpc
                .call("load", move |kv| async move {
                    kv.range(key, end, PAGE, at).await
                })
                .await?;
            if at == 0 {
                at = page.revision;
            }
            let last = page.items.last().map(|i| i.key.clone());
            for item in page.items {
                let Some(k) = self.local_key(&item.key) else {
                    continue;
                };
                map.put(k, item.value, u64::try_from(item.mod_revision).unwrap_or(0));
            }
            match last {
                Some(mut last) if page.more => {
                    last.push(0);
                    from = last;
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

    /// Applies one message of the watch.
    fn apply(&self, events: Vec<Event>) {
        let mut revoked = false;
        let rev = {
            let mut cache = self.cache_mut();
            let mut top = cache.revision;
            for ev in events {
                let kv = ev.item;
                let rev = u64::try_from(kv.mod_revision).unwrap_or(0);
                top = top.max(rev);
                let Some(key) = self.local_key(&kv.key) else {
                    continue;
                };
                match ev.kind {
                    EventType::Put => {
                        revoked |= kv.version > 1 && revokes(&key);
                        cache.put(key, kv.value, rev);
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
            let i = self.rpc.current();
            let url = self.rpc.endpoint(i).url().to_owned();
            let started = Instant::now();
            let outcome = self.watch_once(i).await;
            if started.elapsed() > Duration::from_secs(5) {
                // A stream that lived is no reason to wait long before the next one.
                pause = Duration::from_millis(50);
            }
            match outcome {
                Ok(why) => {
                    if let Reload::Behind(_) = why {
                        self.rpc.rotate(i);
                    }
                    tracing::warn!(endpoint = %url, why = %why, "reloading this replica's copy from etcd");
                    if let Err(e) = self.reload().await {
                        tracing::error!(error = %e, "reloading from etcd failed");
                        tokio::time::sleep(pause).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %url, error = %e, "the etcd watch failed; trying the next endpoint");
                    self.rpc.rotate(i);
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
        let ep = self.rpc.endpoint(i);
        // Connecting logs in when etcd wants a password: bounded, a hung member must not stop
        // the watch from moving on.
        tokio::time::timeout(ATTEMPT, ep.connect())
            .await
            .map_err(|_| format!("no connection within {}s", ATTEMPT.as_secs()))?
            .map_err(|e| e.to_string())?;
        let start = self.cache().revision + 1;
        let mut stream = tokio::time::timeout(ATTEMPT, ep.watch(&self.root, start))
            .await
            .map_err(|_| format!("no watch within {}s", ATTEMPT.as_secs()))?
            .map_err(|e| e.to_string())?;
        let opened = Instant::now();
        let _streaming = Streaming::begin(&self.streaming_since, opened);
        loop {
            let resp = tokio::select! {
                m = stream.next() => match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err("the watch stream ended".into()),
                    // etcd sends up to 1000 missed revisions in one message: over the largest
                    // message accepted, replaying them can never work.
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
            if resp.canceled {
                if resp.compact_revision > 0 {
                    return Ok(Reload::Compacted);
                }
                if resp.cancel_reason.contains("invalid auth token") {
                    // A restarted etcd forgot the token, and a stream is not refreshed by
                    // the client: authenticate again before the next stream.
                    ep.refresh_token()
                        .await
                        .map_err(|e| format!("authenticating to {} again: {e}", ep.url()))?;
                }
                return Err(format!("etcd cancelled the watch: {}", resp.cancel_reason));
            }
            // Progress reports are not used: etcd 3.4 sends them before an unsynced watcher
            // has caught up. The clock key gives every write of ours an event instead.
            if !resp.events.is_empty() {
                self.apply(resp.events);
            }
        }
    }

    /// Waits until the cache has applied `rev`.
    pub(super) async fn wait_applied(&self, rev: u64, within: Duration) -> Result<(), StoreError> {
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

    /// Reads the prefix's revision from etcd, then waits for the watch to apply it, all within
    /// `BARRIER`. When etcd answered but the watch applied nothing meanwhile, the watch is
    /// told to move to another endpoint.
    ///
    /// The revision is the clock key's mod revision, read on the current endpoint. (etcd's
    /// own revision would do only if nothing else wrote to this etcd: the watch never sees
    /// writes outside the prefix.)
    async fn barrier(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let deadline = started + BARRIER;
        let clock = clock_key(&self.root);
        let rev = match tokio::time::timeout_at(deadline, self.rpc.mod_revision(&clock)).await {
            Ok(rev) => rev?,
            Err(_) => {
                let i = self.rpc.current();
                self.rpc.rotate(i);
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

    /// `Store::sync`: returns once a barrier that started after the call succeeded, or,
    /// while barriers fail, once the copy is known to be no older than `max_staleness`.
    pub(super) async fn sync(&self) -> Result<(), StoreError> {
        let t0 = Instant::now();
        let mut rx = self.confirmed.subscribe();
        self.demand.notify_one();
        let mut deadline = None;
        loop {
            let c = *rx.borrow_and_update();
            if c.at >= t0 {
                return Ok(());
            }
            if c.failing {
                // The next barrier (on the next endpoint) now, not at the heartbeat.
                self.demand.notify_one();
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
                    let known = self.known.load(Ordering::Relaxed);
                    if self.cache().revision < known {
                        let left = (t0 + SYNC_WAIT).saturating_duration_since(Instant::now());
                        self.wait_applied(known, left).await?;
                    }
                    return self.within_staleness(*rx.borrow());
                }
            }
        }
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
