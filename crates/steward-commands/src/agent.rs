//! `AgentService`: agent registration, the agents' work streams, and the reaper that ends
//! runs of vanished agents. Work is stored in the database and sessions are woken by events
//! ([`crate::dispatch`]), so an agent connected to one replica receives runs created on any
//! other, and an idle session costs no query.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::Stream;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set,
};
use steward_proto::commands::v1::open_stream_request::{self, RunFinished, RunStarted};
use steward_proto::commands::v1::open_stream_response::{self, Assignment, CancelRun, Heartbeat};
use steward_proto::commands::v1::{
    OpenStreamRequest, OpenStreamResponse, OutputChunk, OutputStream, RegisterAgentRequest,
    RegisterAgentResponse, RunState,
};
use steward_runtime::authn::RequestContext;
use steward_runtime::names::{self, RunName};
use steward_runtime::{ApiError, ApiResult};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::connect_key::random_token;
use crate::dispatch::Registration;
use crate::entity::{connect_key, output, result, run, system};
use crate::rules::{self, timestamp};
use crate::run::{lock_run, refresh_run};
use crate::system::system_proto;
use crate::{audit, begin_write, State};

/// How long a system may go unheard before its running results end `FAILED`, and how long
/// past its timeout a run may stay unreported.
pub const AGENT_DEADLINE_SECS: i64 = 60;
/// How often the reaper runs.
const REAPER_INTERVAL: Duration = Duration::from_secs(2);
/// Assignments claimed per poll.
const CLAIM_BATCH: u64 = 16;
/// Longest error message stored from an agent.
const MAX_ERROR_CHARS: usize = 4000;

/// [`AGENT_DEADLINE_SECS`] as a duration.
pub fn agent_deadline() -> chrono::TimeDelta {
    chrono::TimeDelta::seconds(AGENT_DEADLINE_SECS)
}

/// The OpenStream response stream.
pub type AgentStream = Pin<Box<dyn Stream<Item = Result<OpenStreamResponse, Status>> + Send>>;

fn reported(field: &str, value: &str, max: usize) -> ApiResult<()> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid(field, format!("must be at most {max} characters")));
    }
    names::check_text(field, value, names::Text::Line)
}

/// Registers a system with a connect key and answers with its credential (RegisterAgent).
pub(crate) async fn register(
    state: &State,
    ctx: RequestContext,
    req: RegisterAgentRequest,
) -> ApiResult<RegisterAgentResponse> {
    let refused = || ApiError::Unauthenticated("invalid, expired or revoked connect key".into());
    if req.connect_key.is_empty() {
        return Err(refused());
    }
    reported("hostname", &req.hostname, 255)?;
    reported("os", &req.os, 64)?;
    reported("agent_version", &req.agent_version, 64)?;
    let now = state.now();
    let db = &state.db;
    let key = connect_key::Entity::find()
        .filter(connect_key::Column::KeyHash.eq(rules::hash_secret(&req.connect_key)))
        .one(db)
        .await?
        .filter(|k| !k.revoked && k.expire_time.is_none_or(|at| at > now))
        .ok_or_else(refused)?;
    let name = format!("{}/systems/{}", key.organization, names::new_id());
    let credential = format!("stc_{}", random_token());
    let model = system::Model {
        name: name.clone(),
        organization: key.organization.clone(),
        display_name: req.hostname.chars().take(rules::MAX_DISPLAY_NAME_CHARS).collect(),
        hostname: req.hostname,
        os: req.os,
        agent_version: req.agent_version,
        credential_hash: rules::hash_secret(&credential),
        connect_key: key.name.clone(),
        stream_id: None,
        last_seen_time: Some(now),
        create_time: now,
        etag: rules::etag(&name, 0, &names::new_id()),
    };
    let txn = begin_write(db).await?;
    system::Entity::insert(model.clone().into_active_model()).exec_without_returning(&txn).await?;
    audit::record(&txn, &key.organization, &ctx, &key.name, &name, Ok(()), now).await?;
    txn.commit().await?;
    tracing::info!(system = %name, connect_key = %key.name, "agent registered");
    Ok(RegisterAgentResponse { system: Some(system_proto(model, now)), credential })
}

