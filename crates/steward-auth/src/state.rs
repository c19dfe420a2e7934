//! What the auth service's domain modules share: the database, clock, signer, hashing pool,
//! mailer and the admin service's internal client, plus the request checks, the session and link
//! helpers and the internal calls' recorded answers.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, Set};
use serde::{de::DeserializeOwned, Serialize};
use steward_proto::admin::v1 as admin;
use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
use steward_proto::auth::v1::{TokenScope as ProtoScope, TokenSet};
use steward_runtime::authn::{self, RequestContext};
use steward_runtime::claims::{Role, TokenScope};
use steward_runtime::config::AuthConfig;
use steward_runtime::names::AdministratorName;
use steward_runtime::service::{Clock, InternalChannel};
use steward_runtime::{ApiError, ApiResult};
use steward_storage::idempotency::Key;

use crate::audit;
use crate::entity::{credential, link_token, mfa_challenge, recovery_code, session};
use crate::jwt::{Signer, Subject};
use crate::mailer::Mailer;
use crate::password::Hasher;
use crate::secrets;
use crate::throttle;
use crate::IDEMPOTENCY;

/// Kind of a link token.
pub const INVITE: &str = "invite";
/// Kind of a link token.
pub const RESET: &str = "reset";

/// The one answer to a wrong email, password, code or token.
pub fn invalid_credentials() -> ApiError {
    ApiError::Unauthenticated("invalid credentials".into())
}

/// Refuses (`INVALID_ARGUMENT`) an empty `field` of a public call.
pub fn required(field: &str, value: &str) -> ApiResult<()> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    Ok(())
}

/// Longest email accepted where one is typed (sign-in, password reset): no administrator's
/// address is longer (RFC 5321), and the typed email becomes a throttle key.
pub const MAX_EMAIL_CHARS: usize = 254;

/// A typed email (`field`), trimmed and lowercased: required, at most [`MAX_EMAIL_CHARS`]
/// characters (`INVALID_ARGUMENT` otherwise), so no caller can store a megabyte-long throttle
/// key or queued message.
pub fn typed_email(field: &str, value: &str) -> ApiResult<String> {
    let email = value.trim().to_lowercase();
    required(field, &email)?;
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_EMAIL_CHARS} characters"),
        ));
    }
    Ok(email)
}

/// Refuses (`INVALID_ARGUMENT`) an empty or blank `field` of an internal call.
pub fn required_nonblank(field: &str, value: &str) -> ApiResult<()> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    Ok(())
}

/// The strength estimator's user inputs for a credential: email and organization name.
pub fn user_inputs(credential: &credential::Model) -> [&str; 2] {
    [credential.email.as_str(), credential.organization_display_name.as_str()]
}

pub use steward_runtime::wire::timestamp;

/// `organizations/{o}` of an administrator name (validated).
pub fn organization_of(field: &str, administrator: &str) -> ApiResult<String> {
    Ok(AdministratorName::parse(field, administrator)?.organization().to_string())
}

/// Shared state.
pub struct State {
    /// The auth tables.
    pub db: DatabaseConnection,
    /// Injected time.
    pub clock: Clock,
    /// Token settings.
    pub config: AuthConfig,
    /// Signs access tokens.
    pub signer: Signer,
    /// Bounded argon2id pool.
    pub hasher: Hasher,
    /// Invite and reset emails.
    pub mailer: Mailer,
    /// Seals the stored TOTP secrets.
    pub sealer: crate::sealed::Sealer,
    /// `AdminInternalService` with the service credential.
    pub admin: AdminInternalServiceClient<InternalChannel>,
    /// Administrators as [`State::lookup_leased`] last read them, kept for the caller lease.
    pub looked_up: steward_runtime::lease::Leases<String, Option<Looked>>,
    /// RefreshSession's statements, shared by concurrent calls.
    pub refreshes: crate::rotation::Refreshes,
}

