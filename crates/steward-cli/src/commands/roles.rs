//! `steward permissions ...` and `steward roles ...`.

use steward_proto::admin::v1::{GetRoleRequest, ListPermissionsRequest, ListRolesRequest};

use crate::cli::{PermissionsCommand, RolesCommand};
use crate::context::Context;
use crate::error::{CliError, Result};
use crate::{convert, output};

const ROLE_COLUMNS: &[(&str, &str)] = &[("NAME", "name"), ("DISPLAY_NAME", "display_name")];

const PERMISSION_COLUMNS: &[(&str, &str)] = &[("NAME", "name"), ("DESCRIPTION", "description")];

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
    }
    Ok(0)
}
