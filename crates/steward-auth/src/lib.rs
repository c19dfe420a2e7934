//! The auth service: invite and reset links, passwords, sign-in with TOTP MFA,
//! sessions with rotating refresh tokens, and the EdDSA access tokens every service verifies
//! with the published JWKS.
//!
//! Decisions beyond the contract:
//! - **Links** (invite, reset) carry 128 random bits, base64url (22 characters); only their
//!   SHA-256 is stored. They expire after `auth.invite_ttl_secs` and are single-use; issuing any new link for an
//!   administrator deletes its earlier unused ones (so a resent invite kills the old link). An
//!   invite for an administrator that already set its password is ignored (logged), so a stray
//!   resend cannot be used to overwrite an active password.
//! - **Accepting an invite** calls `AdminInternalService.ActivateAdministrator` before the token is
//!   consumed: if the admin service is unreachable the answer is UNAVAILABLE and the link still
//!   works; if the administrator was deleted meanwhile the answer is "invalid credentials".
//! - **Sign-in** compares the email lowercased. An unknown email verifies the password against a
//!   dummy argon2 hash made at start-up, so it costs the same as a wrong password. Guesses are
//!   throttled per typed email and per client address (see [`throttle`]): a slot is reserved
//!   before any hashing and given back on success. A password matching administrators of
//!   several organizations without `organization` is FAILED_PRECONDITION with a
//!   `PreconditionFailure` of type `ORGANIZATION_REQUIRED` (the shared error type fixes the
//!   `ErrorInfo` reason to `FAILED_PRECONDITION`).
//! - **MFA**: a challenge lives 5 minutes and dies after 5 attempts (taken atomically, so
//!   parallel guesses cannot exceed them); at most 3 are open per administrator. Each guess is
//!   admitted by [`throttle::Admission`] against the administrator (`mfa:{name}`, across
//!   challenges, cleared only by a successful second factor) and the client address. TOTP codes
//!   are accepted once: the service keeps the last accepted step and only accepts later steps.
//!   Recovery codes are 80-bit, shown once, stored as SHA-256 bound to the administrator. A
//!   session completed with TOTP has `amr: ["pwd","otp"]`, with a recovery code
//!   `["pwd","mfa"]`. The TOTP secret must be readable to check codes: it is stored sealed
//!   ([`sealed`], XChaCha20-Poly1305 under `auth.mfa_keys`). A pending enrolment expires after
//!   10 minutes. An administrator required to use MFA but not enrolled gets an enrolment-only
//!   session: no refresh token, lasting one access-token lifetime; after confirming, it signs in
//!   again.
//! - **Sessions**: a sign-in starts a session (`sid`) with an absolute lifetime of
//!   `auth.refresh_token_ttl_secs`. Refresh rotates the refresh token, re-reads the administrator
//!   (new role and billing go into the new token; a deleted administrator's session is revoked),
//!   and presenting a used refresh token revokes the session. **Access tokens cannot be revoked
//!   before they expire** (`auth.access_token_ttl_secs`, 10 minutes by default): services verify
//!   them locally. Sign-out, password change (other sessions), password reset (all sessions),
//!   MFA reset and the internal revocations act on sessions, i.e. on refresh.
//! - **Password reset** requests answer at once, the same way whether or not the email exists:
//!   each counts against the typed email (three an hour) and the client address (thirty an
//!   hour) and, within those limits, queues a message in `auth_mail_outbox`; the lookup and the
//!   email happen in the mail relay (see [`mail_queue`]). A request over a limit answers the same
//!   and sends nothing.
//! - **Invites and reset emails** are queued in the transaction of the change and sent after it
//!   commits by a relay with retries (at-least-once); the link is issued on delivery, so no
//!   token is stored in clear and no SMTP conversation holds a transaction open.
//! - **Housekeeping**: see [`janitor`].
//! - **Audit**: see [`audit`]; events go through the `auth_outbox` to the admin service.
//! - **Email**: see [`mailer`]. Links never appear in logs, also not in dev mode: the dev log
//!   line names the `.eml` file holding the link.
//!
//! Layout: [`api`] holds the two gRPC services, thin adapters over the domain modules named
//! after what they act on: [`invite`] (IssueInvite, AcceptInvite), [`session`] (SignIn,
//! VerifyMfa, RefreshSession, SignOut, RevokeSessions), [`credential`] (ChangePassword,
//! RequestPasswordReset, ResetPassword, DeleteCredentials) and [`mfa`] (MFA enrolment, ResetMfa).
//! They share [`state`]; [`password`] (argon2id, strength), [`totp`], [`sealed`], [`secrets`],
//! [`jwt`] and [`throttle`] are their building blocks.

