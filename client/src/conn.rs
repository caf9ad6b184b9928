//! The connection options of the job-side binaries (`--url`, `--token-file`/`NEURO_TOKEN`,
//! `--ca-file`, `--timeout`), `ClientConfig`, and the one token reader they share.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrets_core::{ExitClass, Token};
use zeroize::Zeroizing;

/// The longest `--timeout` accepted, in seconds.
pub const MAX_TIMEOUT_SECS: f64 = 3600.0;

/// The largest token file read; a token is about 90 bytes, and a file that never ends (a link
/// to `/dev/zero`) must not be read whole.
pub const MAX_TOKEN_FILE: usize = 64 * 1024;

/// How to reach the service.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub url: String,
    pub token: Option<Token>,
    /// Extra CA certificates (PEM) to trust, e.g. a self-signed service certificate.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>, token: Option<Token>) -> Self {
        Self {
            url: url.into(),
            token,
            ca_file: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// How to reach the service, flattened into `secretfs` and `secret-inject`.
///
/// `NEURO_URL` is read by [`ConnArgs::url`], not by clap: clap counts a value from the
/// environment as given, so `secretfs --check-ready` and `secret-inject --install` (exclusive
/// flags) would be usage errors in any container whose environment sets `NEURO_URL`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// File holding the token (else NEURO_TOKEN); refused (exit 65) if others may read it or
    /// group or others may write it, or if its group may read it and is not the job's: keep
    /// it mode 0600 or 0400
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Total time for the first resolve, retries included, in seconds (0 to 3600, fractions
    /// allowed)
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// Where the service is: `--url` and `--ca-file`, shared by every binary that talks to it
/// (flattened into `ConnArgs`, and global options of `neuro`). `global` makes them usable
/// after a subcommand of `neuro`; it changes nothing for a binary without subcommands.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceArgs {
    /// Service URL (else NEURO_URL)
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// PEM CA certificate(s) to trust for an https URL (else NEURO_CA_FILE)
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

impl ServiceArgs {
    /// `--url` as given (an empty one is a bad URL, not a missing one), else a non-empty
    /// `NEURO_URL`.
    pub fn url(&self) -> Option<String> {
        self.url
            .clone()
            .or_else(|| std::env::var("NEURO_URL").ok().filter(|u| !u.is_empty()))
    }

    /// `--ca-file`, else a non-empty `NEURO_CA_FILE`.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca_file.clone().or_else(|| {
            std::env::var_os("NEURO_CA_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }
}

impl ConnArgs {
    /// `--url`, else a non-empty `NEURO_URL`; `None` is a usage error.
    pub fn url(&self) -> Option<String> {
        self.service.url()
    }

    /// The client configuration: the URL, this token, the CA file, and `request_timeout` for
    /// each request (the total `--timeout` is the caller's deadline).
    pub fn client_config(&self, token: Token, request_timeout: Duration) -> ClientConfig {
        let mut cfg = ClientConfig::new(self.url().unwrap_or_default(), Some(token));
        cfg.ca_file = self.service.ca_file();
        cfg.timeout = request_timeout;
        cfg
    }

    /// The token, from `--token-file` or else `NEURO_TOKEN`; see [`read_token`].
    pub fn token(&self, group: GroupMayRead) -> Result<Token, TokenError> {
        read_token(self.token_file.as_deref(), group)
    }
}

/// `--timeout`: finite, non-negative seconds up to [`MAX_TIMEOUT_SECS`], whole (`30`) or not
/// (`0.5`); a `Duration` cannot hold infinity, NaN or 1e300, and nobody means them.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if v.is_finite() && (0.0..=MAX_TIMEOUT_SECS).contains(&v) {
        // -0 becomes 0, which `Duration::from_secs_f64` takes.
        Ok(Duration::from_secs_f64(v + 0.0))
    } else {
        Err(format!(
            "'{s}' is out of range: give seconds from 0 to {MAX_TIMEOUT_SECS}"
        ))
    }
}

/// Whose group may read the token file (others never may, and group or others never may
/// write it): the one parameter in which the binaries differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupMayRead {
    /// The file's group is this one: secretfs's `--gid`, the job's group (the pod of
    /// `neuro job manifest --user` mounts the token root-owned, mode 0440, group `fsGroup`,
    /// for the job's own wrapper, which holds the same token anyway).
    Gid(u32),
    /// The file's group is how this process reads it: `uid` (the effective uid) is not the
    /// file's owner and the file's group is one of `gids` (the effective and supplementary
    /// groups), as in a Kubernetes `fsGroup` mount read by secret-inject.
    Member { uid: u32, gids: Vec<u32> },
}

impl GroupMayRead {
    fn allows(&self, file_uid: u32, file_gid: u32) -> bool {
        match self {
            GroupMayRead::Gid(g) => *g == file_gid,
            GroupMayRead::Member { uid, gids } => *uid != file_uid && gids.contains(&file_gid),
        }
    }
}

