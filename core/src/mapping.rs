//! Job mapping specs: `--env NAME=secret:KEY` (or `NAME:secret:KEY`) and
//! `--volume secret:KEY:/PATH`, parsed once into validated types.

use std::path::{Component, Path, PathBuf};

use crate::names::EnvName;
use crate::uri::SecretRef;

/// Why a mapping spec was refused. Messages name the variable or path, never a plain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("invalid --env '{name}': {reason}")]
    Env { name: String, reason: String },
    #[error("invalid --volume '{spec}': {reason}")]
    Volume { spec: String, reason: String },
}

/// An environment variable whose value comes from a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvMapping {
    pub name: EnvName,
    pub secret: SecretRef,
}

/// One `--env` argument: a secret mapping or a plain `NAME=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSpec {
    Secret(EnvMapping),
    Plain { name: EnvName, value: String },
}

impl EnvSpec {
    /// Accepts `NAME=secret:KEY`, `NAME:secret:KEY` and `NAME=VALUE`. The separator is the
    /// first `=` or `:`; a `:` separator is only for secret mappings.
    pub fn parse(spec: &str) -> Result<Self, MappingError> {
        let Some(pos) = spec.find(['=', ':']) else {
            return Err(MappingError::Env {
                name: spec.to_owned(),
                reason: "expected NAME=secret:KEY, NAME:secret:KEY or NAME=VALUE".into(),
            });
        };
        let (raw_name, sep, rest) = (&spec[..pos], &spec[pos..=pos], &spec[pos + 1..]);
        let err = |reason: String| MappingError::Env {
            name: raw_name.to_owned(),
            reason,
        };
        let name = EnvName::new(raw_name).map_err(|e| err(e.to_string()))?;
        if rest.starts_with("secret:") {
            let secret = SecretRef::parse(rest).map_err(|e| err(e.to_string()))?;
            Ok(EnvSpec::Secret(EnvMapping { name, secret }))
        } else if sep == "=" {
            Ok(EnvSpec::Plain {
                name,
                value: rest.to_owned(),
            })
        } else {
            Err(err(
                "a ':' separator needs a secret URI (NAME:secret:KEY); write NAME=VALUE for a plain value"
                    .into(),
            ))
        }
    }
}

impl EnvMapping {
    /// Parses a mapping that must be a secret one (`secret-inject --env`).
    pub fn parse(spec: &str) -> Result<Self, MappingError> {
        match EnvSpec::parse(spec)? {
            EnvSpec::Secret(m) => Ok(m),
            EnvSpec::Plain { name, .. } => Err(MappingError::Env {
                name: name.to_string(),
                reason: "the value is not a secret URI (expected NAME=secret:KEY)".into(),
            }),
        }
    }
}

/// A secret served as a file at an absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMapping {
    pub secret: SecretRef,
    pub path: PathBuf,
}

/// The name under which secretfs serves the `index`-th volume mapping (in mapping order) in its
/// mount root; a pod's subPath mounts name these files.
pub fn secretfs_file_name(index: usize) -> String {
    index.to_string()
}

impl VolumeMapping {
    /// Parses `secret:KEY:/PATH` (also `secret:/OWNER/KEY:/PATH` and
    /// `secret://CLUSTER/OWNER/KEY:/PATH`): exactly three `:`-separated parts.
    pub fn parse(spec: &str) -> Result<Self, MappingError> {
        let err = |reason: &str| MappingError::Volume {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        if parts.first() != Some(&"secret") {
            return Err(err("expected secret:KEY:/PATH"));
        }
        match parts.last() {
            Some(&("ro" | "rw")) if parts.len() > 3 => {
                return Err(err(
                    "':ro' and ':rw' suffixes are not supported: secret files are always read-only",
                ));
            }
            _ => {}
        }
        if parts.len() != 3 {
            return Err(err(
                "expected exactly three ':'-separated parts: secret:KEY:/PATH",
            ));
        }
        let secret =
            SecretRef::parse(&format!("secret:{}", parts[1])).map_err(|e| err(&e.to_string()))?;
        let path = Self::check_path(parts[2]).map_err(err)?;
        Ok(Self { secret, path })
    }

    /// A destination path: absolute, normalized, not the root, not a directory spelling.
    pub fn check_path(p: &str) -> Result<PathBuf, &'static str> {
        if p.is_empty() {
            return Err("the path is missing");
        }
        if p.contains('\0') {
            return Err("the path must not contain NUL");
        }
        if p.len() > 4096 {
            return Err("the path is longer than 4096 bytes");
        }
        if !p.starts_with('/') {
            return Err("the path must be absolute");
        }
        if p.ends_with('/') {
            return Err("the path must name a file, not end with '/'");
        }
        let path = Path::new(p);
        if path
            .components()
            .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
            || p.contains("//")
            || p.contains("/./")
            || p.ends_with("/.")
        {
            return Err("the path must be normalized (no '.', '..' or '//')");
        }
        Ok(path.to_path_buf())
    }

