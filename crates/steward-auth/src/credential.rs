//! An administrator's credential after the invite: ChangePassword, RequestPasswordReset and
//! ResetPassword, and the internal DeleteCredentials. (Hashing and the strength check are in
//! [`crate::password`].)

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use steward_proto::auth::v1 as pb;
use steward_runtime::authn::{AdministratorCall, RequestContext};
use steward_runtime::names::OrganizationName;
use steward_runtime::{ApiError, ApiResult};

use crate::entity::{credential, link_token};
use crate::state::{
    self, forget_mfa_and_sessions, invalid_credentials, key_of, live_session, organization_of,
    record, recorded, required, user_inputs, State, RESET,
};
use crate::throttle::{self, ACCOUNT};
use crate::{audit, mail_queue, password};

/// ChangePassword: checks the caller's current password (throttled like sign-in), stores the new
/// one and revokes the caller's other sessions.
pub async fn change_password(
    state: &State,
    call: &AdministratorCall,
    request: pb::ChangePasswordRequest,
) -> ApiResult<pb::ChangePasswordResponse> {
    let AdministratorCall { principal, context } = call;
    required("current_password", &request.current_password)?;
    required("new_password", &request.new_password)?;
    let credential = state.signed_in(principal).await?;
    let admission = throttle::Admission::admit(
        &state.db,
        throttle::account_key(&credential.email),
        &ACCOUNT,
        &context.client_address,
        state.now(),
    )
    .await?;
    if !state.hasher.verify(&request.current_password, credential.password_hash.as_deref()).await? {
        let now = state.now();
        let reason = "the current password was wrong";
        audit::record(
            &state.db,
            context,
            audit::CHANGE_PASSWORD,
            &principal.administrator,
            true,
            reason,
            now,
        )
        .await?;
        tracing::info!(administrator = %principal.administrator, "password change refused");
        return Err(invalid_credentials());
    }
    admission.succeeded(&state.db, state.now()).await?;
    password::validate("new_password", &request.new_password, &user_inputs(&credential))?;
    let hash = state.hasher.hash(&request.new_password).await?;
    let now = state.now();
    let tx = state.begin_write().await?;
    // Again inside the transaction: a revocation committed during the hashing wins.
    live_session(&tx, principal, now).await?;
    let mut row: credential::ActiveModel = credential.into();
    row.password_hash = Set(Some(hash));
    row.updated_at = Set(now);
    row.update(&tx).await?;
    let revoked =
        state::revoke_sessions(&tx, &principal.administrator, Some(&principal.session), now)
            .await?;
    let reason = format!("password changed, {revoked} other session(s) revoked");
    audit::record(
        &tx,
        context,
        audit::CHANGE_PASSWORD,
        &principal.administrator,
        false,
        &reason,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(administrator = %principal.administrator, revoked, "password changed");
    Ok(pb::ChangePasswordResponse {})
}

/// RequestPasswordReset: within the per-email and per-address limits, queues a reset message
/// for the mail relay; the answer is the same whether or not the email exists or is throttled.
pub async fn request_password_reset(
    state: &State,
    context: &RequestContext,
    request: pb::RequestPasswordResetRequest,
) -> ApiResult<pb::RequestPasswordResetResponse> {
    let email = crate::state::typed_email("email", &request.email)?;
    if !request.organization.is_empty() {
        OrganizationName::parse("organization", &request.organization)?;
    }
    // The same work (throttle counters, one queued message) for known and unknown emails;
    // the lookup and the mail happen in the mail relay, so the answer's timing says nothing
    // about the email. Past the limits the answer is the same and nothing is sent.
    let now = state.now();
    let keys = [throttle::reset_key(&email), throttle::reset_address_key(&context.client_address)];
    // Both allowances are reserved in the transaction that queues the mail, so a burst of
    // parallel requests queues at most the allowance; a refusal rolls everything back.
    let tx = state.begin_write().await?;
    let reserved = match throttle::reserve(&tx, &keys[0], &throttle::RESET_EMAIL, now).await {
        Ok(_) => throttle::reserve(&tx, &keys[1], &throttle::RESET_ADDRESS, now).await,
        Err(err) => Err(err),
    };
    match reserved {
        Ok(_) => {
            let mail = mail_queue::ResetMail { email, organization: request.organization };
            mail_queue::queue_reset(&tx, &mail, now).await?;
            tx.commit().await?;
        }
        Err(ApiError::ResourceExhausted { .. }) => {
            tx.rollback().await?;
            tracing::info!("password reset request throttled, nothing sent");
        }
        Err(err) => return Err(err),
    }
    Ok(pb::RequestPasswordResetResponse {})
}

/// ResetPassword: consumes a reset link, stores the new password and revokes every session.
pub async fn reset_password(
    state: &State,
    context: &RequestContext,
    request: pb::ResetPasswordRequest,
) -> ApiResult<pb::ResetPasswordResponse> {
    let link = state.find_link(&request.token, RESET, &context.client_address).await?;
    let credential = credential::Entity::find_by_id(link.administrator.clone())
        .one(&state.db)
        .await?
        .ok_or_else(invalid_credentials)?;
    password::validate("new_password", &request.new_password, &user_inputs(&credential))?;
    let hash = state.hasher.hash(&request.new_password).await?;
    let now = state.now();
    let tx = state.begin_write().await?;
    if !state::use_link(&tx, &link.token_hash, now).await? {
        return Err(invalid_credentials());
    }
    let email = credential.email.clone();
    let mut row: credential::ActiveModel = credential.into();
    row.password_hash = Set(Some(hash));
    row.updated_at = Set(now);
    row.update(&tx).await?;
    let revoked = state::revoke_sessions(&tx, &link.administrator, None, now).await?;
    let reason = format!("password reset by email link, {revoked} session(s) revoked");
    audit::record(&tx, context, audit::RESET_PASSWORD, &link.administrator, false, &reason, now)
        .await?;
    tx.commit().await?;
    throttle::clear(&state.db, &throttle::account_key(&email)).await?;
    tracing::info!(administrator = %link.administrator, revoked, "password reset");
    Ok(pb::ResetPasswordResponse {})
}

/// DeleteCredentials (internal, idempotent by key): revokes the sessions and deletes the MFA
/// challenges, recovery codes, links and the credential of the administrator.
pub async fn delete(
    state: &State,
    request: pb::DeleteCredentialsRequest,
) -> ApiResult<pb::DeleteCredentialsResponse> {
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
