//! Grants: who may run which command.

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect,
};
use steward_proto::commands::v1::{
    CreateGrantRequest, CreateGrantResponse, DeleteGrantRequest, DeleteGrantResponse,
    GetGrantRequest, GetGrantResponse, Grant, ListGrantsRequest, ListGrantsResponse,
    RemoveAdministratorGrantsRequest, RemoveAdministratorGrantsResponse,
};
use steward_runtime::authn::{AdministratorCall, Need};
use steward_runtime::claims::Role;
use steward_runtime::names::{self, AdministratorName, CommandName, GrantName, OrganizationName};
use steward_runtime::roles::{self, Permission, Scope};
use steward_runtime::{ApiError, ApiResult};
use steward_storage::idempotency::Key;

use crate::caller::{lookup_role, Reuse};
use crate::command::find_command;
use crate::entity::grant;
use crate::rules::{self, timestamp};
use crate::{audit, begin_write, caller, is_unique_violation, State, IDEMPOTENCY};

pub(crate) fn grant_proto(m: grant::Model) -> Grant {
    Grant {
        name: m.name,
        grantee: m.grantee,
        grantor: m.grantor,
        create_time: Some(timestamp(m.create_time)),
    }
}

pub(crate) async fn find_grant<C: ConnectionTrait>(
    conn: &C,
    command: &str,
    grantee: &str,
) -> ApiResult<Option<grant::Model>> {
    Ok(grant::Entity::find()
        .filter(grant::Column::Command.eq(command))
        .filter(grant::Column::Grantee.eq(grantee))
        .one(conn)
        .await?)
}

pub(crate) async fn create(
    state: &State,
    call: AdministratorCall,
    req: CreateGrantRequest,
) -> ApiResult<CreateGrantResponse> {
    CommandName::parse("parent", &req.parent)?;
    let (p, ctx) =
        caller::for_mutation(state, call, &req.parent, Need::Permission(Permission::GrantsCreate))
            .await?;
    // A grant hands out running a command: only a caller that may run every command gives it.
    if !p.permissions.everywhere(Permission::CommandsRun) {
        return Err(ApiError::denied(
            "ROLE_ESCALATION",
            "granting a command needs commands.run over the whole organization, which your role \
             does not hold",
        ));
    }
    let g = req.grant.ok_or_else(|| ApiError::invalid("grant", "is required"))?;
    let grantee = AdministratorName::parse("grant.grantee", &g.grantee)?;
    rules::request_id(&req.request_id)?;
    if grantee.organization().as_str() != p.organization {
        return Err(ApiError::NotFound(g.grantee));
    }
    let key = Key::new("create_grant", &p.administrator, &req.request_id);
    let db = &state.db;
    if let Some(previous) = IDEMPOTENCY.recall(db, key.as_ref()).await? {
        let m = grant::Entity::find_by_id(previous.clone())
            .filter(grant::Column::Organization.eq(&p.organization))
            .one(db)
            .await?
            .ok_or(ApiError::NotFound(previous))?;
        return Ok(CreateGrantResponse { grant: Some(grant_proto(m)) });
    }
    if find_command(db, &p.organization, &req.parent).await?.is_none() {
        return Err(ApiError::NotFound(req.parent));
    }
    // A grant is for a role that runs only granted commands (Command Runner, Help Desk).
    let mut checked = std::time::Instant::now();
    check_grantee(state, &g.grantee).await?;
    let now = state.now();
    let txn = begin_write(db).await?;
    if find_command(&txn, &p.organization, &req.parent).await?.is_none() {
        return Err(ApiError::NotFound(req.parent));
    }
    let exists =
        |name: &str| ApiError::AlreadyExists(format!("{name} is already granted to {}", g.grantee));
    if find_grant(&txn, &req.parent, &g.grantee).await?.is_some() {
        return Err(exists(&req.parent));
    }
    let model = grant::Model {
        name: format!("{}/grants/{}", req.parent, names::new_id()),
        organization: p.organization.clone(),
        command: req.parent.clone(),
        grantee: g.grantee.clone(),
        grantor: p.administrator.clone(),
        create_time: now,
    };
    grant::Entity::insert(model.clone().into_active_model())
        .exec_without_returning(&txn)
        .await
        .map_err(|e| if is_unique_violation(&e) { exists(&req.parent) } else { e.into() })?;
    IDEMPOTENCY.record(&txn, key.as_ref(), &model.name, now).await?;
    audit::record(&txn, &p.organization, &ctx, &p.administrator, &model.name, Ok(()), now).await?;
    // A demotion or deletion of the grantee removes its grants once it has waited out the
    // caller lease after its commit. A check read before that commit is only known to
    // precede the removal while the lease lasts: past it, the grant might land after the
    // removal and outlive the role it was checked against, so the grantee is checked again
    // (and a second slow check refuses the call). With leases off nothing waits, and nothing
    // is bounded here.
    let lease = state.callers.lease();
    if !lease.is_zero() && checked.elapsed() >= lease {
        checked = std::time::Instant::now();
        check_grantee(state, &g.grantee).await?;
        if checked.elapsed() >= lease {
            return Err(ApiError::Unavailable(
                "the grantee's role could not be checked in time to record the grant; retry".into(),
            ));
        }
    }
    txn.commit().await?;
    tracing::info!(grant = %model.name, grantee = %model.grantee, "grant created");
    Ok(CreateGrantResponse { grant: Some(grant_proto(model)) })
}

