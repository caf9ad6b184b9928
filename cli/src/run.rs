//! `neuro run`: a job on this machine. Creates the job through the API, starts secretfs in a
//! private mount namespace for the files, runs the command there through secret-inject for
//! the variables, and afterwards unmounts everything and deletes the job (revoking its token).

use secrets_core::exit::ExitClass;
use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use secrets_client::Client;
use secrets_core::api::{JobSpec, JobVolume};
use secrets_core::handoff::{MAX_STATUS_FILE, StartFailure};
use secrets_core::{EnvSpec, JobId, VolumeMapping};

use crate::failure;
use crate::private::write_private;

/// The secrets and variables of a job: the flags `neuro run` and `neuro job manifest` share.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// secret:KEY:/PATH: the secret as a read-only file at PATH; repeatable
    #[arg(long = "volume", value_name = "SPEC")]
    pub volumes: Vec<String>,
    /// NAME=secret:KEY or NAME:secret:KEY (a secret), or NAME=VALUE (a plain variable)
    #[arg(long = "env", value_name = "SPEC")]
    pub envs: Vec<String>,
}

/// A job's flags, checked: the spec the service gets, and the plain variables.
#[derive(Debug)]
pub struct ParsedJob {
    pub spec: JobSpec,
    pub volumes: Vec<VolumeMapping>,
    /// `NAME=secret:KEY` mappings, in the order given.
    pub secret_env: Vec<(String, String)>,
    pub plain: Vec<(String, String)>,
}

