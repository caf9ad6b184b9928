//! The refresh loop: keeps values current in the background, so no filesystem operation waits
//! on the network. Long-polls the change feed, re-resolves everything in one request on any
//! change (and every 30 s as a safety net), marks the files stale while the service is away
//! and revokes them when the service says no.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrets_client::{Client, ClientError};
use secrets_core::api::ResolveStatus;

use crate::files::{self, Files};

/// Every file is re-resolved at least this often, whatever the change feed says.
const FULL_EVERY: Duration = Duration::from_secs(30);
/// The first wait after a failure; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The wait after the token was rejected, or between polls without a change feed.
const SLOW: Duration = Duration::from_secs(1);

struct Refresher {
    client: Client,
    files: Arc<Files>,
    notifier: fuser::Notifier,
    uris: Vec<String>,
    backoff: Duration,
}

impl Refresher {
    fn invalidate(&self, i: usize) {
        // Strict mode reads bypass the page cache: attributes are all the kernel holds. The
        // cached modes drop the pages too, so the next read fetches the new bytes.
        let offset = if self.files.cache_mode() == files::CacheMode::Strict {
            -1
        } else {
            0
        };
        let _ = self
            .notifier
            .inval_inode(fuser::INodeNo(Files::ino_of(i)), offset, 0);
    }

    /// Resolves every file in one request and applies the answers.
    async fn full(&mut self) -> Result<(), ClientError> {
        let r = self.client.resolve(self.uris.clone()).await?;
        self.files.set_stale(false);
        for (i, r) in r.results.into_iter().enumerate() {
            let changed = match (r.status, r.value, r.version) {
                (ResolveStatus::Ok, Some(v), Some(ver)) => self.files.set_value(i, v, ver),
                (ResolveStatus::NotFound, ..) => self.files.revoke(i, "not found"),
                (ResolveStatus::Forbidden, ..) => self.files.revoke(i, "forbidden"),
                _ => self.files.revoke(i, "invalid answer"),
            };
            if changed {
                self.invalidate(i);
            }
        }
        self.backoff = FIRST_BACKOFF;
        Ok(())
    }

    /// The one answer to a failed resolve or watch: a rejected token (401/403) revokes every
    /// file; anything else marks them stale and backs off.
    async fn setback(&mut self, e: ClientError) {
        match e {
            ClientError::Status {
                status: 401 | 403,
                message,
                ..
            } => {
                let why = format!("token rejected: {message}");
                for i in 0..self.uris.len() {
                    if self.files.revoke(i, &why) {
                        self.invalidate(i);
                    }
                }
                tokio::time::sleep(SLOW).await;
            }
            _ => {
                self.files.set_stale(true);
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Runs until aborted. `since` is the revision learned before the first resolve.
pub async fn refresh(
    client: Client,
    files: Arc<Files>,
    notifier: fuser::Notifier,
    mut since: Option<u64>,
) {
    let uris = files.mappings().iter().map(|m| m.uri.clone()).collect();
    let mut r = Refresher {
        client,
        files,
        notifier,
        uris,
        backoff: FIRST_BACKOFF,
    };
    let mut last_full = Instant::now();
    let mut need_full = false;
    let mut watch_supported = true;
    loop {
        if need_full || last_full.elapsed() > FULL_EVERY {
            if let Err(e) = r.full().await {
                need_full = true;
                r.setback(e).await;
                continue;
            }
            need_full = false;
            last_full = Instant::now();
        }
        if !watch_supported {
            tokio::time::sleep(SLOW).await;
            need_full = true;
            continue;
        }
        match r.client.watch(since, 10).await {
            Ok(w) => {
                let recovered = r.files.status_is_stale();
                r.files.set_stale(false);
                need_full = since.is_none() || recovered || !w.events.is_empty() || w.acl_changed;
                since = Some(w.revision);
                r.backoff = FIRST_BACKOFF;
            }
            Err(ClientError::Status { status: 404, .. }) => watch_supported = false,
            // `since` is ahead of the service (its store was restored from a backup): start
            // over from its current revision rather than asking again, and look at everything.
            Err(ClientError::Status { status: 400, .. }) => {
                since = None;
                need_full = true;
            }
            // Whatever failed, the values are re-resolved once the service answers again.
            Err(e) => {
                need_full = true;
                r.setback(e).await;
            }
        }
    }
}
