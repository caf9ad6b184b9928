//! The storage trait the service is written against (`embedded` and `etcd` implement it,
//! `timed` decorates it).
//!
//! Records other than secrets are opaque bytes under string keys in a few tables; secrets get
//! their own operations because every secret write must take the next revision and record a
//! change atomically. Values reach the store already sealed (see `crypto`).

pub mod embedded;
pub mod etcd;
pub mod timed;

use async_trait::async_trait;

/// Failures of the storage layer. Their text goes to the log, never to a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk failed under the store (full, I/O error): the database must be re-opened.
    #[error("storage I/O: {0}")]
    Io(String),
    /// The storage cannot be reached or cannot show that what it reads is current (etcd lost
    /// its quorum): the request may succeed later (503).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Any other failure of the storage engine.
    #[error("storage: {0}")]
    Engine(String),
    /// The store's file cannot be used as it is.
    #[error("{0}")]
    File(String),
    #[error("corrupt record in {table}/{key}")]
    Corrupt { table: &'static str, key: String },
}

/// The plain tables, keyed by strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// user name → `UserRecord`
    Users,
    /// token id → `TokenRecord`
    Tokens,
    /// `GRANTEE/RESOURCE-URI` → `GrantRecord`
    Grants,
    /// job id → `JobRecord`
    Jobs,
    /// console session id hash → session record (the web console's server-side sessions)
    Sessions,
    /// settings of the store itself: the master key's check value, the cluster name
    Settings,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Users,
        Table::Tokens,
        Table::Grants,
        Table::Jobs,
        Table::Sessions,
        Table::Settings,
    ];

    /// The table's name in storage: the redb table of the embedded store, the key prefix
    /// `NAME/` under the etcd store's `/PREFIX/`, and `secretd migrate`'s counts. These
    /// names are the stored format, fixed whatever the Rust names become: renaming one
    /// would orphan the data of every existing store. Beside them the embedded store keeps
    /// its revision counter in a redb table named `meta` (`embedded::BOOKKEEPING`), which
    /// is not `Table::Settings` (`settings`) and is never exported.
    pub fn name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::Tokens => "tokens",
            Table::Grants => "grants",
            Table::Jobs => "jobs",
            Table::Sessions => "sessions",
            Table::Settings => "settings",
        }
    }
}

/// A stored secret: its revision and its sealed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub version: u64,
    pub sealed: Vec<u8>,
    /// When it was written (Unix seconds); `None` for a secret written before write times
    /// were kept.
    pub updated_at: Option<u64>,
}

/// A secret in a listing: `OWNER/KEY`, its version and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub key: String,
    pub version: u64,
    pub updated_at: Option<u64>,
}

/// One entry of the change log: a secret written (or deleted) at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    /// `OWNER/KEY`
    pub key: String,
    pub deleted: bool,
}

/// One record, as `secretd migrate` copies it: a row of a plain table or a sealed secret. The
/// change log and secret versions are not copied: the target numbers its own revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Row {
        table: Table,
        key: String,
        value: Vec<u8>,
    },
    Secret {
        /// `OWNER/KEY`
        key: String,
        sealed: Vec<u8>,
        updated_at: Option<u64>,
    },
}

/// Counts by kind and a checksum of every record's table, key and bytes, in key order: what
/// `secretd migrate` compares between source and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub counts: Vec<(&'static str, usize)>,
    pub checksum: String,
}

