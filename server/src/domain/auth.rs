//! Bearer tokens: their format, how they are issued and stored (hashed), and who they speak for.
//!
//! A token is `nst.ID.SECRET`: `ID` (16 hex digits) names the stored record, `SECRET` (64 hex
//! digits) is checked against the record's keyed hash in constant time. Only the hash is stored.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use secrets_core::{SecretUri, Token, UserName};
use subtle::ConstantTimeEq as _;

use super::DomainError;
use crate::clock::now_secs;
use crate::crypto::{Keys, hex, random_bytes};
use crate::records::{JobRecord, Subject, TokenRecord, UserRecord};
use crate::store::{Store, StoreError, Table};

/// The current incarnation of user `name`; `None` when there is no such user.
pub async fn user_incarnation(
    store: &dyn Store,
    name: &str,
) -> Result<Option<String>, DomainError> {
    let Some(raw) = store.get(Table::Users, name).await? else {
        return Ok(None);
    };
    serde_json::from_slice::<UserRecord>(&raw)
        .map(|r| Some(r.incarnation))
        .map_err(|e| DomainError::Internal(format!("user record {name}: {e}")))
}

/// Refuses a token whose user is gone, or is another user of the same name.
async fn check_user(
    store: &dyn Store,
    name: &str,
    issued_for: Option<&str>,
) -> Result<(), DomainError> {
    match user_incarnation(store, name).await? {
        Some(now) if issued_for.is_none_or(|i| i == now) => Ok(()),
        _ => Err(DomainError::Unauthenticated(format!(
            "user '{name}' has been removed"
        ))),
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub enum Principal {
    Operator,
    User(UserName),
    Job {
        id: String,
        owner: UserName,
        uris: Arc<HashSet<SecretUri>>,
    },
}

impl Principal {
    /// The name the audit log uses.
    pub fn actor(&self) -> String {
        match self {
            Principal::Operator => "operator".into(),
            Principal::User(u) => format!("user:{u}"),
            Principal::Job { id, .. } => format!("job:{id}"),
        }
    }

    /// The user a request acts for: a user, or the user who created a job.
    pub fn user(&self) -> Option<&UserName> {
        match self {
            Principal::Operator => None,
            Principal::User(u) => Some(u),
            Principal::Job { owner, .. } => Some(owner),
        }
    }
}

/// The id and the secret of a token of the right shape (`nst.ID.SECRET`, `ID` 16 hex digits):
/// the one parser of the token format.
pub fn token_parts(presented: &str) -> Option<(&str, &str)> {
    let mut parts = presented.splitn(3, '.');
    let (Some("nst"), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some((id, secret))
}

/// Creates and stores a new token for `subject`; returns `(id, token)`.
pub async fn issue(
    store: &dyn Store,
    keys: &Keys,
    subject: Subject,
    expires_at: Option<u64>,
    incarnation: Option<String>,
) -> Result<(String, Token), StoreError> {
    loop {
        let id = hex(&random_bytes::<8>());
        let secret = hex(&random_bytes::<32>());
        let rec = TokenRecord {
            subject: subject.clone(),
            hash: hex(&keys.token_hash(&secret)),
            created_at: now_secs(),
            expires_at,
            revoked: false,
            incarnation: incarnation.clone(),
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| StoreError::Io(e.to_string()))?;
        if store.insert_new(Table::Tokens, &id, &bytes).await? {
            return Ok((id.clone(), Token::new(format!("nst.{id}.{secret}"))));
        }
    }
}

/// The id of the operator token a new store gets: a fixed id, so that of several replicas
/// starting on one new store exactly one creates it.
pub const OPERATOR_TOKEN_ID: &str = "0000000000000000";

/// Creates the operator token unless it exists; `None` when it does (another replica, or an
/// earlier start, made it).
pub async fn issue_operator(store: &dyn Store, keys: &Keys) -> Result<Option<Token>, StoreError> {
    let secret = hex(&random_bytes::<32>());
    let rec = TokenRecord {
        subject: Subject::Operator,
        hash: hex(&keys.token_hash(&secret)),
        created_at: now_secs(),
        expires_at: None,
        revoked: false,
        incarnation: None,
    };
    let bytes = serde_json::to_vec(&rec).map_err(|e| StoreError::Engine(e.to_string()))?;
    Ok(store
        .insert_new(Table::Tokens, OPERATOR_TOKEN_ID, &bytes)
        .await?
        .then(|| Token::new(format!("nst.{OPERATOR_TOKEN_ID}.{secret}"))))
}

pub async fn load_token(store: &dyn Store, id: &str) -> Result<Option<TokenRecord>, DomainError> {
    let Some(raw) = store.get(Table::Tokens, id).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|e| DomainError::Internal(format!("token record {id}: {e}")))
}

/// How long a verified token is trusted without a store read. Revocations made through this
/// process take effect at once (`Authenticator::forget`); ones made by another replica as soon
/// as this one's store has seen them (`Store::revocation_epoch`), and within this time at most.
const CACHE_TTL: Duration = Duration::from_secs(1);
const CACHE_MAX: usize = 10_000;

#[derive(Debug)]
struct Cached {
    hash: String,
    principal: Principal,
    expires_at: Option<u64>,
    at: Instant,
    /// The store's revocation epoch when the token was verified.
    epoch: u64,
}

/// Verifies bearer tokens, keeping recent verifications in memory so that a request costs one
/// keyed hash, not a store read.
#[derive(Debug, Default)]
pub struct Authenticator {
    cache: RwLock<HashMap<String, Cached>>,
}

impl Authenticator {
    /// Drops a token from the cache, after a revocation.
    pub fn forget(&self, token_id: &str) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token_id);
    }

    /// Checks a presented token and returns whom it speaks for.
    pub async fn authenticate(
        &self,
        store: &dyn Store,
        keys: &Keys,
        presented: &str,
    ) -> Result<Principal, DomainError> {
        let invalid = || DomainError::Unauthenticated("invalid token".into());
        let (id, secret) = token_parts(presented).ok_or_else(invalid)?;
        let got = hex(&keys.token_hash(secret));
        let check_expiry = |expires_at: Option<u64>| {
            if expires_at.is_some_and(|e| e <= now_secs()) {
                Err(DomainError::Unauthenticated("token has expired".into()))
            } else {
                Ok(())
            }
        };
        let epoch = store.revocation_epoch();
        {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache
                .get(id)
                .filter(|c| c.at.elapsed() < CACHE_TTL && c.epoch == epoch)
            {
                if !bool::from(got.as_bytes().ct_eq(c.hash.as_bytes())) {
                    return Err(invalid());
                }
                check_expiry(c.expires_at)?;
                return Ok(c.principal.clone());
            }
        }
        let rec = load_token(store, id).await?.ok_or_else(invalid)?;
        if !bool::from(got.as_bytes().ct_eq(rec.hash.as_bytes())) {
            return Err(invalid());
        }
        if rec.revoked {
            return Err(DomainError::Unauthenticated(
                "token has been revoked".into(),
            ));
        }
        check_expiry(rec.expires_at)?;
        let principal = principal_of(store, rec.subject, rec.incarnation.as_deref()).await?;
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            id.to_owned(),
            Cached {
                hash: rec.hash,
                principal: principal.clone(),
                expires_at: rec.expires_at,
                at: Instant::now(),
                epoch,
            },
        );
        Ok(principal)
    }
}

