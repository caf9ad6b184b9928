//! Runs a Kubernetes Pod manifest under podman, field by field.
//!
//! podman 4.3 (Debian 12) `kube play` cannot run the manifest `neuro job manifest` prints: it
//! refuses an init container with a `startupProbe` (native sidecars, `restartPolicy: Always`
//! on an init container, are newer than its Kubernetes API), and it ignores `subPath` on
//! `emptyDir` volumes. So this module plays the kubelet's part with podman commands, in the
//! kubelet's order: volumes on the node, init containers one by one (a sidecar is started and
//! its startup probe polled until it passes), then the containers. Every field of the manifest
//! is translated or refused: an unknown field fails the test rather than being skipped.
//!
//! One deviation: the pod joins the host's network (`--network host`), so that it reaches the
//! test's `secretd` on a loopback address, as a cluster pod reaches the service's address.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `podman`, with the repository's engine configuration unless one is set.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        c.env(
            "CONTAINERS_CONF",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../container/podman/containers.conf"),
        );
    }
    c
}

/// Runs podman and asserts success; returns stdout.
#[track_caller]
pub fn podman_ok(args: &[&str]) -> String {
    let o = podman()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("podman");
    assert!(
        o.status.success(),
        "podman {args:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Panics if `v` has a key this translator does not handle.
#[track_caller]
fn only(v: &Value, allowed: &[&str], what: &str) {
    for k in v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not a map"))
        .keys()
    {
        assert!(
            allowed.contains(&k.as_str()),
            "{what}: field '{k}' is not translated to podman"
        );
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The fields of a container this translator knows.
const CONTAINER_FIELDS: [&str; 7] = [
    "name",
    "image",
    "command",
    "args",
    "env",
    "securityContext",
    "volumeMounts",
];

/// Images built for one test; removed afterwards.
pub struct Images(pub Vec<String>);

/// Held while images are built or removed: a build reuses the layers of an earlier identical
/// build (podman's cache), and removing that earlier image in the middle of the build pulls
/// the layer from under it ("layer not known"), which made the pod tests fail when they ran
/// side by side.
pub fn image_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Images {
    fn drop(&mut self) {
        let _held = image_lock();
        for i in &self.0 {
            let _ = podman().args(["rmi", "-f", i]).output();
        }
    }
}

/// A pod being played. Dropping it removes the containers, the volumes and every mount.
pub struct Pod {
    pub name: String,
    /// The node's directory for this pod's volumes: a shared mount, so that mounts made in a
    /// container with `Bidirectional` propagation come back out.
    pub dir: PathBuf,
    volumes: HashMap<String, PathBuf>,
    spec: Value,
    /// Sidecars started, in order.
    pub sidecars: Vec<String>,
}

impl Pod {
    /// Creates the pod and its volumes. `secrets` are the Secret documents it may refer to.
    pub fn create(pod: &Value, secrets: &[&Value], dir: &Path) -> Pod {
        only(pod, &["apiVersion", "kind", "metadata", "spec"], "Pod");
        assert_eq!(pod["kind"], "Pod");
        let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        let spec = pod["spec"].clone();
        only(
            &spec,
            &[
                "restartPolicy",
                "automountServiceAccountToken",
                "enableServiceLinks",
                "securityContext",
                "volumes",
                "initContainers",
                "containers",
            ],
            "Pod spec",
        );
        // No restarts, no service account token, no service variables: podman adds none of
        // these, so only the values that need no translation are accepted.
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["enableServiceLinks"], false);
        only(
            &spec["securityContext"],
            &["seccompProfile"],
            "pod securityContext",
        );
        // podman applies its default seccomp profile, the runtime default.
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );

        std::fs::create_dir_all(dir).unwrap();
        // From here on, dropping `p` undoes whatever was done.
        let mut p = Pod {
            name: name.clone(),
            dir: dir.to_owned(),
            volumes: HashMap::new(),
            spec: spec.clone(),
            sidecars: Vec::new(),
        };
        let d = dir.to_str().unwrap();
        run_ok("mount", &["--bind", d, d]);
        run_ok("mount", &["--make-rshared", d]);
        for v in spec["volumes"].as_array().unwrap() {
            let vname = v["name"].as_str().unwrap();
            let path = dir.join(format!("vol-{vname}"));
            std::fs::create_dir(&path).unwrap();
            if let Some(e) = v.get("emptyDir") {
                only(v, &["name", "emptyDir"], "volume");
                only(e, &["medium", "sizeLimit"], "emptyDir");
                // The kubelet makes emptyDir world-writable; medium Memory is a tmpfs.
                if e["medium"] == "Memory" {
                    let size = e["sizeLimit"].as_str().unwrap_or("64Mi").replace("Mi", "m");
                    run_ok(
                        "mount",
                        &[
                            "-t",
                            "tmpfs",
                            "-o",
                            &format!("size={size},mode=0777"),
                            "tmpfs",
                        ]
                        .into_iter()
                        .chain([path.to_str().unwrap()])
                        .collect::<Vec<_>>(),
                    );
                }
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
            } else if let Some(s) = v.get("secret") {
                only(v, &["name", "secret"], "volume");
                only(s, &["secretName", "defaultMode"], "secret volume");
                let sname = s["secretName"].as_str().unwrap();
                let doc = secrets
                    .iter()
                    .find(|d| d["metadata"]["name"] == sname)
                    .unwrap_or_else(|| panic!("no Secret '{sname}' in the manifest"));
                only(
                    doc,
                    &["apiVersion", "kind", "metadata", "type", "stringData"],
                    "Secret",
                );
                let mode = s["defaultMode"].as_u64().unwrap_or(0o644) as u32;
                for (k, val) in doc["stringData"].as_object().unwrap() {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .open(path.join(k))
                        .unwrap();
                    f.write_all(val.as_str().unwrap().as_bytes()).unwrap();
                }
            } else {
                panic!("volume {v}: only emptyDir and secret volumes are translated");
            }
            p.volumes.insert(vname.to_owned(), path);
        }
        remove_orphans();
        podman_ok(&[
            "pod",
            "create",
            "--name",
            &name,
            "--network",
            "host",
            "--label",
            &format!("neuro-e2e-pid={}", std::process::id()),
            "--label",
            &format!("neuro-e2e-dir={d}"),
        ]);
        p
    }

    fn container_name(&self, c: &Value) -> String {
        format!("{}-{}", self.name, c["name"].as_str().unwrap())
    }

    /// Starts one container of the manifest, detached.
    fn start(&self, c: &Value) {
        let args = self.run_args(c);
        podman_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// `podman run -d` arguments for one container of the manifest.
    fn run_args(&self, c: &Value) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into(), "--pod".into(), self.name.clone()];
        a.extend(["--name".into(), self.container_name(c)]);
        a.push("-d".into());
        if let Some(sc) = c.get("securityContext") {
            only(
                sc,
                &[
                    "privileged",
                    "allowPrivilegeEscalation",
                    "capabilities",
                    "runAsUser",
                    "runAsGroup",
                    "runAsNonRoot",
                    "readOnlyRootFilesystem",
                ],
                "securityContext",
            );
            if sc["privileged"] == true {
                a.push("--privileged".into());
            }
            if sc["allowPrivilegeEscalation"] == false {
                a.extend(["--security-opt".into(), "no-new-privileges".into()]);
            }
            if let Some(caps) = sc.get("capabilities") {
                only(caps, &["drop", "add"], "capabilities");
                for d in strs(&caps["drop"]) {
                    a.extend(["--cap-drop".into(), d.to_lowercase()]);
                }
                for d in strs(&caps["add"]) {
                    a.extend(["--cap-add".into(), d.to_lowercase()]);
                }
            }
            if let Some(u) = sc["runAsUser"].as_u64() {
                let g = sc["runAsGroup"].as_u64().unwrap_or(u);
                a.extend(["--user".into(), format!("{u}:{g}")]);
            }
            if sc["runAsNonRoot"] == true {
                assert!(
                    sc["runAsUser"].as_u64().is_some_and(|u| u != 0),
                    "runAsNonRoot without a non-zero runAsUser"
                );
            }
            if sc["readOnlyRootFilesystem"] == true {
                a.push("--read-only".into());
            }
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            only(
                m,
                &[
                    "name",
                    "mountPath",
                    "subPath",
                    "readOnly",
                    "mountPropagation",
                ],
                "volumeMount",
            );
            let mut src = self.volumes[m["name"].as_str().unwrap()].clone();
            if let Some(sub) = m["subPath"].as_str() {
                src = src.join(sub);
                assert!(src.exists(), "subPath '{}' does not exist", src.display());
            }
            let mut opts = vec![];
            if m["readOnly"] == true {
                opts.push("ro");
            }
            match m["mountPropagation"].as_str() {
                None | Some("None") => {}
                Some("HostToContainer") => opts.push("rslave"),
                Some("Bidirectional") => opts.push("rshared"),
                Some(o) => panic!("mountPropagation {o}"),
            }
            let mut spec = format!("{}:{}", src.display(), m["mountPath"].as_str().unwrap());
            if !opts.is_empty() {
                spec = format!("{spec}:{}", opts.join(","));
            }
            a.extend(["-v".into(), spec]);
        }
        for e in c["env"].as_array().into_iter().flatten() {
            only(e, &["name", "value"], "env");
            a.extend([
                "-e".into(),
                format!(
                    "{}={}",
                    e["name"].as_str().unwrap(),
                    e["value"].as_str().unwrap()
                ),
            ]);
        }
        let command = strs(&c["command"]);
        if !command.is_empty() {
            // Kubernetes' `command` replaces the image's entrypoint (and its CMD).
            a.extend([
                "--entrypoint".into(),
                serde_json::to_string(&command).unwrap(),
            ]);
        }
        a.push(c["image"].as_str().unwrap().to_owned());
        a.extend(strs(&c["args"]));
        a
    }

    /// The init containers in order: each runs to success, except a sidecar
    /// (`restartPolicy: Always`), which is started and must pass its startup probe.
    /// A sidecar that exits before its probe passes is an error (the kubelet would restart it
    /// with back-off, and the containers would not start either).
    pub fn start_init(&mut self) -> Result<(), String> {
        for c in self.spec["initContainers"].as_array().unwrap().clone() {
            let fields = [
                CONTAINER_FIELDS.as_slice(),
                &["restartPolicy", "startupProbe"],
            ];
            only(&c, &fields.concat(), "init container");
            let name = self.container_name(&c);
            if c["restartPolicy"] == "Always" {
                self.start(&c);
                self.sidecars.push(name.clone());
                if let Some(p) = c.get("startupProbe") {
                    self.probe(&name, p)?;
                }
            } else {
                assert!(
                    c.get("startupProbe").is_none(),
                    "a probe on a plain init container"
                );
                self.start(&c);
                let (code, logs) = self.wait(&name, Duration::from_secs(60));
                assert_eq!(code, 0, "init container {name} failed: {logs}");
            }
        }
        Ok(())
    }

    /// Polls an exec startup probe the way the kubelet does: every `periodSeconds`, at most
    /// `failureThreshold` times.
    fn probe(&self, name: &str, p: &Value) -> Result<(), String> {
        only(
            p,
            &["exec", "periodSeconds", "failureThreshold"],
            "startupProbe",
        );
        only(&p["exec"], &["command"], "startupProbe exec");
        let cmd = strs(&p["exec"]["command"]);
        let period = Duration::from_secs(p["periodSeconds"].as_u64().unwrap_or(10));
        let tries = p["failureThreshold"].as_u64().unwrap_or(3);
        for _ in 0..tries {
            let o = podman().arg("exec").arg(name).args(&cmd).output().unwrap();
            if o.status.success() {
                return Ok(());
            }
            let running = podman_ok(&["inspect", "-f", "{{.State.Running}}", name]);
            if running.trim() != "true" {
                let code = podman_ok(&["inspect", "-f", "{{.State.ExitCode}}", name]);
                return Err(format!(
                    "sidecar {name} exited with {}: {}",
                    code.trim(),
                    self.logs(name)
                ));
            }
            std::thread::sleep(period);
        }
        Err(format!(
            "sidecar {name} never passed its startup probe: {}",
            self.logs(name)
        ))
    }

    /// Starts the pod's containers; returns their names in podman.
    pub fn start_containers(&self) -> Vec<String> {
        let cs = self.spec["containers"].as_array().unwrap();
        cs.iter()
            .map(|c| {
                only(c, &CONTAINER_FIELDS, "container");
                self.start(c);
                self.container_name(c)
            })
            .collect()
    }

    /// Waits for a container to exit (killing it after `timeout`); returns code and logs.
    pub fn wait(&self, name: &str, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let running = podman_ok(&["inspect", "-f", "{{.State.Running}}", name]);
            if running.trim() != "true" {
                break;
            }
            if Instant::now() > deadline {
                let _ = podman().args(["kill", name]).output();
                panic!("{name} still ran after {timeout:?}: {}", self.logs(name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let code = podman_ok(&["inspect", "-f", "{{.State.ExitCode}}", name]);
        (code.trim().parse().unwrap(), self.logs(name))
    }

    /// stdout and stderr of a container, stdout first.
    pub fn logs(&self, name: &str) -> String {
        let o: Output = podman().args(["logs", name]).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// Stops the sidecars as the kubelet does when the pod ends (SIGTERM, then SIGKILL after
    /// the grace period); returns their exit codes.
    pub fn stop_sidecars(&self) -> Vec<i32> {
        self.sidecars
            .iter()
            .rev()
            .map(|s| {
                podman_ok(&["stop", "-t", "10", s]);
                podman_ok(&["inspect", "-f", "{{.State.ExitCode}}", s])
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    /// Mounts under the pod's directory on the node, from this process's mount table.
    pub fn node_mounts(&self) -> Vec<String> {
        let dir = self.dir.to_str().unwrap();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|m| m.starts_with(dir) && m != dir)
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = podman()
            .args(["pod", "rm", "-f", "-t", "0", &self.name])
            .output();
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the pods (and their node mounts) of earlier test processes that were killed before
/// their guards could run.
fn remove_orphans() {
    let pods: Value = serde_json::from_str(&podman_ok(&["pod", "ls", "--format", "json"])).unwrap();
    for pod in pods.as_array().into_iter().flatten() {
        let labels = &pod["Labels"];
        let Some(pid) = labels["neuro-e2e-pid"].as_str() else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let _ = podman()
            .args(["pod", "rm", "-f", "-t", "0", pod["Name"].as_str().unwrap()])
            .output();
        if let Some(dir) = labels["neuro-e2e-dir"].as_str() {
            let _ = Command::new("umount").args(["-R", "-l", dir]).output();
        }
    }
}

#[track_caller]
fn run_ok(prog: &str, args: &[&str]) {
    let o = Command::new(prog).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
