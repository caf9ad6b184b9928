//! The operator's operations: users (create, remove with everything that speaks for them)
//! and their tokens (issue, list, revoke).

use std::collections::BTreeSet;

use secrets_core::api::{TokenInfo, TokenIssued, UserRemoved};
use secrets_core::{JobId, UserName};

use super::{Domain, DomainError, Principal, auth};
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::clock::rfc3339;
use crate::records::{
    GrantRecord, JobRecord, SecretName, Subject, TokenRecord, UserRecord, decode, encode,
};
use crate::store::Table;

fn user_not_found(user: &UserName) -> DomainError {
    DomainError::NotFound(format!("user '{user}' not found"))
}

impl Domain {
    /// Marks a token revoked and drops it from the cache; `false` when there is no such token.
    pub(super) async fn set_revoked(&self, token_id: &str) -> Result<bool, DomainError> {
        let Some(mut rec) = auth::load_token(self.store.as_ref(), token_id).await? else {
            return Ok(false);
        };
        rec.revoked = true;
        self.store
            .put(Table::Tokens, token_id, &encode(&rec))
            .await?;
        self.auth.forget(token_id);
        Ok(true)
    }

    /// Creates user `name` and its first token.
    pub async fn create_user(
        &self,
        p: &Principal,
        name: &UserName,
    ) -> Result<TokenIssued, DomainError> {
        p.need_operator()?;
        let slot = self.audit.reserve()?;
        let rec = UserRecord::new();
        let event = |outcome| {
            AuditEvent::new(p.actor(), AuditAction::UserCreate, None, outcome)
                .subject(format!("user:{name}"))
        };
        match self
            .store
            .insert_new(Table::Users, name.as_str(), &encode(&rec))
            .await
        {
            Ok(true) => slot.record(event(Outcome::Ok)),
            Ok(false) => {
                return Err(DomainError::Conflict(format!(
                    "user '{name}' already exists"
                )));
            }
            Err(e) => {
                slot.record(event(Outcome::Error));
                return Err(e.into());
            }
        }
        self.issue_for(p, name).await
    }

    /// Another token for `user`.
    pub async fn issue_token(
        &self,
        p: &Principal,
        user: &UserName,
    ) -> Result<TokenIssued, DomainError> {
        p.need_operator()?;
        if !self.user_exists(user).await? {
            return Err(user_not_found(user));
        }
        self.issue_for(p, user).await
    }

    async fn issue_for(&self, p: &Principal, user: &UserName) -> Result<TokenIssued, DomainError> {
        let slot = self.audit.reserve()?;
        let issued = async {
            let incarnation = auth::user_incarnation(self.store.as_ref(), user.as_str())
                .await?
                .ok_or_else(|| user_not_found(user))?;
            auth::issue(
                self.store.as_ref(),
                &self.keys,
                Subject::User {
                    name: user.to_string(),
                },
                None,
                Some(incarnation),
            )
            .await
            .map_err(DomainError::from)
        }
        .await;
        let event = |outcome| AuditEvent::new(p.actor(), AuditAction::TokenIssue, None, outcome);
        let (token_id, token) = match issued {
            Ok(t) => t,
            Err(e) => {
                slot.record(event(Outcome::Error).subject(format!("user:{user}")));
                return Err(e);
            }
        };
        slot.record(event(Outcome::Ok).subject(format!("token:{token_id}")));
        Ok(TokenIssued {
            user: user.to_string(),
            token_id,
            token,
        })
    }

    /// The tokens that speak for `user`: its own, then those of the jobs it created.
    async fn tokens_of(
        &self,
        user: &UserName,
        jobs: &[(String, JobRecord)],
    ) -> Result<Vec<(String, TokenRecord)>, DomainError> {
        let own = Subject::User {
            name: user.to_string(),
        };
        let mut mine = Vec::new();
        let mut of_jobs = Vec::new();
        for (id, raw) in self.store.scan(Table::Tokens, "").await? {
            let rec: TokenRecord = decode(&id, &raw)?;
            match &rec.subject {
                subject if *subject == own => mine.push((id, rec)),
                Subject::Job { id: job } if jobs.iter().any(|(j, _)| j == job) => {
                    of_jobs.push((id, rec));
                }
                _ => {}
            }
        }
        mine.extend(of_jobs);
        Ok(mine)
    }

    /// `user`'s tokens and its jobs' (ids, never the tokens).
    pub async fn list_tokens(
        &self,
        p: &Principal,
        user: &UserName,
    ) -> Result<Vec<TokenInfo>, DomainError> {
        p.need_operator()?;
        if !self.user_exists(user).await? {
            return Err(user_not_found(user));
        }
        let jobs = self.jobs_of(user).await?;
        Ok(self
            .tokens_of(user, &jobs)
            .await?
            .into_iter()
            .map(|(id, rec)| TokenInfo {
                id,
                user: user.to_string(),
                created_at: rfc3339(rec.created_at),
                revoked: rec.revoked,
                job_id: match rec.subject {
                    Subject::Job { id } => JobId::new(&id).ok(),
                    _ => None,
                },
                expires_at: rec.expires_at.map(rfc3339),
            })
            .collect())
    }

