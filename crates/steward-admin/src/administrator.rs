//! Administrators: the console's "Administrators" window (AdminService), the caller's own
//! profile, and the auth service's LookupAdministrator and ActivateAdministrator. Every change
//! starts its transaction with the organization lock ([`lock_org`]); the AdminService changes
//! then re-check the caller ([`caller_row`]), and updates and deletes are held to the
//! [`crate::safeguards`].

use std::collections::HashSet;
use std::sync::Arc;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, IntoActiveModel, JoinType,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use steward_proto::admin::v1::*;
use steward_runtime::authn::{Principal, RequestContext};
use steward_runtime::roles::Permission;
use steward_runtime::{names, ApiError, ApiResult};
use steward_storage::idempotency::Key;

use crate::audit::{Auditor, AUTH_ACTOR};
use crate::billing::RECENT_AUTHENTICATION_SECS;
use crate::effects::{deliver_now, enqueue, enqueue_urgent, Effect};
use crate::email::Email;
use crate::entity::{administrator, organization};
use crate::filter::{admin_filter, admin_order, AdminOrder, AdminTerm};
use crate::safeguards::violations;
use crate::state::*;
use crate::IDEMPOTENCY;

/// Most names accepted by one BatchDeleteAdministrators call.
pub const MAX_BATCH_DELETE: usize = 100;

/// Field-mask paths UpdateAdministrator accepts.
const UPDATABLE: &[&str] = &["role", "billing", "mfa_required", "whats_new"];

/// Expands and checks an UpdateAdministrator mask.
fn update_paths(mask: Option<&prost_types::FieldMask>) -> ApiResult<HashSet<&'static str>> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        return Err(ApiError::invalid("update_mask", "name at least one field to update"));
    }
    let mut selected = HashSet::new();
    for path in paths {
        if path == "*" {
            selected.extend(UPDATABLE.iter().copied());
        } else if path == "role_name" {
            selected.insert("role");
        } else if let Some(known) = UPDATABLE.iter().find(|p| **p == path) {
            selected.insert(*known);
        } else {
            return Err(ApiError::invalid(
                "update_mask",
                format!(
                    "`{path}` cannot be updated; allowed: role (or role_name), billing, \
                     mfa_required, whats_new, *"
                ),
            ));
        }
    }
    Ok(selected)
}

/// Billing access may only be handed out by an administrator who holds it: otherwise an
/// Administrator without billing could grant it to itself (or to a new account it controls) and
/// reach the payment card. Removing billing needs no such right (it takes access away, and the
/// LAST_BILLING_ADMINISTRATOR safeguard still applies). Like changing the card, granting billing
/// needs a recent sign-in, so a stolen access token cannot hand billing to an account its thief
/// controls.
fn may_grant_billing(
    caller: &CallerRow,
    p: &Principal,
    now: chrono::DateTime<chrono::Utc>,
) -> ApiResult<()> {
    if !caller.billing {
        return Err(ApiError::denied(
            "BILLING_REQUIRED",
            "only administrators with billing access may grant billing access",
        ));
    }
    p.require_recent_authentication(now, RECENT_AUTHENTICATION_SECS)
}

/// ALREADY_EXISTS for a second administrator with the same email in one organization, whether
/// found by the check or by the unique index under a concurrent create.
fn duplicate_email() -> ApiError {
    ApiError::AlreadyExists(
        "an administrator with this email already exists in the organization".into(),
    )
}

