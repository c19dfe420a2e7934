//! `steward.auth.v1.AuthService`: invites, passwords, sign-in with MFA, sessions and the JWKS.

use steward_proto::auth::v1::auth_service_server::AuthService;
use steward_proto::auth::v1::{self as pb};
use steward_runtime::{answer, authn};
use tonic::{Request, Response, Status};

use crate::state::Shared;
use crate::{credential, invite, mfa, session};

/// The public auth service.
#[derive(Clone)]
pub struct AuthApi {
    state: Shared,
}

impl AuthApi {
    /// Over the shared state.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn accept_invite(
        &self,
        request: Request<pb::AcceptInviteRequest>,
    ) -> Result<Response<pb::AcceptInviteResponse>, Status> {
        let context = authn::context(&request);
        answer(invite::accept(&self.state, &context, request.into_inner()).await)
    }

    async fn exchange_api_key(
        &self,
        request: Request<pb::ExchangeApiKeyRequest>,
    ) -> Result<Response<pb::ExchangeApiKeyResponse>, Status> {
        let context = authn::context(&request);
        answer(crate::api_key::exchange(&self.state, &context, request.into_inner()).await)
    }

    async fn sign_in(
        &self,
        request: Request<pb::SignInRequest>,
    ) -> Result<Response<pb::SignInResponse>, Status> {
        let context = authn::context(&request);
        answer(session::sign_in(&self.state, &context, request.into_inner()).await)
    }

    async fn verify_mfa(
        &self,
        request: Request<pb::VerifyMfaRequest>,
    ) -> Result<Response<pb::VerifyMfaResponse>, Status> {
        let context = authn::context(&request);
        answer(session::verify_mfa(&self.state, &context, request.into_inner()).await)
    }

    async fn refresh_session(
        &self,
        request: Request<pb::RefreshSessionRequest>,
    ) -> Result<Response<pb::RefreshSessionResponse>, Status> {
        let context = authn::context(&request);
        answer(session::refresh(&self.state, &context, request.into_inner()).await)
    }

    async fn sign_out(
        &self,
        request: Request<pb::SignOutRequest>,
    ) -> Result<Response<pb::SignOutResponse>, Status> {
        answer(match authn::administrator_call(request) {
            Ok((call, _)) => session::sign_out(&self.state, &call).await,
            Err(err) => Err(err),
        })
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        answer(match authn::administrator_call(request) {
            Ok((call, message)) => credential::change_password(&self.state, &call, message).await,
            Err(err) => Err(err),
        })
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        let context = authn::context(&request);
        answer(
            credential::request_password_reset(&self.state, &context, request.into_inner()).await,
        )
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let context = authn::context(&request);
        answer(credential::reset_password(&self.state, &context, request.into_inner()).await)
    }

    async fn begin_mfa_enrollment(
        &self,
        request: Request<pb::BeginMfaEnrollmentRequest>,
    ) -> Result<Response<pb::BeginMfaEnrollmentResponse>, Status> {
        answer(match authn::principal(&request) {
            Ok(principal) => mfa::begin_enrollment(&self.state, principal).await,
            Err(err) => Err(err),
        })
    }

    async fn confirm_mfa_enrollment(
        &self,
        request: Request<pb::ConfirmMfaEnrollmentRequest>,
    ) -> Result<Response<pb::ConfirmMfaEnrollmentResponse>, Status> {
        answer(match authn::administrator_call(request) {
            Ok((call, message)) => mfa::confirm_enrollment(&self.state, &call, message).await,
            Err(err) => Err(err),
        })
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        answer(Ok(pb::GetJwksResponse { keys: self.state.signer.jwks() }))
    }
}
