//! `neuro job manifest`: a Kubernetes Pod that runs a job with its secrets.
//!
//! The layout (container/README.md explains it for operators):
//! * a Secret holds the job token; the pod mounts it as a file, so the token is never in the
//!   pod spec in plain text;
//! * an init container copies `secret-inject` from its image into an in-memory volume, so any
//!   job image can use it as its entrypoint;
//! * `secretfs` runs as a native sidecar (an init container with `restartPolicy: Always`) with
//!   a startup probe on its ready file: the job container starts only once every secret is
//!   served. It mounts its FUSE filesystem inside a shared volume with `Bidirectional`
//!   propagation, and each file reaches its exact path in the job container as a `subPath`
//!   mount of that volume;
//! * every container but the sidecar runs without capabilities or privilege escalation.

use secrets_core::exit::ExitClass;
use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use secrets_core::client::Client;
use serde_json::json;

use crate::failure;
use crate::run::{Connection, JobArgs, ParsedJob};

/// Where the pod's own volumes are mounted; job paths may not lie under it.
const POD_DIR: &str = "/neuro";
const TOKEN_DIR: &str = "/neuro/token";
const BIN_DIR: &str = "/neuro/bin";
const SECRETS_DIR: &str = "/neuro/secrets";
/// The FUSE mount root, as a path inside the `neuro-secrets` volume.
const FS_SUBDIR: &str = "fs";
const READY_FILE: &str = "/neuro/secrets/ready";
/// An unprivileged uid for the container that only copies a file.
const NOBODY: u32 = 65534;

const VERSION: &str = env!("CARGO_PKG_VERSION");

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
          default_value_t = format!("localhost/neuro-secretfs:{VERSION}"))]
    pub secretfs_image: String,
    /// Image that holds secret-inject (built by container/build.sh)
    #[arg(long, value_name = "IMAGE", env = "NEURO_INJECT_IMAGE",
          default_value_t = format!("localhost/neuro-secret-inject:{VERSION}"))]
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

/// Everything the pod needs besides the job's flags.
#[derive(Debug)]
pub struct PodInputs<'a> {
    pub job_id: &'a str,
    pub expires_at: &'a str,
    pub token: &'a secrets_core::Token,
    pub url: &'a str,
    /// PEM text of the CA to trust, when the service has a private one.
    pub ca_pem: Option<&'a str>,
}