    pub async fn revoke_token(&self, p: &Principal, id: &str) -> Result<(), DomainError> {
        p.need_operator()?;
        let slot = self.audit.reserve()?;
        let event = |outcome| {
            AuditEvent::new(p.actor(), AuditAction::TokenRevoke, None, outcome)
                .subject(format!("token:{id}"))
        };
        match self.set_revoked(id).await {
            Ok(true) => {}
            Ok(false) => return Err(DomainError::NotFound(format!("token '{id}' not found"))),
            Err(e) => {
                slot.record(event(Outcome::Error));
                return Err(e);
            }
        }
        self.wake_watchers();
        slot.record(event(Outcome::Ok));
        Ok(())
    }

    /// Offboarding: removes `user` and revokes every token that speaks for it, its jobs'
    /// included, and the grants it holds. With `delete_secrets` it also deletes its secrets
    /// and every grant on them; without, it keeps both, so whoever was given them keeps
    /// reading them, and a user created later under the same name owns them. Grants the user
    /// gave on other owners' secrets stay, as given with the authority it had then.
    pub async fn remove_user(
        &self,
        p: &Principal,
        user: &UserName,
        delete_secrets: bool,
    ) -> Result<UserRemoved, DomainError> {
        p.need_operator()?;
        if !self.user_exists(user).await? {
            return Err(user_not_found(user));
        }
        let jobs = self.jobs_of(user).await?;
        let tokens = self.tokens_of(user, &jobs).await?;
        let secrets = self.store.list_secrets(&SecretName::prefix(user)).await?;
        let mut grants: Vec<(String, GrantRecord)> = Vec::new();
        for (k, v) in self.store.scan(Table::Grants, "").await? {
            let g: GrantRecord = decode(&k, &v)?;
            let held = g.grantee == user.as_str();
            let on_its_secrets = delete_secrets && g.resource().is_some_and(|r| r.owner == *user);
            if held || on_its_secrets {
                grants.push((k, g));
            }
        }
        let secret_lines = if delete_secrets { secrets.len() } else { 0 };
        let mut slots = self
            .audit
            .reserve_many(1 + tokens.len() + jobs.len() + grants.len() + secret_lines)?
            .into_iter();
        let mut line = |ev: AuditEvent| {
            if let Some(slot) = slots.next() {
                slot.record(ev);
            }
        };
        let actor = p.actor();
        let ev = |action, uri: Option<String>, subject: String| {
            AuditEvent::new(actor.clone(), action, uri, Outcome::Ok).subject(subject)
        };
        let failed = || {
            AuditEvent::new(actor.clone(), AuditAction::UserDelete, None, Outcome::Error)
                .subject(format!("user:{user}"))
        };
        let mut done = UserRemoved {
            user: user.to_string(),
            ..Default::default()
        };
        // The user record first: from here on no token is issued for the name, and its
        // watches end.
        let removed = self.store.delete(Table::Users, user.as_str()).await;
        if let Err(e) = removed {
            line(failed());
            return Err(e.into());
        }
        line(ev(AuditAction::UserDelete, None, format!("user:{user}")));
        let result = async {
            for (id, rec) in &tokens {
                if !rec.revoked {
                    self.set_revoked(id).await?;
                    done.tokens_revoked += 1;
                    line(ev(AuditAction::TokenRevoke, None, format!("token:{id}")));
                }
            }
            for (id, _) in &jobs {
                self.store.delete(Table::Jobs, id).await?;
                done.jobs_deleted += 1;
                line(ev(AuditAction::JobDelete, None, format!("job:{id}")));
            }
            let mut touched = BTreeSet::new();
            for (k, g) in &grants {
                if self.store.delete(Table::Grants, k).await? {
                    done.grants_removed += 1;
                    line(ev(
                        AuditAction::GrantRevoke,
                        Some(g.uri.clone()),
                        format!("user:{}", g.grantee),
                    ));
                    touched.insert(g.grantee.clone());
                }
            }
            if delete_secrets {
                for m in &secrets {
                    let k = &m.key;
                    if let Some(rev) = self.store.delete_secret(k).await? {
                        done.secrets_deleted += 1;
                        self.changed.send_replace(rev);
                        let uri = format!("secret://{}/{k}", self.cluster);
                        line(ev(
                            AuditAction::SecretDelete,
                            Some(uri),
                            format!("user:{user}"),
                        ));
                    }
                }
            } else {
                done.secrets_kept = secrets.len();
            }
            for grantee in touched {
                if let Ok(g) = UserName::new(&grantee) {
                    self.acl_changed(&g).await?;
                }
            }
            Ok::<_, DomainError>(())
        }
        .await;
        self.wake_watchers();
        if let Err(e) = result {
            line(failed());
            return Err(e);
        }
        Ok(done)
    }
}
