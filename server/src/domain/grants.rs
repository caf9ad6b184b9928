//! Grants: sharing, revoking, and listing what a user holds and what it shared.

use secrets_core::api::{Grant, MissingPermission, SharedGrant};
use secrets_core::{Action, ResourceUri, UserName};

use super::{Domain, DomainError, Principal};
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::clock::now_secs;
use crate::records::{GrantRecord, decode, encode};
use crate::store::Table;

impl Domain {
    /// A grant's target as `me` wrote it, on this service's cluster.
    pub fn parse_target(&self, me: &UserName, uri: &str) -> Result<ResourceUri, DomainError> {
        let target = ResourceUri::parse(uri, &self.ctx(me))
            .map_err(|e| DomainError::Invalid(e.to_string()))?;
        if target.cluster != self.cluster {
            return Err(DomainError::Invalid(format!(
                "'{target}' names cluster '{}'; this service is cluster '{}'",
                target.cluster, self.cluster
            )));
        }
        Ok(target)
    }

    /// Gives `grantee` each of `grants`; the caller needs `manage` on every target.
    pub async fn grant(
        &self,
        p: &Principal,
        grantee: &UserName,
        grants: &[Grant],
    ) -> Result<Vec<Grant>, DomainError> {
        const ACTION: AuditAction = AuditAction::GrantAdd;
        let me = p.need_user("sharing needs a user token")?;
        if grants.is_empty() {
            return Err(DomainError::Invalid("no permissions given".into()));
        }
        let targets = grants
            .iter()
            .map(|g| self.parse_target(me, &g.uri).map(|t| (t, g.action)))
            .collect::<Result<Vec<_>, _>>()?;
        // Permission first: whoever may not share these learns nothing about who exists.
        let perms = self.perms(me).await?;
        let missing: Vec<MissingPermission> = targets
            .iter()
            .filter(|(t, _)| !perms.holds(t, Action::Manage))
            .map(|(t, _)| MissingPermission {
                uri: t.to_string(),
                action: Action::Manage,
            })
            .collect();
        if !missing.is_empty() {
            return Err(self.deny(p, ACTION, missing));
        }
        if !self.user_exists(grantee).await? {
            return Err(DomainError::NotFound(format!("user '{grantee}' not found")));
        }
        if let Some((t, _)) = targets.iter().find(|(t, _)| t.owner == *grantee) {
            return Err(DomainError::Invalid(format!(
                "user '{grantee}' owns '{t}' and holds manage on it already"
            )));
        }
        let mut out = Vec::new();
        let slots = self.audit.reserve_many(targets.len())?;
        for ((t, action), slot) in targets.into_iter().zip(slots) {
            let rec = GrantRecord {
                grantee: grantee.to_string(),
                uri: t.to_string(),
                action,
                granted_by: me.to_string(),
                created_at: now_secs(),
            };
            let event = |outcome| {
                AuditEvent::new(p.actor(), ACTION, Some(t.to_string()), outcome)
                    .subject(format!("user:{grantee}"))
            };
            if let Err(e) = self
                .store
                .put(Table::Grants, &GrantRecord::key(grantee, &t), &encode(&rec))
                .await
            {
                slot.record(event(Outcome::Error));
                return Err(e.into());
            }
            slot.record(event(Outcome::Ok));
            self.acl_changed(grantee).await?;
            out.push(Grant {
                uri: t.to_string(),
                action,
            });
        }
        Ok(out)
    }

    /// What `user` holds: its own namespace (manage), then its grants by URI.
    pub async fn list_permissions(
        &self,
        p: &Principal,
        user: &UserName,
    ) -> Result<Vec<Grant>, DomainError> {
        may_view(p, user)?;
        let mut out = vec![Grant {
            uri: ResourceUri::namespace(self.cluster.clone(), user.clone()).to_string(),
            action: Action::Manage,
        }];
        let mut grants: Vec<Grant> = self
            .grants_of(user)
            .await?
            .into_iter()
            .map(|g| Grant {
                uri: g.uri,
                action: g.action,
            })
            .collect();
        grants.sort_by(|a, b| a.uri.cmp(&b.uri));
        out.extend(grants);
        self.audit.record(
            AuditEvent::new(p.actor(), AuditAction::GrantList, None, Outcome::Ok)
                .subject(format!("user:{user}")),
        )?;
        Ok(out)
    }

    /// The grants on `user`'s secrets and those it gave, by URI then grantee.
    pub async fn list_shared(
        &self,
        p: &Principal,
        user: &UserName,
    ) -> Result<Vec<SharedGrant>, DomainError> {
        may_view(p, user)?;
        let mut out: Vec<SharedGrant> = Vec::new();
        for (k, v) in self.store.scan(Table::Grants, "").await? {
            let g: GrantRecord = decode(&k, &v)?;
            let owned = g.resource().is_some_and(|r| r.owner == *user);
            if owned || g.granted_by == user.as_str() {
                out.push(SharedGrant {
                    uri: g.uri,
                    action: g.action,
                    user: g.grantee,
                });
            }
        }
        out.sort_by(|a, b| (&a.uri, &a.user).cmp(&(&b.uri, &b.user)));
        self.audit.record(
            AuditEvent::new(p.actor(), AuditAction::GrantList, None, Outcome::Ok)
                .subject(format!("user:{user}")),
        )?;
        Ok(out)
    }

    /// Withdraws `grantee`'s grant on `uri`: the caller needs `manage` on it, or is the
    /// grantee giving it up.
    pub async fn revoke(
        &self,
        p: &Principal,
        grantee: &UserName,
        uri: &str,
    ) -> Result<(), DomainError> {
        const ACTION: AuditAction = AuditAction::GrantRevoke;
        let me = p.need_user("revoking needs a user token")?;
        let target = self.parse_target(me, uri)?;
        if me != grantee && !self.perms(me).await?.holds(&target, Action::Manage) {
            return Err(self.deny_one(p, ACTION, &target, Action::Manage));
        }
        let slot = self.audit.reserve()?;
        let event = |outcome| {
            AuditEvent::new(p.actor(), ACTION, Some(target.to_string()), outcome)
                .subject(format!("user:{grantee}"))
        };
        match self
            .store
            .delete(Table::Grants, &GrantRecord::key(grantee, &target))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                slot.record(event(Outcome::NotFound));
                return Err(DomainError::NotFound(format!(
                    "user '{grantee}' holds no grant on '{target}'"
                )));
            }
            Err(e) => {
                slot.record(event(Outcome::Error));
                return Err(e.into());
            }
        }
        slot.record(event(Outcome::Ok));
        self.acl_changed(grantee).await?;
        Ok(())
    }
}

/// A user may look at its own grants; the operator at anyone's.
fn may_view(p: &Principal, user: &UserName) -> Result<(), DomainError> {
    match p {
        Principal::Operator => Ok(()),
        Principal::User(u) if u == user => Ok(()),
        _ => Err(DomainError::forbidden(format!(
            "you may only list your own permissions, not those of '{user}'"
        ))),
    }
}
