//! The command-authorization service: commands, grants, access checks, runs, systems and the
//! agents' work streams (`proto/steward/commands/v1`).
//!
//! # Layout
//!
//! [`api`] holds the tonic services, one thin adapter per RPC. The domain lives in modules named
//! after what they act on: `command` (commands and their targets), `grant`, `access` (the pure
//! `decide` and the facts it needs), `run` and `watch`, `system`, `connect_key`, [`agent`]
//! (registration, sessions, the reaper) and [`dispatch`] (which sessions a write wakes); `caller` re-checks the caller's current
//! account, [`rules`] holds the pure field rules, [`audit`] the audit events.
//!
//! # Decisions
//!
//! - **No grant cache.** Every check (GetCommand, ListCommands, CheckAccess, RunCommand)
//!   reads the grants from the database on the call itself, so a grant is never honoured once
//!   DeleteGrant has returned, on any replica. RunCommand re-reads the grant inside the
//!   transaction that records the run, with a shared row lock on PostgreSQL, so a revoke racing
//!   a run either waits for the run's commit or wins and the run is refused.
//! - **The caller now.** A token outlives a demotion or deletion by its lifetime, so every call
//!   (mutations, RunCommand, reads and access checks) looks the caller up first, through
//!   `AdminInternalService.LookupAdministrator` (or `LookupServiceAccount`, with the key its
//!   token came from), and acts on what both the token and the account hold now (reads may
//!   reuse the answer for the caller lease the admin service grants with it and waits out
//!   after every write that narrows a caller; mutations and RunCommand ask on the call; see
//!   `caller::Reuse`): a deleted (or
//!   deactivated) caller is `PERMISSION_DENIED` `CALLER_DELETED`, a demoted one is refused what
//!   its role no longer holds and held to its grants when it runs. Refused mutations are
//!   audited.
//! - **Principals.** CheckAccess about the caller uses the caller as just re-checked; about
//!   anybody else it asks `AdminInternalService.LookupAdministrator` (or
//!   `LookupServiceAccount`), so a deleted administrator is `PRINCIPAL_NOT_FOUND`. A principal
//!   of another organization than the caller's is `PERMISSION_DENIED`; a command or system of
//!   another organization than the principal's is the decision `WRONG_ORGANIZATION`.
//! - **Grantees.** Must be Command Runners of the command's organization: another
//!   organization's name or an unknown administrator is `NOT_FOUND`, an Administrator
//!   `FAILED_PRECONDITION` (`GRANTEE_IS_ADMINISTRATOR`).
//! - **Run visibility.** A Command Runner asking for a command it holds no grant on, or a run
//!   that is not its own, gets `PERMISSION_DENIED` whether or not it exists. RunCommand checks
//!   a Command Runner's grant before looking at the command's targets, so an ungranted runner
//!   learns nothing about the command. A `runner = ...` filter naming someone else is refused
//!   for a Command Runner.
//! - **Audit.** Every mutation and every run attempt (allowed, denied or failed) becomes an
//!   event in `commands_outbox` (in the same transaction as the change), relayed to
//!   `AdminInternalService.RecordAuditEvents`. A run's target is the command's name.
//! - **Run states.** CancelRun makes the run `CANCELLED` at once; systems that had not
//!   received the assignment end `CANCELLED`, the others are told to stop and end as their
//!   agent reports (or `CANCELLED` after the agent deadline). Otherwise the run is `FAILED` if
//!   any system failed, else `CANCELLED` if any was cancelled, else `TIMED_OUT` if any timed
//!   out, else `SUCCEEDED`.
//! - **Dispatch across replicas.** Work is stored in the database and claimed with a
//!   conditional update, so exactly one stream sends an assignment. Sessions are woken by the
//!   writes that concern their system, on every replica (PostgreSQL `NOTIFY`), never by a
//!   timer: an idle agent costs no query ([`dispatch`] has the details and the safety net).
//!   Cancellations travel the same way. A result claimed by a stream that
//!   ended goes back to the queue; a running result whose system has not been heard from for
//!   [`agent::AGENT_DEADLINE_SECS`] seconds, or that outlives its timeout by that deadline, ends `FAILED`.
//!   All deadlines use the injected clock.
//! - **Output.** Captured per system and stream up to 1 MiB ([`rules::MAX_OUTPUT_BYTES`]);
//!   chunks carry offsets, so repeats are ignored; beyond the bound the capture is cut and
//!   marked truncated. WatchRun polls the database every 200 ms (woken early by changes on
//!   its own replica) and streams new bytes as `OutputChunk`s.
//! - **Connect keys.** Random, stored as SHA-256 only. When CreateConnectKey carries a
//!   `request_id` (a random v4 UUID), the key is also kept for ten minutes sealed under a key
//!   derived from that id, which the service never stores (its idempotency record holds a
//!   digest), so a retry in that window shows the key again.
//! - **Systems.** `connected` means a stream holds the system and it was heard from within the
//!   agent deadline. Deleting a system deletes it from every command's targets and fails its
//!   unfinished results; its open stream ends `UNAUTHENTICATED`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};
use sea_orm_migration::prelude::*;
use steward_runtime::service::{Clock, Peers, ServiceContext};
use steward_runtime::ApiResult;
use steward_storage::outbox::Outbox;
use tokio::sync::Notify;
use tonic::service::RoutesBuilder;

mod access;
pub mod agent;
pub mod api;
pub mod audit;
mod caller;
mod command;
mod connect_key;
pub mod dispatch;
pub mod entity;
mod grant;
mod permission_check;
pub mod rules;
mod run;
pub mod schema;
mod streams;
mod system;
mod watch;

/// Name of the service: its SQLite file, its tables' prefix, its subcommand.
pub const SERVICE: &str = "commands";

