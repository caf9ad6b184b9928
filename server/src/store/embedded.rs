//! The embedded default store: one redb file in the data directory.
//!
//! redb commits with fsync (`Durability::Immediate`), so a write acknowledged to a client has
//! reached the disk and survives `kill -9`. Reads run inline (MVCC, they never wait for a
//! writer); writes run on the blocking pool because they fsync.
//!
//! After an I/O error (a full disk, say) redb refuses every later operation until the database
//! is re-opened (`PreviousIo`). So a failed write re-opens it from the file, which holds exactly
//! the committed transactions, and the next write runs on the fresh one. The failed write is not
//! retried: whether a commit whose fsync failed reached the disk is unknown, and running it
//! again could apply it twice. Until a write succeeds again, `health` reports the failure.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crate::sync::lock;
use async_trait::async_trait;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata as _,
    TableDefinition,
};

use super::{Change, Record, SecretMeta, Store, StoreError, StoredSecret, Table};

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("grants");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
/// `OWNER/KEY` → version (u64 LE) ++ sealed value
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// `OWNER/KEY` → when the secret was written (Unix seconds)
const SECRET_TIMES: TableDefinition<&str, u64> = TableDefinition::new("secret_times");
/// revision → deleted flag (1 byte) ++ `OWNER/KEY`
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
/// The embedded store's own bookkeeping, never exported: the newest revision (`REVISION`) and
/// the health probe's stamp. Not `Table::Settings`; on disk it is `meta` (see `Table::name`).
const BOOKKEEPING: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// Written by `health` to find out whether the store can write again.
const PROBE: &str = "health-probe";
/// How often `health` may try a write while the store is failing.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How many change-log entries are kept for watchers that fall behind.
const CHANGES_KEPT: u64 = 100_000;

fn def(t: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match t {
        Table::Users => USERS,
        Table::Tokens => TOKENS,
        Table::Grants => GRANTS,
        Table::Jobs => JOBS,
        Table::Sessions => SESSIONS,
        Table::Settings => SETTINGS,
    }
}

/// Sorts redb's failures: those after which redb wants the database re-opened, and the rest.
fn io<E: Into<redb::Error>>(e: E) -> StoreError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Io(_)
        | redb::Error::PreviousIo
        | redb::Error::Backend(_)
        | redb::Error::DatabaseClosed
        | redb::Error::LockPoisoned(_) => StoreError::Io(e.to_string()),
        _ => StoreError::Engine(e.to_string()),
    }
}

/// Creates the store's file with mode 0600 before redb opens it (redb would create it with
/// 0666 minus the umask), and narrows an existing file readable by group or others to 0600.
/// A symbolic link in the file's place is refused, so that the mode change never lands on a
/// file elsewhere.
fn private_file(path: &Path) -> Result<(), StoreError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                StoreError::File(format!(
                    "store '{}' is a symbolic link; point --data-dir at the real directory",
                    path.display()
                ))
            } else {
                StoreError::File(format!("opening store '{}': {e}", path.display()))
            }
        })?;
    let meta = f
        .metadata()
        .map_err(|e| StoreError::File(format!("reading store '{}': {e}", path.display())))?;
    if !meta.is_file() {
        return Err(StoreError::File(format!(
            "store '{}' is not a regular file",
            path.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| {
                StoreError::File(format!(
                    "store '{}' has mode {mode:o} and cannot be made 0600: {e}",
                    path.display()
                ))
            })?;
        tracing::warn!(path = %path.display(), old_mode = format!("{mode:o}"), "the store was readable by group or others; its mode is now 600");
    }
    Ok(())
}

/// Write transactions handed to the blocking pool at once. redb runs one write transaction at
/// a time, and each commits with fsync, so more would only park threads on its lock: with 200
/// clients writing, 200 threads each kept an allocator heap of their own, and the process grew
/// past 2 GiB of RSS (BENCHMARKS.md, issues 18 and 19). The rest wait here, asynchronously.
const WRITERS: usize = 2;

/// The redb-backed store.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    grants: Arc<GrantScans>,
    writers: Arc<tokio::sync::Semaphore>,
    /// Blocking threads in a write now, and the most there have been (for tests).
    writing: Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
}

/// Scans of the grants table, kept until the table is written: every request loads its user's
/// grants (a read transaction, a fifth of a secret read's store time), and grants change
/// rarely. Only this process writes the database, so a write here is the only way they
/// change. A scan keeps its answer only if no grants write ended while it ran: it takes the
/// generation before its read transaction begins, and a write moves the generation on (and
/// drops every scan) after it ends, so a scan that read the old rows sees another generation
/// when it comes to keep them.
#[derive(Debug, Default)]
struct GrantScans(Mutex<(u64, HashMap<String, Arc<Rows>>)>);

