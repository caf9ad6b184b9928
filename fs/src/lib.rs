//! `secretfs`: the FUSE sidecar that serves a job's secrets at the paths it asked for.
//!
//! One FUSE session at a private mount root holds every secret as a file (`0`, `1`, ...) and a
//! status area (`.status`); each file is bind-mounted read-only onto its requested path.
//! Values are fetched once before the ready file appears, then refreshed in the background
//! from the service's change feed; no filesystem operation ever waits on the network.
//! `run` is the whole life: arguments (`args`), the start sequence (`start`), serving with
//! the refresh loop (`refresh`) until SIGTERM, and the report of a failed start (`failure`).

pub mod adapter;
pub mod args;
pub mod error;
pub mod failure;
pub mod files;
pub mod harden;
pub mod mounts;
pub mod paths;
pub mod refresh;
pub mod start;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrets_client::Client;
use secrets_core::ExitClass;

pub use crate::args::Args;
use crate::failure::fail;
pub use crate::failure::{ErrorFile, Failure, exit_class, exit_code};
use crate::files::{Files, FilesConfig};
use crate::start::{Mounted, Shutdown};

/// Runs secretfs until SIGTERM or SIGINT. When it fails to start and `--error-file` is given,
/// the failures are written there too (see `secrets_core::handoff`).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(ready) = &args.check_ready {
        return Ok(if ready.exists() {
            ExitCode::SUCCESS
        } else {
            eprintln!("secretfs: not ready: '{}' does not exist", ready.display());
            ExitCode::FAILURE
        });
    }
    let report_to = args
        .error_file
        .as_deref()
        .map(ErrorFile::open)
        .transpose()?;
    let r = serve(args).await;
    if let (Err(e), Some(f)) = (&r, &report_to)
        && let Err(w) = f.write(&failure::report(e))
    {
        eprintln!("secretfs: {w:#}");
    }
    r
}

async fn serve(args: Args) -> anyhow::Result<ExitCode> {
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
    let maps = args::mappings(&args)?;
    let token = args::read_token(&args)?;
    let cfg = args.conn.client_config(token, Duration::from_secs(40));
    let client = Client::new(&cfg).map_err(|e| fail(ExitClass::from(&e), e.to_string()))?;
    let deadline = Instant::now() + args.conn.timeout;
    // Learn the revision before resolving, so no change between the two is missed.
    let since = client.watch(None, 0).await.ok().map(|w| w.revision);
    let initial = tokio::select! {
        r = start::resolve_initial(&client, &maps, deadline) => r?,
        () = stop.wait() => {
            eprintln!("secretfs: stopped before anything was mounted");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let files = Arc::new(Files::new(
        FilesConfig {
            cache: args.cache,
            uid: args.uid,
            gid: args.gid,
            mode: args.mode,
        },
        maps,
        initial,
        start::audit_sink(args.audit_log.as_deref())?,
    ));
    let mut mounted = Mounted::default();
    let notifier = start::mount_all(&files, &args, &mut mounted)?;
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
    let task = tokio::spawn(refresh::refresh(client, files.clone(), notifier, since));
    stop.wait().await;
    task.abort();
    mounted.teardown();
    Ok(ExitCode::SUCCESS)
}