/// CreateAdministrator: invites a new administrator into the caller's organization (the invite
/// is queued in the outbox); a repeated `request_id` answers the administrator it created.
pub async fn create(
    state: &State,
    p: &Principal,
    audit: &Auditor,
    req: CreateAdministratorRequest,
) -> ApiResult<CreateAdministratorResponse> {
    p.check_organization(&req.parent)?;
    let org_id = parse_org("parent", &req.parent)?;
    let input =
        req.administrator.ok_or_else(|| ApiError::invalid("administrator", "is required"))?;
    let email = Email::parse("administrator.email", &input.email)?;
    let role = requested_role(&input)?;
    check_request_id(&req.request_id)?;
    let now = state.now();

    let txn = state.begin_write().await?;
    lock_org(&txn, &org_id).await?;
    let caller = caller_row(&txn, p, Need::Permission(Permission::AdministratorsCreate)).await?;
    if let Assigned::Custom(name) = &role {
        p.check_organization(name.as_str())?;
    }
    may_assign(&txn, &caller, &role).await?;
    if input.billing {
        may_grant_billing(&caller, p, now)?;
    }
    let key = Key::new("create_administrator", &req.parent, &req.request_id);
    if let Some(previous) = IDEMPOTENCY.recall(&txn, key.as_ref()).await? {
        let (_, admin_id) = parse_admin("request_id", &previous)?;
        let existing = administrator(&txn, &org_id, &admin_id).await?;
        return Ok(CreateAdministratorResponse { administrator: Some(admin_to_proto(&existing)) });
    }
    let duplicate = administrator::Entity::find()
        .filter(administrator::Column::OrganizationId.eq(org_id.as_str()))
        .filter(administrator::Column::EmailLower.eq(email.lower()))
        .one(&txn)
        .await?;
    if duplicate.is_some() {
        return Err(duplicate_email());
    }
    let id = names::new_id();
    let name = admin_name(&org_id, &id);
    let row = administrator::ActiveModel {
        id: Set(id),
        organization_id: Set(org_id.clone()),
        email: Set(email.as_str().to_string()),
        email_lower: Set(email.lower()),
        role: Set(role.stored()),
        billing: Set(input.billing),
        mfa_required: Set(input.mfa_required),
        mfa_enrolled: Set(false),
        whats_new: Set(input.whats_new),
        state: Set(administrator::STATE_INVITED.to_string()),
        invited_by: Set(p.administrator.clone()),
        revision: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
        activated_at: Set(None),
    }
    .insert(&txn)
    .await
    .map_err(|e| if is_unique_violation(&e) { duplicate_email() } else { e.into() })?;
    IDEMPOTENCY.record(&txn, key.as_ref(), &name, now).await?;
    let org = organization(&txn, &org_id).await?;
    enqueue(
        &txn,
        &Effect::IssueInvite {
            administrator: name.clone(),
            email: row.email.clone(),
            organization_display_name: org.display_name,
            inviter_email: caller.contact,
        },
        now,
    )
    .await?;
    audit.allowed(&txn, &name, &format!("created with role {}", role.name()), now).await?;
    txn.commit().await?;
    tracing::info!(administrator = %name, role = %role.name(), "administrator created");
    Ok(CreateAdministratorResponse { administrator: Some(admin_to_proto(&row)) })
}

/// GetAdministrator: one administrator of the caller's organization, for Administrators.
pub async fn get(
    state: &State,
    p: &Principal,
    req: GetAdministratorRequest,
) -> ApiResult<GetAdministratorResponse> {
    p.check_organization(&req.name)?;
    let (org_id, admin_id) = parse_admin("name", &req.name)?;
    caller_may_read(state, p, Need::Permission(Permission::AdministratorsRead)).await?;
    let row = state.administrator(&org_id, &admin_id).await?;
    Ok(GetAdministratorResponse { administrator: Some(admin_to_proto(&row)) })
}

/// ListAdministrators: the caller's organization, for Administrators; filtered, ordered, offset
/// pages.
pub async fn list(
    state: &State,
    p: &Principal,
    req: ListAdministratorsRequest,
) -> ApiResult<ListAdministratorsResponse> {
    p.check_organization(&req.parent)?;
    let org_id = parse_org("parent", &req.parent)?;
    caller_may_read(state, p, Need::Permission(Permission::AdministratorsRead)).await?;
    let terms = admin_filter(&req.filter)?;
    let (order, desc) = admin_order(&req.order_by)?;
    let size = names::page_size(req.page_size)?;
    let digest = query_digest(&[&req.parent, req.filter.trim(), req.order_by.trim()]);
    let offset = names::decode_page_token(&req.page_token, &digest)?;

    let mut condition =
        Condition::all().add(administrator::Column::OrganizationId.eq(org_id.as_str()));
    for term in terms {
        condition = condition.add(match term {
            AdminTerm::Role(role) => administrator::Column::Role.eq(role),
            AdminTerm::State(state) => administrator::Column::State.eq(state),
            AdminTerm::Billing(b) => administrator::Column::Billing.eq(b),
            AdminTerm::MfaRequired(b) => administrator::Column::MfaRequired.eq(b),
        });
    }
    let query = administrator::Entity::find().filter(condition);
    // The total and the page are read once per organization revision (see `AtRevision`).
    let revision = state.revisions.get(org_id.clone()).await?;
    let counted = (org_id.clone(), req.filter.trim().to_string());
    let total = match revision.and_then(|r| state.totals.get(&counted, r)) {
        Some(total) => total,
        None => {
            let total = query.clone().count(&state.db).await?;
            if let Some(revision) = revision {
                state.totals.put(counted, revision, total);
            }
            total
        }
    };
    let paged =
        (org_id, req.filter.trim().to_string(), req.order_by.trim().to_string(), offset, size);
    let page = match revision.and_then(|r| state.pages.get(&paged, r)) {
        Some(page) => page,
        None => {
            let key = match order {
                AdminOrder::Email => administrator::Column::EmailLower,
                AdminOrder::CreateTime => administrator::Column::CreatedAt,
            };
            let query = if desc {
                query.order_by_desc(key).order_by_desc(administrator::Column::Id)
            } else {
                query.order_by_asc(key).order_by_asc(administrator::Column::Id)
            };
            let rows = query.offset(offset).limit(size).all(&state.db).await?;
            let page = Arc::new(rows.iter().map(admin_to_proto).collect::<Vec<_>>());
            if let Some(revision) = revision.filter(|_| page.len() <= MAX_REMEMBERED_PAGE) {
                state.pages.put(paged, revision, page.clone());
            }
            page
        }
    };
    let next = offset + page.len() as u64;
    Ok(ListAdministratorsResponse {
        administrators: page.as_ref().clone(),
        next_page_token: if next < total {
            names::encode_page_token(next, &digest)
        } else {
            String::new()
        },
        total_size: i32::try_from(total).unwrap_or(i32::MAX),
    })
}