/// Checks what the service cannot: the command is text, paths stay clear of the pod's own.
fn check(args: &ManifestArgs, job: &ParsedJob) -> anyhow::Result<Vec<String>> {
    if args.image.trim().is_empty() || args.image.contains(char::is_whitespace) {
        return Err(failure(
            ExitClass::Invalid,
            format!("invalid --image '{}': an image reference", args.image),
        ));
    }
    for v in &job.volumes {
        if v.path.starts_with(POD_DIR) {
            return Err(failure(
                ExitClass::Invalid,
                format!(
                    "--volume path '{}' is under {POD_DIR}, which the pod uses for its own mounts",
                    v.path.display()
                ),
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(v) = job.volumes.iter().find(|v| !seen.insert(&v.path)) {
        return Err(failure(
            ExitClass::Invalid,
            format!("two secrets are mapped to '{}'", v.path.display()),
        ));
    }
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

/// The Secret and the Pod, as two YAML documents.
pub fn render(
    args: &ManifestArgs,
    job: &ParsedJob,
    command: Vec<String>,
    inp: &PodInputs,
) -> anyhow::Result<String> {
    let name = format!("neuro-{}", inp.job_id);
    let labels = json!({"app.kubernetes.io/managed-by": "neuro", "neuro.io/job": inp.job_id});
    let mut token_data = json!({ "token": inp.token.expose() });
    let mut conn = vec![
        "--url".to_owned(),
        inp.url.to_owned(),
        "--token-file".to_owned(),
        format!("{TOKEN_DIR}/token"),
    ];
    if let Some(pem) = inp.ca_pem {
        token_data["ca.crt"] = json!(pem);
        conn.extend(["--ca-file".to_owned(), format!("{TOKEN_DIR}/ca.crt")]);
    }
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels},
        "type": "Opaque",
        "stringData": token_data,
    });

    // Least privilege: no capabilities, no way to gain any.
    let unprivileged = || {
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        })
    };
    let token_mount = json!({"name": "neuro-token", "mountPath": TOKEN_DIR, "readOnly": true});
    let mut volumes = vec![
        json!({"name": "neuro-token", "secret": {
            "secretName": name,
            "defaultMode": if args.user.is_some() { 0o440 } else { 0o400 },
        }}),
        json!({"name": "neuro-bin", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}),
    ];
    let mut install_sc = unprivileged();
    install_sc["runAsUser"] = json!(NOBODY);
    install_sc["runAsGroup"] = json!(NOBODY);
    install_sc["runAsNonRoot"] = json!(true);
    install_sc["readOnlyRootFilesystem"] = json!(true);
    let mut init = vec![json!({
        "name": "neuro-install",
        "image": args.inject_image,
        "command": ["/secret-inject", "--install", format!("{BIN_DIR}/secret-inject")],
        "securityContext": install_sc,
        "volumeMounts": [{"name": "neuro-bin", "mountPath": BIN_DIR}],
    })];

    let (uid, gid) = args.user.unwrap_or((0, 0));
    let mut job_mounts = vec![
        json!({"name": "neuro-bin", "mountPath": BIN_DIR, "readOnly": true}),
        token_mount.clone(),
    ];
    if !job.volumes.is_empty() {
        volumes.push(
            json!({"name": "neuro-secrets", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        );
        let mut fs_args = conn.clone();
        fs_args.extend([
            "--root-only".to_owned(),
            "--mount-root".to_owned(),
            format!("{SECRETS_DIR}/{FS_SUBDIR}"),
            "--ready-file".to_owned(),
            READY_FILE.to_owned(),
            "--uid".to_owned(),
            uid.to_string(),
            "--gid".to_owned(),
            gid.to_string(),
        ]);
        for (i, v) in job.volumes.iter().enumerate() {
            let path = v.path.display().to_string();
            fs_args.extend(["--volume".to_owned(), format!("{}:{path}", v.secret)]);
            job_mounts.push(json!({
                "name": "neuro-secrets",
                "mountPath": path,
                "subPath": format!("{FS_SUBDIR}/{}", secrets_core::secretfs_file_name(i)),
                "readOnly": true,
            }));
        }
        init.push(json!({
            "name": "neuro-secretfs",
            "image": args.secretfs_image,
            "restartPolicy": "Always",
            "args": fs_args,
            // Mounting FUSE needs CAP_SYS_ADMIN and /dev/fuse; Bidirectional propagation,
            // which carries the mount out to the node and into the job container, is
            // allowed only for privileged containers.
            "securityContext": {"privileged": true},
            "startupProbe": {
                "exec": {"command": ["/secretfs", "--check-ready", READY_FILE]},
                "periodSeconds": 1,
                "failureThreshold": 120,
            },
            "volumeMounts": [
                {"name": "neuro-secrets", "mountPath": SECRETS_DIR, "mountPropagation": "Bidirectional"},
                token_mount,
            ],
        }));
    }

    let mut entry = vec![format!("{BIN_DIR}/secret-inject")];
    entry.extend(conn);
    for (name, uri) in &job.secret_env {
        entry.extend(["--env".to_owned(), format!("{name}={uri}")]);
    }
    entry.push("--".to_owned());
    let mut job_sc = unprivileged();
    if let Some((u, g)) = args.user {
        job_sc["runAsUser"] = json!(u);
        job_sc["runAsGroup"] = json!(g);
    }
    let mut container = json!({
        "name": "job",
        "image": args.image,
        "command": entry,
        "args": command,
    });
    if !job.plain.is_empty() {
        container["env"] = job
            .plain
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect();
    }
    container["securityContext"] = job_sc;
    container["volumeMounts"] = json!(job_mounts);

    let mut pod_sc = json!({"seccompProfile": {"type": "RuntimeDefault"}});
    if let Some((_, g)) = args.user {
        // The token file's group, so that the job's user can read it.
        pod_sc["fsGroup"] = json!(g);
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"neuro.io/token-expires-at": inp.expires_at},
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "securityContext": pod_sc,
            "volumes": volumes,
            "initContainers": init,
            "containers": [container],
        },
    });
    let mut out = String::from(
        "# neuro job manifest: the job token is in the Secret below; keep this private.\n",
    );
    for doc in [secret, pod] {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&doc)?);
    }
    Ok(out)
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
