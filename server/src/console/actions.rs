//! The console's state-changing requests (JSON from its script): add, delete and share a
//! secret, revoke a grant, run a job and revoke it. Each is same-origin, carries the
//! session's CSRF token, and calls the domain operation a bearer-token request calls.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrets_core::api::{Grant, JobSpec, JobVolume};
use secrets_core::{Action, EnvSpec, JobId, SecretBytes, SecretKey, UserName, VolumeMapping};
use secrets_manifest::{self as pod, PodInputs, PodJob};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Console, json_error, same_origin};
use crate::domain::DomainError;
use crate::domain::sessions::Session;
use crate::error::ApiError;
use crate::serve::Peer;

/// The session of a state-changing request, once it has passed the origin and CSRF checks,
/// and its place among the user's requests in flight.
async fn begin(c: &Console, h: &HeaderMap) -> Result<(Session, crate::limits::Admitted), Response> {
    let fail = |e: ApiError| json_error(e.status(), &e.to_string());
    same_origin(h).map_err(fail)?;
    let s = match c.session(h).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(json_error(
                StatusCode::UNAUTHORIZED,
                "your session has ended; log in again",
            ));
        }
        Err(e) => return Err(fail(e)),
    };
    let presented = h
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    s.check_csrf(presented)
        .map_err(|e| fail(ApiError::from(e)))?;
    let place = c
        .svc
        .inflight
        .admit(&format!("console-session {}", &s.csrf[..8]), &s.principal)
        .map_err(fail)?;
    Ok((s, place))
}

/// A domain operation's outcome, as the script takes it: `{"ok": true}` with `status`, or the
/// error's status and message.
fn relay<T>(status: StatusCode, r: Result<T, DomainError>) -> Response {
    match r {
        Ok(_) => (status, Json(json!({"ok": true}))).into_response(),
        Err(e) => {
            let e = ApiError::from(e);
            json_error(e.status(), &e.to_string())
        }
    }
}

