//! Jobs: creating one (its URIs checked, its token issued) and deleting it (its token revoked).

use std::collections::BTreeSet;

use secrets_core::api::{JobCreated, JobSpec, MissingPermission};
use secrets_core::{Action, EnvName, JobId, SecretRef, UserName, VolumeMapping};

use super::{Domain, DomainError, MAX_JOB_TTL_S, Principal, auth};
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::clock::{now_secs, rfc3339};
use crate::crypto::random_bytes;
use crate::records::{JobRecord, SecretName, Subject, decode, encode};
use crate::store::Table;

const DEFAULT_JOB_TTL_S: u64 = 24 * 3600;

impl Domain {
    /// Creates a job that reads `spec`'s URIs: the caller must read each, each must exist.
    pub async fn create_job(
        &self,
        p: &Principal,
        spec: &JobSpec,
    ) -> Result<JobCreated, DomainError> {
        const ACTION: AuditAction = AuditAction::JobCreate;
        let me = p.need_user("creating jobs needs a user token")?;
        let bad = |e: String| DomainError::Invalid(e);
        let ctx = self.ctx(me);
        let mut uris = BTreeSet::new();
        for (name, uri) in &spec.secret_env {
            EnvName::new(name).map_err(|e| bad(e.to_string()))?;
            uris.insert(
                SecretRef::parse(uri)
                    .map_err(|e| bad(e.to_string()))?
                    .resolve(&ctx),
            );
        }
        let mut paths = BTreeSet::new();
        for v in &spec.secret_volumes {
            VolumeMapping::check_path(&v.dst_path)
                .map_err(|e| bad(format!("invalid dst_path '{}': {e}", v.dst_path)))?;
            if !paths.insert(v.dst_path.as_str()) {
                return Err(bad(format!("dst_path '{}' is used twice", v.dst_path)));
            }
            uris.insert(
                SecretRef::parse(&v.src_secret_uri)
                    .map_err(|e| bad(e.to_string()))?
                    .resolve(&ctx),
            );
        }
        let ttl = spec.ttl_s.unwrap_or(DEFAULT_JOB_TTL_S);
        if ttl == 0 || ttl > MAX_JOB_TTL_S {
            return Err(bad(format!(
                "ttl_s {ttl} is out of range: 1 to {MAX_JOB_TTL_S} seconds"
            )));
        }
        if let Some(u) = uris.iter().find(|u| u.cluster != self.cluster) {
            return Err(bad(format!(
                "'{u}' names cluster '{}'; this service is cluster '{}'",
                u.cluster, self.cluster
            )));
        }
        let perms = self.perms(me).await?;
        let missing: Vec<MissingPermission> = uris
            .iter()
            .filter(|u| !perms.holds_secret(u, Action::Read))
            .map(|u| MissingPermission {
                uri: u.to_string(),
                action: Action::Read,
            })
            .collect();
        if !missing.is_empty() {
            // One line for the refused job, without a URI, as the log has always had it.
            self.audit_refused(p, ACTION, None, Outcome::Denied);
            return Err(DomainError::missing(missing));
        }
        let mut absent = Vec::new();
        for u in &uris {
            if self
                .store
                .get_secret(SecretName::of(u).as_str())
                .await?
                .is_none()
            {
                absent.push(if u.owner == *me {
                    u.key.to_string()
                } else {
                    u.short()
                });
            }
        }
        if !absent.is_empty() {
            absent.sort();
            self.audit_refused(p, ACTION, None, Outcome::NotFound);
            let list: Vec<String> = absent.iter().map(|k| format!("'{k}'")).collect();
            return Err(DomainError::NotFound(format!(
                "Missing secrets: {}",
                list.join(", ")
            )));
        }
        let job_id = JobId::from_random(random_bytes::<8>());
        let expires_at = now_secs() + ttl;
        let mut slots = self.audit.reserve_many(uris.len().max(1))?;
        let event = |uri: Option<String>, outcome| {
            AuditEvent::new(p.actor(), ACTION, uri, outcome).subject(format!("job:{job_id}"))
        };
        let stored = async {
            // The job's token dies with its creator, even if the creator is being removed now.
            let incarnation = auth::user_incarnation(self.store.as_ref(), me.as_str())
                .await?
                .ok_or_else(|| {
                    DomainError::Unauthenticated(format!("user '{me}' has been removed"))
                })?;
            let (token_id, token) = auth::issue(
                self.store.as_ref(),
                &self.keys,
                Subject::Job {
                    id: job_id.to_string(),
                },
                Some(expires_at),
                Some(incarnation),
            )
            .await?;
            let rec = JobRecord {
                owner: me.to_string(),
                uris: uris.iter().map(|u| u.to_string()).collect(),
                token_id,
                created_at: now_secs(),
                expires_at,
            };
            self.store
                .put(Table::Jobs, job_id.as_str(), &encode(&rec))
                .await?;
            Ok::<_, DomainError>(token)
        }
        .await;
        let token = match stored {
            Ok(t) => t,
            Err(e) => {
                if let Some(slot) = slots.pop() {
                    slot.record(event(None, Outcome::Error));
                }
                return Err(e);
            }
        };
        if uris.is_empty()
            && let Some(slot) = slots.pop()
        {
            slot.record(event(None, Outcome::Ok));
        }
        for (u, slot) in uris.iter().zip(slots) {
            slot.record(event(Some(u.to_string()), Outcome::Ok));
        }
        Ok(JobCreated {
            job_id,
            token,
            expires_at: rfc3339(expires_at),
        })
    }

    /// Deleting a job ends it: its record goes, its token is revoked, its watch ends. Whoever
    /// may not delete it is told it does not exist.
    pub async fn delete_job(&self, p: &Principal, id: &JobId) -> Result<(), DomainError> {
        let id = id.as_str();
        let not_found = || DomainError::NotFound(format!("job '{id}' not found"));
        let raw = self
            .store
            .get(Table::Jobs, id)
            .await?
            .ok_or_else(not_found)?;
        let job: JobRecord = decode(id, &raw)?;
        let allowed = match p {
            Principal::Operator => true,
            Principal::User(u) => u.as_str() == job.owner,
            Principal::Job { id: own, .. } => own == id,
        };
        let event = |outcome| {
            AuditEvent::new(p.actor(), AuditAction::JobDelete, None, outcome)
                .subject(format!("job:{id}"))
        };
        if !allowed {
            self.audit.record_best_effort(event(Outcome::Denied));
            return Err(not_found());
        }
        let slot = self.audit.reserve()?;
        let done = async {
            self.store.delete(Table::Jobs, id).await?;
            self.set_revoked(&job.token_id).await
        }
        .await;
        self.wake_watchers();
        if let Err(e) = done {
            slot.record(event(Outcome::Error));
            return Err(e);
        }
        slot.record(event(Outcome::Ok));
        Ok(())
    }

    /// The jobs `user` created: `(job id, record)`.
    pub(super) async fn jobs_of(
        &self,
        user: &UserName,
    ) -> Result<Vec<(String, JobRecord)>, DomainError> {
        let mut out = Vec::new();
        for (id, raw) in self.store.scan(Table::Jobs, "").await? {
            let job: JobRecord = decode(&id, &raw)?;
            if job.owner == user.as_str() {
                out.push((id, job));
            }
        }
        Ok(out)
    }
}
