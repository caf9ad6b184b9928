//! Exact placement: each secret file of the FUSE mount root is bind-mounted, read-only, onto
//! the path the job asked for. Also: clearing mounts a killed secretfs left behind.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;

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
pub fn clear_stale(path: &Path) -> usize {
    let mut n = 0;
    while secretfs_mounts().iter().any(|p| p == path) && n < 64 {
        if umount2(path, MntFlags::MNT_DETACH).is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// Makes sure a file exists at `path` to mount over; returns what it had to create (parents
/// first), so that shutdown can remove exactly that.
pub fn prepare_target(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    let mut missing = Vec::new();
    let mut p = path.parent();
    while let Some(dir) = p {
        if dir.exists() {
            break;
        }
        missing.push(dir.to_path_buf());
        p = dir.parent();
    }
    for dir in missing.into_iter().rev() {
        std::fs::create_dir(&dir)
            .with_context(|| format!("creating directory '{}'", dir.display()))?;
        created.push(dir);
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => anyhow::bail!("'{}' exists and is not a regular file", path.display()),
        Err(_) => {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| format!("creating mount point '{}'", path.display()))?;
            created.push(path.to_path_buf());
        }
    }
    Ok(created)
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
    if let Ok(m) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            m.is_file(),
            "'{}' exists and is not a regular file",
            path.display()
        );
        return Ok(());
    }
    let mut base = path.parent();
    while let Some(d) = base {
        if d.is_dir() {
            break;
        }
        base = d.parent();
    }
    let base = base.context("no existing directory above the path")?;
    if !overlaid.iter().any(|o| o == base) {
        overlay(base, &scratch.join(overlaid.len().to_string()))?;
        overlaid.push(base.to_path_buf());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating directory '{}'", parent.display()))?;
    }
    std::fs::File::create(path)
        .with_context(|| format!("creating mount point '{}'", path.display()))?;
    Ok(())
}

/// Mounts an overlay on `dir` whose upper layer is a fresh tmpfs at `scratch`.
fn overlay(dir: &Path, scratch: &Path) -> anyhow::Result<()> {
    let d = dir.to_str().context("path is not UTF-8")?;
    anyhow::ensure!(
        dir != Path::new("/"),
        "'/' would need an overlay to create the missing path; create its first directory in the image"
    );
    anyhow::ensure!(
        !d.contains([',', ':', '\\']),
        "cannot overlay '{d}': ',' ':' and '\\' are not allowed in the path"
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
    let opts = format!(
        "lowerdir={d},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        dir,
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

/// Bind-mounts `src` onto `dst`, then makes that mount read-only, nosuid, nodev, noexec.
pub fn bind_ro(src: &Path, dst: &Path) -> anyhow::Result<()> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("bind-mounting onto '{}'", dst.display()))?;
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(None::<&str>, dst, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("making '{}' read-only", dst.display()))?;
    Ok(())
}

pub fn detach(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
}

/// Removes what `prepare_target` created, newest first: files only when still empty,
/// directories only when empty, so nothing anyone wrote since is lost.
pub fn remove_created(created: &[PathBuf]) {
    for p in created.iter().rev() {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir(p);
            }
            Ok(m) if m.is_file() && m.len() == 0 => {
                let _ = std::fs::remove_file(p);
            }
            _ => {}
        }
    }
}

/// Reads the record of created placeholders that a run left (NUL-separated paths).
pub fn read_record(record: &Path) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    std::fs::read(record)
        .unwrap_or_default()
        .split(|b| *b == 0)
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
    let tmp = record.with_extension("created.tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, record))
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
        let created = prepare_target(&target).unwrap();
        assert_eq!(
            created,
            vec![d.path().join("x"), d.path().join("x/y"), target.clone()]
        );
        assert!(prepare_target(&target).unwrap().is_empty(), "exists now");
        assert!(
            prepare_target(d.path()).is_err(),
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
        let created = prepare_target(&target).unwrap();
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
