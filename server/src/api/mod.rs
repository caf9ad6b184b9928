//! The HTTP API `/api/v1`: the service state, the helpers its handlers share, and the router.
//!
//! Handlers live by resource: `secrets` (values, lists, resolve), `watch`, `grants`, `jobs`
//! and `admin` (users and tokens). `extract` holds the extractors, `perms` the permission
//! model.

mod admin;
mod extract;
mod grants;
mod jobs;
mod perms;
mod secrets;
mod watch;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use secrets_core::api::{MissingPermission, WhoAmI};
use secrets_core::{Action, ClusterName, SecretBytes, SecretKey, SecretUri, UriContext, UserName};

use crate::audit::{Audit, AuditAction, AuditEvent, Outcome};
use crate::auth::{self, Principal};
use crate::crypto::Keys;
use crate::error::ApiError;
use crate::records::SecretName;
use crate::store::{Store, Table};
use crate::values::{Opened, ValueCache};

pub use extract::{ApiJson, Caller, read_json};
pub use perms::{Perms, may_read};
pub use secrets::MAX_RESOLVE_BYTES;

/// Request bodies larger than this are refused with 413: a 1 MiB value is about 1.4 MiB of
/// base64 and JSON.
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// How long a request body may take to arrive, whatever its pace.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How many URIs one resolve may ask for.
pub const MAX_RESOLVE: usize = 1000;
/// Change-log keys for grant changes: `~acl/USER` (a `SecretName` never starts with `~`).
const ACL_MARKER: &str = "~acl/";
pub const MAX_WATCH_S: u64 = 60;
pub const MAX_JOB_TTL_S: u64 = 7 * 24 * 3600;

/// Everything a handler needs.
#[derive(Debug)]
pub struct Service {
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub cluster: ClusterName,
    pub audit: Audit,
    pub auth: auth::Authenticator,
    /// The newest revision this process wrote; watchers wait on it.
    pub changed: tokio::sync::watch::Sender<u64>,
    /// Requests in flight per token and per user (`admit`).
    pub inflight: crate::admit::InFlight,
    /// Bytes of answers waiting to be sent (`admit::ANSWER_BUDGET`).
    pub answers: crate::admit::AnswerBudget,
    /// Failed console log-ins per client address and target user.
    pub console: crate::console::LoginLimiter,
    /// Whether the API's listener serves TLS (the console's cookie is `__Host-` then).
    pub tls: bool,
    /// Proxies whose X-Forwarded-For names the client (`--trusted-proxy`).
    pub trusted_proxies: Vec<crate::client_addr::Cidr>,
    /// Set at SIGTERM: waiting watches answer at once instead of holding the shutdown for
    /// the whole grace period.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Values opened lately (`values`).
    pub values: Arc<ValueCache>,
}

pub type AppState = Arc<Service>;

impl Service {
    fn ctx(&self, user: &UserName) -> UriContext {
        UriContext {
            cluster: self.cluster.clone(),
            user: user.clone(),
        }
    }

    fn uri(&self, owner: UserName, key: SecretKey) -> SecretUri {
        SecretUri {
            cluster: self.cluster.clone(),
            owner,
            key,
        }
    }

    async fn read_value(&self, uri: &SecretUri) -> Result<Option<Arc<Opened>>, ApiError> {
        let name = SecretName::of(uri);
        let Some(stored) = self.store.get_sealed(name.as_str()).await? else {
            return Ok(None);
        };
        let cached = self
            .values
            .get(name.as_str(), stored.version, &stored.sealed);
        crate::metrics::global().value_cache(cached.is_some());
        if let Some(v) = cached {
            return Ok(Some(v));
        }
        let mut plain = self
            .keys
            .open(name.as_str(), &stored.sealed)
            .map_err(|e| ApiError::Internal(format!("{uri}: {e}")))?;
        Ok(Some(self.values.insert(
            name.as_str(),
            stored.version,
            &stored.sealed,
            SecretBytes::new(std::mem::take(&mut *plain)),
        )))
    }

    /// Records a refused or failed request, as far as the log allows: it is refused anyway.
    fn audit_refused(
        &self,
        p: &Principal,
        action: AuditAction,
        uri: Option<String>,
        outcome: Outcome,
    ) {
        self.audit
            .record_best_effort(AuditEvent::new(p.actor(), action, uri, outcome));
    }

    /// Refuses a request for want of permissions: one `denied` line per missing URI, then the
    /// 403 that names them.
    fn deny(
        &self,
        p: &Principal,
        action: AuditAction,
        missing: Vec<MissingPermission>,
    ) -> ApiError {
        for m in &missing {
            self.audit_refused(p, action, Some(m.uri.clone()), Outcome::Denied);
        }
        ApiError::missing(missing)
    }

    /// `deny` for one URI that needs `needs`.
    fn deny_one(
        &self,
        p: &Principal,
        action: AuditAction,
        uri: &impl ToString,
        needs: Action,
    ) -> ApiError {
        let missing = MissingPermission {
            uri: uri.to_string(),
            action: needs,
        };
        self.deny(p, action, vec![missing])
    }

    /// Records a read that is about to be answered; when the line cannot be queued the answer
    /// is a 503 instead (the log fails closed).
    fn audit_read(
        &self,
        p: &Principal,
        action: AuditAction,
        uri: Option<String>,
    ) -> Result<(), ApiError> {
        Ok(self
            .audit
            .record(AuditEvent::new(p.actor(), action, uri, Outcome::Ok))?)
    }

    /// Wakes the watchers of `user`'s secrets after a grant change.
    async fn acl_changed(&self, user: &UserName) -> Result<(), ApiError> {
        let rev = self.store.touch(&format!("{ACL_MARKER}{user}")).await?;
        self.changed.send_replace(rev);
        Ok(())
    }

