//! Exact placement: each secret file of the FUSE mount root is bind-mounted, read-only, onto
//! the path the job asked for. Also: clearing mounts a killed secretfs left behind.
//!
//! Every mapped path is reached with the no-symlink walk of `paths`, and every mount onto it
//! names the descriptor that walk returned (`/proc/self/fd/N`), never the path again, so a
//! component swapped for a symlink between the check and the mount redirects nothing.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, fstat, stat};

use crate::paths::{self, Dir, FileAt, Missing, PathError};

/// The source name secretfs mounts show in `/proc/self/mountinfo` (fstype `fuse` or
/// `fuse.secretfs`, depending on how the kernel was asked).
pub const SOURCE: &str = "secretfs";

/// Mount points in this namespace that are secretfs mounts, from `/proc/self/mountinfo`.
pub fn secretfs_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let (fstype, source) = (r.next()?, r.next()?);
            (fstype.starts_with("fuse") && source == SOURCE).then(|| PathBuf::from(unescape(point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            let oct: String = it.by_ref().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&oct, 8) {
                out.push(n as char);
                continue;
            }
            out.push('\\');
            out.push_str(&oct);
        } else {
            out.push(c);
        }
    }
    out
}

/// Detaches every secretfs mount at `path` (a killed secretfs leaves its mounts answering
/// ENOTCONN). Returns how many it removed.
/// The path is reached without following a symlink: through a symlink it is left alone.
pub fn clear_stale(path: &Path) -> usize {
    let mut n = 0;
    while secretfs_mounts().iter().any(|p| p == path) && n < 64 {
        let Ok((dir, name)) = paths::parent(path, Missing::Fail) else {
            break;
        };
        // The last component is not followed (UMOUNT_NOFOLLOW); the magic link before it is
        // the directory just walked.
        let target = dir.proc_path().join(name);
        if umount2(&target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// Makes sure a regular file exists at `path` to mount over, reached and created without
/// following a symlink; records what it had to create (parents first) in `created`, also
/// when it fails halfway, so that shutdown removes exactly that.
pub fn prepare_target(path: &Path, created: &mut Vec<PathBuf>) -> Result<FileAt, PathError> {
    paths::open_file(path, Some(created))
}

/// For a private mount namespace: makes `path` mountable without creating anything on the
/// underlying filesystem. When the file (or a parent) is missing, the nearest existing
/// directory gets a tmpfs-backed overlay (once; `overlaid` remembers), and the missing parts
/// are created in it, visible only in this namespace.
pub fn prepare_target_private(
    path: &Path,
    scratch: &Path,
    overlaid: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    if paths::open_existing(path)?.is_some() {
        return Ok(());
    }
    let Some(parent) = path.parent() else {
        anyhow::bail!("'{}' has no directory", path.display());
    };
    let base = paths::walk(parent, Missing::Stop)?;
    if !overlaid.contains(&base.path) {
        overlay(&base, &scratch.join(overlaid.len().to_string()))?;
        overlaid.push(base.path.clone());
    }
    // Walked again from '/', so it goes through the overlay just mounted; what it creates
    // lives on the overlay's tmpfs and goes with the namespace.
    paths::open_file(path, Some(&mut Vec::new()))?;
    Ok(())
}

/// Mounts an overlay on `dir` whose upper layer is a fresh tmpfs at `scratch`.
/// Both the mount point and the lower layer are `dir`'s descriptor, not its path.
fn overlay(base: &Dir, scratch: &Path) -> anyhow::Result<()> {
    let dir = base.path.as_path();
    let d = dir.display();
    anyhow::ensure!(
        dir != Path::new("/"),
        "'/' would need an overlay to create the missing path; create its first directory in the image"
    );
    // The overlay would hide the mounts below `dir` (a container engine's, say): park each on
    // the scratch tmpfs, held by an O_PATH descriptor, and move it back on top of the overlay.
    let subs = top_submounts(dir);
    std::fs::create_dir_all(scratch)?;
    mount(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700"),
    )
    .with_context(|| format!("mounting scratch tmpfs at '{}'", scratch.display()))?;
    let (upper, work, keep) = (
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("keep"),
    );
    std::fs::create_dir(&upper)?;
    std::fs::create_dir(&work)?;
    std::fs::create_dir(&keep)?;
    let mut parked = Vec::new();
    for (i, sub) in subs.iter().enumerate() {
        let k = keep.join(i.to_string());
        if sub.is_dir() {
            std::fs::create_dir(&k)?;
        } else {
            std::fs::File::create(&k)?;
        }
        mount(Some(sub), &k, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .with_context(|| format!("moving the mount '{}' aside", sub.display()))?;
        let fd = nix::fcntl::open(&k, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
        parked.push((fd, sub));
    }
    let at = base.proc_path();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        at.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &at,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .with_context(|| format!("mounting an overlay on '{d}'"))?;
    for (fd, sub) in parked {
        let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(
            Some(src.as_str()),
            sub,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .with_context(|| format!("moving the mount '{}' back", sub.display()))?;
    }
    Ok(())
}

/// Mount points strictly below `dir`, outermost only: moving one carries those below it.
fn top_submounts(dir: &Path) -> Vec<PathBuf> {
    let mut subs: Vec<PathBuf> = all_mounts()
        .into_iter()
        .filter(|m| m.starts_with(dir) && m != dir)
        .collect();
    subs.sort();
    subs.dedup();
    let mut top: Vec<PathBuf> = Vec::new();
    for s in subs {
        if !top.iter().any(|t| s.starts_with(t)) {
            top.push(s);
        }
    }
    top
}

/// Every mount point in this namespace.
fn all_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(|p| PathBuf::from(unescape(p))))
        .collect()
}

/// A bind mount secretfs made: the path it serves, and its root, held open.
#[derive(Debug)]
pub struct Bound {
    pub path: PathBuf,
    root: OwnedFd,
}

/// Bind-mounts `src` onto the file `dst` holds open, then makes that mount read-only, nosuid,
/// nodev, noexec. Both mounts name descriptors: `dst`'s, then the new mount's root, reached
/// from `dst`'s directory and checked to be `src`'s file.
pub fn bind_ro(src: &Path, dst: &FileAt) -> anyhow::Result<Bound> {
    let path = dst.path();
    mount(
        Some(src),
        &paths::fd_path(&dst.fd),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting onto '{}'", path.display()))?;
    let root = nix::fcntl::openat(
        &dst.dir.fd,
        dst.name.as_os_str(),
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening the mount at '{}'", path.display()))?;
    let bound = Bound { path, root };
    let same = match (stat(src), fstat(&bound.root)) {
        (Ok(w), Ok(g)) => (w.st_dev, w.st_ino) == (g.st_dev, g.st_ino),
        _ => false,
    };
    if !same {
        detach(&bound);
        anyhow::bail!("'{}' is not the mount just made", bound.path.display());
    }
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    if let Err(e) = mount(
        None::<&str>,
        &paths::fd_path(&bound.root),
        None::<&str>,
        flags,
        None::<&str>,
    ) {
        detach(&bound);
        return Err(e).with_context(|| format!("making '{}' read-only", bound.path.display()));
    }
    Ok(bound)
}

/// Detaches the bind mount through its root's descriptor, never by path.
pub fn detach(b: &Bound) {
    let _ = umount2(&paths::fd_path(&b.root), MntFlags::MNT_DETACH);
}

/// Removes what `prepare_target` created, newest first: files only when still empty,
/// directories only when empty, so nothing anyone wrote since is lost; each reached without
/// following a symlink, so a path swapped for one removes nothing elsewhere.
pub fn remove_created(created: &[PathBuf]) {
    for p in created.iter().rev() {
        let _ = paths::remove_if_empty(p);
    }
}

/// Reads the record of created placeholders that a run left (NUL-separated paths).
pub fn read_record(record: &Path) -> Vec<PathBuf> {
    use std::io::Read as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut raw = Vec::new();
    let _ = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(record)
        .and_then(|mut f| f.read_to_end(&mut raw));
    raw.split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
        .collect()
}

/// Writes the record of created placeholders, whole, replacing the previous one.
pub fn write_record(record: &Path, created: &[PathBuf]) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let mut bytes = Vec::new();
    for p in created {
        bytes.extend_from_slice(p.as_os_str().as_bytes());
        bytes.push(0);
    }
    paths::write_atomic(record, &bytes, 0o600)
        .with_context(|| format!("writing '{}'", record.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
    }

    #[test]
    fn prepares_and_removes_exactly_what_it_created() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("keep"), b"k").unwrap();
        let target = d.path().join("x/y/secret.txt");
        let mut created = Vec::new();
        prepare_target(&target, &mut created).unwrap();
        assert_eq!(
            created,
            vec![d.path().join("x"), d.path().join("x/y"), target.clone()]
        );
        let mut again = Vec::new();
        prepare_target(&target, &mut again).unwrap();
        assert!(again.is_empty(), "exists now");
        assert!(
            prepare_target(d.path(), &mut again).is_err(),
            "a directory is no mount point for a file"
        );
        remove_created(&created);
        assert!(!d.path().join("x").exists());
        assert!(d.path().join("keep").exists());
    }

    #[test]
    fn the_record_round_trips_and_written_files_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("a b/c\nd.txt");
        let mut created = Vec::new();
        prepare_target(&target, &mut created).unwrap();
        let record = d.path().join("root.created");
        write_record(&record, &created).unwrap();
        assert_eq!(read_record(&record), created);
        // Someone wrote to the placeholder since: it stays, and so does its directory.
        std::fs::write(&target, b"data").unwrap();
        remove_created(&read_record(&record));
        assert_eq!(std::fs::read(&target).unwrap(), b"data");
        assert!(read_record(&d.path().join("absent")).is_empty());
    }
}