/// Refuses a grantee that is not a role running only granted commands (Command Runner, Help
/// Desk, or such a custom role), asked of the admin service on the call.
async fn check_grantee(state: &State, grantee: &str) -> ApiResult<()> {
    match lookup_role(state, grantee, Reuse::Fresh).await? {
        None => return Err(ApiError::NotFound(grantee.to_string())),
        Some((Role::Administrator, _)) => {
            return Err(ApiError::precondition(
                "GRANTEE_IS_ADMINISTRATOR",
                grantee.to_string(),
                "Administrators may run every command; grants are for Command Runners",
            ))
        }
        Some((role, held)) => match held.scope(Permission::CommandsRun) {
            Some(Scope::Own) => {}
            Some(Scope::Organization) => {
                return Err(ApiError::precondition(
                    "GRANTEE_RUNS_EVERY_COMMAND",
                    grantee.to_string(),
                    format!(
                        "the grantee's role {} runs every command; grants are for roles that run \
                         only granted commands",
                        roles::built_in_name(role)
                    ),
                ))
            }
            None => {
                return Err(ApiError::precondition(
                    "GRANTEE_CANNOT_RUN",
                    grantee.to_string(),
                    format!(
                        "the grantee's role {} does not hold commands.run",
                        roles::built_in_name(role)
                    ),
                ))
            }
        },
    }
    Ok(())
}

pub(crate) async fn delete(
    state: &State,
    call: AdministratorCall,
    req: DeleteGrantRequest,
) -> ApiResult<DeleteGrantResponse> {
    let name = req.name;
    GrantName::parse("name", &name)?;
    let (p, ctx) =
        caller::for_mutation(state, call, &name, Need::Permission(Permission::GrantsDelete))
            .await?;
    let txn = begin_write(&state.db).await?;
    let deleted = grant::Entity::delete_many()
        .filter(grant::Column::Name.eq(&name))
        .filter(grant::Column::Organization.eq(&p.organization))
        .exec(&txn)
        .await?;
    if deleted.rows_affected == 0 {
        return Err(ApiError::NotFound(name));
    }
    let now = state.now();
    audit::record(&txn, &p.organization, &ctx, &p.administrator, &name, Ok(()), now).await?;
    txn.commit().await?;
    tracing::info!(grant = %name, "grant revoked");
    Ok(DeleteGrantResponse {})
}

