//! What the server's in-process tests share: a service on a fresh data directory.

use std::sync::Arc;

use secrets_core::ClusterName;

/// A service of cluster `neuro-compute` on a fresh data directory (on tmpfs where there is
/// one: every write fsyncs), ready to drive with `oneshot`: its router, the directory (keep
/// it alive) and the operator token.
pub async fn service() -> (axum::Router, tempfile::TempDir, String) {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let s =
        secrets_server::open_service(dir.path(), ClusterName::new("neuro-compute").unwrap(), None)
            .await
            .unwrap();
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    (
        secrets_server::app(Arc::new(s)),
        dir,
        admin.trim().to_owned(),
    )
}
