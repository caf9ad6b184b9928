//! Secrets: write, list, read, delete, and resolve (many reads at once, for jobs).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use secrets_core::api::{ResolveStatus, Resolved, SecretInfo, SecretVersion};
use secrets_core::{Action, MAX_VALUE_LEN, SecretBytes, SecretKey, SecretRef, SecretUri, UserName};

use super::{Domain, DomainError, MAX_RESOLVE, MAX_RESOLVE_BYTES, Principal, may_read};
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::records::SecretName;
use crate::values::Opened;

fn not_found_secret(key: &SecretKey) -> DomainError {
    DomainError::NotFound(format!("Secret '{key}' not found"))
}

/// What a resolve found: one result per URI asked, in the order asked, and the bytes of
/// values among them.
#[derive(Debug)]
pub struct Resolution {
    pub results: Vec<Resolved>,
    pub value_bytes: usize,
}

impl Domain {
    /// Creates or overwrites `owner/key` (the caller's own without an owner) with `value`.
    pub async fn put_secret(
        &self,
        p: &Principal,
        owner: Option<UserName>,
        key: SecretKey,
        value: &SecretBytes,
    ) -> Result<SecretVersion, DomainError> {
        const ACTION: AuditAction = AuditAction::SecretWrite;
        let me = p.need_user("writing secrets needs a user token")?;
        let uri = self.uri(owner.unwrap_or_else(|| me.clone()), key);
        if value.is_empty() {
            self.audit_refused(p, ACTION, Some(uri.to_string()), Outcome::Invalid);
            return Err(DomainError::Invalid(format!(
                "the value of '{}' is empty; a secret holds 1 byte to 1 MiB",
                uri.key
            )));
        }
        if value.len() > MAX_VALUE_LEN {
            self.audit_refused(p, ACTION, Some(uri.to_string()), Outcome::Invalid);
            return Err(DomainError::Invalid(format!(
                "the value of '{}' is {} bytes; the limit is {MAX_VALUE_LEN} bytes (1 MiB)",
                uri.key,
                value.len()
            )));
        }
        if !self.perms(me).await?.holds_secret(&uri, Action::Write) {
            return Err(self.deny_one(p, ACTION, &uri, Action::Write));
        }
        let slot = self.audit.reserve()?;
        let name = SecretName::of(&uri);
        let sealed = self.keys.seal(name.as_str(), value.expose());
        let event = |outcome| AuditEvent::new(p.actor(), ACTION, Some(uri.to_string()), outcome);
        let written = self.store.put_secret(name.as_str(), &sealed).await;
        // The old value's plaintext goes now rather than at its expiry (a read racing the
        // write may keep it again: it is never served, its seal is no longer the stored one).
        self.values.forget(name.as_str());
        let version = match written {
            Ok(v) => v,
            Err(e) => {
                slot.record(event(Outcome::Error));
                return Err(e.into());
            }
        };
        self.changed.send_replace(version);
        slot.record(event(Outcome::Ok));
        Ok(SecretVersion {
            key: uri.key.to_string(),
            owner: uri.owner.to_string(),
            version,
        })
    }

    /// The caller's own secrets first, then those shared with it, each group by owner and
    /// key.
    pub async fn list_secrets(&self, p: &Principal) -> Result<Vec<SecretInfo>, DomainError> {
        let me = p.need_user("listing secrets needs a user token")?;
        let perms = self.perms(me).await?;
        let mut found: BTreeMap<(bool, SecretUri), (u64, Option<u64>)> = BTreeMap::new();
        let mut add = |name: &str, version: u64, updated_at: Option<u64>| {
            if let Some(uri) = SecretName::uri(&self.cluster, name) {
                found.insert((uri.owner != *me, uri), (version, updated_at));
            }
        };
        for m in self.store.list_secrets(&SecretName::prefix(me)).await? {
            add(&m.key, m.version, m.updated_at);
        }
        for (r, a) in &perms.grants {
            if *a < Action::Read || r.cluster != self.cluster || r.owner == *me {
                continue;
            }
            match &r.key {
                None => {
                    for m in self
                        .store
                        .list_secrets(&SecretName::prefix(&r.owner))
                        .await?
                    {
                        add(&m.key, m.version, m.updated_at);
                    }
                }
                Some(key) => {
                    let name = SecretName::new(&r.owner, key);
                    if let Some(st) = self.store.get_secret(name.as_str()).await? {
                        add(name.as_str(), st.version, st.updated_at);
                    }
                }
            }
        }
        self.audit_read(p, AuditAction::SecretList, None)?;
        Ok(found
            .into_iter()
            .map(|((_, uri), (version, updated_at))| SecretInfo {
                uri: uri.to_string(),
                key: uri.key.to_string(),
                owner: uri.owner.to_string(),
                version,
                updated_at: updated_at.map(crate::clock::rfc3339),
            })
            .collect())
    }

