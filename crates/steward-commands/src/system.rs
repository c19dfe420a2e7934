//! Systems: the machines agents enrolled (GetSystem, ListSystems, UpdateSystem, DeleteSystem).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use steward_proto::commands::v1::{
    DeleteSystemRequest, DeleteSystemResponse, GetSystemRequest, GetSystemResponse,
    ListSystemsRequest, ListSystemsResponse, RunState, System, UpdateSystemRequest,
    UpdateSystemResponse,
};
use steward_runtime::authn::{AdministratorCall, Need};
use steward_runtime::names::{self, OrganizationName, SystemName};
use steward_runtime::roles::Permission;
use steward_runtime::{ApiError, ApiResult};

use crate::agent::agent_deadline;
use crate::entity::{result, system, target};
use crate::rules::{self, timestamp};
use crate::run::{lock_run, refresh_run};
use crate::{audit, begin_write, caller, State};

/// A system as returned by the API.
pub(crate) fn system_proto(m: system::Model, now: DateTime<Utc>) -> System {
    let fresh = m.last_seen_time.is_some_and(|seen| seen + agent_deadline() > now);
    System {
        name: m.name,
        display_name: m.display_name,
        hostname: m.hostname,
        os: m.os,
        agent_version: m.agent_version,
        connected: m.stream_id.is_some() && fresh,
        last_seen_time: m.last_seen_time.map(timestamp),
        create_time: Some(timestamp(m.create_time)),
        etag: m.etag,
    }
}

async fn find_system<C: ConnectionTrait>(
    conn: &C,
    organization: &str,
    name: &str,
) -> ApiResult<system::Model> {
    system::Entity::find_by_id(name.to_string())
        .filter(system::Column::Organization.eq(organization))
        .one(conn)
        .await?
        .ok_or_else(|| ApiError::NotFound(name.to_string()))
}

/// Ends a deleted system's unfinished results `FAILED` and removes it from every command.
pub(crate) async fn forget_system<C: ConnectionTrait>(
    conn: &C,
    name: &str,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    target::Entity::delete_many().filter(target::Column::System.eq(name)).exec(conn).await?;
    let unfinished: Vec<String> = result::Entity::find()
        .select_only()
        .column(result::Column::Run)
        .filter(result::Column::System.eq(name))
        .filter(result::Column::State.is_in([RunState::Queued as i32, RunState::Running as i32]))
        .order_by_asc(result::Column::Run)
        .into_tuple()
        .all(conn)
        .await?;
    // Runs before results, as every writer of results does, in one order: no deadlock.
    for run in &unfinished {
        lock_run(conn, run).await?;
    }
    result::Entity::update_many()
        .col_expr(result::Column::State, Expr::value(RunState::Failed as i32))
        .col_expr(result::Column::EndTime, Expr::value(Some(now)))
        .col_expr(result::Column::ErrorMessage, Expr::value("the system was deleted"))
        .filter(result::Column::System.eq(name))
        .filter(result::Column::State.is_in([RunState::Queued as i32, RunState::Running as i32]))
        .exec(conn)
        .await?;
    for run in unfinished {
        refresh_run(conn, &run, now).await?;
    }
    Ok(())
}

pub(crate) async fn get(
    state: &State,
    call: AdministratorCall,
    req: GetSystemRequest,
) -> ApiResult<GetSystemResponse> {
    let p = &caller::for_reading(state, &call.principal, Permission::SystemsRead).await?;
    let name = &req.name;
    SystemName::parse("name", name)?;
    p.check_organization(name)?;
    let m = find_system(&state.db, &p.organization, name).await?;
    Ok(GetSystemResponse { system: Some(system_proto(m, state.now())) })
}

