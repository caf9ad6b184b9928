//! secret-inject's hardening over the real binary and a real secretd: the job's signal mask
//! (init, exec and PID 1), the token kept from the job by the wrapper that stays beside it,
//! `--install` through a planted symbolic link, `--token-file` modes, `--timeout` bounds.
//! Tests named `_root` need root (uid switches with `setpriv`, `unshare --pid`) and fail,
//! never skip, without it.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::harness::tier::require_root;
use crate::harness::{Server, bin, contains};

const VALUE: &str = "hardening-secret-value";

/// A server with alice's secret `k` = [`VALUE`]; alice's token.
fn setup() -> (Server, String) {
    let srv = Server::start();
    let t = srv.add_users(&["alice"]).remove(0);
    srv.put(&t, "k", VALUE.as_bytes());
    (srv, t)
}

/// A process started in its own process group; the whole group is killed (and the leader
/// waited for) on drop, so nothing outlives a failing test. Jobs stay in the wrapper's group;
/// killing the group of `unshare --pid --fork` kills its PID 1, and so its namespace.
struct Group(Child);

impl Group {
    fn spawn(cmd: &mut Command) -> Self {
        Group(
            cmd.process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits up to `limit` for the leader to exit; its output, or None on timeout.
    fn wait_for(&mut self, limit: Duration) -> Option<Output> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let (mut out, mut err) = (Vec::new(), Vec::new());
                self.0.stdout.take().unwrap().read_to_end(&mut out).unwrap();
                self.0.stderr.take().unwrap().read_to_end(&mut err).unwrap();
                return Some(Output {
                    status,
                    stdout: out,
                    stderr: err,
                });
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// secret-inject with the token in NEURO_TOKEN, `K=secret:k`, `pre` before the wrapper (a
/// program that runs it: setpriv, unshare, python3), `args` after `--url`.
fn wrapper(srv: &Server, token: &str, pre: &[&str], args: &[&str]) -> Command {
    let inject = bin("secret-inject");
    let mut cmd = match pre.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(&inject);
            c
        }
        None => Command::new(&inject),
    };
    cmd.args(["--url", &srv.url, "--env", "K=secret:k"])
        .args(args)
        .env("NEURO_TOKEN", token);
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let mut g = Group::spawn(cmd);
    g.wait_for(Duration::from_secs(20))
        .expect("secret-inject did not finish within 20 s")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a python3 program that blocks SIGTERM and SIGINT, then execs its arguments: how a
/// caller with a blocked mask (a runtime, a supervisor) starts the wrapper. (It restores
/// SIGXFSZ, which Python itself ignores, so that only the mask differs.)
const BLOCKED_EXEC: [&str; 3] = [
    "python3",
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); \
     signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT}); \
     os.execv(sys.argv[1], sys.argv[1:])",
];

/// (SigBlk, SigIgn) of a /proc/PID/status text, without signals 32 and 33: the C library's
/// own (SIGCANCEL, SIGSETXID), which no program can use or observe.
fn sig_masks(status: &str) -> (u64, u64) {
    let get = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
            .unwrap_or_else(|| panic!("no {name} in {status:?}"))
    };
    let libc_own: u64 = (1 << 31) | (1 << 32);
    (get("SigBlk:") & !libc_own, get("SigIgn:") & !libc_own)
}

