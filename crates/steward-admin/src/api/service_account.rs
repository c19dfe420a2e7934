//! ServiceAccountService, over [`crate::service_account`].

use steward_proto::admin::v1::service_account_service_server::ServiceAccountService;
use steward_proto::admin::v1::*;
use steward_runtime::authn;
use tonic::{Request, Response, Status};

use crate::audit::{finish, Auditor};
use crate::service_account;
use crate::state::Shared;

/// The ServiceAccountService implementation.
#[derive(Clone)]
pub struct ServiceAccountApi {
    state: Shared,
}

impl ServiceAccountApi {
    /// A service over `state`.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl ServiceAccountService for ServiceAccountApi {
    async fn create_service_account(
        &self,
        request: Request<CreateServiceAccountRequest>,
    ) -> Result<Response<CreateServiceAccountResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = req.parent.clone();
        let result = service_account::create(&self.state, &call.principal, &audit, req).await;
        finish(&self.state, Some(&audit), &target, result).await
    }

    async fn get_service_account(
        &self,
        request: Request<GetServiceAccountRequest>,
    ) -> Result<Response<GetServiceAccountResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let result = service_account::get(&self.state, &call.principal, req).await;
        finish(&self.state, None, "", result).await
    }

    async fn list_service_accounts(
        &self,
        request: Request<ListServiceAccountsRequest>,
    ) -> Result<Response<ListServiceAccountsResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let result = service_account::list(&self.state, &call.principal, req).await;
        finish(&self.state, None, "", result).await
    }

    async fn delete_service_account(
        &self,
        request: Request<DeleteServiceAccountRequest>,
    ) -> Result<Response<DeleteServiceAccountResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = req.name.clone();
        let result = service_account::delete(&self.state, &call.principal, &audit, req).await;
        self.state.wait_out_leases_if_gone(&result).await;
        finish(&self.state, Some(&audit), &target, result).await
    }

    async fn create_service_account_key(
        &self,
        request: Request<CreateServiceAccountKeyRequest>,
    ) -> Result<Response<CreateServiceAccountKeyResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = req.parent.clone();
        let result = service_account::create_key(&self.state, &call.principal, &audit, req).await;
        finish(&self.state, Some(&audit), &target, result).await
    }

    async fn list_service_account_keys(
        &self,
        request: Request<ListServiceAccountKeysRequest>,
    ) -> Result<Response<ListServiceAccountKeysResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let result = service_account::list_keys(&self.state, &call.principal, req).await;
        finish(&self.state, None, "", result).await
    }

    async fn delete_service_account_key(
        &self,
        request: Request<DeleteServiceAccountKeyRequest>,
    ) -> Result<Response<DeleteServiceAccountKeyResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = req.name.clone();
        let result = service_account::delete_key(&self.state, &call.principal, &audit, req).await;
        self.state.wait_out_leases_if_gone(&result).await;
        finish(&self.state, Some(&audit), &target, result).await
    }
}
