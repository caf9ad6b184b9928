//! Secret URIs (`secret://CLUSTER/OWNER/KEY`), their short forms, and permission actions.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::{ClusterName, NameError, SecretKey, UserName};

/// Why a URI was refused. The message names the URI and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid secret URI '{uri}': {reason}")]
pub struct UriError {
    pub uri: String,
    pub reason: String,
}

fn fail<T>(uri: &str, reason: impl Into<String>) -> Result<T, UriError> {
    Err(UriError {
        uri: uri.to_owned(),
        reason: reason.into(),
    })
}

/// What a short form is expanded against: the caller's cluster and user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriContext {
    pub cluster: ClusterName,
    pub user: UserName,
}

/// The ordered actions a user may hold on a URI: `read < write < manage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Write,
    Manage,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Manage => "manage",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Action::Read),
            "write" => Ok(Action::Write),
            "manage" => Ok(Action::Manage),
            _ => Err(format!(
                "invalid action '{s}': expected read, write or manage"
            )),
        }
    }
}

/// The syntactic pieces of a secret URI before names are checked.
struct Parts<'a> {
    cluster: Option<&'a str>,
    /// `true` for `secret:KEY`, where the only segment is a key of the caller's own.
    bare: bool,
    segments: Vec<&'a str>,
}

fn split(uri: &str) -> Result<Parts<'_>, UriError> {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return fail(uri, "missing 'secret:' scheme");
    };
    if scheme != "secret" {
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return fail(uri, "missing 'secret:' scheme");
        }
        return fail(uri, format!("scheme '{scheme}' is not 'secret'"));
    }
    if rest.contains('?') {
        return fail(uri, "a query ('?') is not allowed");
    }
    if rest.contains('#') {
        return fail(uri, "a fragment ('#') is not allowed");
    }
    let (cluster, path) = if let Some(after) = rest.strip_prefix("//") {
        let (authority, path) = match after.find('/') {
            Some(i) => after.split_at(i),
            None => (after, ""),
        };
        if authority.contains('@') {
            return fail(uri, "a user or password in the authority is not allowed");
        }
        if authority.contains(':') {
            return fail(uri, "a port in the authority is not allowed");
        }
        if path.is_empty() {
            return fail(uri, SHAPE);
        }
        ((!authority.is_empty()).then_some(authority), path)
    } else {
        (None, rest)
    };
    let bare = !path.starts_with('/');
    if bare && path.contains('/') && !path.starts_with('~') {
        return fail(uri, SHAPE);
    }
    let segments: Vec<&str> = if bare {
        vec![path]
    } else {
        path[1..].split('/').collect()
    };
    if segments.iter().any(|s| s.starts_with('~')) {
        return fail(uri, "a '~' path is not allowed");
    }
    if bare && cluster.is_none() && path.is_empty() {
        return fail(uri, "the key is missing");
    }
    if segments.iter().any(|s| s.is_empty()) {
        return fail(uri, "empty path segment");
    }
    Ok(Parts {
        cluster,
        bare,
        segments,
    })
}

fn name<T>(uri: &str, r: Result<T, NameError>) -> Result<T, UriError> {
    r.or_else(|e| fail(uri, e.to_string()))
}

const SHAPE: &str = "expected secret:KEY, secret:/OWNER/KEY or secret://CLUSTER/OWNER/KEY";

/// A reference to one secret as written by a user: `secret:KEY`, `secret:/OWNER/KEY`,
/// `secret:///OWNER/KEY` or `secret://CLUSTER/OWNER/KEY`. Syntax is checked; the missing
/// cluster and owner are filled in by [`SecretRef::resolve`] against the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    pub cluster: Option<ClusterName>,
    pub owner: Option<UserName>,
    pub key: SecretKey,
}

impl SecretRef {
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let p = split(uri)?;
        let cluster = p
            .cluster
            .map(|c| name(uri, ClusterName::new(c)))
            .transpose()?;
        match (p.bare, p.segments.as_slice()) {
            (true, [key]) if cluster.is_none() => Ok(Self {
                cluster: None,
                owner: None,
                key: name(uri, SecretKey::new(key))?,
            }),
            (false, [owner, key]) => Ok(Self {
                cluster,
                owner: Some(name(uri, UserName::new(owner))?),
                key: name(uri, SecretKey::new(key))?,
            }),
            _ => fail(uri, SHAPE),
        }
    }

    /// Parses a CLI argument that is either a bare key (`secret-password`) or a URI.
    pub fn parse_key_or_uri(s: &str) -> Result<Self, UriError> {
        if s.starts_with("secret:") || s.contains(':') {
            Self::parse(s)
        } else {
            let key = SecretKey::new(s).or_else(|e| fail(s, e.to_string()))?;
            Ok(Self {
                cluster: None,
                owner: None,
                key,
            })
        }
    }

    pub fn resolve(&self, ctx: &UriContext) -> SecretUri {
        SecretUri {
            cluster: self.cluster.clone().unwrap_or_else(|| ctx.cluster.clone()),
            owner: self.owner.clone().unwrap_or_else(|| ctx.user.clone()),
            key: self.key.clone(),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.cluster, &self.owner) {
            (Some(c), Some(o)) => write!(f, "secret://{c}/{o}/{}", self.key),
            (None, Some(o)) => write!(f, "secret:/{o}/{}", self.key),
            _ => write!(f, "secret:{}", self.key),
        }
    }
}

