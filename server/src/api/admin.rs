//! The operator's routes: users (create, remove with everything that speaks for them) and
//! their tokens (issue, list, revoke).

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use secrets_core::UserName;
use secrets_core::api::{CreateUser, TokenInfo, TokenIssued, UserRemoved};

use super::extract::{parse_user, query_map};
use super::jobs::jobs_of;
use super::{ApiJson, AppState, Caller, Service};
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::auth::{self, Principal, rfc3339};
use crate::error::ApiError;
use crate::records::{
    GrantRecord, JobRecord, SecretName, Subject, TokenRecord, UserRecord, decode, encode,
};
use crate::store::Table;

/// Marks a token revoked and drops it from the cache; `false` when there is no such token.
pub(super) async fn set_revoked(s: &Service, token_id: &str) -> Result<bool, ApiError> {
    let Some(mut rec) = auth::load_token(s.store.as_ref(), token_id).await? else {
        return Ok(false);
    };
    rec.revoked = true;
    s.store.put(Table::Tokens, token_id, &encode(&rec)).await?;
    s.auth.forget(token_id);
    Ok(true)
}

fn user_not_found(user: &UserName) -> ApiError {
    ApiError::NotFound(format!("user '{user}' not found"))
}

pub(super) async fn create_user(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    caller.operator()?;
    let slot = s.audit.reserve()?;
    let rec = UserRecord::new();
    let event = |outcome| {
        AuditEvent::new(caller.0.actor(), AuditAction::UserCreate, None, outcome)
            .subject(format!("user:{}", body.name))
    };
    match s
        .store
        .insert_new(Table::Users, body.name.as_str(), &encode(&rec))
        .await
    {
        Ok(true) => slot.record(event(Outcome::Ok)),
        Ok(false) => {
            return Err(ApiError::Conflict(format!(
                "user '{}' already exists",
                body.name
            )));
        }
        Err(e) => {
            slot.record(event(Outcome::Error));
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
            .ok_or_else(|| user_not_found(user))?;
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
    let event = |outcome| AuditEvent::new(p.actor(), AuditAction::TokenIssue, None, outcome);
    let (token_id, token) = match issued {
        Ok(t) => t,
        Err(e) => {
            slot.record(event(Outcome::Error).subject(format!("user:{user}")));
            return Err(e);
        }
    };
    slot.record(event(Outcome::Ok).subject(format!("token:{token_id}")));
    Ok((
        StatusCode::CREATED,
        Json(TokenIssued {
            user: user.to_string(),
            token_id,
            token,
        }),
    ))
}

pub(super) async fn issue_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    caller.operator()?;
    let user = parse_user(&user)?;
    if !s.user_exists(&user).await? {
        return Err(user_not_found(&user));
    }
    issue_for(&s, &caller.0, &user).await
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

pub(super) async fn list_tokens(
    State(s): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    caller.operator()?;
    let user = parse_user(&user)?;
    if !s.user_exists(&user).await? {
        return Err(user_not_found(&user));
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
                Subject::Job { id } => secrets_core::JobId::new(&id).ok(),
                _ => None,
            },
            expires_at: rec.expires_at.map(rfc3339),
        })
        .collect();
    Ok(Json(out))
}

pub(super) async fn revoke_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.operator()?;
    let slot = s.audit.reserve()?;
    let event = |outcome| {
        AuditEvent::new(caller.0.actor(), AuditAction::TokenRevoke, None, outcome)
            .subject(format!("token:{id}"))
    };
    match set_revoked(&s, &id).await {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::NotFound(format!("token '{id}' not found"))),
        Err(e) => {
            slot.record(event(Outcome::Error));
            return Err(e);
        }
    }
    s.wake_watchers();
    slot.record(event(Outcome::Ok));
    Ok(StatusCode::NO_CONTENT)
}

/// Offboarding: removes `user` and revokes every token that speaks for it, its jobs' included,
/// and the grants it holds. `secrets=delete` also deletes its secrets and every grant on them;
/// `secrets=keep` keeps both, so whoever was given them keeps reading them, and a user
/// created later under the same name owns them. Grants the user gave on other owners'
/// secrets stay, as given with the authority it had then.
pub(super) async fn remove_user(
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
        return Err(user_not_found(&user));
    }
    let jobs = jobs_of(&s, &user).await?;
    let tokens = tokens_of(&s, &user, &jobs).await?;
    let secrets = s.store.list_secrets(&SecretName::prefix(&user)).await?;
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
        AuditEvent::new(actor.clone(), action, uri, Outcome::Ok).subject(subject)
    };
    let failed = || {
        AuditEvent::new(actor.clone(), AuditAction::UserDelete, None, Outcome::Error)
            .subject(format!("user:{user}"))
    };
    let mut done = UserRemoved {
        user: user.to_string(),
        ..Default::default()
    };
    // The user record first: from here on no token is issued for the name, and its watches end.
    let removed = s.store.delete(Table::Users, user.as_str()).await;
    if let Err(e) = removed {
        line(failed());
        return Err(e.into());
    }
    line(ev(AuditAction::UserDelete, None, format!("user:{user}")));
    let result = async {
        for (id, rec) in &tokens {
            if !rec.revoked {
                set_revoked(&s, id).await?;
                done.tokens_revoked += 1;
                line(ev(AuditAction::TokenRevoke, None, format!("token:{id}")));
            }
        }
        for (id, _) in &jobs {
            s.store.delete(Table::Jobs, id).await?;
            done.jobs_deleted += 1;
            line(ev(AuditAction::JobDelete, None, format!("job:{id}")));
        }
        let mut touched = BTreeSet::new();
        for (k, g) in &grants {
            if s.store.delete(Table::Grants, k).await? {
                done.grants_removed += 1;
                line(ev(
                    AuditAction::GrantRevoke,
                    Some(g.uri.clone()),
                    format!("user:{}", g.grantee),
                ));
                touched.insert(g.grantee.clone());
            }
        }
        if delete_secrets {
            for m in &secrets {
                let k = &m.key;
                if let Some(rev) = s.store.delete_secret(k).await? {
                    done.secrets_deleted += 1;
                    s.changed.send_replace(rev);
                    let uri = format!("secret://{}/{k}", s.cluster);
                    line(ev(
                        AuditAction::SecretDelete,
                        Some(uri),
                        format!("user:{user}"),
                    ));
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
        line(failed());
        return Err(e);
    }
    Ok(Json(done))
}
