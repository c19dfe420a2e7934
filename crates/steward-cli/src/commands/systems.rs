//! `steward systems ...` and `steward connect-keys ...`.

use serde_json::json;
use steward_proto::commands::v1::{
    ConnectKey, CreateConnectKeyRequest, DeleteConnectKeyRequest, DeleteSystemRequest,
    GetSystemRequest, ListConnectKeysRequest, ListSystemsRequest, System, UpdateSystemRequest,
};

use super::request_id;
use crate::cli::{ConnectKeysCommand, Format, SystemsCommand};
use crate::context::Context;
use crate::error::{CliError, Result};
use crate::output::{Column, Show};
use crate::{convert, names, output};

const SYSTEM_COLUMNS: &[Column] = &[
    Column::id(),
    Column::new("DISPLAY_NAME", "display_name", Show::Text),
    Column::new("HOSTNAME", "hostname", Show::Text),
    Column::new("OS", "os", Show::Text),
    Column::new("CONNECTED", "connected", Show::Text),
    Column::new("LAST_SEEN", "last_seen_time", Show::Time),
];
const KEY_COLUMNS: &[Column] = &[
    Column::id(),
    Column::new("DISPLAY_NAME", "display_name", Show::Text),
    Column::new("REVOKED", "revoked", Show::Text),
    Column::new("EXPIRES", "expire_time", Show::Time),
    Column::new("CREATOR", "creator", Show::Ref),
];

pub(super) fn deleted(format: Format, name: &str) -> Result<()> {
    match format {
        Format::Json => output::json_doc(&json!({ "deleted": name })),
        Format::Text => output::line(&format!("deleted {name}")),
    }
}

async fn get_system(ctx: &mut Context, name: String) -> Result<System> {
    ctx.call(move |s| {
        let name = name.clone();
        async move { s.systems().get_system(GetSystemRequest { name }).await }
    })
    .await?
    .system
    .ok_or(CliError::Protocol("GetSystem without a system"))
}

/// Runs a `systems` subcommand.
pub async fn systems(ctx: &mut Context, cmd: SystemsCommand) -> Result<u8> {
    let org = ctx.organization()?;
    match cmd {
        SystemsCommand::List => {
            let items = ctx
                .all_pages(
                    |page_token| ListSystemsRequest {
                        parent: org.clone(),
                        page_size: 1000,
                        page_token,
                    },
                    |s, request| async move { s.systems().list_systems(request).await },
                    |page| {
                        (page.systems.iter().map(convert::system).collect(), page.next_page_token)
                    },
                )
                .await?;
            output::list(ctx.format, &items, SYSTEM_COLUMNS)?;
        }
        SystemsCommand::Get { system } => {
            let system = get_system(ctx, names::expand(&org, "systems", &system)).await?;
            output::object(ctx.format, &convert::system(&system))?;
        }
        SystemsCommand::Update { system, name: display_name, etag } => {
            let name = names::expand(&org, "systems", &system);
            let etag = match etag {
                Some(etag) => etag,
                None => get_system(ctx, name.clone()).await?.etag,
            };
            let request = UpdateSystemRequest {
                system: Some(System { name, etag, display_name, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
            };
            let updated = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.systems().update_system(request).await }
                })
                .await?
                .system
                .ok_or(CliError::Protocol("UpdateSystem without a system"))?;
            output::object(ctx.format, &convert::system(&updated))?;
        }
        SystemsCommand::Delete { system } => {
            let name = names::expand(&org, "systems", &system);
            let request = DeleteSystemRequest { name: name.clone(), etag: String::new() };
            ctx.call(move |s| {
                let request = request.clone();
                async move { s.systems().delete_system(request).await }
            })
            .await?;
            deleted(ctx.format, &name)?;
        }
    }
    Ok(0)
}

/// Runs a `connect-keys` subcommand.
pub async fn connect_keys(ctx: &mut Context, cmd: ConnectKeysCommand) -> Result<u8> {
    let org = ctx.organization()?;
    match cmd {
        ConnectKeysCommand::Create { name } => {
            let request = CreateConnectKeyRequest {
                parent: org,
                connect_key: Some(ConnectKey {
                    display_name: name.unwrap_or_default(),
                    ..Default::default()
                }),
                request_id: request_id(),
            };
            let key = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.systems().create_connect_key(request).await }
                })
                .await?
                .connect_key
                .ok_or(CliError::Protocol("CreateConnectKey without a key"))?;
            output::object(ctx.format, &convert::connect_key(&key))?;
            if ctx.format == Format::Text {
                output::note(
                    "the key is shown only this once: steward-agent --server URL --connect-key KEY",
                );
            }
        }
        ConnectKeysCommand::List => {
            let items = ctx
                .all_pages(
                    |page_token| ListConnectKeysRequest {
                        parent: org.clone(),
                        page_size: 1000,
                        page_token,
                    },
                    |s, request| async move { s.systems().list_connect_keys(request).await },
                    |page| {
                        (
                            page.connect_keys.iter().map(convert::connect_key).collect(),
                            page.next_page_token,
                        )
                    },
                )
                .await?;
            output::list(ctx.format, &items, KEY_COLUMNS)?;
        }
        ConnectKeysCommand::Delete { key } => {
            let name = names::expand(&org, "connectKeys", &key);
            ctx.call(move |s| {
                let name = name.clone();
                async move { s.systems().delete_connect_key(DeleteConnectKeyRequest { name }).await }
            })
            .await?;
            deleted(ctx.format, &names::expand(&org, "connectKeys", &key))?;
        }
    }
    Ok(0)
}
