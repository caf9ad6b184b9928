//! Console sessions: opened with a user token, kept in the store (`Table::Sessions`, keyed by
//! `USER/` and the keyed hash of a random id, as tokens are), ended by idle or absolute expiry,
//! by log-out, by the revocation of the token they were opened with or by the removal of their
//! user. The cookie that carries the id, and the limit on failed log-ins, are the console's.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use super::{Domain, DomainError, Principal, auth};
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::clock::{now_micros, now_secs};
use crate::crypto::{hex, random_bytes};
use crate::records::{Subject, decode, encode};
use crate::store::{Store, Table};

/// A session unused this long ends.
pub const IDLE_TTL: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after log-in, used or not.
pub const ABSOLUTE_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions one user may have open at once; a log-in past it ends the one used the longest
/// ago, and expired ones are removed at every log-in.
pub const MAX_SESSIONS_PER_USER: usize = 16;
/// The session's last use is written back at most this often.
const TOUCH_EVERY_S: u64 = 60;

/// What the store keeps of a session: never the token it was opened with.
#[derive(Debug, Serialize, Deserialize)]
struct SessionRecord {
    user: String,
    /// The id of the token it was opened with: revoking that token ends the session.
    token_id: String,
    created_at: u64,
    /// The log-in's time in microseconds: orders sessions opened within one second.
    #[serde(default)]
    created_us: u64,
    last_seen: u64,
    /// The per-session token every state-changing request carries (`X-CSRF-Token`).
    csrf: String,
}

impl SessionRecord {
    fn expired(&self, now: u64) -> bool {
        now >= self.created_at + ABSOLUTE_TTL.as_secs()
            || now >= self.last_seen + IDLE_TTL.as_secs()
    }
}

/// A live session.
#[derive(Debug)]
pub struct Session {
    pub principal: Principal,
    name: secrets_core::UserName,
    pub user: String,
    pub csrf: String,
    key: String,
    /// The id of the token the session was opened with (for the audit log).
    token_id: String,
}

impl Session {
    /// The session's user.
    pub fn name(&self) -> &secrets_core::UserName {
        &self.name
    }

    /// Checks the per-session CSRF token, in constant time.
    pub fn check_csrf(&self, presented: &str) -> Result<(), DomainError> {
        match bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes())) {
            true => Ok(()),
            false => Err(DomainError::forbidden(
                "cross-site request refused: the CSRF token does not match this session",
            )),
        }
    }
}

/// A session just opened, and the id its cookie carries (`USER.ID`).
#[derive(Debug)]
pub struct Opened {
    pub user: String,
    pub id: String,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// At log-in: removes `user`'s expired sessions, then the least recently used ones until
/// one more fits under `MAX_SESSIONS_PER_USER`.
async fn make_room(store: &dyn Store, user: &str) -> Result<(), DomainError> {
    let now = now_secs();
    let mut live = Vec::new();
    for (key, raw) in store.scan(Table::Sessions, &format!("{user}/")).await? {
        let rec: Option<SessionRecord> = decode("console session", &raw).ok();
        match rec {
            Some(r) if !r.expired(now) => live.push((r.last_seen, r.created_us, key)),
            _ => {
                store.delete(Table::Sessions, &key).await?;
            }
        }
    }
    live.sort();
    let excess = (live.len() + 1).saturating_sub(MAX_SESSIONS_PER_USER);
    for (_, _, key) in live.into_iter().take(excess) {
        store.delete(Table::Sessions, &key).await?;
    }
    Ok(())
}

impl Domain {
    /// The store key of a session: `USER/` and the keyed hash of its id, so that a user's
    /// sessions can be counted at log-in.
    fn session_key(&self, user: &str, id: &str) -> String {
        format!("{user}/{}", hex(&self.keys.token_hash(id)))
    }

