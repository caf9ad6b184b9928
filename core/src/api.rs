//! The JSON shapes of the HTTP API (`/api/v1`), shared by the service and its clients.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names::{JobId, SecretKey, UserName};
use crate::secret::{SecretBytes, Token};
use crate::uri::Action;

/// `POST /api/v1/secrets`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    pub key: SecretKey,
    pub value: SecretBytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserName>,
}

/// The answer to a write: the secret's new version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretVersion {
    pub key: String,
    pub owner: String,
    pub version: u64,
}

/// One row of `GET /api/v1/secrets`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretInfo {
    pub key: String,
    pub owner: String,
    pub uri: String,
    pub version: u64,
    /// When the value was last written (RFC 3339, UTC); absent for a secret written before
    /// write times were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// `GET /api/v1/secrets/{owner}/{key}`
#[derive(Debug, Serialize, Deserialize)]
pub struct SecretValue {
    pub key: String,
    pub owner: String,
    pub uri: String,
    pub version: u64,
    pub value: SecretBytes,
}

/// `POST /api/v1/secrets/resolve`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    pub uris: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResolveStatus {
    Ok,
    NotFound,
    Forbidden,
    Invalid,
}

/// One answer of a resolve, in the order the URIs were asked.
#[derive(Debug, Serialize, Deserialize)]
pub struct Resolved {
    /// The URI as it was asked.
    pub uri: String,
    pub status: ResolveStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<SecretBytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ResolveResponse {
    pub results: Vec<Resolved>,
}

/// A permission held: `[{"uri","action"}]` in grant requests and `acl ls`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub uri: String,
    pub action: Action,
}

/// A permission the caller gave to someone else.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedGrant {
    pub uri: String,
    pub action: Action,
    pub user: String,
}

/// A missing permission, in 403 answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MissingPermission {
    pub uri: String,
    pub action: Action,
}

/// The error body of every non-2xx answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<MissingPermission>,
}

/// A secret served as a file, in a job spec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JobVolume {
    pub src_secret_uri: String,
    pub dst_path: String,
}

/// `POST /api/v1/jobs`, and the `--spec FILE` of secretfs and secret-inject.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
    #[serde(default)]
    pub secret_volumes: Vec<JobVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JobCreated {
    /// Checked while the answer is decoded: it names a URL path and a directory.
    pub job_id: JobId,
    pub token: Token,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

/// `GET /api/v1/whoami`: who a token speaks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WhoAmI {
    /// `user`, `job` or `operator`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub cluster: String,
}

/// `POST /api/v1/admin/users`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: UserName,
}

/// A newly issued token, shown once.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenIssued {
    pub user: String,
    pub token_id: String,
    pub token: Token,
}

/// A token's public facts (never the token): a user's own tokens and those of the jobs it
/// created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    /// The user the token speaks for (for a job token: the user who created the job).
    pub user: String,
    pub created_at: String,
    pub revoked: bool,
    /// Set for a job token: the job it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// RFC 3339, UTC; job tokens expire, user tokens do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// The answer of `DELETE /api/v1/admin/users/{user}?secrets=keep|delete`: what went with the
/// user.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRemoved {
    pub user: String,
    /// User tokens and job tokens revoked.
    pub tokens_revoked: usize,
    pub jobs_deleted: usize,
    /// Grants the user held, and with `secrets=delete` grants others held on its secrets.
    pub grants_removed: usize,
    pub secrets_deleted: usize,
    pub secrets_kept: usize,
}

/// One change in `GET /api/v1/secrets/watch`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WatchEvent {
    pub uri: String,
    pub version: u64,
    pub deleted: bool,
}

/// The answer of `GET /api/v1/secrets/watch?since=N`: changes after revision `N` that the
/// caller may see, up to `revision`, which the next call passes as `since`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WatchResponse {
    pub revision: u64,
    pub events: Vec<WatchEvent>,
    /// The caller's permissions changed: what it may read must be resolved again.
    #[serde(default)]
    pub acl_changed: bool,
}