pub(crate) async fn list(
    state: &State,
    call: AdministratorCall,
    req: ListSystemsRequest,
) -> ApiResult<ListSystemsResponse> {
    let p = &caller::for_reading(state, &call.principal, Permission::SystemsRead).await?;
    let req = &req;
    OrganizationName::parse("parent", &req.parent)?;
    p.check_organization(&req.parent)?;
    let size = names::page_size(req.page_size)?;
    let digest = "systems";
    let offset = names::decode_page_token(&req.page_token, digest)?;
    let rows = system::Entity::find()
        .filter(system::Column::Organization.eq(&p.organization))
        .order_by_asc(system::Column::DisplayName)
        .order_by_asc(system::Column::Name)
        .offset(offset)
        .limit(size + 1)
        .all(&state.db)
        .await?;
    let (rows, next_page_token) = names::page(rows, size, offset, digest);
    let now = state.now();
    Ok(ListSystemsResponse {
        systems: rows.into_iter().map(|m| system_proto(m, now)).collect(),
        next_page_token,
    })
}

pub(crate) async fn update(
    state: &State,
    call: AdministratorCall,
    req: UpdateSystemRequest,
) -> ApiResult<UpdateSystemResponse> {
    let s = req.system.ok_or_else(|| ApiError::invalid("system", "is required"))?;
    SystemName::parse("system.name", &s.name)?;
    let (p, ctx) =
        caller::for_mutation(state, call, &s.name, Need::Permission(Permission::SystemsUpdate))
            .await?;
    let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
    rules::update_paths(&mask, &["display_name"], &["display_name"])?;
    rules::display_name("system.display_name", &s.display_name)?;
    let txn = begin_write(&state.db).await?;
    let current = find_system(&txn, &p.organization, &s.name).await?;
    if !s.etag.is_empty() && s.etag != current.etag {
        return Err(ApiError::Aborted(format!(
            "{} has changed since it was read (stale etag)",
            s.name
        )));
    }
    let etag = rules::etag(&s.name, 0, &names::new_id());
    let updated = system::Entity::update_many()
        .col_expr(system::Column::DisplayName, Expr::value(s.display_name.clone()))
        .col_expr(system::Column::Etag, Expr::value(etag.clone()))
        .filter(system::Column::Name.eq(&s.name))
        .filter(system::Column::Etag.eq(&current.etag))
        .exec(&txn)
        .await?;
    if updated.rows_affected != 1 {
        return Err(ApiError::Aborted(format!("{} was changed concurrently, retry", s.name)));
    }
    let now = state.now();
    audit::record(&txn, &p.organization, &ctx, &p.administrator, &s.name, Ok(()), now).await?;
    txn.commit().await?;
    let next = system::Model { display_name: s.display_name, etag, ..current };
    Ok(UpdateSystemResponse { system: Some(system_proto(next, now)) })
}

pub(crate) async fn delete(
    state: &State,
    call: AdministratorCall,
    req: DeleteSystemRequest,
) -> ApiResult<DeleteSystemResponse> {
    SystemName::parse("name", &req.name)?;
    let (p, ctx) =
        caller::for_mutation(state, call, &req.name, Need::Permission(Permission::SystemsDelete))
            .await?;
    let txn = begin_write(&state.db).await?;
    let current = find_system(&txn, &p.organization, &req.name).await?;
    if !req.etag.is_empty() && req.etag != current.etag {
        return Err(ApiError::Aborted(format!(
            "{} has changed since it was read (stale etag)",
            req.name
        )));
    }
    let now = state.now();
    system::Entity::delete_many().filter(system::Column::Name.eq(&req.name)).exec(&txn).await?;
    forget_system(&txn, &req.name, now).await?;
    audit::record(&txn, &p.organization, &ctx, &p.administrator, &req.name, Ok(()), now).await?;
    // Its session, on any replica, ends.
    state.dispatch.announce(&txn, std::slice::from_ref(&req.name)).await?;
    txn.commit().await?;
    state.dispatch.wake([req.name.as_str()]);
    state.changed.notify_waiters();
    tracing::info!(system = %req.name, "system deleted");
    Ok(DeleteSystemResponse {})
}
