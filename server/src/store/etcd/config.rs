//! Where the etcd store lives and how to reach it: `EtcdTarget` (the `--store etcd://…` URL)
//! and `EtcdOptions` (TLS, authentication, `--max-staleness`), turned into the client's
//! connection options.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::ConnectOptions;

use crate::store::StoreError;

/// The key prefix when `--store` names none.
pub const DEFAULT_PREFIX: &str = "neuro-secrets";

/// Where the store lives: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTarget {
    pub endpoints: Vec<String>,
    pub prefix: String,
}

impl EtcdTarget {
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("etcd://").ok_or_else(|| {
            format!("'{s}' is not an etcd://HOST:PORT[,HOST:PORT...][/PREFIX] URL")
        })?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, p.trim_end_matches('/')),
            None => (rest, DEFAULT_PREFIX),
        };
        let prefix = if prefix.is_empty() {
            DEFAULT_PREFIX
        } else {
            prefix
        };
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
            || prefix.contains("//")
        {
            return Err(format!(
                "the key prefix '{prefix}' in '{s}' may hold only letters, digits, '.', '_', '-' and single '/'"
            ));
        }
        let mut endpoints = Vec::new();
        for h in hosts.split(',') {
            let ok = h.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(format!(
                    "'{h}' in '{s}' is not HOST:PORT (etcd's client port, usually 2379)"
                ));
            }
            endpoints.push(h.to_owned());
        }
        Ok(Self {
            endpoints,
            prefix: prefix.to_owned(),
        })
    }
}

impl std::fmt::Display for EtcdTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd://{}/{}", self.endpoints.join(","), self.prefix)
    }
}

/// How to reach etcd: TLS and authentication where etcd asks for them.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Requests are refused once etcd has not confirmed this replica's view for this long.
    pub max_staleness: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            ca: None,
            cert: None,
            key: None,
            user: None,
            password_file: None,
            max_staleness: Duration::from_secs(5),
        }
    }
}

impl EtcdOptions {
    pub(super) fn connect_options(&self) -> Result<(ConnectOptions, bool), StoreError> {
        let file = |what: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| {
                StoreError::File(format!("reading etcd {what} '{}': {e}", p.display()))
            })
        };
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let tls = self.ca.is_some() || self.cert.is_some();
        if tls {
            let mut t = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.ca {
                t = t.ca_certificate(etcd_client::Certificate::from_pem(file("CA", ca)?));
            }
            match (&self.cert, &self.key) {
                (Some(c), Some(k)) => {
                    t = t.identity(etcd_client::Identity::from_pem(
                        file("certificate", c)?,
                        file("key", k)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::File(
                        "--etcd-cert and --etcd-key go together".into(),
                    ));
                }
            }
            o = o.with_tls(t);
        }
        if let Some(user) = &self.user {
            let p = self
                .password_file
                .as_ref()
                .ok_or_else(|| StoreError::File("--etcd-user needs --etcd-password-file".into()))?;
            let pw = zeroize::Zeroizing::new(file("password file", p)?);
            let pw = std::str::from_utf8(&pw)
                .map_err(|_| {
                    StoreError::File(format!("etcd password file '{}' is not UTF-8", p.display()))
                })?
                .trim_end_matches(['\n', '\r']);
            // etcd's auth tokens expire (JWT tokens after their TTL, whatever the activity),
            // and etcd forgets them when it restarts: a call refused for its token
            // authenticates again and is sent once more.
            o = o
                .with_user(user.clone(), pw.to_owned())
                .with_auto_token_refresh(true);
        }
        Ok((o, tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = EtcdTarget::parse("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(t.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(t.prefix, DEFAULT_PREFIX);
        let t = EtcdTarget::parse("etcd://a:1,b:2,[::1]:3/team/prod/").unwrap();
        assert_eq!(t.endpoints, ["a:1", "b:2", "[::1]:3"]);
        assert_eq!(t.prefix, "team/prod");
        assert_eq!(t.to_string(), "etcd://a:1,b:2,[::1]:3/team/prod");
        for bad in [
            "http://a:1",
            "etcd://",
            "etcd://a",
            "etcd://a:0",
            "etcd://a:99999",
            "etcd://a:1,,b:2",
            "etcd://a:1/x y",
            "etcd://a:1/x//y",
        ] {
            assert!(EtcdTarget::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
