//! MFA enrolment: BeginMfaEnrollment and ConfirmMfaEnrollment.

use super::*;

impl Service {
    pub(super) async fn do_begin_mfa(
        &self,
        principal: &authn::Principal,
    ) -> ApiResult<pb::BeginMfaEnrollmentResponse> {
        let state = &self.state;
        let credential = self.signed_in(principal).await?;
        if credential.mfa_enrolled {
            return Err(ApiError::precondition(
                "MFA_ALREADY_ENROLLED",
                principal.administrator.clone(),
                "MFA is already enrolled; an Administrator must reset it before enrolling again",
            ));
        }
        let secret = totp::new_secret();
        let generator = totp::totp(&secret, &credential.email)?;
        let uri =
            generator.to_url().map_err(|e| ApiError::internal(format!("otpauth uri: {e}")))?;
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

    pub(super) async fn do_confirm_mfa(
        &self,
        principal: &authn::Principal,
        request: pb::ConfirmMfaEnrollmentRequest,
        context: &RequestContext,
    ) -> ApiResult<pb::ConfirmMfaEnrollmentResponse> {
        let state = &self.state;
        required("totp_code", &request.totp_code)?;
        let credential = self.signed_in(principal).await?;
        let now = state.now();
        let pending = credential
            .mfa_pending_secret
            .clone()
            .filter(|_| {
                !credential.mfa_enrolled
                    && credential.mfa_pending_expires_at.is_some_and(|t| t > now)
            })
            .ok_or_else(|| {
                ApiError::precondition(
                    "NO_PENDING_ENROLLMENT",
                    principal.administrator.clone(),
                    "no MFA enrolment is pending: call BeginMfaEnrollment first",
                )
            })?;
        let secret = state.sealer.open(&principal.administrator, &pending)?;
        let step = totp::check(&secret, &request.totp_code, now)?.ok_or_else(|| {
            ApiError::invalid("totp_code", "is not a current code of the new secret")
        })?;
        let codes: Vec<String> =
            (0..RECOVERY_CODES).map(|_| secrets::new_recovery_code()).collect();
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
}
