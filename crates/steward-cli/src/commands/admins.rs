//! `steward admins ...`.

use serde_json::{json, Value};
use steward_proto::admin::v1::{
    Administrator, BatchDeleteAdministratorsRequest, CreateAdministratorRequest,
    GetAdministratorRequest, ListAdministratorsRequest, ResendInviteRequest,
    ResetAdministratorMfaRequest, UpdateAdministratorRequest,
};

use super::request_id;
use crate::cli::{AdminsCommand, Format};
use crate::context::Context;
use crate::error::{CliError, Result};
use crate::output::{Column, Show};
use crate::{convert, names, output};

const COLUMNS: &[Column] = &[
    Column::id(),
    Column::new("EMAIL", "email", Show::Text),
    Column::new("ROLE", "role_name", Show::Short),
    Column::new("BILLING", "billing", Show::Text),
    Column::new("MFA", "", Show::Derived(mfa)),
    Column::new("STATE", "state", Show::Enum("STATE_")),
];

/// An administrator's MFA in one cell: `required`, `enrolled`, both, or empty.
fn mfa(item: &Value) -> String {
    let flag = |field: &str| item.get(field).and_then(Value::as_bool).unwrap_or(false);
    let parts: Vec<&str> = [("required", flag("mfa_required")), ("enrolled", flag("mfa_enrolled"))]
        .into_iter()
        .filter_map(|(word, on)| on.then_some(word))
        .collect();
    parts.join(",")
}

/// The role name `--role` gives: a built-in role by its short name, else one of the
/// organization's own roles by id or full name.
pub(super) fn role_name(ctx: &Context, role: &str) -> Result<String> {
    const BUILT_IN: &[&str] =
        &["administrator", "manager", "help-desk", "read-only", "command-runner"];
    if role.contains('/') {
        Ok(role.to_string())
    } else if BUILT_IN.contains(&role) {
        Ok(format!("roles/{role}"))
    } else {
        Ok(format!("{}/roles/{role}", ctx.organization()?))
    }
}

/// Every administrator matching `filter`, over all pages.
async fn list_all(
    ctx: &mut Context,
    filter: Option<String>,
    order_by: Option<String>,
) -> Result<Vec<Administrator>> {
    let parent = ctx.organization()?;
    ctx.all_pages(
        |page_token| ListAdministratorsRequest {
            parent: parent.clone(),
            page_size: 1000,
            page_token,
            filter: filter.clone().unwrap_or_default(),
            order_by: order_by.clone().unwrap_or_default(),
        },
        |s, request| async move { s.admin().list_administrators(request).await },
        |page| (page.administrators, page.next_page_token),
    )
    .await
}

/// The resource name for an ID, a name or an email (looked up in the organization).
pub(super) async fn resolve(ctx: &mut Context, input: &str) -> Result<String> {
    if !input.contains('@') {
        return Ok(names::expand(&ctx.organization()?, "administrators", input));
    }
    list_all(ctx, None, None)
        .await?
        .into_iter()
        .find(|a| a.email.eq_ignore_ascii_case(input))
        .map(|a| a.name)
        .ok_or_else(|| CliError::NotFound(format!("no administrator with email {input}")))
}

async fn get(ctx: &mut Context, name: String) -> Result<Administrator> {
    ctx.call(move |s| {
        let name = name.clone();
        async move { s.admin().get_administrator(GetAdministratorRequest { name }).await }
    })
    .await?
    .administrator
    .ok_or(CliError::Protocol("GetAdministrator without an administrator"))
}

fn print_admins(ctx: &Context, heading: &str, admins: &[Administrator]) -> Result<()> {
    let items: Vec<Value> = admins.iter().map(convert::administrator).collect();
    if ctx.format == Format::Text && !heading.is_empty() {
        output::line(heading)?;
    }
    output::list(ctx.format, &items, COLUMNS)
}