type Rows = Vec<(String, Vec<u8>)>;

/// Scans kept at most; beyond, they are all dropped.
const GRANT_SCANS: usize = 4096;

impl GrantScans {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<String, Arc<Rows>>)> {
        crate::sync::lock(&self.0)
    }

    /// The kept scan of `prefix`, or the generation a new one must be kept under.
    fn get(&self, prefix: &str) -> Result<Arc<Rows>, u64> {
        let g = self.lock();
        g.1.get(prefix).cloned().ok_or(g.0)
    }

    fn keep(&self, generation: u64, prefix: &str, rows: Arc<Rows>) {
        let mut g = self.lock();
        if g.0 != generation {
            return;
        }
        if g.1.len() >= GRANT_SCANS {
            g.1.clear();
        }
        g.1.insert(prefix.to_owned(), rows);
    }

    /// A write of the grants table ended (whatever its outcome).
    fn written(&self) {
        let mut g = self.lock();
        g.0 += 1;
        g.1.clear();
    }
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    db: RwLock<Slot>,
    /// Why the last write failed; `None` once a write succeeds.
    failure: Mutex<Option<String>>,
    last_probe: Mutex<Option<Instant>>,
}

/// The open database, and how many times it was (re-)opened, so that several writers that
/// failed together re-open it once.
#[derive(Debug)]
struct Slot {
    db: Option<Database>,
    generation: u64,
}

fn not_open(path: &Path) -> StoreError {
    StoreError::Io(format!("store '{}' is not open", path.display()))
}