/// UpdateAdministrator: the masked fields, under the safeguards; a role or billing change
/// queues the revocation of the administrator's sessions, a role change also the removal of its
/// grants.
pub async fn update(
    state: &State,
    p: &Principal,
    audit: &Auditor,
    req: UpdateAdministratorRequest,
) -> ApiResult<UpdateAdministratorResponse> {
    let input =
        req.administrator.ok_or_else(|| ApiError::invalid("administrator", "is required"))?;
    p.check_organization(&input.name)?;
    let (org_id, admin_id) = parse_admin("administrator.name", &input.name)?;
    let paths = update_paths(req.update_mask.as_ref())?;
    let new_role = if paths.contains("role") { Some(requested_role(&input)?) } else { None };
    let now = state.now();

    let txn = state.begin_write().await?;
    lock_org(&txn, &org_id).await?;
    let caller = caller_row(&txn, p, Need::Permission(Permission::AdministratorsUpdate)).await?;
    let current = administrator(&txn, &org_id, &admin_id).await?;
    may_act_on(&txn, &caller, &current).await?;
    if let Some(role) = &new_role {
        if let Assigned::Custom(name) = role {
            p.check_organization(name.as_str())?;
        }
        may_assign(&txn, &caller, role).await?;
    }
    if !input.etag.is_empty() && input.etag != admin_etag(&current) {
        return Err(ApiError::Aborted(format!(
            "{} was changed since it was read; get it again",
            input.name
        )));
    }
    let mut next = current.clone();
    if let Some(role) = &new_role {
        next.role = role.stored();
    }
    if paths.contains("billing") {
        next.billing = input.billing;
    }
    if paths.contains("mfa_required") {
        next.mfa_required = input.mfa_required;
    }
    if paths.contains("whats_new") {
        next.whats_new = input.whats_new;
    }
    let role_changed = next.role != current.role;
    let billing_changed = next.billing != current.billing;
    if billing_changed && next.billing {
        may_grant_billing(&caller, p, now)?;
    }
    let mut changed = Vec::new();
    for (field, differs) in [
        ("role", role_changed),
        ("billing", billing_changed),
        ("mfa_required", next.mfa_required != current.mfa_required),
        ("whats_new", next.whats_new != current.whats_new),
    ] {
        if differs {
            changed.push(field);
        }
    }
    if changed.is_empty() {
        // Nothing to change, perhaps because a concurrent call just changed it: this answer
        // too says the change holds, so it waits out the leases that call is waiting out.
        txn.rollback().await?;
        state.wait_out_leases().await;
        return Ok(UpdateAdministratorResponse { administrator: Some(admin_to_proto(&current)) });
    }
    if role_changed || billing_changed {
        let before = members(&txn, &org_id).await?;
        let after: Vec<_> = before
            .iter()
            .map(|m| if m.name == input.name { member(&next) } else { m.clone() })
            .collect();
        let broken = violations(&org_name(&org_id), &caller.name, &before, &after, &[]);
        if !broken.is_empty() {
            return Err(ApiError::FailedPrecondition(broken));
        }
    }
    let mut active = current.into_active_model();
    active.role = Set(next.role.clone());
    active.billing = Set(next.billing);
    active.mfa_required = Set(next.mfa_required);
    active.whats_new = Set(next.whats_new);
    active.revision = Set(next.revision + 1);
    active.updated_at = Set(now);
    let saved = active.update(&txn).await?;
    if role_changed || billing_changed {
        let reason = if role_changed { "role changed" } else { "billing access changed" };
        enqueue(
            &txn,
            &Effect::RevokeSessions { administrator: input.name.clone(), reason: reason.into() },
            now,
        )
        .await?;
    }
    let mut urgent = Vec::new();
    if role_changed {
        let effect = Effect::RemoveGrants { administrator: input.name.clone() };
        urgent.push(enqueue_urgent(&txn, &effect, now).await?);
    }
    let reason = format!("changed {}", changed.join(", "));
    audit.allowed(&txn, &input.name, &reason, now).await?;
    // Leases first: a grant created by a call that re-checked before this commit is then
    // committed (or refused) before the grants are removed.
    state.commit_narrowing(txn).await?;
    deliver_now(&state.peers, urgent).await;
    tracing::info!(administrator = %input.name, fields = %changed.join(","), "administrator updated");
    Ok(UpdateAdministratorResponse { administrator: Some(admin_to_proto(&saved)) })
}

