//! Secrets: write, list, read (the hand-written value body), delete, and resolve (many reads
//! in one request, for jobs).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrets_core::api::{
    PutSecret, ResolveRequest, ResolveResponse, ResolveStatus, Resolved, SecretInfo, SecretVersion,
};
use secrets_core::{Action, MAX_VALUE_LEN, SecretKey, SecretRef, SecretUri};

use super::extract::parse_names;
use super::{ApiJson, AppState, Caller, MAX_RESOLVE, may_read};
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::error::ApiError;
use crate::records::SecretName;
use crate::values::Opened;

/// The values of one resolve answer, each asked URI counted (a repeated URI shares its read,
/// not its place in the answer): past this, the answer is refused with 413.
pub const MAX_RESOLVE_BYTES: usize = 16 * 1024 * 1024;
/// Answers larger than this are encoded off the async workers.
const BLOCKING_ENCODE: usize = 64 * 1024;

fn not_found_secret(key: &SecretKey) -> ApiError {
    ApiError::NotFound(format!("Secret '{key}' not found"))
}

pub(super) async fn put_secret(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PutSecret>,
) -> Result<(StatusCode, Json<SecretVersion>), ApiError> {
    const ACTION: AuditAction = AuditAction::SecretWrite;
    let me = caller.user("writing secrets needs a user token")?;
    let owner = body.owner.clone().unwrap_or_else(|| me.clone());
    let uri = s.uri(owner, body.key.clone());
    if body.value.is_empty() {
        s.audit_refused(&caller.0, ACTION, Some(uri.to_string()), Outcome::Invalid);
        return Err(ApiError::BadRequest(format!(
            "the value of '{}' is empty; a secret holds 1 byte to 1 MiB",
            uri.key
        )));
    }
    if body.value.len() > MAX_VALUE_LEN {
        s.audit_refused(&caller.0, ACTION, Some(uri.to_string()), Outcome::Invalid);
        return Err(ApiError::BadRequest(format!(
            "the value of '{}' is {} bytes; the limit is {MAX_VALUE_LEN} bytes (1 MiB)",
            uri.key,
            body.value.len()
        )));
    }
    if !s.perms(me).await?.holds_secret(&uri, Action::Write) {
        return Err(s.deny_one(&caller.0, ACTION, &uri, Action::Write));
    }
    let slot = s.audit.reserve()?;
    let name = SecretName::of(&uri);
    let sealed = s.keys.seal(name.as_str(), body.value.expose());
    let event = |outcome| AuditEvent::new(caller.0.actor(), ACTION, Some(uri.to_string()), outcome);
    let written = s.store.put_secret(name.as_str(), &sealed).await;
    // The old value's plaintext goes now rather than at its expiry (a read racing the write
    // may keep it again: it is never served, its seal is no longer the stored one).
    s.values.forget(name.as_str());
    let version = match written {
        Ok(v) => v,
        Err(e) => {
            slot.record(event(Outcome::Error));
            return Err(e.into());
        }
    };
    s.changed.send_replace(version);
    slot.record(event(Outcome::Ok));
    Ok((
        StatusCode::CREATED,
        Json(SecretVersion {
            key: uri.key.to_string(),
            owner: uri.owner.to_string(),
            version,
        }),
    ))
}

