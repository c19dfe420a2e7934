//! The organization's audit log as a resource: reading it (ListAuditEvents) and recording the
//! events other services relay (RecordAuditEvents). This service's own events are written by
//! the [`crate::audit::Auditor`].

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect,
};
use steward_proto::admin::v1::{RecordAuditEventsRequest, RecordAuditEventsResponse};
use steward_proto::audit::v1::{
    audit_event, AuditEvent, ListAuditEventsRequest, ListAuditEventsResponse,
};
use steward_runtime::authn::Principal;
use steward_runtime::names::{self, AuditEventName};
use steward_runtime::roles::Permission;
use steward_runtime::{ApiError, ApiResult};

use crate::entity::{administrator, audit_event as stored};
use crate::filter::{audit_filter, AuditTerm};
use crate::state::*;

/// Most events accepted by one RecordAuditEvents call.
pub const MAX_EVENTS: usize = 500;

/// The auth service's MFA confirmation; an allowed event of it marks the actor as enrolled.
pub const CONFIRM_MFA_ACTION: &str = "/steward.auth.v1.AuthService/ConfirmMfaEnrollment";

/// ListAuditEvents: the organization's log for its Administrators, newest first, in keyset
/// pages.
pub async fn list(
    state: &State,
    p: &Principal,
    req: ListAuditEventsRequest,
) -> ApiResult<ListAuditEventsResponse> {
    p.check_organization(&req.parent)?;
    let org_id = parse_org("parent", &req.parent)?;
    caller_may_read(state, p, Need::Permission(Permission::AuditRead)).await?;
    let terms = audit_filter(&req.filter)?;
    let size = names::page_size(req.page_size)?;
    let digest = query_digest(&[&req.parent, req.filter.trim()]);
    let after = names::decode_keyset_token(&req.page_token, &digest)?;
    let mut condition = Condition::all().add(stored::Column::OrganizationId.eq(org_id));
    for term in terms {
        condition = condition.add(match term {
            AuditTerm::Actor(v) => stored::Column::Actor.eq(v),
            AuditTerm::Action(v) => stored::Column::Action.eq(v),
            AuditTerm::Target(v) => stored::Column::Target.eq(v),
            AuditTerm::Result(v) => stored::Column::Result.eq(v),
            AuditTerm::Since(t) => stored::Column::CreatedAt.gte(t),
            AuditTerm::Before(t) => stored::Column::CreatedAt.lt(t),
        });
    }
    // Keyset paging: the log grows while a client pages (other services' events arrive
    // late), so the next page starts strictly after the last row served, never at an offset.
    if let Some(after) = after {
        condition = condition.add(
            Condition::any().add(stored::Column::CreatedAt.lt(after.time)).add(
                Condition::all()
                    .add(stored::Column::CreatedAt.eq(after.time))
                    .add(stored::Column::Name.lt(after.key)),
            ),
        );
    }
    // One row more than the page tells whether another page follows.
    let mut rows = stored::Entity::find()
        .filter(condition)
        .order_by_desc(stored::Column::CreatedAt)
        .order_by_desc(stored::Column::Name)
        .limit(size + 1)
        .all(&state.db)
        .await?;
    let more = rows.len() as u64 > size;
    rows.truncate(usize::try_from(size).unwrap_or(usize::MAX));
    let next_page_token = match rows.last() {
        Some(last) if more => names::encode_keyset_token(
            &names::Keyset { time: last.created_at, key: last.name.clone() },
            &digest,
        ),
        _ => String::new(),
    };
    Ok(ListAuditEventsResponse {
        audit_events: rows.iter().map(to_proto).collect(),
        next_page_token,
    })
}

fn to_proto(row: &stored::Model) -> AuditEvent {
    let result = match row.result.as_str() {
        stored::RESULT_ALLOWED => audit_event::Result::Allowed,
        stored::RESULT_DENIED => audit_event::Result::Denied,
        _ => audit_event::Result::Failed,
    };
    AuditEvent {
        name: row.name.clone(),
        actor: row.actor.clone(),
        action: row.action.clone(),
        target: row.target.clone(),
        result: result.into(),
        status_code: row.status_code,
        reason: row.reason.clone(),
        request_id: row.request_id.clone(),
        client_address: row.client_address.clone(),
        create_time: Some(timestamp(row.created_at)),
    }
}

