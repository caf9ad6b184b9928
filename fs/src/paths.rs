//! Reaching a mapped path without following a symlink: every component is opened with
//! `openat(O_PATH | O_NOFOLLOW)` relative to the directory reached before it, so a symlink
//! anywhere in the path, present before or planted during the walk, is refused, never
//! followed. Also the small files secretfs writes (ready file, record), which never go
//! through a planted symlink.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::sys::statfs::{self, FsType, fstatfs};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Kernel interfaces: nothing is ever mounted or created under them, by path...
const KERNEL_ROOTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// ... nor on these filesystems wherever they are mounted (devtmpfs reports tmpfs's magic, so
/// /dev is refused by its path only).
const KERNEL_FS: [(FsType, &str); 10] = [
    (statfs::PROC_SUPER_MAGIC, "proc"),
    (statfs::SYSFS_MAGIC, "sysfs"),
    (statfs::DEVPTS_SUPER_MAGIC, "devpts"),
    (statfs::CGROUP_SUPER_MAGIC, "cgroup"),
    (statfs::CGROUP2_SUPER_MAGIC, "cgroup2"),
    (statfs::DEBUGFS_MAGIC, "debugfs"),
    (statfs::TRACEFS_MAGIC, "tracefs"),
    (statfs::SECURITYFS_MAGIC, "securityfs"),
    (statfs::BPF_FS_MAGIC, "bpf"),
    (statfs::NSFS_MAGIC, "nsfs"),
];

/// Why a path cannot be used. All but `Io` are the path's fault (bad input).
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("'{path}': '{at}' is a symbolic link; secretfs follows no symlink in a mapped path")]
    Symlink { path: PathBuf, at: PathBuf },
    #[error("'{path}' is {under}: secretfs mounts nothing over /proc, /sys or /dev")]
    Kernel { path: PathBuf, under: String },
    #[error("'{path}' must be absolute and normalized (no '.' or '..' components)")]
    NotNormal { path: PathBuf },
    #[error("'{path}': '{at}' is not a directory")]
    NotDir { path: PathBuf, at: PathBuf },
    #[error("'{path}' exists and is not a regular file")]
    NotFile { path: PathBuf },
    #[error("'{path}': {what} '{at}': {errno}")]
    Io {
        path: PathBuf,
        what: &'static str,
        at: PathBuf,
        errno: Errno,
    },
}

impl PathError {
    /// The path itself is at fault (exit 65), rather than the system.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }

    /// The mapped path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Symlink { path, .. }
            | Self::Kernel { path, .. }
            | Self::NotNormal { path }
            | Self::NotDir { path, .. }
            | Self::NotFile { path }
            | Self::Io { path, .. } => path,
        }
    }

    fn is_missing(&self) -> bool {
        matches!(
            self,
            Self::Io {
                errno: Errno::ENOENT,
                ..
            }
        )
    }
}

