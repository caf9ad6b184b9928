//! HTTP handlers of `/api/v1` and the router that holds them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use secrets_core::api::{
    CreateUser, Grant, JobCreated, JobSpec, MissingPermission, PutSecret, ResolveRequest,
    ResolveResponse, ResolveStatus, Resolved, SecretInfo, SecretVersion, SharedGrant, TokenInfo,
    TokenIssued, UserRemoved, WatchEvent, WatchResponse, WhoAmI,
};
use secrets_core::{
    Action, ClusterName, EnvName, MAX_VALUE_LEN, ResourceUri, SecretBytes, SecretKey, SecretRef,
    SecretUri, UriContext, UserName, VolumeMapping,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::admit::Authenticated;
use crate::audit::{Audit, AuditEvent};
use crate::auth::{self, JobRecord, Principal, Subject, TokenRecord, now_secs, rfc3339};
use crate::crypto::{Keys, random_bytes};
use crate::error::ApiError;
use crate::store::{Store, Table};

/// Request bodies larger than this are refused with 413: a 1 MiB value is about 1.4 MiB of
/// base64 and JSON.
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// How long a request body may take to arrive, whatever its pace.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How many URIs one resolve may ask for.
pub const MAX_RESOLVE: usize = 1000;
/// Change-log keys for grant changes: `~acl/USER` (a secret's `OWNER/KEY` never starts with `~`).
const ACL_MARKER: &str = "~acl/";
pub const MAX_WATCH_S: u64 = 60;
const DEFAULT_JOB_TTL_S: u64 = 24 * 3600;
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
}

pub type AppState = Arc<Service>;

/// A stored grant: `grantee` holds `action` on `cluster/owner[/key]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantRecord {
    pub grantee: String,
    pub uri: String,
    pub action: Action,
    pub granted_by: String,
    pub created_at: u64,
}

impl GrantRecord {
    fn resource(&self) -> Option<ResourceUri> {
        let r = self.uri.strip_prefix("secret://")?;
        let mut it = r.split('/');
        let cluster = ClusterName::new(it.next()?).ok()?;
        let owner = UserName::new(it.next()?).ok()?;
        let key = it.next().map(SecretKey::new).transpose().ok()?;
        Some(ResourceUri {
            cluster,
            owner,
            key,
        })
    }
}

fn grant_key(grantee: &UserName, target: &ResourceUri) -> String {
    format!("{grantee}/{target}")
}

/// What one user may do, loaded once per request.
struct Perms<'a> {
    user: &'a UserName,
    cluster: &'a ClusterName,
    grants: Vec<(ResourceUri, Action)>,
}

impl Perms<'_> {
    fn holds(&self, target: &ResourceUri, action: Action) -> bool {
        (target.owner == *self.user && target.cluster == *self.cluster)
            || self
                .grants
                .iter()
                .any(|(r, a)| *a >= action && r.contains(target))
    }

    fn holds_secret(&self, uri: &SecretUri, action: Action) -> bool {
        self.holds(&ResourceUri::from(uri.clone()), action)
    }
}

