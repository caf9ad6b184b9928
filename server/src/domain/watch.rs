//! The change feed: waits for changes to secrets the caller may read since a revision, or
//! for a change of the caller's grants.

use std::sync::atomic::Ordering;
use std::time::Duration;

use secrets_core::api::{WatchEvent, WatchResponse};

use super::{ACL_MARKER, Domain, DomainError, MAX_WATCH_S, Principal, may_read};
use crate::records::SecretName;

/// How many change-log entries one scan of the watch loop reads.
const WATCH_BATCH: usize = 1000;

impl Domain {
    /// Without `since`, the current revision at once. With it, the changes after `since` the
    /// caller may see, as soon as there is one, or none after `wait` (at most
    /// `MAX_WATCH_S`).
    pub async fn watch(
        &self,
        p: &Principal,
        since: Option<u64>,
        wait: Duration,
    ) -> Result<WatchResponse, DomainError> {
        let user = p
            .need_user_or_job("watching needs a user or job token")?
            .clone();
        let wait = wait.min(Duration::from_secs(MAX_WATCH_S));
        let mut rx = self.changed.subscribe();
        let current = self.store.revision().await?;
        let Some(mut since) = since else {
            return Ok(WatchResponse {
                revision: current,
                ..Default::default()
            });
        };
        if since > current {
            return Err(DomainError::Invalid(format!(
                "query parameter 'since' is {since}, past the newest revision {current}; \
                 watch without 'since' to learn the current revision"
            )));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let marker = format!("{ACL_MARKER}{user}");
        loop {
            // Deleting a job (or removing its user) wakes every watcher; the job's own watch
            // ends here as its next request would, so its files go at once.
            self.still_there(p).await?;
            let changes = self.store.changes_since(since, WATCH_BATCH).await?;
            let mut out = WatchResponse {
                revision: changes.last().map_or(since.max(current), |c| c.revision),
                ..Default::default()
            };
            if !changes.is_empty() {
                let perms = self.perms(&user).await?;
                for c in &changes {
                    if c.key == marker {
                        out.acl_changed = true;
                        continue;
                    }
                    let Some(uri) = SecretName::uri(&self.cluster, &c.key) else {
                        continue;
                    };
                    // A job sees what its creator may still read, as for its reads.
                    if may_read(p, Some(&perms), &uri) {
                        out.events.push(WatchEvent {
                            uri: uri.to_string(),
                            version: c.revision,
                            deleted: c.deleted,
                        });
                    }
                }
            }
            if !out.events.is_empty() || out.acl_changed || self.stopping.load(Ordering::SeqCst) {
                return Ok(out);
            }
            since = out.revision;
            if changes.len() == WATCH_BATCH {
                // More may lie beyond this batch: keep scanning until the deadline.
                if tokio::time::Instant::now() >= deadline {
                    return Ok(out);
                }
                continue;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Ok(out) },
                () = tokio::time::sleep_until(deadline) => return Ok(out),
            }
        }
    }
}
