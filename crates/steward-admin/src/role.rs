//! Permissions and roles. The permission catalog is declared in the protos
//! (`steward.authz.v1.Permission` and each RPC's `steward.authz.v1.rule` option) and served as
//! it was built; the built-in roles and their permissions are `steward_runtime::roles`. Both
//! are the same for every organization. An organization's own roles (`admin_roles`) are sets
//! of catalog permissions, held organization-wide; no one creates, changes or assigns one with
//! a permission their own role lacks.

use std::collections::BTreeSet;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, Set,
};
use steward_proto::admin::v1::{
    CreateRoleRequest, CreateRoleResponse, DeleteRoleRequest, DeleteRoleResponse, GetRoleRequest,
    GetRoleResponse, ListPermissionsRequest, ListPermissionsResponse, ListRolesRequest,
    ListRolesResponse, Permission, RoleDefinition, UpdateRoleRequest, UpdateRoleResponse,
};
use steward_proto::authz;
use steward_runtime::authn::{Need, Principal};
use steward_runtime::claims::Role;
use steward_runtime::error::PreconditionViolation;
use steward_runtime::names::{OrganizationName, RoleName, Text};
use steward_runtime::roles::{Permission as Perm, Permissions, Scope};
use steward_runtime::{roles, ApiError, ApiResult};

use crate::audit::Auditor;
use crate::entity::{administrator, role, service_account};
use crate::state::{caller_may_read, caller_row, etag, lock_org, may_hand_out, timestamp, State};

/// The permission catalog, in declaration order, each with the RPCs that need it
/// (ListPermissions).
pub async fn list_permissions(
    state: &State,
    principal: &Principal,
    _req: ListPermissionsRequest,
) -> ApiResult<ListPermissionsResponse> {
    caller_may_read(state, principal, Need::AnyRole).await?;
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

/// The built-in roles with the permissions each holds, then the organization's own (ListRoles).
pub async fn list_roles(
    state: &State,
    principal: &Principal,
    _req: ListRolesRequest,
) -> ApiResult<ListRolesResponse> {
    caller_may_read(state, principal, Need::AnyRole).await?;
    let org_id = OrganizationName::parse("caller", &principal.organization)?.id().to_string();
    let own = role::Entity::find()
        .filter(role::Column::OrganizationId.eq(org_id))
        .order_by_asc(role::Column::CreatedAt)
        .order_by_asc(role::Column::Name)
        .all(&state.db)
        .await?;
    let roles = roles::BUILT_IN.iter().map(definition).chain(own.iter().map(custom_definition));
    Ok(ListRolesResponse { roles: roles.collect() })
}

/// One role by name (GetRole).
pub async fn get_role(
    state: &State,
    principal: &Principal,
    req: GetRoleRequest,
) -> ApiResult<GetRoleResponse> {
    if req.name.starts_with("organizations/") {
        // An organization's own role: scoped like any resource.
        let name = RoleName::parse("name", &req.name)?;
        principal.check_organization(name.as_str())?;
        caller_may_read(state, principal, Need::AnyRole).await?;
        let row = find(&state.db, &name).await?;
        return Ok(GetRoleResponse { role: Some(custom_definition(&row)) });
    }
    caller_may_read(state, principal, Need::AnyRole).await?;
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
    let held = roles::built_in(role.role);
    RoleDefinition {
        name: role.name.to_string(),
        display_name: role.display_name.to_string(),
        description: role.description.to_string(),
        permissions: names(&held, None),
        role: role.role.to_proto(),
        own_only_permissions: names(&held, Some(Scope::Own)),
        ..Default::default()
    }
}

/// The names of `held` (those held with `scope` only, when given), in catalog order.
fn names(held: &Permissions, scope: Option<Scope>) -> Vec<String> {
    held.iter()
        .filter(|(_, s)| scope.is_none_or(|want| *s == want))
        .map(|(p, _)| roles::permission_name(p).to_string())
        .collect()
}

/// An organization's own role as the API shows it.
fn custom_definition(row: &role::Model) -> RoleDefinition {
    RoleDefinition {
        name: row.name.clone(),
        display_name: row.display_name.clone(),
        description: row.description.clone(),
        permissions: names(&roles::custom(row.permissions.split_whitespace()), None),
        role: Role::Custom.to_proto(),
        own_only_permissions: Vec::new(),
        etag: role_etag(row),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

fn role_etag(row: &role::Model) -> String {
    etag(&["role", &row.name, &row.revision.to_string()])
}

/// An organization's own role by name, or NOT_FOUND.
async fn find<C: ConnectionTrait>(conn: &C, name: &RoleName) -> ApiResult<role::Model> {
    role::Entity::find_by_id(name.to_string())
        .one(conn)
        .await?
        .ok_or_else(|| ApiError::NotFound(name.to_string()))
}

/// The catalog permissions `names` ask for, validated (`field` names them in errors): every
/// one known and none a billing permission; what every role holds anyway is dropped.
fn requested_permissions(field: &str, requested: &[String]) -> ApiResult<Permissions> {
    let mut set = Permissions::NONE;
    for name in requested {
        let permission = roles::permission_named(name).ok_or_else(|| {
            ApiError::invalid(field, format!("`{name}` is not in the permission catalog"))
        })?;
        if roles::BILLING_PERMISSIONS.contains(&permission) {
            return Err(ApiError::invalid(
                field,
                format!("`{name}` comes only from an administrator's billing flag"),
            ));
        }
        set = set.with(permission, Scope::Organization);
    }
    Ok(roles::custom(std::iter::empty()).union(&set))
}

/// The stored form of a custom role's permissions: names in catalog order, space-separated,
/// without what every role holds.
fn stored_permissions(held: &Permissions) -> String {
    held.iter()
        .map(|(p, _)| p)
        .filter(|p| !roles::EVERY_ROLE.contains(p))
        .map(roles::permission_name)
        .collect::<Vec<_>>()
        .join(" ")
}

fn display_name(value: &str) -> ApiResult<String> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > 100 {
        return Err(ApiError::invalid("role.display_name", "must be 1 to 100 characters"));
    }
    steward_runtime::names::check_text("role.display_name", value, Text::Line)?;
    Ok(value.to_string())
}

fn description(value: &str) -> ApiResult<String> {
    if value.chars().count() > 1000 {
        return Err(ApiError::invalid("role.description", "must be at most 1000 characters"));
    }
    steward_runtime::names::check_text("role.description", value, Text::Lines)?;
    Ok(value.trim().to_string())
}

fn role_id(value: &str) -> ApiResult<()> {
    let ok = (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "role_id",
            "must be 1 to 63 lowercase letters, digits and hyphens, starting with a letter",
        ))
    }
}