/// Opens the session of the system holding `credential` (OpenStream): claims the system's
/// stream and serves `inbound` until either side ends it.
pub(crate) async fn open(
    state: &State,
    credential: &str,
    inbound: Streaming<OpenStreamRequest>,
) -> ApiResult<AgentStream> {
    let found = system::Entity::find()
        .filter(system::Column::CredentialHash.eq(rules::hash_secret(credential)))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::Unauthenticated("unknown agent credential".into()))?;
    let stream_id = names::new_id();
    let now = state.now();
    let claimed = system::Entity::update_many()
        .col_expr(system::Column::StreamId, Expr::value(Some(stream_id.clone())))
        .col_expr(system::Column::LastSeenTime, Expr::value(Some(now)))
        .filter(system::Column::Name.eq(&found.name))
        .exec(&state.db)
        .await?;
    if claimed.rows_affected != 1 {
        return Err(ApiError::Unauthenticated("unknown agent credential".into()));
    }
    // An older session of this system, on any replica, wakes up and ends.
    state.dispatch.announce(&state.db, std::slice::from_ref(&found.name)).await?;
    let registration = state.dispatch.register(&found.name, &stream_id);
    tracing::info!(system = %found.name, stream = %stream_id, "agent connected");
    let (tx, rx) = mpsc::channel(16);
    let session = Session {
        state: state.clone(),
        organization: found.organization,
        system: found.name,
        stream_id,
        hello: false,
        registration,
    };
    tokio::spawn(session.run(inbound, tx));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Why a session ended from the service's side.
enum Poll {
    Continue,
    End(Status),
}

/// One agent's open stream.
struct Session {
    state: State,
    organization: String,
    system: String,
    stream_id: String,
    hello: bool,
    registration: Registration,
}

type Outbound = mpsc::Sender<Result<OpenStreamResponse, Status>>;