/// BatchDeleteAdministrators: deletes all the named administrators or none, under the
/// safeguards; `validate_only` answers without writing anything.
pub async fn batch_delete(
    state: &State,
    p: &Principal,
    audit: &Auditor,
    req: BatchDeleteAdministratorsRequest,
) -> ApiResult<BatchDeleteAdministratorsResponse> {
    p.check_organization(&req.parent)?;
    let org_id = parse_org("parent", &req.parent)?;
    if req.names.is_empty() || req.names.len() > MAX_BATCH_DELETE {
        return Err(ApiError::invalid("names", "name 1 to 100 administrators"));
    }
    let mut wanted: Vec<String> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for (i, name) in req.names.iter().enumerate() {
        p.check_organization(name)?;
        let (name_org, admin_id) = parse_admin(&format!("names[{i}]"), name)?;
        if name_org != org_id {
            return Err(ApiError::invalid(format!("names[{i}]"), "must belong to `parent`"));
        }
        if !wanted.contains(name) {
            wanted.push(name.clone());
            ids.push(admin_id);
        }
    }
    let now = state.now();

    let txn = state.begin_write().await?;
    lock_org(&txn, &org_id).await?;
    let caller = caller_row(&txn, p, Need::Permission(Permission::AdministratorsDelete)).await?;
    let rows = administrator::Entity::find()
        .filter(administrator::Column::OrganizationId.eq(org_id.as_str()))
        .filter(administrator::Column::Id.is_in(ids.clone()))
        .all(&txn)
        .await?;
    let mut ordered = Vec::with_capacity(ids.len());
    for (id, name) in ids.iter().zip(&wanted) {
        let row =
            rows.iter().find(|r| &r.id == id).ok_or_else(|| ApiError::NotFound(name.clone()))?;
        may_act_on(&txn, &caller, row).await?;
        ordered.push(row.clone());
    }
    let before = members(&txn, &org_id).await?;
    let after: Vec<_> = before.iter().filter(|m| !wanted.contains(&m.name)).cloned().collect();
    let broken = violations(&org_name(&org_id), &p.administrator, &before, &after, &wanted);
    if !broken.is_empty() {
        return Err(ApiError::FailedPrecondition(broken));
    }
    let answer = BatchDeleteAdministratorsResponse {
        administrators: ordered.iter().map(admin_to_proto).collect(),
    };
    if req.validate_only {
        // Dropping the transaction rolls back the lock bump: nothing is written.
        return Ok(answer);
    }
    administrator::Entity::delete_many()
        .filter(administrator::Column::OrganizationId.eq(org_id.as_str()))
        .filter(administrator::Column::Id.is_in(ids))
        .exec(&txn)
        .await?;
    let mut urgent = Vec::with_capacity(wanted.len());
    for name in &wanted {
        enqueue(&txn, &Effect::DeleteCredentials { administrator: name.clone() }, now).await?;
        let effect = Effect::RemoveGrants { administrator: name.clone() };
        urgent.push(enqueue_urgent(&txn, &effect, now).await?);
        audit.allowed(&txn, name, "deleted", now).await?;
    }
    // Leases first: a grant created by a call that re-checked before this commit is then
    // committed (or refused) before the grants are removed.
    state.commit_narrowing(txn).await?;
    deliver_now(&state.peers, urgent).await;
    tracing::info!(organization = %req.parent, count = wanted.len(), "administrators deleted");
    Ok(answer)
}