/// Why no token could be had. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no token: pass --token-file FILE or set NEURO_TOKEN")]
    Missing,
    #[error("the token is empty")]
    Empty,
    #[error("cannot read token file '{}': {detail}", path.display())]
    Unreadable { path: PathBuf, detail: String },
    #[error(
        "token file '{}' has mode {mode:04o}: group or others may access it; hint: chmod 600 '{}'",
        path.display(),
        path.display()
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("NEURO_TOKEN is not UTF-8")]
    EnvNotUtf8,
}

impl TokenError {
    /// No token at all, or an empty one, is 77 (not authenticated); a token file that cannot
    /// be used is 65 (invalid input).
    pub fn class(&self) -> ExitClass {
        match self {
            TokenError::Missing | TokenError::Empty => ExitClass::Forbidden,
            TokenError::Unreadable { .. } | TokenError::Mode { .. } | TokenError::EnvNotUtf8 => {
                ExitClass::Invalid
            }
        }
    }
}

/// The token from `file`, or else from `NEURO_TOKEN`, trimmed; every copy is zeroed on drop.
///
/// The file is checked and read through one descriptor, so the mode checked is that of the
/// file read. Symbolic links are followed (a Kubernetes Secret volume's keys are links into
/// `..data/`). Refused: a file others may read, group or others may write, or its group may
/// read unless `group` allows that group; anything over [`MAX_TOKEN_FILE`] bytes; a file that
/// is not UTF-8; anything but a regular file (opening a FIFO does not wait for a writer).
pub fn read_token(file: Option<&Path>, group: GroupMayRead) -> Result<Token, TokenError> {
    let raw = match file {
        Some(p) => read_token_file(p, &group)?,
        None => match std::env::var_os("NEURO_TOKEN") {
            Some(v) => {
                let v = Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(v));
                let s = std::str::from_utf8(&v).map_err(|_| TokenError::EnvNotUtf8)?;
                Zeroizing::new(s.to_owned())
            }
            None => return Err(TokenError::Missing),
        },
    };
    let t = raw.trim();
    if t.is_empty() {
        return Err(TokenError::Empty);
    }
    Ok(Token::new(t.to_owned()))
}