fn decode<T: DeserializeOwned>(what: &str, raw: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(raw).map_err(|e| ApiError::Internal(format!("{what}: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

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

    async fn grants_of(&self, user: &UserName) -> Result<Vec<GrantRecord>, ApiError> {
        self.store
            .scan(Table::Grants, &format!("{user}/"))
            .await?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    async fn perms<'a>(&'a self, user: &'a UserName) -> Result<Perms<'a>, ApiError> {
        let grants = self
            .grants_of(user)
            .await?
            .into_iter()
            .filter_map(|g| Some((g.resource()?, g.action)))
            .collect();
        Ok(Perms {
            user,
            cluster: &self.cluster,
            grants,
        })
    }

    /// Whether `p` may read `uri`: a user by ownership or grant; a job only its own URIs, and
    /// only while the user who created it still may.
    fn may_read(&self, p: &Principal, perms: Option<&Perms<'_>>, uri: &SecretUri) -> bool {
        let Some(perms) = perms else { return false };
        match p {
            Principal::Operator => false,
            Principal::User(_) => perms.holds_secret(uri, Action::Read),
            Principal::Job { uris, .. } => {
                uris.contains(uri) && perms.holds_secret(uri, Action::Read)
            }
        }
    }

    async fn read_value(&self, uri: &SecretUri) -> Result<Option<(u64, SecretBytes)>, ApiError> {
        let aad = format!("{}/{}", uri.owner, uri.key);
        let Some(stored) = self.store.get_secret(&aad).await? else {
            return Ok(None);
        };
        let plain = self
            .keys
            .open(&aad, &stored.sealed)
            .map_err(|e| ApiError::Internal(format!("{uri}: {e}")))?;
        Ok(Some((stored.version, SecretBytes::new(plain.to_vec()))))
    }

    /// Records a refused or failed request, as far as the log allows: it is refused anyway.
    fn audit(
        &self,
        p: &Principal,
        action: &'static str,
        uri: Option<String>,
        outcome: &'static str,
    ) {
        self.audit
            .record_best_effort(AuditEvent::new(p.actor(), action, uri, outcome));
    }

    /// Records a read that is about to be answered; when the line cannot be queued the answer
    /// is a 503 instead (the log fails closed).
    fn audit_read(
        &self,
        p: &Principal,
        action: &'static str,
        uri: Option<String>,
    ) -> Result<(), ApiError> {
        Ok(self
            .audit
            .record(AuditEvent::new(p.actor(), action, uri, "ok"))?)
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

    /// Wakes every watcher without a new revision, so that each checks its caller again.
    fn wake_watchers(&self) {
        let rev = *self.changed.borrow();
        self.changed.send_replace(rev);
    }

    async fn user_exists(&self, user: &UserName) -> Result<bool, ApiError> {
        Ok(self.store.get(Table::Users, user.as_str()).await?.is_some())
    }
}

/// The authenticated caller; a request without a valid bearer token stops here with 401.
#[derive(Debug)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Authenticated once already by `admit::admit` (the router's outer layer).
        if let Some(Authenticated(outcome)) = parts.extensions.remove::<Authenticated>() {
            return outcome.map(Caller);
        }
        let token = crate::admit::bearer(&parts.headers)
            .ok_or_else(|| ApiError::Unauthenticated("missing bearer token".into()))??;
        state
            .auth
            .authenticate(state.store.as_ref(), &state.keys, token)
            .await
            .map(Caller)
    }
}

impl Caller {
    /// The user behind a user token; jobs and the operator are refused with `why`.
    fn user(&self, why: &str) -> Result<&UserName, ApiError> {
        match &self.0 {
            Principal::User(u) => Ok(u),
            Principal::Job { .. } => Err(ApiError::forbidden(format!(
                "a job token may only read its job's secrets; {why}"
            ))),
            Principal::Operator => Err(ApiError::forbidden(format!(
                "the operator token manages users and tokens; {why}"
            ))),
        }
    }

    fn operator(&self) -> Result<(), ApiError> {
        match self.0 {
            Principal::Operator => Ok(()),
            _ => Err(ApiError::forbidden(
                "only the operator may manage users and tokens",
            )),
        }
    }
}

/// `Json<T>` whose rejections answer in the API's error shape.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    /// Reads the body, then authenticates the caller again: a body may take up to
    /// `BODY_TIMEOUT` to arrive, and a user removed or a token revoked meanwhile must not
    /// get its request through (the first check was at the request's head).
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let presented = crate::admit::bearer(req.headers())
            .map(|b| b.map(|t| zeroize::Zeroizing::new(t.to_owned())));
        let v = read_json::<T, _>(req, state).await?;
        if let Some(Ok(token)) = presented {
            state
                .auth
                .authenticate(state.store.as_ref(), &state.keys, &token)
                .await?;
        }
        Ok(ApiJson(v))
    }
}

/// A JSON body within `BODY_TIMEOUT`, its rejections in the API's error shape.
pub async fn read_json<T: DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<T, ApiError> {
    let read = tokio::time::timeout(BODY_TIMEOUT, Json::<T>::from_request(req, state));
    let Ok(read) = read.await else {
        return Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        )));
    };
    match read {
        Ok(Json(v)) => Ok(v),
        Err(rej) => Err(match rej {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a 'Content-Type: application/json' request body".into(),
            ),
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::BadRequest(format!("malformed JSON: {}", e.body_text()))
            }
            JsonRejection::JsonDataError(e) => {
                ApiError::BadRequest(format!("invalid request: {}", e.body_text()))
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(format!("request body is larger than {MAX_BODY} bytes"))
            }
            other => ApiError::BadRequest(other.body_text()),
        }),
    }
}

fn parse_names(owner: &str, key: &str) -> Result<(UserName, SecretKey), ApiError> {
    let owner = UserName::new(owner).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let key = SecretKey::new(key).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok((owner, key))
}