/// What tokens are issued from: one session's facts.
#[derive(Debug)]
pub struct SessionFacts<'a> {
    /// Session id (`sid`).
    pub id: &'a str,
    /// Authentication methods (`amr`).
    pub amr: &'a [String],
    /// Usage restriction.
    pub scope: TokenScope,
    /// When the session (its refresh tokens) ends.
    pub expires: DateTime<Utc>,
    /// When the administrator authenticated (`auth_time`): the session's start.
    pub auth_time: DateTime<Utc>,
}

/// Shared state handle.
pub type Shared = Arc<State>;

/// An administrator as the admin service answers it, with its role's current permissions.
#[derive(Clone, Debug)]
pub struct Looked {
    /// The administrator.
    pub administrator: admin::Administrator,
    /// The permissions of its role, by name (what an organization's own role holds now).
    pub role_permissions: Vec<String>,
    /// How long the admin service lets this answer be reused (`caller_lease_ms`).
    pub lease: std::time::Duration,
}

impl std::ops::Deref for Looked {
    type Target = admin::Administrator;

    fn deref(&self) -> &Self::Target {
        &self.administrator
    }
}

impl State {
    /// The injected current time.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Opens a transaction that writes ([`steward_storage::begin_write`]).
    pub async fn begin_write(&self) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
        steward_storage::begin_write(&self.db, crate::IDEMPOTENCY.table()).await
    }

    /// Looks the administrator up in the admin service; `None` when it no longer exists.
    pub async fn lookup(&self, administrator: &str) -> ApiResult<Option<Looked>> {
        let request = admin::LookupAdministratorRequest { name: administrator.to_string() };
        match self.admin.clone().lookup_administrator(request).await {
            Ok(response) => {
                let response = response.into_inner();
                let lease = steward_runtime::lease::granted(response.caller_lease_ms);
                Ok(response.administrator.map(|administrator| Looked {
                    administrator,
                    role_permissions: response.role_permissions,
                    lease,
                }))
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "administrator lookup failed");
                Err(ApiError::Unavailable(
                    "the administrator directory is unavailable, retry later".into(),
                ))
            }
        }
    }

    /// [`State::lookup`], reused for the caller lease (`internal.caller_lease_ms`;
    /// [`steward_runtime::lease`]): the admin service waits a lease out after every write that
    /// narrows what an answer holds (role, billing, `mfa_required`, deletion), so a
    /// kept answer is never older than a change that has returned; it is kept no longer than
    /// the admin service says it waits. For RefreshSession, which mints its tokens from it; a
    /// missing administrator is asked again each time.
    pub async fn lookup_leased(&self, administrator: &str) -> ApiResult<Option<Looked>> {
        let key = administrator.to_string();
        let reuse = steward_runtime::lease::Reuse::Lease;
        self.looked_up
            .read_through(key, reuse, || async {
                let looked = self.lookup(administrator).await?;
                let lease = looked.as_ref().map_or(std::time::Duration::ZERO, |l| l.lease);
                Ok((looked, lease))
            })
            .await
    }

    /// The token subject of a looked-up administrator.
    pub fn subject(&self, looked: &Looked) -> ApiResult<Subject> {
        let administrator = &looked.administrator;
        let role = Role::from_proto(administrator.role).ok_or_else(|| {
            ApiError::internal(format!("administrator {} has no role", administrator.name))
        })?;
        let custom = role == Role::Custom;
        Ok(Subject {
            administrator: administrator.name.clone(),
            organization: organization_of("administrator", &administrator.name)?,
            role,
            role_name: if custom { administrator.role_name.clone() } else { String::new() },
            permissions: if custom { looked.role_permissions.clone() } else { Vec::new() },
            client_id: String::new(),
            not_after: None,
            billing: administrator.billing,
        })
    }

    /// Starts a session and returns its tokens. Full sessions get a refresh token valid until
    /// the session's absolute expiry; enrolment-only sessions get none and end with their
    /// access token.
    /// The sign-in is audited as `action` in the same transaction.
    pub async fn start_session(
        &self,
        subject: &Subject,
        amr: &[&str],
        scope: TokenScope,
        context: &RequestContext,
        action: &str,
    ) -> ApiResult<TokenSet> {
        let now = self.now();
        let sid = uuid::Uuid::new_v4().to_string();
        let lifetime = match scope {
            TokenScope::Full => self.config.refresh_token_ttl_secs,
            TokenScope::MfaEnrollment => self.config.access_token_ttl_secs,
        };
        let expires = now
            + chrono::Duration::seconds(i64::try_from(lifetime).unwrap_or(i64::MAX / 4_000_000));
        // Full sessions get a refresh family and its first token.
        let refresh = match scope {
            TokenScope::Full => Some(crate::rotation::new_family()),
            TokenScope::MfaEnrollment => None,
        };
        let row = session::ActiveModel {
            id: Set(sid.clone()),
            administrator: Set(subject.administrator.clone()),
            organization: Set(subject.organization.clone()),
            amr: Set(amr.join(" ")),
            scope: Set(scope_name(scope).into()),
            created_at: Set(now),
            expires_at: Set(expires),
            revoked_at: Set(None),
            refresh_family: Set(refresh.as_ref().map(|f| f.family_hash.clone())),
            refresh_hash: Set(refresh.as_ref().map(|f| f.token_hash.clone())),
        };
        let amr: Vec<String> = amr.iter().map(|s| s.to_string()).collect();
        let refresh = refresh.map(|f| f.token);
        {
            let tx = self.begin_write().await?;
            session::Entity::insert(row).exec(&tx).await?;
            let reason = match scope {
                TokenScope::Full => format!("signed in ({})", amr.join(", ")),
                TokenScope::MfaEnrollment => "signed in for MFA enrolment only".to_string(),
            };
            audit::record(&tx, context, action, &subject.administrator, false, &reason, now)
                .await?;
            tx.commit().await?;
        }
        tracing::info!(administrator = %subject.administrator, session = %sid, scope = scope_name(scope), "session started");
        let session = SessionFacts { id: &sid, amr: &amr, scope, expires, auth_time: now };
        self.token_set(subject, &session, refresh)
    }

    /// The caller's credential, if the session its token names is still live: an access token
    /// outlives sign-out, revocation and deletion by its lifetime, so this service, which
    /// holds the sessions, refuses it at once (`UNAUTHENTICATED`).
    pub async fn signed_in(&self, principal: &authn::Principal) -> ApiResult<credential::Model> {
        live_session(&self.db, principal, self.now()).await?;
        credential::Entity::find_by_id(principal.administrator.clone())
            .filter(credential::Column::Organization.eq(principal.organization.as_str()))
            .one(&self.db)
            .await?
            .ok_or_else(|| ApiError::NotFound(principal.administrator.clone()))
    }

    /// Tokens for an existing session.
    pub fn token_set(
        &self,
        subject: &Subject,
        session: &SessionFacts<'_>,
        refresh: Option<String>,
    ) -> ApiResult<TokenSet> {
        let scope = session.scope;
        let (access, access_expires) = self.signer.sign(
            subject,
            session.id,
            session.amr,
            scope,
            self.now(),
            session.auth_time,
        )?;
        Ok(TokenSet {
            access_token: access,
            access_token_expire_time: Some(timestamp(access_expires)),
            refresh_token_expire_time: refresh.as_ref().map(|_| timestamp(session.expires)),
            refresh_token: refresh.unwrap_or_default(),
            token_type: "Bearer".into(),
            scope: match scope {
                TokenScope::Full => ProtoScope::Full,
                TokenScope::MfaEnrollment => ProtoScope::MfaEnrollment,
            } as i32,
        })
    }

    /// A valid (unused, unexpired) link token of `kind`, or "invalid credentials".
    ///
    /// Invalid tokens count against the client address ([`throttle::LINK_ADDRESS`]), reserved
    /// before the lookup; a valid one gives its slot back.
    pub async fn find_link(
        &self,
        token: &str,
        kind: &str,
        client_address: &str,
    ) -> ApiResult<link_token::Model> {
        if token.is_empty() {
            return Err(ApiError::invalid("token", "is required"));
        }
        let key = throttle::link_address_key(client_address);
        throttle::reserve(&self.db, &key, &throttle::LINK_ADDRESS, self.now()).await?;
        let link = link_token::Entity::find_by_id(secrets::digest(token))
            .one(&self.db)
            .await?
            .filter(|l| l.kind == kind && l.used_at.is_none() && l.expires_at > self.now())
            .ok_or_else(invalid_credentials)?;
        throttle::release(&self.db, &key).await?;
        Ok(link)
    }

    /// Link lifetime in hours, for email text.
    pub fn link_hours(&self) -> u64 {
        self.config.invite_ttl_secs.div_ceil(3600)
    }

    /// How long a link lives.
    pub fn link_lifetime(&self) -> chrono::Duration {
        // Capped at ten years, so adding it to a time cannot overflow.
        let secs = self.config.invite_ttl_secs.min(10 * 365 * 24 * 3600);
        chrono::Duration::seconds(i64::try_from(secs).unwrap_or(72 * 3600))
    }

    /// The expiry of a link issued now.
    pub fn link_expiry(&self) -> DateTime<Utc> {
        self.now() + self.link_lifetime()
    }
}

