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
//! The parts: `config.rs` (target, TLS, log-in), `kv.rs` (the seam over the etcd client),
//! `rpc.rs` (retries, endpoint rotation, deadlines, the lost-answer check), `mirror.rs` (the
//! copy, its watch and the barrier); this file holds the key layout and the `Store`.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{Change, Record, SecretMeta, Store, StoreError, StoredSecret, Table};

mod config;
#[cfg(test)]
mod fake;
mod kv;
mod mirror;
mod rpc;

pub use config::{DEFAULT_PREFIX, EtcdOptions, EtcdTarget};
use kv::{Endpoint, Kv, Op, When, Write, Written};
use mirror::Mirror;
use rpc::{DEADLINE, Landed, Rpc};

const SECRETS: &str = "secrets/";
const TOMBSTONES: &str = "deleted/";
const MARKERS: &str = "markers/";
/// `times/OWNER/KEY`: when the secret was written (Unix seconds, decimal).
const TIMES: &str = "times/";
/// The key every write transaction also writes (see `clock_key`).
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

/// `/PREFIX/clock`: written by every write transaction of the store, so that each has an
/// event in the prefix and the newest one's revision can be read.
fn clock_key(root: &str) -> String {
    format!("{root}{CLOCK}")
}

/// The etcd-backed store.
#[derive(Debug, Clone)]
pub struct EtcdStore {
    target: EtcdTarget,
    /// `/PREFIX/`
    root: String,
    rpc: Arc<Rpc>,
    mirror: Arc<Mirror>,
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
            .map(|e| {
                let ep = Endpoint::new(format!("{scheme}://{e}"), options.clone());
                Arc::new(ep) as Arc<dyn Kv>
            })
            .collect();
        Self::with_endpoints(target, endpoints, opts.max_staleness).await
    }

    async fn with_endpoints(
        target: EtcdTarget,
        endpoints: Vec<Arc<dyn Kv>>,
        max_staleness: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let root = format!("/{}/", target.prefix);
        let rpc = Arc::new(Rpc::new(endpoints));
        let mirror = Mirror::open(rpc.clone(), root.clone(), max_staleness).await?;
        Ok(Self {
            target,
            root,
            rpc,
            mirror,
        })
    }

    pub fn target(&self) -> &EtcdTarget {
        &self.target
    }

    /// A write transaction: `ops` when `when` holds, and the clock either way.
    fn write(&self, when: Option<When>, ops: Vec<Op>) -> Write {
        Write {
            when,
            ops,
            clock: clock_key(&self.root),
        }
    }

    /// Sends a write (see `Rpc::write`) and returns once the watch applied it, so that this
    /// replica reads its own writes.
    async fn send(&self, what: &str, write: Write, landed: Landed) -> Result<Written, StoreError> {
        let w = self.rpc.write(what, &write, &landed).await?;
        if let Err(e) = self.mirror.wait_applied(w.revision, DEADLINE).await {
            // The write is in etcd; only this replica's copy lags.
            tracing::warn!(revision = w.revision, error = %e, "a write is not in this replica's cache yet");
        }
        Ok(w)
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
            Some(at) => Op::Put(time_key, at.to_string().into_bytes()),
            None => Op::Delete(time_key),
        };
        let write = self.write(
            None,
            vec![
                Op::Put(k.clone(), sealed.to_vec()),
                time,
                Op::Delete(format!("{root}{TOMBSTONES}{key}")),
            ],
        );
        let landed = Landed::Value {
            key: k,
            value: sealed.to_vec(),
        };
        Ok(self.send("secret write", write, landed).await?.revision)
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .mirror
            .cache()
            .map
            .get(&row_key(table, key))
            .map(|e| e.value.clone()))
    }

    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let p = row_key(table, prefix);
        let skip = table.name().len() + 1;
        Ok(self
            .mirror
            .cache()
            .range(&p)
            .map(|(k, e)| (k[skip..].to_owned(), e.value.clone()))
            .collect())
    }

    async fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let k = format!("{}{}", self.root, row_key(table, key));
        let write = self.write(None, vec![Op::Put(k.clone(), value.to_vec())]);
        let landed = Landed::Value {
            key: k,
            value: value.to_vec(),
        };
        self.send("put", write, landed).await?;
        Ok(())
    }

    async fn insert_new(&self, table: Table, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let k = format!("{}{}", self.root, row_key(table, key));
        let write = self.write(
            Some(When::Absent(k.clone())),
            vec![Op::Put(k.clone(), value.to_vec())],
        );
        let landed = Landed::Value {
            key: k,
            value: value.to_vec(),
        };
        Ok(self.send("insert", write, landed).await?.succeeded)
    }

    async fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        let k = format!("{}{}", self.root, row_key(table, key));
        let write = self.write(None, vec![Op::Delete(k.clone())]);
        let landed = Landed::Absent { key: k };
        Ok(self.send("delete", write, landed).await?.deleted)
    }

    async fn get_secret(&self, key: &str) -> Result<Option<StoredSecret>, StoreError> {
        let cache = self.mirror.cache();
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
        let cache = self.mirror.cache();
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
        self.put_secret_at(key, sealed, Some(crate::clock::now_secs()))
            .await
    }

    async fn delete_secret(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let root = &self.root;
        let k = format!("{root}{SECRETS}{key}");
        let write = self.write(
            Some(When::Present(k.clone())),
            vec![
                Op::Delete(k.clone()),
                Op::Delete(format!("{root}{TIMES}{key}")),
                Op::Put(format!("{root}{TOMBSTONES}{key}"), Vec::new()),
            ],
        );
        let w = self
            .send("secret delete", write, Landed::Absent { key: k })
            .await?;
        Ok(w.succeeded.then_some(w.revision))
    }

    async fn changes_since(&self, revision: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let cache = self.mirror.cache();
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
        Ok(self.mirror.cache().newest)
    }

    async fn touch(&self, marker: &str) -> Result<u64, StoreError> {
        let k = format!("{}{MARKERS}{marker}", self.root);
        let write = self.write(None, vec![Op::Put(k, Vec::new())]);
        // Sending a marker twice does no harm.
        Ok(self
            .send("marker write", write, Landed::Unknown)
            .await?
            .revision)
    }

    async fn health(&self) -> Result<(), String> {
        if let Some(why) = self.mirror.barrier_failure() {
            return Err(format!("etcd is unavailable: {why}"));
        }
        if let Some(why) = self.rpc.write_failure() {
            return Err(why);
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.mirror.sync().await
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.mirror.changes())
    }

    fn revocation_epoch(&self) -> u64 {
        self.mirror.revocation_epoch()
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.mirror.cache().map.keys().all(|k| k == CLOCK))
    }

    async fn export(&self) -> Result<Vec<Record>, StoreError> {
        let cache = self.mirror.cache();
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
                    self.put_secret_at(&key, &sealed, updated_at).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::fake::{Call, Etcd, Fault, Trouble};
    use super::*;

    /// Runs a test on a runtime whose clock jumps to the next timer when all is idle, so
    /// timeouts of seconds take none.
    pub(super) fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(f)
    }

    /// An outcome in a word or two: the value, or the kind of failure.
    pub(super) fn said<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
        match r {
            Ok(v) => format!("{v:?}"),
            Err(StoreError::Unavailable(_)) => "unavailable".into(),
            Err(StoreError::Engine(_)) => "engine".into(),
            Err(e) => format!("{e}"),
        }
    }

    async fn open(etcd: &Arc<Etcd>) -> EtcdStore {
        let target = EtcdTarget::parse("etcd://fake:1,fake:2,fake:3/test").unwrap();
        EtcdStore::with_endpoints(target, etcd.members(), Duration::from_secs(5))
            .await
            .unwrap()
    }

    #[derive(Debug, Clone, Copy)]
    enum Do {
        Put,
        Insert,
        Delete,
        PutSecret,
        DeleteSecret,
        Touch,
    }

    /// Runs `op` on a new store over three members, the first answering, after scripting
    /// `faults`: its answer, the members its transaction was sent to, and how many
    /// transactions etcd applied.
    #[track_caller]
    fn check_write(
        op: Do,
        faults: &[(usize, Call, Fault)],
        answer: &str,
        sent: &[usize],
        applied: i64,
    ) {
        let got = run(async {
            let etcd = Etcd::new(3);
            let store = open(&etcd).await;
            // What the operation changes is there first.
            match op {
                Do::Delete => store.put(Table::Users, "alice", b"x").await.unwrap(),
                Do::DeleteSecret => drop(store.put_secret("alice/k", b"old").await.unwrap()),
                _ => {}
            }
            etcd.calls(Call::Txn);
            for &(member, call, fault) in faults {
                etcd.script(member, call, fault);
            }
            let before = etcd.revision();
            let answer = match op {
                Do::Put => said(store.put(Table::Users, "bob", b"record").await),
                Do::Insert => said(store.insert_new(Table::Users, "bob", b"record").await),
                Do::Delete => said(store.delete(Table::Users, "alice").await),
                Do::PutSecret => said(store.put_secret("alice/k", b"sealed").await),
                Do::DeleteSecret => said(store.delete_secret("alice/k").await),
                Do::Touch => said(store.touch("alice").await),
            };
            (answer, etcd.calls(Call::Txn), etcd.revision() - before)
        });
        assert_eq!(
            got,
            (answer.to_owned(), sent.to_vec(), applied),
            "{op:?} after {faults:?}"
        );
    }

    #[test]
    fn a_write_whose_answer_was_lost_is_checked_before_it_is_sent_again() {
        use Call::{Check, Txn};
        use Fault::{Hang, LoseAnswer, Refused, Unavailable};
        check_write(Do::Put, &[], "()", &[0], 1);
        // Applied, answer lost: the check finds its value, and it is not sent again.
        check_write(Do::Put, &[(0, Txn, LoseAnswer)], "()", &[0], 1);
        // Not applied, no answer: the check finds nothing, it goes to the next member.
        check_write(Do::Put, &[(0, Txn, Hang)], "()", &[0, 1], 1);
        check_write(Do::Put, &[(0, Txn, Unavailable)], "()", &[0, 1], 1);
        check_write(
            Do::Put,
            &[(0, Txn, Unavailable), (1, Txn, Unavailable)],
            "()",
            &[0, 1, 2],
            1,
        );
        check_write(Do::Put, &[(0, Txn, Refused)], "engine", &[0], 0);
        // The check itself moves on from a member that fails it.
        check_write(
            Do::Put,
            &[(0, Txn, LoseAnswer), (1, Check, Unavailable)],
            "()",
            &[0],
            1,
        );
        // Two attempts that time out use up the deadline: the write fails, nothing applied.
        check_write(
            Do::Put,
            &[(0, Txn, Hang), (1, Txn, Hang)],
            "unavailable",
            &[0, 1],
            0,
        );
        // Sent again, an insert would find its own row and say `false`.
        check_write(Do::Insert, &[], "true", &[0], 1);
        check_write(Do::Insert, &[(0, Txn, LoseAnswer)], "true", &[0], 1);
        check_write(Do::Insert, &[(0, Txn, Hang)], "true", &[0, 1], 1);
        // A delete landed when the key is gone; sent again it would remove nothing.
        check_write(Do::Delete, &[(0, Txn, LoseAnswer)], "true", &[0], 1);
        check_write(Do::PutSecret, &[(0, Txn, LoseAnswer)], "2", &[0], 1);
        check_write(
            Do::DeleteSecret,
            &[(0, Txn, LoseAnswer)],
            "Some(3)",
            &[0],
            1,
        );
        check_write(Do::DeleteSecret, &[(0, Txn, Hang)], "Some(3)", &[0, 1], 1);
        // A marker leaves nothing to check: it is sent again, twice applied is harmless.
        check_write(Do::Touch, &[(0, Txn, Hang)], "2", &[0, 1], 1);
        check_write(Do::Touch, &[(0, Txn, LoseAnswer)], "3", &[0, 1], 2);
    }

    /// Another replica writes a user while the members have `troubles` (this replica reads
    /// and watches through member 0): what a request's `sync` says, whether the request then
    /// reads the user, and how long `sync` took at most.
    #[track_caller]
    fn check_sync(troubles: &[Trouble], answer: &str, within: Duration) {
        let (got, took) = run(async {
            let etcd = Etcd::new(3);
            let store = open(&etcd).await;
            // A barrier or two first, as a running replica has had.
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (member, trouble) in troubles.iter().enumerate() {
                etcd.trouble(member, *trouble);
            }
            etcd.write(&store.write(None, vec![Op::Put("/test/users/bob".into(), b"x".to_vec())]));
            let t0 = Instant::now();
            let synced = said(store.sync().await);
            let took = t0.elapsed();
            let seen = store.get(Table::Users, "bob").await.unwrap().is_some();
            (
                format!("{synced}, {}", if seen { "seen" } else { "unseen" }),
                took,
            )
        });
        assert_eq!(got, answer, "{troubles:?}");
        assert!(took <= within, "{troubles:?}: sync took {took:?}");
    }

    #[test]
    fn a_request_reads_what_etcd_confirmed_or_waits_or_is_served_within_max_staleness() {
        use Trouble::{Hung, LaggingWatch, None, SlowWatch};
        check_sync(&[], "(), seen", Duration::from_millis(10));
        // The barrier waits for the watch to apply what etcd confirmed.
        check_sync(
            &[SlowWatch(Duration::from_millis(400))],
            "(), seen",
            Duration::from_millis(500),
        );
        // Member 0 answers reads but its watch delivers nothing: the barrier finds the copy
        // behind, the watch moves to member 1 and loads the copy again.
        check_sync(&[LaggingWatch], "(), seen", Duration::from_millis(1500));
        // Member 0 answers nothing: the barrier times out on the watch's member, both move on.
        check_sync(&[Hung], "(), seen", Duration::from_millis(1500));
        check_sync(&[None, Hung], "(), seen", Duration::from_millis(10));
        // No member answers (no quorum): the copy is served, as it was confirmed less than
        // --max-staleness ago, and the write is not seen.
        check_sync(&[Hung, Hung, Hung], "(), unseen", Duration::from_secs(3));
    }

    #[test]
    fn without_etcd_requests_are_refused_after_max_staleness() {
        let (before, after, health) = run(async {
            let etcd = Etcd::new(2);
            let store = open(&etcd).await;
            etcd.trouble(0, Trouble::Hung);
            etcd.trouble(1, Trouble::Hung);
            let before = said(store.sync().await);
            tokio::time::sleep(Duration::from_secs(5)).await;
            let after = said(store.sync().await);
            (before, after, store.health().await.is_err())
        });
        assert_eq!(
            (before.as_str(), after.as_str(), health),
            ("()", "unavailable", true)
        );
    }
}