/// A name the user typed, or the 400 that says what is wrong with it.
macro_rules! parsed {
    ($r:expr) => {
        match $r {
            Ok(v) => v,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    };
}

macro_rules! begin {
    ($c:expr, $h:expr) => {
        match begin(&$c, &$h).await {
            Ok(x) => x,
            Err(r) => return r,
        }
    };
}

/// The body of a console request; a malformed one gets the parser's message.
macro_rules! body {
    ($raw:expr) => {
        match serde_json::from_slice(&$raw) {
            Ok(b) => b,
            Err(e) => {
                return json_error(StatusCode::BAD_REQUEST, &format!("invalid request: {e}"));
            }
        }
    };
}

#[derive(Debug, Deserialize)]
struct AddSecret {
    key: String,
    /// base64 of the value's bytes, as the API takes it.
    value: String,
}

/// `POST /console/secrets`: the domain's write validates key and value and audits.
pub(super) async fn add_secret(
    State(c): State<Console>,
    h: HeaderMap,
    raw: axum::body::Bytes,
) -> Response {
    let (s, _place) = begin!(c, h);
    let b: AddSecret = body!(raw);
    let key = parsed!(SecretKey::new(&b.key));
    let value =
        parsed!(SecretBytes::from_base64(&b.value).map_err(|_| "the value is not valid base64"));
    let r = c
        .svc
        .domain
        .put_secret(&s.principal, None, key, &value)
        .await;
    relay(StatusCode::CREATED, r)
}

#[derive(Debug, Deserialize)]
struct KeyOnly {
    key: String,
}

/// `POST /console/secrets/delete`.
pub(super) async fn delete_secret(
    State(c): State<Console>,
    h: HeaderMap,
    raw: axum::body::Bytes,
) -> Response {
    let (s, _place) = begin!(c, h);
    let b: KeyOnly = body!(raw);
    let key = parsed!(SecretKey::new(&b.key));
    let r = c
        .svc
        .domain
        .delete_secret(&s.principal, s.name().clone(), key)
        .await;
    relay(StatusCode::NO_CONTENT, r)
}

#[derive(Debug, Deserialize)]
struct Share {
    key: String,
    user: String,
    action: String,
}

/// `POST /console/share`: a grant on one own secret, through the API's grant handler.
pub(super) async fn share(
    State(c): State<Console>,
    h: HeaderMap,
    raw: axum::body::Bytes,
) -> Response {
    let (s, _place) = begin!(c, h);
    let b: Share = body!(raw);
    let user = b.user.trim();
    if user.is_empty() {
        return json_error(StatusCode::BAD_REQUEST, "enter the user to share with");
    }
    let grantee = parsed!(UserName::new(user));
    let action: Action = parsed!(b.action.parse());
    let grant = Grant {
        uri: format!("secret:{}", b.key),
        action,
    };
    let r = c.svc.domain.grant(&s.principal, &grantee, &[grant]).await;
    relay(StatusCode::CREATED, r)
}

#[derive(Debug, Deserialize)]
struct Revoke {
    user: String,
    uri: String,
}

/// `POST /console/revoke`: withdraws a grant the user gave.
pub(super) async fn revoke_grant(
    State(c): State<Console>,
    h: HeaderMap,
    raw: axum::body::Bytes,
) -> Response {
    let (s, _place) = begin!(c, h);
    let b: Revoke = body!(raw);
    let grantee = parsed!(UserName::new(&b.user));
    let r = c.svc.domain.revoke(&s.principal, &grantee, &b.uri).await;
    relay(StatusCode::NO_CONTENT, r)
}

#[derive(Debug, Deserialize)]
struct Row {
    /// `env` or `file`.
    kind: String,
    /// `secret:KEY` or `secret:/OWNER/KEY`.
    secret: String,
    /// The variable name or the file path.
    target: String,
}

#[derive(Debug, Deserialize)]
struct Launch {
    image: String,
    command: String,
    #[serde(default)]
    rows: Vec<Row>,
}

/// Quotes `s` for a POSIX shell when it needs it.
fn sh(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `POST /console/jobs`: the launch dialog's RUN. The rows are checked as `neuro run` checks
/// its `--env` and `--volume`, the image and paths as `neuro job manifest` does; the API's job
/// handler checks permissions and existence. The answer holds the manifest (with the job
/// token, inside its Secret) for the download link; the page never shows it.
pub(super) async fn run_job(
    State(c): State<Console>,
    peer: Option<Extension<Peer>>,
    h: HeaderMap,
    raw: axum::body::Bytes,
) -> Response {
    let (s, _place) = begin!(c, h);
    let b: Launch = body!(raw);
    let bad = |m: String| json_error(StatusCode::BAD_REQUEST, &m);
    let command: Vec<String> = b.command.split_whitespace().map(str::to_owned).collect();
    if command.is_empty() {
        return bad("enter the command the job runs".into());
    }
    let (mut secret_env, mut volumes, mut flags) = (Vec::new(), Vec::new(), Vec::new());
    let mut names = std::collections::HashSet::new();
    for (i, r) in b.rows.iter().enumerate() {
        let n = i + 1;
        let target = r.target.trim();
        match r.kind.as_str() {
            "env" => {
                let spec = format!("{target}={}", r.secret);
                match EnvSpec::parse(&spec) {
                    Ok(EnvSpec::Secret(m)) => {
                        let name = m.name.to_string();
                        if !names.insert(name.clone()) {
                            return bad(format!("secret {n}: variable '{name}' is given twice"));
                        }
                        flags.push(format!("--env {}", sh(&spec)));
                        secret_env.push((name, m.secret.to_string()));
                    }
                    Ok(_) => return bad(format!("secret {n}: choose a secret")),
                    Err(e) => return bad(format!("secret {n}: {e}")),
                }
            }
            "file" => {
                let spec = format!("{}:{target}", r.secret);
                match VolumeMapping::parse(&spec) {
                    Ok(v) => {
                        flags.push(format!("--volume {}", sh(&spec)));
                        volumes.push(v);
                    }
                    Err(e) => return bad(format!("secret {n}: {e}")),
                }
            }
            other => return bad(format!("secret {n}: unknown use '{other}'")),
        }
    }
    if let Err(e) = pod::check(b.image.trim(), &volumes) {
        return bad(e.to_string());
    }
    let spec = JobSpec {
        secret_env: secret_env.iter().cloned().collect(),
        secret_volumes: volumes
            .iter()
            .map(|v| JobVolume {
                src_secret_uri: v.secret.to_string(),
                dst_path: v.path.display().to_string(),
            })
            .collect(),
        ttl_s: None,
    };
    let created = match c.svc.domain.create_job(&s.principal, &spec).await {
        Ok(j) => j,
        Err(e) => {
            let e = ApiError::from(e);
            return json_error(e.status(), &e.to_string());
        }
    };
    let scheme = if peer.is_some_and(|Extension(p)| p.tls) {
        "https"
    } else {
        "http"
    };
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let url = format!("{scheme}://{host}");
    let (secretfs_image, inject_image) =
        (pod::default_secretfs_image(), pod::default_inject_image());
    let job = PodJob {
        image: b.image.trim(),
        secretfs_image: &secretfs_image,
        inject_image: &inject_image,
        user: None,
        volumes: &volumes,
        secret_env: &secret_env,
        plain: &[],
        command: &command,
    };
    let inputs = PodInputs {
        job_id: created.job_id.as_str(),
        expires_at: &created.expires_at,
        token: &created.token,
        url: &url,
        ca_pem: None,
    };
    let manifest = match pod::render(&job, &inputs) {
        Ok(m) => zeroize::Zeroizing::new(m),
        Err(e) => {
            let _ = c.svc.domain.delete_job(&s.principal, &created.job_id).await;
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        }
    };
    let mut mappings: Vec<String> = secret_env
        .iter()
        .map(|(n, u)| format!("environment variable {n} ← {u}"))
        .collect();
    mappings.extend(
        volumes
            .iter()
            .map(|v| format!("file {} ← {}", v.path.display(), v.secret)),
    );
    let mut run_line = String::from("neuro run");
    for f in &flags {
        run_line.push(' ');
        run_line.push_str(f);
    }
    run_line.push_str(" --");
    for w in &command {
        run_line.push(' ');
        run_line.push_str(&sh(w));
    }
    let out: Value = json!({
        "job_id": created.job_id.as_str(),
        "expires_at": created.expires_at,
        "mappings": mappings,
        "run_line": run_line,
        "manifest": manifest.as_str(),
    });
    (StatusCode::CREATED, Json(out)).into_response()
}

#[derive(Debug, Deserialize)]
struct JobOnly {
    job_id: String,
}

/// `POST /console/jobs/revoke`: deletes the job, revoking its token.
pub(super) async fn revoke_job(
    State(c): State<Console>,
    h: HeaderMap,
    raw: axum::body::Bytes,
) -> Response {
    let (s, _place) = begin!(c, h);
    let b: JobOnly = body!(raw);
    let id = parsed!(JobId::new(&b.job_id));
    let r = c.svc.domain.delete_job(&s.principal, &id).await;
    relay(StatusCode::NO_CONTENT, r)
}
