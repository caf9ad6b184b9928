//! The Kubernetes Pod that runs a job with its secrets (`neuro job manifest`, the console's
//! "Download manifest"): one renderer for both.
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

use serde_json::json;

use secrets_core::{Token, VolumeMapping, secretfs_file_name};

/// Where the pod's own volumes are mounted; job paths may not lie under it.
pub const POD_DIR: &str = "/neuro";
const TOKEN_DIR: &str = "/neuro/token";
const BIN_DIR: &str = "/neuro/bin";
const SECRETS_DIR: &str = "/neuro/secrets";
/// The FUSE mount root, as a path inside the `neuro-secrets` volume.
const FS_SUBDIR: &str = "fs";
const READY_FILE: &str = "/neuro/secrets/ready";
/// An unprivileged uid for the container that only copies a file.
const NOBODY: u32 = 65534;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The default image of the secretfs sidecar (built by container/build.sh).
pub fn default_secretfs_image() -> String {
    format!("localhost/neuro-secretfs:{VERSION}")
}

/// The default image that holds secret-inject (built by container/build.sh).
pub fn default_inject_image() -> String {
    format!("localhost/neuro-secret-inject:{VERSION}")
}

/// Why a manifest cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The job's description is unfit for a pod; the text names what.
    #[error("{0}")]
    Invalid(String),
    #[error("rendering the manifest as YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
}

/// The job as the pod runs it.
#[derive(Debug)]
pub struct PodJob<'a> {
    pub image: &'a str,
    pub secretfs_image: &'a str,
    pub inject_image: &'a str,
    /// UID and GID the job runs as; `None`: the image's user, files owned by root.
    pub user: Option<(u32, u32)>,
    pub volumes: &'a [VolumeMapping],
    /// `NAME` → secret URI as the user wrote it, in the order given.
    pub secret_env: &'a [(String, String)],
    /// Plain `NAME=VALUE` variables, in the order given.
    pub plain: &'a [(String, String)],
    pub command: &'a [String],
}

/// Everything the pod needs besides the job's description.
#[derive(Debug)]
pub struct PodInputs<'a> {
    pub job_id: &'a str,
    pub expires_at: &'a str,
    pub token: &'a Token,
    pub url: &'a str,
    /// PEM text of the CA to trust, when the service has a private one.
    pub ca_pem: Option<&'a str>,
}

/// Checks what the service cannot: an image reference, paths clear of the pod's own and
/// distinct.
pub fn check(image: &str, volumes: &[VolumeMapping]) -> Result<(), ManifestError> {
    if image.trim().is_empty() || image.contains(char::is_whitespace) {
        return Err(ManifestError::Invalid(format!(
            "invalid --image '{image}': an image reference"
        )));
    }
    if let Some(v) = volumes.iter().find(|v| v.path.starts_with(POD_DIR)) {
        return Err(ManifestError::Invalid(format!(
            "--volume path '{}' is under {POD_DIR}, which the pod uses for its own mounts",
            v.path.display()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(v) = volumes.iter().find(|v| !seen.insert(&v.path)) {
        return Err(ManifestError::Invalid(format!(
            "two secrets are mapped to '{}'",
            v.path.display()
        )));
    }
    Ok(())
}

/// The Secret and the Pod, as two YAML documents.
pub fn render(job: &PodJob, inp: &PodInputs) -> Result<String, ManifestError> {
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
            "defaultMode": if job.user.is_some() { 0o440 } else { 0o400 },
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
        "image": job.inject_image,
        "command": ["/secret-inject", "--install", format!("{BIN_DIR}/secret-inject")],
        "securityContext": install_sc,
        "volumeMounts": [{"name": "neuro-bin", "mountPath": BIN_DIR}],
    })];

    let (uid, gid) = job.user.unwrap_or((0, 0));
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
                "subPath": format!("{FS_SUBDIR}/{}", secretfs_file_name(i)),
                "readOnly": true,
            }));
        }
        init.push(json!({
            "name": "neuro-secretfs",
            "image": job.secretfs_image,
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
    for (name, uri) in job.secret_env {
        entry.extend(["--env".to_owned(), format!("{name}={uri}")]);
    }
    entry.push("--".to_owned());
    let mut job_sc = unprivileged();
    if let Some((u, g)) = job.user {
        job_sc["runAsUser"] = json!(u);
        job_sc["runAsGroup"] = json!(g);
    }
    let mut container = json!({
        "name": "job",
        "image": job.image,
        "command": entry,
        "args": job.command,
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
    if let Some((_, g)) = job.user {
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
