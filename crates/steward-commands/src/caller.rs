//! The caller as it is now. An access token outlives a demotion or deletion by its lifetime, so
//! every call (mutations, RunCommand, reads, access checks) asks the admin service for the
//! caller's current role instead of trusting the one in the token.

use std::time::Duration;

use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
use steward_proto::admin::v1::administrator::State as AdminState;
use steward_proto::admin::v1::{LookupAdministratorRequest, LookupServiceAccountRequest};
use steward_runtime::authn::{AdministratorCall, Need, Principal, RequestContext};
use steward_runtime::claims::Role;
use steward_runtime::lease;
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

pub(crate) use steward_runtime::lease::Reuse;

/// Looks `administrator` up through `AdminInternalService.LookupAdministrator`; `None` when it
/// does not exist (or has been deleted). With [`Reuse::Lease`] (reads) the answer may be one
/// kept for the caller lease the admin service grants with it and waits out after every write
/// that narrows it ([`steward_runtime::lease`]); mutations, RunCommand and grantee checks ask
/// [`Reuse::Fresh`], as the admin service re-checks its own mutations inside their
/// transaction. Only active administrators are kept.
pub(crate) async fn lookup(
    state: &State,
    administrator: &str,
    reuse: Reuse,
) -> ApiResult<Option<Current>> {
    let key = (administrator.to_string(), String::new());
    state
        .callers
        .read_through(key, reuse, || async {
            let (found, lease) = lookup_now(state, administrator).await?;
            let kept = if found.is_some_and(|f| f.active) { lease } else { Duration::ZERO };
            Ok((found, kept))
        })
        .await
}

/// [`lookup`] without the lease; with the lease the admin service grants its answer.
async fn lookup_now(state: &State, administrator: &str) -> ApiResult<(Option<Current>, Duration)> {
    let mut client = AdminInternalServiceClient::new(state.peers.internal(&state.peers.admin));
    let (found, role_permissions, lease) = match client
        .lookup_administrator(LookupAdministratorRequest { name: administrator.to_string() })
        .await
    {
        Ok(response) => {
            let response = response.into_inner();
            let lease = lease::granted(response.caller_lease_ms);
            (response.administrator, response.role_permissions, lease)
        }
        Err(status) if status.code() == tonic::Code::NotFound => (None, Vec::new(), Duration::ZERO),
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
    let found = state
        .callers
        .read_through(lease_key, reuse, || async {
            let (found, lease) = lookup_account_now(state, account, key).await?;
            let current =
                found.map(|(role, permissions)| Current { role, active: true, permissions });
            Ok::<_, ApiError>((current, if current.is_some() { lease } else { Duration::ZERO }))
        })
        .await?;
    Ok(found.map(|c| (c.role, c.permissions)))
}

/// [`lookup_account_role`] without the lease; with the lease the admin service grants.
async fn lookup_account_now(
    state: &State,
    account: &ServiceAccountName,
    key: &str,
) -> ApiResult<(Option<(Role, Permissions)>, Duration)> {
    let mut client = AdminInternalServiceClient::new(state.peers.internal(&state.peers.admin));
    let request = LookupServiceAccountRequest { name: account.to_string(), key: key.to_string() };
    let response = match client.lookup_service_account(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => return Ok((None, Duration::ZERO)),
        Err(status) => return Err(status.into()),
    };
    let lease = lease::granted(response.caller_lease_ms);
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
