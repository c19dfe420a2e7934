//! The caller as it is now. An access token outlives a demotion or deletion by its lifetime, so
//! every call (mutations, RunCommand, reads, access checks) asks the admin service for the
//! caller's current role instead of trusting the one in the token.

use std::time::Instant;

use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
use steward_proto::admin::v1::administrator::State as AdminState;
use steward_proto::admin::v1::{LookupAdministratorRequest, LookupServiceAccountRequest};
use steward_runtime::authn::{AdministratorCall, Need, Principal, RequestContext};
use steward_runtime::claims::Role;
use steward_runtime::names::ServiceAccountName;
use steward_runtime::roles::{self, Permission, Permissions};
use steward_runtime::{ApiError, ApiResult};

use crate::{audit, State};

/// An administrator (or service account) as the admin service knows it now.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Current {
    pub role: Role,
    pub active: bool,
    /// What its role and billing flag hold now.
    pub permissions: Permissions,
}

/// Whether an answer about an account may come from the caller lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Reads: an answer kept for its lease ([`steward_runtime::lease`]: the admin service waits
    /// it out after every write that changes it, and says how long in each answer), so a caller
    /// making many calls costs one lookup per lease, never an answer older than a change that
    /// has returned.
    Lease,
    /// Mutations, RunCommand and grantee checks: asked on the call itself, as the admin service
    /// re-checks its own mutations inside their transaction, so a change racing the call is
    /// seen if it committed before the check.
    Fresh,
}

/// Looks `administrator` up through `AdminInternalService.LookupAdministrator`; `None` when it
/// does not exist (or has been deleted). Only active administrators are kept for a lease.
pub(crate) async fn lookup(
    state: &State,
    administrator: &str,
    reuse: Reuse,
) -> ApiResult<Option<Current>> {
    let key = (administrator.to_string(), String::new());
    if reuse == Reuse::Lease {
        if let Some(found) = state.callers.get(&key) {
            return Ok(Some(found));
        }
    }
    let started = Instant::now();
    let (found, lease) = lookup_now(state, administrator).await?;
    if let Some(found) = found.filter(|f| f.active) {
        state.callers.put_within(key, started, lease, found);
    }
    Ok(found)
}

/// [`lookup`] without the lease; with the lease the admin service grants its answer.
async fn lookup_now(
    state: &State,
    administrator: &str,
) -> ApiResult<(Option<Current>, std::time::Duration)> {
    let mut client = AdminInternalServiceClient::new(state.peers.internal(&state.peers.admin));
    let (found, role_permissions, lease) = match client
        .lookup_administrator(LookupAdministratorRequest { name: administrator.to_string() })
        .await
    {
        Ok(response) => {
            let response = response.into_inner();
            let lease = lease_of(response.caller_lease_ms);
            (response.administrator, response.role_permissions, lease)
        }
        Err(status) if status.code() == tonic::Code::NotFound => {
            (None, Vec::new(), std::time::Duration::ZERO)
        }
        Err(status) => return Err(status.into()),
    };
    let Some(found) = found else { return Ok((None, lease)) };
    if found.name != administrator {
        return Ok((None, lease));
    }
    let role = Role::from_proto(found.role).ok_or_else(|| {
        ApiError::internal(format!("administrator {administrator} has no valid role"))
    })?;
    let current = Current {
        role,
        active: found.state == AdminState::Active as i32,
        permissions: roles::of_role(role, role_permissions.iter().map(String::as_str))
            .with_billing(found.billing),
    };
    Ok((Some(current), lease))
}

/// The lease an admin service answer grants (`caller_lease_ms`; 0 from versions before leases,
/// which do not wait).
fn lease_of(millis: u32) -> std::time::Duration {
    std::time::Duration::from_millis(u64::from(millis))
}

/// The caller with its current permissions: what both the token and the account hold now, each
/// at the narrower scope, so neither a demotion nor a promotion after the token was issued
/// widens what the token may do. `PERMISSION_DENIED` with `CALLER_DELETED` when the account is
/// gone (or no longer active), `ROLE_REQUIRED` or `BILLING_REQUIRED` when the caller no longer
/// holds the permission `need` names (the same meaning as in the admin service). Asked on the
/// call itself ([`Reuse::Fresh`]): for mutations and RunCommand; reads use [`for_reading`].
pub(crate) async fn current(state: &State, p: &Principal, need: Need) -> ApiResult<Principal> {
    resolve(state, p, need, Reuse::Fresh).await
}