fn not_found_secret(key: &SecretKey) -> ApiError {
    ApiError::NotFound(format!("Secret '{key}' not found"))
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

async fn put_secret(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PutSecret>,
) -> Result<(StatusCode, Json<SecretVersion>), ApiError> {
    let me = caller.user("writing secrets needs a user token")?;
    let owner = body.owner.clone().unwrap_or_else(|| me.clone());
    let uri = s.uri(owner, body.key.clone());
    if body.value.is_empty() {
        s.audit(&caller.0, "secret.write", Some(uri.to_string()), "invalid");
        return Err(ApiError::BadRequest(format!(
            "the value of '{}' is empty; a secret holds 1 byte to 1 MiB",
            uri.key
        )));
    }
    if body.value.len() > MAX_VALUE_LEN {
        s.audit(&caller.0, "secret.write", Some(uri.to_string()), "invalid");
        return Err(ApiError::BadRequest(format!(
            "the value of '{}' is {} bytes; the limit is {MAX_VALUE_LEN} bytes (1 MiB)",
            uri.key,
            body.value.len()
        )));
    }
    if !s.perms(me).await?.holds_secret(&uri, Action::Write) {
        s.audit(&caller.0, "secret.write", Some(uri.to_string()), "denied");
        return Err(ApiError::missing(vec![MissingPermission {
            uri: uri.to_string(),
            action: Action::Write,
        }]));
    }
    let slot = s.audit.reserve()?;
    let aad = format!("{}/{}", uri.owner, uri.key);
    let sealed = s.keys.seal(&aad, body.value.expose());
    let event = |outcome| {
        AuditEvent::new(
            caller.0.actor(),
            "secret.write",
            Some(uri.to_string()),
            outcome,
        )
    };
    let version = match s.store.put_secret(&aad, &sealed).await {
        Ok(v) => v,
        Err(e) => {
            slot.record(event("error"));
            return Err(e.into());
        }
    };
    s.changed.send_replace(version);
    slot.record(event("ok"));
    Ok((
        StatusCode::CREATED,
        Json(SecretVersion {
            key: uri.key.to_string(),
            owner: uri.owner.to_string(),
            version,
        }),
    ))
}

async fn list_secrets(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    let me = caller.user("listing secrets needs a user token")?;
    let perms = s.perms(me).await?;
    let mut found: BTreeMap<(bool, String, String), u64> = BTreeMap::new();
    let mut add = |owner_key: &str, version: u64| {
        if let Some((o, k)) = owner_key.split_once('/') {
            found.insert((o != me.as_str(), o.to_owned(), k.to_owned()), version);
        }
    };
    for (k, v) in s.store.list_secrets(&format!("{me}/")).await? {
        add(&k, v);
    }
    for (r, a) in &perms.grants {
        if *a < Action::Read || r.cluster != s.cluster || r.owner == *me {
            continue;
        }
        match &r.key {
            None => {
                for (k, v) in s.store.list_secrets(&format!("{}/", r.owner)).await? {
                    add(&k, v);
                }
            }
            Some(key) => {
                let k = format!("{}/{key}", r.owner);
                if let Some(st) = s.store.get_secret(&k).await? {
                    add(&k, st.version);
                }
            }
        }
    }
    s.audit_read(&caller.0, "secret.list", None)?;
    Ok(Json(
        found
            .into_iter()
            .map(|((_, owner, key), version)| SecretInfo {
                uri: format!("secret://{}/{owner}/{key}", s.cluster),
                key,
                owner,
                version,
            })
            .collect(),
    ))
}

async fn get_secret(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path((owner, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (owner, key) = parse_names(&owner, &key)?;
    let uri = s.uri(owner, key);
    let perms = match p.user() {
        Some(u) => Some(s.perms(u).await?),
        None => None,
    };
    if !s.may_read(&p, perms.as_ref(), &uri) {
        s.audit(&p, "secret.read", Some(uri.to_string()), "denied");
        return Err(ApiError::missing(vec![MissingPermission {
            uri: uri.to_string(),
            action: Action::Read,
        }]));
    }
    let Some((version, value)) = s.read_value(&uri).await? else {
        s.audit(&p, "secret.read", Some(uri.to_string()), "not_found");
        return Err(not_found_secret(&uri.key));
    };
    let share = s.answers.take(value.len() * 4 / 3 + 256)?;
    s.audit_read(&p, "secret.read", Some(uri.to_string()))?;
    Ok(crate::admit::hold(
        value_response(&uri, version, &value),
        share,
    ))
}

/// The `SecretValue` body, written by hand: the hot path of every read. Names, URIs and base64
/// never need JSON escaping, so the value is encoded once, straight into the body.
fn value_response(uri: &SecretUri, version: u64, value: &SecretBytes) -> Response {
    use base64::Engine as _;
    let mut body = String::with_capacity(96 + 3 * uri.to_string().len() + value.len() * 4 / 3);
    body.push_str(&format!(
        r#"{{"key":"{}","owner":"{}","uri":"{uri}","version":{version},"value":""#,
        uri.key, uri.owner
    ));
    base64::engine::general_purpose::STANDARD.encode_string(value.expose(), &mut body);
    body.push_str("\"}");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn delete_secret(
    State(s): State<AppState>,
    caller: Caller,
    Path((owner, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let me = caller.user("deleting secrets needs a user token")?;
    let (owner, key) = parse_names(&owner, &key)?;
    let uri = s.uri(owner, key);
    if !s.perms(me).await?.holds_secret(&uri, Action::Write) {
        s.audit(&caller.0, "secret.delete", Some(uri.to_string()), "denied");
        return Err(ApiError::missing(vec![MissingPermission {
            uri: uri.to_string(),
            action: Action::Write,
        }]));
    }
    let slot = s.audit.reserve()?;
    let event = |outcome| {
        AuditEvent::new(
            caller.0.actor(),
            "secret.delete",
            Some(uri.to_string()),
            outcome,
        )
    };
    let removed = match s
        .store
        .delete_secret(&format!("{}/{}", uri.owner, uri.key))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            slot.record(event("error"));
            return Err(e.into());
        }
    };
    let Some(rev) = removed else {
        slot.record(event("not_found"));
        return Err(not_found_secret(&uri.key));
    };
    s.changed.send_replace(rev);
    slot.record(event("ok"));
    Ok(StatusCode::NO_CONTENT)
}

/// The values of one resolve answer, each asked URI counted (a repeated URI shares its read,
/// not its place in the answer): past this, the answer is refused with 413.
pub const MAX_RESOLVE_BYTES: usize = 16 * 1024 * 1024;
/// Answers larger than this are encoded off the async workers.
const BLOCKING_ENCODE: usize = 64 * 1024;

async fn resolve(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<ResolveRequest>,
) -> Result<Response, ApiError> {
    let Some(user) = p.user() else {
        return Err(ApiError::forbidden(
            "the operator token manages users and tokens; resolving secrets needs a user or job token",
        ));
    };
    if req.uris.len() > MAX_RESOLVE {
        return Err(ApiError::BadRequest(format!(
            "{} URIs asked; at most {MAX_RESOLVE} per request",
            req.uris.len()
        )));
    }
    let perms = s.perms(user).await?;
    let ctx = s.ctx(user);
    // One read and one audit line per distinct URI, however often it is asked.
    let mut seen: HashMap<SecretUri, Option<(u64, SecretBytes)>> = HashMap::new();
    let mut lines: Vec<(String, &'static str)> = Vec::new();
    let mut total = 0usize;
    let mut results = Vec::with_capacity(req.uris.len());
    for asked in req.uris {
        let mut r = Resolved {
            uri: asked,
            status: ResolveStatus::Invalid,
            resolved_uri: None,
            version: None,
            value: None,
            error: None,
        };
        let uri = match SecretRef::parse(&r.uri) {
            Ok(sr) => sr.resolve(&ctx),
            Err(e) => {
                r.error = Some(e.to_string());
                results.push(r);
                continue;
            }
        };
        r.resolved_uri = Some(uri.to_string());
        let first = !seen.contains_key(&uri);
        let outcome = if uri.cluster != s.cluster {
            r.error = Some(format!(
                "'{uri}' names cluster '{}'; this service is cluster '{}'",
                uri.cluster, s.cluster
            ));
            "invalid"
        } else if !s.may_read(&p, Some(&perms), &uri) {
            r.status = ResolveStatus::Forbidden;
            r.error = Some(format!("permission denied: missing read on {uri}"));
            "denied"
        } else {
            if first {
                let v = s.read_value(&uri).await?;
                seen.insert(uri.clone(), v);
            }
            match seen.get(&uri).cloned().flatten() {
                Some((version, value)) => {
                    total += value.len();
                    if total > MAX_RESOLVE_BYTES {
                        s.audit(&p, "secret.read", Some(uri.to_string()), "too_large");
                        return Err(ApiError::PayloadTooLarge(format!(
                            "the answer would hold more than {MAX_RESOLVE_BYTES} bytes of values \
                             (reached at '{uri}'); ask for fewer or smaller secrets per resolve"
                        )));
                    }
                    r.status = ResolveStatus::Ok;
                    r.version = Some(version);
                    r.value = Some(value);
                    "ok"
                }
                None => {
                    r.status = ResolveStatus::NotFound;
                    r.error = Some(format!("Secret '{}' not found", uri.key));
                    "not_found"
                }
            }
        };
        if first {
            seen.entry(uri.clone()).or_insert(None);
            lines.push((uri.to_string(), outcome));
        }
        results.push(r);
    }
    drop(seen);
    for (uri, outcome) in lines {
        s.audit.record(AuditEvent::new(
            p.actor(),
            "secret.read",
            Some(uri),
            outcome,
        ))?;
    }
    // The values, their base64 and the JSON around them stay in memory until a slow client
    // has read them all.
    let share = s.answers.take(total * 7 / 3 + 256 * results.len())?;
    let answer = ResolveResponse { results };
    let body = if total > BLOCKING_ENCODE {
        tokio::task::spawn_blocking(move || serde_json::to_vec(&answer))
            .await
            .map_err(|e| ApiError::Internal(format!("encoding a resolve answer: {e}")))?
    } else {
        serde_json::to_vec(&answer)
    }
    .map_err(|e| ApiError::Internal(format!("encoding a resolve answer: {e}")))?;
    Ok(crate::admit::hold(
        ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        share,
    ))
}

/// How many change-log entries one scan of the watch loop reads.
const WATCH_BATCH: usize = 1000;

/// The query of a request as a map; a parameter given twice is refused rather than half
/// obeyed.
fn query_map(q: Vec<(String, String)>) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for (k, v) in q {
        if out.contains_key(&k) {
            return Err(ApiError::BadRequest(format!(
                "query parameter '{k}' is given more than once; give it once per request"
            )));
        }
        out.insert(k, v);
    }
    Ok(out)
}

async fn watch(
    State(s): State<AppState>,
    Caller(p): Caller,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<WatchResponse>, ApiError> {
    let q = query_map(q)?;
    let Some(user) = p.user().cloned() else {
        return Err(ApiError::forbidden(
            "the operator token manages users and tokens; watching needs a user or job token",
        ));
    };
    let num = |name: &str, default: u64| -> Result<u64, ApiError> {
        q.get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "query parameter '{name}' must be a whole number, not '{v}'"
                ))
            })
        })
    };
    let wait = std::time::Duration::from_secs(num("timeout_s", 30)?.min(MAX_WATCH_S));
    let mut rx = s.changed.subscribe();
    let current = s.store.revision().await?;
    let Some(mut since) = q.get("since").map(|_| num("since", 0)).transpose()? else {
        return Ok(Json(WatchResponse {
            revision: current,
            ..Default::default()
        }));
    };
    if since > current {
        return Err(ApiError::BadRequest(format!(
            "query parameter 'since' is {since}, past the newest revision {current}; \
             watch without 'since' to learn the current revision"
        )));
    }
    let deadline = tokio::time::Instant::now() + wait;
    let marker = format!("{ACL_MARKER}{user}");
    loop {
        // Deleting a job (or removing its user) wakes every watcher; the job's own watch ends
        // here with the 401 its next request would get, so its files go at once.
        s.still_there(&p).await?;
        let changes = s.store.changes_since(since, WATCH_BATCH).await?;
        let mut out = WatchResponse {
            revision: changes.last().map_or(since.max(current), |c| c.revision),
            ..Default::default()
        };
        if !changes.is_empty() {
            let perms = s.perms(&user).await?;
            for c in &changes {
                if c.key == marker {
                    out.acl_changed = true;
                    continue;
                }
                let Some((owner, key)) = c.key.split_once('/') else {
                    continue;
                };
                let (Ok(owner), Ok(key)) = (UserName::new(owner), SecretKey::new(key)) else {
                    continue;
                };
                let uri = s.uri(owner, key);
                // A job sees what its creator may still read, as for its reads.
                if s.may_read(&p, Some(&perms), &uri) {
                    out.events.push(WatchEvent {
                        uri: uri.to_string(),
                        version: c.revision,
                        deleted: c.deleted,
                    });
                }
            }
        }
        if !out.events.is_empty() || out.acl_changed {
            return Ok(Json(out));
        }
        since = out.revision;
        if changes.len() == WATCH_BATCH {
            // More may lie beyond this batch: keep scanning until the deadline.
            if tokio::time::Instant::now() >= deadline {
                return Ok(Json(out));
            }
            continue;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Ok(Json(out)) },
            () = tokio::time::sleep_until(deadline) => return Ok(Json(out)),
        }
    }
}

