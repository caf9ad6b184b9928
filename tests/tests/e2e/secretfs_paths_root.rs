//! secretfs and the paths it touches: symlinks in a mapped path, kernel filesystems, planted
//! temporary names, a stale ready file, a token file others may read. Needs root and
//! /dev/fuse (fails, never skips, without them); every secretfs runs in a private mount
//! namespace, so nothing is mounted on the host even when a test fails.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::secretfs::{Ns, SecretFs, fuse_alice_owning_k, host_secretfs_mounts};
use crate::harness::{Server, bin};

/// A process killed and reaped on drop, also when the test fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let names = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name());
    let mut v: Vec<String> = names.map(|n| n.to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// `path`, written with `bytes`.
fn written(path: PathBuf, bytes: &[u8]) -> PathBuf {
    std::fs::write(&path, bytes).unwrap();
    path
}

/// secretfs must refuse `path` (exit 65, naming it and `names`), having created nothing.
#[track_caller]
fn check_refused(
    srv: &Server,
    w: &Path,
    token: &str,
    ns: Ns,
    extra: &[&str],
    path: &Path,
    names: &str,
) {
    let v = format!("secret:k:{}", path.display());
    let mut args = vec!["--volume", v.as_str()];
    args.extend_from_slice(extra);
    match SecretFs::start(srv, w, token, ns, &args) {
        Ok(mut fs) => {
            let e = fs.stderr();
            fs.term();
            panic!("{path:?} {extra:?}: secretfs started: {e}");
        }
        Err((code, stderr)) => {
            assert_eq!(code, 65, "{path:?} {extra:?}: {stderr}");
            assert!(
                stderr.contains(&format!("'{}'", path.display())) && stderr.contains(names),
                "{path:?} {extra:?}: wants {names:?}: {stderr}"
            );
        }
    }
    assert!(!w.join("ready").exists(), "{path:?}: not ready");
    assert_eq!(host_secretfs_mounts(), 0);
}

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn symlinks_in_any_component_and_kernel_paths_are_refused() {
    let (srv, t, work) = fuse_alice_owning_k();
    let w = work.path();
    // a/link -> victim, a/flink -> victim/important.conf
    let (victim, a) = (w.join("victim"), w.join("a"));
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("important.conf"), b"original").unwrap();
    std::fs::create_dir(&a).unwrap();
    std::os::unix::fs::symlink(&victim, a.join("link")).unwrap();
    std::os::unix::fs::symlink(victim.join("important.conf"), a.join("flink")).unwrap();
    let link = a.join("link");
    let link_named = format!("'{}' is a symbolic link", link.display());
    for (path, extra) in [
        (link.join("important.conf"), &[][..]),
        (link.join("important.conf"), &["--private"][..]),
        (link.join("new/deeper/x.conf"), &[][..]),
        (link.join("new/x.conf"), &["--private"][..]),
    ] {
        check_refused(&srv, w, &t[0], Ns::Own, extra, &path, &link_named);
    }
    let flink = a.join("flink");
    check_refused(
        &srv,
        w,
        &t[0],
        Ns::Own,
        &[],
        &flink,
        &format!("'{}' is a symbolic link", flink.display()),
    );
    // The targets are untouched: nothing created in them, nothing mounted over them (a mount
    // would have let secretfs start).
    assert_eq!(listing(&victim), ["important.conf"]);
    assert_eq!(
        std::fs::read(victim.join("important.conf")).unwrap(),
        b"original"
    );
    assert_eq!(listing(&a), ["flink", "link"]);

    // Kernel interfaces, by path (paths chosen so that no run creates anything on the host).
    for (p, under) in [
        ("/proc/sys/kernel/hostname", "under /proc"),
        ("/proc/secretfs-test.conf", "under /proc"),
        ("/sys/kernel/secretfs-test/x", "under /sys"),
        ("/dev/null", "under /dev"),
        ("/dev/shm", "under /dev"),
    ] {
        check_refused(&srv, w, &t[0], Ns::Own, &[], Path::new(p), under);
    }
    // ... and by the filesystem reached: a proc mounted elsewhere.
    let p = w.join("p");
    std::fs::create_dir(&p).unwrap();
    let mut holder = Reaped(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount -t proc proc "$1" && echo mounted && exec sleep 600"#)
            .arg("sh")
            .arg(&p)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(holder.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "mounted");
    check_refused(
        &srv,
        w,
        &t[0],
        Ns::Of(holder.0.id()),
        &[],
        &p.join("sys/kernel/hostname"),
        &format!("on a proc filesystem (at '{}')", p.display()),
    );
    drop(holder);

    // '..' is refused before anything is touched.
    let dots = a.join("../victim/important.conf");
    let v = format!("secret:k:{}", dots.display());
    let Err((code, e)) = SecretFs::start(&srv, w, &t[0], Ns::Own, &["--volume", &v]) else {
        panic!("'..' accepted");
    };
    assert_eq!(code, 65, "{e}");
    assert!(e.contains("normalized"), "{e}");
}

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn planted_temporary_names_write_nothing_through_their_symlinks() {
    let (srv, t, work) = fuse_alice_owning_k();
    let w = work.path();
    let victim = written(w.join("victim"), b"original");
    // READY_FILE.tmp and MOUNT_ROOT.created.tmp, the names secretfs wrote through before.
    for n in ["ready.tmp", "root.created.tmp"] {
        std::os::unix::fs::symlink(&victim, w.join(n)).unwrap();
    }
    // A missing directory, so the record of created placeholders is written too.
    let path = w.join("new/k.txt");
    let v = format!("secret:k:{}", path.display());
    let mut fs = SecretFs::start(&srv, w, &t[0], Ns::Own, &["--volume", &v])
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(fs.cat(&path).unwrap(), b"value");
    assert_eq!(std::fs::read(&victim).unwrap(), b"original");
    assert!(fs.term().success(), "{}", fs.stderr());
    assert_eq!(std::fs::read(&victim).unwrap(), b"original");
    assert!(!w.join("new").exists());
    for n in ["ready.tmp", "root.created.tmp"] {
        assert!(std::fs::symlink_metadata(w.join(n)).unwrap().is_symlink());
    }
    // No temporary file of secretfs's own is left.
    assert_eq!(
        listing(w),
        [
            "audit.log",
            "ready.tmp",
            "root",
            "root.created.tmp",
            "secretfs.stderr",
            "token",
            "victim"
        ]
    );
}

fn check_ready(ready: &Path) -> (bool, String) {
    // As the startup probe runs in a container whose environment may set NEURO_URL.
    let o = Command::new(bin("secretfs"))
        .arg("--check-ready")
        .arg(ready)
        .env("NEURO_URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn a_stale_ready_file_is_not_ready_until_the_new_mount_is_up() {
    let (srv, t, work) = fuse_alice_owning_k();
    let w = work.path();
    let ready = written(w.join("ready"), b"ready\n");
    assert!(check_ready(&ready).0);
    // A service that refuses connections: secretfs retries, never mounts.
    let v = format!("secret:k:{}", w.join("k.txt").display());
    let url = refusing_url();
    let mut down = spawn_secretfs(w, "down", &url, &t[0], &["--timeout", "3", "--volume", &v]);
    let stderr = w.join("down.stderr");
    wait_until_retrying(&mut down, &stderr);
    let (ok, e) = check_ready(&ready);
    assert!(!ok, "a secretfs that has mounted nothing is reported ready");
    assert!(e.contains("not ready"), "{e}");
    let (st, log) = wait_with_log(&mut down, &stderr);
    assert_eq!(st.code(), Some(69), "{log}");
    assert!(!check_ready(&ready).0);

    // The next start against the real service: ready once mounted.
    let mut fs = SecretFs::start(&srv, w, &t[0], Ns::Own, &["--volume", &v])
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(check_ready(&ready).0);
    assert_eq!(fs.cat(&w.join("k.txt")).unwrap(), b"value");
    assert!(fs.term().success(), "{}", fs.stderr());
    assert!(!check_ready(&ready).0);
}

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn a_token_file_open_to_group_or_others_is_refused() {
    let (srv, t, work) = fuse_alice_owning_k();
    let w = work.path();
    let path = w.join("k.txt");
    let v = format!("secret:k:{}", path.display());
    let tok = w.join("token");
    // The file's group (root's) is not the job's (--gid 3000).
    let not_the_job_group = ["--volume", v.as_str(), "--gid", "3000"];
    for mode in [0o644, 0o640, 0o604, 0o620, 0o660] {
        let Err((code, e)) =
            SecretFs::start_token_mode(&srv, w, &t[0], mode, Ns::Own, &not_the_job_group)
        else {
            panic!("mode {mode:o}: started");
        };
        assert_eq!(code, 65, "{mode:o}: {e}");
        let want = format!(
            "token file '{}' has mode {mode:04o}: group or others may access it",
            tok.display()
        );
        assert!(e.contains(&want), "{mode:o}: {e}");
        assert!(e.contains(&format!("chmod 600 '{}'", tok.display())), "{e}");
        assert!(!e.contains(&t[0]), "no token in the message");
        assert!(!path.exists(), "nothing created");
    }
    for mode in [0o600, 0o400] {
        let mut fs = SecretFs::start_token_mode(&srv, w, &t[0], mode, Ns::Own, &["--volume", &v])
            .unwrap_or_else(|e| panic!("mode {mode:o}: {e:?}"));
        assert_eq!(fs.cat(&path).unwrap(), b"value");
        let st = fs.term();
        assert!(st.success(), "mode {mode:o}: {st:?}: {}", fs.stderr());
    }
    // The pod of `neuro job manifest --user`: root-owned, 0440, its group the job's (fsGroup,
    // also --gid). That group holds the token anyway; any other group is refused.
    std::fs::write(&tok, "").unwrap();
    std::os::unix::fs::chown(&tok, Some(0), Some(2000)).unwrap();
    let job = ["--volume", v.as_str(), "--gid", "2000"];
    let mut fs = SecretFs::start_token_mode(&srv, w, &t[0], 0o440, Ns::Own, &job)
        .unwrap_or_else(|e| panic!("fsGroup layout: {e:?}"));
    assert_eq!(fs.cat(&path).unwrap(), b"value");
    assert!(fs.term().success(), "{}", fs.stderr());
    // The same with `--user UID:0`: the job's group, and fsGroup, is root's.
    std::os::unix::fs::chown(&tok, Some(0), Some(0)).unwrap();
    let job = ["--volume", v.as_str(), "--uid", "1000", "--gid", "0"];
    let mut fs = SecretFs::start_token_mode(&srv, w, &t[0], 0o440, Ns::Own, &job)
        .unwrap_or_else(|e| panic!("fsGroup 0 layout: {e:?}"));
    assert!(fs.term().success(), "{}", fs.stderr());
    std::fs::write(&tok, "").unwrap();
    std::os::unix::fs::chown(&tok, Some(0), Some(2000)).unwrap();
    // A token file is small: a huge one is refused without being read whole.
    let huge = "a".repeat(100 * 1024);
    let args = ["--volume", v.as_str()];
    let Err((code, e)) = SecretFs::start_token_mode(&srv, w, &huge, 0o600, Ns::Own, &args) else {
        panic!("started with a 100 KiB token file");
    };
    assert_eq!(code, 65, "{e}");
    assert!(e.contains("larger than 65536 bytes"), "{e}");
    for (mode, gid) in [
        (0o440, "3000"),
        (0o440, "0"),
        (0o444, "2000"),
        (0o460, "2000"),
    ] {
        // (the file's group is 2000 here)
        let args = ["--volume", v.as_str(), "--gid", gid];
        let Err((code, e)) = SecretFs::start_token_mode(&srv, w, &t[0], mode, Ns::Own, &args)
        else {
            panic!("mode {mode:o} with --gid {gid}: started");
        };
        assert_eq!(code, 65, "{mode:o} --gid {gid}: {e}");
    }
}

/// Starts secretfs in a namespace of its own, stderr to `WORK/NAME.stderr`.
fn spawn_secretfs(w: &Path, name: &str, url: &str, token: &str, args: &[&str]) -> Reaped {
    spawn_secretfs_at(w, &w.join("root"), name, url, token, args)
}

/// `spawn_secretfs` with the mount root at `root`.
fn spawn_secretfs_at(
    w: &Path,
    root: &Path,
    name: &str,
    url: &str,
    token: &str,
    args: &[&str],
) -> Reaped {
    let tok = w.join("token");
    std::fs::write(&tok, token).unwrap();
    std::fs::set_permissions(&tok, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    Reaped(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "--"])
            .arg(bin("secretfs"))
            .args(["--url", url])
            .arg("--token-file")
            .arg(&tok)
            .arg("--mount-root")
            .arg(root)
            .arg("--ready-file")
            .arg(w.join("ready"))
            .args(args)
            .env_remove("NEURO_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(w.join(format!("{name}.stderr"))).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// A loopback URL where nothing listens (a port just bound and released): connections are
/// refused.
fn refusing_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

/// Waits up to 10 s, while `fs` runs, for its stderr at `log` to say it is retrying.
#[track_caller]
fn wait_until_retrying(fs: &mut Reaped, log: &Path) {
    let t0 = Instant::now();
    while !std::fs::read_to_string(log).unwrap().contains("retrying") {
        assert!(
            fs.0.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(10),
            "secretfs did not retry: {}",
            std::fs::read_to_string(log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `fs` to exit: its status and what it wrote to `log`.
fn wait_with_log(fs: &mut Reaped, log: &Path) -> (std::process::ExitStatus, String) {
    let st = fs.0.wait().unwrap();
    (st, std::fs::read_to_string(log).unwrap())
}

fn sigterm(c: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn sigterm_while_starting_or_right_after_ready_is_a_clean_stop() {
    let (srv, t, work) = fuse_alice_owning_k();
    let w = work.path();
    let v = format!("secret:k:{}", w.join("new/k.txt").display());
    // While it retries an unreachable service.
    let url = refusing_url();
    let mut fs = spawn_secretfs(w, "down", &url, &t[0], &["--timeout", "20", "--volume", &v]);
    let log = w.join("down.stderr");
    wait_until_retrying(&mut fs, &log);
    sigterm(&fs.0);
    let (st, text) = wait_with_log(&mut fs, &log);
    assert_eq!(st.code(), Some(0), "{st:?}: {text}");
    // The moment the ready file appears, a few times over.
    for i in 0..5 {
        let name = format!("up{i}");
        let mut fs = spawn_secretfs(w, &name, &srv.url, &t[0], &["--volume", &v]);
        let t0 = Instant::now();
        while !w.join("ready").exists() {
            assert!(
                fs.0.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(20),
                "not ready"
            );
        }
        sigterm(&fs.0);
        let (st, log) = wait_with_log(&mut fs, &w.join(format!("{name}.stderr")));
        assert_eq!(st.code(), Some(0), "run {i}: {st:?}: {log}");
        assert!(!w.join("ready").exists(), "run {i}");
        assert!(!w.join("new").exists(), "run {i}: placeholders removed");
    }
    assert_eq!(host_secretfs_mounts(), 0);
}

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn private_nested_paths_beside_an_existing_file_still_work() {
    let (srv, t, work) = fuse_alice_owning_k();
    srv.put(&t[0], "j", b"other");
    let w = work.path();
    let d = w.join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("exists.txt"), b"underneath").unwrap();
    // The first path exists; the second makes secretfs overlay d, after the first was seen.
    let (first, second) = (d.join("exists.txt"), d.join("new/deeper/x.txt"));
    let (v1, v2) = (
        format!("secret:k:{}", first.display()),
        format!("secret:j:{}", second.display()),
    );
    let mut fs = SecretFs::start(
        &srv,
        w,
        &t[0],
        Ns::Own,
        &["--private", "--volume", &v1, "--volume", &v2],
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(fs.cat(&first).unwrap(), b"value");
    assert_eq!(fs.cat(&second).unwrap(), b"other");
    assert!(!d.join("new").exists(), "nothing created on the host");
    assert!(fs.term().success(), "{}", fs.stderr());
    assert_eq!(std::fs::read(&first).unwrap(), b"underneath");
    assert_eq!(listing(&d), ["exists.txt"]);
}

/// The names beside the mount root append to its name: with `--mount-root WORK/m.d` the
/// placeholder record is `WORK/m.d.created` (`with_extension` made it `WORK/m.created`, a
/// name another secretfs at `WORK/m.e` would share, each removing the other's placeholders).
#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn names_beside_a_mount_root_with_a_dot_keep_its_whole_name() {
    let (srv, t, work) = fuse_alice_owning_k();
    let w = work.path();
    let v = format!("secret:k:{}", w.join("new/k.txt").display());
    let (root, url) = (w.join("m.d"), &srv.url);
    let child = spawn_secretfs_at(w, &root, "m.d", url, &t[0], &["--volume", &v]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w.join("ready").exists() {
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            std::fs::read_to_string(w.join("m.d.stderr")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let names = listing(w);
    assert!(names.contains(&"m.d.created".to_owned()), "{names:?}");
    assert!(!names.contains(&"m.created".to_owned()), "{names:?}");
    let mut child = child;
    sigterm(&child.0);
    assert!(child.0.wait().unwrap().success());
    assert!(
        !w.join("m.d.created").exists(),
        "the record goes at shutdown"
    );
    assert!(!w.join("new").exists());
}
