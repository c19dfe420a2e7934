//! The admin service: organizations, administrators and their safeguards, the payment card and
//! the audit log.
//!
//! # Layout
//!
//! [`api`] holds only the tonic services, one thin adapter per RPC (typed caller and message,
//! the call's [`audit::Auditor`], one domain function, [`audit::finish`]). The domain lives in
//! modules named after what they act on: [`administrator`] (AdminService, LookupAdministrator,
//! ActivateAdministrator), [`organization`], [`billing`] (the payment card; [`card`] holds the
//! card-number rules) and [`audit_log`] (ListAuditEvents, RecordAuditEvents). They share
//! [`state`] (the organization lock, the caller re-check, conversions), [`safeguards`],
//! [`effects`] (the outbox), [`audit`] (this service's own audit events), [`filter`] and
//! [`email`].
//!
//! # Design decisions
//!
//! - **Safeguards.** Every create, update and delete of administrators runs in one transaction
//!   that starts with `UPDATE admin_organizations SET revision = revision + 1 WHERE id = ?`
//!   ([`state::lock_org`]): a row lock on PostgreSQL, the database write lock on SQLite. Writers
//!   of one organization therefore run one after the other, on any number of replicas, and each
//!   reads the state the previous one committed. The invariants ([`safeguards`]) are counted over
//!   activated administrators; a `LAST_*` rule is broken only by a change that takes its count
//!   from at least one to zero (an organization whose owner has not accepted yet is not stuck).
//! - **The caller is re-checked** inside the locked transaction of every mutation: it must still
//!   exist, be activated and (for administrator management) still be an Administrator, or the
//!   call is PERMISSION_DENIED (`CALLER_DELETED`, `CALLER_INACTIVE`, `ROLE_REQUIRED`). Of two
//!   Administrators deleting or demoting each other at once, exactly one succeeds.
//! - **Side effects** (invite, session revocation, credential deletion, MFA reset, grant
//!   removal) are queued in `admin_outbox` in the same transaction ([`effects`]) and delivered by
//!   the relay that [`start`] spawns, with a fresh idempotency key per message. Deleting an
//!   administrator queues DeleteCredentials (which also revokes its sessions) and
//!   RemoveAdministratorGrants; a role change queues RevokeSessions and
//!   RemoveAdministratorGrants; a billing change queues RevokeSessions. RemoveAdministratorGrants
//!   is also delivered at once, after the commit and before the answer
//!   ([`effects::deliver_now`]), so no run of the administrator commits after the answer.
//! - **ResendInvite's `invite_expire_time`** is computed here as now + `auth.invite_ttl_secs`;
//!   the auth service sets the real expiry when the outbox delivers the invite, which is never
//!   earlier.
//! - **Deletion** removes the row (the audit log keeps the history), which frees the email for a
//!   new invite. A retried create whose administrator was deleted since answers NOT_FOUND.
//! - **`mfa_enrolled`** is known to this service only through the audit log: an allowed
//!   `/steward.auth.v1.AuthService/ConfirmMfaEnrollment` event recorded through
//!   RecordAuditEvents with the administrator as actor sets it; ResetAdministratorMfa clears it.
//! - **Audit.** Every mutation of this service is recorded with its outcome: successes in the
//!   same transaction as the change, refusals (PERMISSION_DENIED and FAILED_PRECONDITION as
//!   `RESULT_DENIED`) and failures (`RESULT_FAILED`) right after, in the caller's organization's
//!   log. A `validate_only` preview changes nothing and is not recorded. Service calls are
//!   recorded with actor `services/platform` (CreateOrganization) or `services/steward-auth`
//!   (ActivateAdministrator). A refused CreateOrganization has no organization whose log could
//!   hold it and is only logged. Lists are ordered by time, then by name.
//! - **Audit pages are keyset pages.** Events arrive late and out of order from other services'
//!   outboxes, so ListAuditEvents' page token holds the last served (create_time, name) and the
//!   query digest; the next page is what lies strictly after it, newest first. Events recorded
//!   while a client pages never repeat or hide events it has not seen yet.
//! - **Organizations** are created only with the service credential; the owner is an invited
//!   Administrator with billing and an empty `invited_by`. `request_id` is remembered per
//!   organization (administrators) or platform-wide (organizations) in [`IDEMPOTENCY`].
//! - **Billing.** The number and CVC are checked ([`card`]) and dropped; the table holds brand,
//!   last four, expiry, cardholder and who changed it. Billing access is re-checked against the
//!   database on read and write, since a token's `billing` claim may be stale.

