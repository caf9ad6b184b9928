//! The command line of `secretfs`: `Args`, its `--help` (exit codes included), and what it
//! turns into before anything starts: the mappings of `--spec` and `--volume`, and the token.

use std::path::PathBuf;

use clap::Parser;
use secrets_client::{ConnArgs, GroupMayRead};
use secrets_core::api::JobSpec;
use secrets_core::{ExitClass, Token, VolumeMapping};

use crate::failure::fail;
use crate::files::{self, Mapping};

/// The `Exit codes:` section of `--help`.
fn exit_codes() -> String {
    ExitClass::help(&[
        (
            ExitClass::Ok,
            "stopped cleanly (SIGTERM or SIGINT): everything unmounted",
        ),
        (
            ExitClass::Other,
            "e.g. mounting failed; with --check-ready: not ready",
        ),
        (ExitClass::Usage, ""),
        (
            ExitClass::Invalid,
            "an invalid --volume, spec file or token file; a token file that\n\
             others may read or group or others may write, or that its group may read when\n\
             that group is not the job's --gid (chmod 600 it); a mapped path with a symlink\n\
             in any component, or under /proc, /sys or /dev",
        ),
        (
            ExitClass::Unavailable,
            "after --timeout of retries; at once when its TLS\n\
             certificate is not accepted or the URL's scheme (http/https) is not what it speaks",
        ),
        (ExitClass::NotFound, "a mapped secret does not exist"),
        (
            ExitClass::Forbidden,
            "no token, the token is refused, or a\n\
             mapped secret is forbidden",
        ),
    ])
}

/// Command line of `secretfs`.
#[derive(Debug, Parser)]
#[command(
    name = "secretfs",
    version,
    about = "Serve a job's secrets as read-only files at the paths it asked for",
    long_about = "Serve a job's secrets as read-only files at the paths it asked for.\n\n\
        Resolves every mapped secret first (fail closed: a missing or forbidden one stops it \
        before anything is mounted), mounts one FUSE filesystem at --mount-root, bind-mounts \
        each file onto its path, then creates --ready-file. Values stay in locked memory and \
        are refreshed from the service's change feed; after the service goes away the files \
        keep being served and the status area (MOUNT_ROOT/.status) says since when they are \
        stale. SIGTERM unmounts everything and exits 0. Needs root (or CAP_SYS_ADMIN) and \
        /dev/fuse.",
    after_help = exit_codes()
)]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// A job spec (JSON of POST /api/v1/jobs); its secret_volumes are served
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// secret:KEY:/PATH (also secret:/OWNER/KEY:/PATH and full URIs); repeatable
    #[arg(long = "volume", value_name = "SPEC")]
    pub volumes: Vec<String>,
    /// Owner of the files
    #[arg(long, default_value_t = 0)]
    pub uid: u32,
    /// Group of the files
    #[arg(long, default_value_t = 0)]
    pub gid: u32,
    /// Permission bits of the files, in octal
    #[arg(long, default_value = "0400", value_parser = parse_mode)]
    pub mode: u16,
    /// Created once every secret is served; removed at shutdown
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Where the FUSE filesystem is mounted (holds the files, .status and .metrics, the same
    /// counters in the Prometheus text format)
    #[arg(long, value_name = "DIR", default_value = "/run/secretfs")]
    pub mount_root: PathBuf,
    /// Audit log of opens (JSON lines); default: standard error
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// How opens and reads are served: strict (audited opens, per-handle snapshots), audited
    /// (audited opens, page cache, one round trip per open) or kernel (no round trips)
    #[arg(long, value_enum, default_value = "strict")]
    pub cache: files::CacheMode,
    /// The mount namespace is private to this job (as under `neuro run`): missing paths are
    /// created on a tmpfs overlay of their nearest existing directory, never on the
    /// underlying filesystem
    #[arg(long)]
    pub private: bool,
    /// Mount only the FUSE filesystem at --mount-root (files 0, 1, ... in mapping order, and
    /// .status) and bind nothing onto the mapped paths: the container runtime does that, as a
    /// pod's subPath mounts (see container/README.md)
    #[arg(long, conflicts_with = "private")]
    pub root_only: bool,
    /// Exit 0 if FILE (the --ready-file of a running secretfs) exists, else 1, and do nothing
    /// else: the startup probe of images that have no shell
    #[arg(long, value_name = "FILE", exclusive = true)]
    pub check_ready: Option<PathBuf>,
    /// When secretfs fails to start, write why here (JSON: {"code":N,"errors":[{"path",
    /// "uri","class","detail"}]}, replaced atomically; removed at start): `neuro run` reads it
    #[arg(long, value_name = "FILE")]
    pub error_file: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("invalid mode '{s}': expected octal permission bits such as 0400"))
}

