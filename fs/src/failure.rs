//! Why secretfs did not start: `exit_class`, the one mapping from an error to the exit code
//! (`secrets_client::exit_class` with secretfs's own path errors), `report`, and `ErrorFile`,
//! the status file of `--error-file` that hands the failures to `neuro run` (the format is
//! `secrets_core::handoff`'s).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::Context as _;
use nix::errno::Errno;
use nix::unistd::{UnlinkatFlags, unlinkat};
pub use secrets_client::Failure;
use secrets_core::ExitClass;
use secrets_core::handoff::{FailedItem, StartFailure};

use crate::paths;

/// A failure of one class that concerns no single mapping.
pub fn fail(class: ExitClass, message: impl Into<String>) -> anyhow::Error {
    Failure::new(class, message).into()
}

/// The class of a failure: that of the first error in its chain that has one
/// ([`secrets_client::exit_class`]), a path error that is bad input included; else
/// [`ExitClass::Other`].
pub fn exit_class(e: &anyhow::Error) -> ExitClass {
    secrets_client::exit_class(e.as_ref(), |c| {
        c.downcast_ref::<paths::PathError>()
            .filter(|p| p.is_bad_input())
            .map(|_| ExitClass::Invalid)
    })
}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    exit_class(e).code()
}

/// The report of `e`: a [`Failure`]'s items; else one item, naming the mapped path when a
/// path error is in the chain.
pub fn report(e: &anyhow::Error) -> StartFailure {
    let class = exit_class(e);
    let errors = match e.chain().find_map(|c| c.downcast_ref::<Failure>()) {
        Some(f) => f.items.clone(),
        None => {
            let mut item = FailedItem::new(class, format!("{e:#}"));
            if let Some(p) = e.chain().find_map(|c| c.downcast_ref::<paths::PathError>()) {
                item.path = Some(p.path().display().to_string());
            }
            vec![item]
        }
    };
    StartFailure {
        code: class.code(),
        errors,
    }
}

/// The `--error-file`: its directory is opened (and a file left at the name by an earlier run
/// removed) before anything is mounted, so the report lands there even when an overlay of
/// `--private` has covered the path since.
#[derive(Debug)]
pub struct ErrorFile {
    dir: OwnedFd,
    name: OsString,
    path: std::path::PathBuf,
}

impl ErrorFile {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let (dir, name) = paths::open_dir_of(path)
            .with_context(|| format!("opening the directory of error file '{}'", path.display()))?;
        match unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("removing the stale error file '{}'", path.display())
                });
            }
        }
        Ok(Self {
            name: name.to_owned(),
            dir,
            path: path.to_owned(),
        })
    }

    /// Writes `report` atomically (0644: it holds no value).
    pub fn write(&self, report: &StartFailure) -> anyhow::Result<()> {
        let json = serde_json::to_vec(report).context("encoding the error report")?;
        paths::write_atomic_in(&self.dir, &self.name, &json, 0o644)
            .with_context(|| format!("writing error file '{}'", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_their_class() {
        assert_eq!(exit_code(&fail(ExitClass::NotFound, "x")), 72);
        let wrapped = fail(ExitClass::Forbidden, "x").context("starting");
        assert_eq!(exit_class(&wrapped), ExitClass::Forbidden);
        assert_eq!(exit_code(&anyhow::anyhow!("mount failed")), 1);
    }

    /// secretfs's side of the hand-off: what it writes is the documented shape (neuro's side
    /// reads it in `secrets_core::handoff`'s test and the `run_root` tests).
    #[test]
    fn the_error_file_holds_every_item_and_replaces_a_stale_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("error.json");
        std::fs::write(&p, b"stale").unwrap();
        let f = ErrorFile::open(&p).unwrap();
        assert!(!p.exists(), "a stale report is removed at start");
        let items = vec![
            FailedItem {
                path: Some("/a".into()),
                uri: Some("secret://c/u/a".into()),
                class: "not found".into(),
                detail: "not found".into(),
            },
            FailedItem {
                path: Some("/b".into()),
                uri: Some("secret://c/u/b".into()),
                class: "forbidden".into(),
                detail: "forbidden".into(),
            },
        ];
        let e = anyhow::Error::from(Failure {
            class: ExitClass::Forbidden,
            items,
        });
        f.write(&report(&e)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": 77, "errors": [
                {"path": "/a", "uri": "secret://c/u/a", "class": "not found", "detail": "not found"},
                {"path": "/b", "uri": "secret://c/u/b", "class": "forbidden", "detail": "forbidden"},
            ]})
        );
        // a path error names its path; anything else has neither path nor URI
        let pe = anyhow::Error::from(paths::PathError::NotNormal {
            path: "rel/x".into(),
        })
        .context("preparing");
        let r = report(&pe);
        assert_eq!((r.code, r.errors[0].path.as_deref()), (65, Some("rel/x")));
        let r = report(&anyhow::anyhow!("mount failed"));
        assert_eq!((r.code, r.errors[0].path.as_deref()), (1, None));
        assert_eq!(r.errors[0].class, "other");
    }
}