#[test]
#[cfg_attr(not(feature = "root"), ignore = "needs root: feature root")]
fn inject_root_the_job_starts_with_an_empty_signal_mask_in_every_mode() {
    require_root("uid switches with setpriv, unshare --pid");
    let (srv, t) = setup();
    // The job inherits what this test ignores (whoever ran it may ignore some signals), except
    // SIGPIPE, which the Rust runtime ignores and `Command` restores.
    let own = sig_masks(&std::fs::read_to_string("/proc/self/status").unwrap());
    let want = (0, own.1 & !(1 << (Signal::SIGPIPE as u32 - 1)));
    // (how the wrapper is started, its flags)
    let modes: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        ("--init", vec![], vec!["--init"]),
        ("exec", vec![], vec![]),
        ("exec under a blocked mask", BLOCKED_EXEC.to_vec(), vec![]),
        (
            "--init under a blocked mask",
            BLOCKED_EXEC.to_vec(),
            vec!["--init"],
        ),
        ("PID 1", vec!["unshare", "--pid", "--fork", "--"], vec![]),
    ];
    for (mode, pre, flags) in &modes {
        // A job that never touches its mask: grep itself, and dash's first command.
        for job in [
            &["grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"][..],
            &[
                "sh",
                "-c",
                "exec grep -E '^Sig(Blk|Ign):' /proc/self/status",
            ],
        ] {
            let mut args = flags.clone();
            args.push("--");
            args.extend(job);
            let o = run(&mut wrapper(&srv, &t, pre, &args));
            assert_eq!(
                (o.status.code(), sig_masks(&text(&o.stdout))),
                (Some(0), want),
                "{mode}: {job:?}: {}",
                text(&o.stderr)
            );
        }
        // A shell that signals itself dies of it: init exits 128 + 15; after an exec the
        // wrapper's own pid dies of SIGTERM.
        let mut args = flags.clone();
        args.extend(["--", "sh", "-c", "kill -TERM $$; echo survived"]);
        let o = run(&mut wrapper(&srv, &t, pre, &args));
        let died = match o.status.code() {
            Some(c) => c,
            None => 128 + o.status.signal().unwrap(),
        };
        assert_eq!(
            (died, text(&o.stdout)),
            (143, String::new()),
            "{mode}: sh -c 'kill -TERM $$': {}",
            text(&o.stderr)
        );
    }
}

