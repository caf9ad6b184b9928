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
    TokenIssued, WatchEvent, WatchResponse, WhoAmI,
};
use secrets_core::{
    Action, ClusterName, EnvName, MAX_VALUE_LEN, ResourceUri, SecretBytes, SecretKey, SecretRef,
    SecretUri, UriContext, UserName, VolumeMapping,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::audit::Audit;
use crate::auth::{self, JobRecord, Principal, Subject, TokenRecord, now_secs, rfc3339};
use crate::crypto::{Keys, random_bytes};
use crate::error::ApiError;
use crate::store::{Store, Table};

/// Request bodies larger than this are refused with 413: a 1 MiB value is about 1.4 MiB of
/// base64 and JSON.
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// How many URIs one resolve may ask for.
pub const MAX_RESOLVE: usize = 1000;
/// Change-log keys for grant changes: `~acl/USER` (a secret's `OWNER/KEY` never starts with `~`).
const ACL_MARKER: &str = "~acl/";
const MAX_WATCH_S: u64 = 60;
const DEFAULT_JOB_TTL_S: u64 = 24 * 3600;
const MAX_JOB_TTL_S: u64 = 7 * 24 * 3600;

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

    fn audit(
        &self,
        p: &Principal,
        action: &'static str,
        uri: Option<String>,
        outcome: &'static str,
    ) {
        self.audit.record(&p.actor(), action, uri, outcome);
    }

    /// Wakes the watchers of `user`'s secrets after a grant change.
    async fn acl_changed(&self, user: &UserName) -> Result<(), ApiError> {
        let rev = self.store.touch(&format!("{ACL_MARKER}{user}")).await?;
        self.changed.send_replace(rev);
        Ok(())
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
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthenticated("missing bearer token".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::Unauthenticated("expected an 'Authorization: Bearer TOKEN' header".into())
            })?;
        state
            .auth
            .authenticate(state.store.as_ref(), &state.keys, token.trim())
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

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
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
                    ApiError::PayloadTooLarge(format!(
                        "request body is larger than {MAX_BODY} bytes"
                    ))
                }
                other => ApiError::BadRequest(other.body_text()),
            }),
        }
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

async fn ping() -> &'static str {
    "Pong"
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
    let aad = format!("{}/{}", uri.owner, uri.key);
    let sealed = s.keys.seal(&aad, body.value.expose());
    let version = s.store.put_secret(&aad, &sealed).await?;
    s.changed.send_replace(version);
    s.audit(&caller.0, "secret.write", Some(uri.to_string()), "ok");
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
    s.audit(&caller.0, "secret.list", None, "ok");
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
    s.audit(&p, "secret.read", Some(uri.to_string()), "ok");
    Ok(value_response(&uri, version, &value))
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
    let removed = s
        .store
        .delete_secret(&format!("{}/{}", uri.owner, uri.key))
        .await?;
    let Some(rev) = removed else {
        s.audit(
            &caller.0,
            "secret.delete",
            Some(uri.to_string()),
            "not_found",
        );
        return Err(not_found_secret(&uri.key));
    };
    s.changed.send_replace(rev);
    s.audit(&caller.0, "secret.delete", Some(uri.to_string()), "ok");
    Ok(StatusCode::NO_CONTENT)
}

async fn resolve(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<ResolveRequest>,
) -> Result<Json<ResolveResponse>, ApiError> {
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
        } else if let Some((version, value)) = s.read_value(&uri).await? {
            r.status = ResolveStatus::Ok;
            r.version = Some(version);
            r.value = Some(value);
            "ok"
        } else {
            r.status = ResolveStatus::NotFound;
            r.error = Some(format!("Secret '{}' not found", uri.key));
            "not_found"
        };
        s.audit(&p, "secret.read", Some(uri.to_string()), outcome);
        results.push(r);
    }
    Ok(Json(ResolveResponse { results }))
}