fn read_token_file(p: &Path, group: &GroupMayRead) -> Result<Zeroizing<String>, TokenError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let cannot = |detail: &dyn std::fmt::Display| TokenError::Unreadable {
        path: p.to_owned(),
        detail: detail.to_string(),
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| cannot(&e))?;
    let meta = f.metadata().map_err(|e| cannot(&e))?;
    let mode = meta.mode() & 0o7777;
    // Readable by others, or writable by group or others (who could swap the token).
    let open = mode & 0o026 != 0 || (mode & 0o040 != 0 && !group.allows(meta.uid(), meta.gid()));
    if open {
        return Err(TokenError::Mode {
            path: p.to_owned(),
            mode,
        });
    }
    if !meta.is_file() {
        return Err(cannot(&"not a regular file"));
    }
    // One buffer, never grown: no copy of the token is left behind by a reallocation.
    let mut buf = Zeroizing::new(vec![0u8; MAX_TOKEN_FILE + 1]);
    let mut len = 0;
    while len < buf.len() {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(cannot(&e)),
        }
    }
    if len > MAX_TOKEN_FILE {
        return Err(cannot(&format!("larger than {MAX_TOKEN_FILE} bytes")));
    }
    match std::str::from_utf8(&buf[..len]) {
        Ok(s) => Ok(Zeroizing::new(s.to_owned())),
        Err(_) => Err(cannot(&"not UTF-8")),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, exclusive = true)]
        probe: bool,
    }

    #[track_caller]
    fn check(args: &[&str], expected: Result<Duration, ()>) {
        let mut v = vec!["cmd", "--url", "http://127.0.0.1:1"];
        v.extend(args);
        match (Cmd::try_parse_from(&v), expected) {
            (Ok(c), Ok(d)) => assert_eq!(c.conn.timeout, d, "{args:?}"),
            (Err(e), Err(())) => {
                assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
                let s = e.to_string();
                assert!(s.contains("--timeout"), "{args:?}: {s}");
            }
            (got, want) => panic!("{args:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn timeout_forms() {
        let ms = Duration::from_millis;
        check(&[], Ok(ms(30_000)));
        check(&["--timeout", "30"], Ok(ms(30_000)));
        check(&["--timeout=0.5"], Ok(ms(500)));
        check(&["--timeout", "3"], Ok(ms(3_000)));
        check(&["--timeout=3600"], Ok(ms(3_600_000)));
        check(&["--timeout=0"], Ok(ms(0)));
        check(&["--timeout=-0"], Ok(ms(0)));
        check(&["--timeout= 2 "], Ok(ms(2_000)));
        for bad in [
            "--timeout=inf",
            "--timeout=NaN",
            "--timeout=1e300",
            "--timeout=-1",
            "--timeout=-0.001",
            "--timeout=3600.5",
            "--timeout=3601",
            "--timeout=soon",
            "--timeout=30s",
            "--timeout=",
        ] {
            check(&[bad], Err(()));
        }
    }

    #[test]
    fn an_empty_url_flag_is_a_bad_url_not_a_missing_one() {
        let c = Cmd::try_parse_from(["x", "--url", ""]).unwrap();
        assert_eq!(c.conn.url().as_deref(), Some(""));
    }

    #[test]
    fn the_connection_flags_and_an_exclusive_flag() {
        let c = Cmd::try_parse_from(["cmd", "--probe"]).unwrap();
        assert!(c.probe && c.conn.service.url.is_none());
        let e = Cmd::try_parse_from(["cmd", "--probe", "--url", "http://h:1"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let c = Cmd::try_parse_from([
            "cmd",
            "--url",
            "https://h:1",
            "--token-file",
            "/t",
            "--ca-file",
            "/ca",
        ])
        .unwrap();
        assert_eq!(c.conn.url().as_deref(), Some("https://h:1"));
        assert_eq!(c.conn.token_file.as_deref(), Some(Path::new("/t")));
        assert_eq!(c.conn.service.ca_file.as_deref(), Some(Path::new("/ca")));
    }

    /// The token file rule, with the file owned by this process's uid and gid.
    #[test]
    fn token_file_modes_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, " nst.a.b \n").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        let (uid, gid) = (meta.uid(), meta.gid());
        let other = gid.wrapping_add(1);
        #[track_caller]
        fn check(p: &Path, mode: u32, group: GroupMayRead, ok: bool) {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
            match read_token(Some(p), group.clone()) {
                Ok(t) => {
                    assert!(ok, "{mode:04o} {group:?}: accepted");
                    assert_eq!(t.expose(), "nst.a.b");
                }
                Err(e) => {
                    assert!(!ok, "{mode:04o} {group:?}: {e}");
                    assert_eq!(
                        e.to_string(),
                        format!(
                            "token file '{p}' has mode {mode:04o}: group or others may access \
                             it; hint: chmod 600 '{p}'",
                            p = p.display()
                        )
                    );
                    assert_eq!(e.class(), ExitClass::Invalid);
                }
            }
        }
        let job = GroupMayRead::Gid(gid);
        let not_job = GroupMayRead::Gid(other);
        let member = GroupMayRead::Member {
            uid: uid.wrapping_add(1),
            gids: vec![other, gid],
        };
        let owner = GroupMayRead::Member {
            uid,
            gids: vec![gid],
        };
        let outsider = GroupMayRead::Member {
            uid: uid.wrapping_add(1),
            gids: vec![other],
        };
        for g in [&job, &not_job, &member, &owner, &outsider] {
            for (mode, ok) in [
                (0o600, true),
                (0o400, true),
                (0o700, true),
                (0o601, true),
                (0o604, false),
                (0o602, false),
                (0o620, false),
                (0o644, false),
                (0o666, false),
                (0o444, false),
            ] {
                check(&p, mode, g.clone(), ok);
            }
        }
        for (g, ok) in [
            (&job, true),
            (&not_job, false),
            (&member, true),
            (&owner, false),
            (&outsider, false),
        ] {
            check(&p, 0o440, g.clone(), ok);
            check(&p, 0o640, g.clone(), ok);
            check(&p, 0o460, g.clone(), false);
        }
    }

    #[test]
    fn token_file_size_content_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let g = || GroupMayRead::Gid(u32::MAX);
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let at_cap = file("cap", &vec![b'a'; MAX_TOKEN_FILE]);
        assert_eq!(
            read_token(Some(&at_cap), g()).unwrap().expose().len(),
            MAX_TOKEN_FILE
        );
        let big = file("big", &vec![b'a'; MAX_TOKEN_FILE + 1]);
        let e = read_token(Some(&big), g()).unwrap_err();
        assert!(e.to_string().ends_with("larger than 65536 bytes"), "{e}");
        assert_eq!(e.class(), ExitClass::Invalid);
        let e = read_token(Some(&file("blank", b" \n\t")), g()).unwrap_err();
        assert!(matches!(e, TokenError::Empty), "{e}");
        assert_eq!(e.class(), ExitClass::Forbidden);
        let e = read_token(Some(&file("bin", b"\xff\xfe")), g()).unwrap_err();
        assert!(e.to_string().ends_with("not UTF-8"), "{e}");
        let missing = dir.path().join("missing");
        let e = read_token(Some(&missing), g()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read token file '{}': ", missing.display())),
            "{e}"
        );
        // A symbolic link is followed (Kubernetes Secret volumes), the mode is the target's.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(file("real", b"tok\n"), &link).unwrap();
        assert_eq!(read_token(Some(&link), g()).unwrap().expose(), "tok");
        // A FIFO with no writer is refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let st = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        let e = read_token(Some(&fifo), g()).unwrap_err();
        assert!(e.to_string().ends_with("not a regular file"), "{e}");
        // Nor is a directory read.
        let e = read_token(Some(dir.path()), GroupMayRead::Gid(0)).unwrap_err();
        assert!(
            matches!(e, TokenError::Mode { .. } | TokenError::Unreadable { .. }),
            "{e}"
        );
    }
}
