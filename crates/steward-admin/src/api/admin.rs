//! AdminService: the console's "Administrators" window and the caller's own profile, over
//! [`crate::administrator`].

use steward_proto::admin::v1::admin_service_server::AdminService;
use steward_proto::admin::v1::{
    BatchDeleteAdministratorsRequest, BatchDeleteAdministratorsResponse,
    CreateAdministratorRequest, CreateAdministratorResponse, GetAdministratorRequest,
    GetAdministratorResponse, GetProfileRequest, GetProfileResponse, ListAdministratorsRequest,
    ListAdministratorsResponse, ResendInviteRequest, ResendInviteResponse,
    ResetAdministratorMfaRequest, ResetAdministratorMfaResponse, UpdateAdministratorRequest,
    UpdateAdministratorResponse, UpdateProfileRequest, UpdateProfileResponse,
};
use steward_runtime::authn;
use tonic::{Request, Response, Status};

use crate::administrator;
use crate::audit::{finish, Auditor};
use crate::state::Shared;

/// The AdminService implementation.
#[derive(Clone)]
pub struct AdminApi {
    state: Shared,
}

impl AdminApi {
    /// A service over `state`.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_administrator(
        &self,
        request: Request<CreateAdministratorRequest>,
    ) -> Result<Response<CreateAdministratorResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = req.parent.clone();
        let result = administrator::create(&self.state, &call.principal, &audit, req).await;
        finish(&self.state, Some(&audit), &target, result).await
    }

    async fn get_administrator(
        &self,
        request: Request<GetAdministratorRequest>,
    ) -> Result<Response<GetAdministratorResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let result = administrator::get(&self.state, &call.principal, req).await;
        finish(&self.state, None, "", result).await
    }

    async fn list_administrators(
        &self,
        request: Request<ListAdministratorsRequest>,
    ) -> Result<Response<ListAdministratorsResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let result = administrator::list(&self.state, &call.principal, req).await;
        finish(&self.state, None, "", result).await
    }

    async fn update_administrator(
        &self,
        request: Request<UpdateAdministratorRequest>,
    ) -> Result<Response<UpdateAdministratorResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = req.administrator.as_ref().map(|a| a.name.clone()).unwrap_or_default();
        let result = administrator::update(&self.state, &call.principal, &audit, req).await;
        finish(&self.state, Some(&audit), &target, result).await
    }

    async fn batch_delete_administrators(
        &self,
        request: Request<BatchDeleteAdministratorsRequest>,
    ) -> Result<Response<BatchDeleteAdministratorsResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        // A validate_only preview changes nothing, so it is not an auditable mutation.
        let record = !req.validate_only;
        let target = req.parent.clone();
        let result = administrator::batch_delete(&self.state, &call.principal, &audit, req).await;
        self.state.wait_out_leases_if_gone(&result).await;
        finish(&self.state, record.then_some(&audit), &target, result).await
    }

    async fn resend_invite(
        &self,
        request: Request<ResendInviteRequest>,
    ) -> Result<Response<ResendInviteResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = req.name.clone();
        let result = administrator::resend_invite(&self.state, &call.principal, &audit, req).await;
        finish(&self.state, Some(&audit), &target, result).await
    }

    async fn reset_administrator_mfa(
        &self,
        request: Request<ResetAdministratorMfaRequest>,
    ) -> Result<Response<ResetAdministratorMfaResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = req.name.clone();
        let result = administrator::reset_mfa(&self.state, &call.principal, &audit, req).await;
        finish(&self.state, Some(&audit), &target, result).await
    }

    async fn get_profile(
        &self,
        request: Request<GetProfileRequest>,
    ) -> Result<Response<GetProfileResponse>, Status> {
        let (call, _) = authn::administrator_call(request)?;
        let result = administrator::profile(&self.state, &call.principal).await;
        finish(&self.state, None, "", result).await
    }

    async fn update_profile(
        &self,
        request: Request<UpdateProfileRequest>,
    ) -> Result<Response<UpdateProfileResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = call.principal.administrator.clone();
        let result = administrator::update_profile(&self.state, &call.principal, &audit, req).await;
        finish(&self.state, Some(&audit), &target, result).await
    }
}
