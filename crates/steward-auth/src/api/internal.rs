//! `steward.auth.v1.AuthInternalService`: credential side effects of administrator changes,
//! called by the admin service's outbox relay (so every call may be a retry). The layer admits
//! only the service credential. Calls with an idempotency key record the key and the answer in
//! the same transaction as the change; a repeated key returns the recorded answer and does
//! nothing else (in particular, no second invite email).

use steward_proto::auth::v1::auth_internal_service_server::AuthInternalService;
use steward_proto::auth::v1::{self as pb};
use steward_runtime::answer;
use tonic::{Request, Response, Status};

use crate::state::Shared;
use crate::{credential, invite, mfa, session};

/// The internal auth service.
#[derive(Clone)]
pub struct InternalApi {
    state: Shared,
}

impl InternalApi {
    /// Over the shared state.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl AuthInternalService for InternalApi {
    async fn issue_invite(
        &self,
        request: Request<pb::IssueInviteRequest>,
    ) -> Result<Response<pb::IssueInviteResponse>, Status> {
        answer(invite::issue(&self.state, request.into_inner()).await)
    }

    async fn revoke_sessions(
        &self,
        request: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        answer(session::revoke_all(&self.state, request.into_inner()).await)
    }

    async fn delete_credentials(
        &self,
        request: Request<pb::DeleteCredentialsRequest>,
    ) -> Result<Response<pb::DeleteCredentialsResponse>, Status> {
        answer(credential::delete(&self.state, request.into_inner()).await)
    }

    async fn reset_mfa(
        &self,
        request: Request<pb::ResetMfaRequest>,
    ) -> Result<Response<pb::ResetMfaResponse>, Status> {
        answer(mfa::reset(&self.state, request.into_inner()).await)
    }
}
