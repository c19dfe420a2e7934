//! Organizations, the tenants: created and listed by the platform operator (service
//! credential), read also by their administrators.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use steward_proto::admin::v1::*;
use steward_runtime::authn::{Caller, RequestContext};
use steward_runtime::claims::Role;
use steward_runtime::{names, ApiError, ApiResult};
use steward_storage::idempotency::{Key, RecordError};

use crate::audit::{Auditor, PLATFORM_ACTOR};
use crate::effects::{enqueue, Effect};
use crate::email::Email;
use crate::entity::{administrator, organization};
use crate::state::*;
use crate::IDEMPOTENCY;

/// Longest organization display name.
pub const MAX_DISPLAY_NAME: usize = 200;

/// The answer to a repeated CreateOrganization with the same request_id.
async fn replay(state: &State, key: Option<&Key>) -> ApiResult<Option<CreateOrganizationResponse>> {
    let db = &state.db;
    let Some(previous) = IDEMPOTENCY.recall(db, key).await? else {
        return Ok(None);
    };
    let org_id = parse_org("request_id", &previous)?;
    let org = organization(db, &org_id).await?;
    let owner = administrator::Entity::find()
        .filter(administrator::Column::OrganizationId.eq(org_id.as_str()))
        .filter(administrator::Column::InvitedBy.eq(""))
        .order_by_asc(administrator::Column::CreatedAt)
        .one(db)
        .await?;
    Ok(Some(CreateOrganizationResponse {
        organization: Some(org_to_proto(&org)),
        owner: owner.as_ref().map(admin_to_proto),
    }))
}

/// CreateOrganization (platform operator only): the organization and its owner, an invited
/// Administrator with billing; a repeated `request_id` answers what the first call created.
pub async fn create(
    state: &State,
    caller: &Caller,
    context: &RequestContext,
    req: CreateOrganizationRequest,
) -> ApiResult<CreateOrganizationResponse> {
    if *caller != Caller::Service {
        return Err(ApiError::denied(
            "PLATFORM_OPERATOR_ONLY",
            "only the platform operator may create organizations",
        ));
    }
    let display_name = req.organization.map(|o| o.display_name).unwrap_or_default();
    let length = display_name.chars().count();
    if display_name.trim().is_empty() || length > MAX_DISPLAY_NAME {
        return Err(ApiError::invalid("organization.display_name", "must be 1 to 200 characters"));
    }
    steward_runtime::names::check_text(
        "organization.display_name",
        &display_name,
        steward_runtime::names::Text::Line,
    )?;
    let email = Email::parse("owner_email", &req.owner_email)?;
    check_request_id(&req.request_id)?;
    let key = Key::new("create_organization", "platform", &req.request_id);
    if let Some(answer) = replay(state, key.as_ref()).await? {
        return Ok(answer);
    }
    let now = state.now();
    let org_id = names::new_id();
    let owner_id = names::new_id();
    let owner_name = admin_name(&org_id, &owner_id);

    let txn = state.begin_write().await?;
    if key.is_some() {
        let claimed = IDEMPOTENCY.record(&txn, key.as_ref(), &org_name(&org_id), now).await;
        match claimed {
            Err(RecordError::Conflict) => {
                // A concurrent retry won the race; answer with its result.
                drop(txn);
                return replay(state, key.as_ref()).await?.ok_or_else(|| {
                    ApiError::Aborted(
                        "a concurrent request with this request_id failed; retry".into(),
                    )
                });
            }
            other => {
                other?;
            }
        }
    }
    let org = organization::ActiveModel {
        id: Set(org_id.clone()),
        display_name: Set(display_name.clone()),
        revision: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    let owner = administrator::ActiveModel {
        id: Set(owner_id),
        organization_id: Set(org_id.clone()),
        email: Set(email.as_str().to_string()),
        email_lower: Set(email.lower()),
        role: Set(Role::Administrator.as_str().to_string()),
        billing: Set(true),
        mfa_required: Set(false),
        mfa_enrolled: Set(false),
        whats_new: Set(false),
        state: Set(administrator::STATE_INVITED.to_string()),
        invited_by: Set(String::new()),
        revision: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
        activated_at: Set(None),
    }
    .insert(&txn)
    .await?;
    enqueue(
        &txn,
        &Effect::IssueInvite {
            administrator: owner_name.clone(),
            email: owner.email.clone(),
            organization_display_name: display_name,
            inviter_email: String::new(),
        },
        now,
    )
    .await?;
    let audit = Auditor::new(context, &org_id, PLATFORM_ACTOR);
    audit
        .allowed(&txn, &org_name(&org_id), "organization created with its owner invited", now)
        .await?;
    txn.commit().await?;
    tracing::info!(organization = %org_name(&org_id), owner = %owner_name, "organization created");
    Ok(CreateOrganizationResponse {
        organization: Some(org_to_proto(&org)),
        owner: Some(admin_to_proto(&owner)),
    })
}

/// GetOrganization: for the platform operator, or an administrator of that organization.
pub async fn get(
    state: &State,
    caller: &Caller,
    req: GetOrganizationRequest,
) -> ApiResult<GetOrganizationResponse> {
    match caller {
        Caller::Service => {}
        Caller::Administrator(p) => {
            p.check_organization(&req.name)?;
            caller_may_read(state, p, Need::AnyRole).await?;
        }
        Caller::Anonymous => {
            return Err(ApiError::Unauthenticated("an access token is required".into()))
        }
    }
    let org_id = parse_org("name", &req.name)?;
    let org = organization(&state.db, &org_id).await?;
    Ok(GetOrganizationResponse { organization: Some(org_to_proto(&org)) })
}

/// ListOrganizations (platform operator only): oldest first, offset pages.
pub async fn list(
    state: &State,
    caller: &Caller,
    req: ListOrganizationsRequest,
) -> ApiResult<ListOrganizationsResponse> {
    if *caller != Caller::Service {
        return Err(ApiError::denied(
            "PLATFORM_OPERATOR_ONLY",
            "only the platform operator may list organizations",
        ));
    }
    let size = names::page_size(req.page_size)?;
    let digest = query_digest(&["organizations"]);
    let offset = names::decode_page_token(&req.page_token, &digest)?;
    let db = &state.db;
    let total = organization::Entity::find().count(db).await?;
    let rows = organization::Entity::find()
        .order_by_asc(organization::Column::CreatedAt)
        .order_by_asc(organization::Column::Id)
        .offset(offset)
        .limit(size)
        .all(db)
        .await?;
    let next = offset + rows.len() as u64;
    Ok(ListOrganizationsResponse {
        organizations: rows.iter().map(org_to_proto).collect(),
        next_page_token: if next < total {
            names::encode_page_token(next, &digest)
        } else {
            String::new()
        },
    })
}
