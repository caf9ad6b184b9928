//! Grants: sharing (`grant`), revoking, and listing what a user holds and what it shared.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use secrets_core::api::{Grant, MissingPermission, SharedGrant};
use secrets_core::{Action, ResourceUri, UserName};

use super::extract::{parse_target, parse_user, query_map};
use super::{ApiJson, AppState, Caller};
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::auth::{Principal, now_secs};
use crate::error::ApiError;
use crate::records::{GrantRecord, decode, encode};
use crate::store::Table;

pub(super) async fn grant(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    ApiJson(grants): ApiJson<Vec<Grant>>,
) -> Result<(StatusCode, Json<Vec<Grant>>), ApiError> {
    const ACTION: AuditAction = AuditAction::GrantAdd;
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
        return Err(s.deny(&caller.0, ACTION, missing));
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
            AuditEvent::new(caller.0.actor(), ACTION, Some(t.to_string()), outcome)
                .subject(format!("user:{grantee}"))
        };
        if let Err(e) = s
            .store
            .put(
                Table::Grants,
                &GrantRecord::key(&grantee, &t),
                &encode(&rec),
            )
            .await
        {
            slot.record(event(Outcome::Error));
            return Err(e.into());
        }
        slot.record(event(Outcome::Ok));
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

/// What `user` holds: its own namespace (manage), then its grants by URI.
pub(super) async fn list_permissions(
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
        AuditEvent::new(p.actor(), AuditAction::GrantList, None, Outcome::Ok)
            .subject(format!("user:{user}")),
    )?;
    Ok(Json(out))
}

/// The grants on `user`'s secrets and those it gave, by URI then grantee.
pub(super) async fn list_shared(
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
        AuditEvent::new(p.actor(), AuditAction::GrantList, None, Outcome::Ok)
            .subject(format!("user:{user}")),
    )?;
    Ok(Json(out))
}

pub(super) async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<StatusCode, ApiError> {
    const ACTION: AuditAction = AuditAction::GrantRevoke;
    let q = query_map(q)?;
    let me = caller.user("revoking needs a user token")?;
    let grantee = parse_user(&user)?;
    let uri = q
        .get("uri")
        .ok_or_else(|| ApiError::BadRequest("missing query parameter 'uri'".into()))?;
    let target = parse_target(&s, me, uri)?;
    if *me != grantee && !s.perms(me).await?.holds(&target, Action::Manage) {
        return Err(s.deny_one(&caller.0, ACTION, &target, Action::Manage));
    }
    let slot = s.audit.reserve()?;
    let event = |outcome| {
        AuditEvent::new(caller.0.actor(), ACTION, Some(target.to_string()), outcome)
            .subject(format!("user:{grantee}"))
    };
    match s
        .store
        .delete(Table::Grants, &GrantRecord::key(&grantee, &target))
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            slot.record(event(Outcome::NotFound));
            return Err(ApiError::NotFound(format!(
                "user '{grantee}' holds no grant on '{target}'"
            )));
        }
        Err(e) => {
            slot.record(event(Outcome::Error));
            return Err(e.into());
        }
    }
    slot.record(event(Outcome::Ok));
    s.acl_changed(&grantee).await?;
    Ok(StatusCode::NO_CONTENT)
}