/// Stored name of a scope.
pub fn scope_name(scope: TokenScope) -> &'static str {
    match scope {
        TokenScope::Full => "full",
        TokenScope::MfaEnrollment => "mfa_enrollment",
    }
}

/// Revokes one session; returns whether it was live.
pub async fn revoke_session(
    conn: &impl ConnectionTrait,
    sid: &str,
    now: DateTime<Utc>,
) -> ApiResult<bool> {
    let result = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .filter(session::Column::Id.eq(sid))
        .filter(session::Column::RevokedAt.is_null())
        .exec(conn)
        .await?;
    Ok(result.rows_affected > 0)
}

/// Refuses (`UNAUTHENTICATED`) a principal whose session was revoked or has ended.
pub async fn live_session(
    conn: &impl ConnectionTrait,
    principal: &authn::Principal,
    now: chrono::DateTime<chrono::Utc>,
) -> ApiResult<()> {
    let live =
        session::Entity::find_by_id(principal.session.clone()).one(conn).await?.is_some_and(|s| {
            s.administrator == principal.administrator
                && s.revoked_at.is_none()
                && s.expires_at > now
        });
    if !live {
        return Err(ApiError::Unauthenticated("the session has ended; sign in again".into()));
    }
    Ok(())
}

/// Revokes every live session of `administrator` except `keep`; returns how many.
pub async fn revoke_sessions(
    conn: &impl ConnectionTrait,
    administrator: &str,
    keep: Option<&str>,
    now: DateTime<Utc>,
) -> ApiResult<u64> {
    if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        // The rows locked in the order a rotation batch locks them (`rotation`), so a batch
        // holding two of this administrator's sessions cannot deadlock with this.
        const REVOKE: &str = "UPDATE auth_sessions SET revoked_at = $1 \
            WHERE id = ANY(ARRAY( \
                SELECT id FROM auth_sessions \
                WHERE administrator = $2 AND revoked_at IS NULL AND id IS DISTINCT FROM $3 \
                ORDER BY id COLLATE \"C\" FOR NO KEY UPDATE)) \
              AND revoked_at IS NULL";
        let values = [now.into(), administrator.into(), keep.map(str::to_string).into()];
        let statement =
            sea_orm::Statement::from_sql_and_values(sea_orm::DbBackend::Postgres, REVOKE, values);
        return Ok(conn.execute(statement).await?.rows_affected());
    }
    let mut update = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .filter(session::Column::Administrator.eq(administrator))
        .filter(session::Column::RevokedAt.is_null());
    if let Some(keep) = keep {
        update = update.filter(session::Column::Id.ne(keep));
    }
    Ok(update.exec(conn).await?.rows_affected)
}