async fn watch(
    State(s): State<AppState>,
    Caller(p): Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<WatchResponse>, ApiError> {
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
    let deadline = tokio::time::Instant::now() + wait;
    let marker = format!("{ACL_MARKER}{user}");
    loop {
        let changes = s.store.changes_since(since, 1000).await?;
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
                let visible = match &p {
                    Principal::Job { uris, .. } => uris.contains(&uri),
                    _ => perms.holds_secret(&uri, Action::Read),
                };
                if visible {
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
    if !s.user_exists(&grantee).await? {
        return Err(ApiError::NotFound(format!("user '{grantee}' not found")));
    }
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
    if let Some((t, _)) = targets.iter().find(|(t, _)| t.owner == grantee) {
        return Err(ApiError::BadRequest(format!(
            "user '{grantee}' owns '{t}' and holds manage on it already"
        )));
    }
    let mut out = Vec::new();
    for (t, action) in targets {
        let rec = GrantRecord {
            grantee: grantee.to_string(),
            uri: t.to_string(),
            action,
            granted_by: me.to_string(),
            created_at: now_secs(),
        };
        s.store
            .put(Table::Grants, &grant_key(&grantee, &t), &encode(&rec))
            .await?;
        s.audit(&caller.0, "grant.add", Some(t.to_string()), "ok");
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
    s.audit(&p, "grant.list", None, "ok");
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
    s.audit(&p, "grant.list", None, "ok");
    Ok(Json(out))
}

async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
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
    if !s
        .store
        .delete(Table::Grants, &grant_key(&grantee, &target))
        .await?
    {
        s.audit(
            &caller.0,
            "grant.revoke",
            Some(target.to_string()),
            "not_found",
        );
        return Err(ApiError::NotFound(format!(
            "user '{grantee}' holds no grant on '{target}'"
        )));
    }
    s.audit(&caller.0, "grant.revoke", Some(target.to_string()), "ok");
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
    let (token_id, token) = auth::issue(
        s.store.as_ref(),
        &s.keys,
        Subject::Job { id: job_id.clone() },
        Some(expires_at),
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
    for u in &uris {
        s.audit(&caller.0, "job.create", Some(u.to_string()), "ok");
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
    if !allowed {
        s.audit(&p, "job.delete", None, "denied");
        return Err(not_found());
    }
    s.store.delete(Table::Jobs, &id).await?;
    set_revoked(&s, &job.token_id).await?;
    s.audit(&p, "job.delete", None, "ok");
    Ok(StatusCode::NO_CONTENT)
}

async fn create_user(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    caller.operator()?;
    let rec = serde_json::json!({ "created_at": now_secs() });
    if !s
        .store
        .insert_new(Table::Users, body.name.as_str(), &encode(&rec))
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "user '{}' already exists",
            body.name
        )));
    }
    s.audit(&caller.0, "user.create", None, "ok");
    issue_for(&s, &caller.0, &body.name).await
}

async fn issue_for(
    s: &Service,
    p: &Principal,
    user: &UserName,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    let (token_id, token) = auth::issue(
        s.store.as_ref(),
        &s.keys,
        Subject::User {
            name: user.to_string(),
        },
        None,
    )
    .await?;
    s.audit(p, "token.issue", None, "ok");
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
    let mut out = Vec::new();
    for (id, raw) in s.store.scan(Table::Tokens, "").await? {
        let rec: TokenRecord = decode(&id, &raw)?;
        if rec.subject
            == (Subject::User {
                name: user.to_string(),
            })
        {
            out.push(TokenInfo {
                id,
                user: user.to_string(),
                created_at: rfc3339(rec.created_at),
                revoked: rec.revoked,
            });
        }
    }
    Ok(Json(out))
}

async fn revoke_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.operator()?;
    if !set_revoked(&s, &id).await? {
        return Err(ApiError::NotFound(format!("token '{id}' not found")));
    }
    s.audit(&caller.0, "token.revoke", None, "ok");
    Ok(StatusCode::NO_CONTENT)
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
        .route("/api/v1/ping", get(ping))
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
        .route(
            "/api/v1/admin/users/{user}/tokens",
            post(issue_token).get(list_tokens),
        )
        .route("/api/v1/admin/tokens/{id}", delete(revoke_token))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
