//! Commands: create, read, list, update and delete (targets included).

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use steward_proto::commands::v1::{
    Command, CreateCommandRequest, CreateCommandResponse, DeleteCommandRequest,
    DeleteCommandResponse, GetCommandRequest, GetCommandResponse, ListCommandsRequest,
    ListCommandsResponse, UpdateCommandRequest, UpdateCommandResponse,
};
use steward_runtime::authn::{AdministratorCall, Need, Principal};
use steward_runtime::names::{self, CommandName, OrganizationName, SystemName};
use steward_runtime::roles::Permission;
use steward_runtime::{ApiError, ApiResult};
use steward_storage::idempotency::Key;

use crate::caller::everywhere;
use crate::entity::{command, grant, system, target};
use crate::grant::find_grant;
use crate::rules::{self, timestamp};
use crate::{audit, begin_write, caller, is_unique_violation, State, IDEMPOTENCY};

/// Most target systems of a command, and most systems named by one RunCommand. Bounds the work
/// (and the rows written) of one request.
pub(crate) const MAX_SYSTEMS: usize = 1000;

/// Target systems of commands, in order, keyed by command name.
pub(crate) async fn targets_of<C: ConnectionTrait>(
    conn: &C,
    commands: &[String],
) -> ApiResult<HashMap<String, Vec<String>>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    if commands.is_empty() {
        return Ok(map);
    }
    let rows = target::Entity::find()
        .filter(target::Column::Command.is_in(commands.iter().cloned()))
        .order_by_asc(target::Column::Position)
        .all(conn)
        .await?;
    for row in rows {
        map.entry(row.command).or_default().push(row.system);
    }
    Ok(map)
}

pub(crate) fn command_proto(m: command::Model, targets: Vec<String>) -> Command {
    Command {
        name: m.name,
        display_name: m.display_name,
        description: m.description,
        script: m.script,
        interpreter: m.interpreter,
        run_as_user: m.run_as_user,
        timeout: Some(prost_types::Duration { seconds: m.timeout_secs, nanos: m.timeout_nanos }),
        target_systems: targets,
        create_time: Some(timestamp(m.create_time)),
        update_time: Some(timestamp(m.update_time)),
        etag: m.etag,
    }
}

/// Target systems of one command, in order.
pub(crate) async fn targets_of_command<C: ConnectionTrait>(
    conn: &C,
    command: &str,
) -> ApiResult<Vec<String>> {
    let command = command.to_string();
    let mut map = targets_of(conn, std::slice::from_ref(&command)).await?;
    Ok(map.remove(&command).unwrap_or_default())
}

pub(crate) async fn load_command_proto<C: ConnectionTrait>(
    conn: &C,
    m: command::Model,
) -> ApiResult<Command> {
    let targets = targets_of_command(conn, &m.name).await?;
    Ok(command_proto(m, targets))
}

pub(crate) async fn find_command<C: ConnectionTrait>(
    conn: &C,
    organization: &str,
    name: &str,
) -> ApiResult<Option<command::Model>> {
    Ok(command::Entity::find_by_id(name.to_string())
        .filter(command::Column::Organization.eq(organization))
        .one(conn)
        .await?)
}

