//! `neuro job manifest`: a Kubernetes Pod that runs a job with its secrets. The renderer is
//! `secrets_manifest` (the console's "Download manifest" uses it too); this module
//! parses the flags, creates the job and writes the output.

use secrets_core::exit::ExitClass;
use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use secrets_client::Client;

use crate::failure;
use crate::run::{Connection, JobArgs, ParsedJob};
use secrets_manifest::{self as pod, ManifestError, PodInputs, PodJob};

#[derive(Debug, Args)]
pub struct ManifestArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// The job's container image (any image: secret-inject is copied into the pod)
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// The service URL as seen from inside the cluster [default: the URL this CLI uses]
    #[arg(long, value_name = "URL")]
    pub service_url: Option<String>,
    /// Image of the secretfs sidecar (built by container/build.sh)
    #[arg(long, value_name = "IMAGE", env = "NEURO_SECRETFS_IMAGE",
          default_value_t = pod::default_secretfs_image())]
    pub secretfs_image: String,
    /// Image that holds secret-inject (built by container/build.sh)
    #[arg(long, value_name = "IMAGE", env = "NEURO_INJECT_IMAGE",
          default_value_t = pod::default_inject_image())]
    pub inject_image: String,
    /// UID[:GID] the job runs as; its secret files belong to it [default: the image's user,
    /// files owned by root]
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<(u32, u32)>,
    /// How long the job token stays valid, e.g. 6h or 2days [default: the service's, 24h]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// Write the manifest to FILE (mode 0600) instead of standard output
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The job's command and arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("invalid user '{s}': expected UID or UID:GID, numbers");
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

/// Checks what the service cannot: the command is text, paths stay clear of the pod's own.
fn check(args: &ManifestArgs, job: &ParsedJob) -> anyhow::Result<Vec<String>> {
    pod::check(&args.image, &job.volumes).map_err(invalid)?;
    args.command
        .iter()
        .map(|a| {
            a.to_str().map(str::to_owned).ok_or_else(|| {
                failure(
                    ExitClass::Invalid,
                    "the command must be valid UTF-8 to go into a manifest".to_owned(),
                )
            })
        })
        .collect()
}

fn invalid(e: ManifestError) -> anyhow::Error {
    match e {
        ManifestError::Invalid(m) => failure(ExitClass::Invalid, m),
        other => other.into(),
    }
}

/// The Secret and the Pod, as two YAML documents.
pub fn render(
    args: &ManifestArgs,
    job: &ParsedJob,
    command: Vec<String>,
    inp: &PodInputs,
) -> anyhow::Result<String> {
    let spec = PodJob {
        image: &args.image,
        secretfs_image: &args.secretfs_image,
        inject_image: &args.inject_image,
        user: args.user,
        volumes: &job.volumes,
        secret_env: &job.secret_env,
        plain: &job.plain,
        command: &command,
    };
    Ok(pod::render(&spec, inp)?)
}

/// Creates the job and prints (or writes) its manifest.
pub async fn manifest(
    client: &Client,
    conn: &Connection,
    args: &ManifestArgs,
) -> anyhow::Result<()> {
    let mut job = args.job.parse()?;
    let command = check(args, &job)?;
    if let Some(ttl) = args.ttl {
        job.spec.ttl_s = Some(ttl.as_secs().max(1));
    }
    let url = args.service_url.clone().unwrap_or_else(|| conn.url.clone());
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(failure(
            ExitClass::Invalid,
            format!("invalid --service-url '{url}': expected http://HOST[:PORT] or https://..."),
        ));
    }
    let ca_pem = match &conn.ca_file {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
            failure(
                ExitClass::Invalid,
                format!("cannot read CA file '{}': {e}", p.display()),
            )
        })?),
        None => None,
    };
    let created = client.create_job(&job.spec).await?;
    let id = created.job_id.clone();
    let inputs = PodInputs {
        job_id: id.as_str(),
        expires_at: &created.expires_at,
        token: &created.token,
        url: &url,
        ca_pem: ca_pem.as_deref(),
    };
    let written = render(args, &job, command, &inputs).and_then(|text| match &args.output {
        Some(p) => Ok(crate::private::write_private(p, text.as_bytes())?),
        None => Ok(std::io::stdout().lock().write_all(text.as_bytes())?),
    });
    if let Err(e) = written {
        // Nobody can use the job without its manifest: revoke it rather than leave it.
        let _ = client.delete_job(&id).await;
        return Err(e);
    }
    eprintln!(
        "neuro: job {} created; its token expires at {}. Revoke it when the pod is done: neuro job rm {}",
        id, created.expires_at, id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        args: ManifestArgs,
    }

    /// The renderer's whole output for a job with both kinds of mapping, a private CA and a
    /// user, against `src/snapshots/job_manifest.yaml`. `UPDATE_SNAPSHOTS=1 cargo test -p
    /// secrets-cli` rewrites the file; review its diff like code.
    #[test]
    fn manifest_snapshot() {
        let cmd = Cmd::try_parse_from([
            "manifest",
            "--image",
            "python:3.12",
            "--secretfs-image",
            "registry.example/neuro-secretfs:1",
            "--inject-image",
            "registry.example/neuro-secret-inject:1",
            "--user",
            "1000:100",
            "--volume",
            "secret:secret-password:/var/secrets/secret-password.txt",
            "--volume",
            "secret:/bob/aws:/root/.aws/credentials",
            "--env",
            "mypass:secret:secret-password",
            "--env",
            "MODE=train",
            "--",
            "python",
            "train.py",
            "--epochs=3",
        ])
        .unwrap();
        let job = cmd.args.job.parse().unwrap();
        let command = check(&cmd.args, &job).unwrap();
        let token = secrets_core::Token::new("nst.0123456789abcdef.not-a-real-token".into());
        let inputs = PodInputs {
            job_id: "job-0123456789abcdef",
            expires_at: "2026-11-29T10:00:00Z",
            token: &token,
            url: "https://secretd.example:8443",
            ca_pem: Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
        };
        let got = render(&cmd.args, &job, command, &inputs).unwrap();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/snapshots/job_manifest.yaml"
        );
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(path, &got).unwrap();
        }
        let want = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e} (UPDATE_SNAPSHOTS=1 writes it)"));
        assert_eq!(
            got, want,
            "the manifest changed; UPDATE_SNAPSHOTS=1 rewrites {path}"
        );
    }
}
