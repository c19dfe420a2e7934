//! `steward.auth.v1.AuthInternalService`: credential side effects of administrator changes,
//! called by the admin service's outbox relay (so every call may be a retry). The layer admits
//! only the service credential. Calls with an idempotency key record the key and the answer in
//! the same transaction as the change; a repeated key returns the recorded answer and does
//! nothing else (in particular, no second invite email).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use serde::{de::DeserializeOwned, Serialize};
use steward_proto::auth::v1::auth_internal_service_server::AuthInternalService;
use steward_proto::auth::v1::{self as pb};
use steward_runtime::{ApiError, ApiResult};
use tonic::{Request, Response, Status};

use crate::entity::{credential, link_token, mfa_challenge, recovery_code};
use crate::mail_queue;
use crate::state::{self, organization_of, respond, timestamp, Shared};
use crate::IDEMPOTENCY;
use steward_storage::idempotency::Key;

/// The internal auth service.
#[derive(Clone)]
pub struct Internal {
    state: Shared,
}

impl Internal {
    /// Over the shared state.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

fn required(field: &str, value: &str) -> ApiResult<()> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    Ok(())
}

/// The key of an internal call: its outbox idempotency key, which is required.
fn key_of(rpc: &str, idempotency_key: &str) -> ApiResult<Key> {
    required("idempotency_key", idempotency_key)?;
    Key::new(rpc, "internal", idempotency_key)
        .ok_or_else(|| ApiError::invalid("idempotency_key", "is required"))
}

