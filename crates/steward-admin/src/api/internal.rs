//! AdminInternalService: calls from the other Steward services (service credential only; the
//! authentication layer refuses everything else before these handlers run), over
//! [`crate::administrator`] (LookupAdministrator, ActivateAdministrator) and
//! [`crate::audit_log`] (RecordAuditEvents).

use steward_proto::admin::v1::admin_internal_service_server::AdminInternalService;
use steward_proto::admin::v1::{
    ActivateAdministratorRequest, ActivateAdministratorResponse, LookupAdministratorRequest,
    LookupAdministratorResponse, LookupServiceAccountRequest, LookupServiceAccountResponse,
    RecordAuditEventsRequest, RecordAuditEventsResponse, VerifyApiKeyRequest, VerifyApiKeyResponse,
};
use steward_runtime::authn;
use tonic::{Request, Response, Status};

use crate::audit::finish;
use crate::state::Shared;
use crate::{administrator, audit_log};

/// The AdminInternalService implementation.
#[derive(Clone)]
pub struct InternalApi {
    state: Shared,
}

impl InternalApi {
    /// A service over `state`.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl AdminInternalService for InternalApi {
    async fn lookup_administrator(
        &self,
        request: Request<LookupAdministratorRequest>,
    ) -> Result<Response<LookupAdministratorResponse>, Status> {
        let result = administrator::lookup(&self.state, request.into_inner()).await;
        finish(&self.state, None, "", result).await
    }

    async fn verify_api_key(
        &self,
        request: Request<VerifyApiKeyRequest>,
    ) -> Result<Response<VerifyApiKeyResponse>, Status> {
        let result = crate::service_account::verify(&self.state, request.into_inner()).await;
        finish(&self.state, None, "", result).await
    }

    async fn lookup_service_account(
        &self,
        request: Request<LookupServiceAccountRequest>,
    ) -> Result<Response<LookupServiceAccountResponse>, Status> {
        let result = crate::service_account::lookup(&self.state, request.into_inner()).await;
        finish(&self.state, None, "", result).await
    }

    async fn activate_administrator(
        &self,
        request: Request<ActivateAdministratorRequest>,
    ) -> Result<Response<ActivateAdministratorResponse>, Status> {
        let context = authn::context(&request);
        let result = administrator::activate(&self.state, &context, request.into_inner()).await;
        finish(&self.state, None, "", result).await
    }

    async fn record_audit_events(
        &self,
        request: Request<RecordAuditEventsRequest>,
    ) -> Result<Response<RecordAuditEventsResponse>, Status> {
        let result = audit_log::record(&self.state, request.into_inner()).await;
        finish(&self.state, None, "", result).await
    }
}