/// The pids whose parent is `ppid` and whose command is `comm` (so: after their exec).
fn children_named(ppid: u32, comm: &str) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{ppid}/task/{ppid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

fn wait_child(ppid: u32, comm: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = children_named(ppid, comm).first() {
            return *p;
        }
        assert!(Instant::now() < deadline, "no '{comm}' under pid {ppid}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn inject_init_forwards_sigterm_to_a_sleep_job() {
    let (srv, t) = setup();
    let mut g = Group::spawn(&mut wrapper(
        &srv,
        &t,
        &[],
        &["--init", "--", "sleep", "30"],
    ));
    let sleep = wait_child(g.pid(), "sleep");
    let status = std::fs::read_to_string(format!("/proc/{sleep}/status")).unwrap();
    assert!(
        status.contains("SigBlk:\t0000000000000000\n"),
        "the sleep job's mask: {status}"
    );
    let t0 = Instant::now();
    kill(Pid::from_raw(g.pid() as i32), Signal::SIGTERM).unwrap();
    let o = g
        .wait_for(Duration::from_secs(5))
        .expect("the forwarded SIGTERM did not end the sleep job within 5 s");
    assert_eq!(o.status.code(), Some(143), "{}", text(&o.stderr));
    eprintln!("SIGTERM to exit through init: {:?}", t0.elapsed());
}

/// The token's secret part (`nst.ID.SECRET`), which must appear nowhere.
fn secret_part(token: &str) -> &str {
    token.rsplit('.').next().unwrap()
}

#[test]
#[cfg_attr(not(feature = "root"), ignore = "needs root: feature root")]
fn inject_root_init_wrapper_keeps_its_token_from_the_job() {
    require_root("uid switches with setpriv, unshare --pid");
    let (srv, t) = setup();
    // As root: the bytes are gone from the wrapper's environment block.
    let g = Group::spawn(&mut wrapper(
        &srv,
        &t,
        &[],
        &["--init", "--", "sleep", "30"],
    ));
    let job = wait_child(g.pid(), "sleep");
    let env = std::fs::read(format!("/proc/{}/environ", g.pid())).unwrap();
    assert!(contains(&env, b"NEURO_TOKEN="), "the test set NEURO_TOKEN");
    assert!(
        !contains(&env, secret_part(&t).as_bytes()),
        "the token is in init's /proc/PID/environ"
    );
    let job_env = std::fs::read(format!("/proc/{job}/environ")).unwrap();
    assert!(!contains(&job_env, b"NEURO_TOKEN"));
    assert!(contains(&job_env, format!("K={VALUE}").as_bytes()));
    drop(g);

    // As a non-root uid, the job cannot read its parent's environment or memory at all.
    let nobody = [
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--",
    ];
    let o = run(&mut wrapper(
        &srv,
        &t,
        &nobody,
        &[
            "--init",
            "--",
            "sh",
            "-c",
            "id -u; cat /proc/$PPID/environ; echo \"environ=$?\"; \
             if (: < /proc/$PPID/mem) 2>/dev/null; then echo mem-opened; fi; stat -c %u /proc/$PPID/environ",
        ],
    ));
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out} {}", text(&o.stderr));
    assert!(out.starts_with("65534\n"), "{out}");
    assert!(
        out.contains("environ=1\n"),
        "reading environ must fail: {out}"
    );
    assert!(!out.contains("mem-opened"), "opening mem must fail: {out}");
    assert!(out.ends_with("\n0\n"), "owned by root: {out}");
    assert!(!contains(&o.stdout, secret_part(&t).as_bytes()));
    assert!(!contains(&o.stderr, secret_part(&t).as_bytes()));
}

#[test]
fn install_through_a_planted_symlink_leaves_the_victim_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let install = |dst: &Path| {
        // As an init container whose environment may set NEURO_URL.
        let o = run(Command::new(bin("secret-inject"))
            .arg("--install")
            .arg(dst)
            .env("NEURO_URL", "http://127.0.0.1:1"));
        (o.status.code(), text(&o.stderr))
    };
    let unchanged = |p: &Path| {
        let now = std::fs::read(p).unwrap();
        assert!(now == b"precious", "{} was overwritten", p.display());
        assert_eq!(std::fs::metadata(p).unwrap().mode() & 0o7777, 0o644);
    };
    let installed = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        assert!(m.file_type().is_file(), "{} is a regular file", p.display());
        assert_eq!(m.mode() & 0o7777, 0o555);
        let o = Command::new(p).arg("--version").output().unwrap();
        assert!(text(&o.stdout).starts_with("secret-inject "), "{o:?}");
    };
    // A link at the temporary name the old code used (PATH.tmp).
    let dst = d.join("secret-inject");
    std::os::unix::fs::symlink(&victim, d.join("secret-inject.tmp")).unwrap();
    assert_eq!(install(&dst), (Some(0), String::new()));
    unchanged(&victim);
    installed(&dst);
    // Again, over the installed copy.
    assert_eq!(install(&dst), (Some(0), String::new()));
    installed(&dst);
    // PATH itself a link: replaced, its target untouched.
    let dst2 = d.join("second");
    std::os::unix::fs::symlink(&victim, &dst2).unwrap();
    assert_eq!(install(&dst2), (Some(0), String::new()));
    unchanged(&victim);
    installed(&dst2);
    // A directory that does not exist: an error naming the path, nothing left behind.
    let (code, err) = install(&d.join("missing/secret-inject"));
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot install to '") && err.contains("missing/secret-inject"));
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["second", "secret-inject", "secret-inject.tmp", "victim"],
        "no temporary file left behind"
    );
}

/// Runs secret-inject with `--token-file` (no NEURO_TOKEN), as `pre` (empty: this uid).
fn with_token_file(srv: &Server, file: &Path, pre: &[&str]) -> Output {
    let mut cmd = wrapper(srv, "", pre, &["--token-file"]);
    cmd.arg(file)
        .args(["--", "sh", "-c", "printf %s \"$K\""])
        .env_remove("NEURO_TOKEN");
    run(&mut cmd)
}