    /// A job whose record is gone (deleted, or its user removed) has ended; a user who was
    /// removed is gone. Both answer 401, as their next request would.
    async fn still_there(&self, p: &Principal) -> Result<(), ApiError> {
        match p {
            Principal::Operator => Ok(()),
            Principal::User(u) => match self.user_exists(u).await? {
                true => Ok(()),
                false => Err(ApiError::Unauthenticated(format!(
                    "user '{u}' has been removed"
                ))),
            },
            Principal::Job { id, owner, .. } => {
                if self.store.get(Table::Jobs, id).await?.is_none() {
                    return Err(ApiError::Unauthenticated("the job has ended".into()));
                }
                if !self.user_exists(owner).await? {
                    return Err(ApiError::Unauthenticated(format!(
                        "user '{owner}' has been removed"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Ends every waiting watch (at shutdown): each answers with what it has.
    pub fn stop_watchers(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake_watchers();
    }

    /// Wakes every watcher without a new revision, so that each checks its caller again.
    fn wake_watchers(&self) {
        let rev = *self.changed.borrow();
        self.changed.send_replace(rev);
    }

    async fn user_exists(&self, user: &UserName) -> Result<bool, ApiError> {
        Ok(self.store.get(Table::Users, user.as_str()).await?.is_some())
    }
}

async fn whoami(State(s): State<AppState>, Caller(p): Caller) -> Json<WhoAmI> {
    let (kind, user, job_id) = match &p {
        Principal::Operator => ("operator", None, None),
        Principal::User(u) => ("user", Some(u.to_string()), None),
        Principal::Job { id, owner, .. } => ("job", Some(owner.to_string()), Some(id.clone())),
    };
    Json(WhoAmI {
        kind: kind.into(),
        user,
        job_id,
        cluster: s.cluster.to_string(),
    })
}

/// Reads every request's body, on every route (the console's included), before its handler
/// runs: at most `MAX_BODY` bytes (413), within `BODY_TIMEOUT` whatever its pace (408). The
/// request holds its place in flight meanwhile (`admit`, the layer outside this one), so a
/// client trickling bodies holds at most its share of the connections, and only so long.
pub async fn buffer_body(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use http_body::Body as _;
    if req.body().size_hint().exact() == Some(0) {
        return next.run(req).await;
    }
    let too_large =
        || ApiError::PayloadTooLarge(format!("request body is larger than {MAX_BODY} bytes"));
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large().into_response();
    }
    let (parts, body) = req.into_parts();
    // Refused before the whole body was read, hyper closes the connection after the answer
    // rather than wait for the rest, so such a connection holds no slot.
    let refused = |e: ApiError| e.into_response();
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let limit = std::error::Error::source(&e)
                .is_some_and(|c| c.is::<http_body_util::LengthLimitError>());
            return refused(match limit {
                true => too_large(),
                false => ApiError::BadRequest(format!("reading the request body: {e}")),
            });
        }
        Err(_) => {
            return refused(ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            )));
        }
    };
    next.run(axum::extract::Request::from_parts(parts, bytes.into()))
        .await
}

async fn no_route(method: Method, uri: Uri) -> Response {
    ApiError::NotFound(format!("no route for {method} {}", uri.path())).into_response()
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    ApiError::MethodNotAllowed(format!("method {method} is not allowed on {}", uri.path()))
        .into_response()
}

/// The whole HTTP API, ready to serve or to drive in tests without a socket.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/ping", get(crate::health::ping))
        .route("/api/v1/whoami", get(whoami))
        .route(
            "/api/v1/secrets",
            post(secrets::put_secret).get(secrets::list_secrets),
        )
        .route("/api/v1/secrets/resolve", post(secrets::resolve))
        .route("/api/v1/secrets/watch", get(watch::watch))
        .route(
            "/api/v1/secrets/{owner}/{key}",
            get(secrets::get_secret).delete(secrets::delete_secret),
        )
        .route(
            "/api/v1/users/{user}/permissions",
            post(grants::grant)
                .get(grants::list_permissions)
                .delete(grants::revoke),
        )
        .route(
            "/api/v1/users/{user}/permissions/shared",
            get(grants::list_shared),
        )
        .route("/api/v1/jobs", post(jobs::create_job))
        .route("/api/v1/jobs/{id}", delete(jobs::delete_job))
        .route("/api/v1/admin/users", post(admin::create_user))
        .route("/api/v1/admin/users/{user}", delete(admin::remove_user))
        .route(
            "/api/v1/admin/users/{user}/tokens",
            post(admin::issue_token).get(admin::list_tokens),
        )
        .route("/api/v1/admin/tokens/{id}", delete(admin::revoke_token));
    // The console calls the API's handlers in process, past the admission layer (it admits
    // its own requests by session).
    let inner = api
        .clone()
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state.clone());
    // Probes and metrics stay outside admission: they must answer without the store (healthz)
    // and without a store sync (an etcd without quorum makes readyz say so, not fail).
    let ops = Router::new()
        .route("/healthz", get(crate::health::healthz))
        .route("/readyz", get(crate::health::readyz))
        .route("/metrics", get(crate::metrics::scrape_operator));
    api.merge(crate::console::routes(state.clone(), inner))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(buffer_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::admit::admit,
        ))
        .merge(ops)
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(state)
}

/// The router of `secretd --metrics-listen`: `/metrics` for anyone who reaches the address,
/// and the probes.
pub fn ops_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(crate::metrics::scrape))
        .route("/healthz", get(crate::health::healthz))
        .route("/readyz", get(crate::health::readyz))
        .fallback(no_route)
        .with_state(state)
}