impl Summary {
    pub fn of(records: &[Record]) -> Self {
        let mut rows: Vec<(&'static str, &str, Vec<u8>)> = records
            .iter()
            .map(|r| match r {
                Record::Row { table, key, value } => (table.name(), key.as_str(), value.clone()),
                Record::Secret {
                    key,
                    sealed,
                    updated_at,
                } => {
                    // The write time is part of what must arrive.
                    let mut bytes = sealed.clone();
                    bytes.extend_from_slice(&updated_at.unwrap_or(0).to_le_bytes());
                    ("secrets", key.as_str(), bytes)
                }
            })
            .collect();
        rows.sort();
        let mut h = blake3::Hasher::new();
        let mut counts: Vec<(&'static str, usize)> = Table::ALL
            .iter()
            .map(|t| (t.name(), 0))
            .chain([("secrets", 0)])
            .collect();
        for (table, key, bytes) in &rows {
            for part in [table.as_bytes(), key.as_bytes(), bytes.as_slice()] {
                h.update(&(part.len() as u64).to_le_bytes());
                h.update(part);
            }
            if let Some(c) = counts.iter_mut().find(|(t, _)| t == table) {
                c.1 += 1;
            }
        }
        Self {
            counts,
            checksum: h.finalize().to_hex().to_string(),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (t, n) in &self.counts {
            write!(f, "{t} {n}, ")?;
        }
        write!(f, "checksum {}", &self.checksum[..16])
    }
}

/// Storage for the service. Implementations must make an acknowledged write durable.
///
/// No method has a default body: a wrapper (`timed::Timed`) must forward each one, and a
/// default would let it forget one silently and answer for the store it wraps.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    async fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Writes only if the key is absent; `false` when it was there.
    async fn insert_new(&self, table: Table, key: &str, value: &[u8]) -> Result<bool, StoreError>;
    /// `false` when the key was absent.
    async fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError>;

    /// `key` is `OWNER/KEY`.
    async fn get_secret(&self, key: &str) -> Result<Option<StoredSecret>, StoreError>;
    /// `get_secret` for a read of the value: `updated_at` may be left out (the hot path of
    /// every secret read; the embedded store keeps write times in a table of their own).
    async fn get_sealed(&self, key: &str) -> Result<Option<StoredSecret>, StoreError>;
    /// Secrets whose `OWNER/KEY` starts with `prefix`, in key order.
    async fn list_secrets(&self, prefix: &str) -> Result<Vec<SecretMeta>, StoreError>;
    /// Stores the sealed value under the next revision, which it returns, with the time of
    /// the write.
    async fn put_secret(&self, key: &str, sealed: &[u8]) -> Result<u64, StoreError>;
    /// Deletes the secret under the next revision; `None` when it did not exist.
    async fn delete_secret(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Changes after `revision`, oldest first, at most `limit`.
    async fn changes_since(&self, revision: u64, limit: usize) -> Result<Vec<Change>, StoreError>;
    /// The newest revision (0 before the first secret write).
    async fn revision(&self) -> Result<u64, StoreError>;
    /// Takes the next revision for a change that is not a secret write (a grant added or
    /// revoked), logged under `marker`, so that watchers wake up and look again.
    async fn touch(&self, marker: &str) -> Result<u64, StoreError>;
    /// `Err(reason)` while the store cannot write (the last write failed and no write has
    /// succeeded since); implementations may try a write to find out whether it recovered.
    /// The reason names the failure, never stored data.
    async fn health(&self) -> Result<(), String>;

    /// Returns once reads reflect every write acknowledged (by any replica) before the call;
    /// `Unavailable` when the store cannot show that. A request calls it once, first.
    async fn sync(&self) -> Result<(), StoreError>;
    /// Revisions of changes made elsewhere (other replicas), for waking watchers; `None` when
    /// every write goes through this process.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>>;
    /// Moves on whenever a user, token or job record was changed or removed by someone else, so
    /// that cached verifications of tokens are dropped.
    fn revocation_epoch(&self) -> u64;

    /// Whether the store holds no record at all.
    async fn is_empty(&self) -> Result<bool, StoreError>;
    /// Every record (plain tables and secrets), in key order.
    async fn export(&self) -> Result<Vec<Record>, StoreError>;
    /// Writes `records` into this store; each row must be new.
    async fn import(&self, records: Vec<Record>) -> Result<(), StoreError>;
}