/// RecordAuditEvents (internal): other services' events, relayed from their outboxes; an event
/// whose name is already stored is skipped. A newly recorded allowed [`CONFIRM_MFA_ACTION`]
/// marks its actor as enrolled.
pub async fn record(
    state: &State,
    req: RecordAuditEventsRequest,
) -> ApiResult<RecordAuditEventsResponse> {
    if req.events.is_empty() || req.events.len() > MAX_EVENTS {
        return Err(ApiError::invalid("events", "send 1 to 500 events"));
    }
    let rows =
        req.events.iter().enumerate().map(|(i, e)| to_row(i, e)).collect::<ApiResult<Vec<_>>>()?;
    let txn = state.begin_write().await?;
    // An enrolment changes an administrator shown in pages: under its organization's lock, as
    // every write to administrators is (it bumps the revision pages are checked against).
    // Taken first, in order of id, so two calls cannot wait on each other's organization
    // locks; also for an enrolment already recorded (a repeated delivery), which only moves the
    // revision once more.
    let mut enrolling: Vec<String> = rows
        .iter()
        .filter(|row| row.action == CONFIRM_MFA_ACTION && row.result == stored::RESULT_ALLOWED)
        .filter_map(|row| parse_admin("actor", &row.actor).ok().map(|(org_id, _)| org_id))
        .collect();
    enrolling.sort();
    enrolling.dedup();
    for org_id in &enrolling {
        match lock_org(&txn, org_id).await {
            // An organization deleted since has no administrator to mark.
            Ok(()) | Err(ApiError::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
    }
    let mut recorded = 0;
    for row in rows {
        let enrolled = row.action == CONFIRM_MFA_ACTION && row.result == stored::RESULT_ALLOWED;
        let actor = row.actor.clone();
        let inserted = stored::Entity::insert(row.into_active_model())
            .on_conflict(OnConflict::column(stored::Column::Name).do_nothing().to_owned())
            .exec_without_returning(&txn)
            .await?;
        recorded += inserted;
        if inserted > 0 && enrolled {
            if let Ok((org_id, admin_id)) = parse_admin("actor", &actor) {
                administrator::Entity::update_many()
                    .col_expr(administrator::Column::MfaEnrolled, true.into())
                    .filter(administrator::Column::Id.eq(admin_id))
                    .filter(administrator::Column::OrganizationId.eq(org_id))
                    .exec(&txn)
                    .await?;
            }
        }
    }
    txn.commit().await?;
    Ok(RecordAuditEventsResponse { recorded_count: i32::try_from(recorded).unwrap_or(i32::MAX) })
}

fn to_row(i: usize, event: &AuditEvent) -> ApiResult<stored::Model> {
    let field = |f: &str| format!("events[{i}].{f}");
    let org_id =
        AuditEventName::parse(&field("name"), &event.name)?.organization().id().to_string();
    if event.action.is_empty() {
        return Err(ApiError::invalid(field("action"), "is required"));
    }
    let result = audit_event::Result::try_from(event.result)
        .ok()
        .and_then(stored::stored_result)
        .ok_or_else(|| {
        ApiError::invalid(field("result"), "must be RESULT_ALLOWED, RESULT_DENIED or RESULT_FAILED")
    })?;
    let created = event
        .create_time
        .as_ref()
        .ok_or_else(|| ApiError::invalid(field("create_time"), "is required"))?;
    Ok(stored::Model {
        name: event.name.clone(),
        organization_id: org_id,
        actor: event.actor.clone(),
        action: event.action.clone(),
        target: event.target.clone(),
        result: result.to_string(),
        status_code: event.status_code,
        reason: event.reason.chars().take(1000).collect(),
        request_id: event.request_id.clone(),
        client_address: event.client_address.clone(),
        created_at: from_timestamp(&field("create_time"), created)?,
    })
}