/// ResendInvite: queues the invite again for an administrator that has not accepted yet.
pub async fn resend_invite(
    state: &State,
    p: &Principal,
    audit: &Auditor,
    req: ResendInviteRequest,
) -> ApiResult<ResendInviteResponse> {
    p.check_organization(&req.name)?;
    let (org_id, admin_id) = parse_admin("name", &req.name)?;
    let now = state.now();
    let txn = state.begin_write().await?;
    lock_org(&txn, &org_id).await?;
    let caller = caller_row(&txn, p, Need::Permission(Permission::AdministratorsInvite)).await?;
    let row = administrator(&txn, &org_id, &admin_id).await?;
    may_act_on(&txn, &caller, &row).await?;
    if row.state != administrator::STATE_INVITED {
        return Err(ApiError::precondition(
            "ALREADY_ACTIVATED",
            req.name.clone(),
            "the administrator has already accepted its invite",
        ));
    }
    let org = organization(&txn, &org_id).await?;
    enqueue(
        &txn,
        &Effect::IssueInvite {
            administrator: req.name.clone(),
            email: row.email.clone(),
            organization_display_name: org.display_name,
            inviter_email: caller.contact,
        },
        now,
    )
    .await?;
    audit.allowed(&txn, &req.name, "invite sent again", now).await?;
    txn.commit().await?;
    tracing::info!(administrator = %req.name, "invite resent");
    Ok(ResendInviteResponse {
        administrator: Some(admin_to_proto(&row)),
        invite_expire_time: Some(timestamp(now + state.invite_ttl)),
    })
}

/// ResetAdministratorMfa: removes an administrator's second factor (needs a recent sign-in).
pub async fn reset_mfa(
    state: &State,
    p: &Principal,
    audit: &Auditor,
    req: ResetAdministratorMfaRequest,
) -> ApiResult<ResetAdministratorMfaResponse> {
    p.check_organization(&req.name)?;
    let (org_id, admin_id) = parse_admin("name", &req.name)?;
    let now = state.now();
    // Removing someone's second factor opens their account to a password alone: it needs a
    // recent sign-in, not just a (possibly stolen) access token.
    p.require_recent_authentication(now, super::billing::RECENT_AUTHENTICATION_SECS)?;
    let txn = state.begin_write().await?;
    lock_org(&txn, &org_id).await?;
    let caller = caller_row(&txn, p, Need::Permission(Permission::AdministratorsResetMfa)).await?;
    let row = administrator(&txn, &org_id, &admin_id).await?;
    may_act_on(&txn, &caller, &row).await?;
    let revision = row.revision;
    let mut active = row.into_active_model();
    active.mfa_enrolled = Set(false);
    active.revision = Set(revision + 1);
    active.updated_at = Set(now);
    let saved = active.update(&txn).await?;
    enqueue(&txn, &Effect::ResetMfa { administrator: req.name.clone() }, now).await?;
    audit.allowed(&txn, &req.name, "mfa enrolment removed", now).await?;
    txn.commit().await?;
    tracing::info!(administrator = %req.name, "mfa reset");
    Ok(ResetAdministratorMfaResponse { administrator: Some(admin_to_proto(&saved)) })
}

/// GetProfile: the caller's own administrator and organization.
pub async fn profile(state: &State, p: &Principal) -> ApiResult<GetProfileResponse> {
    let row = caller_administrator(&state.db, p, Need::AnyRole).await?;
    let org = organization(&state.db, &row.organization_id).await?;
    Ok(GetProfileResponse {
        profile: Some(Profile {
            administrator: Some(admin_to_proto(&row)),
            organization: Some(org_to_proto(&org)),
        }),
    })
}

