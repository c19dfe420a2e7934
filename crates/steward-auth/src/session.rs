//! Sessions: SignIn (the password, then an MFA challenge or a session), VerifyMfa (the second
//! factor, then a session), RefreshSession (refresh-token rotation), SignOut, and the internal
//! RevokeSessions.

use chrono::Duration;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use steward_proto::auth::v1::{self as pb, verify_mfa_request, MfaMethod};
use steward_runtime::authn::{AdministratorCall, RequestContext};
use steward_runtime::claims::TokenScope;
use steward_runtime::names::OrganizationName;
use steward_runtime::{ApiError, ApiResult};

use crate::entity::{credential, mfa_challenge, recovery_code, session};
use crate::state::{
    self, invalid_credentials, key_of, organization_of, record, recorded, required, timestamp,
    State,
};
use crate::throttle::{self, ACCOUNT};
use crate::{audit, secrets, totp};

/// How long an MFA challenge stays open.
const CHALLENGE_SECS: i64 = 300;
/// Wrong codes a challenge tolerates before it is dead.
const CHALLENGE_ATTEMPTS: i32 = 5;
/// Open MFA challenges kept per administrator; older ones are closed when a new one is issued.
const OPEN_CHALLENGES: u64 = 3;

/// Closes all but the newest [`OPEN_CHALLENGES`] open MFA challenges of `administrator`, so
/// repeated sign-ins cannot pile up challenges (each with its own attempts) to guess codes on.
async fn close_surplus_challenges(
    conn: &impl ConnectionTrait,
    administrator: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> ApiResult<()> {
    use sea_orm::{QueryOrder, QuerySelect};
    let open = mfa_challenge::Entity::find()
        .filter(mfa_challenge::Column::Administrator.eq(administrator))
        .filter(mfa_challenge::Column::UsedAt.is_null())
        .filter(mfa_challenge::Column::ExpiresAt.gt(now))
        .order_by_desc(mfa_challenge::Column::ExpiresAt)
        .order_by_desc(mfa_challenge::Column::ChallengeHash)
        .offset(OPEN_CHALLENGES)
        .limit(1000)
        .all(conn)
        .await?;
    if open.is_empty() {
        return Ok(());
    }
    let surplus: Vec<String> = open.into_iter().map(|c| c.challenge_hash).collect();
    mfa_challenge::Entity::update_many()
        .col_expr(mfa_challenge::Column::UsedAt, Expr::value(now))
        .filter(mfa_challenge::Column::ChallengeHash.is_in(surplus))
        .filter(mfa_challenge::Column::UsedAt.is_null())
        .exec(conn)
        .await?;
    Ok(())
}

/// SignIn: throttled password check (the same argon2 work for an unknown email), then an MFA
/// challenge for an enrolled administrator, or a session (enrolment-only when MFA is required
/// but not enrolled).
pub async fn sign_in(
    state: &State,
    context: &RequestContext,
    request: pb::SignInRequest,
) -> ApiResult<pb::SignInResponse> {
    let email = crate::state::typed_email("email", &request.email)?;
    required("password", &request.password)?;
    // No password longer than the rules allow was ever set, so none can match.
    if request.password.chars().count() > crate::password::MAX_LENGTH {
        return Err(ApiError::invalid(
            "password",
            format!("must be at most {} characters long", crate::password::MAX_LENGTH),
        ));
    }
    if !request.organization.is_empty() {
        OrganizationName::parse("organization", &request.organization)?;
    }
    // Reserved before the password is hashed: parallel guesses cannot outrun the counter.
    let admission = throttle::Admission::admit(
        &state.db,
        throttle::account_key(&email),
        &ACCOUNT,
        &context.client_address,
        state.now(),
    )
    .await?;

    let mut query = credential::Entity::find()
        .filter(credential::Column::Email.eq(email.as_str()))
        .filter(credential::Column::PasswordHash.is_not_null());
    if !request.organization.is_empty() {
        query = query.filter(credential::Column::Organization.eq(request.organization.as_str()));
    }
    let candidates = query.all(&state.db).await?;
    let mut matched = Vec::new();
    if candidates.is_empty() {
        // Same argon2 work as a known email with a wrong password.
        state.hasher.verify(&request.password, None).await?;
    }
    for candidate in candidates {
        if state.hasher.verify(&request.password, candidate.password_hash.as_deref()).await? {
            matched.push(candidate);
        }
    }
    let credential = match matched.len() {
        0 => {
            // The reservation already counted this failure.
            tracing::info!("sign-in refused");
            return Err(invalid_credentials());
        }
        1 => matched.remove(0),
        _ => return Err(ApiError::precondition(
            "ORGANIZATION_REQUIRED",
            "organization",
            "this email belongs to administrators of several organizations: name the organization",
        )),
    };
    admission.succeeded(&state.db, state.now()).await?;
    let Some(administrator) = state.lookup(&credential.administrator).await? else {
        tracing::info!(administrator = %credential.administrator, "sign-in of a deleted administrator");
        return Err(invalid_credentials());
    };
    if credential.mfa_enrolled {
        let challenge = secrets::new_token();
        let expires = state.now() + Duration::seconds(CHALLENGE_SECS);
        mfa_challenge::Entity::insert(mfa_challenge::ActiveModel {
            challenge_hash: Set(secrets::digest(&challenge)),
            administrator: Set(credential.administrator.clone()),
            organization: Set(credential.organization.clone()),
            attempts: Set(0),
            expires_at: Set(expires),
            used_at: Set(None),
        })
        .exec(&state.db)
        .await?;
        close_surplus_challenges(&state.db, &credential.administrator, state.now()).await?;
        tracing::info!(administrator = %credential.administrator, "password accepted, mfa challenge issued");
        return Ok(pb::SignInResponse {
            result: Some(pb::sign_in_response::Result::MfaChallenge(pb::MfaChallenge {
                challenge,
                expire_time: Some(timestamp(expires)),
                methods: vec![MfaMethod::Totp as i32, MfaMethod::RecoveryCode as i32],
            })),
        });
    }
    let subject = state.subject(&administrator)?;
    let scope =
        if administrator.mfa_required { TokenScope::MfaEnrollment } else { TokenScope::Full };
    let tokens = state.start_session(&subject, &["pwd"], scope, context, audit::SIGN_IN).await?;
    Ok(pb::SignInResponse { result: Some(pb::sign_in_response::Result::Tokens(tokens)) })
}

/// VerifyMfa: the second factor (a TOTP code, each step accepted once, or a recovery code) on an
/// open challenge, throttled per administrator, then a full session.
pub async fn verify_mfa(
    state: &State,
    context: &RequestContext,
    request: pb::VerifyMfaRequest,
) -> ApiResult<pb::VerifyMfaResponse> {
    required("challenge", &request.challenge)?;
    let code = request
        .code
        .ok_or_else(|| ApiError::invalid("code", "a totp_code or a recovery_code is required"))?;
    let now = state.now();
    let challenge_hash = secrets::digest(&request.challenge);
    let challenge = mfa_challenge::Entity::find_by_id(challenge_hash.clone())
        .one(&state.db)
        .await?
        .filter(|c| c.used_at.is_none() && c.expires_at > now)
        .ok_or_else(invalid_credentials)?;
    // Wrong codes count per administrator across challenges: a fresh sign-in (which clears
    // the password counter) must not buy fresh guesses at the second factor.
    let admission = throttle::Admission::admit(
        &state.db,
        throttle::mfa_key(&challenge.administrator),
        &ACCOUNT,
        &context.client_address,
        now,
    )
    .await?;
    // Take one of the challenge's attempts before checking the code, in the database, so
    // parallel guesses on one challenge cannot exceed CHALLENGE_ATTEMPTS.
    let reserved = mfa_challenge::Entity::update_many()
        .col_expr(
            mfa_challenge::Column::Attempts,
            Expr::col(mfa_challenge::Column::Attempts).add(1),
        )
        .filter(mfa_challenge::Column::ChallengeHash.eq(challenge_hash.as_str()))
        .filter(mfa_challenge::Column::Attempts.lt(CHALLENGE_ATTEMPTS))
        .filter(mfa_challenge::Column::UsedAt.is_null())
        .exec(&state.db)
        .await?;
    if reserved.rows_affected != 1 {
        return Err(invalid_credentials());
    }
    let credential = credential::Entity::find_by_id(challenge.administrator.clone())
        .filter(credential::Column::Organization.eq(challenge.organization.as_str()))
        .one(&state.db)
        .await?
        .filter(|c| c.mfa_enrolled)
        .ok_or_else(invalid_credentials)?;

    let (accepted, method) = match &code {
        verify_mfa_request::Code::TotpCode(code) => {
            let sealed = credential.mfa_secret.as_deref().ok_or_else(invalid_credentials)?;
            let secret = state.sealer.open(&credential.administrator, sealed)?;
            let accepted = match totp::check(&secret, code, now)? {
                // Accept each step once: move the high-water mark only forwards.
                Some(step) => {
                    credential::Entity::update_many()
                        .col_expr(credential::Column::MfaLastStep, Expr::value(step))
                        .filter(
                            credential::Column::Administrator.eq(credential.administrator.as_str()),
                        )
                        .filter(
                            credential::Column::MfaLastStep
                                .is_null()
                                .or(credential::Column::MfaLastStep.lt(step)),
                        )
                        .exec(&state.db)
                        .await?
                        .rows_affected
                        == 1
                }
                None => false,
            };
            (accepted, "otp")
        }
        verify_mfa_request::Code::RecoveryCode(code) => {
            let digest = secrets::recovery_digest(&credential.administrator, code);
            let used = recovery_code::Entity::update_many()
                .col_expr(recovery_code::Column::UsedAt, Expr::value(now))
                .filter(recovery_code::Column::CodeHash.eq(digest))
                .filter(recovery_code::Column::Administrator.eq(credential.administrator.as_str()))
                .filter(recovery_code::Column::UsedAt.is_null())
                .exec(&state.db)
                .await?;
            (used.rows_affected == 1, "mfa")
        }
    };
    if !accepted {
        tracing::info!(administrator = %credential.administrator, "mfa code refused");
        return Err(invalid_credentials());
    }
    let completed = mfa_challenge::Entity::update_many()
        .col_expr(mfa_challenge::Column::UsedAt, Expr::value(now))
        .filter(mfa_challenge::Column::ChallengeHash.eq(challenge.challenge_hash.as_str()))
        .filter(mfa_challenge::Column::UsedAt.is_null())
        .exec(&state.db)
        .await?;
    if completed.rows_affected != 1 {
        return Err(invalid_credentials());
    }
    admission.succeeded(&state.db, state.now()).await?;
    let administrator =
        state.lookup(&credential.administrator).await?.ok_or_else(invalid_credentials)?;
    let subject = state.subject(&administrator)?;
    if method == "mfa" {
        tracing::info!(administrator = %subject.administrator, "recovery code used");
    }
    let tokens = state
        .start_session(&subject, &["pwd", method], TokenScope::Full, context, audit::VERIFY_MFA)
        .await?;
    Ok(pb::VerifyMfaResponse { tokens: Some(tokens) })
}

/// RefreshSession: rotates the refresh token of a live full session and issues tokens from the
/// re-read administrator; a reused refresh token, or an administrator deleted, moved or newly
/// required to enrol, ends the session.
pub async fn refresh(
    state: &State,
    context: &RequestContext,
    request: pb::RefreshSessionRequest,
) -> ApiResult<pb::RefreshSessionResponse> {
    required("refresh_token", &request.refresh_token)?;
    let now = state.now();
    // The token's session and its administrator's credential in one statement (shared with
    // concurrent calls).
    let presented =
        state.refreshes.read(&request.refresh_token).await?.ok_or_else(invalid_credentials)?;
    let session = &presented.session;
    if session.revoked_at.is_some() || session.expires_at <= now || session.scope != "full" {
        return Err(invalid_credentials());
    }
    if !presented.current {
        let tx = state.begin_write().await?;
        state::revoke_session(&tx, &session.id, now).await?;
        let reason = "a rotated refresh token was presented again; the session is revoked";
        audit::record(&tx, context, audit::REFRESH, &session.administrator, true, reason, now)
            .await?;
        tx.commit().await?;
        tracing::warn!(session = %session.id, administrator = %session.administrator, "refresh token reused, session revoked");
        return Err(invalid_credentials());
    }
    let Some(administrator) = state.lookup_leased(&session.administrator).await? else {
        state::revoke_session(&state.db, &session.id, now).await?;
        tracing::info!(session = %session.id, "refresh for a deleted administrator, session revoked");
        return Err(invalid_credentials());
    };
    let subject = state.subject(&administrator)?;
    // MFA required since this session began but not enrolled: back to sign-in, which issues
    // an enrolment-only session.
    let needs_enrolment = administrator.mfa_required && presented.mfa_enrolled == Some(false);
    let deleted = presented.mfa_enrolled.is_none();
    if subject.organization != session.organization || deleted || needs_enrolment {
        state::revoke_session(&state.db, &session.id, now).await?;
        tracing::info!(session = %session.id, needs_enrolment, "session ended at refresh");
        return Err(invalid_credentials());
    }
    // Committed with the concurrent calls' rotations, before this call answers.
    let Some(next) = state.refreshes.rotate(&presented).await? else {
        // A concurrent refresh replaced it first (that is reuse too), or the session was
        // revoked meanwhile.
        state::revoke_session(&state.db, &session.id, now).await?;
        tracing::warn!(session = %session.id, "refresh token raced (or the session was revoked meanwhile), session revoked");
        return Err(invalid_credentials());
    };
    let amr: Vec<String> =
        session.amr.split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect();
    let facts = state::SessionFacts {
        id: &session.id,
        amr: &amr,
        scope: TokenScope::Full,
        expires: session.expires_at,
        auth_time: session.created_at,
    };
    let tokens = state.token_set(&subject, &facts, Some(next))?;
    Ok(pb::RefreshSessionResponse { tokens: Some(tokens) })
}

/// SignOut: revokes the caller's own session; signing out again records nothing more.
pub async fn sign_out(state: &State, call: &AdministratorCall) -> ApiResult<pb::SignOutResponse> {
    let AdministratorCall { principal, context } = call;
    let now = state.now();
    let tx = state.begin_write().await?;
    let revoked = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .filter(session::Column::Id.eq(principal.session.as_str()))
        .filter(session::Column::Administrator.eq(principal.administrator.as_str()))
        .filter(session::Column::Organization.eq(principal.organization.as_str()))
        .filter(session::Column::RevokedAt.is_null())
        .exec(&tx)
        .await?
        .rows_affected;
    // Signing out again is harmless and records nothing more.
    if revoked > 0 {
        audit::record(
            &tx,
            context,
            audit::SIGN_OUT,
            &principal.administrator,
            false,
            "signed out",
            now,
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(administrator = %principal.administrator, session = %principal.session, revoked, "signed out");
    Ok(pb::SignOutResponse {})
}

/// RevokeSessions (internal, idempotent by key): revokes every live session of the
/// administrator.
pub async fn revoke_all(
    state: &State,
    request: pb::RevokeSessionsRequest,
) -> ApiResult<pb::RevokeSessionsResponse> {
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
