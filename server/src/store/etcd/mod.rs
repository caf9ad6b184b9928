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

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;

use super::{Change, Record, SecretMeta, Store, StoreError, StoredSecret, Table, unix_now};

mod config;
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        self.put_secret_at(key, sealed, Some(unix_now())).await
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