/// A directory reached without following a symlink, held open (`O_PATH`).
#[derive(Debug)]
pub struct Dir {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

impl Dir {
    /// `/proc/self/fd/N`, which names exactly this directory, whatever happens to its path.
    pub fn proc_path(&self) -> PathBuf {
        fd_path(&self.fd)
    }
}

/// `/proc/self/fd/N` of `fd`: as a mount source or target it is the very file the descriptor
/// holds, so a path swapped after the check cannot redirect the mount.
pub fn fd_path(fd: &impl AsFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

/// A regular file reached without following a symlink: its directory, its name in it, and
/// the file itself, held open (`O_PATH`).
#[derive(Debug)]
pub struct FileAt {
    pub dir: Dir,
    pub name: OsString,
    pub fd: OwnedFd,
}

impl FileAt {
    pub fn path(&self) -> PathBuf {
        self.dir.path.join(&self.name)
    }
}

/// What `walk` does when a directory is missing.
#[derive(Debug)]
pub enum Missing<'a> {
    /// Fail (ENOENT).
    Fail,
    /// Stop: return the deepest directory that exists.
    Stop,
    /// Create it (0755) with `mkdirat` in its parent and record it.
    Create(&'a mut Vec<PathBuf>),
}

/// Refuses `/proc`, `/sys`, `/dev` and everything below them, by path.
pub fn check_not_kernel(path: &Path) -> Result<(), PathError> {
    match KERNEL_ROOTS.iter().find(|r| path.starts_with(r)) {
        Some(r) => Err(PathError::Kernel {
            path: path.to_owned(),
            under: format!("under {r}"),
        }),
        None => Ok(()),
    }
}

/// The names of an absolute path, with `.` and `..` refused (`Path::components` would keep
/// a `..` and silently drop an inner `.`, so the bytes are checked too).
fn names(path: &Path) -> Result<Vec<&OsStr>, PathError> {
    let bad = || PathError::NotNormal {
        path: path.to_owned(),
    };
    let raw = path.as_os_str().as_bytes();
    if raw
        .split(|b| *b == b'/')
        .skip(1)
        .any(|c| c == b"." || c == b"..")
    {
        return Err(bad());
    }
    let mut it = path.components();
    if it.next() != Some(Component::RootDir) {
        return Err(bad());
    }
    it.map(|c| match c {
        Component::Normal(n) => Ok(n),
        _ => Err(bad()),
    })
    .collect()
}

fn io(path: &Path, what: &'static str, at: &Path, errno: Errno) -> PathError {
    PathError::Io {
        path: path.to_owned(),
        what,
        at: at.to_owned(),
        errno,
    }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn check_fs(fd: &OwnedFd, path: &Path, at: &Path) -> Result<(), PathError> {
    let t = fstatfs(fd)
        .map_err(|e| io(path, "statfs", at, e))?
        .filesystem_type();
    match KERNEL_FS.iter().find(|(k, _)| *k == t) {
        Some((_, name)) => Err(PathError::Kernel {
            path: path.to_owned(),
            under: format!("on a {name} filesystem (at '{}')", at.display()),
        }),
        None => Ok(()),
    }
}

fn open_path(dir: impl AsFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens the directory `dir` (absolute) one component at a time, never following a symlink
/// and never entering a kernel filesystem; `missing` says what to do about a missing one.
pub fn walk(dir: &Path, missing: Missing<'_>) -> Result<Dir, PathError> {
    walk_for(dir, dir, missing)
}

/// `walk`, with errors naming `full` (the file whose directory `dir` is).
fn walk_for(dir: &Path, full: &Path, mut missing: Missing<'_>) -> Result<Dir, PathError> {
    check_not_kernel(dir)?;
    let names = names(dir)?;
    let mut cur = PathBuf::from("/");
    let mut fd = openat(
        AT_FDCWD,
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(full, "opening", &cur, e))?;
    check_fs(&fd, full, &cur)?;
    for name in names {
        let next = cur.join(name);
        let f = match open_path(&fd, name) {
            Ok(f) => f,
            Err(Errno::ENOENT) => match &mut missing {
                Missing::Fail => return Err(io(full, "opening", &next, Errno::ENOENT)),
                Missing::Stop => break,
                Missing::Create(created) => {
                    match mkdirat(&fd, name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) => created.push(next.clone()),
                        // Someone else made it meanwhile: checked below like any other.
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io(full, "creating directory", &next, e)),
                    }
                    open_path(&fd, name).map_err(|e| io(full, "opening", &next, e))?
                }
            },
            Err(e) => return Err(io(full, "opening", &next, e)),
        };
        let st = fstat(&f).map_err(|e| io(full, "stat", &next, e))?;
        match kind(&st) {
            SFlag::S_IFDIR => {}
            SFlag::S_IFLNK => {
                return Err(PathError::Symlink {
                    path: full.to_owned(),
                    at: next,
                });
            }
            _ => {
                return Err(PathError::NotDir {
                    path: full.to_owned(),
                    at: next,
                });
            }
        }
        check_fs(&f, full, &next)?;
        fd = f;
        cur = next;
    }
    Ok(Dir { fd, path: cur })
}

/// The directory of `path` (walked as `walk` does) and the file's name in it.
pub fn parent<'p>(path: &'p Path, missing: Missing<'_>) -> Result<(Dir, &'p OsStr), PathError> {
    check_not_kernel(path)?;
    names(path)?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(PathError::NotNormal {
            path: path.to_owned(),
        });
    };
    Ok((walk_for(dir, path, missing)?, name))
}

