//! The start sequence: resolve every mapping first (fail closed), then mount the FUSE root,
//! bind each file onto its path (or overlay, with `--private`), and undo all of it at shutdown
//! (`Mounted`). SIGTERM and SIGINT are caught from the very start (`Shutdown`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrets_client::Client;
use secrets_core::api::ResolveStatus;
use secrets_core::handoff::FailedItem;
use secrets_core::{ExitClass, SecretBytes};

use crate::args::Args;
use crate::failure::{Failure, fail};
use crate::files::{self, Files, Mapping};
use crate::{adapter, mounts, paths};

/// Resolves every mapping in one request, retrying transient failures until `deadline`.
/// Any mapping that does not resolve stops secretfs with an item per failure.
pub async fn resolve_initial(
    client: &Client,
    maps: &[Mapping],
    deadline: Instant,
) -> anyhow::Result<Vec<(SecretBytes, u64)>> {
    let uris: Vec<String> = maps.iter().map(|m| m.uri.clone()).collect();
    let mut backoff = Duration::from_millis(100);
    let resp = loop {
        match client.resolve(uris.clone()).await {
            Ok(r) => break r,
            Err(e) if e.is_transient() && Instant::now() + backoff < deadline => {
                eprintln!("secretfs: {e}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                let class = ExitClass::from(&e);
                return Err(fail(
                    class,
                    match class {
                        ExitClass::Forbidden => format!("not authenticated: {e}"),
                        _ => e.to_string(),
                    },
                ));
            }
        }
    };
    let mut errors = Vec::new();
    let mut class = ExitClass::Ok;
    let mut values = Vec::new();
    for (m, r) in maps.iter().zip(resp.results) {
        let uri = r.resolved_uri.clone().unwrap_or_else(|| m.uri.clone());
        let (c, what) = match r.status {
            ResolveStatus::Ok => match (r.value, r.version) {
                (Some(v), Some(ver)) => {
                    values.push((v, ver));
                    continue;
                }
                _ => (
                    ExitClass::Unavailable,
                    "the service sent no value".to_owned(),
                ),
            },
            ResolveStatus::NotFound => (ExitClass::NotFound, "not found".to_owned()),
            ResolveStatus::Forbidden => (ExitClass::Forbidden, "forbidden".to_owned()),
            ResolveStatus::Invalid => (
                ExitClass::Invalid,
                format!("invalid: {}", r.error.unwrap_or_default()),
            ),
        };
        class = class.combine(c);
        errors.push(FailedItem {
            path: Some(m.path.display().to_string()),
            uri: Some(uri),
            class: c.name().to_owned(),
            detail: what,
        });
    }
    if !errors.is_empty() {
        return Err(Failure {
            class,
            items: errors,
        }
        .into());
    }
    Ok(values)
}

pub fn audit_sink(path: Option<&Path>) -> anyhow::Result<files::AuditSink> {
    let out: Box<dyn Write + Send> = match path {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening audit log '{}'", p.display()))?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let out = Mutex::new(out);
    Ok(Box::new(move |line| {
        if let Ok(mut s) = serde_json::to_string(line) {
            s.push('\n');
            let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = o.write_all(s.as_bytes());
        }
    }))
}

/// What must be undone at shutdown, in reverse.
#[derive(Default)]
pub(crate) struct Mounted {
    pub session: Option<fuser::BackgroundSession>,
    pub binds: Vec<mounts::Bound>,
    pub created: Vec<PathBuf>,
    /// Lists `created` on disk, for the next start if this run is killed.
    pub record: Option<PathBuf>,
    pub ready: Option<PathBuf>,
}

impl Mounted {
    pub fn teardown(&mut self) {
        if let Some(r) = self.ready.take() {
            let _ = std::fs::remove_file(r);
        }
        for b in self.binds.drain(..).rev() {
            mounts::detach(&b);
        }
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
        mounts::remove_created(&self.created);
        self.created.clear();
        if let Some(r) = self.record.take() {
            let _ = std::fs::remove_file(r);
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.teardown();
    }
}

pub(crate) fn mount_all(
    files: &Arc<Files>,
    args: &Args,
    m: &mut Mounted,
) -> anyhow::Result<fuser::Notifier> {
    // First: a dead mount answers ENOTCONN, which makes the directory look absent.
    let stale = mounts::clear_stale(&args.mount_root)
        + files
            .mappings()
            .iter()
            .map(|mp| mounts::clear_stale(&mp.path))
            .sum::<usize>();
    if stale > 0 {
        eprintln!("secretfs: cleared {stale} stale mount(s) of an earlier run");
    }
    let sibling = |suffix| {
        paths::sibling(&args.mount_root, suffix).ok_or_else(|| {
            fail(
                ExitClass::Invalid,
                format!("mount root '{}' has no name", args.mount_root.display()),
            )
        })
    };
    // Placeholders a killed run created and could not remove.
    let record = sibling("created")?;
    let leftover = mounts::read_record(&record);
    if !leftover.is_empty() {
        mounts::remove_created(&leftover);
        eprintln!(
            "secretfs: removed the placeholders of an earlier run ({})",
            leftover.len()
        );
    }
    let _ = std::fs::remove_file(&record);
    std::fs::create_dir_all(&args.mount_root)
        .with_context(|| format!("creating mount root '{}'", args.mount_root.display()))?;
    // Mount points first: in private mode they may need overlays, which must not cover the
    // FUSE mount made next.
    let scratch = sibling("scratch")?;
    let mut overlaid = Vec::new();
    // Each target is held open from its no-symlink walk to its bind mount.
    let mut targets = Vec::new();
    // --root-only: the container runtime places the files; no mount points here.
    for mp in files.mappings().iter().filter(|_| !args.root_only) {
        if args.private {
            mounts::prepare_target_private(&mp.path, &scratch, &mut overlaid)?;
        } else {
            let before = m.created.len();
            let target = mounts::prepare_target(&mp.path, &mut m.created);
            if m.created.len() > before {
                mounts::write_record(&record, &m.created)?;
                m.record = Some(record.clone());
            }
            targets.push(target?);
        }
    }
    if args.private {
        // Opened after every overlay is in place: one mounted for a later path may cover a
        // directory an earlier target was first opened in.
        for mp in files.mappings() {
            targets.push(paths::open_file(&mp.path, None)?);
        }
    }
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("secretfs".into()),
        fuser::MountOption::Subtype("secretfs".into()),
        fuser::MountOption::RO,
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoExec,
        fuser::MountOption::NoAtime,
    ];
    cfg.acl = fuser::SessionACL::All;
    cfg.n_threads = Some(2);
    let session = fuser::Session::new(adapter::Adapter(files.clone()), &args.mount_root, &cfg)
        .with_context(|| format!("mounting FUSE at '{}'", args.mount_root.display()))?;
    let notifier = session.notifier();
    m.session = Some(session.spawn().context("starting the FUSE session")?);
    for (i, target) in targets.iter().enumerate() {
        let bound = mounts::bind_ro(&args.mount_root.join(Files::name_of(i)), target)?;
        m.binds.push(bound);
    }
    Ok(notifier)
}

/// SIGTERM and SIGINT, caught from the start: one that comes while starting (or right after
/// the ready file appears) is a clean stop, never the default action that leaves mounts.
pub(crate) struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    pub fn catch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("catching SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("catching SIGINT")?,
        })
    }

    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
