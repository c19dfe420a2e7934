//! Invites: IssueInvite (internal, from the admin service's outbox) prepares an administrator's
//! credential and queues the invite email; AcceptInvite consumes the link and sets the first
//! password.

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use steward_proto::admin::v1 as admin;
use steward_proto::auth::v1 as pb;
use steward_runtime::authn::RequestContext;
use steward_runtime::{ApiError, ApiResult};

use crate::entity::{credential, link_token};
use crate::state::{
    self, invalid_credentials, key_of, organization_of, record, recorded, required_nonblank,
    timestamp, user_inputs, State, INVITE,
};
use crate::{audit, mail_queue, password};

/// AcceptInvite: checks the link and the new password, activates the administrator in the admin
/// service, then consumes the link and stores the password.
pub async fn accept(
    state: &State,
    context: &RequestContext,
    request: pb::AcceptInviteRequest,
) -> ApiResult<pb::AcceptInviteResponse> {
    let link = state.find_link(&request.token, INVITE, &context.client_address).await?;
    let credential = credential::Entity::find_by_id(link.administrator.clone())
        .one(&state.db)
        .await?
        .ok_or_else(invalid_credentials)?;
    password::validate("password", &request.password, &user_inputs(&credential))?;
    let hash = state.hasher.hash(&request.password).await?;
    let activate = admin::ActivateAdministratorRequest { name: link.administrator.clone() };
    match state.admin.clone().activate_administrator(activate).await {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::NotFound => {
            tracing::info!(administrator = %link.administrator, "invite accepted for a deleted administrator");
            return Err(invalid_credentials());
        }
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "activation failed");
            return Err(ApiError::Unavailable(
                "cannot activate the administrator now, retry later".into(),
            ));
        }
    }
    let now = state.now();
    let tx = state.begin_write().await?;
    if !state::use_link(&tx, &link.token_hash, now).await? {
        return Err(invalid_credentials());
    }
    let mut row: credential::ActiveModel = credential.clone().into();
    row.password_hash = Set(Some(hash));
    row.activated_at = Set(Some(credential.activated_at.unwrap_or(now)));
    row.updated_at = Set(now);
    row.update(&tx).await?;
    audit::record(
        &tx,
        context,
        audit::ACCEPT_INVITE,
        &link.administrator,
        false,
        "invite accepted, password set",
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(administrator = %link.administrator, "invite accepted");
    Ok(pb::AcceptInviteResponse { administrator: link.administrator })
}

/// IssueInvite (internal, idempotent by key): creates or resets the credential of a not yet
/// active administrator, ends its unused links and queues the invite email; an invite for an
/// active administrator is ignored.
pub async fn issue(
    state: &State,
    request: pb::IssueInviteRequest,
) -> ApiResult<pb::IssueInviteResponse> {
    let organization = organization_of("administrator", &request.administrator)?;
    let email = request.email.trim().to_lowercase();
    required_nonblank("email", &email)?;
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
    let existing = credential::Entity::find_by_id(request.administrator.clone()).one(&tx).await?;
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
