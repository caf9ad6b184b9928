//! The domain layer: every operation of the service on secrets, grants, jobs, users and
//! console sessions, for an authenticated `Principal`, with typed arguments and results and a
//! `DomainError`. Authorization, the audit log, the value cache and the store live behind it;
//! it knows nothing of HTTP. The API's handlers and the console are adapters over it: they
//! extract, call, and map the error once (`error::ApiError`).
//!
//! One module per resource: `secrets` (write, list, read, delete, resolve), `grants`, `jobs`,
//! `users` (and their tokens), `watch` (the change feed), `sessions` (the console's); `auth`
//! (tokens and principals) and `perms` (the permission model).

pub mod auth;
mod error;
mod grants;
mod jobs;
pub mod perms;
mod secrets;
pub mod sessions;
mod users;
mod watch;

use std::sync::Arc;

use secrets_core::api::{MissingPermission, WhoAmI};
use secrets_core::{Action, ClusterName, SecretBytes, SecretKey, SecretUri, UriContext, UserName};

pub use auth::Principal;
pub use error::DomainError;
pub use perms::{Perms, may_read};
pub use secrets::Resolution;

use crate::audit::{Audit, AuditAction, AuditEvent, Outcome};
use crate::crypto::Keys;
use crate::records::SecretName;
use crate::store::{Store, Table};
use crate::values::{Opened, ValueCache};

/// How many URIs one resolve may ask for.
pub const MAX_RESOLVE: usize = 1000;
/// The values of one resolve answer, each asked URI counted (a repeated URI shares its read,
/// not its place in the answer): past this, the resolve is refused.
pub const MAX_RESOLVE_BYTES: usize = 16 * 1024 * 1024;
/// The longest a watch waits for a change.
pub const MAX_WATCH_S: u64 = 60;
/// The longest a job token lives.
pub const MAX_JOB_TTL_S: u64 = 7 * 24 * 3600;
/// Change-log keys for grant changes: `~acl/USER` (a `SecretName` never starts with `~`).
const ACL_MARKER: &str = "~acl/";

/// The service's state and its operations.
#[derive(Debug)]
pub struct Domain {
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub cluster: ClusterName,
    pub audit: Audit,
    auth: auth::Authenticator,
    /// The newest revision this process wrote; watchers wait on it.
    changed: tokio::sync::watch::Sender<u64>,
    /// Set at shutdown: waiting watches answer at once.
    stopping: std::sync::atomic::AtomicBool,
    /// Values opened lately (`values`).
    pub values: Arc<ValueCache>,
}