impl EmbeddedStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        private_file(path)?;
        let db = Database::create(path).map_err(io)?;
        // Create every table up front so reads never meet a missing one.
        let tx = db.begin_write().map_err(io)?;
        for t in [USERS, TOKENS, GRANTS, JOBS, SESSIONS, SETTINGS, SECRETS] {
            tx.open_table(t).map_err(io)?;
        }
        tx.open_table(CHANGES).map_err(io)?;
        tx.open_table(BOOKKEEPING).map_err(io)?;
        tx.open_table(SECRET_TIMES).map_err(io)?;
        tx.commit().map_err(io)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                db: RwLock::new(Slot {
                    db: Some(db),
                    generation: 0,
                }),
                failure: Mutex::new(None),
                last_probe: Mutex::new(None),
            }),
            grants: Arc::default(),
            writers: Arc::new(tokio::sync::Semaphore::new(WRITERS)),
            writing: Arc::default(),
        })
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        let turn = self
            .writers
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Engine(e.to_string()))?;
        // The turn goes with the write: a caller that gives up waiting does not free it while
        // the write still runs.
        let writing = self.writing.clone();
        tokio::task::spawn_blocking(move || {
            use std::sync::atomic::Ordering::SeqCst;
            let _turn = turn;
            let now = writing.0.fetch_add(1, SeqCst) + 1;
            writing.1.fetch_max(now, SeqCst);
            let r = inner.write(f);
            writing.0.fetch_sub(1, SeqCst);
            r
        })
        .await
        .map_err(|e| StoreError::Engine(e.to_string()))?
    }

    /// Runs `f` in a read transaction; when the database turns out to need re-opening, re-opens
    /// it and runs `f` once more (a read can be repeated).
    fn read<T>(
        &self,
        f: impl Fn(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let inner = &self.inner;
        let (generation, err) = {
            let slot = inner.open_slot()?;
            let db = slot.db.as_ref().ok_or_else(|| not_open(&inner.path))?;
            match db.begin_read().map_err(io).and_then(|tx| f(&tx)) {
                Err(e @ StoreError::Io(_)) => (slot.generation, e),
                other => return other,
            }
        };
        tracing::warn!(error = %err, "a read failed; re-opening the store");
        inner.reopen(generation)?;
        let slot = inner.open_slot()?;
        let db = slot.db.as_ref().ok_or_else(|| not_open(&inner.path))?;
        f(&db.begin_read().map_err(io)?)
    }

    fn scan_table<K, V>(
        table: &impl ReadableTable<K, V>,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>
    where
        K: redb::Key + for<'a> redb::Value<SelfType<'a> = &'a str> + 'static,
        V: for<'a> redb::Value<SelfType<'a> = &'a [u8]> + 'static,
    {
        let mut out = Vec::new();
        for row in table.range::<&str>(prefix..).map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }
}

impl Inner {
    fn read_slot(&self) -> RwLockReadGuard<'_, Slot> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The slot, re-opening the database first when an earlier re-open failed.
    fn open_slot(&self) -> Result<RwLockReadGuard<'_, Slot>, StoreError> {
        let slot = self.read_slot();
        if slot.db.is_some() {
            return Ok(slot);
        }
        let generation = slot.generation;
        drop(slot);
        self.reopen(generation)?;
        Ok(self.read_slot())
    }

    /// Closes the database and opens it again from the file, unless someone did since
    /// `generation` was seen.
    fn reopen(&self, generation: u64) -> Result<(), StoreError> {
        let mut slot = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.generation != generation && slot.db.is_some() {
            return Ok(());
        }
        // Closing first releases redb's file lock, which the new open takes.
        slot.db = None;
        slot.generation += 1;
        match Database::create(&self.path) {
            Ok(db) => {
                slot.db = Some(db);
                tracing::warn!(path = %self.path.display(), "re-opened the store");
                Ok(())
            }
            Err(e) => {
                let e = io(e);
                tracing::error!(path = %self.path.display(), error = %e, "cannot re-open the store");
                *lock(&self.failure) = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (generation, err) = {
            let slot = self.open_slot()?;
            let db = slot.db.as_ref().ok_or_else(|| not_open(&self.path))?;
            let r = db.begin_write().map_err(io).and_then(|tx| {
                let out = f(&tx)?;
                tx.commit().map_err(io)?;
                Ok(out)
            });
            match r {
                Ok(out) => {
                    *lock(&self.failure) = None;
                    return Ok(out);
                }
                Err(e @ StoreError::Io(_)) => (slot.generation, e),
                Err(e) => return Err(e),
            }
        };
        tracing::error!(path = %self.path.display(), error = %err, "a write failed; re-opening the store");
        *lock(&self.failure) = Some(err.to_string());
        // `health` reports this failure for a while before it tries a write of its own.
        *lock(&self.last_probe) = Some(Instant::now());
        let _ = self.reopen(generation);
        Err(err)
    }
}

/// Takes the next revision and logs the change, inside the caller's transaction.
fn bump(tx: &redb::WriteTransaction, key: &str, deleted: bool) -> Result<u64, StoreError> {
    let mut books = tx.open_table(BOOKKEEPING).map_err(io)?;
    let rev = books
        .get(REVISION)
        .map_err(io)?
        .map(|v| v.value())
        .unwrap_or(0)
        + 1;
    books.insert(REVISION, rev).map_err(io)?;
    let mut changes = tx.open_table(CHANGES).map_err(io)?;
    let mut entry = Vec::with_capacity(1 + key.len());
    entry.push(u8::from(deleted));
    entry.extend_from_slice(key.as_bytes());
    changes.insert(rev, entry.as_slice()).map_err(io)?;
    if rev > CHANGES_KEPT {
        changes
            .retain_in(..rev - CHANGES_KEPT, |_, _| false)
            .map_err(io)?;
    }
    Ok(rev)
}

/// Stores a sealed value under the next revision, with its write time.
fn store_secret(
    tx: &redb::WriteTransaction,
    key: &str,
    sealed: &[u8],
    updated_at: Option<u64>,
) -> Result<u64, StoreError> {
    let rev = bump(tx, key, false)?;
    let mut t = tx.open_table(SECRETS).map_err(io)?;
    let mut rec = Vec::with_capacity(8 + sealed.len());
    rec.extend_from_slice(&rev.to_le_bytes());
    rec.extend_from_slice(sealed);
    t.insert(key, rec.as_slice()).map_err(io)?;
    let mut times = tx.open_table(SECRET_TIMES).map_err(io)?;
    match updated_at {
        Some(at) => {
            times.insert(key, at).map_err(io)?;
        }
        None => {
            times.remove(key).map_err(io)?;
        }
    }
    Ok(rev)
}

/// When secret `key` was written, if known.
fn written_at(tx: &ReadTransaction, key: &str) -> Result<Option<u64>, StoreError> {
    Ok(tx
        .open_table(SECRET_TIMES)
        .map_err(io)?
        .get(key)
        .map_err(io)?
        .map(|t| t.value()))
}

fn decode_secret(key: &str, raw: &[u8]) -> Result<StoredSecret, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Corrupt {
            table: "secrets",
            key: key.to_owned(),
        });
    }
    let (v, sealed) = raw.split_at(8);
    Ok(StoredSecret {
        version: u64::from_le_bytes(v.try_into().map_err(|_| StoreError::Corrupt {
            table: "secrets",
            key: key.to_owned(),
        })?),
        sealed: sealed.to_vec(),
        updated_at: None,
    })
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(def(table)).map_err(io)?;
            Ok(t.get(key).map_err(io)?.map(|v| v.value().to_vec()))
        })
    }

    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let generation = if table == Table::Grants {
            match self.grants.get(prefix) {
                Ok(rows) => return Ok(rows.as_ref().clone()),
                Err(generation) => Some(generation),
            }
        } else {
            None
        };
        let rows = self.read(|tx| {
            let t = tx.open_table(def(table)).map_err(io)?;
            Self::scan_table(&t, prefix)
        })?;
        if let Some(generation) = generation {
            self.grants.keep(generation, prefix, Arc::new(rows.clone()));
        }
        Ok(rows)
    }

    async fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        let r = self
            .write(move |tx| {
                let mut t = tx.open_table(def(table)).map_err(io)?;
                t.insert(key.as_str(), value.as_slice()).map_err(io)?;
                Ok(())
            })
            .await;
        self.written(table);
        r
    }

    async fn insert_new(&self, table: Table, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        let r = self
            .write(move |tx| {
                let mut t = tx.open_table(def(table)).map_err(io)?;
                if t.get(key.as_str()).map_err(io)?.is_some() {
                    return Ok(false);
                }
                t.insert(key.as_str(), value.as_slice()).map_err(io)?;
                Ok(true)
            })
            .await;
        self.written(table);
        r
    }

    async fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        let r = self
            .write(move |tx| {
                let mut t = tx.open_table(def(table)).map_err(io)?;
                Ok(t.remove(key.as_str()).map_err(io)?.is_some())
            })
            .await;
        self.written(table);
        r
    }

    async fn get_sealed(&self, key: &str) -> Result<Option<StoredSecret>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(SECRETS).map_err(io)?;
            t.get(key)
                .map_err(io)?
                .map(|v| decode_secret(key, v.value()))
                .transpose()
        })
    }

    async fn get_secret(&self, key: &str) -> Result<Option<StoredSecret>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(SECRETS).map_err(io)?;
            let Some(v) = t.get(key).map_err(io)? else {
                return Ok(None);
            };
            let mut secret = decode_secret(key, v.value())?;
            secret.updated_at = written_at(tx, key)?;
            Ok(Some(secret))
        })
    }

    async fn list_secrets(&self, prefix: &str) -> Result<Vec<SecretMeta>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(SECRETS).map_err(io)?;
            let times = tx.open_table(SECRET_TIMES).map_err(io)?;
            let mut out = Vec::new();
            for row in t.range::<&str>(prefix..).map_err(io)? {
                let (k, v) = row.map_err(io)?;
                let k = k.value();
                if !k.starts_with(prefix) {
                    break;
                }
                out.push(SecretMeta {
                    key: k.to_owned(),
                    version: decode_secret(k, v.value())?.version,
                    updated_at: times.get(k).map_err(io)?.map(|t| t.value()),
                });
            }
            Ok(out)
        })
    }

    async fn put_secret(&self, key: &str, sealed: &[u8]) -> Result<u64, StoreError> {
        let (key, sealed) = (key.to_owned(), sealed.to_vec());
        self.write(move |tx| store_secret(tx, &key, &sealed, Some(crate::clock::now_secs())))
            .await
    }

    async fn delete_secret(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let key = key.to_owned();
        self.write(move |tx| {
            let existed = {
                let mut t = tx.open_table(SECRETS).map_err(io)?;
                t.remove(key.as_str()).map_err(io)?.is_some()
            };
            if !existed {
                return Ok(None);
            }
            tx.open_table(SECRET_TIMES)
                .map_err(io)?
                .remove(key.as_str())
                .map_err(io)?;
            bump(tx, &key, true).map(Some)
        })
        .await
    }

    async fn changes_since(&self, revision: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(CHANGES).map_err(io)?;
            let mut out = Vec::new();
            for row in t.range(revision + 1..).map_err(io)?.take(limit) {
                let (k, v) = row.map_err(io)?;
                let v = v.value();
                let corrupt = || StoreError::Corrupt {
                    table: "changes",
                    key: k.value().to_string(),
                };
                let (&flag, key) = v.split_first().ok_or_else(corrupt)?;
                out.push(Change {
                    revision: k.value(),
                    key: String::from_utf8(key.to_vec()).map_err(|_| corrupt())?,
                    deleted: flag == 1,
                });
            }
            Ok(out)
        })
    }

    async fn touch(&self, marker: &str) -> Result<u64, StoreError> {
        let marker = marker.to_owned();
        self.write(move |tx| bump(tx, &marker, false)).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(BOOKKEEPING).map_err(io)?;
            Ok(t.get(REVISION).map_err(io)?.map(|v| v.value()).unwrap_or(0))
        })
    }

    async fn health(&self) -> Result<(), String> {
        let Some(why) = lock(&self.inner.failure).clone() else {
            return Ok(());
        };
        {
            let mut last = lock(&self.inner.last_probe);
            if last.is_some_and(|t| t.elapsed() < PROBE_EVERY) {
                return Err(why);
            }
            *last = Some(Instant::now());
        }
        // A small real write: succeeds (and clears the failure) once the disk takes writes again.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.write(move |tx| {
            let mut books = tx.open_table(BOOKKEEPING).map_err(io)?;
            books.insert(PROBE, stamp).map_err(io)?;
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // One process owns the file: every acknowledged write is already in what reads see.
        Ok(())
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        // Every write goes through this process, which wakes its watchers itself.
        None
    }

    fn revocation_epoch(&self) -> u64 {
        // Nobody else changes the records; revocations made through this process are
        // forgotten at once (`Authenticator::forget`).
        0
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        self.read(|tx| {
            for t in Table::ALL {
                if tx.open_table(def(t)).map_err(io)?.len().map_err(io)? > 0 {
                    return Ok(false);
                }
            }
            Ok(tx.open_table(SECRETS).map_err(io)?.len().map_err(io)? == 0)
        })
    }

    async fn export(&self) -> Result<Vec<Record>, StoreError> {
        self.read(|tx| {
            let mut out = Vec::new();
            for table in Table::ALL {
                let t = tx.open_table(def(table)).map_err(io)?;
                for (key, value) in Self::scan_table(&t, "")? {
                    out.push(Record::Row { table, key, value });
                }
            }
            let t = tx.open_table(SECRETS).map_err(io)?;
            for (key, raw) in Self::scan_table(&t, "")? {
                let sealed = decode_secret(&key, &raw)?.sealed;
                let updated_at = written_at(tx, &key)?;
                out.push(Record::Secret {
                    key,
                    sealed,
                    updated_at,
                });
            }
            Ok(out)
        })
    }

    async fn import(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let r = self.import_rows(records).await;
        self.written(Table::Grants);
        r
    }
}