fn parse_target(s: &Service, me: &UserName, uri: &str) -> Result<ResourceUri, ApiError> {
    let target =
        ResourceUri::parse(uri, &s.ctx(me)).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if target.cluster != s.cluster {
        return Err(ApiError::BadRequest(format!(
            "'{target}' names cluster '{}'; this service is cluster '{}'",
            target.cluster, s.cluster
        )));
    }
    Ok(target)
}

fn parse_user(user: &str) -> Result<UserName, ApiError> {
    UserName::new(user).map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn grant(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    ApiJson(grants): ApiJson<Vec<Grant>>,
) -> Result<(StatusCode, Json<Vec<Grant>>), ApiError> {
    let me = caller.user("sharing needs a user token")?;
    let grantee = parse_user(&user)?;
    if grants.is_empty() {
        return Err(ApiError::BadRequest("no permissions given".into()));
    }
    let targets = grants
        .iter()
        .map(|g| parse_target(&s, me, &g.uri).map(|t| (t, g.action)))
        .collect::<Result<Vec<_>, _>>()?;
    // Permission first: whoever may not share these learns nothing about who exists.
    let perms = s.perms(me).await?;
    let missing: Vec<MissingPermission> = targets
        .iter()
        .filter(|(t, _)| !perms.holds(t, Action::Manage))
        .map(|(t, _)| MissingPermission {
            uri: t.to_string(),
            action: Action::Manage,
        })
        .collect();
    if !missing.is_empty() {
        for m in &missing {
            s.audit(&caller.0, "grant.add", Some(m.uri.clone()), "denied");
        }
        return Err(ApiError::missing(missing));
    }
    if !s.user_exists(&grantee).await? {
        return Err(ApiError::NotFound(format!("user '{grantee}' not found")));
    }
    if let Some((t, _)) = targets.iter().find(|(t, _)| t.owner == grantee) {
        return Err(ApiError::BadRequest(format!(
            "user '{grantee}' owns '{t}' and holds manage on it already"
        )));
    }
    let mut out = Vec::new();
    let slots = s.audit.reserve_many(targets.len())?;
    for ((t, action), slot) in targets.into_iter().zip(slots) {
        let rec = GrantRecord {
            grantee: grantee.to_string(),
            uri: t.to_string(),
            action,
            granted_by: me.to_string(),
            created_at: now_secs(),
        };
        let event = |outcome| {
            AuditEvent::new(caller.0.actor(), "grant.add", Some(t.to_string()), outcome)
                .subject(format!("user:{grantee}"))
        };
        if let Err(e) = s
            .store
            .put(Table::Grants, &grant_key(&grantee, &t), &encode(&rec))
            .await
        {
            slot.record(event("error"));
            return Err(e.into());
        }
        slot.record(event("ok"));
        s.acl_changed(&grantee).await?;
        out.push(Grant {
            uri: t.to_string(),
            action,
        });
    }
    Ok((StatusCode::CREATED, Json(out)))
}

/// A user may look at its own grants; the operator at anyone's.
fn may_view(p: &Principal, user: &UserName) -> Result<(), ApiError> {
    match p {
        Principal::Operator => Ok(()),
        Principal::User(u) if u == user => Ok(()),
        _ => Err(ApiError::forbidden(format!(
            "you may only list your own permissions, not those of '{user}'"
        ))),
    }
}

async fn list_permissions(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(user): Path<String>,
) -> Result<Json<Vec<Grant>>, ApiError> {
    let user = parse_user(&user)?;
    may_view(&p, &user)?;
    let mut out = vec![Grant {
        uri: ResourceUri::namespace(s.cluster.clone(), user.clone()).to_string(),
        action: Action::Manage,
    }];
    let mut grants: Vec<Grant> = s
        .grants_of(&user)
        .await?
        .into_iter()
        .map(|g| Grant {
            uri: g.uri,
            action: g.action,
        })
        .collect();
    grants.sort_by(|a, b| a.uri.cmp(&b.uri));
    out.extend(grants);
    s.audit.record(
        AuditEvent::new(p.actor(), "grant.list", None, "ok").subject(format!("user:{user}")),
    )?;
    Ok(Json(out))
}

async fn list_shared(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(user): Path<String>,
) -> Result<Json<Vec<SharedGrant>>, ApiError> {
    let user = parse_user(&user)?;
    may_view(&p, &user)?;
    let mut out: Vec<SharedGrant> = Vec::new();
    for (k, v) in s.store.scan(Table::Grants, "").await? {
        let g: GrantRecord = decode(&k, &v)?;
        let owned = g.resource().is_some_and(|r| r.owner == user);
        if owned || g.granted_by == user.as_str() {
            out.push(SharedGrant {
                uri: g.uri,
                action: g.action,
                user: g.grantee,
            });
        }
    }
    out.sort_by(|a, b| (&a.uri, &a.user).cmp(&(&b.uri, &b.user)));
    s.audit.record(
        AuditEvent::new(p.actor(), "grant.list", None, "ok").subject(format!("user:{user}")),
    )?;
    Ok(Json(out))
}

async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<StatusCode, ApiError> {
    let q = query_map(q)?;
    let me = caller.user("revoking needs a user token")?;
    let grantee = parse_user(&user)?;
    let uri = q
        .get("uri")
        .ok_or_else(|| ApiError::BadRequest("missing query parameter 'uri'".into()))?;
    let target = parse_target(&s, me, uri)?;
    if *me != grantee && !s.perms(me).await?.holds(&target, Action::Manage) {
        s.audit(
            &caller.0,
            "grant.revoke",
            Some(target.to_string()),
            "denied",
        );
        return Err(ApiError::missing(vec![MissingPermission {
            uri: target.to_string(),
            action: Action::Manage,
        }]));
    }
    let slot = s.audit.reserve()?;
    let event = |outcome| {
        AuditEvent::new(
            caller.0.actor(),
            "grant.revoke",
            Some(target.to_string()),
            outcome,
        )
        .subject(format!("user:{grantee}"))
    };
    match s
        .store
        .delete(Table::Grants, &grant_key(&grantee, &target))
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            slot.record(event("not_found"));
            return Err(ApiError::NotFound(format!(
                "user '{grantee}' holds no grant on '{target}'"
            )));
        }
        Err(e) => {
            slot.record(event("error"));
            return Err(e.into());
        }
    }
    slot.record(event("ok"));
    s.acl_changed(&grantee).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_job(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<(StatusCode, Json<JobCreated>), ApiError> {
    let me = caller.user("creating jobs needs a user token")?;
    let bad = |e: String| ApiError::BadRequest(e);
    let ctx = s.ctx(me);
    let mut uris = BTreeSet::new();
    for (name, uri) in &spec.secret_env {
        EnvName::new(name).map_err(|e| bad(e.to_string()))?;
        uris.insert(
            SecretRef::parse(uri)
                .map_err(|e| bad(e.to_string()))?
                .resolve(&ctx),
        );
    }
    let mut paths = BTreeSet::new();
    for v in &spec.secret_volumes {
        VolumeMapping::check_path(&v.dst_path)
            .map_err(|e| bad(format!("invalid dst_path '{}': {e}", v.dst_path)))?;
        if !paths.insert(v.dst_path.as_str()) {
            return Err(bad(format!("dst_path '{}' is used twice", v.dst_path)));
        }
        uris.insert(
            SecretRef::parse(&v.src_secret_uri)
                .map_err(|e| bad(e.to_string()))?
                .resolve(&ctx),
        );
    }
    let ttl = spec.ttl_s.unwrap_or(DEFAULT_JOB_TTL_S);
    if ttl == 0 || ttl > MAX_JOB_TTL_S {
        return Err(bad(format!(
            "ttl_s {ttl} is out of range: 1 to {MAX_JOB_TTL_S} seconds"
        )));
    }
    if let Some(u) = uris.iter().find(|u| u.cluster != s.cluster) {
        return Err(bad(format!(
            "'{u}' names cluster '{}'; this service is cluster '{}'",
            u.cluster, s.cluster
        )));
    }
    let perms = s.perms(me).await?;
    let missing: Vec<MissingPermission> = uris
        .iter()
        .filter(|u| !perms.holds_secret(u, Action::Read))
        .map(|u| MissingPermission {
            uri: u.to_string(),
            action: Action::Read,
        })
        .collect();
    if !missing.is_empty() {
        s.audit(&caller.0, "job.create", None, "denied");
        return Err(ApiError::missing(missing));
    }
    let mut absent = Vec::new();
    for u in &uris {
        if s.store
            .get_secret(&format!("{}/{}", u.owner, u.key))
            .await?
            .is_none()
        {
            absent.push(if u.owner == *me {
                u.key.to_string()
            } else {
                u.short()
            });
        }
    }
    if !absent.is_empty() {
        absent.sort();
        s.audit(&caller.0, "job.create", None, "not_found");
        let list: Vec<String> = absent.iter().map(|k| format!("'{k}'")).collect();
        return Err(ApiError::NotFound(format!(
            "Missing secrets: {}",
            list.join(", ")
        )));
    }
    let job_id = format!("job-{}", hex(&random_bytes::<8>()));
    let expires_at = now_secs() + ttl;
    let mut slots = s.audit.reserve_many(uris.len().max(1))?;
    let event = |uri: Option<String>, outcome| {
        AuditEvent::new(caller.0.actor(), "job.create", uri, outcome)
            .subject(format!("job:{job_id}"))
    };
    let stored = async {
        // The job's token dies with its creator, even if the creator is being removed now.
        let incarnation = auth::user_incarnation(s.store.as_ref(), me.as_str())
            .await?
            .ok_or_else(|| ApiError::Unauthenticated(format!("user '{me}' has been removed")))?;
        let (token_id, token) = auth::issue(
            s.store.as_ref(),
            &s.keys,
            Subject::Job { id: job_id.clone() },
            Some(expires_at),
            Some(incarnation),
        )
        .await?;
        let rec = JobRecord {
            owner: me.to_string(),
            uris: uris.iter().map(|u| u.to_string()).collect(),
            token_id,
            created_at: now_secs(),
            expires_at,
        };
        s.store.put(Table::Jobs, &job_id, &encode(&rec)).await?;
        Ok::<_, ApiError>(token)
    }
    .await;
    let token = match stored {
        Ok(t) => t,
        Err(e) => {
            if let Some(slot) = slots.pop() {
                slot.record(event(None, "error"));
            }
            return Err(e);
        }
    };
    if uris.is_empty()
        && let Some(slot) = slots.pop()
    {
        slot.record(event(None, "ok"));
    }
    for (u, slot) in uris.iter().zip(slots) {
        slot.record(event(Some(u.to_string()), "ok"));
    }
    Ok((
        StatusCode::CREATED,
        Json(JobCreated {
            job_id,
            token,
            expires_at: rfc3339(expires_at),
        }),
    ))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn set_revoked(s: &Service, token_id: &str) -> Result<bool, ApiError> {
    let Some(mut rec) = auth::load_token(s.store.as_ref(), token_id).await? else {
        return Ok(false);
    };
    rec.revoked = true;
    s.store.put(Table::Tokens, token_id, &encode(&rec)).await?;
    s.auth.forget(token_id);
    Ok(true)
}

async fn delete_job(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::NotFound(format!("job '{id}' not found"));
    let raw = s.store.get(Table::Jobs, &id).await?.ok_or_else(not_found)?;
    let job: JobRecord = decode(&id, &raw)?;
    let allowed = match &p {
        Principal::Operator => true,
        Principal::User(u) => u.as_str() == job.owner,
        Principal::Job { id: own, .. } => *own == id,
    };
    let event = |outcome| {
        AuditEvent::new(p.actor(), "job.delete", None, outcome).subject(format!("job:{id}"))
    };
    if !allowed {
        s.audit.record_best_effort(event("denied"));
        return Err(not_found());
    }
    let slot = s.audit.reserve()?;
    let done = async {
        s.store.delete(Table::Jobs, &id).await?;
        set_revoked(&s, &job.token_id).await
    }
    .await;
    s.wake_watchers();
    if let Err(e) = done {
        slot.record(event("error"));
        return Err(e);
    }
    slot.record(event("ok"));
    Ok(StatusCode::NO_CONTENT)
}

async fn create_user(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    caller.operator()?;
    let slot = s.audit.reserve()?;
    let rec = auth::UserRecord::new();
    let event = |outcome| {
        AuditEvent::new(caller.0.actor(), "user.create", None, outcome)
            .subject(format!("user:{}", body.name))
    };
    match s
        .store
        .insert_new(Table::Users, body.name.as_str(), &encode(&rec))
        .await
    {
        Ok(true) => slot.record(event("ok")),
        Ok(false) => {
            return Err(ApiError::Conflict(format!(
                "user '{}' already exists",
                body.name
            )));
        }
        Err(e) => {
            slot.record(event("error"));
            return Err(e.into());
        }
    }
    issue_for(&s, &caller.0, &body.name).await
}

async fn issue_for(
    s: &Service,
    p: &Principal,
    user: &UserName,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    let slot = s.audit.reserve()?;
    let issued = async {
        let incarnation = auth::user_incarnation(s.store.as_ref(), user.as_str())
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("user '{user}' not found")))?;
        auth::issue(
            s.store.as_ref(),
            &s.keys,
            Subject::User {
                name: user.to_string(),
            },
            None,
            Some(incarnation),
        )
        .await
        .map_err(ApiError::from)
    }
    .await;
    let event = |outcome| AuditEvent::new(p.actor(), "token.issue", None, outcome);
    let (token_id, token) = match issued {
        Ok(t) => t,
        Err(e) => {
            slot.record(event("error").subject(format!("user:{user}")));
            return Err(e);
        }
    };
    slot.record(event("ok").subject(format!("token:{token_id}")));
    Ok((
        StatusCode::CREATED,
        Json(TokenIssued {
            user: user.to_string(),
            token_id,
            token,
        }),
    ))
}

