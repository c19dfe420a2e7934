//! `steward service-accounts ...` and `steward service-accounts keys ...`.

use serde_json::{json, Value};
use steward_proto::admin::v1::{
    CreateServiceAccountKeyRequest, CreateServiceAccountRequest, DeleteServiceAccountKeyRequest,
    DeleteServiceAccountRequest, GetServiceAccountRequest, ListServiceAccountKeysRequest,
    ListServiceAccountsRequest, ServiceAccount, ServiceAccountKey,
};

use super::admins::role_name;
use super::systems::deleted;
use crate::cli::{Format, ServiceAccountKeysCommand, ServiceAccountsCommand};
use crate::context::{wall_clock, Context, API_KEY_VAR};
use crate::error::{CliError, Result};
use crate::output::{Column, Show};
use crate::{convert, names, output};

const COLUMNS: &[Column] = &[
    Column::id(),
    Column::new("DISPLAY_NAME", "display_name", Show::Text),
    Column::new("ROLE", "role_name", Show::Short),
    Column::new("BILLING", "billing", Show::Text),
    Column::new("CREATOR", "creator", Show::Ref),
    Column::new("CREATED", "create_time", Show::Time),
];
const KEY_COLUMNS: &[Column] = &[
    Column::new("ID", "name", Show::ChildId),
    Column::new("EXPIRES", "expire_time", Show::Time),
    Column::new("LAST_USED", "last_used_time", Show::Time),
];

/// The resource name of a service account given by ID or name.
fn account_name(ctx: &Context, input: &str) -> Result<String> {
    Ok(names::expand(&ctx.organization()?, "serviceAccounts", input))
}

/// The resource name of a key given as `organizations/O/serviceAccounts/S/keys/K` or
/// `S/keys/K`: a key's ID alone does not say whose it is.
fn key_name(ctx: &Context, input: &str) -> Result<String> {
    expand_key(&ctx.organization()?, input).ok_or_else(|| {
        CliError::Usage(format!(
            "{input} is not a key's name: give organizations/O/serviceAccounts/S/keys/K (or \
             S/keys/K), as `steward service-accounts keys list S` shows it"
        ))
    })
}

/// `input` expanded within `org`, if it then has the shape of a key's name.
fn expand_key(org: &str, input: &str) -> Option<String> {
    let name = names::expand(org, "serviceAccounts", input);
    let segments: Vec<&str> = name.split('/').collect();
    match segments.as_slice() {
        ["organizations", o, "serviceAccounts", s, "keys", k]
            if [o, s, k].iter().all(|v| !v.is_empty()) =>
        {
            Some(name)
        }
        _ => None,
    }
}

/// Runs a `service-accounts` subcommand.
pub async fn run(ctx: &mut Context, cmd: ServiceAccountsCommand) -> Result<u8> {
    match cmd {
        ServiceAccountsCommand::List => {
            let request = ListServiceAccountsRequest { parent: ctx.organization()? };
            let answer = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.service_accounts().list_service_accounts(request).await }
                })
                .await?;
            let items: Vec<Value> =
                answer.service_accounts.iter().map(convert::service_account).collect();
            output::list(ctx.format, &items, COLUMNS)?;
        }
        ServiceAccountsCommand::Get { account } => {
            let name = account_name(ctx, &account)?;
            let account = ctx
                .call(move |s| {
                    let request = GetServiceAccountRequest { name: name.clone() };
                    async move { s.service_accounts().get_service_account(request).await }
                })
                .await?
                .service_account
                .ok_or(CliError::Protocol("GetServiceAccount without a service account"))?;
            output::object(ctx.format, &convert::service_account(&account))?;
        }
        ServiceAccountsCommand::Create { name, role, billing } => {
            let request = CreateServiceAccountRequest {
                parent: ctx.organization()?,
                service_account: Some(ServiceAccount {
                    display_name: name,
                    role_name: role_name(ctx, &role)?,
                    billing,
                    ..Default::default()
                }),
            };
            let created = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.service_accounts().create_service_account(request).await }
                })
                .await?
                .service_account
                .ok_or(CliError::Protocol("CreateServiceAccount without a service account"))?;
            output::object(ctx.format, &convert::service_account(&created))?;
            if ctx.format == Format::Text {
                output::note(&format!(
                    "give it an API key with: steward service-accounts keys create {}",
                    names::id(&created.name)
                ));
            }
        }
        ServiceAccountsCommand::Delete { account } => {
            let name = account_name(ctx, &account)?;
            let request = DeleteServiceAccountRequest { name: name.clone() };
            ctx.call(move |s| {
                let request = request.clone();
                async move { s.service_accounts().delete_service_account(request).await }
            })
            .await?;
            deleted(ctx.format, &name)?;
        }
        ServiceAccountsCommand::Keys(cmd) => keys(ctx, cmd).await?,
    }
    Ok(0)
}

/// Runs a `service-accounts keys` subcommand.
async fn keys(ctx: &mut Context, cmd: ServiceAccountKeysCommand) -> Result<()> {
    match cmd {
        ServiceAccountKeysCommand::Create { account, expires_in } => {
            let expire = wall_clock() + chrono::Duration::days(i64::from(expires_in));
            let request = CreateServiceAccountKeyRequest {
                parent: account_name(ctx, &account)?,
                key: Some(ServiceAccountKey {
                    expire_time: Some(prost_types::Timestamp {
                        seconds: expire.timestamp(),
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
            };
            let answer = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.service_accounts().create_service_account_key(request).await }
                })
                .await?;
            let key =
                answer.key.ok_or(CliError::Protocol("CreateServiceAccountKey without a key"))?;
            if answer.api_key.is_empty() {
                return Err(CliError::Protocol("CreateServiceAccountKey without an api_key"));
            }
            let key = convert::service_account_key(&key);
            match ctx.format {
                Format::Json => {
                    output::json_doc(&json!({"key": key, "api_key": answer.api_key}))?;
                }
                Format::Text => {
                    output::object(ctx.format, &key)?;
                    output::note(&format!(
                        "the API key, shown only this once (give it to programs as \
                         {API_KEY_VAR}):"
                    ));
                    output::line(&answer.api_key)?;
                }
            }
        }
        ServiceAccountKeysCommand::List { account } => {
            let request = ListServiceAccountKeysRequest { parent: account_name(ctx, &account)? };
            let answer = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.service_accounts().list_service_account_keys(request).await }
                })
                .await?;
            let items: Vec<Value> = answer.keys.iter().map(convert::service_account_key).collect();
            output::list(ctx.format, &items, KEY_COLUMNS)?;
        }
        ServiceAccountKeysCommand::Delete { key } => {
            let name = key_name(ctx, &key)?;
            let request = DeleteServiceAccountKeyRequest { name: name.clone() };
            ctx.call(move |s| {
                let request = request.clone();
                async move { s.service_accounts().delete_service_account_key(request).await }
            })
            .await?;
            deleted(ctx.format, &name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_need_their_account() {
        let org = "organizations/o";
        let full = "organizations/o/serviceAccounts/s/keys/k";
        assert_eq!(expand_key(org, full).as_deref(), Some(full));
        assert_eq!(expand_key(org, "s/keys/k").as_deref(), Some(full));
        assert_eq!(expand_key(org, "serviceAccounts/s/keys/k").as_deref(), Some(full));
        for bad in ["k", "s/keys", "s/keys/", "organizations/o/serviceAccounts/s", "s/k/x"] {
            assert_eq!(expand_key(org, bad), None, "{bad}");
        }
    }
}