/// A fully qualified secret URI: `secret://CLUSTER/OWNER/KEY`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretUri {
    pub cluster: ClusterName,
    pub owner: UserName,
    pub key: SecretKey,
}

impl SecretUri {
    /// Parses any form and expands short ones against `ctx`.
    pub fn parse(uri: &str, ctx: &UriContext) -> Result<Self, UriError> {
        Ok(SecretRef::parse(uri)?.resolve(ctx))
    }

    /// The short form a user of `cluster` types: `secret:/OWNER/KEY`.
    pub fn short(&self) -> String {
        format!("secret:/{}/{}", self.owner, self.key)
    }
}

impl fmt::Display for SecretUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "secret://{}/{}/{}", self.cluster, self.owner, self.key)
    }
}

/// What a permission is held on: one secret, or an owner's whole namespace
/// (`secret://CLUSTER/OWNER` covers every secret of OWNER).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceUri {
    pub cluster: ClusterName,
    pub owner: UserName,
    pub key: Option<SecretKey>,
}

impl ResourceUri {
    pub fn parse(uri: &str, ctx: &UriContext) -> Result<Self, UriError> {
        let p = split(uri)?;
        let cluster = match p.cluster {
            Some(c) => name(uri, ClusterName::new(c))?,
            None => ctx.cluster.clone(),
        };
        match (p.bare, p.segments.as_slice()) {
            (true, [key]) if p.cluster.is_none() => Ok(Self {
                cluster,
                owner: ctx.user.clone(),
                key: Some(name(uri, SecretKey::new(key))?),
            }),
            (false, [owner]) => Ok(Self {
                cluster,
                owner: name(uri, UserName::new(owner))?,
                key: None,
            }),
            (false, [owner, key]) => Ok(Self {
                cluster,
                owner: name(uri, UserName::new(owner))?,
                key: Some(name(uri, SecretKey::new(key))?),
            }),
            _ => fail(
                uri,
                "expected secret:KEY, secret:/OWNER, secret:/OWNER/KEY or secret://CLUSTER/OWNER[/KEY]",
            ),
        }
    }

    pub fn namespace(cluster: ClusterName, owner: UserName) -> Self {
        Self {
            cluster,
            owner,
            key: None,
        }
    }

    /// Whether a permission held on `self` applies to everything `other` names.
    pub fn contains(&self, other: &ResourceUri) -> bool {
        self.cluster == other.cluster
            && self.owner == other.owner
            && (self.key.is_none() || self.key == other.key)
    }

    /// Whether a permission held on `self` applies to `uri`.
    pub fn covers(&self, uri: &SecretUri) -> bool {
        self.cluster == uri.cluster
            && self.owner == uri.owner
            && self.key.as_ref().is_none_or(|k| *k == uri.key)
    }
}

impl From<SecretUri> for ResourceUri {
    fn from(u: SecretUri) -> Self {
        Self {
            cluster: u.cluster,
            owner: u.owner,
            key: Some(u.key),
        }
    }
}

