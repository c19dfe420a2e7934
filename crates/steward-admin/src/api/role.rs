//! RoleService: the permission catalog and the built-in roles, over [`crate::role`].

use steward_proto::admin::v1::role_service_server::RoleService;
use steward_proto::admin::v1::{
    GetRoleRequest, GetRoleResponse, ListPermissionsRequest, ListPermissionsResponse,
    ListRolesRequest, ListRolesResponse,
};
use steward_runtime::authn;
use tonic::{Request, Response, Status};

use crate::audit::finish;
use crate::role;
use crate::state::Shared;

/// The RoleService implementation.
#[derive(Clone)]
pub struct RoleApi {
    state: Shared,
}

impl RoleApi {
    /// A service over `state`.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl RoleService for RoleApi {
    async fn list_permissions(
        &self,
        request: Request<ListPermissionsRequest>,
    ) -> Result<Response<ListPermissionsResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let result = role::list_permissions(&self.state, &call.principal, req).await;
        finish(&self.state, None, "", result).await
    }

    async fn list_roles(
        &self,
        request: Request<ListRolesRequest>,
    ) -> Result<Response<ListRolesResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let result = role::list_roles(&self.state, &call.principal, req).await;
        finish(&self.state, None, "", result).await
    }

    async fn get_role(
        &self,
        request: Request<GetRoleRequest>,
    ) -> Result<Response<GetRoleResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let result = role::get_role(&self.state, &call.principal, req).await;
        finish(&self.state, None, "", result).await
    }
}
