//! `CommandService`: commands, grants, access checks and runs.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DerivePartialModel, EntityTrait, FromQueryResult,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use steward_proto::commands::v1::command_service_server::CommandService;
use steward_proto::commands::v1::{
    batch_check_access_result, watch_run_response, Action, BatchCheckAccessRequest,
    BatchCheckAccessResponse, BatchCheckAccessResult, CancelRunRequest, CancelRunResponse,
    CheckAccessRequest, CheckAccessResponse, Command, CreateCommandRequest, CreateCommandResponse,
    CreateGrantRequest, CreateGrantResponse, Decision, DecisionReason, DeleteCommandRequest,
    DeleteCommandResponse, DeleteGrantRequest, DeleteGrantResponse, ErrorStatus, GetCommandRequest,
    GetCommandResponse, GetRunRequest, GetRunResponse, Grant, ListCommandsRequest,
    ListCommandsResponse, ListGrantsRequest, ListGrantsResponse, ListRunsRequest, ListRunsResponse,
    OutputChunk, OutputStream, Run, RunCommandRequest, RunCommandResponse, RunState, SystemResult,
    UpdateCommandRequest, UpdateCommandResponse, WatchRunRequest, WatchRunResponse,
};
use steward_runtime::authn::{self, Need, Principal, RequestContext};
use steward_runtime::claims::Role;
use steward_runtime::names;
use steward_runtime::{ApiError, ApiResult};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::entity::{command, grant, idempotency, output, result, run, system, target};
use crate::rules::{self, timestamp};
use crate::{audit, begin_write, caller, is_unique_violation, organization_of, State};

/// How often WatchRun looks for changes made on other replicas.
const WATCH_POLL: Duration = Duration::from_millis(200);
/// Largest BatchCheckAccess.
const MAX_BATCH: usize = 100;
/// Most target systems of a command, and most systems named by one RunCommand. Bounds the work
/// (and the rows written) of one request.
pub(crate) const MAX_SYSTEMS: usize = 1000;

/// The CommandService implementation.
#[derive(Clone)]
pub struct Commands {
    state: State,
}

impl Commands {
    pub(crate) fn new(state: State) -> Self {
        Self { state }
    }
}

fn is_admin(p: &Principal) -> bool {
    p.role == Role::Administrator
}

pub(crate) fn parse_org(field: &str, name: &str) -> ApiResult<()> {
    names::parse(field, name, &["organizations"]).map(|_| ())
}

pub(crate) fn parse_command(field: &str, name: &str) -> ApiResult<()> {
    names::parse(field, name, &["organizations", "commands"]).map(|_| ())
}

pub(crate) fn parse_system(field: &str, name: &str) -> ApiResult<()> {
    names::parse(field, name, &["organizations", "systems"]).map(|_| ())
}

fn parse_admin(field: &str, name: &str) -> ApiResult<()> {
    names::parse(field, name, &["organizations", "administrators"]).map(|_| ())
}

fn parse_run(field: &str, name: &str) -> ApiResult<()> {
    names::parse(field, name, &["organizations", "runs"]).map(|_| ())
}

/// The idempotency key of a request, or `None` when it carries no `request_id`.
fn idempotency_key(kind: &str, caller: &str, request_id: &str) -> Option<String> {
    (!request_id.is_empty()).then(|| format!("{kind}|{caller}|{request_id}"))
}

pub(crate) async fn remembered<C: ConnectionTrait>(
    conn: &C,
    key: &Option<String>,
) -> ApiResult<Option<String>> {
    let Some(key) = key else { return Ok(None) };
    Ok(idempotency::Entity::find_by_id(key.clone()).one(conn).await?.map(|m| m.resource))
}