impl EmbeddedStore {
    /// After a write of `table` ended: kept grant scans are dropped.
    fn written(&self, table: Table) {
        if table == Table::Grants {
            self.grants.written();
        }
    }

    async fn import_rows(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.write(move |tx| {
            for r in &records {
                match r {
                    Record::Row { table, key, value } => {
                        let mut t = tx.open_table(def(*table)).map_err(io)?;
                        if t.insert(key.as_str(), value.as_slice())
                            .map_err(io)?
                            .is_some()
                        {
                            return Err(StoreError::Engine(format!(
                                "{}/{key} is already in the target",
                                table.name()
                            )));
                        }
                    }
                    Record::Secret {
                        key,
                        sealed,
                        updated_at,
                    } => {
                        store_secret(tx, key, sealed, *updated_at)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many requests write at once, at most `WRITERS` blocking threads run write
    /// transactions: the others wait without a thread (each thread costs the allocator a heap).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_take_at_most_writers_threads() {
        let (_d, s) = store();
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.write(move |tx| {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        let mut t = tx.open_table(def(Table::Users)).map_err(io)?;
                        t.insert(format!("u{i}").as_str(), &b"{}"[..]).map_err(io)?;
                        Ok(())
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let most = s.writing.1.load(std::sync::atomic::Ordering::SeqCst);
        assert!(most <= WRITERS, "{most} threads in a write at once");
        assert_eq!(s.scan(Table::Users, "u").await.unwrap().len(), 32);
    }

    fn store() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("db.redb")).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn secrets_take_increasing_revisions_and_log_changes() {
        let (_d, s) = store();
        assert_eq!(s.revision().await.unwrap(), 0);
        let v1 = s.put_secret("alice/a", b"x").await.unwrap();
        let v2 = s.put_secret("alice/a", b"y").await.unwrap();
        let v3 = s.put_secret("bob/b", b"z").await.unwrap();
        assert!(v1 < v2 && v2 < v3);
        let got = s.get_secret("alice/a").await.unwrap().unwrap();
        assert_eq!((got.version, got.sealed.as_slice()), (v2, &b"y"[..]));
        let at = got.updated_at.expect("a write time");
        assert!(crate::clock::now_secs().abs_diff(at) < 5, "written at {at}");
        assert_eq!(
            s.list_secrets("alice/").await.unwrap(),
            vec![SecretMeta {
                key: "alice/a".into(),
                version: v2,
                updated_at: Some(at)
            }]
        );
        // An export carries the time; an import keeps it.
        let copy = store();
        copy.1.import(s.export().await.unwrap()).await.unwrap();
        assert_eq!(
            copy.1
                .get_secret("alice/a")
                .await
                .unwrap()
                .unwrap()
                .updated_at,
            Some(at)
        );
        let d = s.delete_secret("alice/a").await.unwrap().unwrap();
        assert_eq!(s.delete_secret("alice/a").await.unwrap(), None);
        assert_eq!(s.get_secret("alice/a").await.unwrap(), None);
        let ch = s.changes_since(v2, 10).await.unwrap();
        assert_eq!(
            ch,
            vec![
                Change {
                    revision: v3,
                    key: "bob/b".into(),
                    deleted: false
                },
                Change {
                    revision: d,
                    key: "alice/a".into(),
                    deleted: true
                },
            ]
        );
    }

    #[tokio::test]
    async fn tables_and_prefix_scan() {
        let (_d, s) = store();
        assert!(s.insert_new(Table::Users, "alice", b"1").await.unwrap());
        assert!(!s.insert_new(Table::Users, "alice", b"2").await.unwrap());
        s.put(Table::Grants, "bob/x", b"1").await.unwrap();
        s.put(Table::Grants, "bobby/x", b"2").await.unwrap();
        s.put(Table::Grants, "bob/y", b"3").await.unwrap();
        let keys: Vec<_> = s
            .scan(Table::Grants, "bob/")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["bob/x", "bob/y"]);
        assert!(s.delete(Table::Grants, "bob/x").await.unwrap());
        assert!(!s.delete(Table::Grants, "bob/x").await.unwrap());
        assert_eq!(
            s.get(Table::Users, "alice").await.unwrap(),
            Some(b"1".to_vec())
        );
    }

    /// Grant scans are kept, and every kind of grants write shows in the next scan.
    #[tokio::test]
    async fn kept_grant_scans_follow_every_write() {
        let (_d, s) = store();
        let keys = |s: &EmbeddedStore| {
            let s = s.clone();
            async move {
                let rows = s.scan(Table::Grants, "bob/").await.unwrap();
                rows.into_iter()
                    .map(|(k, v)| format!("{k}={}", String::from_utf8(v).unwrap()))
                    .collect::<Vec<_>>()
            }
        };
        assert!(keys(&s).await.is_empty());
        s.put(Table::Grants, "bob/x", b"1").await.unwrap();
        assert_eq!(keys(&s).await, ["bob/x=1"]);
        assert_eq!(keys(&s).await, ["bob/x=1"], "kept");
        s.put(Table::Grants, "bob/x", b"2").await.unwrap();
        assert_eq!(keys(&s).await, ["bob/x=2"], "overwritten");
        assert!(s.insert_new(Table::Grants, "bob/y", b"3").await.unwrap());
        assert_eq!(keys(&s).await, ["bob/x=2", "bob/y=3"], "inserted");
        assert!(s.delete(Table::Grants, "bob/x").await.unwrap());
        assert_eq!(keys(&s).await, ["bob/y=3"], "deleted");
        // Writes of other tables keep the scans.
        s.put(Table::Users, "bob", b"u").await.unwrap();
        assert_eq!(s.grants.lock().1.len(), 1);
    }

    /// A scan that read the rows before a grants write ended is not kept after it.
    #[test]
    fn a_scan_older_than_a_write_is_not_kept() {
        let g = GrantScans::default();
        let before = g.get("bob/").unwrap_err();
        g.written();
        g.keep(
            before,
            "bob/",
            Arc::new(vec![("bob/x".into(), b"old".to_vec())]),
        );
        let now = g.get("bob/").unwrap_err();
        assert_ne!(now, before);
        g.keep(now, "bob/", Arc::new(Vec::new()));
        assert!(g.get("bob/").unwrap().is_empty());
    }
}