/// Deletes the recovery codes and MFA challenges of `administrator` and revokes its sessions;
/// returns how many sessions were revoked.
pub async fn forget_mfa_and_sessions(
    conn: &impl ConnectionTrait,
    administrator: &str,
    now: DateTime<Utc>,
) -> ApiResult<u64> {
    recovery_code::Entity::delete_many()
        .filter(recovery_code::Column::Administrator.eq(administrator))
        .exec(conn)
        .await?;
    mfa_challenge::Entity::delete_many()
        .filter(mfa_challenge::Column::Administrator.eq(administrator))
        .exec(conn)
        .await?;
    revoke_sessions(conn, administrator, None, now).await
}

/// Consumes a link token; false when another call used it first.
pub async fn use_link(
    conn: &impl ConnectionTrait,
    token_hash: &str,
    now: DateTime<Utc>,
) -> ApiResult<bool> {
    let result = link_token::Entity::update_many()
        .col_expr(link_token::Column::UsedAt, Expr::value(now))
        .filter(link_token::Column::TokenHash.eq(token_hash))
        .filter(link_token::Column::UsedAt.is_null())
        .exec(conn)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Issues the link `token` of `kind` for `administrator`, invalidating its other unused links.
///
/// `token` is the message's own ([`crate::sealed::Sealer::mail_link`]): delivering a message
/// again issues the same link, with the expiry it got first, so every copy of the message works
/// and none lives longer. Returns `false`, issuing nothing, when that link has been used or has
/// expired: the message has done its job, or come too late. (A used or expired link's row is
/// kept until a day past its expiry, and a message older than a link's lifetime is not
/// delivered at all (`mail_queue`), so a spent link is never issued again.)
pub async fn issue_link(
    conn: &impl ConnectionTrait,
    token: &str,
    (administrator, organization, kind): (&str, &str, &str),
    now: DateTime<Utc>,
    expires: DateTime<Utc>,
) -> ApiResult<bool> {
    let token_hash = secrets::digest(token);
    link_token::Entity::delete_many()
        .filter(link_token::Column::Administrator.eq(administrator))
        .filter(link_token::Column::UsedAt.is_null())
        .filter(link_token::Column::TokenHash.ne(token_hash.as_str()))
        .exec(conn)
        .await?;
    if let Some(existing) = link_token::Entity::find_by_id(token_hash.clone()).one(conn).await? {
        let spent = existing.used_at.is_some() || existing.expires_at <= now;
        return Ok(!spent && existing.administrator == administrator);
    }
    link_token::Entity::insert(link_token::ActiveModel {
        token_hash: Set(token_hash),
        administrator: Set(administrator.to_string()),
        organization: Set(organization.to_string()),
        kind: Set(kind.to_string()),
        expires_at: Set(expires),
        used_at: Set(None),
        created_at: Set(now),
    })
    .exec(conn)
    .await?;
    Ok(true)
}

/// The key of an internal call: its outbox idempotency key, which is required.
///
/// Internal calls with a key record it and their answer ([`record`]) in the transaction of the
/// change; a repeated key returns the recorded answer ([`recorded`]) and does nothing else.
pub fn key_of(rpc: &str, idempotency_key: &str) -> ApiResult<Key> {
    required_nonblank("idempotency_key", idempotency_key)?;
    Key::new(rpc, "internal", idempotency_key)
        .ok_or_else(|| ApiError::invalid("idempotency_key", "is required"))
}

/// The answer recorded under `key` by an earlier call, if any.
pub async fn recorded<T: DeserializeOwned>(
    conn: &impl ConnectionTrait,
    key: &Key,
) -> ApiResult<Option<T>> {
    let Some(answer) = IDEMPOTENCY.recall(conn, Some(key)).await? else {
        return Ok(None);
    };
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| ApiError::internal(format!("recorded answer unreadable: {e}")))
}

/// Records `answer` under `key`, in the transaction of the change.
pub async fn record<T: Serialize>(
    conn: &impl ConnectionTrait,
    key: &Key,
    answer: &T,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let answer =
        serde_json::to_string(answer).map_err(|e| ApiError::internal(format!("answer: {e}")))?;
    IDEMPOTENCY.record(conn, Some(key), &answer, now).await?;
    Ok(())
}
