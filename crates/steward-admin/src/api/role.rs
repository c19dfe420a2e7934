//! RoleService: the permission catalog, the built-in roles and an organization's own roles,
//! over [`crate::role`].

use steward_proto::admin::v1::role_service_server::RoleService;
use steward_proto::admin::v1::{
    CreateRoleRequest, CreateRoleResponse, DeleteRoleRequest, DeleteRoleResponse, GetRoleRequest,
    GetRoleResponse, ListPermissionsRequest, ListPermissionsResponse, ListRolesRequest,
    ListRolesResponse, UpdateRoleRequest, UpdateRoleResponse,
};
use steward_runtime::authn;
use tonic::{Request, Response, Status};

use crate::audit::{finish, Auditor};
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

    async fn create_role(
        &self,
        request: Request<CreateRoleRequest>,
    ) -> Result<Response<CreateRoleResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = format!("{}/roles/{}", req.parent, req.role_id);
        let result = role::create(&self.state, &call.principal, &audit, req).await;
        finish(&self.state, Some(&audit), &target, result).await
    }

    async fn update_role(
        &self,
        request: Request<UpdateRoleRequest>,
    ) -> Result<Response<UpdateRoleResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = req.role.as_ref().map(|r| r.name.clone()).unwrap_or_default();
        let result = role::update(&self.state, &call.principal, &audit, req).await;
        finish(&self.state, Some(&audit), &target, result).await
    }

    async fn delete_role(
        &self,
        request: Request<DeleteRoleRequest>,
    ) -> Result<Response<DeleteRoleResponse>, Status> {
        let (call, req) = authn::administrator_call(request)?;
        let audit = Auditor::for_principal(&call.context, &call.principal)?;
        let target = req.name.clone();
        let result = role::delete(&self.state, &call.principal, &audit, req).await;
        finish(&self.state, Some(&audit), &target, result).await
    }
}