impl fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "secret://{}/{}", self.cluster, self.owner)?;
        if let Some(k) = &self.key {
            write!(f, "/{k}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> UriContext {
        UriContext {
            cluster: ClusterName::new("neuro-compute").unwrap(),
            user: UserName::new("alice").unwrap(),
        }
    }

    /// `expected` is the full URI, or `Err(reason fragment)`.
    #[track_caller]
    fn check(input: &str, expected: Result<&str, &str>) {
        let got = SecretUri::parse(input, &ctx());
        match (got, expected) {
            (Ok(u), Ok(want)) => assert_eq!(u.to_string(), want, "input {input:?}"),
            (Err(e), Err(frag)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(frag),
                    "input {input:?}: error {msg:?} lacks {frag:?}"
                );
                assert!(msg.contains(input), "error {msg:?} does not name the input");
            }
            (got, want) => panic!("input {input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn secret_uris() {
        check(
            "secret:secret-password",
            Ok("secret://neuro-compute/alice/secret-password"),
        );
        check("secret:/bob/k", Ok("secret://neuro-compute/bob/k"));
        check("secret:///bob/k", Ok("secret://neuro-compute/bob/k"));
        check("secret://other/bob/k", Ok("secret://other/bob/k"));
        check(
            "secret://neuro-compute/alice/secret-password",
            Ok("secret://neuro-compute/alice/secret-password"),
        );
        // rejections, one per rule
        check("secret-password", Err("missing 'secret:' scheme"));
        check("", Err("missing 'secret:' scheme"));
        check("https://c/alice/k", Err("scheme 'https' is not 'secret'"));
        check("Secret:k", Err("scheme 'Secret' is not 'secret'"));
        check("secret:k?x=1", Err("query"));
        check("secret://c/alice/k?", Err("query"));
        check("secret:k#frag", Err("fragment"));
        check("secret://u@c/alice/k", Err("user or password"));
        check("secret://u:p@c/alice/k", Err("user or password"));
        check("secret://c:8080/alice/k", Err("port"));
        check("secret:/~alice/k", Err("'~' path"));
        check("secret:~/k", Err("'~' path"));
        check("secret://c/~/k", Err("'~' path"));
        check("secret:", Err("key is missing"));
        check("secret:/alice", Err("expected secret:KEY"));
        check("secret:/alice/k/x", Err("expected secret:KEY"));
        check("secret://c/alice", Err("expected secret:KEY"));
        check("secret://c", Err("expected secret:KEY"));
        check("secret:/alice//k", Err("empty path segment"));
        check("secret:/Alice/k", Err("invalid user name 'Alice'"));
        check("secret:/alice/..k", Err("invalid secret key '..k'"));
        check("secret:a/b", Err("expected secret:KEY"));
        check("secret://C/alice/k", Err("invalid cluster name 'C'"));
    }

    #[test]
    fn refs_print_in_the_form_they_were_written() {
        for s in ["secret:k", "secret:/bob/k", "secret://c/bob/k"] {
            assert_eq!(SecretRef::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(
            SecretRef::parse("secret:///bob/k").unwrap().to_string(),
            "secret:/bob/k"
        );
    }

    #[test]
    fn key_or_uri() {
        assert_eq!(
            SecretRef::parse_key_or_uri("secret-password")
                .unwrap()
                .to_string(),
            "secret:secret-password"
        );
        assert_eq!(
            SecretRef::parse_key_or_uri("secret:/alice/x")
                .unwrap()
                .to_string(),
            "secret:/alice/x"
        );
        assert!(SecretRef::parse_key_or_uri("a/b").is_err());
        assert!(SecretRef::parse_key_or_uri("http:x").is_err());
    }

    #[track_caller]
    fn check_resource(input: &str, expected: Option<&str>) {
        let got = ResourceUri::parse(input, &ctx())
            .ok()
            .map(|r| r.to_string());
        assert_eq!(got.as_deref(), expected, "input {input:?}");
    }

    #[test]
    fn resource_uris() {
        check_resource(
            "secret:secret-password",
            Some("secret://neuro-compute/alice/secret-password"),
        );
        check_resource("secret:/bob", Some("secret://neuro-compute/bob"));
        check_resource("secret://c/bob", Some("secret://c/bob"));
        check_resource("secret://c/bob/k", Some("secret://c/bob/k"));
        check_resource("secret://c", None);
        check_resource("secret:/bob/k/z", None);
        check_resource("secret:/bob?x", None);
    }

    #[test]
    fn covers() {
        let c = ctx();
        let ns = ResourceUri::parse("secret:/bob", &c).unwrap();
        let one = ResourceUri::parse("secret:/bob/k", &c).unwrap();
        let k = SecretUri::parse("secret:/bob/k", &c).unwrap();
        let other = SecretUri::parse("secret:/bob/j", &c).unwrap();
        let bobby = SecretUri::parse("secret:/bobby/k", &c).unwrap();
        assert!(ns.covers(&k) && ns.covers(&other) && !ns.covers(&bobby));
        assert!(one.covers(&k) && !one.covers(&other));
    }

    #[test]
    fn actions_are_ordered() {
        assert!(Action::Read < Action::Write && Action::Write < Action::Manage);
        assert_eq!("write".parse::<Action>(), Ok(Action::Write));
        assert!("admin".parse::<Action>().is_err());
    }
}
