//! The CLI's one writer of private files (a secret's value, the login config, a job's
//! manifest, a job token): mode 0600, never written through a planted link, never half there.
//!
//! The directory is opened once, as the user named it (its components may be symlinks: a
//! home directory often is one); everything after happens relative to that descriptor, so
//! swapping the directory afterwards changes nothing. The bytes go to a fresh temporary file
//! created with `O_CREAT | O_EXCL | O_NOFOLLOW` (a name already there, link or not, is skipped
//! and never opened), are synced, and the temporary is renamed over the final name.
//!
//! A symlink at the final name is replaced, not followed: `rename(2)` swaps the directory
//! entry and never resolves it, so there is no check-then-write race to lose, and refusing
//! would need an `lstat` that a planted link could race anyway. The link's target is left
//! untouched.

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
#[error("writing '{path}': {source}")]
pub struct WriteError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
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
    let err = |source: std::io::Error| WriteError {
        path: path.display().to_string(),
        source,
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
        assert_eq!(e.source.raw_os_error(), Some(nix::libc::EEXIST));
        assert!(e.to_string().starts_with("writing '"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim's");
        assert!(!p.exists());
    }

    #[test]
    fn a_symlink_at_the_final_name_is_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"victim's").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = d.path().join("out");
        symlink(&victim, &p).unwrap();
        write_private(&p, b"value").unwrap();
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert!(md.file_type().is_file(), "the link itself is replaced");
        assert_eq!(md.mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"value");
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim's");
        assert_eq!(
            std::fs::metadata(&victim).unwrap().mode() & 0o7777,
            0o644,
            "the target's mode is untouched"
        );
        // A dangling link: nothing is created at its target.
        let q = d.path().join("out2");
        symlink(d.path().join("nowhere"), &q).unwrap();
        write_private(&q, b"value").unwrap();
        assert!(!d.path().join("nowhere").exists());
        assert!(std::fs::symlink_metadata(&q).unwrap().file_type().is_file());
    }

    #[test]
    fn failures_name_the_path_and_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        // The final name is a directory: the rename fails, the temporary is removed.
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), b"x").unwrap();
        let e = write_private(&d.path().join("sub"), b"value").unwrap_err();
        assert!(e.to_string().contains("/sub'"), "{e}");
        assert_eq!(entries(d.path()), ["sub"]);
        let e = write_private(Path::new("/nonexistent/dir/f"), b"value").unwrap_err();
        assert_eq!(
            e.to_string(),
            "writing '/nonexistent/dir/f': No such file or directory (os error 2)"
        );
        assert!(write_private(Path::new("/"), b"value").is_err());
    }
}