async fn principal_of(
    store: &dyn Store,
    subject: Subject,
    incarnation: Option<&str>,
) -> Result<Principal, DomainError> {
    match subject {
        Subject::Operator => Ok(Principal::Operator),
        Subject::User { name } => {
            // Revocation at removal is what keeps a token dead; this also covers a token
            // issued while its user was being removed, and a later user of the same name.
            check_user(store, &name, incarnation).await?;
            Ok(Principal::User(
                UserName::new(&name).map_err(|e| DomainError::Internal(e.to_string()))?,
            ))
        }
        Subject::Job { id: job_id } => {
            let raw = store
                .get(Table::Jobs, &job_id)
                .await?
                .ok_or_else(|| DomainError::Unauthenticated("the job has ended".into()))?;
            let job: JobRecord = serde_json::from_slice(&raw)
                .map_err(|e| DomainError::Internal(format!("job record {job_id}: {e}")))?;
            // A job created while its user was being removed outlives the removal's list of
            // jobs, not the user.
            check_user(store, &job.owner, incarnation).await?;
            let owner =
                UserName::new(&job.owner).map_err(|e| DomainError::Internal(e.to_string()))?;
            Ok(Principal::Job {
                id: job_id,
                owner,
                uris: Arc::new(job.uris.iter().filter_map(|u| parse_full(u)).collect()),
            })
        }
    }
}

/// Parses a stored, fully qualified URI.
pub fn parse_full(u: &str) -> Option<SecretUri> {
    let r = secrets_core::SecretRef::parse(u).ok()?;
    Some(SecretUri {
        cluster: r.cluster?,
        owner: r.owner?,
        key: r.key,
    })
}