fn response(message: open_stream_response::Message) -> Result<OpenStreamResponse, Status> {
    Ok(OpenStreamResponse { message: Some(message) })
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<OpenStreamRequest>, tx: Outbound) {
        let every = Duration::from_secs(self.state.streams.agent_heartbeat_secs.max(1));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wake = self.registration.wake.clone();
        // Each message costs a token of the system's bucket: an agent sending faster than the
        // sustained rate is slowed down (its stream is read more slowly, so HTTP/2 flow control
        // pushes back), never cut; reconnecting does not refill the bucket.
        let (rate, burst) =
            (self.state.streams.agent_messages_per_sec, self.state.streams.agent_message_burst);
        let buckets = self.state.agent_buckets.clone();
        // Past its age, an idle stream ends so the agent reconnects, on a new connection (the
        // server sent GOAWAY on the old one) to whichever replica; checked at heartbeats.
        let recycle_at = self.state.agent_stream_max_age.map(|age| {
            use rand::Rng;
            tokio::time::Instant::now() + age.mul_f64(1.0 - rand::thread_rng().gen_range(0.0..0.1))
        });
        let end = loop {
            let polled = tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        buckets.take(&self.system, rate, burst).await;
                        if let Err(err) = self.handle(message).await {
                            if matches!(err, ApiError::InvalidArgument(_)) {
                                break Some(Status::from(err));
                            }
                            tracing::warn!(system = %self.system, error = %err, "agent report not recorded");
                        }
                        continue;
                    }
                    Ok(None) => break None,
                    // An undecodable or oversized message (INVALID_ARGUMENT, OUT_OF_RANGE) ends
                    // the stream with that status, so the agent learns why; a broken stream
                    // has nobody left to tell, and the status is dropped with the channel.
                    Err(status) => {
                        tracing::info!(system = %self.system, code = ?status.code(), "agent stream broke");
                        break Some(status);
                    }
                },
                () = tx.closed() => break None,
                () = wake.notified() => self.poll(&tx).await,
                _ = heartbeat.tick() => {
                    if recycle_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                        match self.busy().await {
                            Ok(false) => break Some(Status::unavailable(
                                "this agent stream reached its maximum age; reconnect",
                            )),
                            Ok(true) => {}
                            Err(err) => tracing::warn!(system = %self.system, error = %err, "cannot tell whether the agent is busy"),
                        }
                    }
                    let beat = Heartbeat { send_time: Some(timestamp(self.state.now())) };
                    if tx.send(response(open_stream_response::Message::Heartbeat(beat))).await.is_err() {
                        break None;
                    }
                    continue;
                }
            };
            match polled {
                Ok(Poll::Continue) => {}
                Ok(Poll::End(status)) => break Some(status),
                Err(err) => {
                    tracing::warn!(system = %self.system, error = %err, "dispatch pass failed")
                }
            }
        };
        if let Some(status) = end {
            let _ = tx.send(Err(status)).await;
        }
        if let Err(err) = self.close().await {
            tracing::warn!(system = %self.system, error = %err, "cannot release the agent stream");
        }
        tracing::info!(system = %self.system, stream = %self.stream_id, "agent disconnected");
    }

    /// Whether a run is executing on this system (its stream is then kept past its age, so no
    /// report of that run has to cross a reconnect).
    async fn busy(&self) -> ApiResult<bool> {
        use sea_orm::PaginatorTrait;
        let running = result::Entity::find()
            .filter(result::Column::System.eq(&self.system))
            .filter(result::Column::State.eq(RunState::Running as i32))
            .count(&self.state.db)
            .await?;
        Ok(running > 0)
    }

    /// The result `run` of this system, if the run belongs to this system's organization.
    async fn own_result(&self, run: &str) -> ApiResult<Option<result::Model>> {
        match RunName::parse("run", run) {
            Ok(name) if name.organization().as_str() == self.organization => {}
            _ => return Ok(None),
        }
        Ok(result::Entity::find_by_id((run.to_string(), self.system.clone()))
            .one(&self.state.db)
            .await?)
    }

    async fn handle(&mut self, message: OpenStreamRequest) -> ApiResult<()> {
        use open_stream_request::Message;
        let Some(message) = message.message else { return Ok(()) };
        rules::agent_message(self.hello, &message)?;
        let now = self.state.now();
        let db = &self.state.db;
        match message {
            Message::Hello(hello) => {
                self.hello = true;
                let mut update = system::Entity::update_many()
                    .col_expr(system::Column::LastSeenTime, Expr::value(Some(now)))
                    .filter(system::Column::Name.eq(&self.system));
                if !hello.agent_version.is_empty() && hello.agent_version.chars().count() <= 64 {
                    update = update
                        .col_expr(system::Column::AgentVersion, Expr::value(hello.agent_version));
                }
                update.exec(db).await?;
                // Work queued before the agent said hello goes out now.
                self.registration.wake.notify_one();
            }
            // The stream is open, which the replica records for all its systems in batches
            // (`dispatch::TOUCH_INTERVAL`): a heartbeat costs no query.
            Message::Heartbeat(_) => {}
            Message::RunStarted(RunStarted { run, pid }) => {
                if self.own_result(&run).await?.is_none() {
                    tracing::warn!(system = %self.system, %run, "start reported for an unknown run");
                    return Ok(());
                }
                let txn = begin_write(db).await?;
                lock_run(&txn, &run).await?;
                result::Entity::update_many()
                    .col_expr(result::Column::State, Expr::value(RunState::Running as i32))
                    .col_expr(result::Column::StartTime, Expr::value(Some(now)))
                    .col_expr(result::Column::ClaimedBy, Expr::value(Some(self.stream_id.clone())))
                    .filter(result::Column::Run.eq(&run))
                    .filter(result::Column::System.eq(&self.system))
                    .filter(result::Column::State.eq(RunState::Queued as i32))
                    .exec(&txn)
                    .await?;
                refresh_run(&txn, &run, now).await?;
                txn.commit().await?;
                tracing::info!(system = %self.system, %run, pid, "run started");
                self.state.changed.notify_waiters();
            }
            Message::Output(OutputChunk { run, stream, data, offset, .. }) => {
                let Some(current) = self.own_result(&run).await? else {
                    tracing::warn!(system = %self.system, %run, "output reported for an unknown run");
                    return Ok(());
                };
                let (legacy, truncated, flag_column) = match OutputStream::try_from(stream) {
                    Ok(OutputStream::Stdout) => (
                        current.stdout.len(),
                        current.stdout_truncated,
                        result::Column::StdoutTruncated,
                    ),
                    Ok(OutputStream::Stderr) => (
                        current.stderr.len(),
                        current.stderr_truncated,
                        result::Column::StderrTruncated,
                    ),
                    _ => {
                        return Err(ApiError::invalid("output.stream", "must be stdout or stderr"))
                    }
                };
                // Append-only: each new piece is one more row; nothing stored is rewritten.
                let stored: Option<Option<i64>> = output::Entity::find()
                    .select_only()
                    .column_as(output::Column::EndOffset.max(), "end")
                    .filter(output::Column::Run.eq(&run))
                    .filter(output::Column::System.eq(&self.system))
                    .filter(output::Column::Stream.eq(stream))
                    .into_tuple()
                    .one(db)
                    .await?;
                let stored = stored.flatten().and_then(|end| usize::try_from(end).ok());
                let have = stored.unwrap_or(0).max(legacy);
                let (fresh, cut) =
                    rules::fresh_output(have, offset, &data, rules::MAX_OUTPUT_BYTES);
                if fresh.is_empty() && (!cut || truncated) {
                    return Ok(());
                }
                if !fresh.is_empty() {
                    let start = i64::try_from(have).unwrap_or(i64::MAX);
                    let end = i64::try_from(have + fresh.len()).unwrap_or(i64::MAX);
                    output::Entity::insert(output::ActiveModel {
                        run: Set(run.clone()),
                        system: Set(self.system.clone()),
                        stream: Set(stream),
                        offset: Set(start),
                        end_offset: Set(end),
                        data: Set(fresh.to_vec()),
                    })
                    .on_conflict(
                        OnConflict::columns([
                            output::Column::Run,
                            output::Column::System,
                            output::Column::Stream,
                            output::Column::Offset,
                        ])
                        .do_nothing()
                        .to_owned(),
                    )
                    .exec_without_returning(db)
                    .await?;
                }
                if cut && !truncated {
                    result::Entity::update_many()
                        .col_expr(flag_column, Expr::value(true))
                        .filter(result::Column::Run.eq(&run))
                        .filter(result::Column::System.eq(&self.system))
                        .exec(db)
                        .await?;
                }
                self.state.changed.notify_waiters();
            }
            Message::RunFinished(RunFinished {
                run,
                state,
                exit_code,
                stdout_truncated,
                stderr_truncated,
                error_message,
            }) => {
                let final_state = match RunState::try_from(state) {
                    Ok(
                        s @ (RunState::Succeeded
                        | RunState::Failed
                        | RunState::TimedOut
                        | RunState::Cancelled),
                    ) => s,
                    _ => {
                        return Err(ApiError::invalid(
                            "run_finished.state",
                            "must be a final state",
                        ))
                    }
                };
                let Some(current) = self.own_result(&run).await? else {
                    tracing::warn!(system = %self.system, %run, "end reported for an unknown run");
                    return Ok(());
                };
                if rules::is_terminal(current.state) {
                    return Ok(());
                }
                let txn = begin_write(db).await?;
                lock_run(&txn, &run).await?;
                result::Entity::update_many()
                    .col_expr(result::Column::State, Expr::value(final_state as i32))
                    .col_expr(result::Column::ExitCode, Expr::value(exit_code))
                    .col_expr(
                        result::Column::StdoutTruncated,
                        Expr::value(current.stdout_truncated || stdout_truncated),
                    )
                    .col_expr(
                        result::Column::StderrTruncated,
                        Expr::value(current.stderr_truncated || stderr_truncated),
                    )
                    .col_expr(
                        result::Column::StartTime,
                        Expr::value(Some(current.start_time.unwrap_or(now))),
                    )
                    .col_expr(result::Column::EndTime, Expr::value(Some(now)))
                    .col_expr(
                        result::Column::ErrorMessage,
                        Expr::value(
                            error_message.chars().take(MAX_ERROR_CHARS).collect::<String>(),
                        ),
                    )
                    .filter(result::Column::Run.eq(&run))
                    .filter(result::Column::System.eq(&self.system))
                    .filter(
                        result::Column::State
                            .is_in([RunState::Queued as i32, RunState::Running as i32]),
                    )
                    .exec(&txn)
                    .await?;
                refresh_run(&txn, &run, now).await?;
                txn.commit().await?;
                tracing::info!(system = %self.system, %run, state = final_state.as_str_name(), exit_code, "run finished");
                self.state.changed.notify_waiters();
            }
        }
        Ok(())
    }

    /// Checks the system still belongs to this stream, then sends new work and cancellations.
    /// Runs only when the session is woken.
    async fn poll(&self, tx: &Outbound) -> ApiResult<Poll> {
        let db = &self.state.db;
        let Some(current) = system::Entity::find_by_id(self.system.clone()).one(db).await? else {
            return Ok(Poll::End(
                ApiError::Unauthenticated("the system has been deleted".into()).into(),
            ));
        };
        if current.stream_id.as_deref() != Some(self.stream_id.as_str()) {
            return Ok(Poll::End(
                ApiError::Aborted("replaced by a newer stream of the same system".into()).into(),
            ));
        }
        if !self.hello {
            return Ok(Poll::Continue);
        }
        let queued: Vec<(String, String)> = result::Entity::find()
            .select_only()
            .column(result::Column::Run)
            .column(result::Column::System)
            .filter(result::Column::System.eq(&self.system))
            .filter(result::Column::State.eq(RunState::Queued as i32))
            .filter(result::Column::ClaimedBy.is_null())
            .filter(result::Column::CancelTime.is_null())
            .order_by_asc(result::Column::Run)
            .limit(CLAIM_BATCH)
            .into_tuple()
            .all(db)
            .await?;
        for (run_name, system_name) in queued {
            let claimed = result::Entity::update_many()
                .col_expr(result::Column::ClaimedBy, Expr::value(Some(self.stream_id.clone())))
                .filter(result::Column::Run.eq(&run_name))
                .filter(result::Column::System.eq(&system_name))
                .filter(result::Column::State.eq(RunState::Queued as i32))
                .filter(result::Column::ClaimedBy.is_null())
                .exec(db)
                .await?;
            if claimed.rows_affected != 1 {
                continue;
            }
            let Some(snapshot) = run::Entity::find_by_id(run_name.clone()).one(db).await? else {
                continue;
            };
            let assignment = Assignment {
                run: snapshot.name,
                command: snapshot.command,
                script: snapshot.script,
                interpreter: snapshot.interpreter,
                run_as_user: snapshot.run_as_user,
                timeout: Some(prost_types::Duration {
                    seconds: snapshot.timeout_secs,
                    nanos: snapshot.timeout_nanos,
                }),
            };
            tracing::info!(system = %self.system, run = %run_name, "assignment sent");
            if tx
                .send(response(open_stream_response::Message::Assignment(assignment)))
                .await
                .is_err()
            {
                return Ok(Poll::Continue);
            }
        }
        let cancels: Vec<String> = result::Entity::find()
            .select_only()
            .column(result::Column::Run)
            .filter(result::Column::System.eq(&self.system))
            .filter(result::Column::CancelTime.is_not_null())
            .filter(result::Column::CancelSent.eq(false))
            .filter(
                result::Column::State.is_in([RunState::Queued as i32, RunState::Running as i32]),
            )
            .into_tuple()
            .all(db)
            .await?;
        for run_name in cancels {
            result::Entity::update_many()
                .col_expr(result::Column::CancelSent, Expr::value(true))
                .filter(result::Column::Run.eq(&run_name))
                .filter(result::Column::System.eq(&self.system))
                .exec(db)
                .await?;
            tracing::info!(system = %self.system, run = %run_name, "cancellation sent");
            if tx
                .send(response(open_stream_response::Message::CancelRun(CancelRun {
                    run: run_name,
                })))
                .await
                .is_err()
            {
                return Ok(Poll::Continue);
            }
        }
        Ok(Poll::Continue)
    }

    /// Gives up the system and puts back assignments the agent never started.
    async fn close(&self) -> ApiResult<()> {
        let db = &self.state.db;
        system::Entity::update_many()
            .col_expr(system::Column::StreamId, Expr::value(Option::<String>::None))
            .filter(system::Column::Name.eq(&self.system))
            .filter(system::Column::StreamId.eq(&self.stream_id))
            .exec(db)
            .await?;
        release(&self.state, Some(&self.stream_id)).await?;
        Ok(())
    }
}

