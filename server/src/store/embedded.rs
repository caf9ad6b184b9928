//! The embedded default store: one redb file in the data directory.
//!
//! redb commits with fsync (`Durability::Immediate`), so a write acknowledged to a client has
//! reached the disk and survives `kill -9`. Reads run inline (MVCC, they never wait for a
//! writer); writes run on the blocking pool because they fsync.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Change, Store, StoreError, StoredSecret, Table};

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("grants");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// `OWNER/KEY` → version (u64 LE) ++ sealed value
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// revision → deleted flag (1 byte) ++ `OWNER/KEY`
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// How many change-log entries are kept for watchers that fall behind.
const CHANGES_KEPT: u64 = 100_000;

fn def(t: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match t {
        Table::Users => USERS,
        Table::Tokens => TOKENS,
        Table::Grants => GRANTS,
        Table::Jobs => JOBS,
    }
}

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The redb-backed store.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(io)?;
        // Create every table up front so reads never meet a missing one.
        let tx = db.begin_write().map_err(io)?;
        for t in [USERS, TOKENS, GRANTS, JOBS, SECRETS] {
            tx.open_table(t).map_err(io)?;
        }
        tx.open_table(CHANGES).map_err(io)?;
        tx.open_table(META).map_err(io)?;
        tx.commit().map_err(io)?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(io)?;
            let out = f(&tx)?;
            tx.commit().map_err(io)?;
            Ok(out)
        })
        .await
        .map_err(io)?
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

/// Takes the next revision and logs the change, inside the caller's transaction.
fn bump(tx: &redb::WriteTransaction, key: &str, deleted: bool) -> Result<u64, StoreError> {
    let mut meta = tx.open_table(META).map_err(io)?;
    let rev = meta
        .get(REVISION)
        .map_err(io)?
        .map(|v| v.value())
        .unwrap_or(0)
        + 1;
    meta.insert(REVISION, rev).map_err(io)?;
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

fn decode_secret(key: &str, raw: &[u8]) -> Result<StoredSecret, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Corrupt {
            table: "secrets",
            key: key.to_owned(),
        });
    }
    let (v, sealed) = raw.split_at(8);
    Ok(StoredSecret {
        version: u64::from_le_bytes(v.try_into().map_err(io)?),
        sealed: sealed.to_vec(),
    })
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let t = tx.open_table(def(table)).map_err(io)?;
        Ok(t.get(key).map_err(io)?.map(|v| v.value().to_vec()))
    }

    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let t = tx.open_table(def(table)).map_err(io)?;
        Self::scan_table(&t, prefix)
    }

    async fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.write(move |tx| {
            let mut t = tx.open_table(def(table)).map_err(io)?;
            t.insert(key.as_str(), value.as_slice()).map_err(io)?;
            Ok(())
        })
        .await
    }

    async fn insert_new(&self, table: Table, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.write(move |tx| {
            let mut t = tx.open_table(def(table)).map_err(io)?;
            if t.get(key.as_str()).map_err(io)?.is_some() {
                return Ok(false);
            }
            t.insert(key.as_str(), value.as_slice()).map_err(io)?;
            Ok(true)
        })
        .await
    }

    async fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.write(move |tx| {
            let mut t = tx.open_table(def(table)).map_err(io)?;
            Ok(t.remove(key.as_str()).map_err(io)?.is_some())
        })
        .await
    }

    async fn get_secret(&self, key: &str) -> Result<Option<StoredSecret>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let t = tx.open_table(SECRETS).map_err(io)?;
        let Some(v) = t.get(key).map_err(io)? else {
            return Ok(None);
        };
        decode_secret(key, v.value()).map(Some)
    }

    async fn list_secrets(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let t = tx.open_table(SECRETS).map_err(io)?;
        let mut out = Vec::new();
        for row in t.range::<&str>(prefix..).map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_owned(), decode_secret(k, v.value())?.version));
        }
        Ok(out)
    }

    async fn put_secret(&self, key: &str, sealed: &[u8]) -> Result<u64, StoreError> {
        let (key, sealed) = (key.to_owned(), sealed.to_vec());
        self.write(move |tx| {
            let rev = bump(tx, &key, false)?;
            let mut t = tx.open_table(SECRETS).map_err(io)?;
            let mut rec = Vec::with_capacity(8 + sealed.len());
            rec.extend_from_slice(&rev.to_le_bytes());
            rec.extend_from_slice(&sealed);
            t.insert(key.as_str(), rec.as_slice()).map_err(io)?;
            Ok(rev)
        })
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
            bump(tx, &key, true).map(Some)
        })
        .await
    }

    async fn changes_since(&self, revision: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
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
    }

    async fn touch(&self, marker: &str) -> Result<u64, StoreError> {
        let marker = marker.to_owned();
        self.write(move |tx| bump(tx, &marker, false)).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let t = tx.open_table(META).map_err(io)?;
        Ok(t.get(REVISION).map_err(io)?.map(|v| v.value()).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            s.get_secret("alice/a").await.unwrap(),
            Some(StoredSecret {
                version: v2,
                sealed: b"y".to_vec()
            })
        );
        assert_eq!(
            s.list_secrets("alice/").await.unwrap(),
            vec![("alice/a".into(), v2)]
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
}