impl JobArgs {
    pub fn parse(&self) -> anyhow::Result<ParsedJob> {
        let volumes = self
            .volumes
            .iter()
            .map(|v| VolumeMapping::parse(v))
            .collect::<Result<Vec<_>, _>>()?;
        let mut spec = JobSpec::default();
        let (mut secret_env, mut plain) = (Vec::new(), Vec::new());
        let mut seen = std::collections::HashSet::new();
        for e in &self.envs {
            let parsed = EnvSpec::parse(e)?;
            let name = match &parsed {
                EnvSpec::Secret(m) => m.name.to_string(),
                EnvSpec::Plain { name, .. } => name.to_string(),
            };
            if !seen.insert(name.clone()) {
                return Err(failure(
                    ExitClass::Invalid,
                    format!("--env '{name}' is given twice"),
                ));
            }
            match parsed {
                EnvSpec::Secret(m) => {
                    let uri = m.secret.to_string();
                    spec.secret_env.insert(name.clone(), uri.clone());
                    secret_env.push((name, uri));
                }
                EnvSpec::Plain { value, .. } => plain.push((name, value)),
            }
        }
        spec.secret_volumes = volumes
            .iter()
            .map(|v| JobVolume {
                src_secret_uri: v.secret.to_string(),
                dst_path: v.path.display().to_string(),
            })
            .collect();
        Ok(ParsedJob {
            spec,
            volumes,
            secret_env,
            plain,
        })
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// How secretfs and secret-inject reach the service.
#[derive(Debug)]
pub struct Connection {
    pub url: String,
    pub ca_file: Option<PathBuf>,
}

/// A binary of this project: next to `neuro`, else on PATH.
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// What must be undone when the job ends, however it ends.
struct Job<'a> {
    client: &'a Client,
    id: JobId,
    dir: PathBuf,
    secretfs: Option<std::process::Child>,
}

impl Job<'_> {
    async fn finish(mut self) {
        if let Some(mut fs) = self.secretfs.take() {
            let _ = kill(Pid::from_raw(fs.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = fs.kill();
            let _ = fs.wait();
        }
        if let Err(e) = self.client.delete_job(&self.id).await {
            eprintln!("neuro: warning: could not delete job {}: {e}", self.id);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn run(client: &Client, conn: &Connection, args: &RunArgs) -> anyhow::Result<u8> {
    let ParsedJob {
        spec,
        volumes,
        plain,
        ..
    } = args.job.parse()?;
    if !volumes.is_empty() && !nix::unistd::geteuid().is_root() {
        return Err(failure(
            ExitClass::Forbidden,
            "--volume needs root: the files are mounted (FUSE) in a private mount namespace",
        ));
    }
    let created = client.create_job(&spec).await?;
    // Checked: the id names a directory that is removed afterwards.
    let id = created.job_id.clone();
    let dir = std::env::temp_dir().join(format!("neuro-run-{id}"));
    let mut job = Job {
        client,
        id,
        dir: dir.clone(),
        secretfs: None,
    };
    let r = start_and_wait(
        &mut job,
        conn,
        &spec,
        &plain,
        &created.token,
        args,
        !volumes.is_empty(),
    )
    .await;
    job.finish().await;
    r
}

/// Why secretfs did not start: its `--error-file` report (`secrets_core::handoff`), else
/// its exit status (it was killed, or failed before it could open the report's directory).
fn secretfs_failed(error_file: &Path, st: std::process::ExitStatus) -> anyhow::Error {
    match read_report(error_file) {
        Some(r) => failure(
            r.class(),
            format!("secretfs could not serve the files: {}", r.summary()),
        ),
        None => failure(
            st.code()
                .and_then(ExitClass::from_code)
                .unwrap_or(ExitClass::Other),
            format!("secretfs could not serve the files ({st}) and wrote no report"),
        ),
    }
}

/// The report secretfs wrote, if it wrote one that parses (at most `MAX_STATUS_FILE` bytes).
fn read_report(path: &Path) -> Option<StartFailure> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_STATUS_FILE + 1)
        .read_to_end(&mut raw)
        .ok()?;
    if raw.len() as u64 > MAX_STATUS_FILE {
        return None;
    }
    serde_json::from_slice(&raw).ok()
}

async fn start_and_wait(
    job: &mut Job<'_>,
    conn: &Connection,
    spec: &JobSpec,
    plain: &[(String, String)],
    token: &secrets_core::Token,
    args: &RunArgs,
    files: bool,
) -> anyhow::Result<u8> {
    let dir = job.dir.clone();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating '{}'", dir.display()))?;
    let (token_file, spec_file) = (dir.join("token"), dir.join("spec.json"));
    write_private(&token_file, token.expose().as_bytes())?;
    write_private(&spec_file, &serde_json::to_vec(spec)?)?;
    let mut common: Vec<OsString> = vec![
        "--url".into(),
        conn.url.clone().into(),
        "--token-file".into(),
        token_file.into(),
        "--spec".into(),
        spec_file.into(),
    ];
    if let Some(ca) = &conn.ca_file {
        common.extend(["--ca-file".into(), ca.clone().into()]);
    }
    let mut cmd = if files {
        let ready = dir.join("ready");
        let log = dir.join("secretfs.log");
        let error_file = dir.join("secretfs-error.json");
        let mut fs = std::process::Command::new("unshare");
        fs.args(["-m", "--propagation", "private", "--"])
            .arg(sibling("secretfs"))
            .args(&common)
            .arg("--mount-root")
            .arg(dir.join("root"))
            .arg("--ready-file")
            .arg(&ready)
            .arg("--audit-log")
            .arg(dir.join("audit.log"))
            .arg("--error-file")
            .arg(&error_file)
            .arg("--private")
            .args(["--uid", &nix::unistd::getuid().to_string()])
            .args(["--gid", &nix::unistd::getgid().to_string()])
            .env_remove("NEURO_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let child = fs.spawn().context("starting secretfs (unshare)")?;
        let pid = child.id();
        job.secretfs = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        // Looked up in secretfs's mount namespace: when a missing path needs an overlay on a
        // directory above the ready file (/tmp, say), the file exists only in there.
        let ready_seen = PathBuf::from(format!("/proc/{pid}/root"))
            .join(ready.strip_prefix("/").unwrap_or(&ready));
        while !ready_seen.exists() {
            if let Some(st) = job
                .secretfs
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(secretfs_failed(&error_file, st));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "secretfs was not ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut c = tokio::process::Command::new("nsenter");
        c.args(["-t", &pid.to_string(), "-m"])
            .arg(format!("--wd={}", std::env::current_dir()?.display()))
            .arg("--")
            .arg(sibling("secret-inject"));
        c
    } else {
        tokio::process::Command::new(sibling("secret-inject"))
    };
    cmd.args(&common)
        .arg("--")
        .args(&args.command)
        .envs(plain.iter().map(|(k, v)| (k, v)))
        .env_remove("NEURO_TOKEN");
    let mut child = cmd.spawn().context("starting the job")?;
    let pid = Pid::from_raw(child.id().context("job pid")? as i32);
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let status = loop {
        tokio::select! {
            st = child.wait() => break st?,
            _ = term.recv() => { let _ = kill(pid, Signal::SIGTERM); }
            _ = int.recv() => { let _ = kill(pid, Signal::SIGINT); }
            _ = hup.recv() => { let _ = kill(pid, Signal::SIGHUP); }
        }
    };
    use std::os::unix::process::ExitStatusExt as _;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => 128 + s as u8,
        _ => 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;

    /// neuro's side of the hand-off: a report in the documented format gives the class and
    /// every item; without one (or with a broken one), the exit status decides.
    #[test]
    fn secretfs_reports_are_read_and_the_exit_code_is_the_fallback() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secretfs-error.json");
        let status = std::process::ExitStatus::from_raw(77 << 8);
        std::fs::write(
            &p,
            r#"{"code":72,"errors":[{"path":"/a","uri":"secret://c/u/a","class":"not found","detail":"not found"},{"path":null,"uri":null,"class":"other","detail":"x"}]}"#,
        )
        .unwrap();
        let e = secretfs_failed(&p, status);
        assert_eq!(
            crate::exit_code(&e),
            72,
            "the report's code, not the status"
        );
        assert_eq!(
            e.to_string(),
            "secretfs could not serve the files: /a: secret://c/u/a: not found; x"
        );
        for broken in [&b"{\"code\":72"[..], b""] {
            std::fs::write(&p, broken).unwrap();
            let e = secretfs_failed(&p, status);
            assert_eq!(crate::exit_code(&e), 77);
            assert!(e.to_string().contains("wrote no report"), "{e}");
        }
        std::fs::remove_file(&p).unwrap();
        assert_eq!(crate::exit_code(&secretfs_failed(&p, status)), 77);
    }
}
