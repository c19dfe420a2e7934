//! Runs: RunCommand, GetRun, ListRuns, CancelRun.

use std::collections::{BTreeMap, HashMap};

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DerivePartialModel, EntityTrait, FromQueryResult,
    IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};
use steward_proto::commands::v1::{
    CancelRunRequest, CancelRunResponse, GetRunRequest, GetRunResponse, ListRunsRequest,
    ListRunsResponse, OutputStream, Run, RunCommandRequest, RunCommandResponse, RunState,
    SystemResult,
};
use steward_runtime::authn::{AdministratorCall, Need, Principal, RequestContext};
use steward_runtime::names::{
    self, AdministratorName, CommandName, OrganizationName, RunName, SystemName,
};
use steward_runtime::{ApiError, ApiResult};
use steward_storage::idempotency::Key;

use crate::caller::everywhere;
use crate::command::{find_command, targets_of_command, MAX_SYSTEMS};
use crate::entity::{grant, output, result, run};
use crate::rules::{self, timestamp};

/// Result rows inserted per statement.
const RESULT_BATCH: usize = 500;
use crate::{audit, begin_write, caller, State, IDEMPOTENCY};
use steward_runtime::roles::Permission;

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

pub(crate) fn summary_proto(s: ResultSummary) -> SystemResult {
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
        output_omitted: false,
    }
}

