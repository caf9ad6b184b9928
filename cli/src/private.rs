//! The CLI's one writer of private files (a secret's value, the login config, a job's
//! manifest, a job token): mode 0600, never written through a planted link, never half there.
//!
//! The directory is opened once, as the user named it (its components may be symlinks: a
//! home directory often is one); everything after happens relative to that descriptor, so
//! swapping the directory afterwards changes nothing. The bytes go to a fresh temporary file
//! created with `O_CREAT | O_EXCL | O_NOFOLLOW` (a name already there, link or not, is skipped
//! and never opened), are synced, and the temporary is renamed over the final name.
//!
//! A final name that exists and is not a regular file (a symlink, a pipe, a device, a
//! directory) is refused: replacing `/dev/stdout`, a FIFO a reader waits on, or a link with a
//! file on disk would put the value where nobody expects it. A link planted after that check
//! is still never followed: `rename(2)` swaps the directory entry and never resolves it.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// How many temporary names are tried before giving up (each taken one is skipped).
const ATTEMPTS: u32 = 64;

/// Why a private file could not be written; names the path, never the contents.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The cause is part of the message (not a `source`, which would print it twice).
    #[error("writing '{path}': {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error(
        "'{path}' exists and is not a regular file (a symlink, pipe, device or directory); \
         name a regular file, or leave the option out to print to standard output"
    )]
    NotRegular { path: String },
}

/// Replaces `path` with `bytes`, readable and writable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let pid = std::process::id();
    write_with_names(path, bytes, |name, attempt| {
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(
            ".{pid}.{:08x}.tmp",
            nanos.wrapping_add(attempt.wrapping_mul(0x9e37_79b9))
        ));
        tmp
    })
}

/// [`write_private`] with the temporary names given by `tmp_name(final name, attempt)`, so a
/// test can plant something at the name that will be tried.
fn write_with_names(
    path: &Path,
    bytes: &[u8],
    tmp_name: impl Fn(&OsStr, u32) -> OsString,
) -> Result<(), WriteError> {
    let err = |cause: std::io::Error| WriteError::Io {
        path: path.display().to_string(),
        cause,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("the path names no file")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dfd = openat(
        AT_FDCWD,
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    match nix::sys::stat::fstatat(&dfd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st)
            if nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                & nix::sys::stat::SFlag::S_IFMT
                != nix::sys::stat::SFlag::S_IFREG =>
        {
            return Err(WriteError::NotRegular {
                path: path.display().to_string(),
            });
        }
        Ok(_) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(err(e.into())),
    }
    let mut attempt = 0;
    let (tmp, fd) = loop {
        let tmp = tmp_name(name, attempt);
        match openat(
            &dfd,
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        ) {
            Ok(fd) => break (tmp, fd),
            Err(Errno::EEXIST) if attempt + 1 < ATTEMPTS => attempt += 1,
            Err(e) => return Err(err(e.into())),
        }
    };
    // From here on the temporary file is ours: remove it on any failure.
    let mut f = std::fs::File::from(fd);
    // The umask may have taken bits away; 0600 exactly, whatever it is.
    let r = fchmod(&f, Mode::S_IRUSR | Mode::S_IWUSR)
        .map_err(std::io::Error::from)
        .and_then(|()| f.write_all(bytes))
        .and_then(|()| f.sync_all())
        .and_then(|()| Ok(renameat(&dfd, tmp.as_os_str(), &dfd, name)?));
    if let Err(e) = r {
        let _ = unlinkat(&dfd, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return Err(err(e));
    }
    // The rename itself survives a crash only once the directory is synced.
    nix::unistd::fsync(&dfd).map_err(|e| err(e.into()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};

    use super::*;

    fn fixed(names: &'static [&'static str]) -> impl Fn(&OsStr, u32) -> OsString {
        move |_, attempt| OsString::from(names[attempt as usize % names.len()])
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_0600_whatever_was_there() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out");
        std::fs::write(&p, b"old, longer contents").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(entries(d.path()), ["out"], "no temporary left behind");
    }

    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"victim's").unwrap();
        symlink(&victim, d.path().join("tmp-a")).unwrap();
        // A dangling link too: O_CREAT through it would create its target.
        symlink(
            d.path().join("created-through-link"),
            d.path().join("tmp-b"),
        )
        .unwrap();
        let p = d.path().join("out");
        write_with_names(&p, b"value", fixed(&["tmp-a", "tmp-b", "tmp-c"])).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"value");
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim's");
        assert!(!d.path().join("created-through-link").exists());
        assert!(
            std::fs::symlink_metadata(d.path().join("tmp-a"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(entries(d.path()), ["out", "tmp-a", "tmp-b", "victim"]);
    }

    #[test]
    fn gives_up_when_every_temporary_name_is_taken() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"victim's").unwrap();
        symlink(&victim, d.path().join("tmp")).unwrap();
        let p = d.path().join("out");
        let e = write_with_names(&p, b"value", fixed(&["tmp"])).unwrap_err();
        let WriteError::Io { cause, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(cause.raw_os_error(), Some(nix::libc::EEXIST));
        assert!(e.to_string().starts_with("writing '"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim's");
        assert!(!p.exists());
    }

    #[test]
    fn a_final_name_that_is_no_regular_file_is_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"victim's").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = d.path().join("out");
        symlink(&victim, &link).unwrap();
        let dangling = d.path().join("out2");
        symlink(d.path().join("nowhere"), &dangling).unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        for p in [&link, &dangling, &fifo, &d.path().join("sub")] {
            let e = write_private(p, b"value").unwrap_err();
            assert!(
                matches!(e, WriteError::NotRegular { .. }),
                "{}: {e}",
                p.display()
            );
            assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        }
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert!(std::fs::symlink_metadata(&dangling).unwrap().is_symlink());
        assert!(!d.path().join("nowhere").exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim's");
        assert_eq!(
            std::fs::metadata(&victim).unwrap().mode() & 0o7777,
            0o644,
            "the target's mode is untouched"
        );
        assert_eq!(entries(d.path()), ["fifo", "out", "out2", "sub", "victim"]);
    }

    #[test]
    fn failures_name_the_path_and_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let e = write_private(&d.path().join("missing/f"), b"value").unwrap_err();
        assert!(e.to_string().contains("/missing/f'"), "{e}");
        assert_eq!(entries(d.path()), Vec::<String>::new());
        let e = write_private(Path::new("/nonexistent/dir/f"), b"value").unwrap_err();
        assert_eq!(
            e.to_string(),
            "writing '/nonexistent/dir/f': No such file or directory (os error 2)"
        );
        assert!(write_private(Path::new("/"), b"value").is_err());
    }
}
