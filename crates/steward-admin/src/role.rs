//! Permissions and roles. The permission catalog is declared in the protos
//! (`steward.authz.v1.Permission` and each RPC's `steward.authz.v1.rule` option) and served as
//! it was built; the built-in roles and their permissions are `steward_runtime::roles`. Both
//! are the same for every organization.

use steward_proto::admin::v1::{
    GetRoleRequest, GetRoleResponse, ListPermissionsRequest, ListPermissionsResponse,
    ListRolesRequest, ListRolesResponse, Permission, RoleDefinition,
};
use steward_proto::authz;
use steward_runtime::authn::{Need, Principal};
use steward_runtime::names::RoleName;
use steward_runtime::{roles, ApiError, ApiResult};

use crate::state::{caller_row, State};

/// The permission catalog, in declaration order, each with the RPCs that need it
/// (ListPermissions).
pub async fn list_permissions(
    state: &State,
    principal: &Principal,
    _req: ListPermissionsRequest,
) -> ApiResult<ListPermissionsResponse> {
    caller_row(&state.db, principal, Need::AnyRole).await?;
    Ok(ListPermissionsResponse { permissions: catalog() })
}

/// Every permission of the catalog, as the API shows it.
pub fn catalog() -> Vec<Permission> {
    authz::PERMISSIONS
        .iter()
        .map(|entry| Permission {
            name: entry.name.to_string(),
            description: entry.description.to_string(),
            methods: authz::methods(entry.permission).map(str::to_string).collect(),
        })
        .collect()
}

/// The built-in roles with the permissions each holds (ListRoles).
pub async fn list_roles(
    state: &State,
    principal: &Principal,
    _req: ListRolesRequest,
) -> ApiResult<ListRolesResponse> {
    caller_row(&state.db, principal, Need::AnyRole).await?;
    Ok(ListRolesResponse { roles: roles::BUILT_IN.iter().map(definition).collect() })
}

/// One role by name (GetRole).
pub async fn get_role(
    state: &State,
    principal: &Principal,
    req: GetRoleRequest,
) -> ApiResult<GetRoleResponse> {
    if req.name.starts_with("organizations/") {
        // An organization's own role: scoped like any resource; none exist yet.
        let name = RoleName::parse("name", &req.name)?;
        principal.check_organization(name.as_str())?;
        caller_row(&state.db, principal, Need::AnyRole).await?;
        return Err(ApiError::NotFound(req.name));
    }
    caller_row(&state.db, principal, Need::AnyRole).await?;
    let role = roles::BUILT_IN.iter().find(|r| r.name == req.name).ok_or_else(|| {
        if req.name.starts_with("roles/") {
            ApiError::NotFound(req.name.clone())
        } else {
            ApiError::invalid(
                "name",
                "must be roles/{role} (built-in, e.g. roles/administrator) or \
                 organizations/{organization}/roles/{role}",
            )
        }
    })?;
    Ok(GetRoleResponse { role: Some(definition(role)) })
}

/// A built-in role as the API shows it: its permissions in catalog order.
fn definition(role: &roles::BuiltIn) -> RoleDefinition {
    RoleDefinition {
        name: role.name.to_string(),
        display_name: role.display_name.to_string(),
        description: role.description.to_string(),
        permissions: authz::PERMISSIONS
            .iter()
            .filter(|entry| roles::grants(role.role, entry.permission))
            .map(|entry| entry.name.to_string())
            .collect(),
        role: role.role.to_proto(),
    }
}