    /// The `secret:...:/PATH` spelling, for messages and manifests.
    pub fn spec(&self) -> String {
        let s = self.secret.to_string();
        format!("{s}:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expected`: `Ok((name, "secret"|"plain", uri-or-value))` or `Err(message fragment)`.
    #[track_caller]
    fn check_env(input: &str, expected: Result<(&str, &str, &str), &str>) {
        let got = EnvSpec::parse(input);
        match (got, expected) {
            (Ok(EnvSpec::Secret(m)), Ok((n, "secret", u))) => {
                assert_eq!((m.name.as_str(), m.secret.to_string().as_str()), (n, u))
            }
            (Ok(EnvSpec::Plain { name, value }), Ok((n, "plain", v))) => {
                assert_eq!((name.as_str(), value.as_str()), (n, v))
            }
            (Err(e), Err(frag)) => {
                let msg = e.to_string();
                assert!(msg.contains(frag), "{input:?}: {msg:?} lacks {frag:?}");
            }
            (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn env_specs() {
        // both spellings of the seed page
        check_env(
            "mypass:secret:secret-password",
            Ok(("mypass", "secret", "secret:secret-password")),
        );
        check_env(
            "mypass=secret:secret-password",
            Ok(("mypass", "secret", "secret:secret-password")),
        );
        check_env("A=secret:/bob/k", Ok(("A", "secret", "secret:/bob/k")));
        check_env("A:secret:/bob/k", Ok(("A", "secret", "secret:/bob/k")));
        check_env(
            "A=secret://c/bob/k",
            Ok(("A", "secret", "secret://c/bob/k")),
        );
        check_env(
            "A:secret://c/bob/k",
            Ok(("A", "secret", "secret://c/bob/k")),
        );
        // plain values, with separators inside them
        check_env("A=b", Ok(("A", "plain", "b")));
        check_env("A=", Ok(("A", "plain", "")));
        check_env("A=x=y:z", Ok(("A", "plain", "x=y:z")));
        check_env("A=http://x", Ok(("A", "plain", "http://x")));
        // rejections
        check_env("A", Err("expected NAME=secret:KEY"));
        check_env("A:b", Err("a ':' separator needs a secret URI"));
        check_env("=secret:k", Err("invalid variable name ''"));
        check_env(":secret:k", Err("invalid variable name ''"));
        check_env("1A=secret:k", Err("must not start with a digit"));
        check_env("A-B=secret:k", Err("only letters, digits and '_'"));
        check_env("A=secret:k?x", Err("query"));
        check_env("A=secret:", Err("key is missing"));
        check_env("A:secret:a/b", Err("expected secret:KEY"));
        check_env("A=secret:k:ro", Err("invalid secret key"));
    }

    #[test]
    fn env_errors_never_show_plain_values() {
        let e = EnvSpec::parse("BAD-NAME=hunter2").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn secret_only_env() {
        assert!(EnvMapping::parse("A=secret:k").is_ok());
        let e = EnvMapping::parse("A=plain").unwrap_err().to_string();
        assert!(
            e.contains("not a secret URI") && !e.contains("plain"),
            "{e}"
        );
    }

    #[track_caller]
    fn check_volume(input: &str, expected: Result<(&str, &str), &str>) {
        match (VolumeMapping::parse(input), expected) {
            (Ok(v), Ok((uri, path))) => {
                assert_eq!(v.secret.to_string(), uri, "{input:?}");
                assert_eq!(v.path, Path::new(path), "{input:?}");
                assert_eq!(v.spec(), input.replace("secret:///", "secret:/"));
            }
            (Err(e), Err(frag)) => {
                let msg = e.to_string();
                assert!(msg.contains(frag), "{input:?}: {msg:?} lacks {frag:?}");
                assert!(msg.contains(input), "{msg:?} does not name the input");
            }
            (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn volume_specs() {
        check_volume(
            "secret:secret-password:/var/secrets/secret-password.txt",
            Ok(("secret:secret-password", "/var/secrets/secret-password.txt")),
        );
        check_volume("secret:/bob/k:/a/b", Ok(("secret:/bob/k", "/a/b")));
        check_volume("secret:///bob/k:/a/b", Ok(("secret:/bob/k", "/a/b")));
        check_volume("secret://c/bob/k:/a", Ok(("secret://c/bob/k", "/a")));
        check_volume("secret:k:/p:ro", Err("suffixes are not supported"));
        check_volume("secret:k:/p:rw", Err("suffixes are not supported"));
        check_volume("secret:k", Err("exactly three"));
        check_volume("secret:k:/p:x", Err("exactly three"));
        check_volume("storage:k:/p", Err("expected secret:KEY:/PATH"));
        check_volume("k:/p", Err("expected secret:KEY:/PATH"));
        check_volume("secret:k:rel/p", Err("must be absolute"));
        check_volume("secret:k:", Err("path is missing"));
        check_volume("secret:k:/", Err("must name a file"));
        check_volume("secret:k:/a/", Err("must name a file"));
        check_volume("secret:k:/a/../b", Err("normalized"));
        check_volume("secret:k:/a/./b", Err("normalized"));
        check_volume("secret:k:/a//b", Err("normalized"));
        check_volume("secret:a/b:/p", Err("expected secret:KEY"));
        check_volume("secret:..k:/p", Err("invalid secret key"));
        check_volume("secret:k?q:/p", Err("query"));
    }
}
