//! The change feed: a long poll that answers with the changes to secrets the caller may read
//! since a revision, or that the caller's grants changed.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Query, State};
use secrets_core::api::{WatchEvent, WatchResponse};

use super::extract::query_map;
use super::{ACL_MARKER, AppState, Caller, MAX_WATCH_S, may_read};
use crate::error::ApiError;
use crate::records::SecretName;

/// How many change-log entries one scan of the watch loop reads.
const WATCH_BATCH: usize = 1000;

pub(super) async fn watch(
    State(s): State<AppState>,
    Caller(p): Caller,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<WatchResponse>, ApiError> {
    let q = query_map(q)?;
    let Some(user) = p.user().cloned() else {
        return Err(ApiError::forbidden(
            "the operator token manages users and tokens; watching needs a user or job token",
        ));
    };
    let num = |name: &str, default: u64| -> Result<u64, ApiError> {
        q.get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "query parameter '{name}' must be a whole number, not '{v}'"
                ))
            })
        })
    };
    let wait = std::time::Duration::from_secs(num("timeout_s", 30)?.min(MAX_WATCH_S));
    let mut rx = s.changed.subscribe();
    let current = s.store.revision().await?;
    let Some(mut since) = q.get("since").map(|_| num("since", 0)).transpose()? else {
        return Ok(Json(WatchResponse {
            revision: current,
            ..Default::default()
        }));
    };
    if since > current {
        return Err(ApiError::BadRequest(format!(
            "query parameter 'since' is {since}, past the newest revision {current}; \
             watch without 'since' to learn the current revision"
        )));
    }
    let deadline = tokio::time::Instant::now() + wait;
    let marker = format!("{ACL_MARKER}{user}");
    loop {
        // Deleting a job (or removing its user) wakes every watcher; the job's own watch ends
        // here with the 401 its next request would get, so its files go at once.
        s.still_there(&p).await?;
        let changes = s.store.changes_since(since, WATCH_BATCH).await?;
        let mut out = WatchResponse {
            revision: changes.last().map_or(since.max(current), |c| c.revision),
            ..Default::default()
        };
        if !changes.is_empty() {
            let perms = s.perms(&user).await?;
            for c in &changes {
                if c.key == marker {
                    out.acl_changed = true;
                    continue;
                }
                let Some(uri) = SecretName::uri(&s.cluster, &c.key) else {
                    continue;
                };
                // A job sees what its creator may still read, as for its reads.
                if may_read(&p, Some(&perms), &uri) {
                    out.events.push(WatchEvent {
                        uri: uri.to_string(),
                        version: c.revision,
                        deleted: c.deleted,
                    });
                }
            }
        }
        if !out.events.is_empty() || out.acl_changed || s.stopping.load(Ordering::SeqCst) {
            return Ok(Json(out));
        }
        since = out.revision;
        if changes.len() == WATCH_BATCH {
            // More may lie beyond this batch: keep scanning until the deadline.
            if tokio::time::Instant::now() >= deadline {
                return Ok(Json(out));
            }
            continue;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Ok(Json(out)) },
            () = tokio::time::sleep_until(deadline) => return Ok(Json(out)),
        }
    }
}
