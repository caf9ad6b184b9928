//! The permission model: what a user may do (`Perms`, its owned namespace plus its grants) and
//! what a caller may read (`may_read`).

use secrets_core::{Action, ClusterName, ResourceUri, SecretUri, UserName};

use super::{Domain, DomainError, Principal};
use crate::records::{GrantRecord, decode};
use crate::store::Table;

/// What one user may do, loaded once per request.
#[derive(Debug)]
pub struct Perms<'a> {
    user: &'a UserName,
    cluster: &'a ClusterName,
    pub(super) grants: Vec<(ResourceUri, Action)>,
}

impl<'a> Perms<'a> {
    pub fn new(
        user: &'a UserName,
        cluster: &'a ClusterName,
        grants: Vec<(ResourceUri, Action)>,
    ) -> Self {
        Self {
            user,
            cluster,
            grants,
        }
    }

    /// A user holds everything on its own namespace of this cluster, and what its grants give:
    /// a grant of `action` or more on `target` or on a namespace that contains it.
    pub fn holds(&self, target: &ResourceUri, action: Action) -> bool {
        (target.owner == *self.user && target.cluster == *self.cluster)
            || self
                .grants
                .iter()
                .any(|(r, a)| *a >= action && r.contains(target))
    }

    pub fn holds_secret(&self, uri: &SecretUri, action: Action) -> bool {
        self.holds(&ResourceUri::from(uri.clone()), action)
    }
}

/// Whether `p` may read `uri`: a user by ownership or grant; a job only its own URIs, and only
/// while the user who created it still may (`perms` are that user's). The operator reads
/// nothing.
pub fn may_read(p: &Principal, perms: Option<&Perms<'_>>, uri: &SecretUri) -> bool {
    let Some(perms) = perms else { return false };
    match p {
        Principal::Operator => false,
        Principal::User(_) => perms.holds_secret(uri, Action::Read),
        Principal::Job { uris, .. } => uris.contains(uri) && perms.holds_secret(uri, Action::Read),
    }
}

impl Domain {
    pub async fn grants_of(&self, user: &UserName) -> Result<Vec<GrantRecord>, DomainError> {
        self.store
            .scan(Table::Grants, &GrantRecord::prefix(user))
            .await?
            .iter()
            .map(|(k, v)| decode(k, v).map_err(DomainError::from))
            .collect()
    }

    pub async fn perms<'a>(&'a self, user: &'a UserName) -> Result<Perms<'a>, DomainError> {
        let grants = self
            .grants_of(user)
            .await?
            .into_iter()
            .filter_map(|g| Some((g.resource()?, g.action)))
            .collect();
        Ok(Perms::new(user, &self.cluster, grants))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use secrets_core::SecretKey;

    use super::*;

    fn user(n: &str) -> UserName {
        UserName::new(n).unwrap()
    }

    fn secret(cluster: &str, owner: &str, key: &str) -> SecretUri {
        SecretUri {
            cluster: ClusterName::new(cluster).unwrap(),
            owner: user(owner),
            key: SecretKey::new(key).unwrap(),
        }
    }

    fn res(cluster: &str, owner: &str, key: Option<&str>) -> ResourceUri {
        ResourceUri {
            cluster: ClusterName::new(cluster).unwrap(),
            owner: user(owner),
            key: key.map(|k| SecretKey::new(k).unwrap()),
        }
    }

    /// bob on cluster `c`: read on alice/k1, write on carol's namespace, manage on dan/k3, and
    /// a grant on another cluster that gives nothing here.
    #[track_caller]
    fn check(target: ResourceUri, action: Action, expected: bool) {
        let (bob, c) = (user("bob"), ClusterName::new("c").unwrap());
        let perms = Perms::new(
            &bob,
            &c,
            vec![
                (res("c", "alice", Some("k1")), Action::Read),
                (res("c", "carol", None), Action::Write),
                (res("c", "dan", Some("k3")), Action::Manage),
                (res("other", "erin", None), Action::Read),
            ],
        );
        assert_eq!(
            perms.holds(&target, action),
            expected,
            "{target} {action:?}"
        );
    }

    #[test]
    fn perms_table() {
        use Action::{Manage, Read, Write};
        // Its own namespace: everything, on this cluster only.
        check(res("c", "bob", Some("x")), Manage, true);
        check(res("c", "bob", None), Manage, true);
        check(res("other", "bob", Some("x")), Read, false);
        // A key grant covers that key, at its action and below.
        check(res("c", "alice", Some("k1")), Read, true);
        check(res("c", "alice", Some("k1")), Write, false);
        check(res("c", "alice", Some("k2")), Read, false);
        check(res("c", "alice", None), Read, false);
        // A namespace grant covers every key in it, and the namespace.
        check(res("c", "carol", Some("any")), Read, true);
        check(res("c", "carol", Some("any")), Write, true);
        check(res("c", "carol", Some("any")), Manage, false);
        check(res("c", "carol", None), Write, true);
        // Manage includes write and read.
        check(res("c", "dan", Some("k3")), Read, true);
        check(res("c", "dan", Some("k3")), Manage, true);
        // Nobody's else.
        check(res("c", "erin", Some("k")), Read, false);
        check(res("other", "erin", Some("k")), Read, true);
        check(res("c", "zed", None), Read, false);
    }

    #[test]
    fn may_read_by_caller() {
        let (bob, c) = (user("bob"), ClusterName::new("c").unwrap());
        let perms = Perms::new(&bob, &c, vec![(res("c", "alice", None), Action::Read)]);
        let own = secret("c", "bob", "mine");
        let shared = secret("c", "alice", "k");
        let other = secret("c", "carol", "k");
        let job = |uris: &[&SecretUri]| Principal::Job {
            id: "job-1".into(),
            owner: bob.clone(),
            uris: Arc::new(uris.iter().map(|u| (*u).clone()).collect::<HashSet<_>>()),
        };
        let as_bob = Principal::User(bob.clone());
        assert!(may_read(&as_bob, Some(&perms), &own));
        assert!(may_read(&as_bob, Some(&perms), &shared));
        assert!(!may_read(&as_bob, Some(&perms), &other));
        // Without perms nobody reads, and the operator never does.
        assert!(!may_read(&as_bob, None, &own));
        assert!(!may_read(&Principal::Operator, Some(&perms), &own));
        // A job reads its own URIs, only while its creator may.
        let j = job(&[&shared, &other]);
        assert!(may_read(&j, Some(&perms), &shared));
        assert!(!may_read(&j, Some(&perms), &own), "not one of its URIs");
        assert!(!may_read(&j, Some(&perms), &other), "its creator may not");
        let revoked = Perms::new(&bob, &c, vec![]);
        assert!(!may_read(&j, Some(&revoked), &shared), "grant revoked");
    }
}