/// [`current`], with the answer's reuse chosen.
async fn resolve(state: &State, p: &Principal, need: Need, reuse: Reuse) -> ApiResult<Principal> {
    let found = if p.is_service_account() {
        // Both the account and the API key its token came from must still exist.
        let account = ServiceAccountName::parse("caller", &p.administrator)?;
        lookup_account_role(state, &account, &p.client_id, reuse)
            .await?
            .map(|(role, permissions)| Current { role, active: true, permissions })
    } else {
        lookup(state, &p.administrator, reuse).await?
    };
    let Some(now) = found else {
        return Err(ApiError::denied("CALLER_DELETED", "the caller's account no longer exists"));
    };
    if !now.active {
        return Err(ApiError::denied("CALLER_DELETED", "the caller's account is not active"));
    }
    let permissions = p.permissions.intersect(&now.permissions);
    if let Some(refusal) = need.refusal(&permissions) {
        return Err(refusal);
    }
    Ok(Principal { role: now.role, permissions, ..p.clone() })
}

/// The caller for a read needing `permission`, as it is now: every read re-checks the caller's
/// account, so a deleted, deactivated or demoted administrator's unexpired token reads nothing
/// more than its current role allows (a deleted Command Runner's token reads nothing at all,
/// even before its grants and runs are gone). The answer may come from the caller lease
/// ([`Reuse::Lease`]).
pub(crate) async fn for_reading(
    state: &State,
    p: &Principal,
    permission: Permission,
) -> ApiResult<Principal> {
    resolve(state, p, Need::Permission(permission), Reuse::Lease).await
}

/// The caller of a mutation aimed at `target` (a name already parsed): refused outside its
/// organization, then re-checked as it is now ([`current_audited`]). Returns the current caller
/// and the call's context, for the audit record of the change.
pub(crate) async fn for_mutation(
    state: &State,
    call: AdministratorCall,
    target: &str,
    need: Need,
) -> ApiResult<(Principal, RequestContext)> {
    call.principal.check_organization(target)?;
    let p = current_audited(state, &call.context, &call.principal, target, need).await?;
    Ok((p, call.context))
}

/// [`current`] for a mutation aimed at `target`; a refusal is queued for the audit log like the
/// layer's refusals.
async fn current_audited(
    state: &State,
    ctx: &RequestContext,
    p: &Principal,
    target: &str,
    need: Need,
) -> ApiResult<Principal> {
    let result = current(state, p, need).await;
    if let Err(err @ ApiError::PermissionDenied { .. }) = &result {
        let now = state.now();
        if let Err(audit_err) =
            audit::record(&state.db, &p.organization, ctx, &p.administrator, target, Err(err), now)
                .await
        {
            tracing::error!(error = %audit_err, target, "cannot queue the audit event of a refusal");
        }
        tracing::info!(actor = %p.administrator, method = %ctx.method, code = ?err.code(), "caller no longer allowed");
    }
    result
}

/// Whether the caller holds `permission` over the whole organization, rather than only over
/// the commands granted to it and its own runs.
pub(crate) fn everywhere(p: &Principal, permission: Permission) -> bool {
    p.permissions.everywhere(permission)
}

/// A service account's role and what it holds now (never what only people hold); `None` when
/// the account does not exist, or `key` is given and no longer exists. Access checks about an
/// account give no key; a caller's re-check gives its token's.
pub(crate) async fn lookup_account_role(
    state: &State,
    account: &ServiceAccountName,
    key: &str,
    reuse: Reuse,
) -> ApiResult<Option<(Role, Permissions)>> {
    let lease_key = (account.to_string(), key.to_string());
    if reuse == Reuse::Lease {
        if let Some(found) = state.callers.get(&lease_key) {
            return Ok(Some((found.role, found.permissions)));
        }
    }
    let started = Instant::now();
    let (found, lease) = lookup_account_now(state, account, key).await?;
    if let Some((role, permissions)) = found {
        let current = Current { role, active: true, permissions };
        state.callers.put_within(lease_key, started, lease, current);
    }
    Ok(found)
}

/// [`lookup_account_role`] without the lease; with the lease the admin service grants.
async fn lookup_account_now(
    state: &State,
    account: &ServiceAccountName,
    key: &str,
) -> ApiResult<(Option<(Role, Permissions)>, std::time::Duration)> {
    let mut client = AdminInternalServiceClient::new(state.peers.internal(&state.peers.admin));
    let request = LookupServiceAccountRequest { name: account.to_string(), key: key.to_string() };
    let response = match client.lookup_service_account(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            return Ok((None, std::time::Duration::ZERO))
        }
        Err(status) => return Err(status.into()),
    };
    let lease = lease_of(response.caller_lease_ms);
    let Some(found) = response.service_account else { return Ok((None, lease)) };
    let role = Role::from_proto(found.role)
        .ok_or_else(|| ApiError::internal(format!("{} has no valid role", found.name)))?;
    let held = roles::of_role(role, response.role_permissions.iter().map(String::as_str));
    Ok((Some((role, held.with_billing(found.billing).without(roles::PEOPLE_ONLY))), lease))
}

/// An administrator's role and what it holds now; `None` when it does not exist.
pub(crate) async fn lookup_role(
    state: &State,
    administrator: &str,
    reuse: Reuse,
) -> ApiResult<Option<(Role, Permissions)>> {
    Ok(lookup(state, administrator, reuse).await?.map(|c| (c.role, c.permissions)))
}