/// One grant of the caller's organization (GetGrant).
pub(crate) async fn get(
    state: &State,
    call: AdministratorCall,
    req: GetGrantRequest,
) -> ApiResult<GetGrantResponse> {
    let name = GrantName::parse("name", &req.name)?;
    call.principal.check_organization(name.as_str())?;
    let p = caller::for_reading(state, &call.principal, Permission::GrantsRead).await?;
    let found = grant::Entity::find_by_id(name.to_string())
        .filter(grant::Column::Organization.eq(&p.organization))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
    Ok(GetGrantResponse { grant: Some(grant_proto(found)) })
}

pub(crate) async fn list(
    state: &State,
    call: AdministratorCall,
    req: ListGrantsRequest,
) -> ApiResult<ListGrantsResponse> {
    let p = &caller::for_reading(state, &call.principal, Permission::GrantsRead).await?;
    let req = &req;
    let command = match req.parent.strip_suffix("/commands/-") {
        Some(org) => {
            OrganizationName::parse("parent", org)?;
            None
        }
        None => {
            CommandName::parse("parent", &req.parent)?;
            Some(req.parent.clone())
        }
    };
    p.check_organization(&req.parent)?;
    let size = names::page_size(req.page_size)?;
    let terms = rules::parse_filter(&req.filter, &["grantee"], &["grantee"])?;
    let digest = format!("{}|{}", req.parent, req.filter.trim());
    let offset = names::decode_page_token(&req.page_token, &digest)?;
    let mut query = grant::Entity::find().filter(grant::Column::Organization.eq(&p.organization));
    if let Some(command) = command {
        query = query.filter(grant::Column::Command.eq(command));
    }
    for term in terms {
        AdministratorName::parse("filter", &term.value)?;
        query = query.filter(grant::Column::Grantee.eq(term.value));
    }
    let rows = query
        .order_by_asc(grant::Column::CreateTime)
        .order_by_asc(grant::Column::Name)
        .offset(offset)
        .limit(size + 1)
        .all(&state.db)
        .await?;
    let (rows, next_page_token) = names::page(rows, size, offset, &digest);
    Ok(ListGrantsResponse { grants: rows.into_iter().map(grant_proto).collect(), next_page_token })
}

/// Removes every grant held by an administrator who was deleted or demoted (an outbox delivery
/// from the admin service, so possibly a retry: the count of the first call is answered again).
pub(crate) async fn remove_administrator_grants(
    state: &State,
    req: RemoveAdministratorGrantsRequest,
) -> ApiResult<RemoveAdministratorGrantsResponse> {
    let administrator = AdministratorName::parse("administrator", &req.administrator)?;
    if req.idempotency_key.is_empty() || req.idempotency_key.len() > 200 {
        return Err(ApiError::invalid("idempotency_key", "is required (at most 200 characters)"));
    }
    let organization = administrator.organization().to_string();
    let key = Key::new("remove_grants", &req.administrator, &req.idempotency_key);
    let txn = begin_write(&state.db).await?;
    if let Some(previous) = IDEMPOTENCY.recall(&txn, key.as_ref()).await? {
        let removed_count = previous.parse().unwrap_or(0);
        return Ok(RemoveAdministratorGrantsResponse { removed_count });
    }
    let removed = grant::Entity::delete_many()
        .filter(grant::Column::Organization.eq(&organization))
        .filter(grant::Column::Grantee.eq(&req.administrator))
        .exec(&txn)
        .await?;
    let removed_count = i32::try_from(removed.rows_affected).unwrap_or(i32::MAX);
    IDEMPOTENCY.record(&txn, key.as_ref(), &removed_count.to_string(), state.now()).await?;
    txn.commit().await?;
    tracing::info!(administrator = %req.administrator, removed_count, "grants of an administrator removed");
    Ok(RemoveAdministratorGrantsResponse { removed_count })
}
