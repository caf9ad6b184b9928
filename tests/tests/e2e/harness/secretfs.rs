//! secretfs as the FUSE tier's tests run it: in a private mount namespace (`unshare -m`) or in
//! another process's, looked into with `nsenter`, killed and waited for on drop.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::tier::require_fuse;
use super::{Server, bin};

/// Root and /dev/fuse checked; a secretd where alice (token `t[0]`) owns `k` = `value`; an
/// empty work directory.
pub fn fuse_alice_owning_k() -> (Server, Vec<String>, tempfile::TempDir) {
    require_fuse();
    let (srv, t) = Server::start_with_users(&["alice"]);
    srv.put(&t[0], "k", b"value");
    (srv, t, tempfile::tempdir().unwrap())
}

/// secretfs mounts in a mountinfo file (fstype `fuse` or `fuse.*`, source `secretfs`).
pub fn secretfs_mounts(mountinfo: &str) -> usize {
    std::fs::read_to_string(mountinfo)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(" - "))
        .filter(|(_, r)| {
            let mut it = r.split(' ');
            it.next().is_some_and(|t| t.starts_with("fuse")) && it.next() == Some("secretfs")
        })
        .count()
}

pub fn host_secretfs_mounts() -> usize {
    secretfs_mounts("/proc/self/mountinfo")
}

/// A running secretfs.
pub struct SecretFs {
    child: Option<Child>,
    pub pid: u32,
    pub root: PathBuf,
    pub ready: PathBuf,
    pub audit: PathBuf,
    stderr: PathBuf,
}

/// How to enter the mount namespace secretfs runs in.
pub enum Ns {
    /// A new private namespace of its own (`unshare -m`).
    Own,
    /// The namespace of a process that outlives secretfs.
    Of(u32),
}

impl SecretFs {
    pub fn start(
        srv: &Server,
        work: &Path,
        token: &str,
        ns: Ns,
        args: &[&str],
    ) -> Result<Self, (i32, String)> {
        Self::start_token_mode(srv, work, token, 0o600, ns, args)
    }

    /// `start`, with the token file at `WORK/token` given `mode`.
    pub fn start_token_mode(
        srv: &Server,
        work: &Path,
        token: &str,
        mode: u32,
        ns: Ns,
        args: &[&str],
    ) -> Result<Self, (i32, String)> {
        let tok = work.join("token");
        std::fs::write(&tok, token).unwrap();
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(mode)).unwrap();
        let (root, ready) = (work.join("root"), work.join("ready"));
        let (audit, stderr) = (work.join("audit.log"), work.join("secretfs.stderr"));
        let mut cmd = match ns {
            Ns::Own => {
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "--"]);
                c
            }
            Ns::Of(pid) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &pid.to_string(), "-m", "--"]);
                c
            }
        };
        cmd.arg(bin("secretfs"))
            .args(["--url", &srv.url, "--token-file", tok.to_str().unwrap()])
            .args([
                "--mount-root",
                root.to_str().unwrap(),
                "--ready-file",
                ready.to_str().unwrap(),
            ])
            .args(["--audit-log", audit.to_str().unwrap(), "--timeout", "3"])
            .args(args)
            .env_remove("NEURO_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut child = cmd.spawn().expect("start secretfs");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if ready.exists() {
                break;
            }
            if let Some(st) = child.try_wait().unwrap() {
                return Err((
                    st.code().unwrap_or(-1),
                    std::fs::read_to_string(&stderr).unwrap(),
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "secretfs not ready after 20 s: {}",
                    std::fs::read_to_string(&stderr).unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            root,
            ready,
            audit,
            stderr,
        })
    }

    /// Runs a command in secretfs's mount namespace, as `uid:gid` when given.
    pub fn exec(&self, user: Option<(u32, u32)>, args: &[&str]) -> Output {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid.to_string(), "-m"]);
        if let Some((u, g)) = user {
            c.args(["-S", &u.to_string(), "-G", &g.to_string()]);
        }
        c.arg("--").args(args).output().expect("nsenter")
    }

    pub fn cat(&self, path: &Path) -> Result<Vec<u8>, String> {
        let o = self.exec(None, &["cat", path.to_str().unwrap()]);
        if o.status.success() {
            Ok(o.stdout)
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    pub fn probe(&self, user: Option<(u32, u32)>, args: &[&str]) -> String {
        let p = bin("fsprobe");
        let mut all = vec![p.to_str().unwrap()];
        all.extend_from_slice(args);
        let o = self.exec(user, &all);
        assert!(
            o.status.success(),
            "fsprobe {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    }

    pub fn status(&self) -> serde_json::Value {
        let raw = self.cat(&self.root.join(".status")).expect("read .status");
        serde_json::from_slice(&raw).unwrap()
    }

    pub fn term(&mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap()
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for SecretFs {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