/// Puts back queued results claimed by `stream` (or, with `None`, by any stream that no longer
/// holds its system), ending those whose run was cancelled meanwhile.
async fn release(state: &State, stream: Option<&str>) -> ApiResult<usize> {
    let db = &state.db;
    let mut query = result::Entity::find()
        .select_only()
        .column(result::Column::Run)
        .column(result::Column::System)
        .column(result::Column::ClaimedBy)
        .filter(result::Column::State.eq(RunState::Queued as i32))
        .filter(result::Column::ClaimedBy.is_not_null());
    if let Some(stream) = stream {
        query = query.filter(result::Column::ClaimedBy.eq(stream));
    }
    let claimed: Vec<(String, String, Option<String>)> = query.into_tuple().all(db).await?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let holders: HashMap<String, Option<String>> = system::Entity::find()
        .select_only()
        .column(system::Column::Name)
        .column(system::Column::StreamId)
        .filter(
            system::Column::Name
                .is_in(claimed.iter().map(|(_, s, _)| s.clone()).collect::<HashSet<_>>()),
        )
        .into_tuple()
        .all(db)
        .await?
        .into_iter()
        .collect();
    let now = state.now();
    let mut released = 0;
    let mut woken = Vec::new();
    for (run_name, system_name, claimer) in claimed {
        let holder = holders.get(&system_name).cloned().flatten();
        if stream.is_none() && holder.is_some() && holder == claimer {
            continue;
        }
        let txn = begin_write(db).await?;
        lock_run(&txn, &run_name).await?;
        let back = result::Entity::update_many()
            .col_expr(result::Column::ClaimedBy, Expr::value(Option::<String>::None))
            .col_expr(result::Column::CancelSent, Expr::value(false))
            .filter(result::Column::Run.eq(&run_name))
            .filter(result::Column::System.eq(&system_name))
            .filter(result::Column::State.eq(RunState::Queued as i32))
            .filter(result::Column::ClaimedBy.eq(claimer.clone()))
            .exec(&txn)
            .await?;
        let ended = result::Entity::update_many()
            .col_expr(result::Column::State, Expr::value(RunState::Cancelled as i32))
            .col_expr(result::Column::EndTime, Expr::value(Some(now)))
            .col_expr(result::Column::ErrorMessage, Expr::value("cancelled before it started"))
            .filter(result::Column::Run.eq(&run_name))
            .filter(result::Column::System.eq(&system_name))
            .filter(result::Column::State.eq(RunState::Queued as i32))
            .filter(result::Column::CancelTime.is_not_null())
            .exec(&txn)
            .await?;
        if ended.rows_affected > 0 {
            refresh_run(&txn, &run_name, now).await?;
        }
        if back.rows_affected > 0 && ended.rows_affected == 0 {
            // The system's current session, on any replica, takes the assignment back.
            state.dispatch.announce(&txn, std::slice::from_ref(&system_name)).await?;
            woken.push(system_name);
        }
        txn.commit().await?;
        released += usize::try_from(back.rows_affected).unwrap_or(0);
    }
    if released > 0 {
        state.dispatch.wake(woken.iter().map(String::as_str));
        state.changed.notify_waiters();
    }
    Ok(released)
}

