//! `Timed`: a `Store` that times every operation of the store it wraps into the metrics
//! (`secretd_store_operation_duration_seconds{op}`, `secretd_store_errors_total{op}`), so
//! that no backend needs to know about metrics.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{Change, Record, SecretMeta, Store, StoreError, StoredSecret, Table};
use crate::metrics::Metrics;

/// Wraps a store; every operation is timed, its failures counted.
#[derive(Debug)]
pub struct Timed {
    inner: Arc<dyn Store>,
    metrics: &'static Metrics,
}

impl Timed {
    pub fn new(inner: Arc<dyn Store>, metrics: &'static Metrics) -> Self {
        Self { inner, metrics }
    }

    async fn time<T, E>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let t = Instant::now();
        let r = f.await;
        self.metrics.store_op(op, t.elapsed(), r.is_err());
        r
    }
}

#[async_trait]
impl Store for Timed {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.time("get", self.inner.get(table, key)).await
    }
    async fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.time("scan", self.inner.scan(table, prefix)).await
    }
    async fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.time("put", self.inner.put(table, key, value)).await
    }
    async fn insert_new(&self, table: Table, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        self.time("insert_new", self.inner.insert_new(table, key, value))
            .await
    }
    async fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        self.time("delete", self.inner.delete(table, key)).await
    }
    async fn get_secret(&self, key: &str) -> Result<Option<StoredSecret>, StoreError> {
        self.time("get_secret", self.inner.get_secret(key)).await
    }
    async fn get_sealed(&self, key: &str) -> Result<Option<StoredSecret>, StoreError> {
        // A read of a secret all the same: one operation name for both.
        self.time("get_secret", self.inner.get_sealed(key)).await
    }
    async fn list_secrets(&self, prefix: &str) -> Result<Vec<SecretMeta>, StoreError> {
        self.time("list_secrets", self.inner.list_secrets(prefix))
            .await
    }
    async fn put_secret(&self, key: &str, sealed: &[u8]) -> Result<u64, StoreError> {
        self.time("put_secret", self.inner.put_secret(key, sealed))
            .await
    }
    async fn delete_secret(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.time("delete_secret", self.inner.delete_secret(key))
            .await
    }
    async fn changes_since(&self, revision: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.time("changes_since", self.inner.changes_since(revision, limit))
            .await
    }
    async fn revision(&self) -> Result<u64, StoreError> {
        self.time("revision", self.inner.revision()).await
    }
    async fn touch(&self, marker: &str) -> Result<u64, StoreError> {
        self.time("touch", self.inner.touch(marker)).await
    }
    async fn health(&self) -> Result<(), String> {
        self.time("health", self.inner.health()).await
    }
    async fn sync(&self) -> Result<(), StoreError> {
        self.time("sync", self.inner.sync()).await
    }
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.changes()
    }
    fn revocation_epoch(&self) -> u64 {
        self.inner.revocation_epoch()
    }
    async fn is_empty(&self) -> Result<bool, StoreError> {
        self.time("is_empty", self.inner.is_empty()).await
    }
    async fn export(&self) -> Result<Vec<Record>, StoreError> {
        self.time("export", self.inner.export()).await
    }
    async fn import(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.time("import", self.inner.import(records)).await
    }
}
