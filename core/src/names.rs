//! Validated names: secret keys, user names, cluster names and environment variable names.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name was refused. The message names the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid secret key '{0}': {1}")]
    Key(String, &'static str),
    #[error("invalid user name '{0}': must match [a-z][a-z0-9_-]{{0,62}}")]
    User(String),
    #[error("invalid cluster name '{0}': must match [a-z0-9][a-z0-9-]{{0,62}}")]
    Cluster(String),
    #[error("invalid variable name '{0}': {1}")]
    Env(String, &'static str),
    #[error(
        "invalid job id '{0}': expected job- and 16 lowercase hex digits, as printed by `neuro job manifest`"
    )]
    Job(String),
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A secret key: 1 to 253 characters of `[A-Za-z0-9._-]`, not `.`, not starting with `..`
/// (the rule for Kubernetes Secret data keys).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(s: &str) -> Result<Self, NameError> {
        let err = |why| Err(NameError::Key(s.to_owned(), why));
        if s.is_empty() {
            return err("must not be empty");
        }
        if s.len() > 253 {
            return err("must be at most 253 characters");
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NameError::Key(
                s.to_owned(),
                if c == '/' {
                    "'/' is not allowed; only letters, digits, '.', '_' and '-'"
                } else {
                    "only letters, digits, '.', '_' and '-' are allowed"
                },
            ));
        }
        if s == "." {
            return err("'.' is not a key");
        }
        if s.starts_with("..") {
            return err("must not start with '..'");
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype!(SecretKey);

fn is_lower_name(s: &str, first: fn(u8) -> bool, rest: fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.len() <= 63 && first(b[0]) && b[1..].iter().all(|&c| rest(c))
}

/// A user name: `[a-z][a-z0-9_-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserName(String);

impl UserName {
    pub fn new(s: &str) -> Result<Self, NameError> {
        if is_lower_name(
            s,
            |c| c.is_ascii_lowercase(),
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-',
        ) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::User(s.to_owned()))
        }
    }
}
string_newtype!(UserName);

/// A cluster name: `[a-z0-9][a-z0-9-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(s: &str) -> Result<Self, NameError> {
        if is_lower_name(
            s,
            |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-',
        ) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Cluster(s.to_owned()))
        }
    }
}
string_newtype!(ClusterName);

/// A POSIX environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvName(String);

impl EnvName {
    pub fn new(s: &str) -> Result<Self, NameError> {
        let err = |why| Err(NameError::Env(s.to_owned(), why));
        let b = s.as_bytes();
        if b.is_empty() {
            return err("must not be empty");
        }
        if b.contains(&0) {
            return err("must not contain NUL");
        }
        if b.contains(&b'=') {
            return err("must not contain '='");
        }
        if b[0].is_ascii_digit() {
            return err("must not start with a digit");
        }
        if !b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_') {
            return err("only letters, digits and '_' are allowed");
        }
        Ok(Self(s.to_owned()))
    }

    /// Names whose override changes how the job's command is found or loaded; setting them
    /// from a secret needs an explicit opt-in.
    pub fn is_sensitive(&self) -> bool {
        const EXACT: &[&str] = &[
            "PATH",
            "HOME",
            "SHELL",
            "IFS",
            "ENV",
            "BASH_ENV",
            "PYTHONPATH",
            "PYTHONHOME",
            "PYTHONSTARTUP",
            "NODE_OPTIONS",
            "PERL5LIB",
            "PERL5OPT",
            "RUBYOPT",
            "RUBYLIB",
            "JAVA_TOOL_OPTIONS",
            "GCONV_PATH",
            "HOSTALIASES",
            "LOCALDOMAIN",
            "RES_OPTIONS",
            "TMPDIR",
        ];
        EXACT.contains(&self.0.as_str())
            || self.0.starts_with("LD_")
            || self.0.starts_with("DYLD_")
            || self.0.starts_with("MALLOC_")
            || self.0.starts_with("GLIBC_")
            || self.0.starts_with("NEURO_")
    }
}
string_newtype!(EnvName);

/// A job id as the service makes them: `job-` and 16 lowercase hex digits (64 random bits).
/// Its shape is checked so that an id never carries a `/`, `..` or anything else into a URL
/// path or a file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(String);

impl JobId {
    /// The number of hex digits after `job-`.
    pub const HEX_DIGITS: usize = 16;

