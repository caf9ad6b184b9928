//! The audit log: one JSON line per request that touches a secret or a grant.
//!
//! Events carry who, what, which URI and the outcome; the type has no field that could hold a
//! value or a token. Lines are written by one background task so request handlers never wait
//! on the log file.

use std::io::Write as _;
use std::path::Path;

use serde::Serialize;
use tokio::sync::mpsc;

/// How long the writer lets events gather before writing them out.
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    pub time: String,
    /// `user:NAME`, `job:ID` or `operator`.
    pub actor: String,
    /// e.g. `secret.read`, `grant.add`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `ok`, `denied`, `not_found`, `invalid` or `error`.
    pub outcome: &'static str,
}

/// A cheap handle to the audit writer.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::UnboundedSender<AuditEvent>,
}

impl Audit {
    /// Opens `path` for appending and starts the writer task.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<AuditEvent>();
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::new(file);
            while let Some(ev) = rx.blocking_recv() {
                let mut write = |ev: &AuditEvent| {
                    serde_json::to_writer(&mut out, ev)
                        .map_err(std::io::Error::other)
                        .and_then(|()| out.write_all(b"\n"))
                };
                let mut res = write(&ev);
                // Under load, let events gather for a moment so that one wake-up and one write
                // serve many requests instead of one each.
                std::thread::sleep(BATCH_WAIT);
                while let Ok(ev) = rx.try_recv() {
                    res = res.and(write(&ev));
                }
                if let Err(e) = res.and_then(|()| out.flush()) {
                    tracing::error!(error = %e, "cannot write the audit log");
                }
            }
        });
        Ok(Self { tx })
    }

    pub fn record(
        &self,
        actor: &str,
        action: &'static str,
        uri: Option<String>,
        outcome: &'static str,
    ) {
        let ev = AuditEvent {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            actor: actor.to_owned(),
            action,
            uri,
            outcome,
        };
        // The writer only stops at shutdown; a lost line then is logged by tracing instead.
        if self.tx.send(ev).is_err() {
            tracing::warn!(actor, action, "audit writer stopped");
        }
    }
}