/// The caller's own secrets first, then those shared with it, each group by owner and key.
pub(super) async fn list_secrets(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    let me = caller.user("listing secrets needs a user token")?;
    let perms = s.perms(me).await?;
    let mut found: BTreeMap<(bool, SecretUri), (u64, Option<u64>)> = BTreeMap::new();
    let mut add = |name: &str, version: u64, updated_at: Option<u64>| {
        if let Some(uri) = SecretName::uri(&s.cluster, name) {
            found.insert((uri.owner != *me, uri), (version, updated_at));
        }
    };
    for m in s.store.list_secrets(&SecretName::prefix(me)).await? {
        add(&m.key, m.version, m.updated_at);
    }
    for (r, a) in &perms.grants {
        if *a < Action::Read || r.cluster != s.cluster || r.owner == *me {
            continue;
        }
        match &r.key {
            None => {
                for m in s.store.list_secrets(&SecretName::prefix(&r.owner)).await? {
                    add(&m.key, m.version, m.updated_at);
                }
            }
            Some(key) => {
                let name = SecretName::new(&r.owner, key);
                if let Some(st) = s.store.get_secret(name.as_str()).await? {
                    add(name.as_str(), st.version, st.updated_at);
                }
            }
        }
    }
    s.audit_read(&caller.0, AuditAction::SecretList, None)?;
    Ok(Json(
        found
            .into_iter()
            .map(|((_, uri), (version, updated_at))| SecretInfo {
                uri: uri.to_string(),
                key: uri.key.to_string(),
                owner: uri.owner.to_string(),
                version,
                updated_at: updated_at.map(crate::auth::rfc3339),
            })
            .collect(),
    ))
}

