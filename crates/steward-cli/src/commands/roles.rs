//! `steward permissions ...`.

use steward_proto::admin::v1::ListPermissionsRequest;

use crate::cli::PermissionsCommand;
use crate::context::Context;
use crate::error::Result;
use crate::{convert, output};

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