async fn issue_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    caller.operator()?;
    let user = parse_user(&user)?;
    if !s.user_exists(&user).await? {
        return Err(ApiError::NotFound(format!("user '{user}' not found")));
    }
    issue_for(&s, &caller.0, &user).await
}

/// The jobs `user` created: `(job id, record)`.
async fn jobs_of(s: &Service, user: &UserName) -> Result<Vec<(String, JobRecord)>, ApiError> {
    let mut out = Vec::new();
    for (id, raw) in s.store.scan(Table::Jobs, "").await? {
        let job: JobRecord = decode(&id, &raw)?;
        if job.owner == user.as_str() {
            out.push((id, job));
        }
    }
    Ok(out)
}

/// The tokens that speak for `user`: its own, then those of the jobs it created.
async fn tokens_of(
    s: &Service,
    user: &UserName,
    jobs: &[(String, JobRecord)],
) -> Result<Vec<(String, TokenRecord)>, ApiError> {
    let own = Subject::User {
        name: user.to_string(),
    };
    let mut mine = Vec::new();
    let mut of_jobs = Vec::new();
    for (id, raw) in s.store.scan(Table::Tokens, "").await? {
        let rec: TokenRecord = decode(&id, &raw)?;
        match &rec.subject {
            subject if *subject == own => mine.push((id, rec)),
            Subject::Job { id: job } if jobs.iter().any(|(j, _)| j == job) => {
                of_jobs.push((id, rec));
            }
            _ => {}
        }
    }
    mine.extend(of_jobs);
    Ok(mine)
}