pub(super) async fn get_secret(
    State(s): State<AppState>,
    Caller(p): Caller,
    Path((owner, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    const ACTION: AuditAction = AuditAction::SecretRead;
    let (owner, key) = parse_names(&owner, &key)?;
    let uri = s.uri(owner, key);
    let perms = match p.user() {
        Some(u) => Some(s.perms(u).await?),
        None => None,
    };
    if !may_read(&p, perms.as_ref(), &uri) {
        return Err(s.deny_one(&p, ACTION, &uri, Action::Read));
    }
    let Some(value) = s.read_value(&uri).await? else {
        s.audit_refused(&p, ACTION, Some(uri.to_string()), Outcome::NotFound);
        return Err(not_found_secret(&uri.key));
    };
    let share = s.answers.take(value.base64.len() + 256, &p)?;
    s.audit_read(&p, ACTION, Some(uri.to_string()))?;
    Ok(crate::admit::hold(value_response(&uri, &value), share))
}

/// The `SecretValue` body, written by hand: the hot path of every read. Names, URIs and base64
/// never need JSON escaping, so the opened value's base64 goes straight into the body.
fn value_response(uri: &SecretUri, value: &Opened) -> Response {
    use std::fmt::Write as _;
    let mut body = String::with_capacity(160 + value.base64.len());
    let _ = write!(
        body,
        r#"{{"key":"{}","owner":"{}","uri":"{uri}","version":{},"value":""#,
        uri.key, uri.owner, value.version
    );
    body.push_str(&value.base64);
    body.push_str("\"}");
    // Wiped once hyper has sent it.
    let body = axum::body::Bytes::from_owner(crate::crypto::Wiped(body.into_bytes()));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(super) async fn delete_secret(
    State(s): State<AppState>,
    caller: Caller,
    Path((owner, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    const ACTION: AuditAction = AuditAction::SecretDelete;
    let me = caller.user("deleting secrets needs a user token")?;
    let (owner, key) = parse_names(&owner, &key)?;
    let uri = s.uri(owner, key);
    if !s.perms(me).await?.holds_secret(&uri, Action::Write) {
        return Err(s.deny_one(&caller.0, ACTION, &uri, Action::Write));
    }
    let slot = s.audit.reserve()?;
    let event = |outcome| AuditEvent::new(caller.0.actor(), ACTION, Some(uri.to_string()), outcome);
    let name = SecretName::of(&uri);
    let removed = s.store.delete_secret(name.as_str()).await;
    s.values.forget(name.as_str());
    let removed = match removed {
        Ok(r) => r,
        Err(e) => {
            slot.record(event(Outcome::Error));
            return Err(e.into());
        }
    };
    let Some(rev) = removed else {
        slot.record(event(Outcome::NotFound));
        return Err(not_found_secret(&uri.key));
    };
    s.changed.send_replace(rev);
    slot.record(event(Outcome::Ok));
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn resolve(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<ResolveRequest>,
) -> Result<Response, ApiError> {
    const ACTION: AuditAction = AuditAction::SecretRead;
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
    let mut seen: HashMap<SecretUri, Option<Arc<Opened>>> = HashMap::new();
    let mut lines: Vec<(String, Outcome)> = Vec::new();
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
            Outcome::Invalid
        } else if !may_read(&p, Some(&perms), &uri) {
            r.status = ResolveStatus::Forbidden;
            r.error = Some(format!("permission denied: missing read on {uri}"));
            Outcome::Denied
        } else {
            if first {
                let v = s.read_value(&uri).await?;
                seen.insert(uri.clone(), v);
            }
            match seen.get(&uri).cloned().flatten() {
                Some(value) => {
                    total += value.plain.len();
                    if total > MAX_RESOLVE_BYTES {
                        s.audit_refused(&p, ACTION, Some(uri.to_string()), Outcome::TooLarge);
                        return Err(ApiError::PayloadTooLarge(format!(
                            "the answer would hold more than {MAX_RESOLVE_BYTES} bytes of values \
                             (reached at '{uri}'); ask for fewer or smaller secrets per resolve"
                        )));
                    }
                    r.status = ResolveStatus::Ok;
                    r.version = Some(value.version);
                    r.value = Some(value.plain.clone());
                    Outcome::Ok
                }
                None => {
                    r.status = ResolveStatus::NotFound;
                    r.error = Some(format!("Secret '{}' not found", uri.key));
                    Outcome::NotFound
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
        s.audit
            .record(AuditEvent::new(p.actor(), ACTION, Some(uri), outcome))?;
    }
    // The values, their base64 and the JSON around them stay in memory until a slow client
    // has read them all.
    let share = s.answers.take(total * 7 / 3 + 256 * results.len(), &p)?;
    let answer = ResolveResponse { results };
    let body = if total > BLOCKING_ENCODE {
        tokio::task::spawn_blocking(move || serde_json::to_vec(&answer))
            .await
            .map_err(|e| ApiError::Internal(format!("encoding a resolve answer: {e}")))?
    } else {
        serde_json::to_vec(&answer)
    }
    .map_err(|e| ApiError::Internal(format!("encoding a resolve answer: {e}")))?;
    let body = axum::body::Bytes::from_owner(crate::crypto::Wiped(body));
    Ok(crate::admit::hold(
        ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        share,
    ))
}

#[cfg(test)]
mod tests {
    use secrets_core::api::SecretValue;
    use secrets_core::{ClusterName, SecretBytes, UserName};

    use super::*;

    /// The hand-written body reads back through `SecretValue`'s serde as what was stored, for
    /// bytes that JSON or base64 could trip on.
    #[tokio::test]
    async fn value_body_round_trips_through_secret_value() {
        let uri = SecretUri {
            cluster: ClusterName::new("neuro-compute").unwrap(),
            owner: UserName::new("alice").unwrap(),
            key: SecretKey::new("db.pass-1_x").unwrap(),
        };
        let all: Vec<u8> = (0..=255).collect();
        let cases: Vec<Vec<u8>> = vec![
            b"x".to_vec(),
            b"\"}\\\n\r\t\0".to_vec(),
            "ünïcødé ✓ \u{2028}\u{feff}".as_bytes().to_vec(),
            vec![0xff, 0xfe, 0x80, 0xc0],
            b"ab".to_vec(),
            b"abc".to_vec(),
            all.clone(),
            all.repeat(4096),
            vec![0; MAX_VALUE_LEN],
        ];
        for value in cases {
            let opened = crate::values::ValueCache::new(0).insert(
                "alice/db.pass-1_x",
                7,
                &[],
                SecretBytes::new(value.clone()),
            );
            let resp = value_response(&uri, &opened);
            assert_eq!(
                resp.headers()[header::CONTENT_TYPE],
                "application/json",
                "content type"
            );
            let body = axum::body::to_bytes(resp.into_body(), 4 << 20)
                .await
                .unwrap();
            let v: SecretValue = serde_json::from_slice(&body).unwrap();
            assert_eq!(v.key, uri.key.as_str());
            assert_eq!(v.owner, uri.owner.as_str());
            assert_eq!(v.uri, uri.to_string());
            assert_eq!(v.version, 7);
            assert!(
                v.value.expose() == value.as_slice(),
                "{} bytes",
                value.len()
            );
        }
    }
}