/// CreateRole: an organization's own role, with permissions the caller's role holds.
pub async fn create(
    state: &State,
    principal: &Principal,
    audit: &Auditor,
    req: CreateRoleRequest,
) -> ApiResult<CreateRoleResponse> {
    let org = OrganizationName::parse("parent", &req.parent)?;
    principal.check_organization(org.as_str())?;
    let input = req.role.ok_or_else(|| ApiError::invalid("role", "is required"))?;
    role_id(&req.role_id)?;
    let name = RoleName::parse("role_id", &format!("{org}/roles/{}", req.role_id))?;
    let display = display_name(&input.display_name)?;
    let about = description(&input.description)?;
    let wanted = requested_permissions("role.permissions", &input.permissions)?;
    let now = state.now();
    let txn = state.begin_write().await?;
    lock_org(&txn, org.id()).await?;
    let caller = caller_row(&txn, principal, Need::Permission(Perm::RolesCreate)).await?;
    may_hand_out(&caller.role, &wanted, name.as_str())?;
    if role::Entity::find_by_id(name.to_string()).one(&txn).await?.is_some() {
        return Err(ApiError::AlreadyExists(format!("{name} already exists")));
    }
    let row = role::ActiveModel {
        name: Set(name.to_string()),
        organization_id: Set(org.id().to_string()),
        display_name: Set(display),
        description: Set(about),
        permissions: Set(stored_permissions(&wanted)),
        revision: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    audit.allowed(&txn, name.as_str(), &format!("created with {}", row.permissions), now).await?;
    txn.commit().await?;
    tracing::info!(role = %name, "role created");
    Ok(CreateRoleResponse { role: Some(custom_definition(&row)) })
}

/// UpdateRole: the masked fields of an organization's own role. Both the role as it was and
/// as it becomes must be within the caller's permissions.
pub async fn update(
    state: &State,
    principal: &Principal,
    audit: &Auditor,
    req: UpdateRoleRequest,
) -> ApiResult<UpdateRoleResponse> {
    let input = req.role.ok_or_else(|| ApiError::invalid("role", "is required"))?;
    let name = RoleName::parse("role.name", &input.name)?;
    principal.check_organization(name.as_str())?;
    let paths: BTreeSet<&str> = req
        .update_mask
        .as_ref()
        .map(|m| m.paths.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if paths.is_empty() {
        return Err(ApiError::invalid("update_mask", "name at least one field to update"));
    }
    if let Some(path) =
        paths.iter().find(|p| !["display_name", "description", "permissions"].contains(p))
    {
        return Err(ApiError::invalid(
            "update_mask",
            format!("`{path}` cannot be updated; allowed: display_name, description, permissions"),
        ));
    }
    let now = state.now();
    let txn = state.begin_write().await?;
    lock_org(&txn, name.organization().id()).await?;
    let caller = caller_row(&txn, principal, Need::Permission(Perm::RolesUpdate)).await?;
    let current = find(&txn, &name).await?;
    if !input.etag.is_empty() && input.etag != role_etag(&current) {
        return Err(ApiError::Aborted(format!(
            "{name} was changed since it was read; get it again"
        )));
    }
    let held = caller.role;
    may_hand_out(&held, &roles::custom(current.permissions.split_whitespace()), name.as_str())?;
    let mut next = current.clone();
    if paths.contains("display_name") {
        next.display_name = display_name(&input.display_name)?;
    }
    if paths.contains("description") {
        next.description = description(&input.description)?;
    }
    if paths.contains("permissions") {
        let wanted = requested_permissions("role.permissions", &input.permissions)?;
        may_hand_out(&held, &wanted, name.as_str())?;
        next.permissions = stored_permissions(&wanted);
    }
    if next == current {
        // As UpdateAdministrator: a concurrent change may be why nothing changes here.
        txn.rollback().await?;
        state.wait_out_leases().await;
        return Ok(UpdateRoleResponse { role: Some(custom_definition(&current)) });
    }
    let revision = current.revision;
    let mut active = current.into_active_model();
    active.display_name = Set(next.display_name);
    active.description = Set(next.description);
    active.permissions = Set(next.permissions.clone());
    active.revision = Set(revision + 1);
    active.updated_at = Set(now);
    let saved = active.update(&txn).await?;
    audit.allowed(&txn, name.as_str(), &format!("now holds {}", next.permissions), now).await?;
    state.commit_narrowing(txn).await?;
    tracing::info!(role = %name, "role updated");
    Ok(UpdateRoleResponse { role: Some(custom_definition(&saved)) })
}

/// DeleteRole: an organization's own role that no administrator holds.
pub async fn delete(
    state: &State,
    principal: &Principal,
    audit: &Auditor,
    req: DeleteRoleRequest,
) -> ApiResult<DeleteRoleResponse> {
    let name = RoleName::parse("name", &req.name)?;
    principal.check_organization(name.as_str())?;
    let now = state.now();
    let txn = state.begin_write().await?;
    // The organization lock orders this with every assignment (create and update of
    // administrators take it too), so no one is given the role while it is being deleted.
    lock_org(&txn, name.organization().id()).await?;
    caller_row(&txn, principal, Need::Permission(Perm::RolesDelete)).await?;
    let current = find(&txn, &name).await?;
    if !req.etag.is_empty() && req.etag != role_etag(&current) {
        return Err(ApiError::Aborted(format!(
            "{name} was changed since it was read; get it again"
        )));
    }
    let mut holders: Vec<String> = administrator::Entity::find()
        .filter(administrator::Column::OrganizationId.eq(name.organization().id()))
        .filter(administrator::Column::Role.eq(name.as_str()))
        .all(&txn)
        .await?
        .iter()
        .map(|h| crate::state::admin_name(&h.organization_id, &h.id))
        .collect();
    holders.extend(
        service_account::Entity::find()
            .filter(service_account::Column::OrganizationId.eq(name.organization().id()))
            .filter(service_account::Column::Role.eq(name.as_str()))
            .all(&txn)
            .await?
            .into_iter()
            .map(|account| account.name),
    );
    if !holders.is_empty() {
        return Err(ApiError::FailedPrecondition(
            holders
                .into_iter()
                .map(|holder| PreconditionViolation {
                    kind: "ROLE_IN_USE".into(),
                    description: format!("{holder} holds {name}; give it another role first"),
                    subject: holder,
                })
                .collect(),
        ));
    }
    role::Entity::delete_by_id(name.to_string()).exec(&txn).await?;
    audit.allowed(&txn, name.as_str(), "deleted", now).await?;
    txn.commit().await?;
    tracing::info!(role = %name, "role deleted");
    Ok(DeleteRoleResponse {})
}