/// Opens the regular file at `path` without following a symlink anywhere in it. With
/// `create`, missing directories and the file itself are created (the file empty, with
/// `O_CREAT | O_EXCL | O_NOFOLLOW` in its directory) and recorded there, parents first.
pub fn open_file(path: &Path, mut create: Option<&mut Vec<PathBuf>>) -> Result<FileAt, PathError> {
    let missing = match create.as_deref_mut() {
        Some(c) => Missing::Create(c),
        None => Missing::Fail,
    };
    let (dir, name) = parent(path, missing)?;
    let fd = match open_path(&dir.fd, name) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) if create.is_some() => {
            let fd = openat(
                &dir.fd,
                name,
                OFlag::O_RDONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map_err(|e| io(path, "creating mount point", path, e))?;
            if let Some(c) = create {
                c.push(path.to_owned());
            }
            fd
        }
        Err(e) => return Err(io(path, "opening", path, e)),
    };
    let st = fstat(&fd).map_err(|e| io(path, "stat", path, e))?;
    match kind(&st) {
        SFlag::S_IFREG => {}
        SFlag::S_IFLNK => {
            return Err(PathError::Symlink {
                path: path.to_owned(),
                at: path.to_owned(),
            });
        }
        _ => {
            return Err(PathError::NotFile {
                path: path.to_owned(),
            });
        }
    }
    check_fs(&fd, path, path)?;
    Ok(FileAt {
        dir,
        name: name.to_owned(),
        fd,
    })
}

/// Like `open_file(path, None)`, but `Ok(None)` when the file or a directory is missing.
pub fn open_existing(path: &Path) -> Result<Option<FileAt>, PathError> {
    match open_file(path, None) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `path` if it is an empty regular file or an empty directory, reached without
/// following a symlink; anything else stays.
pub fn remove_if_empty(path: &Path) -> Result<(), PathError> {
    let (dir, name) = parent(path, Missing::Fail)?;
    let st = fstatat(&dir.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| io(path, "stat", path, e))?;
    let flag = match kind(&st) {
        SFlag::S_IFDIR => UnlinkatFlags::RemoveDir,
        SFlag::S_IFREG if st.st_size == 0 => UnlinkatFlags::NoRemoveDir,
        _ => return Ok(()),
    };
    match unlinkat(&dir.fd, name, flag) {
        Ok(()) | Err(Errno::ENOTEMPTY | Errno::EEXIST) => Ok(()),
        Err(e) => Err(io(path, "removing", path, e)),
    }
}

/// The name beside `path` with `.SUFFIX` appended to its file name (`/run/x.d` and
/// `created` give `/run/x.d.created`; `Path::with_extension` would replace `.d`). `None` for
/// a path without a file name (`/`).
pub fn sibling(path: &Path, suffix: &str) -> Option<PathBuf> {
    let mut name = path.file_name()?.to_owned();
    name.push(".");
    name.push(suffix);
    Some(path.with_file_name(name))
}

/// Replaces `path` with `bytes`, atomically: a fresh temporary file in the same directory,
/// created with `O_EXCL | O_NOFOLLOW` (a name planted there, symlink or not, is skipped,
/// never written through), synced, then renamed over `path`. The directory itself is the
/// operator's and may be reached through symlinks.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (dfd, name) = open_dir_of(path)?;
    write_atomic_in(&dfd, name, bytes, mode)
}

/// The directory of `path` (opened for `write_atomic_in`; symlinks followed: it is the
/// operator's) and the file's name in it.
pub fn open_dir_of(path: &Path) -> std::io::Result<(OwnedFd, &OsStr)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let dfd = openat(
        AT_FDCWD,
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok((dfd, name))
}

