//! `CommandService`: commands, grants, access checks and runs.
//!
//! This module holds what the parts share (name parsing, idempotency records, proto
//! conversions, the caller's visibility rules) and the tonic trait impl, a thin adapter per RPC;
//! the handlers live next to their resource: `definitions` (command CRUD and targets), `grants`,
//! `access` (CheckAccess, BatchCheckAccess), `runs` (RunCommand, GetRun, ListRuns, CancelRun) and
//! `watch` (WatchRun).

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
use steward_runtime::names::{self, AdministratorName, CommandName, SystemName};
use steward_runtime::{ApiError, ApiResult};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::entity::{command, grant, output, result, run, system, target};
use crate::rules::{self, timestamp};
use crate::{audit, begin_write, caller, is_unique_violation, State, IDEMPOTENCY};
use steward_storage::idempotency::Key;

mod access;
mod definitions;
mod grants;
mod runs;
mod watch;

pub use watch::WatchStream;

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