/// gRPC services this crate serves (internal ones included): reported by health and reflection,
/// and what each listener routes ([`steward_runtime::routing`]).
pub const SERVICES: &[&str] = &[
    "steward.commands.v1.CommandService",
    "steward.commands.v1.SystemService",
    "steward.commands.v1.AgentService",
    "steward.commands.v1.CommandsInternalService",
];

/// The service's outbox (audit events for the admin service).
pub const OUTBOX: Outbox = Outbox::new("commands_outbox");

/// Answers to CreateCommand, CreateGrant, RunCommand and CreateConnectKey (scoped by caller)
/// and to RemoveAdministratorGrants (scoped by administrator).
pub const IDEMPOTENCY: steward_storage::idempotency::Idempotency =
    steward_storage::idempotency::Idempotency::with_legacy(
        "commands_idempotency_keys",
        schema::LEGACY_IDEMPOTENCY,
    );

/// The service's migrations, tracked in its own table so services can share a database.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(schema::Initial),
            Box::new(schema::ConnectKeyReplay),
            Box::new(schema::RunOutput),
            Box::new(schema::adopt_idempotency()),
            Box::new(schema::DispatchIndexes),
        ]
    }

    fn migration_table_name() -> DynIden {
        Alias::new("commands_migrations").into_iden()
    }
}

/// What every handler of the service shares.
#[derive(Clone)]
pub(crate) struct State {
    pub db: DatabaseConnection,
    pub clock: Clock,
    pub peers: Peers,
    /// Woken whenever a run changes on this replica (WatchRun streams wake early).
    pub changed: Arc<Notify>,
    /// The agent sessions this replica holds, woken by the writes that concern them.
    pub dispatch: Arc<dispatch::Dispatch>,
    /// Open WatchRun streams on this replica.
    pub watchers: Arc<streams::Watchers>,
    /// Agent message buckets, per system, on this replica.
    pub agent_buckets: Arc<streams::AgentBuckets>,
    /// Stream limits.
    pub streams: steward_runtime::config::StreamsConfig,
    /// `server.max_connection_age_secs`: an idle agent stream older than this (less up to 10%,
    /// drawn per stream) is ended so the agent reconnects, on a fresh connection.
    pub agent_stream_max_age: Option<std::time::Duration>,
    /// Callers' (and principals') current roles, reused for `internal.caller_lease_ms`
    /// ([`steward_runtime::lease`]), by name and API key.
    pub callers: Arc<steward_runtime::lease::Leases<(String, String), Option<caller::Current>>>,
}

impl State {
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }
}

/// Opens a write transaction ([`steward_storage::begin_write`]).
pub(crate) async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    steward_storage::begin_write(db, IDEMPOTENCY.table()).await
}

pub(crate) use steward_storage::is_unique_violation;

/// Registers the service's gRPC services on `routes` and spawns its background tasks.
pub async fn start(
    ctx: &ServiceContext,
    routes: &mut RoutesBuilder,
) -> ApiResult<Vec<tokio::task::JoinHandle<()>>> {
    use steward_proto::commands::v1::agent_service_server::AgentServiceServer;
    use steward_proto::commands::v1::command_service_server::CommandServiceServer;
    use steward_proto::commands::v1::commands_internal_service_server::CommandsInternalServiceServer;
    use steward_proto::commands::v1::system_service_server::SystemServiceServer;

    let state = State {
        db: ctx.db.clone(),
        clock: ctx.clock.clone(),
        peers: ctx.peers.clone(),
        changed: Arc::new(Notify::new()),
        dispatch: dispatch::Dispatch::new(),
        watchers: Arc::default(),
        agent_buckets: Arc::default(),
        streams: ctx.config.streams.clone(),
        agent_stream_max_age: (ctx.config.server.max_connection_age_secs > 0)
            .then(|| std::time::Duration::from_secs(ctx.config.server.max_connection_age_secs)),
        callers: Arc::new(steward_runtime::lease::Leases::new(ctx.config.internal.caller_lease())),
    };
    let max = ctx.config.server.max_message_bytes;
    routes.add_service(
        CommandServiceServer::new(api::commands::Commands::new(state.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    routes.add_service(
        SystemServiceServer::new(api::systems::Systems::new(state.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    routes.add_service(
        AgentServiceServer::new(api::agent::Agents::new(state.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    routes.add_service(
        CommandsInternalServiceServer::new(api::internal::Internal::new(state.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    let relay = OUTBOX.with_lease(ctx.config.outbox.lease()).spawn_relay(
        ctx.db.clone(),
        steward_runtime::audit::deliver(ctx.peers.clone()),
        ctx.clock.clone(),
    );
    let expiry = IDEMPOTENCY.spawn_expiry(ctx.db.clone(), ctx.clock.clone());
    let mut tasks = vec![relay, expiry, dispatch::spawn_maintenance(state.clone())];
    tasks.extend(dispatch::spawn_listener(
        &ctx.db,
        ctx.config.database.url.clone(),
        state.dispatch.clone(),
    ));
    let dispatch = state.dispatch.clone();
    steward_runtime::metrics::gauge_fn(
        "steward.agents.connected",
        "Agent streams open on this replica",
        move || {
            vec![(
                Vec::new(),
                <i64 as TryFrom<usize>>::try_from(dispatch.connected()).unwrap_or(i64::MAX),
            )]
        },
    );
    tasks.extend(steward_runtime::metrics::spawn_outbox_backlog(OUTBOX, ctx.db.clone()));
    tasks.extend(run::spawn_active_targets_metric(ctx.db.clone()));
    tasks.push(agent::spawn_reaper(state));
    tracing::info!(service = SERVICE, "commands service started");
    Ok(tasks)
}