/// `write_atomic` of `name` in the directory `dfd`, opened earlier: the file lands in that
/// directory even if a mount has covered its path since.
pub fn write_atomic_in(
    dfd: &OwnedFd,
    name: &OsStr,
    bytes: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut attempt = 0u32;
    let (tmp, fd) = loop {
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(
            ".{}.{:x}.tmp",
            std::process::id(),
            nanos.wrapping_add(attempt.wrapping_mul(0x9e37_79b9))
        ));
        match openat(
            dfd,
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        ) {
            Ok(fd) => break (tmp, fd),
            Err(Errno::EEXIST) if attempt < 64 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    };
    let mut f = std::fs::File::from(fd);
    let r = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| Ok(renameat(dfd, tmp.as_os_str(), dfd, name)?));
    if r.is_err() {
        let _ = unlinkat(dfd, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return r;
    }
    Ok(nix::unistd::fsync(dfd)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn refused(path: &Path, want: &str) {
        let e = open_file(path, Some(&mut Vec::new())).unwrap_err();
        assert!(e.is_bad_input(), "{e}");
        assert!(e.to_string().contains(want), "{path:?}: {e}");
    }

    #[test]
    fn symlinks_kernel_paths_and_dots_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (victim, link) = (d.path().join("victim"), d.path().join("link"));
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("f"), b"v").unwrap();
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        refused(
            &link.join("f"),
            &format!("'{}' is a symbolic link", link.display()),
        );
        refused(&link.join("new/f"), "is a symbolic link");
        std::os::unix::fs::symlink(victim.join("f"), d.path().join("flink")).unwrap();
        refused(&d.path().join("flink"), "is a symbolic link");
        assert_eq!(
            std::fs::read_dir(&victim).unwrap().count(),
            1,
            "nothing created in the symlink's target"
        );
        for p in ["/proc/self/environ", "/sys/x/y", "/dev/null", "/dev"] {
            refused(
                Path::new(p),
                "secretfs mounts nothing over /proc, /sys or /dev",
            );
        }
        let dots = format!("{}/x/../victim/f", d.path().display());
        refused(Path::new(&dots), "normalized");
        refused(Path::new("relative/f"), "normalized");
        refused(&victim, "not a regular file");
    }

    #[test]
    fn creates_parents_and_the_file_and_removes_only_empty_ones() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/f");
        let mut created = Vec::new();
        let f = open_file(&p, Some(&mut created)).unwrap();
        assert_eq!(f.path(), p);
        assert_eq!(
            created,
            [d.path().join("a"), d.path().join("a/b"), p.clone()]
        );
        std::fs::write(d.path().join("a/kept"), b"x").unwrap();
        for c in created.iter().rev() {
            remove_if_empty(c).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(!d.path().join("a/b").exists());
        assert!(
            d.path().join("a/kept").exists(),
            "a non-empty directory stays"
        );
        assert!(open_existing(&p).unwrap().is_none());
    }

    #[test]
    fn siblings_append_to_the_file_name() {
        for (path, want) in [
            ("/run/secretfs", Some("/run/secretfs.created")),
            ("/run/x.d", Some("/run/x.d.created")),
            ("/run/x.d/", Some("/run/x.d.created")),
            ("rel.a.b", Some("rel.a.b.created")),
            ("/", None),
        ] {
            assert_eq!(
                sibling(Path::new(path), "created"),
                want.map(PathBuf::from),
                "{path}"
            );
        }
    }

    #[test]
    fn write_atomic_never_writes_through_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"original").unwrap();
        let target = d.path().join("ready");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        for n in ["ready.tmp", ".ready.tmp"] {
            std::os::unix::fs::symlink(&victim, d.path().join(n)).unwrap();
        }
        write_atomic(&target, b"ready\n", 0o644).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"original");
        assert!(!std::fs::symlink_metadata(&target).unwrap().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"ready\n");
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&format!(".ready.{}.", std::process::id()))
            })
            .collect();
        assert!(left.is_empty(), "no temporary file left: {left:?}");
    }
}