    /// The value of `owner/key`, opened, with its full URI.
    pub async fn read_secret(
        &self,
        p: &Principal,
        owner: UserName,
        key: SecretKey,
    ) -> Result<(SecretUri, Arc<Opened>), DomainError> {
        const ACTION: AuditAction = AuditAction::SecretRead;
        let uri = self.uri(owner, key);
        let perms = match p.user() {
            Some(u) => Some(self.perms(u).await?),
            None => None,
        };
        if !may_read(p, perms.as_ref(), &uri) {
            return Err(self.deny_one(p, ACTION, &uri, Action::Read));
        }
        let Some(value) = self.read_value(&uri).await? else {
            self.audit_refused(p, ACTION, Some(uri.to_string()), Outcome::NotFound);
            return Err(not_found_secret(&uri.key));
        };
        self.audit_read(p, ACTION, Some(uri.to_string()))?;
        Ok((uri, value))
    }

    pub async fn delete_secret(
        &self,
        p: &Principal,
        owner: UserName,
        key: SecretKey,
    ) -> Result<(), DomainError> {
        const ACTION: AuditAction = AuditAction::SecretDelete;
        let me = p.need_user("deleting secrets needs a user token")?;
        let uri = self.uri(owner, key);
        if !self.perms(me).await?.holds_secret(&uri, Action::Write) {
            return Err(self.deny_one(p, ACTION, &uri, Action::Write));
        }
        let slot = self.audit.reserve()?;
        let event = |outcome| AuditEvent::new(p.actor(), ACTION, Some(uri.to_string()), outcome);
        let name = SecretName::of(&uri);
        let removed = self.store.delete_secret(name.as_str()).await;
        self.values.forget(name.as_str());
        let removed = match removed {
            Ok(r) => r,
            Err(e) => {
                slot.record(event(Outcome::Error));
                return Err(e.into());
            }
        };
        let Some(rev) = removed else {
            slot.record(event(Outcome::NotFound));
            return Err(not_found_secret(&uri.key));
        };
        self.changed.send_replace(rev);
        slot.record(event(Outcome::Ok));
        Ok(())
    }

    /// Reads every URI in `uris` (as the caller wrote them) that the caller may read: one
    /// result each, in order, with a per-URI status; one read and one audit line per distinct
    /// URI, however often it is asked.
    pub async fn resolve(
        &self,
        p: &Principal,
        uris: Vec<String>,
    ) -> Result<Resolution, DomainError> {
        const ACTION: AuditAction = AuditAction::SecretRead;
        let user = p.need_user_or_job("resolving secrets needs a user or job token")?;
        if uris.len() > MAX_RESOLVE {
            return Err(DomainError::Invalid(format!(
                "{} URIs asked; at most {MAX_RESOLVE} per request",
                uris.len()
            )));
        }
        let perms = self.perms(user).await?;
        let ctx = self.ctx(user);
        let mut seen: HashMap<SecretUri, Option<Arc<Opened>>> = HashMap::new();
        let mut lines: Vec<(String, Outcome)> = Vec::new();
        let mut total = 0usize;
        let mut results = Vec::with_capacity(uris.len());
        for asked in uris {
            let mut r = Resolved {
                uri: asked,
                status: ResolveStatus::Invalid,
                resolved_uri: None,
                version: None,
                value: None,
                error: None,
            };
            let uri = match SecretRef::parse(&r.uri) {
                Ok(sr) => sr.resolve(&ctx),
                Err(e) => {
                    r.error = Some(e.to_string());
                    results.push(r);
                    continue;
                }
            };
            r.resolved_uri = Some(uri.to_string());
            let first = !seen.contains_key(&uri);
            let outcome = if uri.cluster != self.cluster {
                r.error = Some(format!(
                    "'{uri}' names cluster '{}'; this service is cluster '{}'",
                    uri.cluster, self.cluster
                ));
                Outcome::Invalid
            } else if !may_read(p, Some(&perms), &uri) {
                r.status = ResolveStatus::Forbidden;
                r.error = Some(format!("permission denied: missing read on {uri}"));
                Outcome::Denied
            } else {
                if first {
                    let v = self.read_value(&uri).await?;
                    seen.insert(uri.clone(), v);
                }
                match seen.get(&uri).cloned().flatten() {
                    Some(value) => {
                        total += value.plain.len();
                        if total > MAX_RESOLVE_BYTES {
                            self.audit_refused(p, ACTION, Some(uri.to_string()), Outcome::TooLarge);
                            return Err(DomainError::TooLarge(format!(
                                "the answer would hold more than {MAX_RESOLVE_BYTES} bytes of \
                                 values (reached at '{uri}'); ask for fewer or smaller secrets \
                                 per resolve"
                            )));
                        }
                        r.status = ResolveStatus::Ok;
                        r.version = Some(value.version);
                        r.value = Some(value.plain.clone());
                        Outcome::Ok
                    }
                    None => {
                        r.status = ResolveStatus::NotFound;
                        r.error = Some(format!("Secret '{}' not found", uri.key));
                        Outcome::NotFound
                    }
                }
            };
            if first {
                seen.entry(uri.clone()).or_insert(None);
                lines.push((uri.to_string(), outcome));
            }
            results.push(r);
        }
        drop(seen);
        for (uri, outcome) in lines {
            self.audit
                .record(AuditEvent::new(p.actor(), ACTION, Some(uri), outcome))?;
        }
        Ok(Resolution {
            results,
            value_bytes: total,
        })
    }
}
