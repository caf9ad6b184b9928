//! The records the service keeps in its store's tables, and the keys they are stored under.
//!
//! Each table of `store::Table` holds one record type, serialized as JSON; the secrets table is
//! keyed by `SecretName`, which is also the AAD a value is sealed with.

use secrets_core::{Action, ClusterName, ResourceUri, SecretKey, SecretUri, UserName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::clock::now_secs;
use crate::crypto::{hex, random_bytes};

/// A secret's name in the store, `OWNER/KEY`: its key in the secrets table, its change-log key
/// and the AAD its value is sealed with. A name never starts with `~` (change-log markers do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretName(String);

impl SecretName {
    pub fn new(owner: &UserName, key: &SecretKey) -> Self {
        Self(format!("{owner}/{key}"))
    }

    pub fn of(uri: &SecretUri) -> Self {
        Self::new(&uri.owner, &uri.key)
    }

    /// The prefix every secret of `owner` has in the store.
    pub fn prefix(owner: &UserName) -> String {
        format!("{owner}/")
    }

    /// The owner and key of a stored name; `None` for anything else (a change-log marker).
    pub fn parse(raw: &str) -> Option<(UserName, SecretKey)> {
        let (owner, key) = raw.split_once('/')?;
        Some((UserName::new(owner).ok()?, SecretKey::new(key).ok()?))
    }

    /// The full URI of the stored name `raw` on `cluster`.
    pub fn uri(cluster: &ClusterName, raw: &str) -> Option<SecretUri> {
        let (owner, key) = Self::parse(raw)?;
        Some(SecretUri {
            cluster: cluster.clone(),
            owner,
            key,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stored user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub created_at: u64,
    /// Random, new each time the name is created (empty in records made before it existed).
    #[serde(default)]
    pub incarnation: String,
}

impl UserRecord {
    pub fn new() -> Self {
        Self {
            created_at: now_secs(),
            incarnation: hex(&random_bytes::<8>()),
        }
    }
}

impl Default for UserRecord {
    fn default() -> Self {
        Self::new()
    }
}

/// Whom a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Subject {
    Operator,
    User { name: String },
    Job { id: String },
}

/// A stored token: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub subject: Subject,
    pub hash: String,
    pub created_at: u64,
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub revoked: bool,
    /// The incarnation of the user the token speaks for (a user token's user, a job token's
    /// creator) when it was issued: a token outlives neither its user's removal nor a later
    /// user of the same name, even one issued while the user was being removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
}

/// A job: the URIs its token may read, on behalf of the user who created it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub owner: String,
    pub uris: Vec<String>,
    pub token_id: String,
    pub created_at: u64,
    pub expires_at: u64,
}

/// A stored grant: `grantee` holds `action` on `cluster/owner[/key]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantRecord {
    pub grantee: String,
    pub uri: String,
    pub action: Action,
    pub granted_by: String,
    pub created_at: u64,
}

impl GrantRecord {
    /// The grants table's key of `grantee`'s grant on `target`.
    pub fn key(grantee: &UserName, target: &ResourceUri) -> String {
        format!("{grantee}/{target}")
    }

    /// The prefix of every grant `grantee` holds.
    pub fn prefix(grantee: &UserName) -> String {
        format!("{grantee}/")
    }

    pub fn resource(&self) -> Option<ResourceUri> {
        let r = self.uri.strip_prefix("secret://")?;
        let mut it = r.split('/');
        let cluster = ClusterName::new(it.next()?).ok()?;
        let owner = UserName::new(it.next()?).ok()?;
        let key = it.next().map(SecretKey::new).transpose().ok()?;
        Some(ResourceUri {
            cluster,
            owner,
            key,
        })
    }
}

/// A stored record that does not decode: a fault of the store or of an older version.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {why}")]
pub struct Corrupt {
    what: String,
    why: String,
}

/// A stored record; `what` (its table and key) names it in the error.
pub fn decode<T: DeserializeOwned>(what: &str, raw: &[u8]) -> Result<T, Corrupt> {
    serde_json::from_slice(raw).map_err(|e| Corrupt {
        what: what.to_owned(),
        why: e.to_string(),
    })
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_round_trip_and_refuse_markers() {
        let owner = UserName::new("alice").unwrap();
        let key = SecretKey::new("db.pass").unwrap();
        let name = SecretName::new(&owner, &key);
        assert_eq!(name.as_str(), "alice/db.pass");
        assert_eq!(SecretName::parse(name.as_str()), Some((owner, key)));
        assert_eq!(SecretName::parse("~acl/alice"), None);
        assert_eq!(SecretName::parse("alice"), None);
    }
}