    pub fn new(s: &str) -> Result<Self, NameError> {
        let ok = s.strip_prefix("job-").is_some_and(|h| {
            h.len() == Self::HEX_DIGITS
                && h.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Job(s.to_owned()))
        }
    }

    /// A new id from 8 random bytes (the caller supplies the randomness: `core` does no I/O).
    pub fn from_random(bytes: [u8; 8]) -> Self {
        Self(format!("job-{:016x}", u64::from_be_bytes(bytes)))
    }
}
string_newtype!(JobId);

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_key(input: &str, ok: bool) {
        assert_eq!(SecretKey::new(input).is_ok(), ok, "key {input:?}");
    }

    #[test]
    fn keys() {
        check_key("secret-password", true);
        check_key("a", true);
        check_key("A.b_C-9", true);
        check_key(".hidden", true);
        check_key("x..y", true);
        check_key(&"k".repeat(253), true);
        check_key(&"k".repeat(254), false);
        check_key("", false);
        check_key(".", false);
        check_key("..", false);
        check_key("..x", false);
        check_key("a/b", false);
        check_key("a b", false);
        check_key("ключ", false);
        check_key("a:b", false);
        check_key("a\0b", false);
    }

    #[test]
    fn key_errors_name_the_input() {
        let e = SecretKey::new("a/b").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid secret key 'a/b': '/' is not allowed; only letters, digits, '.', '_' and '-'"
        );
    }

    #[track_caller]
    fn check_user(input: &str, ok: bool) {
        assert_eq!(UserName::new(input).is_ok(), ok, "user {input:?}");
    }

    #[test]
    fn users() {
        check_user("alice", true);
        check_user("a", true);
        check_user("bob-2_x", true);
        check_user(&format!("a{}", "b".repeat(62)), true);
        check_user(&format!("a{}", "b".repeat(63)), false);
        check_user("", false);
        check_user("Alice", false);
        check_user("1alice", false);
        check_user("-a", false);
        check_user("~alice", false);
        check_user("al.ice", false);
    }

    #[track_caller]
    fn check_env(input: &str, ok: bool) {
        assert_eq!(EnvName::new(input).is_ok(), ok, "env {input:?}");
    }

    #[test]
    fn env_names() {
        check_env("mypass", true);
        check_env("_X1", true);
        check_env("A", true);
        check_env("", false);
        check_env("1A", false);
        check_env("A-B", false);
        check_env("A=B", false);
        check_env("A\0", false);
        check_env("A.B", false);
    }

    #[track_caller]
    fn check_job(input: &str, ok: bool) {
        assert_eq!(JobId::new(input).is_ok(), ok, "job id {input:?}");
    }

    #[test]
    fn job_ids() {
        check_job("job-0123456789abcdef", true);
        check_job("job-0000000000000000", true);
        check_job("job-0123456789ABCDEF", false);
        check_job("job-0123456789abcde", false);
        check_job("job-0123456789abcdef0", false);
        check_job("job-0123456789abcdeg", false);
        check_job("job-", false);
        check_job("job", false);
        check_job("", false);
        check_job("Job-0123456789abcdef", false);
        check_job("0123456789abcdef", false);
        check_job("job-../../admin/x", false);
        check_job("job-0123456789abcde/", false);
        check_job(" job-0123456789abcdef", false);
        check_job("job-0123456789abcdef\n", false);
        check_job("job-+123456789abcdef", false);
    }

    #[test]
    fn job_id_from_random_has_the_checked_shape() {
        for b in [[0u8; 8], [0xff; 8], [1, 2, 3, 4, 5, 6, 7, 8]] {
            let id = JobId::from_random(b);
            assert_eq!(JobId::new(id.as_str()), Ok(id.clone()));
        }
        assert_eq!(
            JobId::from_random([1, 2, 3, 4, 5, 6, 7, 8]).as_str(),
            "job-0102030405060708"
        );
        assert_eq!(
            JobId::new("job-x").unwrap_err().to_string(),
            "invalid job id 'job-x': expected job- and 16 lowercase hex digits, as printed by `neuro job manifest`"
        );
    }

    #[test]
    fn sensitive_names() {
        for n in [
            "PATH",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "BASH_ENV",
            "NEURO_TOKEN",
        ] {
            assert!(EnvName::new(n).unwrap().is_sensitive(), "{n}");
        }
        for n in ["mypass", "PATHX", "AWS_KEY"] {
            assert!(!EnvName::new(n).unwrap().is_sensitive(), "{n}");
        }
    }
}
