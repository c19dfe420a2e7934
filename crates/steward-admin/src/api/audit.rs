//! AuditService: reading the organization's audit log, newest first.

use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use steward_proto::audit::v1::audit_service_server::AuditService;
use steward_proto::audit::v1::{
    audit_event, AuditEvent, ListAuditEventsRequest, ListAuditEventsResponse,
};
use steward_runtime::authn::{self, Principal};
use steward_runtime::{names, ApiResult};
use tonic::{Request, Response, Status};

use crate::audit::finish;
use crate::entity::audit_event as stored;
use crate::filter::{audit_filter, AuditTerm};
use crate::state::*;

/// The AuditService implementation.
#[derive(Clone)]
pub struct AuditApi {
    state: Shared,
}

impl AuditApi {
    /// A service over `state`.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }

    async fn list(
        &self,
        p: &Principal,
        req: ListAuditEventsRequest,
    ) -> ApiResult<ListAuditEventsResponse> {
        p.check_organization(&req.parent)?;
        let org_id = parse_org("parent", &req.parent)?;
        caller_row(&self.state.db, p, Need::Administrator).await?;
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
            .all(&self.state.db)
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

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let p = authn::principal(&request)?.clone();
        let result = self.list(&p, request.into_inner()).await;
        finish(&self.state, None, "", result).await
    }
}