/// Run, system, start and cancel time of a running result.
type RunningRow = (String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Ends running results that can no longer finish normally.
async fn reap(state: &State) -> ApiResult<()> {
    release(state, None).await?;
    let db = &state.db;
    let now = state.now();
    crate::connect_key::expire_replays(db, now).await?;
    let running: Vec<RunningRow> = result::Entity::find()
        .select_only()
        .column(result::Column::Run)
        .column(result::Column::System)
        .column(result::Column::StartTime)
        .column(result::Column::CancelTime)
        .filter(result::Column::State.eq(RunState::Running as i32))
        .into_tuple()
        .all(db)
        .await?;
    if running.is_empty() {
        return Ok(());
    }
    let seen: HashMap<String, Option<DateTime<Utc>>> = system::Entity::find()
        .select_only()
        .column(system::Column::Name)
        .column(system::Column::LastSeenTime)
        .filter(
            system::Column::Name.is_in(running.iter().map(|r| r.1.clone()).collect::<HashSet<_>>()),
        )
        .into_tuple()
        .all(db)
        .await?
        .into_iter()
        .collect();
    let timeouts: HashMap<String, (i64, i32)> = run::Entity::find()
        .select_only()
        .column(run::Column::Name)
        .column(run::Column::TimeoutSecs)
        .column(run::Column::TimeoutNanos)
        .filter(
            run::Column::Name.is_in(running.iter().map(|r| r.0.clone()).collect::<HashSet<_>>()),
        )
        .into_tuple::<(String, i64, i32)>()
        .all(db)
        .await?
        .into_iter()
        .map(|(name, secs, nanos)| (name, (secs, nanos)))
        .collect();
    let deadline = agent_deadline();
    for (run_name, system_name, start, cancel) in running {
        let last_seen = seen.get(&system_name).cloned().flatten();
        let (secs, nanos) =
            timeouts.get(&run_name).copied().unwrap_or((rules::DEFAULT_TIMEOUT_SECS, 0));
        let timeout =
            chrono::TimeDelta::seconds(secs) + chrono::TimeDelta::nanoseconds(i64::from(nanos));
        let verdict = if cancel.is_some_and(|at| at + deadline < now) {
            Some((RunState::Cancelled, "the agent did not confirm the cancellation"))
        } else if last_seen.is_none_or(|at| at + deadline < now) {
            Some((RunState::Failed, "the agent stopped responding during the run"))
        } else if start.is_some_and(|at| at + timeout + deadline < now) {
            Some((RunState::Failed, "the agent did not report the end of the run in time"))
        } else {
            None
        };
        let Some((final_state, why)) = verdict else { continue };
        let txn = begin_write(db).await?;
        lock_run(&txn, &run_name).await?;
        let ended = result::Entity::update_many()
            .col_expr(result::Column::State, Expr::value(final_state as i32))
            .col_expr(result::Column::EndTime, Expr::value(Some(now)))
            .col_expr(result::Column::ErrorMessage, Expr::value(why))
            .filter(result::Column::Run.eq(&run_name))
            .filter(result::Column::System.eq(&system_name))
            .filter(result::Column::State.eq(RunState::Running as i32))
            .exec(&txn)
            .await?;
        if ended.rows_affected > 0 {
            refresh_run(&txn, &run_name, now).await?;
            tracing::warn!(run = %run_name, system = %system_name, reason = why, "run ended by the service");
        }
        txn.commit().await?;
        state.changed.notify_waiters();
    }
    Ok(())
}

/// Runs the reaper until the task is aborted.
#[allow(clippy::disallowed_methods)] // wall-clock timer on purpose: transport, polling or backoff
pub(crate) fn spawn_reaper(state: State) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(REAPER_INTERVAL).await;
            if let Err(err) = reap(&state).await {
                tracing::warn!(error = %err, "reaper pass failed");
            }
        }
    })
}