pub(crate) fn run_shell(m: run::Model, results: Vec<SystemResult>) -> Run {
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

/// Which systems' output a run carries.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Output<'a> {
    /// None (ListRuns, WatchRun snapshots, write answers).
    None,
    /// Systems in the run's order while the total stays within [`OUTPUT_BUDGET`] (GetRun).
    Budget,
    /// This system's only (GetRun's `output_system`).
    Of(&'a str),
}

/// The most per-system results one ListRuns page carries: a page of 100 runs on 1,000 systems
/// each would be 100,000 results, loaded at once and too big to send.
pub(crate) const LIST_RESULTS: usize = 5000;

/// The most output one GetRun answer carries: one system's whole output (both streams at their
/// bound) always fits.
pub(crate) const OUTPUT_BUDGET: usize = 2 * rules::MAX_OUTPUT_BYTES;

/// Length of each `(system, stream)` of output.
pub(crate) type Lengths = BTreeMap<(String, i32), usize>;

fn length(n: Option<i64>) -> usize {
    n.and_then(|n| usize::try_from(n).ok()).unwrap_or(0)
}

/// Output an earlier version kept in a run's result rows (of `system` only, if given), by
/// length; streams without any are left out. Those columns are no longer written, so this does
/// not change once read.
pub(crate) async fn legacy_lengths<C: ConnectionTrait>(
    conn: &C,
    run_name: &str,
    system: Option<&str>,
) -> ApiResult<Lengths> {
    let rows: Vec<(String, Option<i64>, Option<i64>)> = result::Entity::find()
        .select_only()
        .column(result::Column::System)
        .column_as(Expr::cust("CAST(length(stdout) AS BIGINT)"), "stdout_length")
        .column_as(Expr::cust("CAST(length(stderr) AS BIGINT)"), "stderr_length")
        .filter(result::Column::Run.eq(run_name))
        .apply_if(system, |q, s| q.filter(result::Column::System.eq(s)))
        .into_tuple()
        .all(conn)
        .await?;
    let mut lengths = Lengths::new();
    for (system, stdout, stderr) in rows {
        for (stream, n) in [(OutputStream::Stdout, stdout), (OutputStream::Stderr, stderr)] {
            if length(n) > 0 {
                lengths.insert((system.clone(), stream as i32), length(n));
            }
        }
    }
    Ok(lengths)
}

/// Captured length of each `(system, stream)` of a run (of `system` only, if given): its
/// `legacy` output, then the append-only rows after it, up to the bound. Read from lengths alone
/// (no output bytes).
pub(crate) async fn output_lengths<C: ConnectionTrait>(
    conn: &C,
    run_name: &str,
    system: Option<&str>,
    legacy: &Lengths,
) -> ApiResult<Lengths> {
    let stored: Vec<(String, i32, Option<i64>)> = output::Entity::find()
        .select_only()
        .column(output::Column::System)
        .column(output::Column::Stream)
        .column_as(output::Column::EndOffset.max(), "end")
        .filter(output::Column::Run.eq(run_name))
        .apply_if(system, |q, s| q.filter(output::Column::System.eq(s)))
        .group_by(output::Column::System)
        .group_by(output::Column::Stream)
        .into_tuple()
        .all(conn)
        .await?;
    let mut lengths = legacy.clone();
    for (system, stream, end) in stored {
        let entry = lengths.entry((system, stream)).or_insert(0);
        *entry = (*entry).max(length(end)).min(rules::MAX_OUTPUT_BYTES);
    }
    Ok(lengths)
}

/// A run as returned by the API, with the output `output` asks for.
///
/// The work is bounded by what is returned: lengths are read first, and only the output of the
/// systems chosen is loaded (at most [`OUTPUT_BUDGET`] bytes), never a whole run's.
pub(crate) async fn run_proto<C: ConnectionTrait>(
    conn: &C,
    m: run::Model,
    output: Output<'_>,
) -> ApiResult<Run> {
    let mut results: Vec<SystemResult> = result::Entity::find()
        .filter(result::Column::Run.eq(&m.name))
        .order_by_asc(result::Column::Position)
        .into_partial_model::<ResultSummary>()
        .all(conn)
        .await?
        .into_iter()
        .map(summary_proto)
        .collect();
    let only = match output {
        Output::None => return Ok(run_shell(m, results)),
        Output::Of(system) if !results.iter().any(|r| r.system == system) => {
            return Err(ApiError::invalid("output_system", "is not one of the run's systems"));
        }
        Output::Of(system) => Some(system),
        Output::Budget => None,
    };
    let legacy = legacy_lengths(conn, &m.name, only).await?;
    let lengths = output_lengths(conn, &m.name, only, &legacy).await?;
    let length = |system: &str, stream: i32| -> usize {
        lengths.get(&(system.to_string(), stream)).copied().unwrap_or(0)
    };
    let size = |system: &str| -> usize {
        length(system, OutputStream::Stdout as i32) + length(system, OutputStream::Stderr as i32)
    };
    // The systems whose output is carried: the one asked for, or those in the run's order until
    // one does not fit (after it, only systems without output, which cost nothing).
    let mut chosen: HashMap<String, usize> = HashMap::new();
    let mut total = 0usize;
    let mut full = false;
    for (i, result) in results.iter_mut().enumerate() {
        let n = size(&result.system);
        let carried = match output {
            Output::Of(system) => result.system == system,
            _ if n == 0 => true,
            _ => {
                full = full || total + n > OUTPUT_BUDGET;
                !full
            }
        };
        if !carried {
            result.output_omitted = true;
        } else if n > 0 {
            total += n;
            chosen.insert(result.system.clone(), i);
        }
    }
    if chosen.is_empty() {
        return Ok(run_shell(m, results));
    }
    let systems: Vec<String> = chosen.keys().cloned().collect();
    // Output an earlier version kept in the result row comes first.
    let legacy: Vec<(String, Vec<u8>, Vec<u8>)> = if legacy.is_empty() {
        Vec::new()
    } else {
        result::Entity::find()
            .select_only()
            .columns([result::Column::System, result::Column::Stdout, result::Column::Stderr])
            .filter(result::Column::Run.eq(&m.name))
            .filter(result::Column::System.is_in(systems.iter().map(String::as_str)))
            .into_tuple()
            .all(conn)
            .await?
    };
    for (system, stdout, stderr) in legacy {
        if let Some(result) = chosen.get(&system).and_then(|i| results.get_mut(*i)) {
            result.stdout = stdout;
            result.stderr = stderr;
        }
    }
    // Then the append-only rows, in offset order.
    let chunks = output::Entity::find()
        .filter(output::Column::Run.eq(&m.name))
        .filter(output::Column::System.is_in(systems.iter().map(String::as_str)))
        .order_by_asc(output::Column::System)
        .order_by_asc(output::Column::Stream)
        .order_by_asc(output::Column::Offset)
        .all(conn)
        .await?;
    for chunk in chunks {
        let Some(result) = chosen.get(&chunk.system).and_then(|i| results.get_mut(*i)) else {
            continue;
        };
        let buffer = match OutputStream::try_from(chunk.stream) {
            Ok(OutputStream::Stdout) => &mut result.stdout,
            Ok(OutputStream::Stderr) => &mut result.stderr,
            _ => continue,
        };
        // Up to the length measured above: output written since is not carried (its system
        // was chosen by that length).
        let measured = length(&chunk.system, chunk.stream);
        let (fresh, _) = rules::fresh_output(buffer.len(), chunk.offset, &chunk.data, measured);
        buffer.extend_from_slice(fresh);
    }
    Ok(run_shell(m, results))
}

/// Reads a run under its row lock (PostgreSQL; a SQLite write transaction already excludes every
/// other writer). Transactions that change one run's results take it first, so they aggregate
/// one after another: without it, systems reporting at the same instant each saw the others
/// still running, and the run stayed RUNNING with every result ended.
pub(crate) async fn lock_run<C: ConnectionTrait>(
    conn: &C,
    run_name: &str,
) -> ApiResult<Option<run::Model>> {
    Ok(run::Entity::find_by_id(run_name.to_string()).lock_exclusive().one(conn).await?)
}

/// Recomputes a run's aggregate state, start and end from its results (under the run's lock).
pub(crate) async fn refresh_run<C: ConnectionTrait>(
    conn: &C,
    run_name: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> ApiResult<()> {
    let Some(current) = lock_run(conn, run_name).await? else {
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

/// Loads a run the caller may act on with `permission` (`runs.read` or `runs.cancel`): any run
/// of its organization when it holds the permission organization-wide, else only its own
/// (PERMISSION_DENIED otherwise, whether or not it exists).
pub(crate) async fn visible_run(
    state: &State,
    p: &Principal,
    name: &str,
    permission: Permission,
) -> ApiResult<run::Model> {
    RunName::parse("name", name)?;
    p.check_organization(name)?;
    let found = run::Entity::find_by_id(name.to_string())
        .filter(run::Column::Organization.eq(&p.organization))
        .one(&state.db)
        .await?;
    match found {
        Some(run) if everywhere(p, permission) || run.runner == p.administrator => Ok(run),
        None if everywhere(p, permission) => Err(ApiError::NotFound(name.to_string())),
        _ => Err(ApiError::denied("NOT_OWN_RUN", format!("{name} is not one of your runs"))),
    }
}

pub(crate) async fn start(
    state: &State,
    call: AdministratorCall,
    req: RunCommandRequest,
) -> ApiResult<RunCommandResponse> {
    let AdministratorCall { principal: p, context: ctx } = call;
    let result = run_inner(state, &p, &ctx, &req).await;
    if let Err(err) = &result {
        let now = state.now();
        if let Err(audit_err) = audit::record(
            &state.db,
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

pub(crate) async fn run_inner(
    state: &State,
    p: &Principal,
    ctx: &RequestContext,
    req: &RunCommandRequest,
) -> ApiResult<RunCommandResponse> {
    CommandName::parse("command", &req.command)?;
    p.check_organization(&req.command)?;
    // Held to the caller's current role: a demoted Administrator needs a grant now.
    let current = caller::current(state, p, Need::Permission(Permission::CommandsRun)).await?;
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
        SystemName::parse(&format!("systems[{i}]"), system)?;
        p.check_organization(system)?;
        if seen.insert(system.as_str()) {
            requested.push(system.clone());
        }
    }
    rules::request_id(&req.request_id)?;
    let key = Key::new("run_command", &p.administrator, &req.request_id);
    let db = &state.db;
    if let Some(previous) = IDEMPOTENCY.recall(db, key.as_ref()).await? {
        let run = visible_run(state, p, &previous, Permission::CommandsRun).await?;
        return Ok(RunCommandResponse { run: Some(run_proto(db, run, Output::None).await?) });
    }
    let now = state.now();
    let txn = begin_write(db).await?;
    let no_grant =
        || ApiError::denied("NO_GRANT", format!("{} has not been granted to you", req.command));
    if !everywhere(p, Permission::CommandsRun) {
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
    let command = find_command(&txn, &p.organization, &req.command).await?.ok_or_else(|| {
        if everywhere(p, Permission::CommandsRun) {
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
    let results: Vec<result::ActiveModel> = systems
        .iter()
        .enumerate()
        .map(|(position, system)| {
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
            .into_active_model()
        })
        .collect();
    // Several rows per statement (within SQLite's and PostgreSQL's bind-parameter limits).
    for batch in results.chunks(RESULT_BATCH) {
        result::Entity::insert_many(batch.to_vec()).exec_without_returning(&txn).await?;
    }
    IDEMPOTENCY.record(&txn, key.as_ref(), &run.name, now).await?;
    audit::record(&txn, &p.organization, ctx, &p.administrator, &command.name, Ok(()), now).await?;
    let proto = run_proto(&txn, run, Output::None).await?;
    state.dispatch.announce(&txn, &systems).await?;
    txn.commit().await?;
    state.dispatch.wake(systems.iter().map(String::as_str));
    state.changed.notify_waiters();
    tracing::info!(run = %proto.name, command = %proto.command, runner = %p.administrator, systems = proto.systems.len(), "run queued");
    Ok(RunCommandResponse { run: Some(proto) })
}

pub(crate) async fn get(
    state: &State,
    call: AdministratorCall,
    req: GetRunRequest,
) -> ApiResult<GetRunResponse> {
    let p = &caller::for_reading(state, &call.principal, Permission::RunsRead).await?;
    let run = visible_run(state, p, &req.name, Permission::RunsRead).await?;
    let output = if req.output_system.is_empty() {
        Output::Budget
    } else {
        SystemName::parse("output_system", &req.output_system)?;
        Output::Of(&req.output_system)
    };
    Ok(GetRunResponse { run: Some(run_proto(&state.db, run, output).await?) })
}

pub(crate) async fn list(
    state: &State,
    call: AdministratorCall,
    req: ListRunsRequest,
) -> ApiResult<ListRunsResponse> {
    let p = &caller::for_reading(state, &call.principal, Permission::RunsRead).await?;
    let req = &req;
    OrganizationName::parse("parent", &req.parent)?;
    p.check_organization(&req.parent)?;
    let size = names::page_size(req.page_size)?;
    let terms =
        rules::parse_filter(&req.filter, &["command", "runner", "state"], &["command", "runner"])?;
    let digest = format!("{}|{}", req.filter.trim(), p.administrator);
    let offset = names::decode_page_token(&req.page_token, &digest)?;
    let mut query = run::Entity::find().filter(run::Column::Organization.eq(&p.organization));
    if !everywhere(p, Permission::RunsRead) {
        query = query.filter(run::Column::Runner.eq(&p.administrator));
    }
    for term in terms {
        query = match term.key.as_str() {
            "command" => {
                CommandName::parse("filter", &term.value)?;
                query.filter(run::Column::Command.eq(term.value))
            }
            "runner" => {
                AdministratorName::parse("filter", &term.value)?;
                if !everywhere(p, Permission::RunsRead) && term.value != p.administrator {
                    return Err(ApiError::denied(
                        "NOT_OWN_RUN",
                        "your role may only list its own runs (runs.read over its own runs)",
                    ));
                }
                query.filter(run::Column::Runner.eq(term.value))
            }
            _ => {
                let state = RunState::from_str_name(&term.value)
                    .filter(|s| *s != RunState::Unspecified)
                    .ok_or_else(|| {
                        ApiError::invalid("filter", format!("unknown run state `{}`", term.value))
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
        .all(&state.db)
        .await?;
    let (mut rows, mut next_page_token) = names::page(rows, size, offset, &digest);
    // A page holds at most `LIST_RESULTS` per-system results: runs in order while they fit (the
    // first always), the rest on the next page.
    if !rows.is_empty() {
        let counts: HashMap<String, i64> = result::Entity::find()
            .select_only()
            .column(result::Column::Run)
            .column_as(result::Column::System.count(), "results")
            .filter(result::Column::Run.is_in(rows.iter().map(|r| r.name.clone())))
            .group_by(result::Column::Run)
            .into_tuple()
            .all(&state.db)
            .await?
            .into_iter()
            .collect();
        let mut held = 0usize;
        let fitting = rows
            .iter()
            .take_while(|r| {
                let n = counts.get(&r.name).and_then(|n| usize::try_from(*n).ok()).unwrap_or(0);
                held += n;
                held <= LIST_RESULTS || held == n
            })
            .count();
        if fitting < rows.len() {
            rows.truncate(fitting);
            next_page_token = names::encode_page_token(offset + fitting as u64, &digest);
        }
    }
    // The results of the whole page in one query, not one per run.
    let mut results: HashMap<String, Vec<SystemResult>> = HashMap::new();
    if !rows.is_empty() {
        let summaries = result::Entity::find()
            .filter(result::Column::Run.is_in(rows.iter().map(|r| r.name.clone())))
            .order_by_asc(result::Column::Position)
            .into_partial_model::<ResultSummary>()
            .all(&state.db)
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

pub(crate) async fn cancel(
    state: &State,
    call: AdministratorCall,
    req: CancelRunRequest,
) -> ApiResult<CancelRunResponse> {
    let name = req.name;
    RunName::parse("name", &name)?;
    let (p, ctx) =
        caller::for_mutation(state, call, &name, Need::Permission(Permission::RunsCancel)).await?;
    visible_run(state, &p, &name, Permission::RunsCancel).await?;
    let now = state.now();
    let txn = begin_write(&state.db).await?;
    let current = run::Entity::find_by_id(name.clone())
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::NotFound(name.clone()))?;
    if rules::is_terminal(current.state) {
        return Err(ApiError::precondition("RUN_FINISHED", name, "the run has already finished"));
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
        .filter(result::Column::State.is_in([RunState::Queued as i32, RunState::Running as i32]))
        .filter(result::Column::CancelTime.is_null())
        .exec(&txn)
        .await?;
    refresh_run(&txn, &name, now).await?;
    audit::record(&txn, &p.organization, &ctx, &p.administrator, &name, Ok(()), now).await?;
    let run = run::Entity::find_by_id(name.clone())
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::NotFound(name.clone()))?;
    let proto = run_proto(&txn, run, Output::None).await?;
    // The agents holding the run's unfinished results relay the cancellation.
    let relaying: Vec<String> = result::Entity::find()
        .select_only()
        .column(result::Column::System)
        .filter(result::Column::Run.eq(&name))
        .filter(result::Column::CancelTime.is_not_null())
        .filter(result::Column::CancelSent.eq(false))
        .into_tuple()
        .all(&txn)
        .await?;
    state.dispatch.announce(&txn, &relaying).await?;
    txn.commit().await?;
    state.dispatch.wake(relaying.iter().map(String::as_str));
    state.changed.notify_waiters();
    tracing::info!(run = %name, actor = %p.administrator, "run cancelled");
    Ok(CancelRunResponse { run: Some(proto) })
}

/// When metrics are exported, reports the systems of unfinished runs by state (queued,
/// running) as `steward.run_targets.active{state}`, from the indexed result states.
pub fn spawn_active_targets_metric(
    db: sea_orm::DatabaseConnection,
) -> Option<tokio::task::JoinHandle<()>> {
    use sea_orm::{ConnectionTrait, Statement};
    use steward_runtime::metrics::KeyValue;
    let active: Vec<RunState> = [RunState::Queued, RunState::Running].into();
    steward_runtime::metrics::spawn_sampler(
        "steward.run_targets.active",
        "Systems of unfinished runs, by state",
        move || {
            let db = db.clone();
            let active = active.clone();
            async move {
                // One indexed pass: the count of each active state, zero when none is left.
                let states: Vec<String> = active.iter().map(|s| (*s as i32).to_string()).collect();
                let sql = format!(
                    "SELECT state, COUNT(*) AS n FROM commands_run_results \
                     WHERE state IN ({}) GROUP BY state",
                    states.join(", ")
                );
                let rows =
                    db.query_all(Statement::from_string(db.get_database_backend(), sql)).await?;
                let mut counts = std::collections::HashMap::new();
                for row in rows {
                    counts.insert(row.try_get::<i32>("", "state")?, row.try_get::<i64>("", "n")?);
                }
                let samples = active
                    .iter()
                    .map(|state| {
                        let n = counts.get(&(*state as i32)).copied().unwrap_or(0);
                        (vec![KeyValue::new("state", state.as_str_name())], n)
                    })
                    .collect();
                Ok::<_, sea_orm::DbErr>(samples)
            }
        },
    )
}