/// Checks target system names: well-formed, of `organization`, distinct, and existing.
pub(crate) async fn check_targets<C: ConnectionTrait>(
    conn: &C,
    p: &Principal,
    targets: &[String],
) -> ApiResult<()> {
    if targets.len() > MAX_SYSTEMS {
        return Err(ApiError::invalid(
            "command.target_systems",
            format!("must name at most {MAX_SYSTEMS} systems"),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(targets.len());
    for (i, name) in targets.iter().enumerate() {
        let field = format!("command.target_systems[{i}]");
        SystemName::parse(&field, name)?;
        p.check_organization(name)?;
        if !seen.insert(name.as_str()) {
            return Err(ApiError::invalid(field, "is listed twice"));
        }
        let exists = system::Entity::find_by_id(name.clone())
            .filter(system::Column::Organization.eq(&p.organization))
            .count(conn)
            .await?;
        if exists == 0 {
            return Err(ApiError::invalid(field, format!("no system {name}")));
        }
    }
    Ok(())
}

pub(crate) async fn replace_targets<C: ConnectionTrait>(
    conn: &C,
    command: &str,
    targets: &[String],
) -> ApiResult<()> {
    target::Entity::delete_many().filter(target::Column::Command.eq(command)).exec(conn).await?;
    for (position, system) in targets.iter().enumerate() {
        target::Entity::insert(
            target::Model {
                command: command.to_string(),
                system: system.clone(),
                position: i32::try_from(position).unwrap_or(i32::MAX),
            }
            .into_active_model(),
        )
        .exec_without_returning(conn)
        .await?;
    }
    Ok(())
}

/// Loads a command the caller may see: Administrators see every command of their
/// organization, Command Runners only granted ones (PERMISSION_DENIED otherwise, whether or
/// not it exists).
pub(crate) async fn visible_command(
    state: &State,
    p: &Principal,
    name: &str,
) -> ApiResult<command::Model> {
    CommandName::parse("name", name)?;
    p.check_organization(name)?;
    let db = &state.db;
    if !everywhere(p, Permission::CommandsRead)
        && find_grant(db, name, &p.administrator).await?.is_none()
    {
        return Err(ApiError::denied("NO_GRANT", format!("{name} has not been granted to you")));
    }
    find_command(db, &p.organization, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(name.to_string()))
}

pub(crate) async fn create(
    state: &State,
    call: AdministratorCall,
    req: CreateCommandRequest,
) -> ApiResult<CreateCommandResponse> {
    OrganizationName::parse("parent", &req.parent)?;
    let (p, ctx) = caller::for_mutation(
        state,
        call,
        &req.parent,
        Need::Permission(Permission::CommandsCreate),
    )
    .await?;
    let c = req.command.ok_or_else(|| ApiError::invalid("command", "is required"))?;
    rules::display_name("command.display_name", &c.display_name)?;
    rules::description("command.description", &c.description)?;
    rules::script("command.script", &c.script)?;
    rules::interpreter("command.interpreter", c.interpreter)?;
    rules::run_as_user("command.run_as_user", &c.run_as_user)?;
    let (timeout_secs, timeout_nanos) = rules::timeout("command.timeout", c.timeout.as_ref())?;
    rules::request_id(&req.request_id)?;
    let id = if req.command_id.is_empty() {
        names::new_id()
    } else {
        rules::user_id("command_id", &req.command_id)?;
        req.command_id.clone()
    };
    let key = Key::new("create_command", &p.administrator, &req.request_id);
    let db = &state.db;
    if let Some(previous) = IDEMPOTENCY.recall(db, key.as_ref()).await? {
        let m = find_command(db, &p.organization, &previous)
            .await?
            .ok_or(ApiError::NotFound(previous))?;
        return Ok(CreateCommandResponse { command: Some(load_command_proto(db, m).await?) });
    }
    let name = format!("{}/commands/{id}", p.organization);
    let now = state.now();
    let txn = begin_write(db).await?;
    if let Some(previous) = IDEMPOTENCY.recall(&txn, key.as_ref()).await? {
        let m = find_command(&txn, &p.organization, &previous)
            .await?
            .ok_or(ApiError::NotFound(previous))?;
        return Ok(CreateCommandResponse { command: Some(load_command_proto(&txn, m).await?) });
    }
    check_targets(&txn, &p, &c.target_systems).await?;
    if command::Entity::find_by_id(name.clone()).count(&txn).await? > 0 {
        return Err(ApiError::AlreadyExists(format!("{name} already exists")));
    }
    let model = command::Model {
        name: name.clone(),
        organization: p.organization.clone(),
        display_name: c.display_name,
        description: c.description,
        script: c.script,
        interpreter: c.interpreter,
        run_as_user: c.run_as_user,
        timeout_secs,
        timeout_nanos,
        revision: 1,
        etag: rules::etag(&name, 1, &names::new_id()),
        create_time: now,
        update_time: now,
    };
    command::Entity::insert(model.clone().into_active_model())
        .exec_without_returning(&txn)
        .await
        .map_err(|e| {
        if is_unique_violation(&e) {
            ApiError::AlreadyExists(format!("{name} already exists"))
        } else {
            e.into()
        }
    })?;
    replace_targets(&txn, &name, &c.target_systems).await?;
    IDEMPOTENCY.record(&txn, key.as_ref(), &name, now).await?;
    audit::record(&txn, &p.organization, &ctx, &p.administrator, &name, Ok(()), now).await?;
    txn.commit().await?;
    tracing::info!(command = %name, actor = %p.administrator, "command created");
    Ok(CreateCommandResponse { command: Some(command_proto(model, c.target_systems)) })
}

pub(crate) async fn get(
    state: &State,
    call: AdministratorCall,
    req: GetCommandRequest,
) -> ApiResult<GetCommandResponse> {
    let p = &caller::for_reading(state, &call.principal, Permission::CommandsRead).await?;
    let m = visible_command(state, p, &req.name).await?;
    Ok(GetCommandResponse { command: Some(load_command_proto(&state.db, m).await?) })
}

pub(crate) async fn list(
    state: &State,
    call: AdministratorCall,
    req: ListCommandsRequest,
) -> ApiResult<ListCommandsResponse> {
    let p = &caller::for_reading(state, &call.principal, Permission::CommandsRead).await?;
    let req = &req;
    OrganizationName::parse("parent", &req.parent)?;
    p.check_organization(&req.parent)?;
    let size = names::page_size(req.page_size)?;
    let terms = rules::parse_filter(&req.filter, &["display_name"], &["display_name"])?;
    let (order, desc) = rules::parse_command_order(&req.order_by)?;
    let digest = format!("{}|{}|{}", req.filter.trim(), req.order_by.trim(), p.administrator);
    let offset = names::decode_page_token(&req.page_token, &digest)?;
    let mut query =
        command::Entity::find().filter(command::Column::Organization.eq(&p.organization));
    for term in &terms {
        query = query.filter(command::Column::DisplayName.eq(term.value.clone()));
    }
    if !everywhere(p, Permission::CommandsRead) {
        query = query.filter(
            command::Column::Name.in_subquery(
                Query::select()
                    .column(grant::Column::Command)
                    .from(grant::Entity)
                    .and_where(grant::Column::Grantee.eq(&p.administrator))
                    .to_owned(),
            ),
        );
    }
    let column = match order {
        "create_time" => command::Column::CreateTime,
        "update_time" => command::Column::UpdateTime,
        _ => command::Column::DisplayName,
    };
    query = if desc {
        query.order_by_desc(column).order_by_desc(command::Column::Name)
    } else {
        query.order_by_asc(column).order_by_asc(command::Column::Name)
    };
    let rows = query.offset(offset).limit(size + 1).all(&state.db).await?;
    let (rows, next_page_token) = names::page(rows, size, offset, &digest);
    let names: Vec<String> = rows.iter().map(|m| m.name.clone()).collect();
    let mut targets = targets_of(&state.db, &names).await?;
    let commands = rows
        .into_iter()
        .map(|m| {
            let list = targets.remove(&m.name).unwrap_or_default();
            command_proto(m, list)
        })
        .collect();
    Ok(ListCommandsResponse { commands, next_page_token })
}

pub(crate) async fn update(
    state: &State,
    call: AdministratorCall,
    req: UpdateCommandRequest,
) -> ApiResult<UpdateCommandResponse> {
    let c = req.command.ok_or_else(|| ApiError::invalid("command", "is required"))?;
    CommandName::parse("command.name", &c.name)?;
    let (p, ctx) =
        caller::for_mutation(state, call, &c.name, Need::Permission(Permission::CommandsUpdate))
            .await?;
    let mut present = Vec::new();
    for (path, set) in [
        ("display_name", !c.display_name.is_empty()),
        ("description", !c.description.is_empty()),
        ("script", !c.script.is_empty()),
        ("interpreter", c.interpreter != 0),
        ("run_as_user", !c.run_as_user.is_empty()),
        ("timeout", c.timeout.is_some()),
        ("target_systems", !c.target_systems.is_empty()),
    ] {
        if set {
            present.push(path);
        }
    }
    let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
    let paths = rules::update_paths(&mask, rules::COMMAND_MASK_PATHS, &present)?;
    let db = &state.db;
    let txn = begin_write(db).await?;
    let current = find_command(&txn, &p.organization, &c.name)
        .await?
        .ok_or_else(|| ApiError::NotFound(c.name.clone()))?;
    if !c.etag.is_empty() && c.etag != current.etag {
        return Err(ApiError::Aborted(format!(
            "{} has changed since it was read (stale etag)",
            c.name
        )));
    }
    if paths.is_empty() {
        return Ok(UpdateCommandResponse {
            command: Some(load_command_proto(&txn, current).await?),
        });
    }
    let mut next = current.clone();
    let mut new_targets = None;
    for path in &paths {
        match path.as_str() {
            "display_name" => {
                rules::display_name("command.display_name", &c.display_name)?;
                next.display_name = c.display_name.clone();
            }
            "description" => {
                rules::description("command.description", &c.description)?;
                next.description = c.description.clone();
            }
            "script" => {
                rules::script("command.script", &c.script)?;
                next.script = c.script.clone();
            }
            "interpreter" => {
                rules::interpreter("command.interpreter", c.interpreter)?;
                next.interpreter = c.interpreter;
            }
            "run_as_user" => {
                rules::run_as_user("command.run_as_user", &c.run_as_user)?;
                next.run_as_user = c.run_as_user.clone();
            }
            "timeout" => {
                let (secs, nanos) = rules::timeout("command.timeout", c.timeout.as_ref())?;
                next.timeout_secs = secs;
                next.timeout_nanos = nanos;
            }
            "target_systems" => {
                check_targets(&txn, &p, &c.target_systems).await?;
                new_targets = Some(c.target_systems.clone());
            }
            _ => {}
        }
    }
    let now = state.now();
    next.revision = current.revision + 1;
    next.etag = rules::etag(&next.name, next.revision, &names::new_id());
    next.update_time = now;
    let updated = command::Entity::update_many()
        .col_expr(command::Column::DisplayName, Expr::value(next.display_name.clone()))
        .col_expr(command::Column::Description, Expr::value(next.description.clone()))
        .col_expr(command::Column::Script, Expr::value(next.script.clone()))
        .col_expr(command::Column::Interpreter, Expr::value(next.interpreter))
        .col_expr(command::Column::RunAsUser, Expr::value(next.run_as_user.clone()))
        .col_expr(command::Column::TimeoutSecs, Expr::value(next.timeout_secs))
        .col_expr(command::Column::TimeoutNanos, Expr::value(next.timeout_nanos))
        .col_expr(command::Column::Revision, Expr::value(next.revision))
        .col_expr(command::Column::Etag, Expr::value(next.etag.clone()))
        .col_expr(command::Column::UpdateTime, Expr::value(now))
        .filter(command::Column::Name.eq(&current.name))
        .filter(command::Column::Etag.eq(&current.etag))
        .exec(&txn)
        .await?;
    if updated.rows_affected != 1 {
        return Err(ApiError::Aborted(format!("{} was changed concurrently, retry", c.name)));
    }
    if let Some(targets) = &new_targets {
        replace_targets(&txn, &next.name, targets).await?;
    }
    audit::record(&txn, &p.organization, &ctx, &p.administrator, &next.name, Ok(()), now).await?;
    let command = load_command_proto(&txn, next).await?;
    txn.commit().await?;
    tracing::info!(command = %command.name, fields = ?paths, "command updated");
    Ok(UpdateCommandResponse { command: Some(command) })
}

pub(crate) async fn delete(
    state: &State,
    call: AdministratorCall,
    req: DeleteCommandRequest,
) -> ApiResult<DeleteCommandResponse> {
    CommandName::parse("name", &req.name)?;
    let (p, ctx) =
        caller::for_mutation(state, call, &req.name, Need::Permission(Permission::CommandsDelete))
            .await?;
    let txn = begin_write(&state.db).await?;
    let current = find_command(&txn, &p.organization, &req.name)
        .await?
        .ok_or_else(|| ApiError::NotFound(req.name.clone()))?;
    if !req.etag.is_empty() && req.etag != current.etag {
        return Err(ApiError::Aborted(format!(
            "{} has changed since it was read (stale etag)",
            req.name
        )));
    }
    let deleted = command::Entity::delete_many()
        .filter(command::Column::Name.eq(&current.name))
        .filter(command::Column::Etag.eq(&current.etag))
        .exec(&txn)
        .await?;
    if deleted.rows_affected != 1 {
        return Err(ApiError::Aborted(format!("{} was changed concurrently, retry", req.name)));
    }
    grant::Entity::delete_many().filter(grant::Column::Command.eq(&req.name)).exec(&txn).await?;
    target::Entity::delete_many().filter(target::Column::Command.eq(&req.name)).exec(&txn).await?;
    let now = state.now();
    audit::record(&txn, &p.organization, &ctx, &p.administrator, &req.name, Ok(()), now).await?;
    txn.commit().await?;
    tracing::info!(command = %req.name, "command deleted");
    Ok(DeleteCommandResponse {})
}
