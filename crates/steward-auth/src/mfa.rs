//! TOTP MFA of an administrator: BeginMfaEnrollment and ConfirmMfaEnrollment, and the internal
//! ResetMfa. (Codes are checked in [`crate::totp`]; the second factor at sign-in is
//! [`crate::session::verify_mfa`].)

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use steward_proto::auth::v1 as pb;
use steward_runtime::authn::{self, AdministratorCall};
use steward_runtime::{ApiError, ApiResult};

use crate::entity::{credential, recovery_code};
use crate::state::{forget_mfa_and_sessions, organization_of, required, timestamp, State};
use crate::{audit, secrets, totp};

/// How long a pending MFA enrolment waits for its confirmation.
const ENROLLMENT_SECS: i64 = 600;
/// Recovery codes issued per enrolment.
const RECOVERY_CODES: usize = 10;

/// BeginMfaEnrollment: a new TOTP secret, stored sealed as the pending enrolment of the
/// signed-in caller, returned with its `otpauth` URI and QR code.
pub async fn begin_enrollment(
    state: &State,
    principal: &authn::Principal,
) -> ApiResult<pb::BeginMfaEnrollmentResponse> {
    let credential = state.signed_in(principal).await?;
    if credential.mfa_enrolled {
        return Err(ApiError::precondition(
            "MFA_ALREADY_ENROLLED",
            principal.administrator.clone(),
            "MFA is already enrolled; an Administrator must reset it before enrolling again",
        ));
    }
    let secret = totp::new_secret();
    let generator = totp::totp(&secret, &credential.email)?;
    let uri = generator.to_url().map_err(|e| ApiError::internal(format!("otpauth uri: {e}")))?;
    let png = generator.to_qr_png().map_err(|e| ApiError::internal(format!("qr code: {e}")))?;
    let now = state.now();
    let expires = now + Duration::seconds(ENROLLMENT_SECS);
    let mut row: credential::ActiveModel = credential.into();
    row.mfa_pending_secret = Set(Some(state.sealer.seal(&principal.administrator, &secret)?));
    row.mfa_pending_expires_at = Set(Some(expires));
    row.updated_at = Set(now);
    row.update(&state.db).await?;
    tracing::info!(administrator = %principal.administrator, "mfa enrolment started");
    Ok(pb::BeginMfaEnrollmentResponse {
        secret,
        otpauth_uri: uri,
        qr_code_png: png,
        expire_time: Some(timestamp(expires)),
    })
}

/// ConfirmMfaEnrollment: a current code of the pending secret enrols it and replaces the
/// recovery codes, which are returned once.
pub async fn confirm_enrollment(
    state: &State,
    call: &AdministratorCall,
    request: pb::ConfirmMfaEnrollmentRequest,
) -> ApiResult<pb::ConfirmMfaEnrollmentResponse> {
    let AdministratorCall { principal, context } = call;
    required("totp_code", &request.totp_code)?;
    let credential = state.signed_in(principal).await?;
    let now = state.now();
    let pending = credential
        .mfa_pending_secret
        .clone()
        .filter(|_| {
            !credential.mfa_enrolled && credential.mfa_pending_expires_at.is_some_and(|t| t > now)
        })
        .ok_or_else(|| {
            ApiError::precondition(
                "NO_PENDING_ENROLLMENT",
                principal.administrator.clone(),
                "no MFA enrolment is pending: call BeginMfaEnrollment first",
            )
        })?;
    let secret = state.sealer.open(&principal.administrator, &pending)?;
    let step = totp::check(&secret, &request.totp_code, now)?
        .ok_or_else(|| ApiError::invalid("totp_code", "is not a current code of the new secret"))?;
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| secrets::new_recovery_code()).collect();
    let tx = state.begin_write().await?;
    let mut row: credential::ActiveModel = credential.into();
    row.mfa_secret = Set(Some(pending));
    row.mfa_enrolled = Set(true);
    row.mfa_last_step = Set(Some(step));
    row.mfa_pending_secret = Set(None);
    row.mfa_pending_expires_at = Set(None);
    row.updated_at = Set(now);
    row.update(&tx).await?;
    recovery_code::Entity::delete_many()
        .filter(recovery_code::Column::Administrator.eq(principal.administrator.as_str()))
        .exec(&tx)
        .await?;
    recovery_code::Entity::insert_many(codes.iter().map(|code| recovery_code::ActiveModel {
        code_hash: Set(secrets::recovery_digest(&principal.administrator, code)),
        administrator: Set(principal.administrator.clone()),
        used_at: Set(None),
        created_at: Set(now),
    }))
    .exec(&tx)
    .await?;
    audit::record(
        &tx,
        context,
        audit::CONFIRM_MFA,
        &principal.administrator,
        false,
        "MFA (TOTP) enrolled",
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(administrator = %principal.administrator, "mfa enrolled");
    Ok(pb::ConfirmMfaEnrollmentResponse { recovery_codes: codes })
}

/// ResetMfa (internal): clears the enrolment, deletes the MFA challenges and recovery codes and
/// revokes the sessions of the administrator.
pub async fn reset(state: &State, request: pb::ResetMfaRequest) -> ApiResult<pb::ResetMfaResponse> {
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
