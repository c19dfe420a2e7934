//! OrganizationService: the tenants, over [`crate::organization`]. The domain functions take the
//! caller as the layer established it: most methods are for the platform operator (service
//! credential).

use steward_proto::admin::v1::organization_service_server::OrganizationService;
use steward_proto::admin::v1::{
    CreateOrganizationRequest, CreateOrganizationResponse, GetOrganizationRequest,
    GetOrganizationResponse, ListOrganizationsRequest, ListOrganizationsResponse,
};
use steward_runtime::authn;
use tonic::{Request, Response, Status};

use crate::audit::finish;
use crate::organization;
use crate::state::Shared;

/// The OrganizationService implementation.
#[derive(Clone)]
pub struct OrganizationApi {
    state: Shared,
}

impl OrganizationApi {
    /// A service over `state`.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl OrganizationService for OrganizationApi {
    async fn create_organization(
        &self,
        request: Request<CreateOrganizationRequest>,
    ) -> Result<Response<CreateOrganizationResponse>, Status> {
        let caller = authn::caller(&request);
        let context = authn::context(&request);
        let result =
            organization::create(&self.state, &caller, &context, request.into_inner()).await;
        finish(&self.state, None, "", result).await
    }

    async fn get_organization(
        &self,
        request: Request<GetOrganizationRequest>,
    ) -> Result<Response<GetOrganizationResponse>, Status> {
        let caller = authn::caller(&request);
        let result = organization::get(&self.state, &caller, request.into_inner()).await;
        finish(&self.state, None, "", result).await
    }

    async fn list_organizations(
        &self,
        request: Request<ListOrganizationsRequest>,
    ) -> Result<Response<ListOrganizationsResponse>, Status> {
        let caller = authn::caller(&request);
        let result = organization::list(&self.state, &caller, request.into_inner()).await;
        finish(&self.state, None, "", result).await
    }
}