pub mod administrator;
pub mod api;
pub mod audit;
pub mod audit_log;
pub mod billing;
pub mod card;
pub mod effects;
pub mod email;
pub mod entity;
pub mod filter;
pub mod migration;
pub mod organization;
pub mod role;
pub mod safeguards;
pub mod service_account;
pub mod state;

use std::sync::Arc;

use sea_orm_migration::prelude::*;
use steward_proto::admin::v1::admin_internal_service_server::AdminInternalServiceServer;
use steward_proto::admin::v1::admin_service_server::AdminServiceServer;
use steward_proto::admin::v1::organization_service_server::OrganizationServiceServer;
use steward_proto::admin::v1::role_service_server::RoleServiceServer;
use steward_proto::admin::v1::service_account_service_server::ServiceAccountServiceServer;
use steward_proto::audit::v1::audit_service_server::AuditServiceServer;
use steward_proto::billing::v1::billing_service_server::BillingServiceServer;
use steward_runtime::service::ServiceContext;
use steward_runtime::ApiResult;
use tonic::service::RoutesBuilder;

/// Name of the service: its SQLite file, its tables' prefix, its subcommand.
pub const SERVICE: &str = "admin";

/// gRPC services this crate serves (internal ones included): reported by health and reflection,
/// and what each listener routes ([`steward_runtime::routing`]).
pub const SERVICES: &[&str] = &[
    "steward.admin.v1.AdminService",
    "steward.admin.v1.OrganizationService",
    "steward.admin.v1.RoleService",
    "steward.admin.v1.ServiceAccountService",
    "steward.admin.v1.AdminInternalService",
    "steward.billing.v1.BillingService",
    "steward.audit.v1.AuditService",
];

/// Answers to CreateAdministrator (scoped by organization) and CreateOrganization (scoped
/// `platform`) by `request_id`.
pub const IDEMPOTENCY: steward_storage::idempotency::Idempotency =
    steward_storage::idempotency::Idempotency::with_legacy(
        "admin_idempotency_keys",
        migration::LEGACY_IDEMPOTENCY,
    );

/// The service's migrations, tracked in its own table so services can share a database.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(migration::CreateTables),
            Box::new(migration::adopt_idempotency()),
            Box::new(migration::CreateRoles),
            Box::new(migration::CreateServiceAccounts),
        ]
    }

    fn migration_table_name() -> DynIden {
        Alias::new("admin_migrations").into_iden()
    }
}

/// Registers the service's gRPC services on `routes` and spawns its background tasks.
pub async fn start(
    ctx: &ServiceContext,
    routes: &mut RoutesBuilder,
) -> ApiResult<Vec<tokio::task::JoinHandle<()>>> {
    // Capped at ten years so the conversion can never overflow.
    let ttl_secs = ctx.config.auth.invite_ttl_secs.min(10 * 365 * 24 * 3600);
    let invite_ttl = chrono::Duration::seconds(ttl_secs as i64);
    let state = Arc::new(state::State::new(
        ctx.db.clone(),
        ctx.clock.clone(),
        invite_ttl,
        ctx.peers.clone(),
        ctx.config.internal.caller_lease(),
    ));
    let max = ctx.config.server.max_message_bytes;
    routes.add_service(
        AdminServiceServer::new(api::admin::AdminApi::new(state.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    routes.add_service(
        OrganizationServiceServer::new(api::organization::OrganizationApi::new(state.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    routes.add_service(
        RoleServiceServer::new(api::role::RoleApi::new(state.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    routes.add_service(
        ServiceAccountServiceServer::new(api::service_account::ServiceAccountApi::new(
            state.clone(),
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    );
    routes.add_service(
        AdminInternalServiceServer::new(api::internal::InternalApi::new(state.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    routes.add_service(
        BillingServiceServer::new(api::billing::BillingApi::new(state.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    routes.add_service(
        AuditServiceServer::new(api::audit::AuditApi::new(state))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    let relay = effects::OUTBOX.with_lease(ctx.config.outbox.lease()).spawn_relay(
        ctx.db.clone(),
        effects::deliverer(ctx.peers.clone()),
        ctx.clock.clone(),
    );
    let expiry = IDEMPOTENCY.spawn_expiry(ctx.db.clone(), ctx.clock.clone());
    let mut tasks = vec![relay, expiry];
    tasks.extend(steward_runtime::metrics::spawn_outbox_backlog(effects::OUTBOX, ctx.db.clone()));
    Ok(tasks)
}
