//! Runs: RunCommand, GetRun, ListRuns, CancelRun.

use super::*;

impl Commands {
    pub(super) async fn run_command_impl(
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

    pub(super) async fn run_inner(
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
        let key = Key::new("run_command", &p.administrator, &req.request_id);
        let db = &self.state.db;
        if let Some(previous) = IDEMPOTENCY.recall(db, key.as_ref()).await? {
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
        IDEMPOTENCY.record(&txn, key.as_ref(), &run.name, now).await?;
        audit::record(&txn, &p.organization, ctx, &p.administrator, &command.name, Ok(()), now)
            .await?;
        let proto = run_proto(&txn, run, false).await?;
        txn.commit().await?;
        self.state.changed.notify_waiters();
        tracing::info!(run = %proto.name, command = %proto.command, runner = %p.administrator, systems = proto.systems.len(), "run queued");
        Ok(RunCommandResponse { run: Some(proto) })
    }

    pub(super) async fn get_run_impl(
        &self,
        request: Request<GetRunRequest>,
    ) -> ApiResult<GetRunResponse> {
        let p = &caller::for_reading(&self.state, authn::principal(&request)?).await?;
        let run = self.visible_run(p, &request.get_ref().name).await?;
        Ok(GetRunResponse { run: Some(run_proto(&self.state.db, run, true).await?) })
    }

    pub(super) async fn list_runs_impl(
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

    pub(super) async fn cancel_run_impl(
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
}
