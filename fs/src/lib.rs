//! `secretfs`: the FUSE sidecar that serves a job's secrets at the paths it asked for.
//!
//! One FUSE session at a private mount root holds every secret as a file (`0`, `1`, ...) and a
//! status area (`.status`); each file is bind-mounted read-only onto its requested path.
//! Values are fetched once before the ready file appears, then refreshed in the background
//! from the service's change feed; no filesystem operation ever waits on the network.

pub mod adapter;
pub mod files;
pub mod harden;
pub mod mounts;
pub mod paths;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use secrets_core::api::{JobSpec, ResolveStatus};
use secrets_core::client::{Client, ClientError};
use secrets_core::{ConnArgs, ExitClass, GroupMayRead, SecretBytes, Token, VolumeMapping};

use crate::files::{Files, Mapping};

/// The `Exit codes:` section of `--help`.
fn exit_codes() -> String {
    ExitClass::help(&[
        (
            ExitClass::Ok,
            "stopped cleanly (SIGTERM or SIGINT): everything unmounted",
        ),
        (
            ExitClass::Other,
            "e.g. mounting failed; with --check-ready: not ready",
        ),
        (ExitClass::Usage, ""),
        (
            ExitClass::Invalid,
            "an invalid --volume, spec file or token file; a token file that\n\
             others may read or group or others may write, or that its group may read when\n\
             that group is not the job's --gid (chmod 600 it); a mapped path with a symlink\n\
             in any component, or under /proc, /sys or /dev",
        ),
        (
            ExitClass::Unavailable,
            "after --timeout of retries; at once when its TLS\n\
             certificate is not accepted or the URL's scheme (http/https) is not what it speaks",
        ),
        (ExitClass::NotFound, "a mapped secret does not exist"),
        (
            ExitClass::Forbidden,
            "no token, the token is refused, or a\n\
             mapped secret is forbidden",
        ),
    ])
}

/// Command line of `secretfs`.
#[derive(Debug, Parser)]
#[command(
    name = "secretfs",
    version,
    about = "Serve a job's secrets as read-only files at the paths it asked for",
    long_about = "Serve a job's secrets as read-only files at the paths it asked for.\n\n\
        Resolves every mapped secret first (fail closed: a missing or forbidden one stops it \
        before anything is mounted), mounts one FUSE filesystem at --mount-root, bind-mounts \
        each file onto its path, then creates --ready-file. Values stay in locked memory and \
        are refreshed from the service's change feed; after the service goes away the files \
        keep being served and the status area (MOUNT_ROOT/.status) says since when they are \
        stale. SIGTERM unmounts everything and exits 0. Needs root (or CAP_SYS_ADMIN) and \
        /dev/fuse.",
    after_help = exit_codes()
)]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// A job spec (JSON of POST /api/v1/jobs); its secret_volumes are served
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// secret:KEY:/PATH (also secret:/OWNER/KEY:/PATH and full URIs); repeatable
    #[arg(long = "volume", value_name = "SPEC")]
    pub volumes: Vec<String>,
    /// Owner of the files
    #[arg(long, default_value_t = 0)]
    pub uid: u32,
    /// Group of the files
    #[arg(long, default_value_t = 0)]
    pub gid: u32,
    /// Permission bits of the files, in octal
    #[arg(long, default_value = "0400", value_parser = parse_mode)]
    pub mode: u16,
    /// Created once every secret is served; removed at shutdown
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Where the FUSE filesystem is mounted (holds the files and .status)
    #[arg(long, value_name = "DIR", default_value = "/run/secretfs")]
    pub mount_root: PathBuf,
    /// Audit log of opens (JSON lines); default: standard error
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// How opens and reads are served: strict (audited opens, per-handle snapshots), audited
    /// (audited opens, page cache, one round trip per open) or kernel (no round trips)
    #[arg(long, value_enum, default_value = "strict")]
    pub cache: files::CacheMode,
    /// The mount namespace is private to this job (as under `neuro run`): missing paths are
    /// created on a tmpfs overlay of their nearest existing directory, never on the
    /// underlying filesystem
    #[arg(long)]
    pub private: bool,
    /// Mount only the FUSE filesystem at --mount-root (files 0, 1, ... in mapping order, and
    /// .status) and bind nothing onto the mapped paths: the container runtime does that, as a
    /// pod's subPath mounts (see container/README.md)
    #[arg(long, conflicts_with = "private")]
    pub root_only: bool,
    /// Exit 0 if FILE (the --ready-file of a running secretfs) exists, else 1, and do nothing
    /// else: the startup probe of images that have no shell
    #[arg(long, value_name = "FILE", exclusive = true)]
    pub check_ready: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("invalid mode '{s}': expected octal permission bits such as 0400"))
}