/// The token: the file's group may read it only when that group is the job's (`--gid`, 0
/// included).
pub fn read_token(args: &Args) -> anyhow::Result<Token> {
    args.conn
        .token(GroupMayRead::Gid(args.gid))
        .map_err(|e| fail(e.class(), e.to_string()))
}

/// The mappings of `--spec` and `--volume`, in that order; two secrets at one path is an error.
pub fn mappings(args: &Args) -> anyhow::Result<Vec<Mapping>> {
    let mut out: Vec<Mapping> = Vec::new();
    if let Some(p) = &args.spec {
        let raw = std::fs::read(p).map_err(|e| {
            fail(
                ExitClass::Invalid,
                format!("cannot read spec '{}': {e}", p.display()),
            )
        })?;
        let spec: JobSpec = serde_json::from_slice(&raw).map_err(|e| {
            fail(
                ExitClass::Invalid,
                format!("invalid spec '{}': {e}", p.display()),
            )
        })?;
        for v in spec.secret_volumes {
            let m = VolumeMapping::parse(&format!("{}:{}", v.src_secret_uri, v.dst_path)).map_err(
                |e| {
                    fail(
                        ExitClass::Invalid,
                        format!("invalid spec '{}': {e}", p.display()),
                    )
                },
            )?;
            out.push(Mapping {
                path: m.path,
                uri: m.secret.to_string(),
            });
        }
    }
    for v in &args.volumes {
        let m = VolumeMapping::parse(v).map_err(|e| fail(ExitClass::Invalid, e.to_string()))?;
        out.push(Mapping {
            path: m.path,
            uri: m.secret.to_string(),
        });
    }
    if out.is_empty() {
        return Err(fail(
            ExitClass::Invalid,
            "nothing to serve: give --volume secret:KEY:/PATH or --spec FILE",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for m in &out {
        if !seen.insert(&m.path) {
            return Err(fail(
                ExitClass::Invalid,
                format!("two secrets are mapped to '{}'", m.path.display()),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[track_caller]
    fn check(args: &[&str], timeout: Result<Duration, ()>) {
        let mut v = vec!["secretfs", "--url", "http://127.0.0.1:1"];
        v.extend(args);
        match (Args::try_parse_from(&v), timeout) {
            (Ok(a), Ok(t)) => assert_eq!(a.conn.timeout, t, "{args:?}"),
            (Err(e), Err(())) => assert_eq!(e.exit_code(), 2, "{args:?}: {e}"),
            (got, want) => panic!("{args:?}: got {got:?}, want {want:?}"),
        }
    }

    /// `--timeout` is ConnArgs's: whole seconds as before, now fractions too, and never
    /// more than an hour (it took any u64 before).
    #[test]
    fn timeout_forms() {
        check(&[], Ok(Duration::from_secs(30)));
        check(&["--timeout", "3"], Ok(Duration::from_secs(3)));
        check(&["--timeout", "0.5"], Ok(Duration::from_millis(500)));
        check(&["--timeout", "100000"], Err(()));
        check(&["--timeout", "inf"], Err(()));
    }

    #[test]
    fn check_ready_needs_no_url() {
        let a = Args::try_parse_from(["secretfs", "--check-ready", "/r"]).unwrap();
        assert!(a.conn.service.url.is_none());
        assert!(Args::try_parse_from(["secretfs", "--check-ready", "/r", "--uid", "1"]).is_err());
    }
}
