//! AdminInternalService: calls from the other Steward services (service credential only; the
//! authentication layer refuses everything else before these handlers run).

use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, Set};
use steward_proto::admin::v1::admin_internal_service_server::AdminInternalService;
use steward_proto::admin::v1::*;
use steward_proto::audit::v1::{audit_event, AuditEvent};
use steward_runtime::{names, ApiError, ApiResult};
use tonic::{Request, Response, Status};

use crate::audit::{finish, Auditor, AUTH_ACTOR};
use crate::entity::{administrator, audit_event as stored};
use crate::state::*;

/// Most events accepted by one RecordAuditEvents call.
pub const MAX_EVENTS: usize = 500;

/// The auth service's MFA confirmation; an allowed event of it marks the actor as enrolled.
pub const CONFIRM_MFA_ACTION: &str = "/steward.auth.v1.AuthService/ConfirmMfaEnrollment";

/// The AdminInternalService implementation.
#[derive(Clone)]
pub struct InternalApi {
    state: Shared,
}

impl InternalApi {
    /// A service over `state`.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }

    async fn lookup(
        &self,
        req: LookupAdministratorRequest,
    ) -> ApiResult<LookupAdministratorResponse> {
        let (org_id, admin_id) = parse_admin("name", &req.name)?;
        let row = administrator(&self.state.db, &org_id, &admin_id).await?;
        let org = organization(&self.state.db, &org_id).await?;
        Ok(LookupAdministratorResponse {
            administrator: Some(admin_to_proto(&row)),
            organization_display_name: org.display_name,
        })
    }

    async fn activate<T>(
        &self,
        request: &Request<T>,
        req: ActivateAdministratorRequest,
    ) -> ApiResult<ActivateAdministratorResponse> {
        let (org_id, admin_id) = parse_admin("name", &req.name)?;
        let now = self.state.now();
        let txn = self.state.begin_write().await?;
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
        Auditor::new(request, &org_id, AUTH_ACTOR)
            .allowed(&txn, &req.name, "invite accepted", now)
            .await?;
        txn.commit().await?;
        tracing::info!(administrator = %req.name, "administrator activated");
        Ok(ActivateAdministratorResponse { administrator: Some(admin_to_proto(&saved)) })
    }

    async fn record(&self, req: RecordAuditEventsRequest) -> ApiResult<RecordAuditEventsResponse> {
        if req.events.is_empty() || req.events.len() > MAX_EVENTS {
            return Err(ApiError::invalid("events", "send 1 to 500 events"));
        }
        let rows = req
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| to_row(i, e))
            .collect::<ApiResult<Vec<_>>>()?;
        let txn = self.state.begin_write().await?;
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
        Ok(RecordAuditEventsResponse {
            recorded_count: i32::try_from(recorded).unwrap_or(i32::MAX),
        })
    }
}

fn to_row(i: usize, event: &AuditEvent) -> ApiResult<stored::Model> {
    let field = |f: &str| format!("events[{i}].{f}");
    let ids = names::parse(&field("name"), &event.name, &["organizations", "auditEvents"])?;
    let org_id = ids.first().map(|s| s.to_string()).unwrap_or_default();
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

#[tonic::async_trait]
impl AdminInternalService for InternalApi {
    async fn lookup_administrator(
        &self,
        request: Request<LookupAdministratorRequest>,
    ) -> Result<Response<LookupAdministratorResponse>, Status> {
        let result = self.lookup(request.into_inner()).await;
        finish(&self.state, None, "", result).await
    }

    async fn activate_administrator(
        &self,
        request: Request<ActivateAdministratorRequest>,
    ) -> Result<Response<ActivateAdministratorResponse>, Status> {
        let req = request.get_ref().clone();
        let result = self.activate(&request, req).await;
        finish(&self.state, None, "", result).await
    }

    async fn record_audit_events(
        &self,
        request: Request<RecordAuditEventsRequest>,
    ) -> Result<Response<RecordAuditEventsResponse>, Status> {
        let result = self.record(request.into_inner()).await;
        finish(&self.state, None, "", result).await
    }
}