#[test]
#[cfg_attr(not(feature = "root"), ignore = "needs root: feature root")]
fn inject_root_token_file_readable_by_others_is_refused() {
    require_root("uid switches with setpriv, unshare --pid");
    let (srv, t) = setup();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{t}\n")).unwrap();
    let chown = |uid: u32, gid: u32| std::os::unix::fs::chown(&file, Some(uid), Some(gid)).unwrap();
    let nobody_in = |gid: &'static str| -> Vec<&'static str> {
        vec![
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            gid,
            "--clear-groups",
            "--",
        ]
    };
    #[track_caller]
    fn check(srv: &Server, file: &Path, mode: u32, pre: &[&str], refused: bool) {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
        let o = with_token_file(srv, file, pre);
        let err = text(&o.stderr);
        if refused {
            assert_eq!(o.status.code(), Some(65), "{mode:04o} {pre:?}: {err}");
            let want = format!(
                "secret-inject: ERROR: invalid (token file '{f}' has mode {mode:04o}: group or others may access it; hint: chmod 600 '{f}')\n",
                f = file.display()
            );
            assert_eq!(err, want, "{mode:04o} {pre:?}");
            assert!(o.stdout.is_empty());
        } else {
            assert_eq!(
                (o.status.code(), text(&o.stdout)),
                (Some(0), VALUE.to_owned()),
                "{mode:04o} {pre:?}: {err}"
            );
        }
    }
    // The owner reads its own file.
    chown(0, 0);
    for (mode, refused) in [
        (0o600, false),
        (0o400, false),
        (0o644, true),
        (0o640, true),
        (0o604, true),
        (0o440, true),
        (0o666, true),
        (0o620, true),
        (0o602, true),
    ] {
        check(&srv, &file, mode, &[], refused);
    }
    // Kubernetes' fsGroup layout: root-owned, 0440, the job's uid reads through its group.
    chown(0, 2000);
    check(&srv, &file, 0o440, &nobody_in("2000"), false);
    check(&srv, &file, 0o444, &nobody_in("2000"), true);
    // ... but a group that is not the reader's own is not an audience.
    check(&srv, &file, 0o440, &[], true);
    // A file that is too big is refused without reading it whole.
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'a'; 1 << 20]).unwrap();
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = with_token_file(&srv, &big, &[]);
    assert_eq!(o.status.code(), Some(65));
    assert!(
        text(&o.stderr).contains("larger than 65536 bytes"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn inject_timeout_must_be_finite_seconds() {
    let (srv, t) = setup();
    for bad in [
        "--timeout=inf",
        "--timeout=NaN",
        "--timeout=1e300",
        "--timeout=-1",
        "--timeout=3601",
        "--timeout=soon",
    ] {
        let o = run(&mut wrapper(&srv, &t, &[], &[bad, "--", "true"]));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("invalid value") && err.contains("--timeout"),
            "{bad}: {err}"
        );
        assert!(!err.contains("panicked"), "{bad}: {err}");
    }
    for good in ["0.5", "3600", "-0"] {
        let o = run(&mut wrapper(
            &srv,
            &t,
            &[],
            &[
                &format!("--timeout={good}"),
                "--",
                "sh",
                "-c",
                "printf %s \"$K\"",
            ],
        ));
        if good == "-0" {
            // Zero seconds: one attempt at most; under load it may even finish in time. Either
            // way a plain answer, never a panic.
            assert!(
                matches!(o.status.code(), Some(0 | 69)),
                "{good}: {:?} {}",
                o.status,
                text(&o.stderr)
            );
        } else {
            assert_eq!(
                (o.status.code(), text(&o.stdout)),
                (Some(0), VALUE.to_owned()),
                "{good}: {}",
                text(&o.stderr)
            );
        }
    }
}