impl Domain {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Keys,
        cluster: ClusterName,
        audit: Audit,
        values: Arc<ValueCache>,
    ) -> Self {
        let changed = tokio::sync::watch::channel(0).0;
        if let Some(mut rx) = store.changes() {
            // Changes made through other replicas wake this one's watchers.
            let tx = changed.clone();
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let rev = *rx.borrow_and_update();
                    tx.send_replace(rev);
                }
            });
        }
        Self {
            store,
            keys,
            cluster,
            audit,
            auth: auth::Authenticator::default(),
            changed,
            stopping: std::sync::atomic::AtomicBool::new(false),
            values,
        }
    }

    /// Who `token` speaks for: the one check of a bearer token, whoever presents it.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, DomainError> {
        self.auth
            .authenticate(self.store.as_ref(), &self.keys, token)
            .await
    }

    /// Who the caller is, as `GET /whoami` says it.
    pub fn whoami(&self, p: &Principal) -> WhoAmI {
        let (kind, user, job_id) = match p {
            Principal::Operator => ("operator", None, None),
            Principal::User(u) => ("user", Some(u.to_string()), None),
            Principal::Job { id, owner, .. } => ("job", Some(owner.to_string()), Some(id.clone())),
        };
        WhoAmI {
            kind: kind.into(),
            user,
            job_id,
            cluster: self.cluster.to_string(),
        }
    }

    /// The context short URIs of `user` expand in.
    pub fn ctx(&self, user: &UserName) -> UriContext {
        UriContext {
            cluster: self.cluster.clone(),
            user: user.clone(),
        }
    }

    pub fn uri(&self, owner: UserName, key: SecretKey) -> SecretUri {
        SecretUri {
            cluster: self.cluster.clone(),
            owner,
            key,
        }
    }

    /// The opened value of `uri`, from the value cache while its seal is the stored one.
    async fn read_value(&self, uri: &SecretUri) -> Result<Option<Arc<Opened>>, DomainError> {
        let name = SecretName::of(uri);
        let Some(stored) = self.store.get_sealed(name.as_str()).await? else {
            return Ok(None);
        };
        let cached = self
            .values
            .get(name.as_str(), stored.version, &stored.sealed);
        crate::metrics::global().value_cache(cached.is_some());
        if let Some(v) = cached {
            return Ok(Some(v));
        }
        let mut plain = self
            .keys
            .open(name.as_str(), &stored.sealed)
            .map_err(|e| DomainError::Internal(format!("{uri}: {e}")))?;
        Ok(Some(self.values.insert(
            name.as_str(),
            stored.version,
            &stored.sealed,
            SecretBytes::new(std::mem::take(&mut *plain)),
        )))
    }

    /// Records a refused or failed request, as far as the log allows: it is refused anyway.
    fn audit_refused(
        &self,
        p: &Principal,
        action: AuditAction,
        uri: Option<String>,
        outcome: Outcome,
    ) {
        self.audit
            .record_best_effort(AuditEvent::new(p.actor(), action, uri, outcome));
    }

    /// Refuses for want of permissions: one `denied` line per missing URI, then the refusal
    /// that names them.
    fn deny(
        &self,
        p: &Principal,
        action: AuditAction,
        missing: Vec<MissingPermission>,
    ) -> DomainError {
        for m in &missing {
            self.audit_refused(p, action, Some(m.uri.clone()), Outcome::Denied);
        }
        DomainError::missing(missing)
    }

    /// `deny` for one URI that needs `needs`.
    fn deny_one(
        &self,
        p: &Principal,
        action: AuditAction,
        uri: &impl ToString,
        needs: Action,
    ) -> DomainError {
        let missing = MissingPermission {
            uri: uri.to_string(),
            action: needs,
        };
        self.deny(p, action, vec![missing])
    }

    /// Records a read that is about to be answered; when the line cannot be queued the read
    /// is refused instead (the log fails closed).
    fn audit_read(
        &self,
        p: &Principal,
        action: AuditAction,
        uri: Option<String>,
    ) -> Result<(), DomainError> {
        Ok(self
            .audit
            .record(AuditEvent::new(p.actor(), action, uri, Outcome::Ok))?)
    }

    /// Wakes the watchers of `user`'s secrets after a grant change.
    async fn acl_changed(&self, user: &UserName) -> Result<(), DomainError> {
        let rev = self.store.touch(&format!("{ACL_MARKER}{user}")).await?;
        self.changed.send_replace(rev);
        Ok(())
    }

    /// A job whose record is gone (deleted, or its user removed) has ended; a user who was
    /// removed is gone. Both are unauthenticated, as their next request would be.
    pub async fn still_there(&self, p: &Principal) -> Result<(), DomainError> {
        match p {
            Principal::Operator => Ok(()),
            Principal::User(u) => match self.user_exists(u).await? {
                true => Ok(()),
                false => Err(DomainError::Unauthenticated(format!(
                    "user '{u}' has been removed"
                ))),
            },
            Principal::Job { id, owner, .. } => {
                if self.store.get(Table::Jobs, id).await?.is_none() {
                    return Err(DomainError::Unauthenticated("the job has ended".into()));
                }
                if !self.user_exists(owner).await? {
                    return Err(DomainError::Unauthenticated(format!(
                        "user '{owner}' has been removed"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Ends every waiting watch (at shutdown): each answers with what it has.
    pub fn stop_watchers(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake_watchers();
    }

    /// Wakes every watcher without a new revision, so that each checks its caller again.
    fn wake_watchers(&self) {
        let rev = *self.changed.borrow();
        self.changed.send_replace(rev);
    }

    async fn user_exists(&self, user: &UserName) -> Result<bool, DomainError> {
        Ok(self.store.get(Table::Users, user.as_str()).await?.is_some())
    }
}

impl Principal {
    /// The user behind a user token; jobs and the operator are refused with `why`.
    pub fn need_user(&self, why: &str) -> Result<&UserName, DomainError> {
        match self {
            Principal::User(u) => Ok(u),
            Principal::Job { .. } => Err(DomainError::forbidden(format!(
                "a job token may only read its job's secrets; {why}"
            ))),
            Principal::Operator => Err(DomainError::forbidden(format!(
                "the operator token manages users and tokens; {why}"
            ))),
        }
    }

    /// The user a user or job token acts for; the operator is refused with `why`.
    pub fn need_user_or_job(&self, why: &str) -> Result<&UserName, DomainError> {
        self.user().ok_or_else(|| {
            DomainError::forbidden(format!(
                "the operator token manages users and tokens; {why}"
            ))
        })
    }

    pub fn need_operator(&self) -> Result<(), DomainError> {
        match self {
            Principal::Operator => Ok(()),
            _ => Err(DomainError::forbidden(
                "only the operator may manage users and tokens",
            )),
        }
    }
}

#[cfg(test)]
mod tests;