/// UpdateProfile: the caller's own `whats_new`.
pub async fn update_profile(
    state: &State,
    p: &Principal,
    audit: &Auditor,
    req: UpdateProfileRequest,
) -> ApiResult<UpdateProfileResponse> {
    let paths = req.update_mask.as_ref().map(|m| m.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        return Err(ApiError::invalid("update_mask", "name the fields to update: whats_new"));
    }
    if let Some(other) = paths.iter().find(|p| p.as_str() != "whats_new") {
        return Err(ApiError::invalid(
            "update_mask",
            format!("`{other}` cannot be changed here; only whats_new"),
        ));
    }
    let (org_id, _) = parse_admin("caller", &p.administrator)?;
    let now = state.now();
    let txn = state.begin_write().await?;
    lock_org(&txn, &org_id).await?;
    let row = caller_administrator(&txn, p, Need::AnyRole).await?;
    let saved = if row.whats_new == req.whats_new {
        row
    } else {
        let revision = row.revision;
        let mut active = row.into_active_model();
        active.whats_new = Set(req.whats_new);
        active.revision = Set(revision + 1);
        active.updated_at = Set(now);
        let saved = active.update(&txn).await?;
        audit
            .allowed(&txn, &p.administrator, &format!("whats_new set to {}", req.whats_new), now)
            .await?;
        saved
    };
    let org = organization(&txn, &org_id).await?;
    txn.commit().await?;
    Ok(UpdateProfileResponse {
        profile: Some(Profile {
            administrator: Some(admin_to_proto(&saved)),
            organization: Some(org_to_proto(&org)),
        }),
    })
}

/// LookupAdministrator (internal): an administrator with its organization's display name.
pub async fn lookup(
    state: &State,
    req: LookupAdministratorRequest,
) -> ApiResult<LookupAdministratorResponse> {
    let (org_id, admin_id) = parse_admin("name", &req.name)?;
    // The row with its organization in one statement (a custom role costs one more).
    let to_org: sea_orm::RelationDef = administrator::Entity::belongs_to(organization::Entity)
        .from(administrator::Column::OrganizationId)
        .to(organization::Column::Id)
        .into();
    let (row, org) = administrator::Entity::find_by_id(admin_id.clone())
        .filter(administrator::Column::OrganizationId.eq(org_id.as_str()))
        .join(JoinType::InnerJoin, to_org)
        .select_also(organization::Entity)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::NotFound(admin_name(&org_id, &admin_id)))?;
    let org = org.ok_or_else(|| ApiError::NotFound(org_name(&org_id)))?;
    let held = holder_permissions(&state.db, &row).await?;
    Ok(LookupAdministratorResponse {
        administrator: Some(admin_to_proto(&row)),
        organization_display_name: org.display_name,
        caller_lease_ms: state.caller_lease_ms(),
        role_permissions: held
            .iter()
            .map(|(p, _)| steward_runtime::roles::permission_name(p).to_string())
            .collect(),
    })
}

/// ActivateAdministrator (internal, from the auth service when an invite is accepted); an
/// administrator that is already active is answered as it is.
pub async fn activate(
    state: &State,
    context: &RequestContext,
    req: ActivateAdministratorRequest,
) -> ApiResult<ActivateAdministratorResponse> {
    let (org_id, admin_id) = parse_admin("name", &req.name)?;
    let now = state.now();
    let txn = state.begin_write().await?;
    lock_org(&txn, &org_id).await?;
    let row = administrator(&txn, &org_id, &admin_id).await?;
    if row.state == administrator::STATE_ACTIVE {
        return Ok(ActivateAdministratorResponse { administrator: Some(admin_to_proto(&row)) });
    }
    let revision = row.revision;
    let mut active = row.into_active_model();
    active.state = Set(administrator::STATE_ACTIVE.to_string());
    active.activated_at = Set(Some(now));
    active.updated_at = Set(now);
    active.revision = Set(revision + 1);
    let saved = active.update(&txn).await?;
    Auditor::new(context, &org_id, AUTH_ACTOR)
        .allowed(&txn, &req.name, "invite accepted", now)
        .await?;
    txn.commit().await?;
    tracing::info!(administrator = %req.name, "administrator activated");
    Ok(ActivateAdministratorResponse { administrator: Some(admin_to_proto(&saved)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_runtime::claims::Role;

    #[test]
    fn update_masks_are_checked() {
        let mask = |paths: &[&str]| prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(update_paths(Some(&mask(&["role"]))).unwrap(), HashSet::from(["role"]));
        assert_eq!(update_paths(Some(&mask(&["*"]))).unwrap().len(), 4);
        assert!(update_paths(Some(&mask(&["email"]))).is_err());
        assert!(update_paths(Some(&mask(&[]))).is_err());
        assert!(update_paths(None).is_err());
    }

    #[test]
    fn roles_are_required() {
        assert_eq!(role_from_proto("r", 1).unwrap(), Role::Administrator);
        assert_eq!(role_from_proto("r", 2).unwrap(), Role::CommandRunner);
        assert!(role_from_proto("r", 0).is_err());
        assert!(role_from_proto("r", 9).is_err());
    }
}