async fn list_tokens(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    caller.operator()?;
    let user = parse_user(&user)?;
    if !s.user_exists(&user).await? {
        return Err(ApiError::NotFound(format!("user '{user}' not found")));
    }
    let jobs = jobs_of(&s, &user).await?;
    let out = tokens_of(&s, &user, &jobs)
        .await?
        .into_iter()
        .map(|(id, rec)| TokenInfo {
            id,
            user: user.to_string(),
            created_at: rfc3339(rec.created_at),
            revoked: rec.revoked,
            job_id: match rec.subject {
                Subject::Job { id } => Some(id),
                _ => None,
            },
            expires_at: rec.expires_at.map(rfc3339),
        })
        .collect();
    Ok(Json(out))
}

async fn revoke_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.operator()?;
    let slot = s.audit.reserve()?;
    let event = |outcome| {
        AuditEvent::new(caller.0.actor(), "token.revoke", None, outcome)
            .subject(format!("token:{id}"))
    };
    match set_revoked(&s, &id).await {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::NotFound(format!("token '{id}' not found"))),
        Err(e) => {
            slot.record(event("error"));
            return Err(e);
        }
    }
    s.wake_watchers();
    slot.record(event("ok"));
    Ok(StatusCode::NO_CONTENT)
}

/// Offboarding: removes `user` and revokes every token that speaks for it, its jobs' included,
/// and the grants it holds. `secrets=delete` also deletes its secrets and every grant on them;
/// `secrets=keep` keeps both, so whoever was given them keeps reading them, and a user
/// created later under the same name owns them. Grants the user gave on other owners'
/// secrets stay, as given with the authority it had then.
async fn remove_user(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<UserRemoved>, ApiError> {
    caller.operator()?;
    let q = query_map(q)?;
    let user = parse_user(&user)?;
    let delete_secrets = match q.get("secrets").map(String::as_str) {
        Some("keep") => false,
        Some("delete") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "query parameter 'secrets' must be 'keep' or 'delete', not '{other}'"
            )));
        }
        None => {
            return Err(ApiError::BadRequest(format!(
                "missing query parameter 'secrets': say whether to 'keep' or 'delete' the secrets of user '{user}'"
            )));
        }
    };
    if !s.user_exists(&user).await? {
        return Err(ApiError::NotFound(format!("user '{user}' not found")));
    }
    let jobs = jobs_of(&s, &user).await?;
    let tokens = tokens_of(&s, &user, &jobs).await?;
    let secrets = s.store.list_secrets(&format!("{user}/")).await?;
    let mut grants: Vec<(String, GrantRecord)> = Vec::new();
    for (k, v) in s.store.scan(Table::Grants, "").await? {
        let g: GrantRecord = decode(&k, &v)?;
        let held = g.grantee == user.as_str();
        let on_its_secrets = delete_secrets && g.resource().is_some_and(|r| r.owner == user);
        if held || on_its_secrets {
            grants.push((k, g));
        }
    }
    let secret_lines = if delete_secrets { secrets.len() } else { 0 };
    let mut slots = s
        .audit
        .reserve_many(1 + tokens.len() + jobs.len() + grants.len() + secret_lines)?
        .into_iter();
    let mut line = |ev: AuditEvent| {
        if let Some(slot) = slots.next() {
            slot.record(ev);
        }
    };
    let actor = caller.0.actor();
    let ev = |action, uri: Option<String>, subject: String| {
        AuditEvent::new(actor.clone(), action, uri, "ok").subject(subject)
    };
    let mut done = UserRemoved {
        user: user.to_string(),
        ..Default::default()
    };
    // The user record first: from here on no token is issued for the name, and its watches end.
    let removed = s.store.delete(Table::Users, user.as_str()).await;
    if let Err(e) = removed {
        line(
            AuditEvent::new(actor.clone(), "user.delete", None, "error")
                .subject(format!("user:{user}")),
        );
        return Err(e.into());
    }
    line(ev("user.delete", None, format!("user:{user}")));
    let result = async {
        for (id, rec) in &tokens {
            if !rec.revoked {
                set_revoked(&s, id).await?;
                done.tokens_revoked += 1;
                line(ev("token.revoke", None, format!("token:{id}")));
            }
        }
        for (id, _) in &jobs {
            s.store.delete(Table::Jobs, id).await?;
            done.jobs_deleted += 1;
            line(ev("job.delete", None, format!("job:{id}")));
        }
        let mut touched = BTreeSet::new();
        for (k, g) in &grants {
            if s.store.delete(Table::Grants, k).await? {
                done.grants_removed += 1;
                line(ev(
                    "grant.revoke",
                    Some(g.uri.clone()),
                    format!("user:{}", g.grantee),
                ));
                touched.insert(g.grantee.clone());
            }
        }
        if delete_secrets {
            for (k, _) in &secrets {
                if let Some(rev) = s.store.delete_secret(k).await? {
                    done.secrets_deleted += 1;
                    s.changed.send_replace(rev);
                    let uri = format!("secret://{}/{k}", s.cluster);
                    line(ev("secret.delete", Some(uri), format!("user:{user}")));
                }
            }
        } else {
            done.secrets_kept = secrets.len();
        }
        for grantee in touched {
            if let Ok(g) = UserName::new(&grantee) {
                s.acl_changed(&g).await?;
            }
        }
        Ok::<_, ApiError>(())
    }
    .await;
    s.wake_watchers();
    if let Err(e) = result {
        line(
            AuditEvent::new(actor.clone(), "user.delete", None, "error")
                .subject(format!("user:{user}")),
        );
        return Err(e);
    }
    Ok(Json(done))
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
    Router::new()
        .route("/api/v1/ping", get(crate::health::ping))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/secrets", post(put_secret).get(list_secrets))
        .route("/api/v1/secrets/resolve", post(resolve))
        .route("/api/v1/secrets/watch", get(watch))
        .route(
            "/api/v1/secrets/{owner}/{key}",
            get(get_secret).delete(delete_secret),
        )
        .route(
            "/api/v1/users/{user}/permissions",
            post(grant).get(list_permissions).delete(revoke),
        )
        .route("/api/v1/users/{user}/permissions/shared", get(list_shared))
        .route("/api/v1/jobs", post(create_job))
        .route("/api/v1/jobs/{id}", delete(delete_job))
        .route("/api/v1/admin/users", post(create_user))
        .route("/api/v1/admin/users/{user}", delete(remove_user))
        .route(
            "/api/v1/admin/users/{user}/tokens",
            post(issue_token).get(list_tokens),
        )
        .route("/api/v1/admin/tokens/{id}", delete(revoke_token))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::admit::admit,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that starts and never ends (a client trickling, or gone silent) is cut off at
    /// `BODY_TIMEOUT` with 408, whatever its pace.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_times_out() {
        let never = futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        let req = Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from_stream(never))
            .unwrap();
        let t0 = tokio::time::Instant::now();
        let err = read_json::<serde_json::Value, _>(req, &())
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT, "{err}");
        assert_eq!(t0.elapsed(), BODY_TIMEOUT);
    }
}