    /// Whom a log-in with `token` tries to log in as: the user (or `~operator`, `~job`) of the
    /// token id it names, `""` for an id that names no token or a token of the wrong shape.
    /// Failed log-ins are counted by it.
    pub async fn login_target(&self, token: &str) -> Result<String, DomainError> {
        let Some((id, _)) = auth::token_parts(token) else {
            return Ok(String::new());
        };
        Ok(
            match auth::load_token(self.store.as_ref(), id)
                .await?
                .map(|t| t.subject)
            {
                Some(Subject::User { name }) => name,
                Some(Subject::Operator) => "~operator".into(),
                Some(Subject::Job { .. }) => "~job".into(),
                None => String::new(),
            },
        )
    }

    /// Opens a session with a user token. `Unauthenticated` for a token that is not good,
    /// `Forbidden` for one of the operator or a job: both are failed log-ins.
    pub async fn open_session(&self, token: &str) -> Result<Opened, DomainError> {
        let user = match self.authenticate(token).await? {
            Principal::User(u) => u,
            _ => {
                return Err(DomainError::forbidden(
                    "the console is for users: log in with a user token (the operator makes \
                     one with: neuro admin token add USER)",
                ));
            }
        };
        let token_id = auth::token_parts(token)
            .map(|(id, _)| id.to_owned())
            .unwrap_or_default();
        // The audit log fails closed here too: no session it cannot record.
        let slot = self.audit.reserve()?;
        let event = AuditEvent::new(
            format!("user:{user}"),
            AuditAction::SessionOpen,
            None,
            Outcome::Ok,
        )
        .subject(format!("token:{token_id}"));
        let id = b64(&random_bytes::<32>());
        let now = now_secs();
        let rec = SessionRecord {
            user: user.to_string(),
            token_id,
            created_at: now,
            created_us: now_micros(),
            last_seen: now,
            csrf: b64(&random_bytes::<32>()),
        };
        make_room(self.store.as_ref(), user.as_str()).await?;
        let key = self.session_key(user.as_str(), &id);
        if !self
            .store
            .insert_new(Table::Sessions, &key, &encode(&rec))
            .await?
        {
            return Err(DomainError::Conflict("session id clash; retry".into()));
        }
        slot.record(event);
        tracing::info!(user = %user, "console session opened");
        Ok(Opened {
            user: user.to_string(),
            id,
        })
    }

    /// The session `user`'s id `id` names, if it is live; an ended or expired one is
    /// deleted.
    pub async fn session(&self, user: &str, id: &str) -> Result<Option<Session>, DomainError> {
        let key = self.session_key(user, id);
        let store = self.store.as_ref();
        let Some(raw) = store.get(Table::Sessions, &key).await? else {
            return Ok(None);
        };
        let mut rec: SessionRecord = decode("console session", &raw)?;
        let now = now_secs();
        let expired = rec.expired(now) || rec.user != user;
        // The token it was opened with must still be good, and its user the same user.
        let token_ok = match auth::load_token(store, &rec.token_id).await? {
            Some(t) => {
                !t.revoked
                    && t.expires_at.is_none_or(|e| e > now)
                    && t.incarnation.is_some()
                    && t.incarnation == auth::user_incarnation(store, &rec.user).await?
            }
            None => false,
        };
        let name = secrets_core::UserName::new(&rec.user).ok();
        let (false, true, Some(name)) = (expired, token_ok, name) else {
            store.delete(Table::Sessions, &key).await?;
            return Ok(None);
        };
        if now >= rec.last_seen + TOUCH_EVERY_S {
            rec.last_seen = now;
            store.put(Table::Sessions, &key, &encode(&rec)).await?;
        }
        Ok(Some(Session {
            principal: Principal::User(name.clone()),
            name,
            user: rec.user,
            csrf: rec.csrf,
            key,
            token_id: rec.token_id,
        }))
    }

    /// Log-out: the session's record goes, so its cookie opens nothing any more.
    pub async fn close_session(&self, s: &Session) -> Result<(), DomainError> {
        let slot = self.audit.reserve()?;
        self.store.delete(Table::Sessions, &s.key).await?;
        slot.record(
            AuditEvent::new(
                format!("user:{}", s.user),
                AuditAction::SessionClose,
                None,
                Outcome::Ok,
            )
            .subject(format!("token:{}", s.token_id)),
        );
        tracing::info!(user = %s.user, "console session closed");
        Ok(())
    }
}