async fn recorded<T: DeserializeOwned>(
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

async fn record<T: Serialize>(
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

/// Revokes sessions and deletes pending links, challenges and recovery codes.
async fn forget_mfa_and_sessions(
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
    state::revoke_sessions(conn, administrator, None, now).await
}

impl Internal {
    async fn do_issue_invite(
        &self,
        request: pb::IssueInviteRequest,
    ) -> ApiResult<pb::IssueInviteResponse> {
        let state = &self.state;
        let organization = organization_of("administrator", &request.administrator)?;
        let email = request.email.trim().to_lowercase();
        required("email", &email)?;
        let key = key_of("issue_invite", &request.idempotency_key)?;
        let answer = |expires: i64| pb::IssueInviteResponse {
            expire_time: Some(prost_types::Timestamp { seconds: expires, nanos: 0 }),
        };
        if let Some(expires) = recorded::<i64>(&state.db, &key).await? {
            return Ok(answer(expires));
        }
        let now = state.now();
        let expires = state.link_expiry();
        let tx = state.begin_write().await?;
        let existing =
            credential::Entity::find_by_id(request.administrator.clone()).one(&tx).await?;
        if let Some(existing) = &existing {
            if existing.password_hash.is_some() {
                // Already active: an invite would let its link overwrite the password.
                tracing::info!(administrator = %request.administrator, "invite for an active administrator ignored");
                record(&tx, &key, &now.timestamp(), now).await?;
                tx.commit().await?;
                return Ok(answer(now.timestamp()));
            }
        }
        let row = credential::ActiveModel {
            administrator: Set(request.administrator.clone()),
            organization: Set(organization.clone()),
            organization_display_name: Set(request.organization_display_name.clone()),
            email: Set(email),
            password_hash: Set(None),
            activated_at: Set(None),
            mfa_secret: Set(None),
            mfa_enrolled: Set(false),
            mfa_pending_secret: Set(None),
            mfa_pending_expires_at: Set(None),
            mfa_last_step: Set(None),
            created_at: Set(existing.as_ref().map_or(now, |e| e.created_at)),
            updated_at: Set(now),
        };
        if existing.is_some() {
            row.update(&tx).await?;
        } else {
            row.insert(&tx).await?;
        }
        // A new invite ends the previous link at once; the new one is issued on delivery.
        link_token::Entity::delete_many()
            .filter(link_token::Column::Administrator.eq(request.administrator.as_str()))
            .filter(link_token::Column::UsedAt.is_null())
            .exec(&tx)
            .await?;
        record(&tx, &key, &expires.timestamp(), now).await?;
        // Queued with the change and sent by the mail relay after the commit (the link is issued
        // then), so no SMTP conversation holds this transaction open.
        let mail = mail_queue::InviteMail {
            administrator: request.administrator.clone(),
            organization,
            email: request.email.trim().to_string(),
            organization_display_name: request.organization_display_name.clone(),
            inviter_email: request.inviter_email.clone(),
        };
        mail_queue::queue_invite(&tx, &mail, now).await?;
        tx.commit().await?;
        tracing::info!(administrator = %request.administrator, "invite issued");
        Ok(pb::IssueInviteResponse { expire_time: Some(timestamp(expires)) })
    }

    async fn do_revoke(
        &self,
        request: pb::RevokeSessionsRequest,
    ) -> ApiResult<pb::RevokeSessionsResponse> {
        let state = &self.state;
        organization_of("administrator", &request.administrator)?;
        let key = key_of("revoke_sessions", &request.idempotency_key)?;
        if let Some(count) = recorded::<i32>(&state.db, &key).await? {
            return Ok(pb::RevokeSessionsResponse { revoked_count: count });
        }
        let now = state.now();
        let tx = state.begin_write().await?;
        let revoked = state::revoke_sessions(&tx, &request.administrator, None, now).await?;
        let count = i32::try_from(revoked).unwrap_or(i32::MAX);
        record(&tx, &key, &count, now).await?;
        tx.commit().await?;
        tracing::info!(administrator = %request.administrator, revoked, reason = %request.reason, "sessions revoked");
        Ok(pb::RevokeSessionsResponse { revoked_count: count })
    }

    async fn do_delete(
        &self,
        request: pb::DeleteCredentialsRequest,
    ) -> ApiResult<pb::DeleteCredentialsResponse> {
        let state = &self.state;
        organization_of("administrator", &request.administrator)?;
        let key = key_of("delete_credentials", &request.idempotency_key)?;
        if recorded::<bool>(&state.db, &key).await?.is_some() {
            return Ok(pb::DeleteCredentialsResponse {});
        }
        let now = state.now();
        let tx = state.begin_write().await?;
        let revoked = forget_mfa_and_sessions(&tx, &request.administrator, now).await?;
        link_token::Entity::delete_many()
            .filter(link_token::Column::Administrator.eq(request.administrator.as_str()))
            .exec(&tx)
            .await?;
        credential::Entity::delete_by_id(request.administrator.clone()).exec(&tx).await?;
        record(&tx, &key, &true, now).await?;
        tx.commit().await?;
        tracing::info!(administrator = %request.administrator, revoked, "credentials deleted");
        Ok(pb::DeleteCredentialsResponse {})
    }

    async fn do_reset_mfa(&self, request: pb::ResetMfaRequest) -> ApiResult<pb::ResetMfaResponse> {
        let state = &self.state;
        organization_of("administrator", &request.administrator)?;
        let now = state.now();
        let tx = state.begin_write().await?;
        credential::Entity::update_many()
            .col_expr(credential::Column::MfaSecret, Expr::value(Option::<String>::None))
            .col_expr(credential::Column::MfaEnrolled, Expr::value(false))
            .col_expr(credential::Column::MfaPendingSecret, Expr::value(Option::<String>::None))
            .col_expr(
                credential::Column::MfaPendingExpiresAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(credential::Column::MfaLastStep, Expr::value(Option::<i64>::None))
            .col_expr(credential::Column::UpdatedAt, Expr::value(now))
            .filter(credential::Column::Administrator.eq(request.administrator.as_str()))
            .exec(&tx)
            .await?;
        let revoked = forget_mfa_and_sessions(&tx, &request.administrator, now).await?;
        tx.commit().await?;
        tracing::info!(administrator = %request.administrator, revoked, "mfa reset");
        Ok(pb::ResetMfaResponse {})
    }
}

#[tonic::async_trait]
impl AuthInternalService for Internal {
    async fn issue_invite(
        &self,
        request: Request<pb::IssueInviteRequest>,
    ) -> Result<Response<pb::IssueInviteResponse>, Status> {
        respond(self.do_issue_invite(request.into_inner()).await)
    }

    async fn revoke_sessions(
        &self,
        request: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        respond(self.do_revoke(request.into_inner()).await)
    }

    async fn delete_credentials(
        &self,
        request: Request<pb::DeleteCredentialsRequest>,
    ) -> Result<Response<pb::DeleteCredentialsResponse>, Status> {
        respond(self.do_delete(request.into_inner()).await)
    }

    async fn reset_mfa(
        &self,
        request: Request<pb::ResetMfaRequest>,
    ) -> Result<Response<pb::ResetMfaResponse>, Status> {
        respond(self.do_reset_mfa(request.into_inner()).await)
    }
}