/// A failure with its exit class.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub class: ExitClass,
    pub message: String,
}

fn fail(class: ExitClass, message: impl Into<String>) -> anyhow::Error {
    Failure {
        class,
        message: message.into(),
    }
    .into()
}

/// The class of a failure: the first [`Failure`] or bad-input path error in its chain, else
/// [`ExitClass::Other`].
pub fn exit_class(e: &anyhow::Error) -> ExitClass {
    e.chain()
        .find_map(|c| {
            c.downcast_ref::<Failure>().map(|f| f.class).or_else(|| {
                c.downcast_ref::<paths::PathError>()
                    .filter(|p| p.is_bad_input())
                    .map(|_| ExitClass::Invalid)
            })
        })
        .unwrap_or(ExitClass::Other)
}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    exit_class(e).code()
}

/// The token: the file's group may read it only when that group is the job's (`--gid`, 0
/// included).
fn read_token(args: &Args) -> anyhow::Result<Token> {
    args.conn
        .token(GroupMayRead::Gid(args.gid))
        .map_err(|e| fail(e.class(), e.to_string()))
}

/// The mappings of `--spec` and `--volume`, in that order; two secrets at one path is an error.
fn mappings(args: &Args) -> anyhow::Result<Vec<Mapping>> {
    let mut out: Vec<Mapping> = Vec::new();
    if let Some(p) = &args.spec {
        let raw = std::fs::read(p).map_err(|e| {
            fail(
                ExitClass::Invalid,
                format!("cannot read spec '{}': {e}", p.display()),
            )
        })?;
        let spec: JobSpec = serde_json::from_slice(&raw).map_err(|e| {
            fail(
                ExitClass::Invalid,
                format!("invalid spec '{}': {e}", p.display()),
            )
        })?;
        for v in spec.secret_volumes {
            let m = VolumeMapping::parse(&format!("{}:{}", v.src_secret_uri, v.dst_path)).map_err(
                |e| {
                    fail(
                        ExitClass::Invalid,
                        format!("invalid spec '{}': {e}", p.display()),
                    )
                },
            )?;
            out.push(Mapping {
                path: m.path,
                uri: m.secret.to_string(),
            });
        }
    }
    for v in &args.volumes {
        let m = VolumeMapping::parse(v).map_err(|e| fail(ExitClass::Invalid, e.to_string()))?;
        out.push(Mapping {
            path: m.path,
            uri: m.secret.to_string(),
        });
    }
    if out.is_empty() {
        return Err(fail(
            ExitClass::Invalid,
            "nothing to serve: give --volume secret:KEY:/PATH or --spec FILE",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for m in &out {
        if !seen.insert(&m.path) {
            return Err(fail(
                ExitClass::Invalid,
                format!("two secrets are mapped to '{}'", m.path.display()),
            ));
        }
    }
    Ok(out)
}

/// Resolves every mapping in one request, retrying transient failures until `deadline`.
/// Any mapping that does not resolve stops secretfs with a line per failure.
async fn resolve_initial(
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
        errors.push(format!("{}: {uri}: {what}", m.path.display()));
    }
    if !errors.is_empty() {
        return Err(fail(class, errors.join("\nERROR: ")));
    }
    Ok(values)
}

fn audit_sink(path: Option<&Path>) -> anyhow::Result<files::AuditSink> {
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
struct Mounted {
    session: Option<fuser::BackgroundSession>,
    binds: Vec<mounts::Bound>,
    created: Vec<PathBuf>,
    /// Lists `created` on disk, for the next start if this run is killed.
    record: Option<PathBuf>,
    ready: Option<PathBuf>,
}

impl Mounted {
    fn teardown(&mut self) {
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

fn mount_all(files: &Arc<Files>, args: &Args, m: &mut Mounted) -> anyhow::Result<fuser::Notifier> {
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
    // Placeholders a killed run created and could not remove.
    let record = args.mount_root.with_extension("created");
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
    let scratch = args.mount_root.with_extension("scratch");
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

/// Keeps values current: long-polls the change feed, re-resolves everything in one request on
/// any change (and every 30 s as a safety net), marks the files stale while the service is
/// away and revokes them when the service says no.
async fn refresh(
    client: Client,
    files: Arc<Files>,
    notifier: fuser::Notifier,
    mut since: Option<u64>,
) {
    let uris: Vec<String> = files.mappings().iter().map(|m| m.uri.clone()).collect();
    // Strict mode reads bypass the page cache: attributes are all the kernel holds. The
    // cached modes drop the pages too, so the next read fetches the new bytes.
    let offset = if files.cache_mode() == files::CacheMode::Strict {
        -1
    } else {
        0
    };
    let invalidate = |i: usize| {
        let _ = notifier.inval_inode(fuser::INodeNo(Files::ino_of(i)), offset, 0);
    };
    let revoke_all = |why: &str| {
        for i in 0..uris.len() {
            if files.revoke(i, why) {
                invalidate(i);
            }
        }
    };
    let mut backoff = Duration::from_millis(200);
    let mut last_full = Instant::now();
    let mut need_full = false;
    let mut watch_supported = true;
    loop {
        if need_full || last_full.elapsed() > Duration::from_secs(30) {
            match client.resolve(uris.clone()).await {
                Ok(r) => {
                    files.set_stale(false);
                    for (i, r) in r.results.into_iter().enumerate() {
                        let changed = match (r.status, r.value, r.version) {
                            (ResolveStatus::Ok, Some(v), Some(ver)) => files.set_value(i, v, ver),
                            (ResolveStatus::NotFound, ..) => files.revoke(i, "not found"),
                            (ResolveStatus::Forbidden, ..) => files.revoke(i, "forbidden"),
                            _ => files.revoke(i, "invalid answer"),
                        };
                        if changed {
                            invalidate(i);
                        }
                    }
                    need_full = false;
                    last_full = Instant::now();
                    backoff = Duration::from_millis(200);
                }
                Err(ClientError::Status {
                    status: 401 | 403,
                    message,
                    ..
                }) => {
                    revoke_all(&format!("token rejected: {message}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(_) => {
                    files.set_stale(true);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        if !watch_supported {
            tokio::time::sleep(Duration::from_secs(1)).await;
            need_full = true;
            continue;
        }
        match client.watch(since, 10).await {
            Ok(w) => {
                let recovered = files.status_is_stale();
                files.set_stale(false);
                need_full = since.is_none() || recovered || !w.events.is_empty() || w.acl_changed;
                since = Some(w.revision);
                backoff = Duration::from_millis(200);
            }
            Err(ClientError::Status { status: 404, .. }) => watch_supported = false,
            // `since` is ahead of the service (its store was restored from a backup): start
            // over from its current revision rather than asking again, and look at everything.
            Err(ClientError::Status { status: 400, .. }) => {
                since = None;
                need_full = true;
            }
            Err(ClientError::Status {
                status: 401 | 403,
                message,
                ..
            }) => {
                revoke_all(&format!("token rejected: {message}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => {
                files.set_stale(true);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                need_full = true;
            }
        }
    }
}

/// SIGTERM and SIGINT, caught from the start: one that comes while starting (or right after
/// the ready file appears) is a clean stop, never the default action that leaves mounts.
struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    fn catch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("catching SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("catching SIGINT")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Runs secretfs until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(ready) = &args.check_ready {
        return Ok(if ready.exists() {
            ExitCode::SUCCESS
        } else {
            eprintln!("secretfs: not ready: '{}' does not exist", ready.display());
            ExitCode::FAILURE
        });
    }
    if args.conn.url().is_none() {
        return Err(fail(ExitClass::Usage, "--url or NEURO_URL is required"));
    }
    let mut stop = Shutdown::catch()?;
    let hardening = harden::apply().context("hardening the process")?;
    // A ready file left by an earlier run must not report this one ready before it has
    // mounted (unlink removes a symlink planted there, not its target).
    if let Some(r) = &args.ready_file {
        match std::fs::remove_file(r) {
            Ok(()) => eprintln!("secretfs: removed the stale ready file '{}'", r.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("removing the stale ready file '{}'", r.display()));
            }
        }
    }
    if let Err(e) = &hardening.locked {
        eprintln!(
            "secretfs: warning: cannot lock memory against swap ({e}); values may be swapped out"
        );
    }
    let maps = mappings(&args)?;
    let token = read_token(&args)?;
    let cfg = args.conn.client_config(token, Duration::from_secs(40));
    let client = Client::new(&cfg).map_err(|e| fail(ExitClass::from(&e), e.to_string()))?;
    let deadline = Instant::now() + args.conn.timeout;
    // Learn the revision before resolving, so no change between the two is missed.
    let since = client.watch(None, 0).await.ok().map(|w| w.revision);
    let initial = tokio::select! {
        r = resolve_initial(&client, &maps, deadline) => r?,
        () = stop.wait() => {
            eprintln!("secretfs: stopped before anything was mounted");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let files = Arc::new(Files::new(
        args.cache,
        maps,
        initial,
        args.uid,
        args.gid,
        args.mode,
        audit_sink(args.audit_log.as_deref())?,
    ));
    let mut mounted = Mounted::default();
    let notifier = mount_all(&files, &args, &mut mounted)?;
    if let Some(r) = &args.ready_file {
        paths::write_atomic(r, b"ready\n", 0o644)
            .with_context(|| format!("creating ready file '{}'", r.display()))?;
        mounted.ready = Some(r.clone());
    }
    eprintln!(
        "secretfs: serving {} secret(s); status in {}",
        files.mappings().len(),
        args.mount_root.join(files::STATUS_NAME).display()
    );
    let task = tokio::spawn(refresh(client, files.clone(), notifier, since));
    stop.wait().await;
    task.abort();
    mounted.teardown();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(args: &[&str], timeout: Result<Duration, ()>) {
        let mut v = vec!["secretfs", "--url", "http://127.0.0.1:1"];
        v.extend(args);
        match (Args::try_parse_from(&v), timeout) {
            (Ok(a), Ok(t)) => assert_eq!(a.conn.timeout, t, "{args:?}"),
            (Err(e), Err(())) => assert_eq!(e.exit_code(), 2, "{args:?}: {e}"),
            (got, want) => panic!("{args:?}: got {got:?}, want {want:?}"),
        }
    }

    /// `--timeout` is ConnArgs's: whole seconds as before, now fractions too, and never
    /// more than an hour (it took any u64 before).
    #[test]
    fn timeout_forms() {
        check(&[], Ok(Duration::from_secs(30)));
        check(&["--timeout", "3"], Ok(Duration::from_secs(3)));
        check(&["--timeout", "0.5"], Ok(Duration::from_millis(500)));
        check(&["--timeout", "100000"], Err(()));
        check(&["--timeout", "inf"], Err(()));
    }

    #[test]
    fn check_ready_needs_no_url() {
        let a = Args::try_parse_from(["secretfs", "--check-ready", "/r"]).unwrap();
        assert!(a.conn.url.is_none());
        assert!(Args::try_parse_from(["secretfs", "--check-ready", "/r", "--uid", "1"]).is_err());
    }

    #[test]
    fn failures_carry_their_class() {
        assert_eq!(exit_code(&fail(ExitClass::NotFound, "x")), 72);
        let wrapped = fail(ExitClass::Forbidden, "x").context("starting");
        assert_eq!(exit_class(&wrapped), ExitClass::Forbidden);
        assert_eq!(exit_code(&anyhow::anyhow!("mount failed")), 1);
    }
}