pub mod api;
pub mod api_key;
pub mod audit;
pub mod credential;
pub mod entity;
pub mod invite;
pub mod janitor;
pub mod jwt;
pub mod keys;
pub mod mail_queue;
pub mod mailer;
pub mod mfa;
pub mod migration;
pub mod password;
pub mod rotation;
pub mod sealed;
pub mod secrets;
pub mod session;
pub mod state;
#[cfg(test)]
mod testing;
pub mod throttle;
pub mod totp;

use std::sync::Arc;

use sea_orm_migration::prelude::*;
use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
use steward_proto::auth::v1::auth_internal_service_server::AuthInternalServiceServer;
use steward_proto::auth::v1::auth_service_server::AuthServiceServer;
use steward_runtime::service::ServiceContext;
use steward_runtime::ApiResult;
use tonic::service::RoutesBuilder;

/// Name of the service: its SQLite file, its tables' prefix, its subcommand.
pub const SERVICE: &str = "auth";

/// gRPC services this crate serves (internal ones included): reported by health and reflection,
/// and what each listener routes ([`steward_runtime::routing`]).
pub const SERVICES: &[&str] =
    &["steward.auth.v1.AuthService", "steward.auth.v1.AuthInternalService"];

/// Calls allowed to wait for a hashing slot before RESOURCE_EXHAUSTED.
const HASH_QUEUE: usize = 64;

/// Answers to the internal calls by outbox `idempotency_key` (scope `internal`).
pub const IDEMPOTENCY: steward_storage::idempotency::Idempotency =
    steward_storage::idempotency::Idempotency::with_legacy(
        "auth_idempotency_keys",
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
            Box::new(migration::CreateOutbox),
            Box::new(migration::CreateMailOutbox),
            Box::new(migration::adopt_idempotency()),
            Box::new(migration::AddRefreshFamilies),
        ]
    }

    fn migration_table_name() -> DynIden {
        Alias::new("auth_migrations").into_iden()
    }
}

/// Registers the service's gRPC services on `routes` and spawns its background tasks.
pub async fn start(
    ctx: &ServiceContext,
    routes: &mut RoutesBuilder,
) -> ApiResult<Vec<tokio::task::JoinHandle<()>>> {
    let keys = keys::load_all(&ctx.config.auth)?;
    let signer = jwt::Signer::new(keys, &ctx.config.auth)?;
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let workers = ctx.config.auth.hashing_threads(cores);
    if workers > cores {
        tracing::warn!(workers, cores, "auth.hashing_threads exceeds the cores: sign-in bursts will take every core from the other calls");
    }
    tracing::info!(workers, cores, "password hashing threads");
    let hasher = password::Hasher::new(workers, HASH_QUEUE).await?;
    let mailer = mailer::Mailer::from_config(&ctx.config)?;
    let state = Arc::new(state::State {
        db: ctx.db.clone(),
        clock: ctx.clock.clone(),
        config: ctx.config.auth.clone(),
        signer,
        hasher,
        mailer,
        sealer: sealed::Sealer::load(&ctx.config.auth)?,
        admin: AdminInternalServiceClient::new(ctx.peers.internal(&ctx.peers.admin)),
        looked_up: steward_runtime::lease::Leases::new(ctx.config.internal.caller_lease()),
        refreshes: rotation::Refreshes::new(&ctx.db, ctx.clock.clone()),
    });
    sealed::seal_legacy(&state.db, &state.sealer).await?;
    let limit = ctx.config.server.max_message_bytes;
    routes.add_service(
        AuthServiceServer::new(api::auth::AuthApi::new(state.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
    );
    let mail = mail_queue::OUTBOX.with_lease(ctx.config.outbox.lease()).spawn_relay(
        ctx.db.clone(),
        mail_queue::deliver(state.clone()),
        ctx.clock.clone(),
    );
    routes.add_service(
        AuthInternalServiceServer::new(api::internal::InternalApi::new(state))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
    );
    let relay = audit::OUTBOX.with_lease(ctx.config.outbox.lease()).spawn_relay(
        ctx.db.clone(),
        steward_runtime::audit::deliver(ctx.peers.clone()),
        ctx.clock.clone(),
    );
    let janitor = janitor::spawn(ctx.db.clone(), ctx.clock.clone());
    let expiry = IDEMPOTENCY.spawn_expiry(ctx.db.clone(), ctx.clock.clone());
    let mut tasks = vec![relay, mail, janitor, expiry];
    for outbox in [audit::OUTBOX, mail_queue::OUTBOX] {
        tasks.extend(steward_runtime::metrics::spawn_outbox_backlog(outbox, ctx.db.clone()));
    }
    Ok(tasks)
}
