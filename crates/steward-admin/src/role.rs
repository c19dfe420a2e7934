//! Permissions and roles. The permission catalog is declared in the protos
//! (`steward.authz.v1.Permission` and each RPC's `steward.authz.v1.rule` option) and served as
//! it was built; it is the same for every organization.

use steward_proto::admin::v1::{ListPermissionsRequest, ListPermissionsResponse, Permission};
use steward_proto::authz;
use steward_runtime::authn::{Need, Principal};
use steward_runtime::ApiResult;

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