pub(crate) async fn remember<C: ConnectionTrait>(
    conn: &C,
    key: &Option<String>,
    organization: &str,
    resource: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> ApiResult<()> {
    if let Some(key) = key {
        idempotency::Entity::insert(
            idempotency::Model {
                key: key.clone(),
                organization: organization.to_string(),
                resource: resource.to_string(),
                create_time: now,
            }
            .into_active_model(),
        )
        .exec_without_returning(conn)
        .await?;
    }
    Ok(())
}

/// Target systems of commands, in order, keyed by command name.
async fn targets_of<C: ConnectionTrait>(
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

fn command_proto(m: command::Model, targets: Vec<String>) -> Command {
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
async fn targets_of_command<C: ConnectionTrait>(conn: &C, command: &str) -> ApiResult<Vec<String>> {
    let command = command.to_string();
    let mut map = targets_of(conn, std::slice::from_ref(&command)).await?;
    Ok(map.remove(&command).unwrap_or_default())
}

async fn load_command_proto<C: ConnectionTrait>(conn: &C, m: command::Model) -> ApiResult<Command> {
    let targets = targets_of_command(conn, &m.name).await?;
    Ok(command_proto(m, targets))
}

fn grant_proto(m: grant::Model) -> Grant {
    Grant {
        name: m.name,
        grantee: m.grantee,
        grantor: m.grantor,
        create_time: Some(timestamp(m.create_time)),
    }
}

async fn find_command<C: ConnectionTrait>(
    conn: &C,
    organization: &str,
    name: &str,
) -> ApiResult<Option<command::Model>> {
    Ok(command::Entity::find_by_id(name.to_string())
        .filter(command::Column::Organization.eq(organization))
        .one(conn)
        .await?)
}

async fn find_grant<C: ConnectionTrait>(
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

/// Checks target system names: well-formed, of `organization`, distinct, and existing.
async fn check_targets<C: ConnectionTrait>(
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
        parse_system(&field, name)?;
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

async fn replace_targets<C: ConnectionTrait>(
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

/// A per-system result without its output.
#[derive(Clone, Debug, DerivePartialModel, FromQueryResult)]
#[sea_orm(entity = "result::Entity")]
pub(crate) struct ResultSummary {
    pub run: String,
    pub system: String,
    pub state: i32,
    pub exit_code: i32,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub start_time: Option<chrono::DateTime<chrono::Utc>>,
    pub end_time: Option<chrono::DateTime<chrono::Utc>>,
    pub error_message: String,
}

fn summary_proto(s: ResultSummary) -> SystemResult {
    SystemResult {
        system: s.system,
        state: s.state,
        exit_code: s.exit_code,
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_truncated: s.stdout_truncated,
        stderr_truncated: s.stderr_truncated,
        start_time: s.start_time.map(timestamp),
        end_time: s.end_time.map(timestamp),
        error_message: s.error_message,
    }
}

fn full_result_proto(m: result::Model) -> SystemResult {
    SystemResult {
        system: m.system,
        state: m.state,
        exit_code: m.exit_code,
        stdout: m.stdout,
        stderr: m.stderr,
        stdout_truncated: m.stdout_truncated,
        stderr_truncated: m.stderr_truncated,
        start_time: m.start_time.map(timestamp),
        end_time: m.end_time.map(timestamp),
        error_message: m.error_message,
    }
}

fn run_shell(m: run::Model, results: Vec<SystemResult>) -> Run {
    Run {
        name: m.name,
        command: m.command,
        command_revision: m.command_revision,
        runner: m.runner,
        systems: results.iter().map(|r| r.system.clone()).collect(),
        state: m.state,
        results,
        create_time: Some(timestamp(m.create_time)),
        start_time: m.start_time.map(timestamp),
        end_time: m.end_time.map(timestamp),
    }
}

/// A run as returned by the API, with or without its output.
pub(crate) async fn run_proto<C: ConnectionTrait>(
    conn: &C,
    m: run::Model,
    with_output: bool,
) -> ApiResult<Run> {
    let query = result::Entity::find()
        .filter(result::Column::Run.eq(&m.name))
        .order_by_asc(result::Column::Position);
    let results = if with_output {
        let mut results: Vec<SystemResult> =
            query.all(conn).await?.into_iter().map(full_result_proto).collect();
        // Output rows after any output stored by earlier versions, in offset order.
        let chunks = output::Entity::find()
            .filter(output::Column::Run.eq(&m.name))
            .order_by_asc(output::Column::System)
            .order_by_asc(output::Column::Stream)
            .order_by_asc(output::Column::Offset)
            .all(conn)
            .await?;
        let position: HashMap<String, usize> =
            results.iter().enumerate().map(|(i, r)| (r.system.clone(), i)).collect();
        for chunk in chunks {
            let Some(result) = position.get(&chunk.system).and_then(|i| results.get_mut(*i)) else {
                continue;
            };
            let buffer = match OutputStream::try_from(chunk.stream) {
                Ok(OutputStream::Stdout) => &mut result.stdout,
                Ok(OutputStream::Stderr) => &mut result.stderr,
                _ => continue,
            };
            let (fresh, _) = rules::fresh_output(
                buffer.len(),
                chunk.offset,
                &chunk.data,
                rules::MAX_OUTPUT_BYTES,
            );
            buffer.extend_from_slice(fresh);
        }
        results
    } else {
        query
            .into_partial_model::<ResultSummary>()
            .all(conn)
            .await?
            .into_iter()
            .map(summary_proto)
            .collect()
    };
    Ok(run_shell(m, results))
}

/// Recomputes a run's aggregate state, start and end from its results.
pub(crate) async fn refresh_run<C: ConnectionTrait>(
    conn: &C,
    run_name: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> ApiResult<()> {
    let Some(current) = run::Entity::find_by_id(run_name.to_string()).one(conn).await? else {
        return Ok(());
    };
    let results = result::Entity::find()
        .filter(result::Column::Run.eq(run_name))
        .into_partial_model::<ResultSummary>()
        .all(conn)
        .await?;
    let states: Vec<i32> = results.iter().map(|r| r.state).collect();
    let state = rules::aggregate(&states, current.cancelled) as i32;
    let start_time =
        current.start_time.or_else(|| results.iter().filter_map(|r| r.start_time).min());
    let end_time = if rules::is_terminal(state) {
        current.end_time.or_else(|| {
            if current.cancelled {
                Some(now)
            } else {
                results.iter().filter_map(|r| r.end_time).max().or(Some(now))
            }
        })
    } else {
        None
    };
    if state != current.state || start_time != current.start_time || end_time != current.end_time {
        run::Entity::update_many()
            .col_expr(run::Column::State, Expr::value(state))
            .col_expr(run::Column::StartTime, Expr::value(start_time))
            .col_expr(run::Column::EndTime, Expr::value(end_time))
            .filter(run::Column::Name.eq(run_name))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// A decision.
fn decision(allowed: bool, reason: DecisionReason, message: impl Into<String>) -> Decision {
    Decision {
        allowed,
        reason: reason as i32,
        message: message.into(),
        grant: String::new(),
        grantor: String::new(),
    }
}

impl Commands {
    async fn lookup_role(&self, administrator: &str) -> ApiResult<Option<Role>> {
        Ok(caller::lookup(&self.state, administrator).await?.map(|c| c.role))
    }

    /// Loads a command the caller may see: Administrators see every command of their
    /// organization, Command Runners only granted ones (PERMISSION_DENIED otherwise, whether or
    /// not it exists).
    async fn visible_command(&self, p: &Principal, name: &str) -> ApiResult<command::Model> {
        parse_command("name", name)?;
        p.check_organization(name)?;
        let db = &self.state.db;
        if !is_admin(p) && find_grant(db, name, &p.administrator).await?.is_none() {
            return Err(ApiError::denied(
                "NO_GRANT",
                format!("{name} has not been granted to you"),
            ));
        }
        find_command(db, &p.organization, name)
            .await?
            .ok_or_else(|| ApiError::NotFound(name.to_string()))
    }

    /// Loads a run the caller may see: Administrators see every run of their organization,
    /// Command Runners only their own (PERMISSION_DENIED otherwise, whether or not it exists).
    async fn visible_run(&self, p: &Principal, name: &str) -> ApiResult<run::Model> {
        parse_run("name", name)?;
        p.check_organization(name)?;
        let found = run::Entity::find_by_id(name.to_string())
            .filter(run::Column::Organization.eq(&p.organization))
            .one(&self.state.db)
            .await?;
        match found {
            Some(run) if is_admin(p) || run.runner == p.administrator => Ok(run),
            None if is_admin(p) => Err(ApiError::NotFound(name.to_string())),
            _ => Err(ApiError::denied("NOT_OWN_RUN", format!("{name} is not one of your runs"))),
        }
    }

    async fn create_command_impl(
        &self,
        request: Request<CreateCommandRequest>,
    ) -> ApiResult<CreateCommandResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let req = request.into_inner();
        parse_org("parent", &req.parent)?;
        p.check_organization(&req.parent)?;
        let p = caller::current_audited(&self.state, &ctx, &p, &req.parent, Need::Administrator)
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
        let key = idempotency_key("create_command", &p.administrator, &req.request_id);
        let db = &self.state.db;
        if let Some(previous) = remembered(db, &key).await? {
            let m = find_command(db, &p.organization, &previous)
                .await?
                .ok_or(ApiError::NotFound(previous))?;
            return Ok(CreateCommandResponse { command: Some(load_command_proto(db, m).await?) });
        }
        let name = format!("{}/commands/{id}", p.organization);
        let now = self.state.now();
        let txn = begin_write(db).await?;
        if let Some(previous) = remembered(&txn, &key).await? {
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
        remember(&txn, &key, &p.organization, &name, now).await?;
        audit::record(&txn, &p.organization, &ctx, &p.administrator, &name, Ok(()), now).await?;
        txn.commit().await?;
        tracing::info!(command = %name, actor = %p.administrator, "command created");
        Ok(CreateCommandResponse { command: Some(command_proto(model, c.target_systems)) })
    }

    async fn get_command_impl(
        &self,
        request: Request<GetCommandRequest>,
    ) -> ApiResult<GetCommandResponse> {
        let p = &caller::for_reading(&self.state, authn::principal(&request)?).await?;
        let m = self.visible_command(p, &request.get_ref().name).await?;
        Ok(GetCommandResponse { command: Some(load_command_proto(&self.state.db, m).await?) })
    }

    async fn list_commands_impl(
        &self,
        request: Request<ListCommandsRequest>,
    ) -> ApiResult<ListCommandsResponse> {
        let p = &caller::for_reading(&self.state, authn::principal(&request)?).await?;
        let req = request.get_ref();
        parse_org("parent", &req.parent)?;
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
        if !is_admin(p) {
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
        let rows = query.offset(offset).limit(size + 1).all(&self.state.db).await?;
        let (rows, next_page_token) = names::page(rows, size, offset, &digest);
        let names: Vec<String> = rows.iter().map(|m| m.name.clone()).collect();
        let mut targets = targets_of(&self.state.db, &names).await?;
        let commands = rows
            .into_iter()
            .map(|m| {
                let list = targets.remove(&m.name).unwrap_or_default();
                command_proto(m, list)
            })
            .collect();
        Ok(ListCommandsResponse { commands, next_page_token })
    }

    async fn update_command_impl(
        &self,
        request: Request<UpdateCommandRequest>,
    ) -> ApiResult<UpdateCommandResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let req = request.into_inner();
        let c = req.command.ok_or_else(|| ApiError::invalid("command", "is required"))?;
        parse_command("command.name", &c.name)?;
        p.check_organization(&c.name)?;
        let p =
            caller::current_audited(&self.state, &ctx, &p, &c.name, Need::Administrator).await?;
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
        let db = &self.state.db;
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
        let now = self.state.now();
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
        audit::record(&txn, &p.organization, &ctx, &p.administrator, &next.name, Ok(()), now)
            .await?;
        let command = load_command_proto(&txn, next).await?;
        txn.commit().await?;
        tracing::info!(command = %command.name, fields = ?paths, "command updated");
        Ok(UpdateCommandResponse { command: Some(command) })
    }

    async fn delete_command_impl(
        &self,
        request: Request<DeleteCommandRequest>,
    ) -> ApiResult<DeleteCommandResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let req = request.into_inner();
        parse_command("name", &req.name)?;
        p.check_organization(&req.name)?;
        let p =
            caller::current_audited(&self.state, &ctx, &p, &req.name, Need::Administrator).await?;
        let txn = begin_write(&self.state.db).await?;
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
        grant::Entity::delete_many()
            .filter(grant::Column::Command.eq(&req.name))
            .exec(&txn)
            .await?;
        target::Entity::delete_many()
            .filter(target::Column::Command.eq(&req.name))
            .exec(&txn)
            .await?;
        let now = self.state.now();
        audit::record(&txn, &p.organization, &ctx, &p.administrator, &req.name, Ok(()), now)
            .await?;
        txn.commit().await?;
        tracing::info!(command = %req.name, "command deleted");
        Ok(DeleteCommandResponse {})
    }

    async fn create_grant_impl(
        &self,
        request: Request<CreateGrantRequest>,
    ) -> ApiResult<CreateGrantResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let req = request.into_inner();
        parse_command("parent", &req.parent)?;
        p.check_organization(&req.parent)?;
        let p = caller::current_audited(&self.state, &ctx, &p, &req.parent, Need::Administrator)
            .await?;
        let g = req.grant.ok_or_else(|| ApiError::invalid("grant", "is required"))?;
        parse_admin("grant.grantee", &g.grantee)?;
        rules::request_id(&req.request_id)?;
        if organization_of(&g.grantee) != p.organization {
            return Err(ApiError::NotFound(g.grantee));
        }
        let key = idempotency_key("create_grant", &p.administrator, &req.request_id);
        let db = &self.state.db;
        if let Some(previous) = remembered(db, &key).await? {
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
        match self.lookup_role(&g.grantee).await? {
            None => return Err(ApiError::NotFound(g.grantee)),
            Some(Role::Administrator) => {
                return Err(ApiError::precondition(
                    "GRANTEE_IS_ADMINISTRATOR",
                    g.grantee,
                    "Administrators may run every command; grants are for Command Runners",
                ))
            }
            Some(Role::CommandRunner) => {}
        }
        let now = self.state.now();
        let txn = begin_write(db).await?;
        if find_command(&txn, &p.organization, &req.parent).await?.is_none() {
            return Err(ApiError::NotFound(req.parent));
        }
        let exists = |name: &str| {
            ApiError::AlreadyExists(format!("{name} is already granted to {}", g.grantee))
        };
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
        remember(&txn, &key, &p.organization, &model.name, now).await?;
        audit::record(&txn, &p.organization, &ctx, &p.administrator, &model.name, Ok(()), now)
            .await?;
        txn.commit().await?;
        tracing::info!(grant = %model.name, grantee = %model.grantee, "grant created");
        Ok(CreateGrantResponse { grant: Some(grant_proto(model)) })
    }

    async fn delete_grant_impl(
        &self,
        request: Request<DeleteGrantRequest>,
    ) -> ApiResult<DeleteGrantResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let name = request.into_inner().name;
        names::parse("name", &name, &["organizations", "commands", "grants"])?;
        p.check_organization(&name)?;
        let p = caller::current_audited(&self.state, &ctx, &p, &name, Need::Administrator).await?;
        let txn = begin_write(&self.state.db).await?;
        let deleted = grant::Entity::delete_many()
            .filter(grant::Column::Name.eq(&name))
            .filter(grant::Column::Organization.eq(&p.organization))
            .exec(&txn)
            .await?;
        if deleted.rows_affected == 0 {
            return Err(ApiError::NotFound(name));
        }
        let now = self.state.now();
        audit::record(&txn, &p.organization, &ctx, &p.administrator, &name, Ok(()), now).await?;
        txn.commit().await?;
        tracing::info!(grant = %name, "grant revoked");
        Ok(DeleteGrantResponse {})
    }

    async fn list_grants_impl(
        &self,
        request: Request<ListGrantsRequest>,
    ) -> ApiResult<ListGrantsResponse> {
        let p =
            &caller::current(&self.state, authn::principal(&request)?, Need::Administrator).await?;
        let req = request.get_ref();
        let command = match req.parent.strip_suffix("/commands/-") {
            Some(org) => {
                parse_org("parent", org)?;
                None
            }
            None => {
                parse_command("parent", &req.parent)?;
                Some(req.parent.clone())
            }
        };
        p.check_organization(&req.parent)?;
        let size = names::page_size(req.page_size)?;
        let terms = rules::parse_filter(&req.filter, &["grantee"], &["grantee"])?;
        let digest = format!("{}|{}", req.parent, req.filter.trim());
        let offset = names::decode_page_token(&req.page_token, &digest)?;
        let mut query =
            grant::Entity::find().filter(grant::Column::Organization.eq(&p.organization));
        if let Some(command) = command {
            query = query.filter(grant::Column::Command.eq(command));
        }
        for term in terms {
            parse_admin("filter", &term.value)?;
            query = query.filter(grant::Column::Grantee.eq(term.value));
        }
        let rows = query
            .order_by_asc(grant::Column::CreateTime)
            .order_by_asc(grant::Column::Name)
            .offset(offset)
            .limit(size + 1)
            .all(&self.state.db)
            .await?;
        let (rows, next_page_token) = names::page(rows, size, offset, &digest);
        Ok(ListGrantsResponse {
            grants: rows.into_iter().map(grant_proto).collect(),
            next_page_token,
        })
    }

    /// One access check, in the order of the `DecisionReason` documentation. `roles` caches
    /// principal lookups within one batch.
    async fn check(
        &self,
        caller: &Principal,
        req: &CheckAccessRequest,
        roles: &mut HashMap<String, Option<Role>>,
    ) -> ApiResult<Decision> {
        let action = match Action::try_from(req.action) {
            Ok(Action::Read) => Action::Read,
            Ok(Action::Run) => Action::Run,
            _ => return Err(ApiError::invalid("action", "must be ACTION_READ or ACTION_RUN")),
        };
        parse_command("command", &req.command)?;
        let principal = if req.principal.is_empty() {
            caller.administrator.clone()
        } else {
            parse_admin("principal", &req.principal)?;
            req.principal.clone()
        };
        if !is_admin(caller) && principal != caller.administrator {
            return Err(ApiError::denied(
                "NOT_SELF",
                "Command Runners may only check their own access",
            ));
        }
        caller.check_organization(&principal)?;
        let system = if req.system.is_empty() {
            None
        } else {
            parse_system("system", &req.system)?;
            Some(req.system.as_str())
        };
        let organization = organization_of(&principal);
        if organization_of(&req.command) != organization {
            return Ok(decision(
                false,
                DecisionReason::WrongOrganization,
                format!("{} belongs to another organization than {principal}", req.command),
            ));
        }
        if let Some(system) = system.filter(|s| organization_of(s) != organization) {
            return Ok(decision(
                false,
                DecisionReason::WrongOrganization,
                format!("{system} belongs to another organization than {principal}"),
            ));
        }
        let role = if principal == caller.administrator {
            Some(caller.role)
        } else if let Some(role) = roles.get(&principal) {
            *role
        } else {
            let role = self.lookup_role(&principal).await?;
            roles.insert(principal.clone(), role);
            role
        };
        let Some(role) = role else {
            return Ok(decision(
                false,
                DecisionReason::PrincipalNotFound,
                format!("{principal} does not exist or has been deleted"),
            ));
        };
        let db = &self.state.db;
        // A Command Runner asking about itself learns nothing about commands it holds no grant
        // on: not whether they exist, nor their targets. NO_GRANT, whatever the command.
        let own_grant = if is_admin(caller) {
            None
        } else {
            match find_grant(db, &req.command, &principal).await? {
                Some(grant) => Some(grant),
                None => {
                    return Ok(decision(
                        false,
                        DecisionReason::NoGrant,
                        format!("{principal} holds no grant on {}", req.command),
                    ))
                }
            }
        };
        if find_command(db, &organization, &req.command).await?.is_none() {
            return Ok(decision(
                false,
                DecisionReason::CommandNotFound,
                format!("{} does not exist", req.command),
            ));
        }
        if action == Action::Run {
            let targets = targets_of_command(db, &req.command).await?;
            if targets.is_empty() {
                return Ok(decision(
                    false,
                    DecisionReason::NoTargetSystems,
                    format!("{} has no target systems, so it cannot run anywhere", req.command),
                ));
            }
            if let Some(system) = system.filter(|s| !targets.iter().any(|t| t == s)) {
                return Ok(decision(
                    false,
                    DecisionReason::SystemNotTarget,
                    format!("{system} is not one of the target systems of {}", req.command),
                ));
            }
        }
        if role == Role::Administrator {
            return Ok(decision(
                true,
                DecisionReason::RoleAdministrator,
                format!("{principal} is an Administrator, who may do anything in the organization"),
            ));
        }
        let grant = match own_grant {
            Some(grant) => Some(grant),
            None => find_grant(db, &req.command, &principal).await?,
        };
        match grant {
            Some(g) => Ok(Decision {
                allowed: true,
                reason: DecisionReason::Grant as i32,
                message: format!("granted by {}", g.grantor),
                grant: g.name,
                grantor: g.grantor,
            }),
            None => Ok(decision(
                false,
                DecisionReason::NoGrant,
                format!("{principal} is a Command Runner without a grant on {}", req.command),
            )),
        }
    }

    async fn check_access_impl(
        &self,
        request: Request<CheckAccessRequest>,
    ) -> ApiResult<CheckAccessResponse> {
        let p = &caller::for_reading(&self.state, authn::principal(&request)?).await?;
        let decision = self.check(p, request.get_ref(), &mut HashMap::new()).await?;
        Ok(CheckAccessResponse { decision: Some(decision) })
    }

    async fn batch_check_access_impl(
        &self,
        request: Request<BatchCheckAccessRequest>,
    ) -> ApiResult<BatchCheckAccessResponse> {
        let p = &caller::for_reading(&self.state, authn::principal(&request)?).await?;
        let req = request.get_ref();
        parse_org("parent", &req.parent)?;
        p.check_organization(&req.parent)?;
        if req.requests.is_empty() || req.requests.len() > MAX_BATCH {
            return Err(ApiError::invalid("requests", "must hold 1 to 100 checks"));
        }
        let mut roles = HashMap::new();
        let mut results = Vec::with_capacity(req.requests.len());
        for item in &req.requests {
            let result = match self.check(p, item, &mut roles).await {
                Ok(decision) => batch_check_access_result::Result::Decision(decision),
                Err(err @ (ApiError::Internal(_) | ApiError::Unavailable(_))) => return Err(err),
                Err(err) => batch_check_access_result::Result::Error(ErrorStatus {
                    code: err.code() as i32,
                    message: err.to_string(),
                }),
            };
            results.push(BatchCheckAccessResult { result: Some(result) });
        }
        Ok(BatchCheckAccessResponse { results })
    }

    async fn run_command_impl(
        &self,
        request: Request<RunCommandRequest>,
    ) -> ApiResult<RunCommandResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let req = request.into_inner();
        let result = self.run_inner(&p, &ctx, &req).await;
        if let Err(err) = &result {
            let now = self.state.now();
            if let Err(audit_err) = audit::record(
                &self.state.db,
                &p.organization,
                &ctx,
                &p.administrator,
                &req.command,
                Err(err),
                now,
            )
            .await
            {
                tracing::error!(error = %audit_err, command = %req.command, "cannot queue the audit event of a refused run");
            }
            tracing::info!(command = %req.command, runner = %p.administrator, code = ?err.code(), "run refused");
        }
        result
    }

    async fn run_inner(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        req: &RunCommandRequest,
    ) -> ApiResult<RunCommandResponse> {
        parse_command("command", &req.command)?;
        p.check_organization(&req.command)?;
        // Held to the caller's current role: a demoted Administrator needs a grant now.
        let current = caller::current(&self.state, p, Need::AnyRole).await?;
        let p = &current;
        if req.systems.len() > MAX_SYSTEMS {
            return Err(ApiError::invalid(
                "systems",
                format!("must name at most {MAX_SYSTEMS} systems"),
            ));
        }
        let mut requested: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(req.systems.len());
        for (i, system) in req.systems.iter().enumerate() {
            parse_system(&format!("systems[{i}]"), system)?;
            p.check_organization(system)?;
            if seen.insert(system.as_str()) {
                requested.push(system.clone());
            }
        }
        rules::request_id(&req.request_id)?;
        let key = idempotency_key("run_command", &p.administrator, &req.request_id);
        let db = &self.state.db;
        if let Some(previous) = remembered(db, &key).await? {
            let run = self.visible_run(p, &previous).await?;
            return Ok(RunCommandResponse { run: Some(run_proto(db, run, false).await?) });
        }
        let now = self.state.now();
        let txn = begin_write(db).await?;
        let no_grant =
            || ApiError::denied("NO_GRANT", format!("{} has not been granted to you", req.command));
        if !is_admin(p) {
            let grant = grant::Entity::find()
                .filter(grant::Column::Command.eq(&req.command))
                .filter(grant::Column::Grantee.eq(&p.administrator))
                .lock_shared()
                .one(&txn)
                .await?;
            if grant.is_none() {
                return Err(no_grant());
            }
        }
        let command =
            find_command(&txn, &p.organization, &req.command).await?.ok_or_else(|| {
                if is_admin(p) {
                    ApiError::NotFound(req.command.clone())
                } else {
                    no_grant()
                }
            })?;
        let targets = targets_of_command(&txn, &command.name).await?;
        if targets.is_empty() {
            return Err(ApiError::precondition(
                "NO_TARGET_SYSTEMS",
                command.name,
                "the command has no target systems, so it cannot run anywhere",
            ));
        }
        let allowed: std::collections::HashSet<&String> = targets.iter().collect();
        if let Some(outside) = requested.iter().find(|s| !allowed.contains(s)) {
            return Err(ApiError::denied(
                "SYSTEM_NOT_TARGET",
                format!("{outside} is not one of the target systems of {}", command.name),
            ));
        }
        let systems = if requested.is_empty() { targets } else { requested };
        let run = run::Model {
            name: format!("{}/runs/{}", p.organization, names::new_id()),
            organization: p.organization.clone(),
            command: command.name.clone(),
            command_revision: command.etag.clone(),
            script: command.script.clone(),
            interpreter: command.interpreter,
            run_as_user: command.run_as_user.clone(),
            timeout_secs: command.timeout_secs,
            timeout_nanos: command.timeout_nanos,
            runner: p.administrator.clone(),
            state: RunState::Queued as i32,
            cancelled: false,
            create_time: now,
            start_time: None,
            end_time: None,
        };
        run::Entity::insert(run.clone().into_active_model()).exec_without_returning(&txn).await?;
        for (position, system) in systems.iter().enumerate() {
            result::Entity::insert(
                result::Model {
                    run: run.name.clone(),
                    system: system.clone(),
                    position: i32::try_from(position).unwrap_or(i32::MAX),
                    state: RunState::Queued as i32,
                    exit_code: 0,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    stdout_truncated: false,
                    stderr_truncated: false,
                    start_time: None,
                    end_time: None,
                    error_message: String::new(),
                    claimed_by: None,
                    cancel_time: None,
                    cancel_sent: false,
                }
                .into_active_model(),
            )
            .exec_without_returning(&txn)
            .await?;
        }
        remember(&txn, &key, &p.organization, &run.name, now).await?;
        audit::record(&txn, &p.organization, ctx, &p.administrator, &command.name, Ok(()), now)
            .await?;
        let proto = run_proto(&txn, run, false).await?;
        txn.commit().await?;
        self.state.changed.notify_waiters();
        tracing::info!(run = %proto.name, command = %proto.command, runner = %p.administrator, systems = proto.systems.len(), "run queued");
        Ok(RunCommandResponse { run: Some(proto) })
    }

    async fn get_run_impl(&self, request: Request<GetRunRequest>) -> ApiResult<GetRunResponse> {
        let p = &caller::for_reading(&self.state, authn::principal(&request)?).await?;
        let run = self.visible_run(p, &request.get_ref().name).await?;
        Ok(GetRunResponse { run: Some(run_proto(&self.state.db, run, true).await?) })
    }

    async fn list_runs_impl(
        &self,
        request: Request<ListRunsRequest>,
    ) -> ApiResult<ListRunsResponse> {
        let p = &caller::for_reading(&self.state, authn::principal(&request)?).await?;
        let req = request.get_ref();
        parse_org("parent", &req.parent)?;
        p.check_organization(&req.parent)?;
        let size = names::page_size(req.page_size)?;
        let terms = rules::parse_filter(
            &req.filter,
            &["command", "runner", "state"],
            &["command", "runner"],
        )?;
        let digest = format!("{}|{}", req.filter.trim(), p.administrator);
        let offset = names::decode_page_token(&req.page_token, &digest)?;
        let mut query = run::Entity::find().filter(run::Column::Organization.eq(&p.organization));
        if !is_admin(p) {
            query = query.filter(run::Column::Runner.eq(&p.administrator));
        }
        for term in terms {
            query = match term.key.as_str() {
                "command" => {
                    parse_command("filter", &term.value)?;
                    query.filter(run::Column::Command.eq(term.value))
                }
                "runner" => {
                    parse_admin("filter", &term.value)?;
                    if !is_admin(p) && term.value != p.administrator {
                        return Err(ApiError::denied(
                            "NOT_OWN_RUN",
                            "Command Runners may only list their own runs",
                        ));
                    }
                    query.filter(run::Column::Runner.eq(term.value))
                }
                _ => {
                    let state = RunState::from_str_name(&term.value)
                        .filter(|s| *s != RunState::Unspecified)
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "filter",
                                format!("unknown run state `{}`", term.value),
                            )
                        })?;
                    query.filter(run::Column::State.eq(state as i32))
                }
            };
        }
        let rows = query
            .order_by_desc(run::Column::CreateTime)
            .order_by_desc(run::Column::Name)
            .offset(offset)
            .limit(size + 1)
            .all(&self.state.db)
            .await?;
        let (rows, next_page_token) = names::page(rows, size, offset, &digest);
        // The results of the whole page in one query, not one per run.
        let mut results: HashMap<String, Vec<SystemResult>> = HashMap::new();
        if !rows.is_empty() {
            let summaries = result::Entity::find()
                .filter(result::Column::Run.is_in(rows.iter().map(|r| r.name.clone())))
                .order_by_asc(result::Column::Position)
                .into_partial_model::<ResultSummary>()
                .all(&self.state.db)
                .await?;
            for summary in summaries {
                results.entry(summary.run.clone()).or_default().push(summary_proto(summary));
            }
        }
        let runs = rows
            .into_iter()
            .map(|m| {
                let list = results.remove(&m.name).unwrap_or_default();
                run_shell(m, list)
            })
            .collect();
        Ok(ListRunsResponse { runs, next_page_token })
    }

    async fn cancel_run_impl(
        &self,
        request: Request<CancelRunRequest>,
    ) -> ApiResult<CancelRunResponse> {
        let p = authn::principal(&request)?.clone();
        let ctx = authn::context(&request);
        let name = request.into_inner().name;
        parse_run("name", &name)?;
        p.check_organization(&name)?;
        let p = caller::current_audited(&self.state, &ctx, &p, &name, Need::AnyRole).await?;
        self.visible_run(&p, &name).await?;
        let now = self.state.now();
        let txn = begin_write(&self.state.db).await?;
        let current = run::Entity::find_by_id(name.clone())
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::NotFound(name.clone()))?;
        if rules::is_terminal(current.state) {
            return Err(ApiError::precondition(
                "RUN_FINISHED",
                name,
                "the run has already finished",
            ));
        }
        run::Entity::update_many()
            .col_expr(run::Column::Cancelled, Expr::value(true))
            .filter(run::Column::Name.eq(&name))
            .exec(&txn)
            .await?;
        // Never dispatched: nothing to stop.
        result::Entity::update_many()
            .col_expr(result::Column::State, Expr::value(RunState::Cancelled as i32))
            .col_expr(result::Column::EndTime, Expr::value(Some(now)))
            .col_expr(result::Column::ErrorMessage, Expr::value("cancelled before it started"))
            .filter(result::Column::Run.eq(&name))
            .filter(result::Column::State.eq(RunState::Queued as i32))
            .filter(result::Column::ClaimedBy.is_null())
            .exec(&txn)
            .await?;
        // Dispatched or executing: the agent's stream relays the cancellation.
        result::Entity::update_many()
            .col_expr(result::Column::CancelTime, Expr::value(Some(now)))
            .filter(result::Column::Run.eq(&name))
            .filter(
                result::Column::State.is_in([RunState::Queued as i32, RunState::Running as i32]),
            )
            .filter(result::Column::CancelTime.is_null())
            .exec(&txn)
            .await?;
        refresh_run(&txn, &name, now).await?;
        audit::record(&txn, &p.organization, &ctx, &p.administrator, &name, Ok(()), now).await?;
        let run = run::Entity::find_by_id(name.clone())
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::NotFound(name.clone()))?;
        let proto = run_proto(&txn, run, false).await?;
        txn.commit().await?;
        self.state.changed.notify_waiters();
        tracing::info!(run = %name, actor = %p.administrator, "run cancelled");
        Ok(CancelRunResponse { run: Some(proto) })
    }

    #[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
    async fn watch_run_impl(&self, request: Request<WatchRunRequest>) -> ApiResult<WatchStream> {
        let token_principal = authn::principal(&request)?.clone();
        let p = &caller::for_reading(&self.state, &token_principal).await?;
        let name = request.get_ref().name.clone();
        self.visible_run(p, &name).await?;
        let slot = self.state.watchers.admit(&p.administrator, &name, &self.state.streams)?;
        let (tx, rx) = mpsc::channel(32);
        let state = self.state.clone();
        let this = self.clone();
        let recheck = Duration::from_secs(self.state.streams.watch_recheck_secs.max(1));
        tokio::spawn(async move {
            // Held for the stream's life: the watcher counts go back when it ends.
            let _slot = slot;
            let mut watch = Watch { name, sent: HashMap::new(), last: None };
            let mut first = true;
            let mut last_check = tokio::time::Instant::now();
            loop {
                // Access can end while the stream is open (account deleted, deactivated or
                // demoted from Administrator for someone else's run): re-check it, as the caller
                // is now, and end the stream when it is gone.
                if last_check.elapsed() >= recheck {
                    last_check = tokio::time::Instant::now();
                    let allowed = match caller::for_reading(&state, &token_principal).await {
                        Ok(current) => this.visible_run(&current, &watch.name).await.map(|_| ()),
                        Err(err) => Err(err),
                    };
                    if let Err(err) = allowed {
                        tracing::info!(run = %watch.name, code = ?err.code(), "watcher no longer allowed");
                        let _ = tx.send(Err(err.into())).await;
                        break;
                    }
                }
                match watch.step(&state, first, &tx).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(err) => {
                        let _ = tx.send(Err(err.into())).await;
                        break;
                    }
                }
                first = false;
                tokio::select! {
                    () = tx.closed() => break,
                    () = state.changed.notified() => {}
                    () = tokio::time::sleep(WATCH_POLL) => {}
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// The WatchRun stream.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchRunResponse, Status>> + Send>>;

/// What one WatchRun stream has sent so far.
struct Watch {
    name: String,
    /// Bytes sent per (system, stream).
    sent: HashMap<(String, i32), usize>,
    last: Option<Run>,
}

impl Watch {
    /// Sends what changed; `Ok(true)` once the run has finished (or the watcher left).
    ///
    /// Output is read as deltas: one aggregate query tells which streams grew, and only their
    /// new rows are read (output stored by earlier versions in the result row is sent once, on
    /// the first step).
    async fn step(
        &mut self,
        state: &State,
        first: bool,
        tx: &mpsc::Sender<Result<WatchRunResponse, Status>>,
    ) -> ApiResult<bool> {
        let db = &state.db;
        let Some(run) = run::Entity::find_by_id(self.name.clone()).one(db).await? else {
            return Err(ApiError::NotFound(self.name.clone()));
        };
        let terminal = rules::is_terminal(run.state);
        let snapshot = run_proto(db, run, false).await?;
        let send =
            |event| async { tx.send(Ok(WatchRunResponse { event: Some(event) })).await.is_err() };
        if first && send(watch_run_response::Event::Run(snapshot.clone())).await {
            return Ok(true);
        }
        let mut pieces: Vec<(String, i32, i64, Vec<u8>)> = Vec::new();
        if first {
            let legacy = result::Entity::find()
                .filter(result::Column::Run.eq(&self.name))
                .order_by_asc(result::Column::Position)
                .all(db)
                .await?;
            for r in legacy {
                for (stream, data) in
                    [(OutputStream::Stdout, r.stdout), (OutputStream::Stderr, r.stderr)]
                {
                    if !data.is_empty() {
                        pieces.push((r.system.clone(), stream as i32, 0, data));
                    }
                }
            }
        }
        let lengths: Vec<(String, i32, Option<i64>)> = output::Entity::find()
            .select_only()
            .column(output::Column::System)
            .column(output::Column::Stream)
            .column_as(output::Column::EndOffset.max(), "end")
            .filter(output::Column::Run.eq(&self.name))
            .group_by(output::Column::System)
            .group_by(output::Column::Stream)
            .into_tuple()
            .all(db)
            .await?;
        for (system, stream, end) in lengths {
            let sent = self.sent.get(&(system.clone(), stream)).copied().unwrap_or(0);
            let sent = i64::try_from(sent).unwrap_or(i64::MAX);
            if end.unwrap_or(0) <= sent {
                continue;
            }
            let rows = output::Entity::find()
                .filter(output::Column::Run.eq(&self.name))
                .filter(output::Column::System.eq(&system))
                .filter(output::Column::Stream.eq(stream))
                .filter(output::Column::EndOffset.gt(sent))
                .order_by_asc(output::Column::Offset)
                .all(db)
                .await?;
            pieces
                .extend(rows.into_iter().map(|row| (system.clone(), stream, row.offset, row.data)));
        }
        for (system, stream, offset, data) in pieces {
            let sent = self.sent.entry((system.clone(), stream)).or_insert(0);
            let (fresh, _) = rules::fresh_output(*sent, offset, &data, rules::MAX_OUTPUT_BYTES);
            if fresh.is_empty() {
                continue;
            }
            let chunk = OutputChunk {
                run: self.name.clone(),
                system,
                stream,
                data: fresh.to_vec(),
                offset: i64::try_from(*sent).unwrap_or(i64::MAX),
            };
            *sent += fresh.len();
            if send(watch_run_response::Event::Output(chunk)).await {
                return Ok(true);
            }
        }
        let changed = self.last.as_ref() != Some(&snapshot);
        if ((!first && changed) || (first && terminal))
            && send(watch_run_response::Event::Run(snapshot.clone())).await
        {
            return Ok(true);
        }
        self.last = Some(snapshot);
        Ok(terminal)
    }
}

#[tonic::async_trait]
impl CommandService for Commands {
    async fn create_command(
        &self,
        r: Request<CreateCommandRequest>,
    ) -> Result<Response<CreateCommandResponse>, Status> {
        self.create_command_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn get_command(
        &self,
        r: Request<GetCommandRequest>,
    ) -> Result<Response<GetCommandResponse>, Status> {
        self.get_command_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn list_commands(
        &self,
        r: Request<ListCommandsRequest>,
    ) -> Result<Response<ListCommandsResponse>, Status> {
        self.list_commands_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn update_command(
        &self,
        r: Request<UpdateCommandRequest>,
    ) -> Result<Response<UpdateCommandResponse>, Status> {
        self.update_command_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn delete_command(
        &self,
        r: Request<DeleteCommandRequest>,
    ) -> Result<Response<DeleteCommandResponse>, Status> {
        self.delete_command_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn create_grant(
        &self,
        r: Request<CreateGrantRequest>,
    ) -> Result<Response<CreateGrantResponse>, Status> {
        self.create_grant_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn delete_grant(
        &self,
        r: Request<DeleteGrantRequest>,
    ) -> Result<Response<DeleteGrantResponse>, Status> {
        self.delete_grant_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn list_grants(
        &self,
        r: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        self.list_grants_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn check_access(
        &self,
        r: Request<CheckAccessRequest>,
    ) -> Result<Response<CheckAccessResponse>, Status> {
        self.check_access_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn batch_check_access(
        &self,
        r: Request<BatchCheckAccessRequest>,
    ) -> Result<Response<BatchCheckAccessResponse>, Status> {
        self.batch_check_access_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn run_command(
        &self,
        r: Request<RunCommandRequest>,
    ) -> Result<Response<RunCommandResponse>, Status> {
        self.run_command_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn get_run(&self, r: Request<GetRunRequest>) -> Result<Response<GetRunResponse>, Status> {
        self.get_run_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn list_runs(
        &self,
        r: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        self.list_runs_impl(r).await.map(Response::new).map_err(Status::from)
    }

    async fn cancel_run(
        &self,
        r: Request<CancelRunRequest>,
    ) -> Result<Response<CancelRunResponse>, Status> {
        self.cancel_run_impl(r).await.map(Response::new).map_err(Status::from)
    }

    type WatchRunStream = WatchStream;

    async fn watch_run(
        &self,
        r: Request<WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        self.watch_run_impl(r).await.map(Response::new).map_err(Status::from)
    }
}