/// Runs an `admins` subcommand.
pub async fn run(ctx: &mut Context, cmd: AdminsCommand) -> Result<u8> {
    match cmd {
        AdminsCommand::List { filter, order_by } => {
            let admins = list_all(ctx, filter, order_by).await?;
            print_admins(ctx, "", &admins)?;
        }
        AdminsCommand::Get { admin } => {
            let name = resolve(ctx, &admin).await?;
            let admin = get(ctx, name).await?;
            output::object(ctx.format, &convert::administrator(&admin))?;
        }
        AdminsCommand::Create { email, role: r, billing, require_mfa, whats_new } => {
            let request = CreateAdministratorRequest {
                parent: ctx.organization()?,
                administrator: Some(Administrator {
                    email,
                    role_name: role_name(ctx, &r)?,
                    billing,
                    mfa_required: require_mfa,
                    whats_new,
                    ..Default::default()
                }),
                request_id: request_id(),
            };
            let created = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.admin().create_administrator(request).await }
                })
                .await?
                .administrator
                .ok_or(CliError::Protocol("CreateAdministrator without an administrator"))?;
            output::object(ctx.format, &convert::administrator(&created))?;
            if ctx.format == Format::Text {
                output::note(&format!("an invite email was sent to {}", created.email));
            }
        }
        AdminsCommand::Update { admin, role: r, billing, require_mfa, whats_new, etag } => {
            let name = resolve(ctx, &admin).await?;
            let etag = match etag {
                Some(etag) => etag,
                None => get(ctx, name.clone()).await?.etag,
            };
            let mut changes = Administrator { name, etag, ..Default::default() };
            let mut paths = Vec::new();
            if let Some(r) = r {
                changes.role_name = role_name(ctx, &r)?;
                paths.push("role_name".to_string());
            }
            if let Some(billing) = billing {
                changes.billing = billing;
                paths.push("billing".to_string());
            }
            if let Some(required) = require_mfa {
                changes.mfa_required = required;
                paths.push("mfa_required".to_string());
            }
            if let Some(whats_new) = whats_new {
                changes.whats_new = whats_new;
                paths.push("whats_new".to_string());
            }
            let request = UpdateAdministratorRequest {
                administrator: Some(changes),
                update_mask: Some(prost_types::FieldMask { paths }),
            };
            let updated = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.admin().update_administrator(request).await }
                })
                .await?
                .administrator
                .ok_or(CliError::Protocol("UpdateAdministrator without an administrator"))?;
            output::object(ctx.format, &convert::administrator(&updated))?;
        }
        AdminsCommand::Delete { admins, dry_run } => {
            let mut names = Vec::with_capacity(admins.len());
            for admin in &admins {
                names.push(resolve(ctx, admin).await?);
            }
            let request = BatchDeleteAdministratorsRequest {
                parent: ctx.organization()?,
                names,
                validate_only: dry_run,
            };
            let answer = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.admin().batch_delete_administrators(request).await }
                })
                .await?;
            let n = answer.administrators.len();
            let heading = if dry_run {
                format!("would delete {n} administrator(s) (dry run, nothing deleted):")
            } else {
                format!("deleted {n} administrator(s):")
            };
            print_admins(ctx, &heading, &answer.administrators)?;
        }
        AdminsCommand::ResendInvite { admin } => {
            let name = resolve(ctx, &admin).await?;
            let answer = ctx
                .call(move |s| {
                    let name = name.clone();
                    async move { s.admin().resend_invite(ResendInviteRequest { name }).await }
                })
                .await?;
            let admin = answer
                .administrator
                .ok_or(CliError::Protocol("ResendInvite without an administrator"))?;
            let value = json!({"administrator": convert::administrator(&admin),
                "invite_expire_time": convert::time(answer.invite_expire_time.as_ref())});
            output::object(ctx.format, &value)?;
        }
        AdminsCommand::ResetMfa { admin } => {
            let name = resolve(ctx, &admin).await?;
            let answer = ctx
                .call(move |s| {
                    let name = name.clone();
                    async move {
                        s.admin()
                            .reset_administrator_mfa(ResetAdministratorMfaRequest { name })
                            .await
                    }
                })
                .await?;
            let admin = answer
                .administrator
                .ok_or(CliError::Protocol("ResetAdministratorMfa without an administrator"))?;
            output::object(ctx.format, &convert::administrator(&admin))?;
        }
    }
    Ok(0)
}
