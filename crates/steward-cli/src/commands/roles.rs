//! `steward permissions ...` and `steward roles ...`.

use steward_proto::admin::v1::{
    CreateRoleRequest, DeleteRoleRequest, GetRoleRequest, ListPermissionsRequest, ListRolesRequest,
    RoleDefinition, UpdateRoleRequest,
};

use crate::cli::{PermissionsCommand, RolesCommand};
use crate::context::Context;
use crate::error::{CliError, Result};
use crate::output::{Column, Show};
use crate::{convert, output};

const ROLE_COLUMNS: &[Column] = &[
    Column::id(),
    Column::new("DISPLAY_NAME", "display_name", Show::Text),
    Column::new("DESCRIPTION", "description", Show::Text),
];

const PERMISSION_COLUMNS: &[Column] =
    &[Column::new("NAME", "name", Show::Id), Column::new("DESCRIPTION", "description", Show::Text)];

/// Runs a `permissions` subcommand.
pub async fn permissions(ctx: &mut Context, cmd: PermissionsCommand) -> Result<u8> {
    let PermissionsCommand::List = cmd;
    let page = ctx
        .call(move |s| async move { s.roles().list_permissions(ListPermissionsRequest {}).await })
        .await?;
    let items: Vec<_> = page.permissions.iter().map(convert::permission).collect();
    output::list(ctx.format, &items, PERMISSION_COLUMNS)?;
    Ok(0)
}

/// Runs a `roles` subcommand.
pub async fn roles(ctx: &mut Context, cmd: RolesCommand) -> Result<u8> {
    match cmd {
        RolesCommand::List => {
            let page = ctx
                .call(move |s| async move { s.roles().list_roles(ListRolesRequest {}).await })
                .await?;
            let items: Vec<_> = page.roles.iter().map(convert::role_definition).collect();
            output::list(ctx.format, &items, ROLE_COLUMNS)?;
        }
        RolesCommand::Get { role } => {
            let name = if role.contains('/') { role } else { format!("roles/{role}") };
            let request = GetRoleRequest { name };
            let role = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.roles().get_role(request).await }
                })
                .await?
                .role
                .ok_or(CliError::Protocol("GetRole without a role"))?;
            output::object(ctx.format, &convert::role_definition(&role))?;
        }
        RolesCommand::Create { id, name, description, permissions } => {
            let request = CreateRoleRequest {
                parent: ctx.organization()?,
                role_id: id,
                role: Some(RoleDefinition {
                    display_name: name,
                    description,
                    permissions,
                    ..Default::default()
                }),
            };
            let role = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.roles().create_role(request).await }
                })
                .await?
                .role
                .ok_or(CliError::Protocol("CreateRole without a role"))?;
            output::object(ctx.format, &convert::role_definition(&role))?;
        }
        RolesCommand::Update { id, name, description, permissions, no_permissions } => {
            let mut role = RoleDefinition { name: own_role(ctx, &id)?, ..Default::default() };
            let mut paths = Vec::new();
            if let Some(name) = name {
                role.display_name = name;
                paths.push("display_name".to_string());
            }
            if let Some(description) = description {
                role.description = description;
                paths.push("description".to_string());
            }
            if no_permissions || !permissions.is_empty() {
                role.permissions = permissions;
                paths.push("permissions".to_string());
            }
            let request = UpdateRoleRequest {
                role: Some(role),
                update_mask: Some(prost_types::FieldMask { paths }),
            };
            let role = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.roles().update_role(request).await }
                })
                .await?
                .role
                .ok_or(CliError::Protocol("UpdateRole without a role"))?;
            output::object(ctx.format, &convert::role_definition(&role))?;
        }
        RolesCommand::Delete { id } => {
            let name = own_role(ctx, &id)?;
            let request = DeleteRoleRequest { name: name.clone(), etag: String::new() };
            ctx.call(move |s| {
                let request = request.clone();
                async move { s.roles().delete_role(request).await }
            })
            .await?;
            super::systems::deleted(ctx.format, &name)?;
        }
    }
    Ok(0)
}

/// The full name of an organization's own role given by id or name.
fn own_role(ctx: &Context, id: &str) -> Result<String> {
    if id.contains('/') {
        return Ok(id.to_string());
    }
    Ok(format!("{}/roles/{id}", ctx.organization()?))
}
